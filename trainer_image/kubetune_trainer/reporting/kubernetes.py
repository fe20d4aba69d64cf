"""Patch the trainer's own FineTuneJob status: progress, pre-flight findings, plan, result.

The pod's per-job Role allows get/patch on ``finetunejobs/status`` of this one job and
nothing else, so the trainer writes only the fields it owns (``progress``, ``preflight``,
``resolved``, ``result``); the operator owns phase and conditions. API errors are logged and
never stop training: status is a view, checkpoints and artifacts are the truth.
"""

from __future__ import annotations

import logging
import os
import time
from datetime import UTC, datetime
from typing import Any

from kubetune.api.v1alpha1 import GROUP, PLURAL, VERSION, PreflightReport, Progress, ResolvedTraining, TrainerResult
from kubetune_trainer.reporting import Reporter

log = logging.getLogger(__name__)


class KubernetesStatusReporter(Reporter):
    def __init__(self, api: Any, namespace: str, name: str, *, min_interval: float = 5.0) -> None:
        self.api = api  # kubernetes.client.CustomObjectsApi
        self.namespace = namespace
        self.name = name
        self.min_interval = min_interval
        self._last_progress = 0.0
        self._pending: Progress | None = None

    @classmethod
    def from_environment(cls) -> KubernetesStatusReporter:
        from kubernetes import client, config

        host = os.environ.get("KUBETUNE_KUBE_API")  # tests point this at an emulator
        if host:
            configuration = client.Configuration()
            configuration.host = host
            api_client = client.ApiClient(configuration)
        else:
            try:
                config.load_incluster_config()
            except config.ConfigException:
                config.load_kube_config()
            api_client = client.ApiClient()
        return cls(
            client.CustomObjectsApi(api_client),
            os.environ["KUBETUNE_JOB_NAMESPACE"],
            os.environ["KUBETUNE_JOB_NAME"],
        )

    def _patch(self, status: dict[str, Any]) -> None:
        try:
            self.api.patch_namespaced_custom_object_status(
                GROUP, VERSION, self.namespace, PLURAL, self.name, {"status": status}
            )
        except Exception as err:  # any API failure: log, keep training
            log.warning("could not patch FineTuneJob %s/%s status: %s", self.namespace, self.name, err)

    def stage(self, name: str) -> None:
        self._patch({"progress": {"stage": name, "updatedAt": _now()}})

    def progress(self, progress: Progress) -> None:
        now = time.monotonic()
        final = progress.step is not None and progress.step == progress.total_steps
        if not final and now - self._last_progress < self.min_interval:
            self._pending = progress
            return
        self._last_progress = now
        self._pending = None
        self._patch({"progress": progress.model_copy(update={"updated_at": _now()}).to_manifest()})

    def preflight(self, report: PreflightReport) -> None:
        self._patch({"preflight": report.to_manifest()})

    def resolved(self, resolved: ResolvedTraining) -> None:
        self._patch({"resolved": resolved.to_manifest()})

    def result(self, result: TrainerResult) -> None:
        self._flush()
        self._patch({"result": result.to_manifest()})

    def _flush(self) -> None:
        if self._pending is not None:
            pending, self._pending = self._pending, None
            self._patch({"progress": pending.model_copy(update={"updated_at": _now()}).to_manifest()})

    def close(self, exit_code: int) -> None:
        self._flush()


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
