"""Read raw rows from JSONL, JSON, CSV and Parquet (optionally gzip- or zstd-compressed), each with
its 1-based physical line or row number.

A row that cannot be parsed (a broken JSON line, a line that is not UTF-8, a CSV record with the
wrong number of fields) is yielded as a :class:`RawRow` with ``error`` set, so the validation policy
(reject or drop) decides, not the reader. A file that cannot be read at all raises
:class:`FileProblem`; a compressed file that expands past the bounds raises :class:`DecompressionBomb`.
"""

from __future__ import annotations

import csv
import io
import json
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

SUPPORTED_SUFFIXES = (".jsonl", ".json", ".csv", ".parquet")
COMPRESSED_SUFFIXES = (".gz", ".zst")
# One example is at most a long conversation; a longer "line" is a file that is not JSONL.
MAX_ROW_BYTES = 8 * 2**20
# A compressed input may expand at most this much, and to at most this size (text compresses
# 5-20x; more is a decompression bomb).
MAX_EXPANSION = 100
MAX_DECOMPRESSED_BYTES = 10 * 2**30
_CHUNK = 2**20


@dataclass(frozen=True)
class RawRow:
    source: str  # the file's URI
    number: int  # 1-based line (JSONL, CSV) or row index (JSON, Parquet)
    unit: str  # "line" or "row", for messages
    data: dict[str, Any] | None
    error: str | None = None
    reason: str = "malformed"  # the report's per-reason count

    @property
    def where(self) -> str:
        return f"{self.source}:{self.number}"


class FileProblem(ValueError):
    """A whole file cannot be read as its type says (empty, binary, malformed JSON or Parquet)."""

    def __init__(self, message: str, reason: str) -> None:
        super().__init__(message)
        self.reason = reason


class DecompressionBomb(ValueError):
    """A compressed file expanding beyond MAX_EXPANSION or MAX_DECOMPRESSED_BYTES: always refused."""


def _kind(uri: str) -> str:
    """The data suffix under any compression suffix: ``x.jsonl.gz`` is ``.jsonl``."""
    name = uri.lower()
    for compressed in COMPRESSED_SUFFIXES:
        name = name.removesuffix(compressed)
    return "." + name.rsplit(".", 1)[-1] if "." in name.rsplit("/", 1)[-1] else ""


def is_supported(uri: str) -> bool:
    return _kind(uri) in SUPPORTED_SUFFIXES


def _bounded(uri: str, compressed_size: int, chunks: Iterator[bytes]) -> bytes:
    limit = min(MAX_DECOMPRESSED_BYTES, max(compressed_size, 1) * MAX_EXPANSION)
    out = bytearray()
    for chunk in chunks:
        out += chunk
        if len(out) > limit:
            raise DecompressionBomb(
                f"{uri}: expands to more than {limit} bytes ({MAX_EXPANSION}x its {compressed_size} bytes, "
                f"at most {MAX_DECOMPRESSED_BYTES // 2**30} GiB): refused as a decompression bomb"
            )
    return bytes(out)


def _gunzip(uri: str, payload: bytes) -> Iterator[bytes]:
    inflater = zlib.decompressobj(wbits=47)  # gzip or zlib header, detected
    data = payload
    try:
        while data:
            yield inflater.decompress(data, _CHUNK)
            data = inflater.unconsumed_tail
            if inflater.eof and inflater.unused_data:  # concatenated gzip members
                data = inflater.unused_data
                inflater = zlib.decompressobj(wbits=47)
        yield inflater.flush()
        if not inflater.eof:
            raise zlib.error("the compressed stream is truncated")
    except zlib.error as err:
        raise FileProblem(f"{uri}: not a readable gzip file: {err}", "unreadable_file") from err


def _unzstd(uri: str, payload: bytes) -> Iterator[bytes]:
    import zstandard

    try:
        reader = zstandard.ZstdDecompressor().stream_reader(io.BytesIO(payload), read_across_frames=True)
        while chunk := reader.read(_CHUNK):
            yield chunk
    except zstandard.ZstdError as err:
        raise FileProblem(f"{uri}: not a readable zstd file: {err}", "unreadable_file") from err


def decompressed(uri: str, payload: bytes) -> bytes:
    """The file's bytes, decompressed (bounded) when its name ends in .gz or .zst."""
    name = uri.lower()
    if name.endswith(".gz"):
        return _bounded(uri, len(payload), _gunzip(uri, payload))
    if name.endswith(".zst"):
        return _bounded(uri, len(payload), _unzstd(uri, payload))
    return payload


def read_rows(uri: str, payload: bytes) -> Iterator[RawRow]:
    kind = _kind(uri)
    if kind not in SUPPORTED_SUFFIXES:
        raise FileProblem(f"{uri}: unsupported file type (expected {', '.join(SUPPORTED_SUFFIXES)})", "unsupported")
    data = decompressed(uri, payload)
    if kind == ".parquet":
        yield from _parquet(uri, data)
        return
    if not data.strip():
        raise FileProblem(f"{uri}: the file is empty", "empty_file")
    if (nul := data.find(b"\x00", 0, 8192)) >= 0:
        raise FileProblem(
            f"{uri}: binary content (a NUL byte at offset {nul}), not {kind[1:].upper()} text "
            "(UTF-16 text is binary here: save it as UTF-8)",
            "binary_file",
        )
    data = data.removeprefix(b"\xef\xbb\xbf")
    if kind == ".jsonl":
        yield from _jsonl(uri, data)
    elif kind == ".json":
        yield from _json(uri, data)
    else:
        yield from _csv(uri, data)


def _not_utf8(line: bytes, offset: int) -> str:
    """The bad byte at ``offset`` of ``line``, with its 1-based character column."""
    column = len(line[:offset].decode("utf-8", errors="replace")) + 1
    return f"not UTF-8: byte 0x{line[offset]:02x} at column {column}"


def _object_row(uri: str, number: int, unit: str, value: Any) -> RawRow:
    if not isinstance(value, dict):
        return RawRow(uri, number, unit, None, f"expected a JSON object, got {type(value).__name__}")
    return RawRow(uri, number, unit, value)


def _jsonl(uri: str, data: bytes) -> Iterator[RawRow]:
    # Split on b"\n" only: str.splitlines() would also split inside a JSON string holding U+2028.
    for number, raw in enumerate(data.split(b"\n"), start=1):
        line = raw.removesuffix(b"\r")
        if not line.strip():
            continue
        if len(line) > MAX_ROW_BYTES:
            yield RawRow(
                uri, number, "line", None, f"{len(line)} bytes, over {MAX_ROW_BYTES} bytes a row may have", "too_large"
            )
            continue
        try:
            text = line.decode("utf-8")
        except UnicodeDecodeError as err:
            yield RawRow(uri, number, "line", None, _not_utf8(line, err.start), "not_utf8")
            continue
        try:
            value = json.loads(text)
        except json.JSONDecodeError as err:
            yield RawRow(uri, number, "line", None, f"malformed JSON: {err.msg} (column {err.colno})")
            continue
        yield _object_row(uri, number, "line", value)


def _decode_whole(uri: str, data: bytes) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        line = data.count(b"\n", 0, err.start) + 1
        start = data.rfind(b"\n", 0, err.start) + 1
        raise FileProblem(f"{uri}:{line}: {_not_utf8(data[start:], err.start - start)}", "not_utf8") from err


def _json(uri: str, data: bytes) -> Iterator[RawRow]:
    try:
        document = json.loads(_decode_whole(uri, data))
    except json.JSONDecodeError as err:
        raise FileProblem(
            f"{uri}:{err.lineno}: malformed JSON: {err.msg} (column {err.colno})", "malformed_file"
        ) from err
    if isinstance(document, dict) and isinstance(document.get("data"), list):
        document = document["data"]
    if not isinstance(document, list):
        raise FileProblem(f'{uri}: expected a JSON array of objects (or {{"data": [...]}})', "malformed_file")
    for number, value in enumerate(document, start=1):
        yield _object_row(uri, number, "row", value)


def _csv(uri: str, data: bytes) -> Iterator[RawRow]:
    """Records by the physical line they start on. A bad byte spoils its record only (kept as a
    surrogate escape until the record is checked); strict parsing reports a stray or unclosed quote
    instead of letting one field swallow the rows after it."""
    text = data.decode("utf-8", errors="surrogateescape")
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    physical: list[str] = []

    def lines() -> list[str]:  # split once, and only if a record spans lines
        if not physical:
            physical.extend(text.split("\n"))
        return physical

    header: list[str] | None = None
    start = 1
    while True:
        start = reader.line_num + 1
        try:
            record = next(reader)
        except StopIteration:
            return
        except csv.Error as err:
            end = reader.line_num
            span = f"line {start}" if end <= start else f"lines {start}-{end}"
            detail = (
                "a quoted field is never closed"
                if "end of data" in str(err)
                else "a quote ends a field in mid-value (a quote left open, or a quote inside a field not doubled)"
                if "expected after" in str(err)
                else str(err)
            )
            yield RawRow(uri, start, "line", None, f"cannot be read as CSV ({span}): {detail}", "malformed_csv")
            continue
        if not record or (len(record) == 1 and not record[0].strip()):
            continue
        joined = ",".join(record)
        if any("\udc80" <= char <= "\udcff" for char in joined):
            bad = next(char for char in joined if "\udc80" <= char <= "\udcff")
            yield RawRow(uri, start, "line", None, f"not UTF-8: byte 0x{ord(bad) - 0xDC00:02x}", "not_utf8")
            continue
        if header is None:
            header = record
            continue
        end = reader.line_num
        if end > start and _swallows_rows(lines(), start, end, len(header)):
            yield RawRow(
                uri,
                start,
                "line",
                None,
                f"a quoted field runs from line {start} to {end} over lines that are complete rows themselves: "
                f"is a quote left open on line {start}?",
                "swallowed_rows",
            )
        elif len(joined.encode()) > MAX_ROW_BYTES:
            yield RawRow(uri, start, "line", None, f"a record over {MAX_ROW_BYTES} bytes", "too_large")
        elif len(record) != len(header):
            span = "" if end == start else f" (it runs to line {end}: is a quote left open?)"
            yield RawRow(
                uri, start, "line", None, f"{len(record)} fields, the header has {len(header)}{span}", "ragged_csv"
            )
        else:
            yield RawRow(uri, start, "line", dict(zip(header, record, strict=True)))


def _swallows_rows(lines: list[str], start: int, end: int, columns: int) -> bool:
    """Whether every line strictly inside a multi-line record parses, alone, as a full record: rows
    swallowed by a quote opened by mistake, not a text field with line breaks."""
    inner = lines[start : end - 1]  # physical lines start+1 .. end-1, 0-based
    if not inner:
        return False
    for line in inner:
        try:
            fields = next(csv.reader([line], strict=True), [])
        except csv.Error:
            return False
        if len(fields) != columns:
            return False
    return True


def _parquet(uri: str, payload: bytes) -> Iterator[RawRow]:
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(io.BytesIO(payload))
    except Exception as err:  # pyarrow raises several unrelated types for corrupt files
        raise FileProblem(f"{uri}: not a readable Parquet file: {err}", "unreadable_file") from err
    for number, record in enumerate(table.to_pylist(), start=1):
        yield RawRow(uri, number, "row", record)
