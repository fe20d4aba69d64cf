"""kubetune's built-in general prompts, and the keyword check for their known answers.

The prompt set (``resources/general/prompts.jsonl``, written by ``scripts/make_general_prompts.py``)
has two pools: forgetting is measured on the **regression** pool, and the base model's answers to
the **replay** pool are mixed into training. Training on what is measured would hide forgetting, so
the pools are built from different templates and different entity lists (sources), and this loader
refuses a set whose pools share either.

Light on purpose (standard library only, and the trainer's errors): the CPU-only pre-flight reads it too.
"""

from __future__ import annotations

import hashlib
import json
import re
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kubetune_trainer.errors import ConfigurationError

PROMPTS_FILE = Path(__file__).parent / "resources" / "general" / "prompts.jsonl"
POOLS = ("regression", "replay")
VERSION_PREFIX = "general-v1-"
# Answers to general prompts, the base model's and the tuned model's alike, are greedy and at most this
# long: long enough for a short general answer. Part of the base answers' cache key.
ANSWER_MAX_NEW_TOKENS = 96
FIELDS = ("id", "category", "pool", "template", "source", "messages", "answer")

# Decimals stay whole so that "56" is not found in "56.5"; everything else splits on non-alphanumerics.
_TOKEN = re.compile(r"\d+(?:\.\d+)+|[^\W_]+")
# "1,000" is one number, but "3,7,12" is a list of three.
_THOUSANDS_SEPARATOR = re.compile(r"(?<=\d),(?=\d{3}(?!\d))")


class GeneralPromptsError(ConfigurationError):
    """The prompt file is malformed or its pools overlap (the run fails as misconfigured, exit code 2);
    the message names the file and line."""


@dataclass(frozen=True)
class GeneralPrompt:
    id: str
    category: str
    pool: str
    template: str
    source: str
    messages: tuple[dict[str, str], ...]
    keywords: tuple[str, ...] | None  # None: no known answer

    @property
    def text(self) -> str:
        """The user turn."""
        return next(m["content"] for m in reversed(self.messages) if m["role"] == "user")


@dataclass(frozen=True)
class GeneralPromptSet:
    version: str  # "general-v1-" + the first 12 hex digits of the file's sha256
    regression: tuple[GeneralPrompt, ...]
    replay: tuple[GeneralPrompt, ...]


def normalise_for_matching(text: str) -> str:
    """Case-folded, accents and punctuation dropped, words separated by single spaces."""
    decomposed = unicodedata.normalize("NFKD", text.casefold())
    bare = "".join(char for char in decomposed if not unicodedata.combining(char))
    return " ".join(_TOKEN.findall(_THOUSANDS_SEPARATOR.sub("", bare)))


def matches_known_answer(text: str, keywords: Sequence[str]) -> bool:
    """Whether any keyword occurs in ``text`` as whole words (after :func:`normalise_for_matching`)."""
    haystack = f" {normalise_for_matching(text)} "
    return any(needle and f" {needle} " in haystack for needle in map(normalise_for_matching, keywords))


def load_general_prompts(path: Path | None = None) -> GeneralPromptSet:
    """The prompt set at ``path`` (default: the one shipped with the trainer), validated."""
    path = PROMPTS_FILE if path is None else path
    try:
        payload = path.read_bytes()
        lines = payload.decode("utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as err:
        raise GeneralPromptsError(f"{path}: cannot read the general prompts: {err}") from err
    rows = [(number, _parse_row(f"{path}:{number}", line)) for number, line in enumerate(lines, 1) if line.strip()]
    _check_set(path, rows)
    prompts = [prompt for _, prompt in rows]
    return GeneralPromptSet(
        version=VERSION_PREFIX + hashlib.sha256(payload).hexdigest()[:12],
        regression=tuple(p for p in prompts if p.pool == "regression"),
        replay=tuple(p for p in prompts if p.pool == "replay"),
    )


def _parse_row(where: str, line: str) -> GeneralPrompt:
    try:
        row = json.loads(line)
    except json.JSONDecodeError as err:
        raise GeneralPromptsError(f"{where}: malformed JSON: {err.msg} (column {err.colno})") from err
    if not isinstance(row, dict):
        raise GeneralPromptsError(f"{where}: expected a JSON object, got {type(row).__name__}")
    missing = [name for name in FIELDS if name not in row]
    unknown = sorted(set(row) - set(FIELDS))
    if missing:
        raise GeneralPromptsError(f"{where}: missing field(s) {', '.join(missing)} (expected {', '.join(FIELDS)})")
    if unknown:
        raise GeneralPromptsError(f"{where}: unknown field(s) {', '.join(unknown)} (expected {', '.join(FIELDS)})")
    names = {
        name: _non_empty_string(where, name, row[name]) for name in ("id", "category", "pool", "template", "source")
    }
    if names["pool"] not in POOLS:
        raise GeneralPromptsError(f"{where}: pool {names['pool']!r} is not one of {', '.join(POOLS)}")
    return GeneralPrompt(
        **names,
        messages=_messages(where, row["messages"]),
        keywords=_keywords(where, row["answer"]),
    )


def _non_empty_string(where: str, name: str, value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise GeneralPromptsError(f"{where}: field '{name}' must be a non-empty string, got {value!r}")
    return value


def _messages(where: str, value: Any) -> tuple[dict[str, str], ...]:
    # One user turn: the base model answers it, and that answer becomes the replay or regression target.
    if (
        not isinstance(value, list)
        or len(value) != 1
        or not isinstance(value[0], dict)
        or set(value[0]) != {"role", "content"}
        or value[0]["role"] != "user"
        or not isinstance(value[0]["content"], str)
        or not value[0]["content"].strip()
    ):
        raise GeneralPromptsError(
            f"{where}: field 'messages' must be one user message, "
            f'[{{"role": "user", "content": "..."}}], got {json.dumps(value, ensure_ascii=False)}'
        )
    return ({"role": "user", "content": value[0]["content"]},)


def _keywords(where: str, value: Any) -> tuple[str, ...] | None:
    if value is None:
        return None
    keywords = value.get("keywords") if isinstance(value, dict) and set(value) == {"keywords"} else None
    if (
        not isinstance(keywords, list)
        or not keywords
        or not all(isinstance(k, str) and normalise_for_matching(k) for k in keywords)
    ):
        raise GeneralPromptsError(
            f"{where}: field 'answer' must be null or {{\"keywords\": [...]}} with at least one keyword, "
            f"each with a letter or digit, got {json.dumps(value, ensure_ascii=False)}"
        )
    return tuple(keywords)


def _check_set(path: Path, rows: Sequence[tuple[int, GeneralPrompt]]) -> None:
    first_id: dict[str, int] = {}
    first_text: dict[str, int] = {}
    # template or source name -> (pool, line) where it first appeared
    first_use: dict[str, dict[str, tuple[str, int]]] = {"template": {}, "source": {}}
    for number, prompt in rows:
        where = f"{path}:{number}"
        if prompt.id in first_id:
            raise GeneralPromptsError(f"{where}: duplicate id {prompt.id!r} (first at line {first_id[prompt.id]})")
        first_id[prompt.id] = number
        text = normalise_for_matching(prompt.text)
        if text in first_text:
            raise GeneralPromptsError(f"{where}: the same prompt as line {first_text[text]}: {prompt.text!r}")
        first_text[text] = number
        for kind, name in (("template", prompt.template), ("source", prompt.source)):
            pool, line = first_use[kind].setdefault(name, (prompt.pool, number))
            if pool != prompt.pool:
                raise GeneralPromptsError(
                    f"{where}: {kind} {name!r} is in both pools ({pool} at line {line}, {prompt.pool} here): "
                    "the replay pool must not share templates or sources with the regression pool it is measured on"
                )
    for pool in POOLS:
        if not any(prompt.pool == pool for _, prompt in rows):
            raise GeneralPromptsError(f"{path}: no prompts in the {pool} pool")
