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


def _rows(path: Path, task: str, count: int = 24) -> Path:
    """A labelled task of its own per stage, so no stage's rows are another's (exact dedup would drop them)."""
    rows = [
        {
            "messages": [
                {"role": "user", "content": f"{task} request {i}: item {i * 41} is {'late' if i % 2 else 'broken'}"},
                {"role": "assistant", "content": f"{task}-{'a' if i % 2 else 'b'}"},
            ]
        }
        for i in range(count)
    ]
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def _publish(folder: Path, model_dir: Path, task: str, **spec: Any) -> dict[str, Any]:
    """One ``kubetune run`` publishing merged weights; its version's manifest, with where it lies."""
    folder.mkdir()
    job = write_job(
        folder / "job.yaml",
        model_dir=model_dir,
        data=_rows(folder / "data.jsonl", task),
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
    first = _publish(root / "a", tiny_model_dir, "billing")
    second = _publish(root / "b", tiny_model_dir, "shipping", continual={"from": f"file://{first['folder']}"})
    third = _publish(
        root / "c", tiny_model_dir, "refunds", continual={"from": f"file://{second['folder']}/", "replayFraction": 0.25}
    )
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


def test_each_version_replays_the_data_of_the_versions_before_it(chain: list[dict[str, Any]]) -> None:
    first, second, third = chain
    data = [f"file://{v['folder'].parents[2]}/data.jsonl" for v in chain]
    assert [(s["uri"], s["weight"], s["role"]) for s in first["dataset"]["mix"]] == [(data[0], 1.0, "task")]
    # B: its own data, and A's at the default fraction; C: its own, and both earlier tasks at 0.25.
    assert [(s["uri"], s["weight"]) for s in second["dataset"]["mix"]] == [(data[1], 1.0), (data[0], 0.5)]
    assert second["continual"]["replay"] == {"fraction": 0.5, "sources": [data[0]]}
    assert [(s["uri"], s["weight"]) for s in third["dataset"]["mix"]] == [
        (data[2], 1.0),
        (data[0], 0.25),
        (data[1], 0.25),
    ]
    assert third["continual"]["replay"] == {"fraction": 0.25, "sources": [data[0], data[1]]}
    # Each replayed source is read whole; its weight applies to the training split only.
    assert all(s["examples"] == 24 for s in third["dataset"]["mix"])


def _spec(version: Path | str, base: str, **continual: Any) -> Any:
    from kubetune.api.manifest import parse_spec

    return parse_spec(
        {
            "baseModel": {"uri": base},
            "continual": {"from": version if isinstance(version, str) else f"file://{version}", **continual},
            "dataset": {"sources": [{"uri": "s3://team-a/data/new.jsonl"}]},
            "output": {"uri": "s3://team-a/models/"},
        }
    )


def _refusal(version: Path, base: str, prefixes: tuple[str, ...] = (), field: str = "spec.continual.from") -> str:
    with pytest.raises(ConfigurationError) as refused:
        resolve_starting_version(_spec(version, base), ObjectStore(), prefixes)
    message = str(refused.value)
    assert message.startswith(f"{field}: "), message
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


def _edited_copy(version: Path, where: Path, edit: Any) -> Path:
    shutil.copytree(version, where)
    manifest = json.loads((where / "manifest.json").read_text())
    edit(manifest)
    (where / "manifest.json").write_text(json.dumps(manifest))
    return where


def test_replay_skips_held_out_data_and_stays_inside_the_namespaces_storage(
    chain: list[dict[str, Any]], tiny_model_dir: Path, tmp_path: Path
) -> None:
    base = f"file://{tiny_model_dir}"
    mix = [
        {"uri": "s3://team-b/private/tickets.jsonl", "format": "auto: chat", "weight": 1.0, "role": "task"},
        {"uri": "s3://team-a/held-out.jsonl", "format": "chat", "weight": 1.0, "role": "evalOnly"},
        {"uri": "s3://team-a/pairs.jsonl", "format": "preference", "weight": 1.0, "role": "trainOnly"},
    ]
    version = _edited_copy(chain[0]["folder"], tmp_path / "v", lambda m: m["dataset"].update(mix=mix))
    start = resolve_starting_version(_spec(version, base), ObjectStore())
    assert [(s.uri, s.format, s.weight) for s in start.replay] == [("s3://team-b/private/tickets.jsonl", "auto", 0.5)]
    assert resolve_starting_version(_spec(version, base, replayFraction=0), ObjectStore()).replay == []
    refused = _refusal(version, base, ("s3://team-a/",), field="spec.continual.replayFraction")
    assert "trained on s3://team-b/private/tickets.jsonl, outside the storage this namespace may use" in refused

    # An earlier version's manifest changed after a later one recorded it: its data is not trusted.
    earlier = _edited_copy(chain[0]["folder"], tmp_path / "earlier", lambda m: None)
    later = _edited_copy(
        chain[1]["folder"], tmp_path / "later", lambda m: m["continual"]["chain"][0].update(uri=f"file://{earlier}")
    )
    assert "changed since a later version recorded it" in _refusal(later, base)
