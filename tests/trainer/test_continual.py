"""Continual learning's first step: a FineTuneJob starts from a published version (``continual.from``)
instead of the base model, and its lineage manifest records the chain of versions. Through ``kubetune
run`` on the tiny model: version A from the base, B from A, C from B; then what is refused, at the
field, before any training."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml

from kubetune_trainer.errors import ConfigurationError
from kubetune_trainer.models.continual import resolve_starting_version
from kubetune_trainer.models.loading import model_checksum
from kubetune_trainer.storage import ObjectStore
from tests.trainer.jobs import run_locally, write_dataset, write_job


def _publish(folder: Path, model_dir: Path, rows: int, **spec: Any) -> dict[str, Any]:
    """One ``kubetune run`` publishing merged weights; its version's manifest, with where it lies."""
    folder.mkdir()
    job = write_job(
        folder / "job.yaml",
        model_dir=model_dir,
        data=write_dataset(folder / "data.jsonl", rows),
        output=f"file://{folder}/out",
        **spec,
    )
    manifest = yaml.safe_load(job.read_text())
    manifest["spec"]["output"]["formats"] = ["merged"]
    job.write_text(yaml.safe_dump(manifest))
    _, path = run_locally(job, folder)
    return {**json.loads(path.read_text()), "folder": path.parent, "manifestSha256": _sha256(path)}


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def chain(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> list[dict[str, Any]]:
    root = tmp_path_factory.mktemp("continual")
    first = _publish(root / "a", tiny_model_dir, 24)
    second = _publish(root / "b", tiny_model_dir, 24, continual={"from": f"file://{first['folder']}"})
    third = _publish(root / "c", tiny_model_dir, 24, continual={"from": f"file://{second['folder']}/"})
    return [first, second, third]


def _step(version: dict[str, Any]) -> dict[str, Any]:
    return {
        "version": version["version"],
        "uri": f"file://{version['folder']}",
        "manifestSha256": version["manifestSha256"],
        "promoted": version["promoted"],
    }


def test_each_version_starts_from_the_one_named_and_records_the_chain(
    chain: list[dict[str, Any]], tiny_model_dir: Path
) -> None:
    first, second, third = chain
    assert "continual" not in first, "a job from the base model continues nothing"
    assert first["baseModel"] == {"uri": f"file://{tiny_model_dir}", "sha256": model_checksum(tiny_model_dir)}
    for parent, child in ((first, second), (second, third)):
        # Training started from the parent's merged weights, byte for byte what it published.
        assert child["baseModel"] == {
            "uri": f"file://{parent['folder']}/merged",
            "sha256": model_checksum(parent["folder"] / "merged"),
        }
        assert child["continual"]["from"] == _step(parent)
        assert child["continual"]["originBaseModel"] == first["baseModel"]
    assert second["continual"]["chain"] == [_step(first)]
    assert third["continual"]["chain"] == [_step(first), _step(second)], "oldest first, the whole way back"
    assert len({model_checksum(v["folder"] / "merged") for v in chain}) == 3, "each stage trained on"


def _refusal(version: Path, base: str) -> str:
    with pytest.raises(ConfigurationError) as refused:
        resolve_starting_version(f"file://{version}", base, ObjectStore())
    message = str(refused.value)
    assert message.startswith("spec.continual.from: "), message
    return message


def test_what_cannot_be_continued_is_refused_at_the_field_before_training(
    chain: list[dict[str, Any]], tiny_model_dir: Path, tmp_path: Path
) -> None:
    first = chain[0]
    base = f"file://{tiny_model_dir}"
    assert "no published version there" in _refusal(first["folder"].parent, base)
    assert f"set spec.baseModel.uri to '{base}'" in _refusal(first["folder"], "builtin://smollm2-135m-instruct")

    adapter_only = tmp_path / "adapter-only"
    shutil.copytree(first["folder"], adapter_only)
    manifest = json.loads((adapter_only / "manifest.json").read_text())
    manifest["artifacts"] = [a for a in manifest["artifacts"] if not a["path"].startswith("merged/")]
    (adapter_only / "manifest.json").write_text(json.dumps(manifest))
    assert "published no merged weights" in _refusal(adapter_only, base)

    damaged = tmp_path / "damaged"
    shutil.copytree(first["folder"], damaged)
    (weights,) = (damaged / "merged").glob("*.safetensors")
    weights.write_bytes(weights.read_bytes()[:-8] + b"\0" * 8)
    assert "its merged weights differ from its manifest" in _refusal(damaged, base)


def test_the_pre_flight_refuses_a_job_continuing_no_version(tmp_path: Path, tiny_model_dir: Path) -> None:
    """What the pre-flight pod runs, in process: the job fails fast (exit 2) naming the field."""
    import contextlib
    import io

    from kubetune_trainer.cli import main as kubetune

    job = write_job(
        tmp_path / "job.yaml",
        model_dir=tiny_model_dir,
        data=write_dataset(tmp_path / "data.jsonl", 24),
        output=f"file://{tmp_path}/out",
        continual={"from": f"file://{tmp_path}/out/v20261201-000000-abcdef"},
    )
    said = io.StringIO()
    with contextlib.redirect_stdout(said), contextlib.redirect_stderr(said):
        assert kubetune(["validate", str(job)]) == 0, said.getvalue()
        code = kubetune(["preflight", "--job", str(job), "--workdir", str(tmp_path / "work")])
    assert code == 2, said.getvalue()
    assert f"spec.continual.from: file://{tmp_path}/out/v20261201-000000-abcdef: no published version there" in (
        said.getvalue()
    )
