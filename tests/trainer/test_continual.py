"""Continual learning's first step: a FineTuneJob starts from a published version (``continual.from``)
instead of the base model, and its lineage manifest records the chain of versions. Through ``kubetune
run`` on the tiny model: version A from the base, B from A, C from B; then what is refused, at the
field, before any training."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
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


def _publish(folder: Path, model_dir: Path, task: str, formats: str = "merged", **spec: Any) -> dict[str, Any]:
    """One ``kubetune run`` publishing ``formats``; its version's manifest, with where it lies."""
    folder.mkdir()
    job = write_job(
        folder / "job.yaml",
        model_dir=model_dir,
        data=_rows(folder / "data.jsonl", task),
        output=f"file://{folder}/out",
        **spec,
    )
    manifest = yaml.safe_load(job.read_text())
    manifest["spec"]["output"]["formats"] = [formats]
    job.write_text(yaml.safe_dump(manifest))
    _, path = run_locally(job, folder)
    return {**json.loads(path.read_text()), "folder": path.parent, "manifestSha256": _sha256(path)}


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def chain(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> list[dict[str, Any]]:
    root = tmp_path_factory.mktemp("continual")
    first = _publish(root / "a", tiny_model_dir, "billing", formats="adapter")  # B merges it into the base
    second = _publish(
        root / "b", tiny_model_dir, "shipping", continual={"from": f"file://{first['folder']}", "publishFisher": True}
    )
    third = _publish(
        root / "c",
        tiny_model_dir,
        "refunds",
        continual={"from": f"file://{second['folder']}/", "replayFraction": 0.25, "ewc": {}},
    )
    return [first, second, third]


def _step(version: dict[str, Any]) -> dict[str, Any]:
    return {
        "version": version["version"],
        "uri": f"file://{version['folder']}",
        "manifestSha256": version["manifestSha256"],
        "promoted": version["promoted"],
    }


def _assert_same_weights(one: Path, other: Path) -> None:
    import torch
    from safetensors.torch import load_file

    (first,), (second,) = one.glob("*.safetensors"), other.glob("*.safetensors")
    left, right = load_file(first), load_file(second)
    assert left.keys() == right.keys()
    assert all(torch.allclose(left[name], right[name], atol=1e-6) for name in left)


def test_each_version_starts_from_the_one_named_and_records_the_chain(
    chain: list[dict[str, Any]], tiny_model_dir: Path, tmp_path: Path
) -> None:
    from kubetune.api.v1alpha1 import MethodType
    from kubetune_trainer.export.merge import merge_adapter

    tmp = tmp_path
    first, second, third = chain
    assert "continual" not in first, "a job from the base model continues nothing"
    assert first["baseModel"] == {"uri": f"file://{tiny_model_dir}", "sha256": model_checksum(tiny_model_dir)}
    for parent, child in ((first, second), (second, third)):
        assert child["continual"]["from"] == _step(parent)
        assert child["continual"]["originBaseModel"] == first["baseModel"]
    # C started from B's merged weights, byte for byte what B published.
    assert third["baseModel"] == {
        "uri": f"file://{second['folder']}/merged",
        "sha256": model_checksum(second["folder"] / "merged"),
    }
    # A published only its adapter: B started from it merged into the base A was trained on.
    assert second["baseModel"]["uri"] == f"file://{first['folder']}/adapter"
    start = resolve_starting_version(_spec(first["folder"], f"file://{tiny_model_dir}"), ObjectStore())
    assert model_checksum(start.path) == second["baseModel"]["sha256"] != first["baseModel"]["sha256"]
    _assert_same_weights(
        start.path, merge_adapter(tiny_model_dir, first["folder"] / "adapter", tmp / "merged", method=MethodType.LORA)
    )
    assert second["continual"]["chain"] == [_step(first)]
    assert third["continual"]["chain"] == [_step(first), _step(second)], "oldest first, the whole way back"
    starts = {model_checksum(start.path), *(model_checksum(v["folder"] / "merged") for v in chain[1:])}
    assert len(starts) == 3, "each stage trained on"


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

    prefix = _edited_copy(first["folder"], tmp_path / "prefix", lambda m: m["resolved"].update(adapter="prefix"))
    assert "published neither merged weights nor an adapter that merges into them" in _refusal(prefix, base)
    assert "(its artifacts: adapter, reports; adapter: prefix)" in _refusal(prefix, base)

    for version, artifact in ((first, "adapter"), (chain[1], "merged")):
        damaged = tmp_path / f"damaged-{artifact}"
        shutil.copytree(version["folder"], damaged)
        (weights,) = (damaged / artifact).glob("*.safetensors")
        weights.write_bytes(weights.read_bytes()[:-8] + b"\0" * 8)
        assert f"its {artifact} differs from its manifest" in _refusal(damaged, base)


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

    # However long the chain, a job reads at most as many sources as a spec may name.
    many = [{"uri": f"s3://team-a/part-{i}.jsonl", "format": "chat", "role": "task"} for i in range(32)]
    crowded = _edited_copy(chain[0]["folder"], tmp_path / "crowded", lambda m: m["dataset"].update(mix=many))
    refused = _refusal(crowded, base, field="spec.continual.replayFraction")
    assert "trained on 32 other sources; with the job's 1 that is more than the 32 sources" in refused
    assert resolve_starting_version(_spec(crowded, base, replayFraction=0), ObjectStore()).replay == []

    # An earlier version's manifest changed after a later one recorded it: its data is not trusted.
    earlier = _edited_copy(chain[0]["folder"], tmp_path / "earlier", lambda m: None)
    later = _edited_copy(
        chain[1]["folder"], tmp_path / "later", lambda m: m["continual"]["chain"][0].update(uri=f"file://{earlier}")
    )
    assert "changed since a later version recorded it" in _refusal(later, base)


def _distance(one: Path, other: Path) -> float:
    """Summed squared difference of two folders' weights."""
    from safetensors.torch import load_file

    (first,), (second,) = one.glob("*.safetensors"), other.glob("*.safetensors")
    left, right = load_file(first), load_file(second)
    return sum(float(((left[n].float() - right[n].float()) ** 2).sum()) for n in left)


def test_ewc_anchors_the_new_adapter_where_the_version_left_off(
    chain: list[dict[str, Any]], tiny_model_dir: Path, tmp_path: Path
) -> None:
    """B published its task's Fisher; C, continuing B with the same recipe and ``ewc: {}`` (auto weight),
    used it, and its lineage says what the penalty was. D, the same step as C with a far heavier weight,
    ends much nearer B, the version both started from (Adam's steps keep it jittering about the anchor by
    about the learning rate: nearer, not on it)."""
    from safetensors import safe_open

    _, second, third = chain
    (fisher,) = [a for a in second["artifacts"] if a["path"].startswith("fisher/")]
    assert fisher["path"] == "fisher/fisher.safetensors" and fisher["sizeBytes"] > 0
    with safe_open(str(second["folder"] / fisher["path"]), framework="pt") as published:
        metadata = published.metadata() or {}
        names = set(published.keys())
    rows, task_rows = int(metadata["rows"]), int(metadata["taskRows"])
    assert names and all("lora_" in name for name in names), "the parameters C trains: its fresh adapter"
    # B's own training rows and A's replayed ones: 24 + 24 less the 20% each holds out, A's at weight 0.5.
    assert 20 < rows == task_rows < 40

    ewc = third["continual"]["ewc"]
    assert ewc["fisher"] == "published" and ewc["fisherRows"] == rows and ewc["parameters"] > 0
    # The earlier task counts the rows B trained on, not the fewer C replays of them at 0.25.
    assert ewc["lambdaAuto"] is True and ewc["earlierRows"] == task_rows
    assert ewc["lambda"] == pytest.approx(task_rows / ewc["newRows"])
    assert 0 < ewc["newRows"] <= 24
    assert ewc["fisherMean"] > 0 and ewc["penaltyAtEnd"] > 0

    heavy = _publish(
        tmp_path / "c",  # _rows names the task by its argument: C's data again, in another file
        tiny_model_dir,
        "refunds",
        continual={"from": f"file://{second['folder']}", "replayFraction": 0.25, "ewc": {"lambda": 1e6}},
    )
    assert heavy["continual"]["ewc"]["lambda"] == 1e6 and heavy["continual"]["ewc"]["lambdaAuto"] is False
    start = second["folder"] / "merged"
    light_moved, heavy_moved = (
        _distance(third["folder"] / "merged", start),
        _distance(heavy["folder"] / "merged", start),
    )
    assert heavy_moved < 0.25 * light_moved, (heavy_moved, light_moved)  # 0.09 measured


def test_ewc_estimates_the_fisher_when_the_published_one_is_for_another_start(
    chain: list[dict[str, Any]], tiny_model_dir: Path, tmp_path: Path
) -> None:
    """A rank-8 adapter is not the one B's Fisher was estimated for: the job estimates its own on the
    replayed rows, and without replayed rows it is refused, naming the field."""
    second = chain[1]
    other = {"method": {"type": "lora", "lora": {"r": 8, "alpha": 16, "dropout": 0.0}}}
    estimated = _publish(
        tmp_path / "e", tiny_model_dir, "returns", continual={"from": f"file://{second['folder']}", "ewc": {}}, **other
    )
    ewc = estimated["continual"]["ewc"]
    assert ewc["fisher"] == "estimated" and ewc["fisherRows"] == ewc["earlierRows"] > 0

    folder = tmp_path / "f"
    folder.mkdir()
    job = write_job(
        folder / "job.yaml",
        model_dir=tiny_model_dir,
        data=_rows(folder / "data.jsonl", "returns"),
        output=f"file://{folder}/out",
        continual={"from": f"file://{second['folder']}", "ewc": {}, "replayFraction": 0},
        **other,
    )
    refused = subprocess.run(
        [str(Path(sys.executable).parent / "kubetune"), "run", str(job), "--workdir", str(folder / "work")],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert refused.returncode == 2, refused.stderr[-2000:]
    assert "error: spec.continual.ewc: the Fisher published with" in refused.stderr
    assert "set continual.replayFraction above 0" in refused.stderr
    assert "Traceback" not in refused.stderr
    assert not (folder / "out").exists(), "nothing published"


def test_ewc_and_publish_fisher_are_refused_where_they_cannot_apply() -> None:
    from kubetune.api.manifest import ManifestError, parse_spec

    spec: dict[str, Any] = {
        "baseModel": {"uri": "builtin://smollm2-135m-instruct"},
        "continual": {"ewc": {"lambda": 10}},
        "dataset": {"sources": [{"uri": "s3://team-a/data/new.jsonl"}]},
        "output": {"uri": "s3://team-a/models/"},
    }
    with pytest.raises(ManifestError, match=r"spec.continual.ewc: ewc anchors training at the version it starts"):
        parse_spec(spec)
    spec["continual"] = {"publishFisher": True}
    assert parse_spec(spec).continual.publish_fisher  # type: ignore[union-attr]
    spec["method"] = {"type": "lora", "adapter": "prefix"}
    with pytest.raises(ManifestError, match=r"spec.continual.publishFisher: .*not prefix or bottleneck"):
        parse_spec(spec)
    spec["continual"] = {"from": "s3://team-a/models/v1", "ewc": {}}
    spec["method"] = {"type": "lora", "objective": "dpo"}
    spec["dataset"] = {"sources": [{"uri": "s3://team-a/data/pairs.jsonl", "format": "preference"}]}
    with pytest.raises(ManifestError, match=r"spec.continual.ewc: continual.ewc .* for method.objective sft"):
        parse_spec(spec)


def test_a_damaged_published_fisher_is_refused_at_the_field(tmp_path: Path) -> None:
    """The Fisher is read from storage: one that matches the starting point but holds a negative, an
    infinite or a missing value is refused, naming the field, before any step."""
    import torch
    from safetensors.torch import save_file

    from kubetune_trainer.training.ewc import ANCHOR_DIGEST, EwcPlan, anchor_digest, prepare_anchor

    model = torch.nn.Linear(3, 2)
    good = {name: torch.ones_like(p) for name, p in model.named_parameters()}
    metadata = {ANCHOR_DIGEST: anchor_digest(model), "rows": "4", "taskRows": "9"}
    plan = EwcPlan(earlier=[], new_rows=3, lambda_=None, seed=0, published=tmp_path / "f.safetensors", version="v1")

    def anchored(tensors: dict[str, Any], meta: dict[str, str] = metadata) -> Any:
        save_file(tensors, str(tmp_path / "f.safetensors"), metadata=meta)
        return prepare_anchor(plan, model, None, sequence_length=8, chat_template=None, device="cpu")

    _, record = anchored(good)
    assert record["fisher"] == "published" and record["earlierRows"] == 9 and record["lambda"] == 3.0
    for broken in (
        {**good, "weight": -good["weight"]},
        {**good, "bias": torch.full((2,), float("inf"))},
        {"weight": good["weight"]},
        {**good, "bias": torch.ones(3)},
    ):
        with pytest.raises(ConfigurationError, match=r"^spec.continual.ewc: the Fisher published with v1 is not"):
            anchored(broken)
    with pytest.raises(ConfigurationError, match=r"first wrong: its metadata"):
        anchored(good, {**metadata, "taskRows": "many"})
