"""Preference runs on held-out pairs: does the tuned model prefer the chosen answers more than the base does?

A pair's implicit reward (the DPO paper's) of an answer y is beta * (log pi_tuned(y|x) - log pi_base(y|x)).
Reward accuracy is the share of pairs whose chosen answer gets the higher reward (a tie counts half),
so the base model itself scores exactly chance, 0.5; the reward margin is the mean difference of the
two rewards, 0 for the base. Both come with a 95% bootstrap interval over the pairs, and no answer is
generated: four teacher-forced likelihoods per pair.

When the evaluation generates answers anyway (a generation metric is asked for), the pair data also
judge them: an answer's side is its ROUGE-L to the chosen answer minus its ROUGE-L to the rejected
one, and the tuned model wins a prompt when its answer leans further to the chosen side than the
base's (a tie counts half). This pair win rate is reported, not judged: the pairs say which of two
given answers is better, not how good a third one is.
"""

from __future__ import annotations

from collections.abc import Sequence

from kubetune.api.contract import PREFERENCE_METRICS
from kubetune_trainer.evaluation import metrics as m
from kubetune_trainer.evaluation.results import MetricResult
from kubetune_trainer.evaluation.scoring import TokenLoss

REWARD_ACCURACY, REWARD_MARGIN, PAIR_WIN_RATE = PREFERENCE_METRICS
CHANCE = 0.5


def reward_margins(
    base_chosen: Sequence[TokenLoss],
    tuned_chosen: Sequence[TokenLoss],
    base_rejected: Sequence[TokenLoss],
    tuned_rejected: Sequence[TokenLoss],
    *,
    beta: float,
) -> list[float]:
    """Per pair: reward(chosen) - reward(rejected), from each side's summed NLL of each answer."""
    return [
        beta * ((bc.nll_sum - tc.nll_sum) - (br.nll_sum - tr.nll_sum))
        for bc, tc, br, tr in zip(base_chosen, tuned_chosen, base_rejected, tuned_rejected, strict=True)
    ]


def _won(margin: float) -> float:
    return 1.0 if margin > 0 else 0.5 if margin == 0 else 0.0


def compare_preferences(margins: Sequence[float], *, seed: int) -> list[MetricResult]:
    """Reward accuracy and margin of the tuned model, each against the base's (chance and 0)."""
    wins = [_won(margin) for margin in margins]
    results = []
    for name, values, base in ((REWARD_ACCURACY, wins, CHANCE), (REWARD_MARGIN, list(margins), 0.0)):

        def change(idx: Sequence[int], values: Sequence[float] = values, base: float = base) -> float:
            return m.mean([values[i] for i in idx]) - base

        interval = m.paired_bootstrap(len(values), change, seed=seed)
        results.append(
            MetricResult(
                name=name,
                base=base,
                tuned=m.mean(values),
                ci_low=interval.low,
                ci_high=interval.high,
                lower_is_better=False,
            )
        )
    return results


def _side(answer: str, chosen: str, rejected: str) -> float:
    return m.rouge_l(answer, chosen) - m.rouge_l(answer, rejected)


def compare_answers(
    base: Sequence[str], tuned: Sequence[str], chosen: Sequence[str], rejected: Sequence[str], *, seed: int
) -> MetricResult:
    """The pair win rate of the tuned model's answers over the base's (module docstring)."""
    wins = [_won(_side(t, c, r) - _side(b, c, r)) for b, t, c, r in zip(base, tuned, chosen, rejected, strict=True)]
    interval = m.paired_bootstrap(len(wins), lambda idx: m.mean([wins[i] for i in idx]) - CHANCE, seed=seed)
    return MetricResult(PAIR_WIN_RATE, CHANCE, m.mean(wins), interval.low, interval.high, lower_is_better=False)
