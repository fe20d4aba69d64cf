"""The promotion verdict: which checks ran, what each found, and whether the tuned model is promoted.

No gate in the manifest does not mean "passed": a default gate applies. The tuned model must beat
the base on the task's primary metric with the whole 95% paired-bootstrap interval of tuned - base
above 0, on enough test examples to say so, and stay within ``maxRegression`` on every forgetting
measure. An explicit ``gate`` replaces the task check (its metric and minimum improvement); the
forgetting checks apply either way. A run that opted out of measuring forgetting is promoted only
by an explicit gate.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

from kubetune.api.v1alpha1 import Metric, QualityGateSpec
from kubetune_trainer.evaluation import metrics as m
from kubetune_trainer.evaluation.forgetting import KnownAnswerResult, LabelCollapseResult
from kubetune_trainer.evaluation.results import MetricResult, RegressionResult

# Fewer held-out examples than this cannot show an improvement with any confidence.
MIN_TEST_EXAMPLES = 20
# Answers are label-like when this many distinct answers cover this share of the rows.
LABEL_LIKE_MAX_DISTINCT = 50
LABEL_LIKE_MIN_COVERAGE = 0.9


def is_label_like(references: Sequence[str]) -> bool:
    if not references:
        return False
    counts = Counter(m.as_label(reference) for reference in references)
    covered = sum(count for _, count in counts.most_common(LABEL_LIKE_MAX_DISTINCT))
    return covered >= LABEL_LIKE_MIN_COVERAGE * len(references)


def primary_metric(references: Sequence[str]) -> Metric:
    """The task-outcome metric the default gate judges: accuracy for label-like answers, else rougeL."""
    return Metric.ACCURACY if is_label_like(references) else Metric.ROUGE_L


@dataclass
class Forgetting:
    """What was measured on the general prompts (None where nothing was)."""

    set_name: str | None
    likelihood: RegressionResult | None = None
    known_answers: KnownAnswerResult | None = None
    label_collapse: LabelCollapseResult | None = None
    opted_out: bool = False


@dataclass
class Check:
    name: str
    passed: bool | None  # None: reported, not judged
    detail: str


@dataclass
class GateResult:
    passed: bool  # promoted
    message: str
    checks: list[Check] = field(default_factory=list)
    metric: str | None = None
    base: float | None = None
    tuned: float | None = None
    improvement: float | None = None
    required: float | None = None
    default_gate: bool = False


def _judged(
    name: str,
    passed: bool,
    detail: str,
    metric: MetricResult,
    *,
    improvement: float,
    required: float,
    default_gate: bool = False,
) -> tuple[Check, GateResult]:
    """A check and the verdict it gives on ``metric``."""
    verdict = GateResult(
        passed,
        detail,
        metric=metric.name,
        base=metric.base,
        tuned=metric.tuned,
        improvement=improvement,
        required=required,
        default_gate=default_gate,
    )
    return Check(name, passed, detail), verdict


def _explicit_task_check(results: Sequence[MetricResult], gate: QualityGateSpec) -> tuple[Check, GateResult]:
    metric = next((r for r in results if r.name == str(gate.metric)), None)
    if metric is None:
        detail = f"gate metric {gate.metric} was not evaluated (add it to spec.evaluation.metrics)"
        return Check("task", False, detail), GateResult(False, detail)
    if metric.base == 0:
        improvement = -metric.tuned if metric.lower_is_better else metric.tuned
        kind = "absolute"
    else:
        change = (metric.base - metric.tuned) if metric.lower_is_better else (metric.tuned - metric.base)
        improvement = change / abs(metric.base)
        kind = "relative"
    met = improvement >= gate.min_improvement
    detail = (
        f"{metric.name} {metric.base:.4f} -> {metric.tuned:.4f} ({kind} improvement {improvement:+.1%}, "
        f"required {gate.min_improvement:+.1%}): {'passed' if met else 'missed'}"
    )
    return _judged("task", met, detail, metric, improvement=improvement, required=gate.min_improvement)


def _default_task_check(
    results: Sequence[MetricResult], primary: Metric, test_examples: int
) -> tuple[Check, GateResult]:
    if test_examples < MIN_TEST_EXAMPLES:
        detail = f"insufficient evidence (n={test_examples} test examples, at least {MIN_TEST_EXAMPLES} needed)"
        return Check("task", False, detail), GateResult(False, detail, metric=str(primary), default_gate=True)
    metric = next(r for r in results if r.name == str(primary))
    better = metric.improved
    detail = (
        f"{metric.name} {metric.base:.4f} -> {metric.tuned:.4f}, delta {metric.delta:+.4f} "
        f"[95% CI {metric.ci_low:+.4f}, {metric.ci_high:+.4f}]: "
        + ("better than the base" if better else "not shown better than the base (the interval reaches 0)")
    )
    return _judged("task", better, detail, metric, improvement=metric.delta, required=0.0, default_gate=True)


def _preference_check(preference: Sequence[MetricResult], test_examples: int) -> tuple[Check, GateResult]:
    """A preference run's default task check: the tuned model prefers the held-out chosen answers more
    than the base does, by reward accuracy (above chance) and by reward margin (above 0), each with
    its whole 95% interval."""
    accuracy, margin = preference[:2]  # the pair win rate, when measured, is reported only
    if test_examples < MIN_TEST_EXAMPLES:
        detail = f"insufficient evidence (n={test_examples} held-out pairs, at least {MIN_TEST_EXAMPLES} needed)"
        return Check("preference", False, detail), GateResult(False, detail, metric=accuracy.name, default_gate=True)
    better = accuracy.improved and margin.improved
    detail = (
        f"reward accuracy {accuracy.tuned:.1%} [95% CI {accuracy.base + accuracy.ci_low:.1%}, "
        f"{accuracy.base + accuracy.ci_high:.1%}], reward margin {margin.tuned:+.4f} [95% CI {margin.ci_low:+.4f}, "
        f"{margin.ci_high:+.4f}] on {test_examples} held-out pairs: "
        + (
            "prefers the chosen answers more than the base"
            if better
            else "not shown to prefer the chosen answers more than the base (an interval reaches chance)"
        )
    )
    return _judged("preference", better, detail, accuracy, improvement=accuracy.delta, required=0.0, default_gate=True)


def forgetting_checks(forgetting: Forgetting) -> list[Check]:
    if forgetting.opted_out:
        return [Check("forgetting", None, "forgetting not measured (opted out)")]
    checks = []
    likelihood = forgetting.likelihood
    if likelihood is not None:
        checks.append(
            Check(
                "forgetting.likelihood",
                likelihood.passed,
                f"likelihood of the base model's own answers {likelihood.base:.4f} -> {likelihood.tuned:.4f} "
                f"({-likelihood.relative_loss:+.1%}, at most -{likelihood.max_regression:.0%}) on "
                f"{likelihood.examples} general prompts",
            )
        )
    known = forgetting.known_answers
    if known is not None:
        checks.append(
            Check(
                "forgetting.knownAnswers",
                known.passed,
                f"known answers right {known.base:.1%} -> {known.tuned:.1%} [95% CI of the change "
                f"{known.ci_low:+.1%}, {known.ci_high:+.1%}] on {known.examples} prompts "
                f"(at most {known.max_regression:.0%} fewer)",
            )
        )
    collapse = forgetting.label_collapse
    if collapse is not None:
        checks.append(
            Check(
                "labelCollapse",
                None,
                f"general prompts answered with a task label {collapse.base:.1%} -> {collapse.tuned:.1%} "
                f"[95% CI of the change {collapse.ci_low:+.1%}, {collapse.ci_high:+.1%}]",
            )
        )
    if not checks:
        checks.append(Check("forgetting", False, "forgetting could not be measured (no general prompts)"))
    return checks


def decide_promotion(
    results: Sequence[MetricResult],
    forgetting: Forgetting,
    gate: QualityGateSpec | None,
    *,
    primary: Metric,
    test_examples: int,
    preference: Sequence[MetricResult] = (),
) -> GateResult:
    """Every check, and the verdict: promoted only when each judged check passed. A preference run's
    default gate judges the rewards (its task metric on the chosen answers is reported)."""
    reported_only: list[Check] = []
    if gate is not None:
        task, verdict = _explicit_task_check(results, gate)
    elif preference:
        task, verdict = _preference_check(preference, test_examples)
        for win_rate in preference[2:]:
            reported_only.append(
                Check(
                    f"preference.{win_rate.name}",
                    None,
                    f"answers nearer the chosen than the base's on {win_rate.tuned:.1%} of held-out prompts "
                    f"[95% CI {win_rate.base + win_rate.ci_low:.1%}, {win_rate.base + win_rate.ci_high:.1%}]",
                )
            )
        if any(r.name == str(primary) for r in results):
            task_check, _ = _default_task_check(results, primary, test_examples)
            reported_only.append(Check(task_check.name, None, task_check.detail))
    else:
        task, verdict = _default_task_check(results, primary, test_examples)
    checks = [task, *reported_only, *forgetting_checks(forgetting)]
    failed = [check for check in checks if check.passed is False]
    unprotected = forgetting.opted_out and gate is None
    promoted = not failed and not unprotected
    if promoted:
        message = "promoted: " + "; ".join(check.detail for check in checks)
    else:
        reasons = [check.detail for check in failed]
        if unprotected:
            reasons.append("forgetting not measured (opted out) and no explicit gate")
        message = "not promoted: " + "; ".join(reasons)
    verdict.passed = promoted
    verdict.message = message
    verdict.checks = checks
    return verdict
