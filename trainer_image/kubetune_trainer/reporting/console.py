"""Progress for people: rich progress bars on a terminal, plain log lines in a pod."""

from __future__ import annotations

import logging
import time

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from kubetune.api.v1alpha1 import (
    PreflightReport,
    ResolvedAdaLoraTraining,
    ResolvedAdapterTraining,
    ResolvedBottleneckTraining,
    ResolvedIa3Training,
    ResolvedOsfTraining,
    ResolvedPrefixTraining,
    ResolvedTraining,
    TrainerResult,
)
from kubetune.api.v1alpha1 import Progress as TrainingProgress
from kubetune_trainer.reporting import Reporter

log = logging.getLogger("kubetune")


def _describe(progress: TrainingProgress) -> str:
    parts = []
    if progress.train_loss is not None:
        parts.append(f"loss {progress.train_loss:.4f}")
    if progress.eval_loss is not None:
        parts.append(f"eval {progress.eval_loss:.4f}")
    if progress.tokens_per_second:
        parts.append(f"{progress.tokens_per_second:.0f} tok/s")
    return "  ".join(parts)


class ConsoleReporter(Reporter):
    def __init__(self, console: Console | None = None) -> None:
        self.console = console or Console(stderr=True)
        self._bar: Progress | None = None
        self._task: TaskID | None = None
        self._stage_started = time.perf_counter()
        self._stage: str | None = None

    def stage(self, name: str) -> None:
        self._finish_bar()
        now = time.perf_counter()
        if self._stage is not None:
            self.console.print(f"[green]✓[/] {self._stage} ({now - self._stage_started:.1f} s)")
        self._stage, self._stage_started = name, now
        self.console.print(f"[bold]▶ {name}[/]")

    def progress(self, progress: TrainingProgress) -> None:
        if progress.total_steps is None or progress.step is None:
            return
        if self._bar is None:
            self._bar = Progress(
                TextColumn("[bold blue]{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[info]}"),
                TimeElapsedColumn(),
                TimeRemainingColumn(),
                console=self.console,
            )
            self._bar.start()
            self._task = self._bar.add_task(progress.stage or "train", total=progress.total_steps, info="")
        assert self._task is not None
        self._bar.update(self._task, completed=progress.step, total=progress.total_steps, info=_describe(progress))

    def preflight(self, report: PreflightReport) -> None:
        mark = "[green]passed[/]" if report.passed else "[red]FAILED[/]"
        self.console.print(f"pre-flight {mark}: {report.message}")

    def resolved(self, resolved: ResolvedTraining) -> None:
        hp = resolved.hyperparameters
        adapter = ""
        if isinstance(resolved, ResolvedAdapterTraining):
            lora = resolved.lora
            adapter = f" ({resolved.adapter} r={lora.r} alpha={lora.alpha}, {lora.scaling} scaling)"
        elif isinstance(resolved, ResolvedAdaLoraTraining):
            ada = resolved.adalora
            adapter = f" (adalora r={ada.initial_rank}->{ada.target_rank} alpha={ada.alpha})"
        elif isinstance(resolved, ResolvedBottleneckTraining):
            adapter = f" (bottleneck of {resolved.bottleneck.size} after {resolved.bottleneck.placement})"
        elif isinstance(resolved, ResolvedPrefixTraining):
            adapter = f" (prefix of {resolved.prefix.virtual_tokens} virtual tokens)"
        elif isinstance(resolved, ResolvedIa3Training):
            adapter = f" (ia3 on {', '.join(resolved.ia3.target_modules)})"
        elif isinstance(resolved, ResolvedOsfTraining):
            osf = resolved.osf
            adapter = f" (osf on {', '.join(osf.target_modules)}, {osf.preserved_fraction:g} of each rank frozen)"
        self.console.print(
            f"plan: {resolved.method}{adapter}, {hp.epochs:g} epochs, lr {hp.learning_rate:g}, "
            f"batch {hp.batch_size}x{hp.gradient_accumulation_steps}, seq {hp.sequence_length}, packing {hp.packing}"
        )

    def result(self, result: TrainerResult) -> None:
        self._finish_bar()
        self.console.print(f"published {result.version} -> {result.manifest_uri} (promoted: {result.promoted})")

    def _finish_bar(self) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar = None
            self._task = None

    def close(self, exit_code: int) -> None:
        self._finish_bar()
        if self._stage is not None:
            self.console.print(f"[green]✓[/] {self._stage} ({time.perf_counter() - self._stage_started:.1f} s)")
            self._stage = None


class LogReporter(Reporter):
    """Plain log lines (pods have no terminal); progress at most every 30 s."""

    def __init__(self, interval: float = 30.0) -> None:
        self.interval = interval
        self._last = 0.0

    def stage(self, name: str) -> None:
        log.info("stage %s", name)

    def progress(self, progress: TrainingProgress) -> None:
        now = time.monotonic()
        if now - self._last >= self.interval or progress.step == progress.total_steps:
            self._last = now
            log.info(
                "step %s/%s epoch %.2f %s",
                progress.step,
                progress.total_steps,
                progress.epoch or 0,
                _describe(progress),
            )

    def preflight(self, report: PreflightReport) -> None:
        log.info("pre-flight %s: %s", "passed" if report.passed else "FAILED", report.message)

    def resolved(self, resolved: ResolvedTraining) -> None:
        log.info("plan: %s", resolved.model_dump_json(by_alias=True, exclude_none=True))

    def result(self, result: TrainerResult) -> None:
        log.info("published %s -> %s (promoted: %s)", result.version, result.manifest_uri, result.promoted)
