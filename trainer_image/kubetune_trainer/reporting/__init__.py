"""Where the trainer reports what it is doing: console, FineTuneJob status, Prometheus."""

from __future__ import annotations

import os
from typing import Protocol

from kubetune.api.v1alpha1 import FineTuneJob, PreflightReport, Progress, ResolvedTraining, TrainerResult


class Reporter(Protocol):
    def stage(self, name: str) -> None: ...
    def progress(self, progress: Progress) -> None: ...
    def preflight(self, report: PreflightReport) -> None: ...
    def resolved(self, resolved: ResolvedTraining) -> None: ...
    def result(self, result: TrainerResult) -> None: ...
    def close(self) -> None: ...


class Reporters:
    """Fans every report out to each reporter."""

    def __init__(self, reporters: list[Reporter]) -> None:
        self.reporters = reporters

    def stage(self, name: str) -> None:
        for r in self.reporters:
            r.stage(name)

    def progress(self, progress: Progress) -> None:
        for r in self.reporters:
            r.progress(progress)

    def preflight(self, report: PreflightReport) -> None:
        for r in self.reporters:
            r.preflight(report)

    def resolved(self, resolved: ResolvedTraining) -> None:
        for r in self.reporters:
            r.resolved(resolved)

    def result(self, result: TrainerResult) -> None:
        for r in self.reporters:
            r.result(result)

    def close(self) -> None:
        for r in self.reporters:
            r.close()


def build_reporters(job: FineTuneJob, *, console: bool) -> Reporters:
    """The reporters this process should use, chosen from the environment.

    ``KUBETUNE_REPORT_STATUS=true`` (set by the operator) patches the job's status;
    ``KUBETUNE_METRICS_PORT`` serves Prometheus metrics; the console is for people.
    """
    reporters: list[Reporter] = []
    if console:
        from kubetune_trainer.reporting.console import ConsoleReporter

        reporters.append(ConsoleReporter())
    else:
        from kubetune_trainer.reporting.console import LogReporter

        reporters.append(LogReporter())
    if os.environ.get("KUBETUNE_REPORT_STATUS", "").lower() == "true" and int(os.environ.get("RANK", "0")) == 0:
        from kubetune_trainer.reporting.kubernetes import KubernetesStatusReporter

        reporters.append(KubernetesStatusReporter.from_environment())
    port = os.environ.get("KUBETUNE_METRICS_PORT")
    if port and int(os.environ.get("RANK", "0")) == 0:
        from kubetune_trainer.reporting.prometheus import PrometheusReporter

        namespace = os.environ.get("KUBETUNE_JOB_NAMESPACE", "local")
        reporters.append(PrometheusReporter(namespace, str(job.metadata.get("name", "job")), port=int(port)))
    return Reporters(reporters)
