"""Fuzzing the dataset readers: any bytes under any supported name end in rows (some flagged as
invalid with their line) or a file-level refusal, never another exception, in bounded time and memory."""

from __future__ import annotations

import gzip
import tracemalloc

import pyarrow.parquet  # noqa: F401  imported once here, so the memory bound measures reading, not the import
import zstandard  # noqa: F401
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kubetune_trainer.data.readers import DecompressionBomb, FileProblem, RawRow, read_rows

# No per-example deadline: the first example of a format pays its reader's import (pyarrow: seconds on a
# loaded 2-core machine), which made the test flaky without saying anything about the readers; a reader
# that hangs is still caught by the suite's timeout.
FUZZ = settings(max_examples=1000, deadline=None, suppress_health_check=[HealthCheck.too_slow], derandomize=True)
NAMES = st.sampled_from(["x.jsonl", "x.json", "x.csv", "x.parquet", "x.jsonl.gz", "x.csv.zst", "x.txt"])


def read(name: str, payload: bytes) -> list[RawRow] | Exception:
    tracemalloc.start()
    try:
        return list(read_rows(f"file:///data/{name}", payload))
    except (FileProblem, DecompressionBomb) as refusal:
        return refusal
    finally:
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        assert peak < 200 * 2**20, peak


def check(rows: list[RawRow] | Exception) -> None:
    if isinstance(rows, Exception):
        assert str(rows)
        return
    for row in rows:
        assert row.number >= 1 and (row.data is None) == (row.error is not None)


@FUZZ
@given(NAMES, st.binary(max_size=4096))
def test_arbitrary_bytes_are_rows_or_a_refusal(name: str, payload: bytes) -> None:
    check(read(name, payload))


# Text made of the characters that break line-oriented formats: quotes, separators, line breaks,
# braces, bytes that are not UTF-8.
PIECES = st.sampled_from(['"', ",", "\n", "\r\n", "\u2028", "{", "}", "[", "]", ":", "\\", "a", "1", " ", "é"])


@FUZZ
@given(st.sampled_from(["x.jsonl", "x.csv", "x.json"]), st.lists(PIECES, max_size=200), st.booleans())
def test_structured_text_is_rows_or_a_refusal(name: str, pieces: list[str], bad_byte: bool) -> None:
    payload = "".join(pieces).encode()
    if bad_byte and payload:
        payload = payload[: len(payload) // 2] + b"\xff" + payload[len(payload) // 2 :]
    check(read(name, payload))
    check(read(name + ".gz", gzip.compress(payload)))
