"""The base model's scores on a test split, computed once per (base weights, examples, settings).

A retraining job, a sweep or a second run of the same manifest compares a new tuned model with the
same base on the same held-out examples: the base side (its likelihoods and, the costly part, its
greedy answers, which ramble to the token limit on a task it was never taught) is decided by what the
key holds, so it is kept in a ``RowCache`` (``evaluation/`` in the local cache and beside the
output) and read back instead of recomputed. Values read back are the values computed: a warm run
reports exactly what a cold one does.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

from kubetune_trainer.data.types import Example
from kubetune_trainer.evaluation.scoring import SideScores, TokenLoss
from kubetune_trainer.row_cache import Row, RowCache, is_likelihood_row

FOLDER = "evaluation"
# How the scores are made (evaluation/scoring.py); a change to it makes a new key, never a stale hit.
SCORING = "nll of labels; greedy, by-length batches, rows leave the batch at EOS; starts read off the scoring forward"


def examples_sha256(examples: Sequence[Example]) -> str:
    """What the model is shown and scored on, in order (not where the rows came from)."""
    content = [{"messages": [[m.role, m.content] for m in e.messages], "text": e.text} for e in examples]
    return hashlib.sha256(json.dumps(content, ensure_ascii=False).encode()).hexdigest()


@dataclass(frozen=True)
class BaseScoresKey:
    model_sha256: str
    weights: str  # "full", or "nf4" for QLoRA's 4-bit base
    precision: str  # "fp32" or "bf16"
    device: str  # "cpu" or "cuda": the same weights score a little differently on each
    libraries: str  # torch and transformers versions
    chat_template: str | None
    max_length: int
    max_new_tokens: int | None  # None: likelihoods only
    examples_sha256: str

    @property
    def file(self) -> str:
        fields = {**asdict(self), "scoring": SCORING}
        return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:32] + ".jsonl"


def _valid(with_outputs: bool) -> Callable[[Row], bool]:
    def valid(row: Row) -> bool:
        # An example can have no label tokens left after truncation: zero tokens is a valid row here.
        return is_likelihood_row(row, min_tokens=0) and (isinstance(row.get("output"), str) if with_outputs else True)

    return valid


def cached_base_scores(
    key: BaseScoresKey, count: int, compute: Callable[[], SideScores], cache: RowCache
) -> tuple[SideScores, str]:
    """The base's scores on the ``count`` examples the key names: cached, else computed now and kept.
    Returns them and where they came from (cache, storage or computed)."""
    ids = [str(i) for i in range(count)]
    with_outputs = key.max_new_tokens is not None
    found = cache.find(key.file, ids, _valid(with_outputs))
    if found is not None:
        rows, origin = found
        losses = [TokenLoss(float(rows[i]["nllSum"]), int(rows[i]["tokens"])) for i in ids]
        return SideScores(losses, [str(rows[i]["output"]) for i in ids] if with_outputs else []), origin
    scores = compute()
    kept: dict[str, Row] = {
        i: {"nllSum": loss.nll_sum, "tokens": loss.tokens, **({"output": scores.outputs[n]} if with_outputs else {})}
        for n, (i, loss) in enumerate(zip(ids, scores.losses, strict=True))
    }
    cache.keep(key.file, kept, ids)
    return scores, "computed"
