"""Where the trainer reports what it is doing: console, FineTuneJob status, Prometheus.

Stages, progress, the plan and the result use the API's status models. The training loop's
finer numbers (learning rate, throughput, memory), which have no place in the FineTuneJob
status, travel as :class:`TrainingMetrics`. Each reporter overrides what it shows.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

from kubetune.api.v1alpha1 import (
    FineTuneJob,
    MlflowTrackingSpec,
    PreflightReport,
    Progress,
    ResolvedTraining,
    TrainerResult,
    WandbTrackingSpec,
)
from kubetune_trainer.environment import TrainerEnvironment

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainingMetrics:
    """The loop's numbers at one logging step (rates over the window since the previous one)."""

    learning_rate: float | None
    tokens_per_second: float  # input tokens, padding excluded
    trained_tokens_per_second: float  # tokens that carry loss (the answers)
    tokens: int  # input tokens trained on by this process so far, padding excluded
    trained_tokens: int
    padding_ratio: float  # padding share of the positions in the window's batches
    host_memory_peak_bytes: int  # the process's peak resident memory
    accelerator_memory_peak_bytes: int | None  # GPU memory PyTorch's allocator reserved at peak; None on CPU

    def tracked(self) -> dict[str, float]:
        """The numbers the tracking reporters (MLflow, W&B) record at each logging step."""
        values = {
            "tokens_per_second": self.tokens_per_second,
            "trained_tokens_per_second": self.trained_tokens_per_second,
            "padding_ratio": self.padding_ratio,
            "host_memory_peak_bytes": float(self.host_memory_peak_bytes),
        }
        if self.learning_rate is not None:
            values["learning_rate"] = self.learning_rate
        return values


class Reporter:
    """Every report is optional: the base class ignores them all."""

    def stage(self, name: str) -> None:
        """The pipeline entered stage ``name``."""

    def progress(self, progress: Progress) -> None:
        """Training moved (step, epoch, losses)."""

    def training_metrics(self, metrics: TrainingMetrics) -> None:
        """Throughput, learning rate and memory at a logging step."""

    def checkpoint_uploaded(self, step: int) -> None:
        """A checkpoint of ``step`` is safely in storage."""

    def preflight(self, report: PreflightReport) -> None:
        """The pre-flight verdict."""

    def resolved(self, resolved: ResolvedTraining) -> None:
        """The values training will use, ``auto`` ones resolved."""

    def result(self, result: TrainerResult) -> None:
        """The run is published."""

    def close(self, exit_code: int) -> None:
        """The process is about to exit with ``exit_code``."""


class Reporters(Reporter):
    """Fans every report out to each reporter."""

    def __init__(self, reporters: list[Reporter]) -> None:
        self.reporters = reporters

    def stage(self, name: str) -> None:
        for reporter in self.reporters:
            reporter.stage(name)

    def progress(self, progress: Progress) -> None:
        for reporter in self.reporters:
            reporter.progress(progress)

    def training_metrics(self, metrics: TrainingMetrics) -> None:
        for reporter in self.reporters:
            reporter.training_metrics(metrics)

    def checkpoint_uploaded(self, step: int) -> None:
        for reporter in self.reporters:
            reporter.checkpoint_uploaded(step)

    def preflight(self, report: PreflightReport) -> None:
        for reporter in self.reporters:
            reporter.preflight(report)

    def resolved(self, resolved: ResolvedTraining) -> None:
        for reporter in self.reporters:
            reporter.resolved(resolved)

    def result(self, result: TrainerResult) -> None:
        for reporter in self.reporters:
            reporter.result(result)

    def close(self, exit_code: int) -> None:
        for reporter in self.reporters:
            reporter.close(exit_code)


def build_reporters(job: FineTuneJob, *, console: bool, environment: TrainerEnvironment) -> Reporters:
    """The reporters this process should use, chosen from the environment.

    ``KUBETUNE_REPORT_STATUS=true`` (set by the operator) patches the job's status;
    ``KUBETUNE_METRICS_PORT`` serves Prometheus metrics and ``KUBETUNE_PUSHGATEWAY_URL`` pushes
    them; the console is for people. Under torchrun only rank 0 reports to Kubernetes and
    Prometheus (one writer per job).
    """
    reporters: list[Reporter] = []
    # In a pod the operator names the job; locally the manifest does.
    namespace = environment.job_namespace or str(job.metadata.get("namespace") or "default")
    name = environment.job_name or str(job.metadata.get("name") or "finetunejob")
    if console:
        from kubetune_trainer.reporting.console import ConsoleReporter

        reporters.append(ConsoleReporter())
    else:
        from kubetune_trainer.reporting.console import LogReporter

        reporters.append(LogReporter())
    if (environment.metrics_port is not None or environment.pushgateway_url) and environment.is_main_process:
        from kubetune_trainer.reporting.prometheus import PrometheusReporter

        reporters.append(
            PrometheusReporter(
                namespace,
                name,
                port=environment.metrics_port,
                pushgateway=environment.pushgateway_url,
                push_interval=environment.push_interval_seconds,
            )
        )
    tracking = job.spec.tracking.mlflow if job.spec.tracking else None
    if tracking is not None and environment.is_main_process:
        reporters += _mlflow_reporter(tracking, environment, namespace=namespace, name=name)
    wandb = job.spec.tracking.wandb if job.spec.tracking else None
    if wandb is not None and environment.is_main_process:
        reporters += _wandb_reporter(wandb, environment, namespace=namespace, name=name)
    if environment.report_status and environment.is_main_process:
        from kubetune_trainer.reporting.kubernetes import KubernetesStatusReporter

        # Last: its first report and its result raise when the status cannot be written, and by
        # then every other reporter has had that report (Prometheus keeps the evaluation metrics).
        reporters.append(KubernetesStatusReporter.from_environment(environment))
    return Reporters(reporters)


def _mlflow_reporter(
    tracking: MlflowTrackingSpec, environment: TrainerEnvironment, *, namespace: str, name: str
) -> list[Reporter]:
    """The MLflow reporter, or none and a warning why: tracking is never the job's verdict, a login the
    Secret cannot give included (the operator checked the Secret; its keys are read here)."""
    from kubetune_trainer.errors import ConfigurationError
    from kubetune_trainer.reporting.mlflow import MlflowClient, MlflowReporter, read_login

    if environment.mlflow_tracking_uri is None:
        log.warning("spec.tracking.mlflow: MLFLOW_TRACKING_URI is not set; this run is not reported to MLflow")
        return []
    # The job's Secret as the operator mounts it; locally, MLflow's own login variables.
    folder = environment.mlflow_credentials_dir
    try:
        login = read_login(folder, tracking) if folder is not None else environment.mlflow_login
    except ConfigurationError as err:
        log.warning("%s; this run is not reported to MLflow", err)
        return []
    client = MlflowClient(environment.mlflow_tracking_uri, login=login)
    return [MlflowReporter(client, tracking, namespace=namespace, name=name)]


def _wandb_reporter(
    tracking: WandbTrackingSpec, environment: TrainerEnvironment, *, namespace: str, name: str
) -> list[Reporter]:
    """The W&B reporter, or none and a warning why (tracking is never the job's verdict). In a pod the
    operator sets the server and mounts the key; ``kubetune run`` uses W&B's own settings and login."""
    from kubetune_trainer.errors import ConfigurationError
    from kubetune_trainer.reporting.wandb import WandbReporter
    from kubetune_trainer.secrets import read_mounted_key

    if environment.job_name and environment.wandb_base_url is None:
        # A pod the operator gave no server (the pre-flight, which is no run): never W&B's default cloud.
        log.warning("spec.tracking.wandb: WANDB_BASE_URL is not set; this run is not reported to W&B")
        return []
    key = None
    if environment.wandb_key_file is not None:
        try:
            key = read_mounted_key(
                environment.wandb_key_file, field="spec.tracking.wandb.apiKeySecret", what="the API key"
            )
        except ConfigurationError as err:
            log.warning("%s; this run is not reported to W&B", err)
            return []
    # In a pod, the job's scratch (the root filesystem is read-only); with kubetune run, W&B's own
    # WANDB_DIR or the current folder, as wandb does.
    folder = environment.scratch if environment.job_name else Path(os.environ.get("WANDB_DIR") or ".")
    return [
        WandbReporter(
            tracking, namespace=namespace, name=name, base_url=environment.wandb_base_url, api_key=key, folder=folder
        )
    ]
