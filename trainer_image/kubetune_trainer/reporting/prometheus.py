"""Trainer metrics for Prometheus, labelled with the job's namespace and name."""

from __future__ import annotations

import time

from prometheus_client import CollectorRegistry, Counter, Gauge, start_http_server

from kubetune.api.v1alpha1 import PreflightReport, Progress, ResolvedTraining, TrainerResult

LABELS = ("namespace", "job")


class PrometheusReporter:
    def __init__(
        self, namespace: str, job: str, *, port: int | None = None, registry: CollectorRegistry | None = None
    ) -> None:
        self.registry = registry or CollectorRegistry()
        self.labels = {"namespace": namespace, "job": job}

        def gauge(name: str, doc: str, extra: tuple[str, ...] = ()) -> Gauge:
            return Gauge(f"kubetune_trainer_{name}", doc, (*LABELS, *extra), registry=self.registry)

        self.train_loss = gauge("train_loss", "Latest training loss.")
        self.eval_loss = gauge("eval_loss", "Latest validation loss.")
        self.step = gauge("step", "Optimizer steps done.")
        self.total_steps = gauge("total_steps", "Optimizer steps planned.")
        self.epoch = gauge("epoch", "Epochs done (fractional).")
        self.tokens_per_second = gauge("tokens_per_second", "Training throughput.", ("kind",))
        self.stage_info = gauge("stage", "1 for the stage the trainer is in.", ("stage",))
        self.eval_metric = gauge("eval_metric", "Final evaluation metric.", ("model", "metric"))
        self.checkpoints = Counter(
            "kubetune_trainer_checkpoints", "Checkpoints uploaded.", LABELS, registry=self.registry
        )
        self.last_checkpoint = gauge("last_checkpoint_timestamp_seconds", "Unix time of the last uploaded checkpoint.")
        self._stage: str | None = None
        if port is not None:
            start_http_server(port, registry=self.registry)

    def stage(self, name: str) -> None:
        if self._stage is not None:
            self.stage_info.labels(**self.labels, stage=self._stage).set(0)
        self._stage = name
        self.stage_info.labels(**self.labels, stage=name).set(1)

    def progress(self, progress: Progress) -> None:
        for gauge, value in (
            (self.train_loss, progress.train_loss),
            (self.eval_loss, progress.eval_loss),
            (self.step, progress.step),
            (self.total_steps, progress.total_steps),
            (self.epoch, progress.epoch),
        ):
            if value is not None:
                gauge.labels(**self.labels).set(value)
        if progress.tokens_per_second is not None:
            self.tokens_per_second.labels(**self.labels, kind="all").set(progress.tokens_per_second)

    def checkpoint_uploaded(self) -> None:
        self.checkpoints.labels(**self.labels).inc()
        self.last_checkpoint.labels(**self.labels).set(time.time())

    def preflight(self, report: PreflightReport) -> None:
        pass

    def resolved(self, resolved: ResolvedTraining) -> None:
        pass

    def result(self, result: TrainerResult) -> None:
        for key, value in (result.metrics or {}).items():
            model, _, metric = key.partition(".")
            if metric:
                self.eval_metric.labels(**self.labels, model=model, metric=metric).set(value)

    def close(self) -> None:
        pass
