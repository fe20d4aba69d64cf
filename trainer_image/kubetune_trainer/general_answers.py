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
from kubetune_trainer.general_prompts import ANSWER_MAX_NEW_TOKENS as MAX_NEW_TOKENS
from kubetune_trainer.general_prompts import GeneralPrompt
from kubetune_trainer.row_cache import Row, RowCache, is_likelihood_row
from kubetune_trainer.storage import ObjectStore

log = logging.getLogger(__name__)

SHIPPED = Path(__file__).parent / "resources" / "general" / "answers"
FOLDER = "general-answers"  # in the local cache and beside the output (.kubetune/general-answers)

Generate = Callable[[Sequence[GeneralPrompt]], list[str]]
# Which prompts share a batch can decide a greedy answer (left padding), so the batching is part of
# the cache key: evaluation's generation (evaluation/scoring.py: by length, up to 64 rows within
# 16384 tokens, each row leaving its batch at EOS) over the whole prompt set. Before it, 32 rows
# within 4096 tokens decoded by transformers' generate, and before that 8 prompts at a time in
# order: the same answers each time (all 372 of the built-in model's identical), in less time.
BATCHING = "by-length-64-rows-16384-tokens-rows-leave-at-eos"


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


def _is_answer(row: Row) -> bool:
    return isinstance(row.get("answer"), str)


def _is_likelihood(row: Row) -> bool:
    return is_likelihood_row(row, min_tokens=1)


def _cache(cache_dir: Path, store: ObjectStore, output_uri: str) -> RowCache:
    return RowCache(FOLDER, cache_dir, store, output_uri, shipped=SHIPPED)


def find_answers(
    key: AnswerKey, prompts: Sequence[GeneralPrompt], *, cache_dir: Path, store: ObjectStore, output_uri: str
) -> BaseAnswers | None:
    """The cached answers, from the first place that has all of them; None when they must be generated."""
    found = _cache(cache_dir, store, output_uri).find(f"{key.digest}.jsonl", [p.id for p in prompts], _is_answer)
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
    _cache(cache_dir, store, output_uri).keep(f"{key.digest}.jsonl", rows, [p.id for p in prompts])
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
    found = _cache(cache_dir, store, output_uri).find(name, [p.id for p in prompts], _is_likelihood)
    if found is not None:
        rows, origin = found
        return [(float(rows[p.id]["nllSum"]), int(rows[p.id]["tokens"])) for p in prompts], origin
    computed = compute()
    kept: dict[str, Row] = {
        p.id: {"nllSum": nll, "tokens": tokens} for p, (nll, tokens) in zip(prompts, computed, strict=True)
    }
    _cache(cache_dir, store, output_uri).keep(name, kept, [p.id for p in prompts])
    return computed, "computed"
