"""What the training loop tells the reporters at each logging step: step, epoch and losses
(the FineTuneJob status), plus learning rate, throughput over the last window, padding and
peak memory (Prometheus)."""

from __future__ import annotations

import resource
import time
from collections.abc import Callable
from typing import Any

from transformers import TrainerCallback

from kubetune.api.v1alpha1 import Progress
from kubetune_trainer.reporting import TrainingMetrics
from kubetune_trainer.tensors.batching import MeteredCollator, TokenCounts, TokenMeter
from kubetune_trainer.training.loss import LabelledPositionsTrainer
from kubetune_trainer.training.sharding import shard_on_cpu


class MeteredTrainer(LabelledPositionsTrainer):
    """A Trainer whose training batches are counted by a :class:`TokenMeter`.

    Evaluation batches share ``data_collator`` and must not count, so only the training
    DataLoader gets the metered collator; each training micro-step commits one batch.
    """

    def __init__(self, *args: Any, meter: TokenMeter, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.meter = meter

    def create_accelerator_and_postprocess(self) -> None:
        super().create_accelerator_and_postprocess()
        shard_on_cpu(self)

    def get_train_dataloader(self) -> Any:
        plain = self.data_collator  # type: ignore[has-type]  # transformers is not followed by mypy
        self.data_collator = MeteredCollator(plain, self.meter)
        try:
            return super().get_train_dataloader()
        finally:
            self.data_collator = plain

    def training_step(self, *args: Any, **kwargs: Any) -> Any:
        self.meter.consumed()
        return super().training_step(*args, **kwargs)


def host_memory_peak_bytes() -> int:
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024  # Linux reports KiB


def accelerator_memory_peak_bytes(device: str) -> int | None:
    if device != "cuda":
        return None
    import torch

    return int(torch.cuda.max_memory_reserved())


class ReportProgress(TrainerCallback):
    """Reports at every logging step of the main process; rates cover the window since the last."""

    def __init__(
        self,
        meter: TokenMeter,
        *,
        device: str,
        world_size: int,
        on_progress: Callable[[Progress], None] | None,
        on_metrics: Callable[[TrainingMetrics], None] | None,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        self.meter = meter
        self.device = device
        self.world_size = world_size  # each rank meters its own shard; rank 0 reports for all
        self.on_progress = on_progress
        self.on_metrics = on_metrics
        self.clock = clock
        self.train_loss: float | None = None
        self.eval_loss: float | None = None
        self._window_start = clock()
        self._window_counts = TokenCounts()
        self._began, self._first_step = self._window_start, 0

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self._window_start, self._window_counts = self.clock(), self.meter.counts
        self._began, self._first_step = self._window_start, state.global_step  # a resumed run starts past 0

    def eta_seconds(self, step: int, total: int, now: float) -> int | None:
        """The steps left at the pace of this process's steps so far; None before its first step."""
        done = step - self._first_step
        return round((now - self._began) / done * max(0, total - step)) if done > 0 else None

    def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, float] | None = None, **kw: Any) -> None:
        if not state.is_world_process_zero:
            return
        logs = logs or {}
        if "loss" not in logs and "eval_loss" not in logs:
            return  # the run's closing summary (train_runtime, ...), not a step
        self.train_loss = logs.get("loss", self.train_loss)
        self.eval_loss = logs.get("eval_loss", self.eval_loss)
        now = self.clock()
        counts = self.meter.counts
        window = counts - self._window_counts
        elapsed = now - self._window_start
        # Every log line closes the window, so time spent evaluating never counts as training time.
        self._window_start, self._window_counts = now, counts
        trained_window = "loss" in logs and elapsed > 0 and window.positions > 0
        tokens_per_second = self.world_size * window.tokens / elapsed if trained_window else None
        if self.on_progress is not None:
            self.on_progress(
                Progress(
                    stage="train",
                    step=state.global_step,
                    total_steps=state.max_steps,
                    epoch=round(state.epoch or 0.0, 3),
                    train_loss=self.train_loss,
                    eval_loss=self.eval_loss,
                    tokens_per_second=round(tokens_per_second, 1) if tokens_per_second is not None else None,
                    eta_seconds=self.eta_seconds(state.global_step, state.max_steps, now),
                )
            )
        if self.on_metrics is not None and tokens_per_second is not None:
            self.on_metrics(
                TrainingMetrics(
                    learning_rate=logs.get("learning_rate"),
                    tokens_per_second=tokens_per_second,
                    trained_tokens_per_second=self.world_size * window.trained / elapsed,
                    tokens=self.world_size * counts.tokens,
                    trained_tokens=self.world_size * counts.trained,
                    padding_ratio=window.padding_ratio,
                    host_memory_peak_bytes=host_memory_peak_bytes(),
                    accelerator_memory_peak_bytes=accelerator_memory_peak_bytes(self.device),
                )
            )
