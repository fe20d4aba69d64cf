"""Base vs tuned on the held-out test split, forgetting on general prompts, then the promotion verdict."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import Any

from kubetune.api.v1alpha1 import EvaluationSpec, Metric
from kubetune_trainer.data.types import Example
from kubetune_trainer.evaluation import metrics as m
from kubetune_trainer.evaluation.forgetting import (
    FORGETTING_MAX_LENGTH,
    RegressionSet,
    compare_known_answers,
    compare_label_collapse,
    compare_likelihood,
)
from kubetune_trainer.evaluation.gate import Forgetting, decide_promotion, primary_metric
from kubetune_trainer.evaluation.preference import compare_answers, compare_preferences, reward_margins
from kubetune_trainer.evaluation.report import EvaluationReport
from kubetune_trainer.evaluation.results import MetricResult
from kubetune_trainer.evaluation.scoring import (
    GreedyStart,
    SideScores,
    TokenLoss,
    adapter_disabled,
    generate,
    score_examples,
)
from kubetune_trainer.evaluation.sharing import cached_on_rank0
from kubetune_trainer.general_prompts import ANSWER_MAX_NEW_TOKENS

GENERATION_METRICS = {Metric.ROUGE_L, Metric.BLEU, Metric.EXACT_MATCH, Metric.ACCURACY, Metric.F1}
PER_EXAMPLE: dict[Metric, Callable[[str, str], float]] = {
    Metric.ROUGE_L: m.rouge_l,
    Metric.EXACT_MATCH: m.exact_match,
    Metric.ACCURACY: m.label_match,
}


# Given the test examples, the answer length (None: likelihoods only) and how to score the base on
# them now, the base's scores: cached where the caller can (evaluation/base_cache.py).
BaseTestScores = Callable[[Sequence[Example], int | None, Callable[[], SideScores]], SideScores]


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


def _score(
    subject: tuple[Any, AbstractContextManager[None]],
    tokenizer: Any,
    examples: Sequence[Example],
    spec: EvaluationSpec,
    *,
    max_length: int,
    chat_template: str | None,
    generate_text: bool,
    score_losses: bool = True,
    max_new_tokens: int | None = None,
    starts: Sequence[GreedyStart | None] | None = None,
) -> SideScores:
    """Losses and/or greedy answers of one side. The answers start from what the scoring forward
    (or ``starts``, read off an earlier forward of the same model on the same prompts) already knows."""
    model, context = subject
    model.eval()
    losses: list[TokenLoss] = []
    read: list[GreedyStart | None] = []
    with context:
        if score_losses:
            losses, read = score_examples(
                model, tokenizer, examples, max_length=max_length, chat_template=chat_template
            )
        outputs = (
            generate(
                model,
                tokenizer,
                examples,
                max_new_tokens=max_new_tokens or spec.max_new_tokens,
                chat_template=chat_template,
                starts=starts if starts is not None else read or None,
            )
            if generate_text
            else []
        )
    return SideScores(losses, outputs, read)


def _perplexity(losses: Sequence[TokenLoss], idx: Sequence[int]) -> float:
    nll = sum(losses[i].nll_sum for i in idx)
    tokens = sum(losses[i].tokens for i in idx)
    return math.exp(nll / tokens) if tokens else float("nan")


def _metric_value(metric: Metric, scores: SideScores, refs: Sequence[str], idx: Sequence[int]) -> float:
    if metric == Metric.PERPLEXITY:
        return _perplexity(scores.losses, idx)
    preds = [scores.outputs[i] for i in idx]
    chosen = [refs[i] for i in idx]
    if metric == Metric.BLEU:
        return m.corpus_bleu(preds, chosen)
    if metric == Metric.F1:
        return m.macro_f1(preds, chosen)
    return m.mean([PER_EXAMPLE[metric](p, r) for p, r in zip(preds, chosen, strict=True)])


def task_metric(
    model: Any,
    tokenizer: Any,
    examples: Sequence[Example],
    metric: Metric,
    spec: EvaluationSpec,
    *,
    max_length: int,
    chat_template: str | None,
) -> float:
    """``metric`` of ``model`` as it is now on ``examples``, scored as the evaluation scores the test
    split (how the adapter strength is chosen on the validation split)."""
    scores = _score(
        (model, nullcontext()),
        tokenizer,
        examples,
        spec,
        max_length=max_length,
        chat_template=chat_template,
        generate_text=metric in GENERATION_METRICS,
        score_losses=metric == Metric.PERPLEXITY,
    )
    return _metric_value(metric, scores, [e.reference() for e in examples], range(len(examples)))


def compare_metric(
    metric: Metric, base: SideScores, tuned: SideScores, refs: Sequence[str], *, seed: int
) -> MetricResult:
    everything = range(len(refs))
    if metric in PER_EXAMPLE:
        # Each answer scored once, not once per resample (ROUGE-L of the demo's 58 rows took 24 s
        # over 1000 resamples); the interval is the same, value for value.
        per_tuned = [PER_EXAMPLE[metric](p, r) for p, r in zip(tuned.outputs, refs, strict=True)]
        per_base = [PER_EXAMPLE[metric](p, r) for p, r in zip(base.outputs, refs, strict=True)]

        def change(idx: Sequence[int]) -> float:
            return m.mean([per_tuned[i] for i in idx]) - m.mean([per_base[i] for i in idx])

    else:

        def change(idx: Sequence[int]) -> float:
            return _metric_value(metric, tuned, refs, idx) - _metric_value(metric, base, refs, idx)

    interval = m.paired_bootstrap(
        len(refs), change, resamples=400 if metric in (Metric.BLEU, Metric.F1) else 1000, seed=seed
    )
    return MetricResult(
        name=str(metric),
        base=_metric_value(metric, base, refs, everything),
        tuned=_metric_value(metric, tuned, refs, everything),
        ci_low=interval.low,
        ci_high=interval.high,
        lower_is_better=metric in m.LOWER_IS_BETTER,
    )


def evaluate(
    subject: ModelUnderTest,
    tokenizer: Any,
    test: Sequence[Example],
    spec: EvaluationSpec,
    *,
    regression: RegressionSet | None,
    max_length: int,
    chat_template: str | None = None,
    seed: int = 0,
    base_test_scores: BaseTestScores | None = None,
    reward_beta: float = 1.0,
) -> EvaluationReport:
    """Base vs tuned on ``test`` (the base side through ``base_test_scores`` when given: the cache),
    forgetting on ``regression``, and the promotion verdict. When ``test`` holds preference pairs,
    also the implicit rewards' accuracy and margin (evaluation/preference.py, scaled by ``reward_beta``),
    which the default gate judges."""
    chosen = list(test[: spec.max_examples] if spec.max_examples else test)
    refs = [e.reference() for e in chosen]
    primary = primary_metric(refs)
    wanted = [Metric(x) for x in spec.metrics]
    pairs = bool(chosen) and all(e.is_pair for e in chosen)
    if spec.gate is None and primary not in wanted and not pairs:
        wanted.append(primary)  # the default gate judges it: always evaluated (a preference run's judges rewards)
    needs_text = any(x in GENERATION_METRICS for x in wanted)

    def score(
        as_model: tuple[Any, AbstractContextManager[None]],
        examples: Sequence[Example],
        text: bool,
        max_new_tokens: int | None = None,
        length: int = max_length,
        losses: bool = True,
        starts: Sequence[GreedyStart | None] | None = None,
    ) -> SideScores:
        return _score(
            as_model,
            tokenizer,
            examples,
            spec,
            max_length=length,
            chat_template=chat_template,
            generate_text=text,
            score_losses=losses,
            max_new_tokens=max_new_tokens,
            starts=starts,
        )

    def base_now() -> SideScores:
        return score(subject.as_base(), chosen, needs_text)

    if base_test_scores is not None and chosen:
        cached_base = base_test_scores
        answer_tokens = spec.max_new_tokens if needs_text else None
        base = cached_on_rank0(lambda compute: cached_base(chosen, answer_tokens, compute), base_now)
    else:
        base = base_now()
    tuned = score(subject.as_tuned(), chosen, needs_text)
    results = [compare_metric(x, base, tuned, refs, seed=seed) for x in wanted] if chosen else []
    margins: list[float] = []
    if pairs:
        rejected = [e.with_rejected_answer() for e in chosen]
        base_rejected = score(subject.as_base(), rejected, False).losses
        tuned_rejected = score(subject.as_tuned(), rejected, False).losses
        margins = reward_margins(base.losses, tuned.losses, base_rejected, tuned_rejected, beta=reward_beta)
    preference = compare_preferences(margins, seed=seed) if margins else []
    if margins and needs_text:
        rejected_answers = [e.rejected or "" for e in chosen]
        preference.append(compare_answers(base.outputs, tuned.outputs, refs, rejected_answers, seed=seed))

    forgetting = Forgetting(set_name=regression.name if regression else None, opted_out=not spec.forgetting)
    general_predictions: list[dict[str, Any]] = []
    if spec.forgetting and regression is not None and regression.items:

        def base_likelihoods() -> list[TokenLoss]:
            return score(subject.as_base(), regression.examples, False, length=FORGETTING_MAX_LENGTH).losses

        base_losses = (
            cached_on_rank0(regression.base_scores, base_likelihoods) if regression.base_scores else base_likelihoods()
        )
        tuned_reg = score(subject.as_tuned(), regression.examples, False, length=FORGETTING_MAX_LENGTH)
        forgetting.likelihood = compare_likelihood(base_losses, tuned_reg.losses, spec.max_regression, seed=seed)
        known = regression.known
        if known:
            # The base side is the base model's own answer (the likelihood target, generated greedily
            # with the settings of general_answers); the tuned model answers the same way.
            base_known = [item.example.reference() for item in known]
            prompts = [Example(messages=item.example.prompt_messages()) for item in known]
            # The likelihood forward above fed each prompt with the base's answer: the tuned model's
            # answer is known for as long as it agrees with the base's.
            known_starts = [
                start for item, start in zip(regression.items, tuned_reg.starts, strict=True) if item.keywords
            ]
            tuned_known = score(
                subject.as_tuned(),
                prompts,
                True,
                ANSWER_MAX_NEW_TOKENS,
                losses=False,
                starts=known_starts,
            ).outputs
            forgetting.known_answers = compare_known_answers(
                known, base_known, tuned_known, spec.max_regression, seed=seed
            )
            if primary == Metric.ACCURACY:
                labels = {m.as_label(reference) for reference in refs}
                forgetting.label_collapse = compare_label_collapse(labels, base_known, tuned_known, seed=seed)
            general_predictions = [
                {
                    "prompt": item.example.prompt_messages()[-1].content,
                    "keywords": list(item.keywords or ()),
                    "base": b,
                    "tuned": t,
                }
                for item, b, t in zip(known, base_known, tuned_known, strict=True)
            ]

    predictions = [
        {
            "source": f"{e.source}:{e.row}",
            "prompt": e.prompt_messages()[-1].content if e.prompt_messages() else "",
            # The whole prompt, so another model can be asked the same (a champion/challenger comparison).
            "messages": [{"role": m.role, "content": m.content} for m in e.prompt_messages()],
            "reference": refs[i],
            "base": base.outputs[i] if needs_text else None,
            "tuned": tuned.outputs[i] if needs_text else None,
            "baseNll": base.losses[i].mean,
            "tunedNll": tuned.losses[i].mean,
            **({"rejected": e.rejected, "rewardMargin": margins[i]} if margins else {}),
        }
        for i, e in enumerate(chosen)
    ]
    return EvaluationReport(
        test_examples=len(chosen),
        metrics=[*results, *preference],
        gate=decide_promotion(
            results, forgetting, spec.gate, primary=primary, test_examples=len(chosen), preference=preference
        ),
        forgetting=forgetting,
        primary_metric=str(primary),
        max_new_tokens=spec.max_new_tokens,
        predictions=predictions,
        general_predictions=general_predictions,
    )
