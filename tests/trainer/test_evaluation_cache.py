"""The base model's test-split scores are kept by what decides them and read back, through
``kubetune run``: locally, beside the output for a fresh machine or pod, and never trusted when damaged."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from kubetune.api.contract import EXIT_OK
from kubetune_trainer.cli import main as kubetune
from kubetune_trainer.data.types import Example, Message
from kubetune_trainer.evaluation.base_cache import BaseScoresKey, cached_base_scores, examples_sha256
from kubetune_trainer.evaluation.scoring import SideScores, TokenLoss
from kubetune_trainer.row_cache import RowCache
from kubetune_trainer.storage import ObjectStore
from tests.trainer.jobs import write_dataset, write_job


def run(root: Path, model_dir: Path, cache: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """One short ``kubetune run`` on the tiny model; its published evaluation, metric by metric."""
    monkeypatch.setenv("KUBETUNE_CACHE", str(cache))
    job = write_job(
        root / "job.yaml",
        model_dir=model_dir,
        data=write_dataset(root / "data.jsonl", 64),
        output=f"file://{root}/out/",
        evaluation={"metrics": ["perplexity", "exactMatch"], "maxNewTokens": 4},
    )
    assert kubetune(["run", str(job), "--workdir", str(root / "work"), "--max-steps", "2"]) == EXIT_OK
    latest = max((root / "out").glob("v*"), key=lambda version: version.stat().st_mtime_ns)
    report = json.loads((latest / "reports" / "evaluation.json").read_text())
    return {m["name"]: m for m in report["metrics"]}


def rewrite(path: Path, change: Callable[[dict[str, Any]], dict[str, Any]]) -> None:
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    path.write_text("".join(json.dumps(change(row)) + "\n" for row in rows))


def test_a_second_run_reads_the_base_scores_back_from_beside_the_output_and_ignores_a_damaged_copy(
    tmp_path: Path, tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = run(tmp_path, tiny_model_dir, tmp_path / "cache-a", monkeypatch)
    (local,) = (tmp_path / "cache-a" / "evaluation").glob("*.jsonl")
    stored = tmp_path / "out" / ".kubetune" / "evaluation" / local.name
    assert stored.read_text() == local.read_text(), "kept locally and beside the output"

    # A fresh machine (empty local cache) finds the stored copy: planted values show it is what was read.
    rewrite(stored, lambda row: {**row, "nllSum": float(row["tokens"]), "output": "planted"})
    second = run(tmp_path, tiny_model_dir, tmp_path / "cache-b", monkeypatch)
    assert second["perplexity"]["base"] == pytest.approx(math.e)
    assert second["exactMatch"]["base"] == 0.0
    assert (tmp_path / "cache-b" / "evaluation" / local.name).is_file(), "copied to the local cache"

    # Damaged everywhere: a miss, computed again, exactly the first run's values; never a crash.
    (tmp_path / "cache-b" / "evaluation" / local.name).write_text("{not json\n")
    stored.write_text(stored.read_text().replace('"output"', '"answer"'))
    third = run(tmp_path, tiny_model_dir, tmp_path / "cache-b", monkeypatch)
    assert [third[m]["base"] for m in third] == [first[m]["base"] for m in first]


EXAMPLES = [Example(messages=(Message("user", f"q{i}"), Message("assistant", f"a{i}"))) for i in range(3)]


def key(**changes: Any) -> BaseScoresKey:
    fields: dict[str, Any] = {
        "model_sha256": "m",
        "weights": "full",
        "precision": "fp32",
        "device": "cpu",
        "libraries": "torch x, transformers y",
        "chat_template": None,
        "max_length": 128,
        "max_new_tokens": 16,
        "examples_sha256": examples_sha256(EXAMPLES),
    }
    return BaseScoresKey(**(fields | changes))


def test_every_setting_that_decides_the_scores_is_in_the_key() -> None:
    changed = [
        key(model_sha256="other"),
        key(weights="nf4"),
        key(precision="bf16"),
        key(device="cuda"),
        key(libraries="torch z, transformers y"),
        key(chat_template="{{ messages }}"),
        key(max_length=256),
        key(max_new_tokens=None),
        key(examples_sha256=examples_sha256(EXAMPLES[:2])),
        key(examples_sha256=examples_sha256(list(reversed(EXAMPLES)))),
    ]
    assert len({k.file for k in [key(), *changed]}) == len(changed) + 1


def test_scores_read_back_are_the_scores_computed_bit_for_bit(tmp_path: Path) -> None:
    computed = SideScores([TokenLoss(1 / 3, 2), TokenLoss(math.pi * 1e5, 7), TokenLoss(0.0, 0)], ["x", "ü ✓", ""])
    cache = RowCache("evaluation", tmp_path / "cache", ObjectStore(), (tmp_path / "out").as_uri() + "/")
    calls: list[int] = []

    def compute() -> SideScores:
        calls.append(1)
        return computed

    assert cached_base_scores(key(), 3, compute, cache)[1] == "computed"
    again, origin = cached_base_scores(key(), 3, compute, cache)
    assert origin == "cache" and calls == [1]
    assert again.losses == computed.losses and again.outputs == computed.outputs
    # A likelihood that is not a finite number is a miss, never a value a gate compares against.
    local = tmp_path / "cache" / "evaluation" / key().file
    rewrite(local, lambda row: {**row, "nllSum": float("inf")})
    (tmp_path / "out" / ".kubetune" / "evaluation" / key().file).unlink()
    assert cached_base_scores(key(), 3, compute, cache)[1] == "computed" and calls == [1, 1]
    assert cached_base_scores(key(max_new_tokens=None), 3, compute, cache)[1] == "computed"
    likelihoods_only, origin = cached_base_scores(key(max_new_tokens=None), 3, compute, cache)
    assert origin == "cache" and likelihoods_only.losses == computed.losses and likelihoods_only.outputs == []
