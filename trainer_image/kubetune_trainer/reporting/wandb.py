"""``spec.tracking.wandb``: the run reported to Weights & Biases through its own client (``wandb``):
the same numbers the MLflow and Prometheus reporters send. The resolved training values are the run's
config, the losses, learning rate and throughput are history by optimizer step, the evaluation and
the published version are the summary, and the run ends with the job's exit code.

The server is the platform's (``WANDB_BASE_URL``, set by the operator from Helm value
``tracking.wandb.host``); the API key is the job's, from an opted-in Secret mounted as a file, never
an environment variable a child process would inherit. ``WANDB_MODE=offline`` (W&B's own setting)
keeps the run in a local folder for ``wandb sync`` later: what the tests read.

Tracking is never the job's verdict: a failure of W&B is one warning and the run goes on without it.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from kubetune.api.v1alpha1 import Progress, ResolvedTraining, TrainerResult, WandbTrackingSpec
from kubetune_trainer.reporting import Reporter, TrainingMetrics

log = logging.getLogger(__name__)


class WandbReporter(Reporter):
    """One W&B run per process that reports (rank 0), started at its first report."""

    def __init__(
        self,
        spec: WandbTrackingSpec,
        *,
        namespace: str,
        name: str,
        base_url: str | None,
        api_key: str | None,
        folder: Path,
    ) -> None:
        self.spec = spec
        self.project = spec.project or f"kubetune-{namespace}"
        self.name = name
        self.namespace = namespace
        self.base_url = base_url
        self.api_key = api_key
        self.folder = folder  # where wandb keeps the run's files (the job's scratch)
        self.run: Any = None
        self.step = 0
        self._failed = False
        self._config_logged = False

    # ------------------------------------------------------------------ reports
    def stage(self, name: str) -> None:
        self._guarded(lambda run: None)  # the run exists from the first stage on

    def resolved(self, resolved: ResolvedTraining) -> None:
        if self._config_logged:  # the pre-flight and the training both resolve; the values are the same
            return
        config = resolved.model_dump(by_alias=True, exclude_none=True, mode="json")
        self._config_logged = True
        self._guarded(lambda run: run.config.update(config, allow_val_change=True))

    def progress(self, progress: Progress) -> None:
        if progress.step is None:
            return
        self.step = progress.step
        values = {"train_loss": progress.train_loss, "eval_loss": progress.eval_loss, "epoch": progress.epoch}
        metrics = {key: value for key, value in values.items() if value is not None}
        if metrics:
            self._guarded(lambda run: run.log(metrics, step=self.step))

    def training_metrics(self, metrics: TrainingMetrics) -> None:
        values = metrics.tracked()
        self._guarded(lambda run: run.log(values, step=self.step))

    def result(self, result: TrainerResult) -> None:
        summary: dict[str, Any] = {f"eval/{key}": value for key, value in (result.metrics or {}).items()}
        summary |= {
            "kubetune/version": result.version or "",
            "kubetune/manifestUri": result.manifest_uri or "",
            "kubetune/promoted": bool(result.promoted),
        }
        self._guarded(lambda run: run.summary.update(summary))

    def close(self, exit_code: int) -> None:
        if self.run is None:
            return
        try:
            self.run.finish(exit_code=exit_code)
        except Exception as err:
            log.warning("spec.tracking.wandb: %s; the W&B run was not finished", _first_line(err))

    # ------------------------------------------------------------------ plumbing
    def _start(self) -> Any:
        import wandb

        settings: dict[str, Any] = {"silent": True, "console": "off"}
        if self.base_url:
            settings["base_url"] = self.base_url
        if self.api_key:
            settings["api_key"] = self.api_key
        self.folder.mkdir(parents=True, exist_ok=True)
        return wandb.init(
            project=self.project,
            entity=self.spec.entity,
            name=self.name,
            group=self.spec.group,
            tags=[f"namespace:{self.namespace}", f"finetunejob:{self.name}"],
            dir=str(self.folder),
            settings=wandb.Settings(**settings),
        )

    def _guarded(self, action: Any) -> None:
        """``action(run)``, the run started first; the first failure is logged and ends the reports."""
        if self._failed:
            return
        try:
            if self.run is None:
                self.run = self._start()
            action(self.run)
        except Exception as err:
            self._failed = True
            log.warning("spec.tracking.wandb: %s; the run goes on without W&B", _first_line(err))


def _first_line(err: BaseException) -> str:
    return (str(err).splitlines() or [type(err).__name__])[0][:500]
