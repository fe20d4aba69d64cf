"""The base model's own answers to kubetune's built-in general prompts: generated once per model, cached.

Replay (self-distillation in training) and the likelihood measure of forgetting (evaluation) both
need what the BASE model answers to the general prompts, so it works for any base model, not only
the built-in one. The answers are decided by the base model's weights, the prompt set, the
generation settings and the chat template, so the cache key covers exactly those. Looked up in
order:

1. shipped with the trainer (``resources/general/answers/<key>.jsonl``: the built-in model's, so
   the demo and CI generate nothing);
2. the local cache (``$KUBETUNE_CACHE/general-answers/<key>.jsonl``);
3. object storage beside the output (``<output.uri>/.kubetune/general-answers/<key>.jsonl``), so the
   next job on the same base model skips the work;
4. generated greedily in the training pod (never in the CPU-only pre-flight), then written to the
   local cache and, create-only, to object storage.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kubetune_trainer.data.types import Example, Message
from kubetune_trainer.general_prompts import ANSWER_MAX_NEW_TOKENS as MAX_NEW_TOKENS
from kubetune_trainer.general_prompts import GeneralPrompt
from kubetune_trainer.storage import ObjectStore, StorageError, join_uri

log = logging.getLogger(__name__)

SHIPPED = Path(__file__).parent / "resources" / "general" / "answers"
STORAGE_FOLDER = ".kubetune/general-answers"

Generate = Callable[[Sequence[GeneralPrompt]], list[str]]
# Which prompts share a batch can decide a greedy answer (left padding), so the batching is part of
# the cache key: evaluation's (evaluation/scoring.py: by length, up to 32 rows, within 8 x 512
# tokens) over the whole prompt set. Before it, 8 prompts at a time in order: 4x the decoding steps
# for the same answers (all 372 of the built-in model's identical).
BATCHING = "by-length-32-rows-4096-tokens"


def generate_with(model: Any, tokenizer: Any, chat_template: str | None) -> Generate:
    """Greedy answers of ``model`` (in eval mode, the base as the run compares against it)."""

    def answer(prompts: Sequence[GeneralPrompt]) -> list[str]:
        from kubetune_trainer.evaluation.scoring import generate

        asked = [Example(messages=tuple(Message(m["role"], m["content"]) for m in p.messages)) for p in prompts]
        return generate(model, tokenizer, asked, max_new_tokens=MAX_NEW_TOKENS, chat_template=chat_template)

    return answer


@dataclass(frozen=True)
class AnswerKey:
    model_sha256: str
    prompts_version: str
    chat_template: str | None
    weights: str = "full"  # "nf4" when the base the run compares against is QLoRA's 4-bit one
    max_new_tokens: int = MAX_NEW_TOKENS

    @property
    def digest(self) -> str:
        fields = {
            "model": self.model_sha256,
            "weights": self.weights,
            "prompts": self.prompts_version,
            "chatTemplate": hashlib.sha256((self.chat_template or "").encode()).hexdigest(),
            "generation": {"maxNewTokens": self.max_new_tokens, "decoding": "greedy", "batching": BATCHING},
        }
        return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:32]


@dataclass(frozen=True)
class BaseAnswers:
    key: AnswerKey
    answers: dict[str, str]  # prompt id -> the base model's answer
    origin: str  # shipped, cache, storage or generated


GENERAL_SOURCE_PREFIX = "builtin:"
"""The ``source`` of every row made from the built-in general prompts (replay rows among the task's)."""


def is_general_row(example: Example) -> bool:
    return example.source.startswith(GENERAL_SOURCE_PREFIX)


def as_examples(prompts: Sequence[GeneralPrompt], answers: BaseAnswers) -> list[Example]:
    """Each prompt with the base model's answer as the assistant turn (a replay or regression row)."""
    return [
        Example(
            messages=(
                *(Message(m["role"], m["content"]) for m in prompt.messages),
                Message("assistant", answers.answers[prompt.id]),
            ),
            source=f"{GENERAL_SOURCE_PREFIX}{prompt.id}",
        )
        for prompt in prompts
    ]


Row = dict[str, Any]


def _parse_rows(text: str, prompts: Sequence[GeneralPrompt], valid: Callable[[Row], bool]) -> dict[str, Row] | None:
    """A cache file's rows by prompt id, if it covers every prompt with a ``valid`` row; else None: a
    stale, partial or damaged file (object storage is writable by others) is a cache miss, never
    trusted and never a crash."""
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
    return rows if all(prompt.id in rows for prompt in prompts) else None


def _is_answer(row: Row) -> bool:
    return isinstance(row.get("answer"), str)


def _is_likelihood(row: Row) -> bool:
    nll, tokens = row.get("nllSum"), row.get("tokens")
    return (
        isinstance(nll, (int, float))
        and not isinstance(nll, bool)
        and math.isfinite(nll)
        and nll >= 0
        and isinstance(tokens, int)
        and not isinstance(tokens, bool)
        and tokens >= 1
    )


def _render_rows(rows: dict[str, Row], prompts: Sequence[GeneralPrompt]) -> str:
    return "".join(json.dumps({"id": p.id, **rows[p.id]}, ensure_ascii=False) + "\n" for p in prompts)


def _find(
    name: str,
    prompts: Sequence[GeneralPrompt],
    valid: Callable[[Row], bool],
    *,
    cache_dir: Path,
    store: ObjectStore,
    output_uri: str,
) -> tuple[dict[str, Row], str] | None:
    """A cached file's rows and where they came from: shipped, the local cache, or object storage
    beside the output (then copied to the local cache); None when nobody has all of them."""
    for origin, path in (("shipped", SHIPPED / name), ("cache", cache_dir / "general-answers" / name)):
        if path.is_file():
            if (rows := _parse_rows(path.read_text(errors="replace"), prompts, valid)) is not None:
                return rows, origin
            log.warning("ignoring %s: it does not hold a valid row for every prompt", path)
    uri = join_uri(output_uri, STORAGE_FOLDER, name)
    try:
        if store.exists(uri):
            if (rows := _parse_rows(store.read_bytes(uri).decode(errors="replace"), prompts, valid)) is not None:
                _write_local(cache_dir, name, _render_rows(rows, prompts))
                return rows, "storage"
            log.warning("ignoring %s: it does not hold a valid row for every prompt", uri)
    except StorageError as err:  # a cache miss, not a failure: the rows can be computed again
        log.warning("cannot read the cached %s: %s", uri, err)
    return None


def _keep(
    name: str,
    rows: dict[str, Row],
    prompts: Sequence[GeneralPrompt],
    *,
    cache_dir: Path,
    store: ObjectStore,
    output_uri: str,
) -> None:
    """Cache computed rows locally and, create-only, beside the output (a failure there only warns)."""
    text = _render_rows(rows, prompts)
    _write_local(cache_dir, name, text)
    uri = join_uri(output_uri, STORAGE_FOLDER, name)
    try:
        store.write_bytes(uri, text.encode(), if_absent=True)
    except StorageError as err:
        log.warning("cannot cache %s: %s", uri, err)


def find_answers(
    key: AnswerKey, prompts: Sequence[GeneralPrompt], *, cache_dir: Path, store: ObjectStore, output_uri: str
) -> BaseAnswers | None:
    """The cached answers, from the first place that has all of them; None when they must be generated."""
    found = _find(f"{key.digest}.jsonl", prompts, _is_answer, cache_dir=cache_dir, store=store, output_uri=output_uri)
    if found is None:
        return None
    rows, origin = found
    return BaseAnswers(key, {prompt_id: str(row["answer"]) for prompt_id, row in rows.items()}, origin)


def base_answers(
    key: AnswerKey,
    prompts: Sequence[GeneralPrompt],
    generate: Generate,
    *,
    cache_dir: Path,
    store: ObjectStore,
    output_uri: str,
) -> BaseAnswers:
    """The base model's answers to ``prompts`` (always the whole set, both pools, so one cache file per
    key answers every use): cached, or generated now and cached."""
    found = find_answers(key, prompts, cache_dir=cache_dir, store=store, output_uri=output_uri)
    if found is not None:
        return found
    outputs = generate(prompts)
    answers = {prompt.id: answer for prompt, answer in zip(prompts, outputs, strict=True)}
    rows: dict[str, Row] = {prompt_id: {"answer": answer} for prompt_id, answer in answers.items()}
    _keep(f"{key.digest}.jsonl", rows, prompts, cache_dir=cache_dir, store=store, output_uri=output_uri)
    return BaseAnswers(key, answers, "generated")


# The base model's likelihood of its own answers (summed NLL, scored tokens) per regression prompt.
Likelihoods = list[tuple[float, int]]


def likelihoods_file(key: AnswerKey, max_length: int, precision: str) -> str:
    """The file the base model's likelihoods of its answers are cached in: scored at ``max_length``
    tokens in ``precision`` (``fp32`` or ``bf16``: a run compares its tuned model with a base scored
    the way the tuned one is)."""
    return f"{key.digest}.likelihood-{max_length}-{precision}.jsonl"


def base_likelihoods(
    key: AnswerKey,
    prompts: Sequence[GeneralPrompt],
    compute: Callable[[], Likelihoods],
    *,
    max_length: int,
    precision: str,
    cache_dir: Path,
    store: ObjectStore,
    output_uri: str,
) -> tuple[Likelihoods, str]:
    """The base model's likelihood of its own answers to ``prompts`` (the regression pool), in order:
    like the answers, decided by the key, so cached beside them (shipped for the built-in model);
    else ``compute()`` now and cached. Returns them and where they came from."""
    name = likelihoods_file(key, max_length, precision)
    found = _find(name, prompts, _is_likelihood, cache_dir=cache_dir, store=store, output_uri=output_uri)
    if found is not None:
        rows, origin = found
        return [(float(rows[p.id]["nllSum"]), int(rows[p.id]["tokens"])) for p in prompts], origin
    computed = compute()
    kept: dict[str, Row] = {
        p.id: {"nllSum": nll, "tokens": tokens} for p, (nll, tokens) in zip(prompts, computed, strict=True)
    }
    _keep(name, kept, prompts, cache_dir=cache_dir, store=store, output_uri=output_uri)
    return computed, "computed"


def _write_local(cache_dir: Path, name: str, text: str) -> None:
    folder = cache_dir / "general-answers"
    folder.mkdir(parents=True, exist_ok=True)
    temporary = folder / f".{name}.tmp"
    temporary.write_text(text)
    temporary.replace(folder / name)
