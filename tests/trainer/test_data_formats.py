"""Reading every file type and format, through the same ObjectStore production uses (moto S3)."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

import boto3
import pytest

from kubetune.api.v1alpha1 import DatasetSpec, S3Spec
from kubetune_trainer.data.prepare import DatasetError, prepare_dataset
from kubetune_trainer.data.types import Example
from kubetune_trainer.storage import ObjectStore

ALPACA = [
    {"instruction": f"Summarise report {i}", "input": f"Report body {i} about topic {i * 3}", "output": f"Summary {i}"}
    for i in range(12)
]
CHAT = [
    {
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": f"Question {i} on item {i * 7}?"},
            {"role": "assistant", "content": f"Answer {i}."},
        ]
    }
    for i in range(12)
]
SHAREGPT = [
    {
        "conversations": [
            {"from": "human", "value": f"Hello number {i} from user {i * 5}"},
            {"from": "gpt", "value": f"Hi {i}!"},
        ]
    }
    for i in range(12)
]
PROMPT_COMPLETION = [{"prompt": f"Translate word {i} of list {i * 11}", "completion": f"mot {i}"} for i in range(12)]
TEXT = [{"text": f"Plain document number {i} with some words about subject {i * 13}."} for i in range(12)]


def words(example: Example) -> int:
    return len(example.flat_text().split())


def spec(uri: str, **source: Any) -> DatasetSpec:
    # These tests read formats, not datasets big enough to train on: no minimum.
    return DatasetSpec.model_validate(
        {"sources": [{"uri": uri, **source}], "split": {"validation": 0.0, "test": 0.0}, "minExamples": 1}
    )


def encode(rows: list[dict[str, Any]], suffix: str) -> bytes:
    if suffix == "jsonl":
        return "".join(json.dumps(r) + "\n" for r in rows).encode()
    if suffix == "json":
        return json.dumps(rows).encode()
    if suffix == "csv":
        out = io.StringIO()
        writer = csv.DictWriter(out, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
        return out.getvalue().encode()
    import pyarrow as pa
    import pyarrow.parquet as pq

    sink = io.BytesIO()
    pq.write_table(pa.Table.from_pylist(rows), sink)
    return sink.getvalue()


@pytest.mark.parametrize("suffix", ["jsonl", "json", "csv", "parquet"])
@pytest.mark.parametrize(
    ("rows", "detected"),
    [(ALPACA, "alpaca"), (PROMPT_COMPLETION, "prompt-completion"), (TEXT, "text")],
)
def test_flat_formats_in_every_file_type_from_s3(
    s3_spec: S3Spec, s3_bucket: str, suffix: str, rows: list[dict[str, Any]], detected: str
) -> None:
    boto3.client("s3", endpoint_url=s3_spec.endpoint).put_object(
        Bucket=s3_bucket, Key=f"data/train.{suffix}", Body=encode(rows, suffix)
    )
    data = prepare_dataset(spec(f"s3://{s3_bucket}/data/train.{suffix}"), ObjectStore(s3_spec), words, max_tokens=100)
    assert len(data.train) == len(rows)
    assert data.report.sources[0].format == f"auto: {detected}"
    first = next(e for e in data.train if e.row == 1 or e.row == 2)
    assert first.source == f"s3://{s3_bucket}/data/train.{suffix}"


@pytest.mark.parametrize("suffix", ["jsonl", "json", "parquet"])
def test_chat_and_sharegpt_from_s3_prefix(s3_spec: S3Spec, s3_bucket: str, suffix: str) -> None:
    s3 = boto3.client("s3", endpoint_url=s3_spec.endpoint)
    s3.put_object(Bucket=s3_bucket, Key=f"mix/a.{suffix}", Body=encode(CHAT, suffix))
    s3.put_object(Bucket=s3_bucket, Key=f"mix/b.{suffix}", Body=encode(SHAREGPT, suffix))
    s3.put_object(Bucket=s3_bucket, Key="mix/README.md", Body=b"ignored")
    data = prepare_dataset(spec(f"s3://{s3_bucket}/mix/"), ObjectStore(s3_spec), words, max_tokens=100)
    assert len(data.train) == 24
    roles = {tuple(m.role for m in e.messages) for e in data.train}
    assert roles == {("system", "user", "assistant"), ("user", "assistant")}
    sharegpt = next(e for e in data.train if e.source.endswith(f"b.{suffix}"))
    assert sharegpt.messages[1].content.startswith("Hi ")


def test_column_mapping(tmp_path: Path) -> None:
    rows = [{"question": f"What is item {i} made of in box {i * 3}?", "answer": f"wood {i}"} for i in range(8)]
    (tmp_path / "qa.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    mapped = spec(
        f"file://{tmp_path}/qa.jsonl",
        format="prompt-completion",
        columnMapping={"prompt": "question", "completion": "answer"},
    )
    data = prepare_dataset(mapped, ObjectStore(), words, max_tokens=100)
    assert [m.role for m in data.train[0].messages] == ["user", "assistant"]
    assert data.train[0].messages[1].content.startswith("wood")


def test_weighted_sources_apply_to_train_only(tmp_path: Path) -> None:
    (tmp_path / "a.jsonl").write_text("".join(json.dumps(r) + "\n" for r in ALPACA))
    (tmp_path / "b.jsonl").write_text("".join(json.dumps(r) + "\n" for r in TEXT))
    mixed = DatasetSpec.model_validate(
        {
            "sources": [
                {"uri": f"file://{tmp_path}/a.jsonl", "weight": 2.0},
                {"uri": f"file://{tmp_path}/b.jsonl", "weight": 0.5},
            ],
            "split": {"validation": 0, "test": 0},
            "minExamples": 1,
        }
    )
    data = prepare_dataset(mixed, ObjectStore(), words, max_tokens=100)
    from_a = sum(1 for e in data.train if e.source.endswith("a.jsonl"))
    from_b = sum(1 for e in data.train if e.source.endswith("b.jsonl"))
    assert from_a == 24
    assert 2 <= from_b <= 10, "about half of b, chosen by hash"
    again = prepare_dataset(mixed, ObjectStore(), words, max_tokens=100)
    assert [e.flat_text() for e in again.train] == [e.flat_text() for e in data.train]


def test_missing_source_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match=r"spec.dataset.sources\[0\].uri: .*nothing found"):
        prepare_dataset(spec(f"file://{tmp_path}/nope/"), ObjectStore(), words, max_tokens=100)


def test_unreachable_s3_is_a_clear_error() -> None:
    store = ObjectStore(S3Spec(endpoint="http://127.0.0.1:9", region="us-east-1"))
    with pytest.raises(DatasetError, match=r"spec.dataset.sources\[0\].uri: s3://bucket-x/data.jsonl: cannot list"):
        prepare_dataset(spec("s3://bucket-x/data.jsonl"), store, words, max_tokens=100)


def test_train_only_sources_never_reach_validation_or_test(tmp_path: Path) -> None:
    (tmp_path / "task.jsonl").write_text("".join(json.dumps(r) + "\n" for r in ALPACA))
    (tmp_path / "replay.jsonl").write_text("".join(json.dumps(r) + "\n" for r in TEXT))
    mixed = DatasetSpec.model_validate(
        {
            "sources": [
                {"uri": f"file://{tmp_path}/task.jsonl"},
                {"uri": f"file://{tmp_path}/replay.jsonl", "trainOnly": True},
            ],
            "split": {"validation": 0.3, "test": 0.3},
            "minExamples": 1,
        }
    )
    data = prepare_dataset(mixed, ObjectStore(), words, max_tokens=100)
    held_out = data.validation + data.test
    assert held_out and all(e.source.endswith("task.jsonl") for e in held_out)
    assert sum(1 for e in data.train if e.source.endswith("replay.jsonl")) == len(TEXT)


def test_request_logs_train_only_on_the_answers_people_confirmed(s3_spec: S3Spec, s3_bucket: str) -> None:
    """A DriftMonitor's request logs as a dataset source: the labelled rows (``label`` or ``feedback``,
    which replaces the answer the model gave) are trained on, the others counted as dropped; a row that
    is no request is an invalid row under the usual policy."""
    logged = [
        {
            "messages": [
                {"role": "user", "content": f"Where is parcel {i}?"},
                {"role": "assistant", "content": "billing"},
            ]
        }
        | ({"label": "shipping"} if i % 2 else {})
        for i in range(10)
    ]
    logged += [{"prompt": "Refund order 77 please", "completion": "shipping", "feedback": "billing"}]
    logged += [{"text": "an unlabelled plain request"}, {"latency_ms": 12}, {"prompt": "Lost card", "label": 3}]
    boto3.client("s3", endpoint_url=s3_spec.endpoint).put_object(
        Bucket=s3_bucket, Key="logs/2026-12-04.jsonl", Body=encode(logged, "jsonl")
    )
    uri = f"s3://{s3_bucket}/logs/"
    store = ObjectStore(s3_spec)
    with pytest.raises(DatasetError, match=r"logs/2026-12-04.jsonl:13: .*not a request \(columns: latency_ms\)"):
        prepare_dataset(spec(uri, format="request-log"), store, words, max_tokens=100)
    lenient = spec(uri, format="request-log").model_copy(update={"invalid_rows": "drop"})
    data = prepare_dataset(lenient, store, words, max_tokens=100)
    answers = sorted(e.messages[-1].content for e in data.train)
    assert answers == ["billing"] + ["shipping"] * 5, "confirmed answers only, never the logged ones"
    assert data.report.dropped["unlabelled_request"] == 6 and data.report.invalid_rows["unknown_format"] == 1
    assert data.report.invalid_rows["wrong_type"] == 1, "a label that is not text is a mistake, not 'unlabelled'"

    boto3.client("s3", endpoint_url=s3_spec.endpoint).put_object(
        Bucket=s3_bucket, Key="quiet/0001.jsonl", Body=encode([{"text": "hello"}, {"prompt": "hi"}], "jsonl")
    )
    with pytest.raises(DatasetError, match=r"sources\[0\]: s3://.*/quiet/: none of its 2 logged requests"):
        prepare_dataset(spec(f"s3://{s3_bucket}/quiet/", format="request-log"), store, words, max_tokens=100)
