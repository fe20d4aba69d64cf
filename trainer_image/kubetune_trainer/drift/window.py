"""A window of production samples: request logs as JSONL (or JSON, CSV, Parquet; optionally gzip or
zstd), one file or every such file under a prefix.

A row is a request in one of the shapes serving stacks log (``data.formats.request_log``, the same
reading a retraining's ``request-log`` dataset source gets): ``{"messages": [...]}`` (OpenAI chat; a
final assistant turn, when logged, is the answer), ``{"prompt": "...", "completion": "..."}`` or
``{"text": "..."}``. A ``label`` (or ``feedback``) field is the answer a person confirmed: it takes
precedence over the logged answer and is what retraining learns from. Rows that fit none of these
are counted and skipped, never guessed at.
"""

from __future__ import annotations

from dataclasses import dataclass

from kubetune_trainer.data.formats import RowProblem, request_log
from kubetune_trainer.data.readers import DecompressionBomb, FileProblem, is_supported, read_rows
from kubetune_trainer.data.types import Example
from kubetune_trainer.errors import ConfigurationError
from kubetune_trainer.storage import ObjectStore


@dataclass(frozen=True)
class Window:
    examples: list[Example]
    labelled: int  # rows with a confirmed label (label/feedback field)
    skipped: int  # rows that fit no request shape
    files: list[str]


def read_window(store: ObjectStore, uri: str, *, limit: int, after: str | None = None) -> Window:
    """Up to ``limit`` requests, the newest files last (files in name order, which timestamped log names make
    chronological); the last ``limit`` rows are kept. With ``after``, only files whose URI sorts after it:
    a monitor's successive checks read disjoint windows."""
    files = [f for f in store.list(uri) if is_supported(f) and (after is None or f > after)]
    if not files:
        newer = f" newer than {after}" if after is not None else ""
        raise ConfigurationError(f"{uri}: no request logs{newer} (.jsonl/.json/.csv/.parquet, optionally .gz/.zst)")
    examples: list[Example] = []
    confirmations: list[bool] = []
    skipped = 0
    for file_uri in sorted(files):
        try:
            rows = list(read_rows(file_uri, store.read_bytes(file_uri)))
        except (FileProblem, DecompressionBomb) as err:
            raise ConfigurationError(str(err)) from err
        for row in rows:
            if row.error is not None or row.data is None:
                skipped += 1
                continue
            try:
                example, confirmed = request_log(row.data)
            except RowProblem:
                skipped += 1
                continue
            examples.append(Example(messages=example.messages, text=example.text, source=file_uri, row=row.number))
            confirmations.append(confirmed)
    if not examples:
        raise ConfigurationError(f"{uri}: {skipped} rows, none a request (messages, prompt or text)")
    return Window(examples[-limit:], sum(confirmations[-limit:]), skipped, sorted(files))
