"""Validation names file, line and field; curation rules count what they drop; splits are stable."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from kubetune.api.v1alpha1 import DatasetSpec
from kubetune_trainer.data.curation import assign_split
from kubetune_trainer.data.prepare import DatasetError, prepare_dataset
from kubetune_trainer.data.types import Example, Message
from kubetune_trainer.storage import ObjectStore


def words(example: Example) -> int:
    return len(example.flat_text().split())


def write(path: Path, lines: list[str]) -> str:
    path.write_text("\n".join(lines) + "\n")
    return f"file://{path}"


def chat(user: str, answer: str) -> str:
    return json.dumps({"messages": [{"role": "user", "content": user}, {"role": "assistant", "content": answer}]})


GOOD = [chat(f"Unique question number {i} about subject {i * 17} and more", f"answer {i}") for i in range(20)]


def test_reject_policy_lists_each_problem_with_file_line_and_field(tmp_path: Path) -> None:
    uri = write(
        tmp_path / "d.jsonl",
        [
            *GOOD[:3],
            '{"messages": [{"role": "bot", "content": "x"}]}',
            "{not json",
            json.dumps({"messages": [{"role": "user", "content": "only a question"}]}),
            json.dumps({"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "  "}]}),
            json.dumps(
                {
                    "messages": [
                        {"role": "user", "content": "q"},
                        {"role": "assistant", "content": "a"},
                        {"role": "user", "content": "more?"},
                    ]
                }
            ),
        ],
    )
    spec = DatasetSpec.model_validate({"sources": [{"uri": uri, "format": "chat"}]})
    with pytest.raises(DatasetError) as raised:
        prepare_dataset(spec, ObjectStore(), words, max_tokens=100)
    text = str(raised.value)
    assert "5 invalid row(s)" in text
    assert f"{uri}:4: field 'messages[0].role': unknown role 'bot'" in text
    assert f"{uri}:5: malformed JSON" in text
    assert f"{uri}:6: field 'messages': no assistant turn" in text
    assert f"{uri}:7: field 'messages[1].content': empty" in text
    assert f"{uri}:8: field 'messages[2]': the conversation must end with an assistant turn" in text


def test_drop_policy_counts_by_reason(tmp_path: Path) -> None:
    uri = write(
        tmp_path / "d.jsonl", [*GOOD, '{"messages": [{"role": "bot", "content": "x"}]}', "{oops", '{"messages": 3}']
    )
    spec = DatasetSpec.model_validate({"sources": [{"uri": uri}], "invalidRows": "drop", "minExamples": 1})
    data = prepare_dataset(spec, ObjectStore(), words, max_tokens=100)
    assert dict(data.report.invalid_rows) == {"unknown_role": 1, "malformed": 1, "wrong_type": 1}
    assert sum(data.report.splits.values()) == 20
    assert data.report.to_dict()["invalidRows"]["malformed"] == 1


def test_csv_errors_point_at_the_physical_line(tmp_path: Path) -> None:
    (tmp_path / "d.csv").write_text('prompt,completion\n"multi\nline prompt",ok\nhello,\n')
    spec = DatasetSpec.model_validate({"sources": [{"uri": f"file://{tmp_path}/d.csv", "format": "prompt-completion"}]})
    with pytest.raises(DatasetError, match=r"d.csv:4: field 'completion': empty"):
        prepare_dataset(spec, ObjectStore(), words, max_tokens=100)


def test_each_curation_rule_counts_exactly(tmp_path: Path) -> None:
    base = (
        "the quick brown fox jumps over the lazy dog near the river bank today while birds sing loudly in tall green "
        "trees and children play football on the wide field behind the old stone school building in our small quiet town"
    )
    rows = [
        *GOOD,
        GOOD[0].replace("Unique", "UNIQUE"),  # exact duplicate after normalisation (case)
        GOOD[1].replace("more", "more!!"),  # exact duplicate after normalisation (edge punctuation)
        chat(base, "yes"),
        chat(base.replace("today", "today,"), "yes"),  # near duplicate (punctuation inside)
        chat(base + " again", "yes"),  # near duplicate (one more word)
        chat("hi", "ok"),  # too short (3 words with roles)
        chat(" ".join(f"word{i}" for i in range(60)) + " unique tail", "long"),  # too long
    ]
    uri = write(tmp_path / "d.jsonl", rows)
    spec = DatasetSpec.model_validate(
        {"sources": [{"uri": uri}], "curation": {"minTokens": 5, "maxTokens": 55, "nearDedup": {"threshold": 0.8}}}
    )
    data = prepare_dataset(spec, ObjectStore(), words, max_tokens=100)
    assert dict(data.report.dropped) == {"exact_duplicate": 2, "near_duplicate": 2, "too_short": 1, "too_long": 1}
    assert sum(data.report.splits.values()) == 21
    samples = data.report.dropped_samples["near_duplicate"][0]
    assert "similar to" in samples["detail"] and samples["where"].startswith(uri)
    markdown = data.report.to_markdown()
    assert "| near_duplicate | 2 |" in markdown and "| too_long | 1 |" in markdown
    assert data.report.to_dict()["tokens"]["max"] <= 55


def test_split_is_deterministic_and_stable_when_data_grows() -> None:
    examples = [
        Example(messages=(Message("user", f"question {i}"), Message("assistant", f"answer {i}"))) for i in range(2000)
    ]
    first = [assign_split(e, "seed-a", 0.1, 0.1) for e in examples]
    assert first == [assign_split(e, "seed-a", 0.1, 0.1) for e in examples]
    grown = examples + [Example(text=f"new {i}") for i in range(500)]
    assert [assign_split(e, "seed-a", 0.1, 0.1) for e in grown[:2000]] == first
    assert 150 < first.count("test") < 250 and 150 < first.count("validation") < 250
    assert first != [assign_split(e, "seed-b", 0.1, 0.1) for e in examples]


def test_empty_dataset_is_an_error(tmp_path: Path) -> None:
    uri = write(tmp_path / "d.jsonl", ['{"oops": 1}'])
    spec = DatasetSpec.model_validate({"sources": [{"uri": uri}], "invalidRows": "drop", "minExamples": 1})
    with pytest.raises(DatasetError, match="no usable examples"):
        prepare_dataset(spec, ObjectStore(), words, max_tokens=100)
