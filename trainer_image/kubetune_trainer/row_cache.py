"""Rows computed once and kept, by what decides them: JSON-lines files of rows keyed by id.

Looked up in order: shipped with the trainer (when the cache has a shipped folder), the local cache
(``$KUBETUNE_CACHE/<folder>/<name>``), then object storage beside the output
(``<output.uri>/.kubetune/<folder>/<name>``, copied to the local cache when found), so the next job
on the same inputs skips the work even in a fresh pod. Computed rows are written to the local cache
and, create-only, beside the output. A file that does not hold a valid row for every id (stale,
partial, damaged: object storage is writable by others) is a miss: never trusted, never a crash.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kubetune_trainer.storage import ObjectStore, StorageError, join_uri

log = logging.getLogger(__name__)

Row = dict[str, Any]


def parse_rows(text: str, ids: Sequence[str], valid: Callable[[Row], bool]) -> dict[str, Row] | None:
    """A file's rows by id, if it holds a ``valid`` row for every one of ``ids``; else None."""
    rows = {}
    for line in text.splitlines():
        if line.strip():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                return None
            if not isinstance(row, dict) or not isinstance(row.get("id"), str) or not valid(row):
                return None
            rows[row["id"]] = row
    return rows if all(key in rows for key in ids) else None


def is_likelihood_row(row: Row, *, min_tokens: int) -> bool:
    """Whether ``row`` holds a usable likelihood: a finite, non-negative ``nllSum`` over an integer
    count of at least ``min_tokens`` ``tokens`` (booleans, which JSON readers turn into ints, refused)."""
    nll, tokens = row.get("nllSum"), row.get("tokens")
    return (
        isinstance(nll, (int, float))
        and not isinstance(nll, bool)
        and math.isfinite(nll)
        and nll >= 0
        and isinstance(tokens, int)
        and not isinstance(tokens, bool)
        and tokens >= min_tokens
    )


def render_rows(rows: dict[str, Row], ids: Sequence[str]) -> str:
    return "".join(json.dumps({"id": key, **rows[key]}, ensure_ascii=False) + "\n" for key in ids)


@dataclass(frozen=True)
class RowCache:
    folder: str  # the cache's folder, locally and beside the output
    cache_dir: Path
    store: ObjectStore
    output_uri: str
    shipped: Path | None = None  # rows the trainer image ships (the built-in model's)

    def _uri(self, name: str) -> str:
        return join_uri(self.output_uri, f".kubetune/{self.folder}", name)

    def find(self, name: str, ids: Sequence[str], valid: Callable[[Row], bool]) -> tuple[dict[str, Row], str] | None:
        """The rows of file ``name`` and where they came from (shipped, cache or storage); None when no
        place has a valid row for every id."""
        places = [("shipped", self.shipped / name)] if self.shipped is not None else []
        for origin, path in [*places, ("cache", self.cache_dir / self.folder / name)]:
            if path.is_file():
                if (rows := parse_rows(path.read_text(errors="replace"), ids, valid)) is not None:
                    return rows, origin
                log.warning("ignoring %s: it does not hold a valid row for every entry", path)
        uri = self._uri(name)
        try:
            if self.store.exists(uri):
                if (rows := parse_rows(self.store.read_bytes(uri).decode(errors="replace"), ids, valid)) is not None:
                    self._write_local(name, render_rows(rows, ids))
                    return rows, "storage"
                log.warning("ignoring %s: it does not hold a valid row for every entry", uri)
        except StorageError as err:  # a cache miss, not a failure: the rows can be computed again
            log.warning("cannot read the cached %s: %s", uri, err)
        return None

    def keep(self, name: str, rows: dict[str, Row], ids: Sequence[str]) -> None:
        """Write computed rows locally and, create-only, beside the output (a failure there only warns)."""
        text = render_rows(rows, ids)
        self._write_local(name, text)
        uri = self._uri(name)
        try:
            self.store.write_bytes(uri, text.encode(), if_absent=True)
        except StorageError as err:
            log.warning("cannot cache %s: %s", uri, err)

    def _write_local(self, name: str, text: str) -> None:
        folder = self.cache_dir / self.folder
        folder.mkdir(parents=True, exist_ok=True)
        temporary = folder / f".{name}.tmp"
        temporary.write_text(text)
        temporary.replace(folder / name)
