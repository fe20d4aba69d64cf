"""Class balance (``dataset.curation.balance``) through ``kubetune preflight`` as the pre-flight pod runs
it (in process: the built-in tokenizer, no weights): the label distribution in the curation report,
and the frequent labels downsampled or the rare ones upsampled, seeded, before the split."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.trainer.jobs import preflight_dataset

LABELS = {"shipping": 60, "returns": 12, "billing": 6}
WORDS = ["late", "lost", "damaged", "wrong", "missing", "opened", "delayed", "returned", "charged", "stuck"]


def write_tickets(path: Path, labels: dict[str, int]) -> Path:
    rows = []
    for label, count in labels.items():
        for i in range(count):
            question = f"Ticket {label[0]}{i}: order {i * 7919 % 1000} is {WORDS[i % len(WORDS)]}, code {i * 31}"
            rows.append({"messages": [{"role": "user", "content": question}, {"role": "assistant", "content": label}]})
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def preflight(
    folder: Path, data: Path, curation: dict[str, Any], seed: str = "kubetune"
) -> tuple[int, str, dict[str, Any]]:
    dataset = {
        "sources": [{"uri": f"file://{data}"}],
        "curation": {"nearDedup": {"enabled": False}, **curation},
        "split": {"seed": seed},
    }
    _, code, said = preflight_dataset(folder, dataset)
    reports = folder / "work" / "artifacts" / "reports"
    return code, said, json.loads((reports / "curation.json").read_text()) if code == 0 else {}


def test_the_report_shows_the_labels_and_nothing_is_balanced_unless_asked(tmp_path: Path) -> None:
    code, said, report = preflight(tmp_path, write_tickets(tmp_path / "t.jsonl", LABELS), {})
    assert code == 0, said[-2000:]
    assert report["labels"] == {"before": LABELS}
    assert sum(report["splits"].values()) == sum(LABELS.values())
    page = (tmp_path / "work" / "artifacts" / "reports" / "curation.md").read_text()
    assert "| shipping | 60 |" in page and "| billing | 6 |" in page


@pytest.mark.parametrize(
    ("by", "after", "dropped", "repeated"),
    [
        ("downsample", {"shipping": 12, "returns": 12, "billing": 6}, 48, 0),
        ("upsample", {"shipping": 60, "returns": 30, "billing": 30}, 0, 42),
    ],
)
def test_balancing_keeps_every_label_within_the_ratio_before_the_split(
    tmp_path: Path, by: str, after: dict[str, int], dropped: int, repeated: int
) -> None:
    data = write_tickets(tmp_path / "t.jsonl", LABELS)
    code, said, report = preflight(tmp_path, data, {"balance": {"maxRatio": 2, "by": by}})
    assert code == 0, said[-2000:]
    assert report["labels"]["after"] == after and report["labels"]["repeated"] == repeated
    assert report["dropped"].get("balance_downsampled", 0) == dropped
    assert sum(report["splits"].values()) == sum(after.values())
    page = (tmp_path / "work" / "artifacts" / "reports" / "curation.md").read_text()
    assert f"| shipping | 60 | {after['shipping']} |" in page


def test_downsampling_is_seeded_by_the_split_seed(tmp_path: Path) -> None:
    labels = {"shipping": 60, "returns": 24, "billing": 12}
    data = write_tickets(tmp_path / "t.jsonl", labels)
    kept = []
    for run, seed in enumerate(("one", "one", "two")):
        folder = tmp_path / str(run)
        folder.mkdir()
        code, said, report = preflight(folder, data, {"balance": {"maxRatio": 1}}, seed=seed)
        assert code == 0, said[-2000:]
        assert report["labels"]["after"] == dict.fromkeys(labels, 12)
        kept.append({s["where"] for s in report["droppedSamples"]["balance_downsampled"]})
    assert kept[0] == kept[1] != kept[2]


def test_balancing_answers_that_are_not_labels_is_refused_naming_the_field(tmp_path: Path) -> None:
    data = write_tickets(tmp_path / "t.jsonl", {"x": 20})
    rows = [json.loads(line) for line in data.read_text().splitlines()]
    for i, row in enumerate(rows):
        row["messages"][1]["content"] = f"Thanks for writing; we looked at order {i} and will call you back soon."
    data.write_text("".join(json.dumps(row) + "\n" for row in rows))
    code, said, _ = preflight(tmp_path, data, {"balance": {"maxRatio": 2}})
    assert code == 2 and "spec.dataset.curation.balance: the answers are not labels" in said, said[-2000:]
    assert "Traceback" not in said


def test_a_ratio_below_one_is_refused_at_the_field(tmp_path: Path) -> None:
    data = write_tickets(tmp_path / "t.jsonl", LABELS)
    code, said, _ = preflight(tmp_path, data, {"balance": {"maxRatio": 0.5}})
    assert code == 2 and "spec.dataset.curation.balance.maxRatio" in said, said[-2000:]


def test_labels_that_are_identifiers_are_shown_redacted_even_when_personal_data_is_only_reported(
    tmp_path: Path,
) -> None:
    data = write_tickets(tmp_path / "t.jsonl", {"anna@example.com": 20, "omar@example.com": 10, "returns": 10})
    code, said, report = preflight(tmp_path, data, {"pii": "report"})
    assert code == 0, said[-2000:]
    assert report["labels"] == {"before": {"[EMAIL]": 30, "returns": 10}}
    for page in ("curation.json", "curation.md"):
        assert "@example.com" not in (tmp_path / "work" / "artifacts" / "reports" / page).read_text()
