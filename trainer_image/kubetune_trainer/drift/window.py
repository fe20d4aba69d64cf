"""A window of production samples: request logs as JSONL (or JSON, CSV, Parquet; optionally gzip or
zstd), one file or every such file under a prefix.

A row is a request in one of the shapes serving stacks log: ``{"messages": [...]}`` (OpenAI chat;
a final assistant turn, when logged, is the answer), ``{"prompt": "...", "completion": "..."}`` or
``{"text": "..."}``. A ``label`` (or ``feedback``) field is the answer a person confirmed: it takes
precedence over the logged answer and is what retraining may learn from. Rows that fit none of these
are counted and skipped, never guessed at.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from kubetune_trainer.data.readers import DecompressionBomb, FileProblem, is_supported, read_rows
from kubetune_trainer.data.types import Example, Message
from kubetune_trainer.errors import ConfigurationError
from kubetune_trainer.storage import ObjectStore

LABEL_FIELDS = ("label", "feedback")


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
    labelled = skipped = 0
    for file_uri in sorted(files):
        try:
            rows = list(read_rows(file_uri, store.read_bytes(file_uri)))
        except (FileProblem, DecompressionBomb) as err:
            raise ConfigurationError(str(err)) from err
        for row in rows:
            request = _request(row.data) if row.error is None and row.data is not None else None
            if request is None:
                skipped += 1
                continue
            example, confirmed = request
            examples.append(Example(messages=example.messages, text=example.text, source=file_uri, row=row.number))
            labelled += confirmed
    if not examples:
        raise ConfigurationError(f"{uri}: {skipped} rows, none a request (messages, prompt or text)")
    return Window(examples[-limit:], labelled, skipped, sorted(files))


def _request(data: dict[str, Any]) -> tuple[Example, bool] | None:
    label = next((data[f] for f in LABEL_FIELDS if isinstance(data.get(f), str) and data[f].strip()), None)
    if isinstance(data.get("messages"), list):
        turns = []
        for turn in data["messages"]:
            if (
                not isinstance(turn, dict)
                or not isinstance(turn.get("content"), str)
                or turn.get("role")
                not in (
                    "system",
                    "user",
                    "assistant",
                )
            ):
                return None
            turns.append(Message(str(turn["role"]), turn["content"]))
        if not any(t.role == "user" for t in turns):
            return None
        if label is not None:
            turns = [*(turns[:-1] if turns[-1].role == "assistant" else turns), Message("assistant", label)]
        return Example(messages=tuple(turns)), label is not None
    if isinstance(data.get("prompt"), str) and data["prompt"].strip():
        answer = label if label is not None else data.get("completion")
        turns = [Message("user", data["prompt"])]
        if isinstance(answer, str) and answer.strip():
            turns.append(Message("assistant", answer))
        return Example(messages=tuple(turns)), label is not None
    if isinstance(data.get("text"), str) and data["text"].strip():
        return Example(text=data["text"]), False
    return None
