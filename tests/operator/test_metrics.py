"""The operator's metrics as pure bookkeeping: what one reconcile's observation does to them."""

from __future__ import annotations

import ast
import re
from dataclasses import replace
from pathlib import Path

from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from kubetune.operator import status, validation
from kubetune.operator.metrics import Observation, OperatorMetrics, parse_time, phase_entered
from kubetune.operator.status import FAILURE_REASONS


class Clock:
    def __init__(self, now: float = 1_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def seen(phase: str, previous: str | None, **changes: object) -> Observation:
    base = Observation(
        namespace="ml",
        name="tickets",
        phase=phase,
        previous_phase=previous,
        reason="Training",
        created=900.0,
        gpus=2,
        phase_entered=None,
        first_running=False,
        training_job_created=None,
    )
    return replace(base, **changes)  # type: ignore[arg-type]


def value(metrics: OperatorMetrics, name: str, **labels: str) -> float | None:
    return metrics.registry.get_sample_value(name, labels)


def test_gpu_seconds_grow_only_while_running_and_survive_the_job() -> None:
    clock = Clock()
    metrics = OperatorMetrics(FAILURE_REASONS, clock)
    metrics.observe(seen("Queued", "Pending"))
    clock.now += 50
    assert value(metrics, "kubetune_gpu_seconds_total", namespace="ml") == 0
    metrics.observe(seen("Running", "Queued", first_running=True))
    clock.now += 100
    assert value(metrics, "kubetune_gpus_in_use", namespace="ml") == 2
    assert value(metrics, "kubetune_finetunejob_gpus_in_use", namespace="ml", finetunejob="tickets") == 2
    assert value(metrics, "kubetune_gpu_seconds_total", namespace="ml") == 200, "live, between reconciles"
    metrics.observe(seen("Suspended", "Running"))
    clock.now += 1_000
    assert value(metrics, "kubetune_gpu_seconds_total", namespace="ml") == 200, "a suspended job holds no GPU"
    assert value(metrics, "kubetune_gpus_in_use", namespace="ml") == 0
    assert value(metrics, "kubetune_finetunejob_gpus_in_use", namespace="ml", finetunejob="tickets") == 0
    metrics.observe(seen("Running", "Suspended"))
    clock.now += 10
    metrics.forget("ml", "tickets")  # deleted while running: its time so far still counts
    clock.now += 500
    assert value(metrics, "kubetune_gpu_seconds_total", namespace="ml") == 220
    assert value(metrics, "kubetune_finetunejobs", namespace="ml", phase="Running") == 0


def test_a_finished_training_verifying_its_promotion_holds_no_gpu() -> None:
    """Still Running (reason VerifyingPromotion) once the training pod ended: its GPU time stops there."""
    clock = Clock()
    metrics = OperatorMetrics(FAILURE_REASONS, clock)
    metrics.observe(seen("Running", "Queued", first_running=True))
    clock.now += 100
    metrics.observe(seen("Running", "Running", gpus=0, reason="VerifyingPromotion"))
    clock.now += 300
    assert value(metrics, "kubetune_gpu_seconds_total", namespace="ml") == 200
    assert value(metrics, "kubetune_gpus_in_use", namespace="ml") == 0
    metrics.observe(seen("Succeeded", "Running", gpus=0))
    clock.now += 50
    assert value(metrics, "kubetune_gpu_seconds_total", namespace="ml") == 200


def test_a_restarted_operator_counts_gpu_time_from_its_own_start_only() -> None:
    clock = Clock(5_000.0)
    metrics = OperatorMetrics(FAILURE_REASONS, clock)
    metrics.observe(seen("Running", "Running", phase_entered=1_000.0))  # running for an hour already
    clock.now += 60
    assert value(metrics, "kubetune_gpu_seconds_total", namespace="ml") == 120
    since = value(
        metrics, "kubetune_finetunejob_phase_timestamp_seconds", namespace="ml", finetunejob="tickets", phase="Running"
    )
    assert since == 1_000.0, "the phase started when the status says, not when this process saw it"
    assert (
        value(
            metrics,
            "kubetune_finetunejob_phase_transitions_total",
            namespace="ml",
            from_phase="Running",
            to_phase="Running",
        )
        is None
    )


def test_transitions_failures_and_durations_are_counted_once() -> None:
    clock = Clock(1_500.0)
    metrics = OperatorMetrics(FAILURE_REASONS, clock)
    for reason in FAILURE_REASONS:
        assert value(metrics, "kubetune_finetunejob_failures_total", namespace="ml", reason=reason) is None
    metrics.observe(seen("Validating", None))
    assert all(
        value(metrics, "kubetune_finetunejob_failures_total", namespace="ml", reason=reason) == 0
        for reason in FAILURE_REASONS
    ), "every reason starts at 0, so the first failure is an increase"
    metrics.observe(seen("Validating", "Validating"))  # a duplicate event
    metrics.observe(seen("Failed", "Validating", reason="PreflightFailed"))
    metrics.observe(seen("Failed", "Failed", reason="PreflightFailed"))  # settled, re-reconciled
    assert (
        value(
            metrics,
            "kubetune_finetunejob_phase_transitions_total",
            namespace="ml",
            from_phase="New",
            to_phase="Validating",
        )
        == 1
    )
    assert (
        value(
            metrics,
            "kubetune_finetunejob_phase_transitions_total",
            namespace="ml",
            from_phase="Validating",
            to_phase="Failed",
        )
        == 1
    )
    assert value(metrics, "kubetune_finetunejob_failures_total", namespace="ml", reason="PreflightFailed") == 1
    assert value(metrics, "kubetune_finetunejob_duration_seconds_count", namespace="ml", outcome="Failed") == 1
    assert value(metrics, "kubetune_finetunejob_duration_seconds_sum", namespace="ml", outcome="Failed") == 600
    assert value(metrics, "kubetune_finetunejobs", namespace="ml", phase="Failed") == 1
    assert value(metrics, "kubetune_finetunejobs", namespace="ml", phase="Validating") == 0
    assert (
        value(
            metrics,
            "kubetune_finetunejob_phase_timestamp_seconds",
            namespace="ml",
            finetunejob="tickets",
            phase="Failed",
        )
        is None
    ), "per-job series are for active jobs only"


def test_queue_time_and_job_creation_delay_come_from_the_observation() -> None:
    clock = Clock(2_000.0)
    metrics = OperatorMetrics(FAILURE_REASONS, clock)
    metrics.observe(seen("Queued", "Pending", training_job_created=960.0))
    metrics.observe(seen("Running", "Queued", first_running=True))
    metrics.observe(seen("Running", "Running"))
    assert value(metrics, "kubetune_finetunejob_job_creation_delay_seconds_sum", namespace="ml") == 60
    assert value(metrics, "kubetune_finetunejob_queue_seconds_count", namespace="ml") == 1
    assert value(metrics, "kubetune_finetunejob_queue_seconds_sum", namespace="ml") == 1_100
    assert value(metrics, "kubetune_finetunejob_queue_seconds_bucket", namespace="ml", le="1200.0") == 1
    assert value(metrics, "kubetune_finetunejob_queue_seconds_bucket", namespace="ml", le="600.0") == 0


def test_phase_entered_reads_the_status_a_previous_operator_wrote() -> None:
    conditions = [
        {"type": "Validated", "status": "True", "lastTransitionTime": "2026-12-01T10:00:00Z"},
        {"type": "Running", "status": "True", "lastTransitionTime": "2026-12-01T10:05:00Z"},
        {"type": "Suspended", "status": "False", "lastTransitionTime": "2026-12-01T09:00:00Z"},
    ]
    created = parse_time("2026-12-01T09:59:00Z")
    assert phase_entered({"conditions": conditions}, "Running", created) == parse_time("2026-12-01T10:05:00Z")
    assert phase_entered({"conditions": conditions}, "Queued", created) == parse_time("2026-12-01T10:00:00Z")
    assert phase_entered({"conditions": conditions}, "Suspended", created) == created, (
        "a False condition is no evidence"
    )
    assert phase_entered({}, "Validating", created) == created
    assert parse_time("not a time") is None and parse_time(None) is None


def _reasons(module: object, call: str, *, failed_only: bool) -> set[str]:
    """String reasons passed to ``call`` in ``module``'s source (for Verdict: Failed ones only)."""
    found = set()
    for node in ast.walk(ast.parse(Path(module.__file__).read_text())):  # type: ignore[attr-defined]
        if not (isinstance(node, ast.Call) and getattr(node.func, "id", None) == call and node.args):
            continue
        if failed_only and not (len(node.args) > 1 and getattr(node.args[0], "attr", None) == "FAILED"):
            continue
        reason = node.args[1] if failed_only else node.args[0]
        if isinstance(reason, ast.Constant) and isinstance(reason.value, str):
            found.add(reason.value)
    return found


def test_every_failure_reason_the_operator_can_produce_is_listed() -> None:
    """FAILURE_REASONS pre-initialises the failure counters; a reason missing from it would still
    be counted, but its first occurrence would not show as an increase to an alert."""
    produced = _reasons(validation, "SpecProblem", failed_only=False) | _reasons(status, "Verdict", failed_only=True)
    assert {"InvalidSpec", "SecretNotFound", "NameConflict", "PreflightFailed", "TrainingJobLost"} <= produced
    assert produced <= set(FAILURE_REASONS)


GARBAGE: tuple[object, ...] = (
    float("nan"),
    float("inf"),
    float("-inf"),
    10**400,  # beyond any float
    1e300,  # finite, absurd
    True,
    "0.5",
    None,
    [1.0],
    {"value": 1.0},
)

KNOWN_KEYS = [
    f"{model}.{metric}"
    for model in ("base", "tuned")
    for metric in ("perplexity", "rougeL", "bleu", "exactMatch", "f1", "generalKnownAnswers")
]


def test_whatever_a_status_holds_never_breaks_metrics_and_only_sane_figures_are_exported() -> None:
    metrics = OperatorMetrics(FAILURE_REASONS)
    metrics.trainer_results.update(
        {
            "metadata": {"namespace": "ml", "name": "tickets"},
            "status": {
                "progress": {"trainLoss": 0.75, "evalLoss": float("nan"), "tokensPerSecond": -1.0},
                "result": {
                    "metrics": {
                        "tuned.accuracy": 0.9,
                        "base.regressionLikelihood": 0.25,
                        **dict(zip(KNOWN_KEYS[: len(GARBAGE)], GARBAGE, strict=True)),
                        # keys that name no known model and metric, with sane values
                        **{key: 1.0 for key in ("base.unknownMetric", "tuned", "", ".accuracy", "other.accuracy")},
                    },
                    "promoted": True,  # the trainer's claim: the gate is the operator's condition
                },
                "conditions": [{"type": "QualityGatePassed", "status": "False"}],
            },
        }
    )
    for i, bad in enumerate(GARBAGE):  # a status or parts of it of the wrong shape
        metrics.trainer_results.update({"metadata": {"namespace": "ml", "name": f"odd-{i}"}, "status": bad})
        metrics.trainer_results.update(
            {"metadata": {"namespace": "ml", "name": f"odder-{i}"}, "status": {"progress": bad, "result": bad}}
        )
        metrics.trainer_results.update(
            {"metadata": {"namespace": "ml", "name": f"oddest-{i}"}, "status": {"result": {"metrics": bad}}}
        )
        metrics.trainer_results.update({"metadata": bad, "status": {"progress": {"trainLoss": 1.0}}})
    samples = {
        (sample.name, tuple(sorted(sample.labels.items())), sample.value)
        for family in text_string_to_metric_families(generate_latest(metrics.registry).decode())
        if family.name.startswith("kubetune_finetunejob_") and family.name != "kubetune_finetunejob_failures"
        for sample in family.samples
    }
    job = (("finetunejob", "tickets"), ("namespace", "ml"))
    assert samples == {
        ("kubetune_finetunejob_train_loss", job, 0.75),
        ("kubetune_finetunejob_eval_metric", tuple(sorted((*job, ("metric", "accuracy"), ("model", "tuned")))), 0.9),
        (
            "kubetune_finetunejob_eval_metric",
            tuple(sorted((*job, ("metric", "regressionLikelihood"), ("model", "base")))),
            0.25,
        ),
        ("kubetune_finetunejob_quality_gate_passed", job, 0.0),
    }
    metrics.forget("ml", "tickets")
    assert value(metrics, "kubetune_finetunejob_train_loss", namespace="ml", finetunejob="tickets") is None


def test_a_deleting_finetunejob_has_no_figures() -> None:
    metrics = OperatorMetrics(FAILURE_REASONS)
    body = {"metadata": {"namespace": "ml", "name": "tickets"}, "status": {"progress": {"trainLoss": 0.75}}}
    metrics.trainer_results.update(body)
    assert value(metrics, "kubetune_finetunejob_train_loss", namespace="ml", finetunejob="tickets") == 0.75
    metrics.trainer_results.update(
        {**body, "metadata": {**body["metadata"], "deletionTimestamp": "2026-01-01T00:00:00Z"}}
    )
    assert value(metrics, "kubetune_finetunejob_train_loss", namespace="ml", finetunejob="tickets") is None


def test_every_operator_family_is_in_the_docs() -> None:
    """docs/metrics.md's operator table lists exactly what the operator exports (the slow observability
    test compares the whole page with live scrapes)."""
    metrics = OperatorMetrics(FAILURE_REASONS)
    exported = {
        family.name + ("_total" if family.type == "counter" else ""): family.type
        for family in text_string_to_metric_families(generate_latest(metrics.registry).decode())
        if family.name.startswith("kubetune_")
    }
    docs = (Path(__file__).resolve().parents[2] / "docs" / "metrics.md").read_text()
    table = docs[docs.index("## Operator metrics") : docs.index("## Trainer metrics")]
    documented = dict(re.findall(r"^\| `(kubetune_[a-z_]+)` \| (\w+) \|", table, flags=re.MULTILINE))
    assert documented == exported


def test_the_docs_list_every_failure_reason() -> None:
    """An alert is written against the reasons docs/metrics.md names; each one the operator counts is there."""
    docs = (Path(__file__).resolve().parents[2] / "docs" / "metrics.md").read_text()
    row = next(line for line in docs.splitlines() if line.startswith("| `kubetune_finetunejob_failures_total`"))
    listed = re.findall(r"`([A-Z][A-Za-z]+)`", row.split("Failed condition:", 1)[1])
    assert listed == list(FAILURE_REASONS)
