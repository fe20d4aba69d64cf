"""The manifest corpus: every invalid manifest gets the same verdict on every path a user can take.

``tests/corpus/manifests/invalid/*.yaml`` each name the field they break and a fragment of the
message in their header (``# expect-field:``, ``# expect-message:``); an empty field is a problem of
the file itself (its encoding, its YAML). Each runs through:

- ``kubetune validate`` and ``kubetune run``, in process through the CLI's entry function;
- the API server: a create through the test API server (the generated CRD: schema, CEL, metadata
  validation) as a tenant, with ``fieldValidation=Strict`` and ``dryRun=All`` as ``kubectl create``
  sends them, the object decoded as kubectl decodes YAML;
- the operator's own validation of the spec it would receive.

A file kubectl cannot turn into JSON never reaches the API server or the operator; for those the
CLI paths are the verdict. ``valid/*.yaml`` must be accepted on every path.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from kubetune.api.manifest import load_manifest
from kubetune.operator import validation
from kubetune_trainer.localrun import default_mappings, localize
from tests.corpus.verdicts import EXIT_CONFIG, api_server_verdict, cli_verdict, expected, the_object
from tests.kubeapi.cluster import Identity, TestCluster

CORPUS = Path(__file__).parent / "manifests"
INVALID = sorted((CORPUS / "invalid").glob("*.yaml"))
VALID = sorted((CORPUS / "valid").glob("*.yaml"))


@pytest.fixture(scope="module")
def tenant(installed_cluster: TestCluster) -> Identity:
    return installed_cluster.tenant


@pytest.mark.parametrize("path", INVALID, ids=[p.stem for p in INVALID])
def test_invalid_manifest_is_refused_at_its_field_on_every_path(
    path: Path, tenant: Identity, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    want = expected(path)
    shown = f"{want.field}: " if want.field else ""
    for args in (["validate", str(path)], ["run", str(path), "--output-dir", str(tmp_path / "out")]):
        code, text = cli_verdict(args, capsys)
        assert code == EXIT_CONFIG, f"kubetune {args[0]} accepted {path.name}: {text}"
        assert "Traceback" not in text
        assert shown in text and want.message in text, f"kubetune {args[0]}: {text}"
    assert not (tmp_path / "out").exists(), "a refused manifest must not write anything"

    job = the_object(path, "FineTuneJob")
    if job is None:
        return  # kubectl refuses the file itself: nothing reaches the API server or the operator
    status, refusal = api_server_verdict(tenant, job, "finetunejobs")
    assert status in (400, 404, 422), f"the API server accepted {path.name}"
    if want.field == "apiVersion":
        assert status == 404, refusal  # no FineTuneJob is served at that version
    else:
        assert want.field in refusal, f"the API server named another field: {refusal}"
    if want.field.startswith("spec") and isinstance(job.get("spec"), dict):
        problem = validation.parse(job["spec"])
        assert isinstance(problem, validation.SpecProblem), "the operator accepted the spec"
        assert want.field in problem.message, problem.message


@pytest.mark.parametrize("path", VALID, ids=[p.stem for p in VALID])
def test_valid_manifest_is_accepted_on_every_path(
    path: Path, tenant: Identity, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    code, text = cli_verdict(["validate", str(path)], capsys)
    assert code == 0, text
    # kubetune run reads the manifest, then maps its paths for this machine, before any work
    localize(load_manifest(path), default_mappings(path), tmp_path / "out")
    job = the_object(path, "FineTuneJob")
    assert job is not None
    status, refusal = api_server_verdict(tenant, job, "finetunejobs")
    assert status == 201, refusal
    assert not isinstance(validation.parse(job["spec"]), validation.SpecProblem)


def test_the_corpus_covers_every_category() -> None:
    """At least three cases per category (the file name's first word), 80 invalid manifests in all."""
    categories: dict[str, int] = {}
    for path in INVALID:
        categories[path.stem.split("-")[0]] = categories.get(path.stem.split("-")[0], 0) + 1
    assert len(INVALID) >= 80
    assert all(count >= 3 for count in categories.values()), categories
