"""Read raw rows from JSONL, JSON, CSV and Parquet, each with its 1-based line or row number.

A row that cannot even be parsed (a broken JSON line) is yielded as a :class:`RawRow` with
``error`` set, so the validation policy (reject or drop) decides, not the reader.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

SUPPORTED_SUFFIXES = (".jsonl", ".json", ".csv", ".parquet")


@dataclass(frozen=True)
class RawRow:
    source: str  # the file's URI
    number: int  # 1-based line (JSONL, CSV) or row index (JSON, Parquet)
    unit: str  # "line" or "row", for messages
    data: dict[str, Any] | None
    error: str | None = None

    @property
    def where(self) -> str:
        return f"{self.source}:{self.number}"


def is_supported(uri: str) -> bool:
    return uri.lower().endswith(SUPPORTED_SUFFIXES)


def read_rows(uri: str, payload: bytes) -> Iterator[RawRow]:
    suffix = uri.lower().rsplit(".", 1)[-1]
    if suffix == "jsonl":
        yield from _jsonl(uri, payload)
    elif suffix == "json":
        yield from _json(uri, payload)
    elif suffix == "csv":
        yield from _csv(uri, payload)
    elif suffix == "parquet":
        yield from _parquet(uri, payload)
    else:
        raise ValueError(f"{uri}: unsupported file type (expected {', '.join(SUPPORTED_SUFFIXES)})")


def _decode(uri: str, payload: bytes) -> str:
    try:
        return payload.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raise ValueError(f"{uri}: not UTF-8 text (byte {err.start})") from err


def _object_row(uri: str, number: int, unit: str, value: Any) -> RawRow:
    if not isinstance(value, dict):
        return RawRow(uri, number, unit, None, f"expected a JSON object, got {type(value).__name__}")
    return RawRow(uri, number, unit, value)


def _jsonl(uri: str, payload: bytes) -> Iterator[RawRow]:
    for number, line in enumerate(_decode(uri, payload).splitlines(), start=1):
        if not line.strip():
            continue
        try:
            value = json.loads(line)
        except json.JSONDecodeError as err:
            yield RawRow(uri, number, "line", None, f"malformed JSON: {err.msg} (column {err.colno})")
            continue
        yield _object_row(uri, number, "line", value)


def _json(uri: str, payload: bytes) -> Iterator[RawRow]:
    try:
        document = json.loads(_decode(uri, payload))
    except json.JSONDecodeError as err:
        raise ValueError(f"{uri}:{err.lineno}: malformed JSON: {err.msg} (column {err.colno})") from err
    if isinstance(document, dict) and isinstance(document.get("data"), list):
        document = document["data"]
    if not isinstance(document, list):
        raise ValueError(f'{uri}: expected a JSON array of objects (or {{"data": [...]}})')
    for number, value in enumerate(document, start=1):
        yield _object_row(uri, number, "row", value)


def _csv(uri: str, payload: bytes) -> Iterator[RawRow]:
    reader = csv.DictReader(io.StringIO(_decode(uri, payload), newline=""))
    for record in reader:
        # line_num is the reader's physical line; quoted fields may span lines.
        number = reader.line_num
        if None in record:
            yield RawRow(uri, number, "line", None, "more fields than the header has columns")
            continue
        yield RawRow(uri, number, "line", {k: v for k, v in record.items() if k is not None})


def _parquet(uri: str, payload: bytes) -> Iterator[RawRow]:
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(io.BytesIO(payload))
    except Exception as err:  # pyarrow raises several unrelated types for corrupt files
        raise ValueError(f"{uri}: not a readable Parquet file: {err}") from err
    for number, record in enumerate(table.to_pylist(), start=1):
        yield RawRow(uri, number, "row", record)
