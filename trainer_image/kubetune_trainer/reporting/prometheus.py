"""Trainer metrics for Prometheus, labelled with the job's namespace and FineTuneJob name.

Two ways out, both optional (docs/metrics.md says which to use when):

- served on ``port`` at ``/metrics`` while the process lives (a PodMonitor scrapes it);
- pushed to a Pushgateway every ``push_interval`` seconds, at every stage and once more on
  exit, so the final values (evaluation, exit code) outlive the pod. The group is keyed by
  job, namespace and FineTuneJob, so a retried pod replaces its predecessor's values.

Metrics never stop training: a port in use or an unreachable Pushgateway is a log line.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any
from urllib.error import URLError

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Info,
    disable_created_metrics,
    push_to_gateway,
    start_http_server,
)

import kubetune.api
from kubetune.api.contract import (
    EXIT_CODE_MEANINGS,
    FINETUNEJOB_LABEL,
    NAMESPACE_LABEL,
    PUSHGATEWAY_JOB,
    pushgateway_grouping_key,
)
from kubetune.api.v1alpha1 import Progress, TrainerResult
from kubetune_trainer.reporting import Reporter, TrainingMetrics

log = logging.getLogger(__name__)
PREFIX = "kubetune_trainer_"
JOB_LABELS = (NAMESPACE_LABEL, FINETUNEJOB_LABEL)
PUSH_TIMEOUT_SECONDS = 5.0

# No *_created series: nothing here queries them, and they double the number of series.
disable_created_metrics()


class Pusher:
    """Pushes a registry to a Pushgateway group, periodically and on demand."""

    def __init__(self, url: str, grouping_key: dict[str, str], registry: CollectorRegistry, interval: float) -> None:
        self.url = url
        self.grouping_key = grouping_key
        self.registry = registry
        self.interval = interval
        self.pushes = 0
        self._failing = False
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="kubetune-pushgateway", daemon=True)
        self._thread.start()

    def push(self) -> None:
        with self._lock:
            try:
                push_to_gateway(
                    self.url,
                    job=PUSHGATEWAY_JOB,
                    registry=self.registry,
                    grouping_key=self.grouping_key,
                    timeout=PUSH_TIMEOUT_SECONDS,
                )
            except (URLError, OSError, ValueError) as err:
                if not self._failing:  # once per outage, not once per push
                    log.warning("could not push metrics to the Pushgateway at %s: %s", self.url, err)
                self._failing = True
                return
            if self._failing:
                log.info("pushing metrics to %s again", self.url)
            self._failing = False
            self.pushes += 1

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            self.push()

    def close(self) -> None:
        """Stop the periodic pushes and push the final values."""
        self._stop.set()
        self._thread.join(PUSH_TIMEOUT_SECONDS + 1)
        self.push()


class PrometheusReporter(Reporter):
    def __init__(
        self,
        namespace: str,
        finetunejob: str,
        *,
        port: int | None = None,
        pushgateway: str | None = None,
        push_interval: float = 15.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.registry = CollectorRegistry()
        self.clock = clock
        self.job = {NAMESPACE_LABEL: namespace, FINETUNEJOB_LABEL: finetunejob}
        registry = self.registry

        def gauge(name: str, doc: str, *extra: str) -> Gauge:
            return Gauge(PREFIX + name, doc, (*JOB_LABELS, *extra), registry=registry)

        def counter(name: str, doc: str, *extra: str) -> Counter:
            return Counter(PREFIX + name, doc, (*JOB_LABELS, *extra), registry=registry)

        self.stages = gauge("stage", "1 for the stage the trainer is in, 0 for those it left.", "stage")
        self.step = gauge("step", "Optimizer steps done.")
        self.total_steps = gauge("total_steps", "Optimizer steps planned.")
        self.epoch = gauge("epoch", "Epochs done (fractional).")
        self.train_loss = gauge("train_loss", "Training loss at the latest logging step.")
        self.eval_loss = gauge("eval_loss", "Validation loss at the latest evaluation.")
        self.learning_rate = gauge("learning_rate", "Learning rate at the latest optimizer step.")
        self.tokens_per_second = gauge(
            "tokens_per_second",
            "Training throughput over the latest logging window: kind=all (input tokens, padding excluded) "
            "or kind=trained (tokens that carry loss).",
            "kind",
        )
        self.tokens = counter(
            "tokens", "Tokens trained on: kind=all (input, padding excluded) or kind=trained.", "kind"
        )
        self.padding_ratio = gauge("padding_ratio", "Padding share of the batch positions in the latest window.")
        self.memory_peak = gauge(
            "memory_peak_bytes",
            "Peak memory of the training process: device=host (resident) or device=accelerator (GPU memory reserved).",
            "device",
        )
        self.checkpoints = counter("checkpoints", "Checkpoints uploaded to storage.")
        self.last_checkpoint = gauge(
            "last_checkpoint_timestamp_seconds", "Unix time of the latest uploaded checkpoint."
        )
        self.last_progress = gauge(
            "last_progress_timestamp_seconds", "Unix time of the trainer's latest report (a stage, a step)."
        )
        self.eval_metric = gauge(
            "eval_metric",
            "Evaluation on the held-out test split: model=base|tuned, metric=accuracy, ...",
            "model",
            "metric",
        )
        self.privacy_epsilon = gauge(
            "privacy_epsilon",
            "spec.privacy: epsilon (at the run's delta) the training spent (kind=spent) and its budget (kind=target).",
            "kind",
        )
        self.gate_passed = gauge("quality_gate_passed", "1 if the tuned model met the quality gate (promoted), else 0.")
        self.exit_code = gauge(
            "exit_code",
            "The trainer's exit code ("
            + ", ".join(f"{code} {meaning}" for code, meaning in EXIT_CODE_MEANINGS.items())
            + ").",
        )
        Info(PREFIX + "build", "kubetune trainer build information.", JOB_LABELS, registry=registry).labels(
            **self.job
        ).info({"version": kubetune.api.__version__})
        self._stage: str | None = None
        self._counted = {"all": 0, "trained": 0}
        self._server: Any = None
        if port is not None:
            try:
                self._server, _thread = start_http_server(port, registry=registry)
            except OSError as err:
                log.warning("not serving trainer metrics on port %s: %s", port, err)
        self._pusher = (
            Pusher(pushgateway, pushgateway_grouping_key(namespace, finetunejob), registry, push_interval)
            if pushgateway
            else None
        )

    def _touch(self, now: float | None = None) -> None:
        self.last_progress.labels(**self.job).set(self.clock() if now is None else now)

    def _push_now(self) -> None:
        if self._pusher is not None:
            self._pusher.push()

    def stage(self, name: str) -> None:
        if self._stage is not None:
            self.stages.labels(**self.job, stage=self._stage).set(0)
        self._stage = name
        self.stages.labels(**self.job, stage=name).set(1)
        self._touch()
        self._push_now()

    def progress(self, progress: Progress) -> None:
        for family, value in (
            (self.train_loss, progress.train_loss),
            (self.eval_loss, progress.eval_loss),
            (self.step, progress.step),
            (self.total_steps, progress.total_steps),
            (self.epoch, progress.epoch),
        ):
            if value is not None:
                family.labels(**self.job).set(value)
        self._touch()

    def training_metrics(self, metrics: TrainingMetrics) -> None:
        if metrics.learning_rate is not None:
            self.learning_rate.labels(**self.job).set(metrics.learning_rate)
        for kind, rate, total in (
            ("all", metrics.tokens_per_second, metrics.tokens),
            ("trained", metrics.trained_tokens_per_second, metrics.trained_tokens),
        ):
            self.tokens_per_second.labels(**self.job, kind=kind).set(rate)
            self.tokens.labels(**self.job, kind=kind).inc(max(0, total - self._counted[kind]))
            self._counted[kind] = max(total, self._counted[kind])
        self.padding_ratio.labels(**self.job).set(metrics.padding_ratio)
        self.memory_peak.labels(**self.job, device="host").set(metrics.host_memory_peak_bytes)
        if metrics.accelerator_memory_peak_bytes is not None:
            self.memory_peak.labels(**self.job, device="accelerator").set(metrics.accelerator_memory_peak_bytes)
        self._touch()

    def checkpoint_uploaded(self, step: int) -> None:
        now = self.clock()
        self.checkpoints.labels(**self.job).inc()
        self.last_checkpoint.labels(**self.job).set(now)
        self._touch(now)

    def result(self, result: TrainerResult) -> None:
        for key, value in (result.metrics or {}).items():
            model, _, metric = key.partition(".")
            if metric:
                self.eval_metric.labels(**self.job, model=model, metric=metric).set(value)
        if result.privacy is not None:
            self.privacy_epsilon.labels(**self.job, kind="spent").set(result.privacy.epsilon)
            self.privacy_epsilon.labels(**self.job, kind="target").set(result.privacy.target_epsilon)
        if result.promoted is not None:
            self.gate_passed.labels(**self.job).set(1 if result.promoted else 0)
        self._touch()
        self._push_now()

    def close(self, exit_code: int) -> None:
        if self._stage is not None:
            self.stages.labels(**self.job, stage=self._stage).set(0)
            self._stage = None
        self.exit_code.labels(**self.job).set(exit_code)
        if self._pusher is not None:
            self._pusher.close()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
