"""Per-example scores for generation metrics, and paired bootstrap intervals on deltas.

Every metric is computed per example (so the bootstrap can resample examples) and then
aggregated: a mean, except macro-F1 and corpus BLEU, which are recomputed on each resample.
"""

from __future__ import annotations

import functools
import random
import re
import string
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from kubetune.api.v1alpha1 import Metric

LOWER_IS_BETTER = frozenset({Metric.PERPLEXITY})
_SPACE = re.compile(r"\s+")


def normalise_answer(text: str) -> str:
    """Case, surrounding whitespace and punctuation do not count against an answer."""
    folded = _SPACE.sub(" ", text.strip().casefold())
    return folded.strip(string.punctuation + " ")


def as_label(text: str) -> str:
    """A label-like answer: its first non-empty line, normalised."""
    for line in text.strip().splitlines():
        if line.strip():
            return normalise_answer(line)
    return ""


def exact_match(prediction: str, reference: str) -> float:
    return float(normalise_answer(prediction) == normalise_answer(reference))


def label_match(prediction: str, reference: str) -> float:
    return float(as_label(prediction) == as_label(reference))


def rouge_l(prediction: str, reference: str) -> float:
    return float(_rouge_scorer().score(reference, prediction)["rougeL"].fmeasure)


@functools.cache
def _rouge_scorer() -> Any:
    from rouge_score import rouge_scorer

    return rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)


def macro_f1(predictions: Sequence[str], references: Sequence[str]) -> float:
    """Macro-averaged F1 over the reference labels (predicted labels outside the set count as errors)."""
    gold = [as_label(r) for r in references]
    pred = [as_label(p) for p in predictions]
    scores = []
    for label in sorted(set(gold)):
        tp = sum(1 for g, p in zip(gold, pred, strict=True) if g == label and p == label)
        fp = sum(1 for g, p in zip(gold, pred, strict=True) if g != label and p == label)
        fn = sum(1 for g, p in zip(gold, pred, strict=True) if g == label and p != label)
        precision = tp / (tp + fp) if tp + fp else 0.0
        recall = tp / (tp + fn) if tp + fn else 0.0
        scores.append(2 * precision * recall / (precision + recall) if precision + recall else 0.0)
    return sum(scores) / len(scores) if scores else 0.0


def corpus_bleu(predictions: Sequence[str], references: Sequence[str]) -> float:
    import sacrebleu

    return float(sacrebleu.corpus_bleu(list(predictions), [list(references)]).score)


@dataclass(frozen=True)
class Interval:
    low: float
    high: float


def paired_bootstrap(
    count: int,
    statistic: Callable[[Sequence[int]], float],
    *,
    resamples: int = 1000,
    seed: int = 0,
    confidence: float = 0.95,
) -> Interval:
    """Percentile interval of ``statistic`` over resampled example indices (the same for both models)."""
    rng = random.Random(seed)
    values = sorted(statistic([rng.randrange(count) for _ in range(count)]) for _ in range(resamples))
    tail = (1 - confidence) / 2
    return Interval(values[int(tail * (resamples - 1))], values[int((1 - tail) * (resamples - 1))])


def mean(values: Sequence[float]) -> float:
    return sum(values) / len(values) if values else 0.0
