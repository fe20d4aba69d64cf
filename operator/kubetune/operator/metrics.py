"""The operator's Prometheus metrics, served at ``/metrics`` on ``KUBETUNE_METRICS_PORT``.

Every family is documented in ``docs/metrics.md`` (a test compares it with a live scrape).
Label values are bounded: namespaces, the API's phases, the condition reasons this operator
defines, and, for per-job series, the names of FineTuneJobs that are still active.

Two kinds of families:

- what happened (counters, histograms), observed when a reconcile sees a transition. Each is
  judged from the status the operator itself wrote before, so a restarted operator or a
  duplicate watch event never counts a transition twice;
- what is (gauges, GPU-seconds), computed at scrape time by :class:`FleetCollector` from what
  the latest reconcile of each job saw.

And the trainers' final figures (:class:`TrainerFigures`), read from each FineTuneJob's status
and exported under the namespace and name of the FineTuneJob's own metadata, never under anything
the status says: a trainer writes its status, so it chooses the values, not whose they are. They
outlive the training pod without a Pushgateway, and go when the FineTuneJob is deleted.

And each DriftMonitor's figures (:class:`MonitorFigures`), read from its status, which only the
operator writes: checks decided, retrainings started, the last check's p-values and verdict.
"""

from __future__ import annotations

import math
import platform
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from prometheus_client import (
    GC_COLLECTOR,
    PLATFORM_COLLECTOR,
    PROCESS_COLLECTOR,
    CollectorRegistry,
    Counter,
    Histogram,
    Info,
    disable_created_metrics,
    start_http_server,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

import kubetune.api
from kubetune.api.contract import (
    DRIFTMONITOR_LABEL,
    FINETUNEJOB_LABEL,
    FORGETTING_METRICS,
    NAMESPACE_LABEL,
    PREFERENCE_METRICS,
    RESULT_MODELS,
)
from kubetune.api.driftmonitor import DriftMonitorStatus
from kubetune.api.v1alpha1 import TERMINAL_PHASES, Metric, Phase

# Waiting (creation to Job, creation to Running): seconds to a day, GPU queues can be long.
WAIT_BUCKETS = (1, 5, 15, 30, 60, 120, 300, 600, 1200, 1800, 3600, 7200, 14400, 28800, 86400)
# A whole job: minutes to a week.
RUN_BUCKETS = (60, 300, 600, 1200, 1800, 3600, 7200, 14400, 28800, 43200, 86400, 172800, 604800)
RECONCILE_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
ACTIVE_PHASES = tuple(str(p) for p in Phase if p not in TERMINAL_PHASES)

# The trainer's figures the operator re-exports: a trainer writes them, so each is checked to be a
# number it could mean (finite, and no loss, rate or evaluation score is anywhere near 1e15).
RESULT_METRICS = frozenset((*(str(m) for m in Metric), *FORGETTING_METRICS, *PREFERENCE_METRICS))
MAX_FIGURE = 1e15
QUALITY_GATE_CONDITION = "QualityGatePassed"

# No *_created series: nothing here queries them, and they double the number of series.
disable_created_metrics()


def parse_time(value: Any) -> float | None:
    """A Kubernetes timestamp (``2026-12-01T10:00:00Z``) as Unix seconds; None if absent or malformed."""
    if not isinstance(value, str) or not value:
        return None
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


def phase_entered(status: dict[str, Any], phase: str, created: float | None) -> float | None:
    """When the job entered ``phase``, judged from its status (for a job first seen after a restart).

    Phases with a condition of their own (Running, Suspended, Succeeded, Failed) have its
    lastTransitionTime; Pending and Queued follow a passed validation; Validating starts at creation.
    """
    conditions = {c.get("type"): c for c in status.get("conditions") or [] if isinstance(c, dict)}
    own = conditions.get(phase)
    if own is not None and own.get("status") == "True":
        return parse_time(own.get("lastTransitionTime")) or created
    validated = conditions.get("Validated")
    if phase in (Phase.PENDING, Phase.QUEUED) and validated is not None and validated.get("status") == "True":
        return parse_time(validated.get("lastTransitionTime")) or created
    return created


@dataclass(frozen=True)
class Observation:
    """What one reconcile of one FineTuneJob saw, as the metrics need it."""

    namespace: str
    name: str
    phase: str
    previous_phase: str | None  # status.phase before this reconcile (None: never reconciled)
    reason: str  # the verdict's reason (for Failed: why)
    created: float | None  # metadata.creationTimestamp
    gpus: int  # GPUs the training pod requests (0 for an invalid spec)
    phase_entered: float | None  # when it entered ``phase`` if it did not just now (status evidence)
    first_running: bool  # Running for the first time (the status had no startTime yet)
    training_job_created: float | None  # set once: the training Job's creationTimestamp when first seen


@dataclass
class _TrackedJob:
    phase: str
    since: float
    gpus: int
    running_since: float | None = None


class Fleet:
    """Per-job state for the gauges, and GPU-seconds, which grow while a job is Running.

    A job first seen Running by this process counts from the later of its start and this
    process's start, so a restarted operator does not count the time before it again.
    """

    def __init__(self, clock: Callable[[], float]) -> None:
        self._clock = clock
        self._started = clock()
        self._jobs: dict[tuple[str, str], _TrackedJob] = {}
        self._finished_gpu_seconds: defaultdict[str, float] = defaultdict(float)
        self._lock = threading.Lock()

    def update(self, seen: Observation, now: float) -> None:
        key = (seen.namespace, seen.name)
        with self._lock:
            tracked = self._jobs.get(key)
            if tracked is not None and tracked.phase == seen.phase:
                if tracked.gpus != seen.gpus and tracked.running_since is not None:
                    # Still Running with another count (the training pod ended and the promotion is
                    # being verified): the time so far at the old count, from now at the new one.
                    self._stop_gpu_clock(seen.namespace, tracked, now)
                    tracked.running_since = now
                tracked.gpus = seen.gpus
                return
            if tracked is not None:
                self._stop_gpu_clock(seen.namespace, tracked, now)
            changed_now = seen.previous_phase != seen.phase or tracked is not None
            since = now if changed_now else (seen.phase_entered or now)
            tracked = _TrackedJob(phase=seen.phase, since=min(since, now), gpus=seen.gpus)
            if seen.phase == Phase.RUNNING:
                tracked.running_since = max(tracked.since, self._started)
            self._jobs[key] = tracked

    def forget(self, namespace: str, name: str) -> None:
        with self._lock:
            tracked = self._jobs.pop((namespace, name), None)
            if tracked is not None:
                self._stop_gpu_clock(namespace, tracked, self._clock())

    def _stop_gpu_clock(self, namespace: str, tracked: _TrackedJob, now: float) -> None:
        if tracked.running_since is not None:
            self._finished_gpu_seconds[namespace] += tracked.gpus * max(0.0, now - tracked.running_since)
            tracked.running_since = None

    def families(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        now = self._clock()
        with self._lock:
            jobs = dict(self._jobs)
            gpu_seconds = dict(self._finished_gpu_seconds)
        by_phase: defaultdict[tuple[str, str], int] = defaultdict(int)
        in_use: defaultdict[str, int] = defaultdict(int)
        since = GaugeMetricFamily(
            "kubetune_finetunejob_phase_timestamp_seconds",
            "Unix time at which an active FineTuneJob entered its current phase (label phase); "
            "one series per active job.",
            labels=(NAMESPACE_LABEL, FINETUNEJOB_LABEL, "phase"),
        )
        held = GaugeMetricFamily(
            "kubetune_finetunejob_gpus_in_use",
            "GPUs an active FineTuneJob holds now (its request while Running, else 0); one series per active job.",
            labels=(NAMESPACE_LABEL, FINETUNEJOB_LABEL),
        )
        for (namespace, name), job in sorted(jobs.items()):
            by_phase[(namespace, job.phase)] += 1
            gpu_seconds.setdefault(namespace, 0.0)
            holding = job.gpus if job.running_since is not None else 0
            if job.running_since is not None:
                in_use[namespace] += job.gpus
                gpu_seconds[namespace] += job.gpus * max(0.0, now - job.running_since)
            if job.phase in ACTIVE_PHASES:
                since.add_metric((namespace, name, job.phase), job.since)
                held.add_metric((namespace, name), holding)
        phases = GaugeMetricFamily(
            "kubetune_finetunejobs", "FineTuneJobs by namespace and phase.", labels=(NAMESPACE_LABEL, "phase")
        )
        for namespace in sorted(gpu_seconds):  # every namespace seen, every phase: absent is not 0 in PromQL
            for phase in Phase:
                phases.add_metric((namespace, str(phase)), by_phase.get((namespace, str(phase)), 0))
        gpus = GaugeMetricFamily(
            "kubetune_gpus_in_use", "GPUs requested by Running FineTuneJobs.", labels=(NAMESPACE_LABEL,)
        )
        used = CounterMetricFamily(
            "kubetune_gpu_seconds",
            "GPU-seconds used by FineTuneJobs while Running (divide by 3600 for GPU-hours).",
            labels=(NAMESPACE_LABEL,),
        )
        for namespace in sorted(gpu_seconds):
            gpus.add_metric((namespace,), in_use.get(namespace, 0))
            used.add_metric((namespace,), gpu_seconds[namespace])
        yield from (phases, since, held, gpus, used)


def figure(value: Any, *, minimum: float = -MAX_FIGURE) -> float | None:
    """``value`` as a number worth exporting, else None: JSON numbers only (not booleans, strings or
    objects), finite, within ``[minimum, MAX_FIGURE]``."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    try:
        number = float(value)
    except OverflowError:  # an integer beyond any float
        return None
    if not math.isfinite(number) or not minimum <= number <= MAX_FIGURE:
        return None
    return number


@dataclass(frozen=True)
class TrainerFigures:
    """A trainer's latest figures as its FineTuneJob's status holds them (final once it finished)."""

    train_loss: float | None = None
    eval_loss: float | None = None
    tokens_per_second: float | None = None
    evaluation: tuple[tuple[str, str, float], ...] = ()  # (model, metric, value), known names only
    quality_gate_passed: bool | None = None  # the operator's QualityGatePassed condition

    @classmethod
    def from_status(cls, status: Any) -> TrainerFigures:
        """Whatever the status holds, valid or not: what is not a known figure is left out."""
        status = status if isinstance(status, Mapping) else {}
        progress, result = (status.get(key) for key in ("progress", "result"))
        progress = progress if isinstance(progress, Mapping) else {}
        result = result if isinstance(result, Mapping) else {}
        reported = result.get("metrics")
        evaluation = []
        for key, value in reported.items() if isinstance(reported, Mapping) else ():
            model, _, metric = str(key).partition(".")
            number = figure(value)
            if model in RESULT_MODELS and metric in RESULT_METRICS and number is not None:
                evaluation.append((model, metric, number))
        return cls(
            train_loss=figure(progress.get("trainLoss"), minimum=0.0),
            eval_loss=figure(progress.get("evalLoss"), minimum=0.0),
            tokens_per_second=figure(progress.get("tokensPerSecond"), minimum=0.0),
            evaluation=tuple(sorted(evaluation)),
            quality_gate_passed=_gate(status.get("conditions")),
        )


def _gate(conditions: Any) -> bool | None:
    """The operator's own verdict on the quality gate (its condition), not the trainer's claim."""
    for condition in conditions if isinstance(conditions, list) else ():
        if isinstance(condition, Mapping) and condition.get("type") == QUALITY_GATE_CONDITION:
            return {"True": True, "False": False}.get(str(condition.get("status")))
    return None


class TrainerResults(Collector):
    """The trainers' figures, one entry per FineTuneJob, keyed by its metadata's namespace and name."""

    def __init__(self) -> None:
        self._jobs: dict[tuple[str, str], TrainerFigures] = {}
        self._lock = threading.Lock()

    def update(self, body: Mapping[str, Any]) -> None:
        """Record what a FineTuneJob's status says now (a watch event's object, or a read)."""
        meta = body.get("metadata") if isinstance(body, Mapping) else None
        if not isinstance(meta, Mapping) or not meta.get("namespace") or not meta.get("name"):
            return
        namespace, name = str(meta["namespace"]), str(meta["name"])
        if meta.get("deletionTimestamp"):
            self.forget(namespace, name)
            return
        figures = TrainerFigures.from_status(body.get("status"))
        with self._lock:
            if figures == TrainerFigures():
                self._jobs.pop((namespace, name), None)
            else:
                self._jobs[(namespace, name)] = figures

    def forget(self, namespace: str, name: str) -> None:
        with self._lock:
            self._jobs.pop((namespace, name), None)

    def collect(self) -> Iterator[GaugeMetricFamily]:
        with self._lock:
            jobs = sorted(self._jobs.items())
        job_labels = (NAMESPACE_LABEL, FINETUNEJOB_LABEL)
        train_loss = GaugeMetricFamily(
            "kubetune_finetunejob_train_loss",
            "Training loss the trainer last wrote into the FineTuneJob status (its final one once finished).",
            labels=job_labels,
        )
        eval_loss = GaugeMetricFamily(
            "kubetune_finetunejob_eval_loss",
            "Validation loss the trainer last wrote into the FineTuneJob status (its final one once finished).",
            labels=job_labels,
        )
        rate = GaugeMetricFamily(
            "kubetune_finetunejob_tokens_per_second",
            "Input tokens per second (padding excluded) the trainer last wrote into the FineTuneJob status.",
            labels=job_labels,
        )
        evaluation = GaugeMetricFamily(
            "kubetune_finetunejob_eval_metric",
            "The trainer's evaluation in the FineTuneJob status' result: model=base|tuned, metric=accuracy, ...",
            labels=(*job_labels, "model", "metric"),
        )
        gate = GaugeMetricFamily(
            "kubetune_finetunejob_quality_gate_passed",
            "1 if the FineTuneJob's QualityGatePassed condition is True (promoted), 0 if False.",
            labels=job_labels,
        )
        for (namespace, name), figures in jobs:
            job = (namespace, name)
            for family, number in (
                (train_loss, figures.train_loss),
                (eval_loss, figures.eval_loss),
                (rate, figures.tokens_per_second),
            ):
                if number is not None:
                    family.add_metric(job, number)
            for model, metric, number in figures.evaluation:
                evaluation.add_metric((*job, model, metric), number)
            if figures.quality_gate_passed is not None:
                gate.add_metric(job, 1.0 if figures.quality_gate_passed else 0.0)
        yield from (train_loss, eval_loss, rate, evaluation, gate)


class MonitorFigures(Collector):
    """Each DriftMonitor's status as series, keyed by its metadata's namespace and name."""

    def __init__(self) -> None:
        self._monitors: dict[tuple[str, str], DriftMonitorStatus] = {}
        self._lock = threading.Lock()

    def update(self, body: Mapping[str, Any]) -> None:
        meta = body.get("metadata") if isinstance(body, Mapping) else None
        if not isinstance(meta, Mapping) or not meta.get("namespace") or not meta.get("name"):
            return
        raw = body.get("status") or {}
        known = {field.alias or name for name, field in DriftMonitorStatus.model_fields.items()}
        try:
            status = DriftMonitorStatus.model_validate({k: v for k, v in raw.items() if k in known})
        except ValueError:
            return
        with self._lock:
            self._monitors[(str(meta["namespace"]), str(meta["name"]))] = status

    def forget(self, namespace: str, name: str) -> None:
        with self._lock:
            self._monitors.pop((namespace, name), None)

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        with self._lock:
            monitors = sorted(self._monitors.items())
        labels = (NAMESPACE_LABEL, DRIFTMONITOR_LABEL)
        checks = CounterMetricFamily(
            "kubetune_driftmonitor_checks", "Drift checks the DriftMonitor has decided.", labels=labels
        )
        retrainings = CounterMetricFamily(
            "kubetune_driftmonitor_retrainings", "Retraining FineTuneJobs the DriftMonitor started.", labels=labels
        )
        promotions = CounterMetricFamily(
            "kubetune_driftmonitor_promotions",
            "Challengers the DriftMonitor compared with the champion, by outcome (Promoted, NotPromoted).",
            labels=(*labels, "outcome"),
        )
        detected = GaugeMetricFamily(
            "kubetune_driftmonitor_drift_detected",
            "1 while the DriftMonitor's DriftDetected condition is True (drift confirmed by persistence), else 0.",
            labels=labels,
        )
        consecutive = GaugeMetricFamily(
            "kubetune_driftmonitor_consecutive_drifted_windows",
            "Drifted checks in a row against the channel's current version.",
            labels=labels,
        )
        p_values = GaugeMetricFamily(
            "kubetune_driftmonitor_p_value",
            "Holm-adjusted p-value of each method in the last decided check (method=embeddings.mmd, ...).",
            labels=(*labels, "method"),
        )
        last = GaugeMetricFamily(
            "kubetune_driftmonitor_last_check_timestamp_seconds",
            "When the DriftMonitor's last check was decided (Unix time).",
            labels=labels,
        )
        for (namespace, name), status in monitors:
            key = (namespace, name)
            checks.add_metric(key, float(status.checks or 0))
            retrainings.add_metric(key, float(len(status.retrainings or [])))
            for outcome in ("Promoted", "NotPromoted"):
                decided = sum(1 for r in status.retrainings or [] if r.outcome == outcome)
                promotions.add_metric((*key, outcome), float(decided))
            drift = next((c for c in status.conditions or [] if c.type == "DriftDetected"), None)
            detected.add_metric(key, 1.0 if drift is not None and drift.status == "True" else 0.0)
            consecutive.add_metric(key, float(status.consecutive_drifted or 0))
            for method in status.methods or []:
                if (number := figure(method.adjusted_p_value, minimum=0.0)) is not None:
                    p_values.add_metric((*key, method.method), number)
            if (checked := parse_time(status.last_check_time)) is not None:
                last.add_metric(key, checked)
        yield from (checks, retrainings, promotions, detected, consecutive, p_values, last)


class FleetCollector(Collector):
    def __init__(self, fleet: Fleet) -> None:
        self.fleet = fleet

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        return self.fleet.families()


class OperatorMetrics:
    """All operator families on one registry; one instance per operator process."""

    def __init__(self, failure_reasons: tuple[str, ...], clock: Callable[[], float] = time.time) -> None:
        self.registry = CollectorRegistry()
        for standard in (PROCESS_COLLECTOR, PLATFORM_COLLECTOR, GC_COLLECTOR):
            self.registry.register(standard)
        self.clock = clock
        self.failure_reasons = failure_reasons
        self.fleet = Fleet(clock)
        self.registry.register(FleetCollector(self.fleet))
        self.trainer_results = TrainerResults()
        self.registry.register(self.trainer_results)
        self.monitors = MonitorFigures()
        self.registry.register(self.monitors)
        labels = (NAMESPACE_LABEL,)
        self.transitions = Counter(
            "kubetune_finetunejob_phase_transitions",
            "FineTuneJob phase changes.",
            (*labels, "from_phase", "to_phase"),
            registry=self.registry,
        )
        self.failures = Counter(
            "kubetune_finetunejob_failures",
            "FineTuneJobs that failed, by the reason of their Failed condition.",
            (*labels, "reason"),
            registry=self.registry,
        )
        self.reconcile_duration = Histogram(
            "kubetune_reconcile_duration_seconds",
            "Time to reconcile one FineTuneJob.",
            buckets=RECONCILE_BUCKETS,
            registry=self.registry,
        )
        self.reconcile_errors = Counter(
            "kubetune_reconcile_errors",
            "Reconciles that raised, by exception type.",
            ("reason",),
            registry=self.registry,
        )
        self.job_creation_delay = Histogram(
            "kubetune_finetunejob_job_creation_delay_seconds",
            "From FineTuneJob creation to its training Job's creation (validation and pre-flight).",
            labels,
            buckets=WAIT_BUCKETS,
            registry=self.registry,
        )
        self.queue_time = Histogram(
            "kubetune_finetunejob_queue_seconds",
            "From FineTuneJob creation to its trainer first running (validation, pre-flight, queue, scheduling).",
            labels,
            buckets=WAIT_BUCKETS,
            registry=self.registry,
        )
        self.duration = Histogram(
            "kubetune_finetunejob_duration_seconds",
            "From FineTuneJob creation to Succeeded or Failed (label outcome).",
            (*labels, "outcome"),
            buckets=RUN_BUCKETS,
            registry=self.registry,
        )
        Info("kubetune_build", "kubetune operator build information.", registry=self.registry).info(
            {"version": kubetune.api.__version__, "python_version": platform.python_version()}
        )
        self._namespaces: set[str] = set()
        self._lock = threading.Lock()

    def observe(self, seen: Observation) -> None:
        now = self.clock()
        self._first_sight(seen.namespace)
        if seen.previous_phase != seen.phase:
            self.transitions.labels(seen.namespace, seen.previous_phase or "New", seen.phase).inc()
            if seen.phase == Phase.FAILED:
                self.failures.labels(seen.namespace, seen.reason).inc()
            if seen.phase in TERMINAL_PHASES and seen.created is not None:
                self.duration.labels(seen.namespace, seen.phase).observe(max(0.0, now - seen.created))
        if seen.first_running and seen.created is not None:
            self.queue_time.labels(seen.namespace).observe(max(0.0, now - seen.created))
        if seen.training_job_created is not None and seen.created is not None:
            self.job_creation_delay.labels(seen.namespace).observe(max(0.0, seen.training_job_created - seen.created))
        self.fleet.update(seen, now)

    def _first_sight(self, namespace: str) -> None:
        """Failure counters start at 0 for every reason, so the first failure is an increase."""
        with self._lock:
            if namespace in self._namespaces:
                return
            self._namespaces.add(namespace)
        for reason in self.failure_reasons:
            self.failures.labels(namespace, reason)

    def forget(self, namespace: str, name: str) -> None:
        self.fleet.forget(namespace, name)
        self.trainer_results.forget(namespace, name)

    def serve(self, port: int) -> Any:
        """Serve ``/metrics`` on ``port`` in a background thread; returns the server to shut down."""
        server, _thread = start_http_server(port, registry=self.registry)
        return server
