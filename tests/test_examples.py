"""The shipped examples: manifests valid, data files present, datasets sane."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from kubetune.api.manifest import load_manifest
from kubetune.api.v1alpha1 import DatasetSpec
from kubetune_trainer.data.prepare import prepare_dataset
from kubetune_trainer.localrun import IMAGE_EXAMPLES_DIR
from kubetune_trainer.storage import ObjectStore

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
MANIFESTS = sorted(EXAMPLES.glob("*.yaml"))
LABELS = {"billing", "technical", "account", "shipping", "returns", "feature_request"}


def file_uris(node: object) -> list[str]:
    if isinstance(node, dict):
        return [u for v in node.values() for u in file_uris(v)]
    if isinstance(node, list):
        return [u for v in node for u in file_uris(v)]
    return [node] if isinstance(node, str) and node.startswith("file://") else []


@pytest.mark.parametrize("path", MANIFESTS, ids=lambda p: p.name)
def test_manifest_is_valid_and_its_files_ship(path: Path) -> None:
    job = load_manifest(path)
    for uri in file_uris(job.spec.to_manifest()):
        assert uri.startswith(f"file://{IMAGE_EXAMPLES_DIR}/"), uri
        assert (EXAMPLES / uri[len(f"file://{IMAGE_EXAMPLES_DIR}/") :]).is_file(), uri


def rows(name: str) -> list[dict]:  # type: ignore[type-arg]
    return [json.loads(line) for line in (EXAMPLES / name).read_text().splitlines() if line.strip()]


def test_tickets_are_labelled_balanced_and_survive_dedup() -> None:
    tickets = rows("support-tickets/tickets.jsonl")
    assert len(tickets) >= 400
    labels = Counter(r["messages"][-1]["content"] for r in tickets)
    assert set(labels) == LABELS
    assert min(labels.values()) / len(tickets) > 0.08
    spec = DatasetSpec.model_validate({"sources": [{"uri": f"file://{EXAMPLES}/support-tickets/tickets.jsonl"}]})
    data = prepare_dataset(spec, ObjectStore(), lambda e: len(e.flat_text().split()), max_tokens=512)
    assert sum(data.report.splits.values()) >= 0.95 * len(tickets)


def test_general_sets_are_large_disjoint_and_answered() -> None:
    regression, replay = rows("general/regression.jsonl"), rows("general/replay.jsonl")
    assert len(regression) >= 200 and len(replay) >= 200
    prompts = lambda data: {r["messages"][0]["content"] for r in data}  # noqa: E731
    assert not prompts(regression) & prompts(replay)
    assert all(
        r["messages"][-1]["role"] == "assistant" and r["messages"][-1]["content"].strip() for r in regression + replay
    )
