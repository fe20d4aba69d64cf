"""``kubetune run`` on a laptop: in-pod paths mapped to local folders, output kept inside --output-dir."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from kubetune.api.contract import EXIT_CONFIG
from kubetune.api.manifest import ManifestError, parse_manifest
from kubetune.api.v1alpha1 import FineTuneJob
from kubetune_trainer.cli import main
from kubetune_trainer.localrun import PathMapping, localize
from tests.builders import minimal_spec


def job(**metadata: str) -> FineTuneJob:
    document = {"apiVersion": "kubetune.dev/v1alpha1", "kind": "FineTuneJob", "metadata": metadata}
    return parse_manifest({**document, "spec": minimal_spec()})


@pytest.mark.parametrize("name", ["a", "a..b", "a.b-c", ("a" * 62 + ".") * 4 + "a"])
def test_every_valid_name_publishes_inside_the_output_dir(tmp_path: Path, name: str) -> None:
    out = tmp_path / "out"
    uri = localize(job(name=name), [], out).spec.output.uri
    assert uri == f"file://{(out / name).resolve()}/"


def test_a_generated_name_publishes_under_its_prefix(tmp_path: Path) -> None:
    assert localize(job(generateName="tune-"), [], tmp_path).spec.output.uri == f"file://{tmp_path.resolve()}/tune-/"
    with pytest.raises(ManifestError, match=r"metadata\.generateName"):
        job(generateName="../")


@pytest.mark.parametrize("name", ["..", "../escape", "/etc", "."])
def test_a_name_that_would_leave_the_output_dir_is_refused(tmp_path: Path, name: str) -> None:
    """Names like these never pass the API's check; built past it, --output-dir still holds."""
    unchecked = job(name="x").model_copy(update={"metadata": {"name": name}})
    with pytest.raises(ManifestError, match="outside --output-dir"):
        localize(unchecked, [], tmp_path / "out")


def test_in_pod_paths_are_mapped_and_others_kept(tmp_path: Path) -> None:
    spec = minimal_spec()
    spec["dataset"]["sources"] = [{"uri": "file:///opt/kubetune/examples/x.jsonl"}, {"uri": "file:///data/y.jsonl"}]
    document = {"apiVersion": "kubetune.dev/v1alpha1", "kind": "FineTuneJob", "metadata": {"name": "m"}, "spec": spec}
    mapped = localize(parse_manifest(document), [PathMapping("/opt/kubetune/examples", tmp_path)], None)
    assert [s.uri for s in mapped.spec.dataset.sources] == [
        f"file://{tmp_path.resolve()}/x.jsonl",
        "file:///data/y.jsonl",
    ]


def write_manifest(folder: Path, **fields: object) -> Path:
    document = {"apiVersion": "kubetune.dev/v1alpha1", "kind": "FineTuneJob", "metadata": {"name": "m"}}
    path = folder / "job.yaml"
    path.write_text(yaml.safe_dump({**document, "spec": minimal_spec(**fields)}))
    return path


def test_nodes_refuses_a_job_that_cannot_run_on_several_before_starting_any(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``kubetune run --nodes 2`` checks the manifest it would give the nodes as every path checks it;
    the user's own manifest, here in the work folder itself, is left as it was."""
    manifest = write_manifest(tmp_path, privacy={"targetEpsilon": 8})
    written = manifest.read_bytes()
    assert main(["run", str(manifest), "--nodes", "2", "--workdir", str(tmp_path)]) == EXIT_CONFIG
    error = capsys.readouterr().err
    assert "spec.resources.nodes" in error and "privacy trains in one process" in error, error
    assert not list(tmp_path.rglob("node-*")), "no node started"
    assert manifest.read_bytes() == written, "the user's job.yaml in --workdir was overwritten"


def test_nodes_refuses_the_options_the_pods_command_does_not_take(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    manifest = write_manifest(tmp_path)
    for extra in (["--max-steps", "1"], ["-o", "json"]):
        assert main(["run", str(manifest), "--nodes", "2", "--workdir", str(tmp_path / "work"), *extra]) == EXIT_CONFIG
        assert "--nodes runs the pods' own command" in capsys.readouterr().err
    with pytest.raises(SystemExit) as refused:
        main(["run", str(manifest), "--nodes", "0"])
    assert refused.value.code == EXIT_CONFIG
