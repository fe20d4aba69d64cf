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
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kubetune_trainer.data.types import Example, Message
from kubetune_trainer.general_prompts import GeneralPrompt
from kubetune_trainer.storage import ObjectStore, StorageError, join_uri

log = logging.getLogger(__name__)

SHIPPED = Path(__file__).parent / "resources" / "general" / "answers"
# Greedy decoding, and long enough for a short general answer; part of the cache key.
MAX_NEW_TOKENS = 96
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


def as_examples(prompts: Sequence[GeneralPrompt], answers: BaseAnswers) -> list[Example]:
    """Each prompt with the base model's answer as the assistant turn (a replay or regression row)."""
    return [
        Example(
            messages=(
                *(Message(m["role"], m["content"]) for m in prompt.messages),
                Message("assistant", answers.answers[prompt.id]),
            ),
            source=f"builtin:{prompt.id}",
        )
        for prompt in prompts
    ]


def _parse(text: str, prompts: Sequence[GeneralPrompt]) -> dict[str, str] | None:
    """The answers of a cache file, if it answers every prompt (else it is stale or partial)."""
    answers = {}
    for line in text.splitlines():
        if line.strip():
            row = json.loads(line)
            answers[str(row["id"])] = str(row["answer"])
    return answers if all(prompt.id in answers for prompt in prompts) else None


def _render(answers: dict[str, str], prompts: Sequence[GeneralPrompt]) -> str:
    return "".join(json.dumps({"id": p.id, "answer": answers[p.id]}, ensure_ascii=False) + "\n" for p in prompts)


def find_answers(
    key: AnswerKey, prompts: Sequence[GeneralPrompt], *, cache_dir: Path, store: ObjectStore, output_uri: str
) -> BaseAnswers | None:
    """The cached answers, from the first place that has all of them; None when they must be generated."""
    name = f"{key.digest}.jsonl"
    for origin, path in (("shipped", SHIPPED / name), ("cache", cache_dir / "general-answers" / name)):
        if path.is_file() and (answers := _parse(path.read_text(), prompts)) is not None:
            return BaseAnswers(key, answers, origin)
    uri = join_uri(output_uri, STORAGE_FOLDER, name)
    try:
        if store.exists(uri) and (answers := _parse(store.read_bytes(uri).decode(), prompts)) is not None:
            _write_local(cache_dir, name, _render(answers, prompts))
            return BaseAnswers(key, answers, "storage")
    except StorageError as err:  # a cache miss, not a failure: the answers can be generated
        log.warning("cannot read cached general answers at %s: %s", uri, err)
    return None


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
    text = _render(answers, prompts)
    name = f"{key.digest}.jsonl"
    _write_local(cache_dir, name, text)
    uri = join_uri(output_uri, STORAGE_FOLDER, name)
    try:
        store.write_bytes(uri, text.encode(), if_absent=True)
    except StorageError as err:
        log.warning("cannot cache general answers at %s: %s", uri, err)
    return BaseAnswers(key, answers, "generated")


def _write_local(cache_dir: Path, name: str, text: str) -> None:
    folder = cache_dir / "general-answers"
    folder.mkdir(parents=True, exist_ok=True)
    temporary = folder / f".{name}.tmp"
    temporary.write_text(text)
    temporary.replace(folder / name)
