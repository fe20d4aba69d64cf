"""Forgetting: how much of its general behaviour the tuned model kept, measured on general prompts.

Three measures, each tuned vs base on the same prompts:
- likelihood: the per-token likelihood the model gives the BASE model's own answers (a drop means
  the tuned model no longer answers general prompts the way it used to);
- known answers: the share of prompts with a known answer (a capital, a sum, a translation) that
  the model answers correctly, judged by keywords: a behavioural check that catches a model that
  answers everything with task labels even when its likelihoods look fine;
- label collapse (label-like tasks only): the share of general prompts answered with one of the
  task's labels. An extra signal, reported, never a replacement for the two checks above.

Losses are relative to the base ((base - tuned) / base; 0.05 = 5% worse); intervals are paired
bootstrap 95% intervals over the prompts.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from kubetune_trainer.data.types import Example
from kubetune_trainer.evaluation import metrics as m
from kubetune_trainer.evaluation.results import RegressionResult
from kubetune_trainer.evaluation.scoring import TokenLoss
from kubetune_trainer.general_prompts import matches_known_answer

# General prompts are scored at one fixed length, not at the run's training sequence length: the
# base model's score must not depend on what a run chose (a 128-token run once measured the same
# base 9% better than a 192-token run, because its answers were cut). Built-in prompts plus their
# 96-token answers fit well within it.
FORGETTING_MAX_LENGTH = 512


@dataclass(frozen=True)
class RegressionItem:
    """A general prompt with the base model's own answer, and its known answer when it has one."""

    example: Example  # the prompt and the base model's answer: the likelihood target
    keywords: tuple[str, ...] | None = None


# Given how to score the base model on the set, its scores: cached where they can be (the built-in
# prompts' are decided by the base model's cache key, like its answers), else computed.
BaseScores = Callable[[Callable[[], list[TokenLoss]]], list[TokenLoss]]


@dataclass(frozen=True)
class RegressionSet:
    name: str  # "built-in general prompts (general-v1-...)" or the regressionSet URI
    items: tuple[RegressionItem, ...]
    base_scores: BaseScores | None = None  # None: always computed

    @property
    def examples(self) -> list[Example]:
        return [item.example for item in self.items]

    @property
    def known(self) -> list[RegressionItem]:
        return [item for item in self.items if item.keywords]


@dataclass
class KnownAnswerResult:
    """Accuracy on prompts with a known answer."""

    examples: int
    base: float
    tuned: float
    relative_loss: float  # (base - tuned) / base
    ci_low: float  # 95% interval of tuned - base (absolute accuracy points)
    ci_high: float
    max_regression: float

    @property
    def passed(self) -> bool:
        return self.relative_loss <= self.max_regression


@dataclass
class LabelCollapseResult:
    """Share of general prompts answered with one of the task's labels."""

    examples: int
    labels: int  # how many distinct task labels
    base: float
    tuned: float
    ci_low: float  # 95% interval of tuned - base
    ci_high: float


def compare_known_answers(
    items: Sequence[RegressionItem],
    base_outputs: Sequence[str],
    tuned_outputs: Sequence[str],
    max_regression: float,
    *,
    seed: int,
) -> KnownAnswerResult:
    keywords = [item.keywords or () for item in items]
    base_hits = [float(matches_known_answer(text, words)) for text, words in zip(base_outputs, keywords, strict=True)]
    tuned_hits = [float(matches_known_answer(text, words)) for text, words in zip(tuned_outputs, keywords, strict=True)]
    interval = m.paired_bootstrap(
        len(items), lambda idx: m.mean([tuned_hits[i] - base_hits[i] for i in idx]), seed=seed
    )
    base, tuned = m.mean(base_hits), m.mean(tuned_hits)
    return KnownAnswerResult(
        examples=len(items),
        base=base,
        tuned=tuned,
        relative_loss=(base - tuned) / base if base else 0.0,
        ci_low=interval.low,
        ci_high=interval.high,
        max_regression=max_regression,
    )


def compare_label_collapse(
    labels: set[str], base_outputs: Sequence[str], tuned_outputs: Sequence[str], *, seed: int
) -> LabelCollapseResult:
    base = [float(m.as_label(text) in labels) for text in base_outputs]
    tuned = [float(m.as_label(text) in labels) for text in tuned_outputs]
    interval = m.paired_bootstrap(len(base), lambda idx: m.mean([tuned[i] - base[i] for i in idx]), seed=seed)
    return LabelCollapseResult(
        examples=len(base),
        labels=len(labels),
        base=m.mean(base),
        tuned=m.mean(tuned),
        ci_low=interval.low,
        ci_high=interval.high,
    )


def _likelihood(losses: Sequence[TokenLoss], idx: Sequence[int]) -> float:
    nll = sum(losses[i].nll_sum for i in idx)
    tokens = sum(losses[i].tokens for i in idx)
    return math.exp(-nll / tokens) if tokens else 0.0


def compare_likelihood(
    base: Sequence[TokenLoss], tuned: Sequence[TokenLoss], max_regression: float, *, seed: int
) -> RegressionResult:
    """Relative loss of per-token likelihood on the regression answers (5% = 0.05)."""

    def relative_loss(idx: Sequence[int]) -> float:
        b = _likelihood(base, idx)
        return (b - _likelihood(tuned, idx)) / b if b else 0.0

    everything = range(len(base))
    interval = m.paired_bootstrap(len(base), relative_loss, seed=seed)
    return RegressionResult(
        examples=len(base),
        base=_likelihood(base, everything),
        tuned=_likelihood(tuned, everything),
        relative_loss=relative_loss(everything),
        ci_low=interval.low,
        ci_high=interval.high,
        max_regression=max_regression,
    )
