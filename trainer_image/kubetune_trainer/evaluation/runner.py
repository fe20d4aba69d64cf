"""Base vs tuned on the held-out test split, forgetting on a regression set, then the gate."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any

from kubetune.api.v1alpha1 import EvaluationSpec, Metric, QualityGateSpec
from kubetune_trainer.data.types import Example
from kubetune_trainer.evaluation import metrics as m
from kubetune_trainer.evaluation.report import EvaluationReport, GateResult, MetricResult, RegressionResult
from kubetune_trainer.evaluation.scoring import TokenLoss, adapter_disabled, generate, token_losses

GENERATION_METRICS = {Metric.ROUGE_L, Metric.BLEU, Metric.EXACT_MATCH, Metric.ACCURACY, Metric.F1}
PER_EXAMPLE: dict[Metric, Callable[[str, str], float]] = {
    Metric.ROUGE_L: m.rouge_l,
    Metric.EXACT_MATCH: m.exact_match,
    Metric.ACCURACY: m.label_match,
}


@dataclass
class ModelUnderTest:
    """How to run a model as "base" and as "tuned".

    For LoRA/QLoRA one peft model serves both (adapter off / on): one copy in memory and the
    exact same base weights the adapter was trained against.
    """

    model: Any
    base_model: Any = None  # full fine-tuning: a separate base

    def as_base(self) -> tuple[Any, AbstractContextManager[None]]:
        if self.base_model is not None:
            return self.base_model, adapter_disabled(None)
        return self.model, adapter_disabled(self.model)

    def as_tuned(self) -> tuple[Any, AbstractContextManager[None]]:
        return self.model, adapter_disabled(None)


@dataclass
class _Scores:
    losses: list[TokenLoss]
    outputs: list[str]


def _score(
    subject: tuple[Any, AbstractContextManager[None]],
    tokenizer: Any,
    examples: Sequence[Example],
    spec: EvaluationSpec,
    *,
    max_length: int,
    batch_size: int,
    chat_template: str | None,
    generate_text: bool,
) -> _Scores:
    model, context = subject
    model.eval()
    with context:
        losses = token_losses(
            model, tokenizer, examples, max_length=max_length, batch_size=batch_size, chat_template=chat_template
        )
        outputs = (
            generate(
                model,
                tokenizer,
                examples,
                max_new_tokens=spec.max_new_tokens,
                batch_size=batch_size,
                chat_template=chat_template,
            )
            if generate_text
            else []
        )
    return _Scores(losses, outputs)


def _perplexity(losses: Sequence[TokenLoss], idx: Sequence[int]) -> float:
    nll = sum(losses[i].nll_sum for i in idx)
    tokens = sum(losses[i].tokens for i in idx)
    return math.exp(nll / tokens) if tokens else float("nan")


def _metric_value(metric: Metric, scores: _Scores, refs: Sequence[str], idx: Sequence[int]) -> float:
    if metric == Metric.PERPLEXITY:
        return _perplexity(scores.losses, idx)
    preds = [scores.outputs[i] for i in idx]
    chosen = [refs[i] for i in idx]
    if metric == Metric.BLEU:
        return m.corpus_bleu(preds, chosen)
    if metric == Metric.F1:
        return m.macro_f1(preds, chosen)
    return m.mean([PER_EXAMPLE[metric](p, r) for p, r in zip(preds, chosen, strict=True)])


def compare_metric(metric: Metric, base: _Scores, tuned: _Scores, refs: Sequence[str], *, seed: int) -> MetricResult:
    everything = range(len(refs))
    interval = m.paired_bootstrap(
        len(refs),
        lambda idx: _metric_value(metric, tuned, refs, idx) - _metric_value(metric, base, refs, idx),
        resamples=400 if metric in (Metric.BLEU, Metric.F1) else 1000,
        seed=seed,
    )
    return MetricResult(
        name=str(metric),
        base=_metric_value(metric, base, refs, everything),
        tuned=_metric_value(metric, tuned, refs, everything),
        ci_low=interval.low,
        ci_high=interval.high,
        lower_is_better=metric in m.LOWER_IS_BETTER,
    )


def _likelihood(losses: Sequence[TokenLoss], idx: Sequence[int]) -> float:
    nll = sum(losses[i].nll_sum for i in idx)
    tokens = sum(losses[i].tokens for i in idx)
    return math.exp(-nll / tokens) if tokens else 0.0


def compare_regression(
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


def apply_gate(
    results: Sequence[MetricResult], regression: RegressionResult | None, gate: QualityGateSpec | None
) -> GateResult:
    problems = []
    if regression is not None and not regression.passed:
        problems.append(
            f"forgetting: the tuned model lost {regression.relative_loss:.1%} per-token likelihood on the "
            f"regression set (allowed {regression.max_regression:.0%})"
        )
    if gate is None:
        message = "; ".join(problems) or "no quality gate set"
        return GateResult(passed=not problems, message=message)
    metric = next((r for r in results if r.name == str(gate.metric)), None)
    if metric is None:
        return GateResult(False, f"gate metric {gate.metric} was not evaluated (add it to spec.evaluation.metrics)")
    if metric.base == 0:
        improvement = -metric.tuned if metric.lower_is_better else metric.tuned
        kind = "absolute"
    else:
        change = (metric.base - metric.tuned) if metric.lower_is_better else (metric.tuned - metric.base)
        improvement = change / abs(metric.base)
        kind = "relative"
    met = improvement >= gate.min_improvement
    verdict = "passed" if met else "missed"
    text = (
        f"{metric.name} {metric.base:.4f} -> {metric.tuned:.4f} ({kind} improvement {improvement:+.1%}, "
        f"required {gate.min_improvement:+.1%}): {verdict}"
    )
    return GateResult(
        passed=met and not problems,
        message="; ".join([text, *problems]),
        metric=metric.name,
        base=metric.base,
        tuned=metric.tuned,
        improvement=improvement,
        required=gate.min_improvement,
    )


def evaluate(
    subject: ModelUnderTest,
    tokenizer: Any,
    test: Sequence[Example],
    spec: EvaluationSpec,
    *,
    regression: Sequence[Example] | None,
    max_length: int,
    batch_size: int = 8,
    chat_template: str | None = None,
    seed: int = 0,
) -> EvaluationReport:
    chosen = list(test[: spec.max_examples] if spec.max_examples else test)
    wanted = [Metric(x) for x in spec.metrics]
    needs_text = any(x in GENERATION_METRICS for x in wanted)

    def score(as_model: tuple[Any, AbstractContextManager[None]], examples: Sequence[Example], text: bool) -> _Scores:
        return _score(
            as_model,
            tokenizer,
            examples,
            spec,
            max_length=max_length,
            batch_size=batch_size,
            chat_template=chat_template,
            generate_text=text,
        )

    base = score(subject.as_base(), chosen, needs_text)
    tuned = score(subject.as_tuned(), chosen, needs_text)
    refs = [e.reference() for e in chosen]
    results = [compare_metric(x, base, tuned, refs, seed=seed) for x in wanted] if chosen else []

    regression_result = None
    if regression:
        base_reg = score(subject.as_base(), regression, False)
        tuned_reg = score(subject.as_tuned(), regression, False)
        regression_result = compare_regression(base_reg.losses, tuned_reg.losses, spec.max_regression, seed=seed)

    predictions = [
        {
            "source": f"{e.source}:{e.row}",
            "prompt": e.prompt_messages()[-1].content if e.prompt_messages() else "",
            "reference": refs[i],
            "base": base.outputs[i] if needs_text else None,
            "tuned": tuned.outputs[i] if needs_text else None,
            "baseNll": base.losses[i].mean,
            "tunedNll": tuned.losses[i].mean,
        }
        for i, e in enumerate(chosen)
    ]
    return EvaluationReport(
        test_examples=len(chosen),
        metrics=results,
        gate=apply_gate(results, regression_result, spec.gate),
        regression=regression_result,
        predictions=predictions,
    )
