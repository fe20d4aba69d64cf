"""A few real optimizer steps of the plan, timed on the machine that trains: ``kubetune run``'s
pre-flight estimate (plan.preflight_estimate) scales them instead of a FLOPs prior, which was off by
more than 2x on a CPU (4.8 minutes estimated for the README example, about 11 measured).

The steps are the training loop's own (``training.loop.train`` with ``max_steps``) on the run's own
rows, so the model, adapter, packing, batch shapes, optimizer and thread settings are the run's. The
first step pays one-off costs and is counted as setup; the others give the time of a step. The run's
real step count comes from its rows as training packs them (with the replay rows the cached answers
give, or stand-ins of their planned lengths when the answers are generated after the plan), and the
in-training validation from the validation split's rows.

The steps run in a child process: its peak memory is the estimate of the run's, and the run's own
peak (the process's high-water mark, which nothing can lower) stays a measurement of the run alone.
"""

from __future__ import annotations

import math
import multiprocessing
import shutil
import tempfile
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from kubetune.api.v1alpha1 import (
    PREFERENCE_OBJECTIVES,
    Progress,
    ResolvedAdapterTraining,
    ResolvedPrivacy,
    ResolvedTraining,
)
from kubetune_trainer.data.types import Example
from kubetune_trainer.plan import MeasuredSteps
from kubetune_trainer.storage import ObjectStore
from kubetune_trainer.tensors.batching import build_rows
from kubetune_trainer.tensors.encode import EncodedExample, encode_example
from kubetune_trainer.training.checkpoints import CheckpointStore
from kubetune_trainer.training.loop import TrainConfig, train

PROBE_STEPS = 3  # one to warm up, two timed: enough on a CPU where a step's time barely varies
# A DP-SGD step draws a large expected batch (docs/privacy.md, "The default recipe"): the probe's steps
# draw this many micro-batches on average and are scaled to the planned batch, since a step's time is
# that of the rows it draws. Three full steps of the example's 72 rows took a third of an epoch.
PROBE_PRIVATE_MICRO_BATCHES = 4


def optimizer_steps(rows: int, resolved: ResolvedTraining) -> int:
    """Steps the training loop takes for ``rows`` rows: batches per epoch, accumulated, times epochs;
    under ``spec.privacy`` the planned Poisson-sampled steps."""
    if isinstance(resolved, ResolvedAdapterTraining) and isinstance(resolved.privacy, ResolvedPrivacy):
        return resolved.privacy.steps
    hyper = resolved.hyperparameters
    per_epoch = max(1, math.ceil(math.ceil(rows / hyper.batch_size) / hyper.gradient_accumulation_steps))
    return max(1, math.ceil(hyper.epochs * per_epoch))


def smaller_private_steps(resolved: ResolvedTraining, rows: int) -> tuple[ResolvedTraining, float]:
    """The plan the probe times, and the factor from its steps' time to the run's: a DP-SGD plan's steps
    drawing ``PROBE_PRIVATE_MICRO_BATCHES`` micro-batches of its ``rows`` on average (never more than
    planned); any other plan as it is, factor 1."""
    if not (isinstance(resolved, ResolvedAdapterTraining) and isinstance(resolved.privacy, ResolvedPrivacy)):
        return resolved, 1.0
    planned = resolved.privacy.sample_rate
    probed = min(planned, PROBE_PRIVATE_MICRO_BATCHES * resolved.hyperparameters.batch_size / max(1, rows))
    privacy = resolved.privacy.model_copy(update={"sample_rate": probed})
    return resolved.model_copy(update={"privacy": privacy}), planned / probed


def validations(resolved: ResolvedTraining, total_steps: int) -> int:
    """In-training validation passes: one at every multiple of the plan's evaluation interval."""
    eval_steps = resolved.hyperparameters.eval_steps
    return total_steps // eval_steps if eval_steps else 0


def probe_steps(
    model_dir: Path,
    resolved: ResolvedTraining,
    train_examples: Sequence[Example],
    validation: Sequence[Example],
    *,
    replay_lengths: Sequence[int],
    device: str,
    bf16: bool,
    chat_template: str | None,
    teacher_dir: Path | None = None,
) -> MeasuredSteps:
    """The plan's steps timed in a child process (spawned: a fresh interpreter, nothing shared).
    ``teacher_dir``: a distill objective's teacher, whose forward passes logit distillation's steps include."""
    with ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn")) as child:
        return child.submit(
            _probe_here,
            model_dir,
            resolved,
            list(train_examples),
            list(validation),
            list(replay_lengths),
            device,
            bf16,
            chat_template,
            teacher_dir,
        ).result()


def _probe_here(
    model_dir: Path,
    resolved: ResolvedTraining,
    train_examples: list[Example],
    validation: list[Example],
    replay_lengths: list[int],
    device: str,
    bf16: bool,
    chat_template: str | None,
    teacher_dir: Path | None,
) -> MeasuredSteps:
    from kubetune_trainer.training.model import load_tokenizer

    tokenizer = load_tokenizer(model_dir)
    hyper = resolved.hyperparameters
    seq_len = hyper.sequence_length

    def rows(examples: Sequence[Example], planned: Sequence[int] = ()) -> int:
        encoded = [encode_example(e, tokenizer, seq_len, chat_template) for e in examples]
        # Replay rows are generated after the plan: stand-ins of their planned lengths pack the same.
        encoded += [EncodedExample([0] * min(n, seq_len), [0] * min(n, seq_len)) for n in planned]
        return len(build_rows(encoded, seq_len, packing=hyper.packing))

    total_steps = optimizer_steps(rows(train_examples, replay_lengths), resolved)
    # One validation pass, on the run's validation rows, right after the last step: timed, not assumed.
    probed = resolved.model_copy(update={"hyperparameters": hyper.model_copy(update={"eval_steps": PROBE_STEPS})})
    probed, private_scale = smaller_private_steps(probed, len(train_examples))
    stamps: list[tuple[int, float]] = []
    validated: list[float] = []

    def stamp(progress: Progress) -> None:
        now = time.perf_counter()
        # A training step's log line: the Trainer's carry their tokens per second (its validation lines do
        # not); the DP-SGD loop's carry neither a rate nor a validation loss (it validates nothing).
        if progress.step is not None and (progress.tokens_per_second is not None or progress.eval_loss is None):
            stamps.append((progress.step, now))
        elif progress.eval_loss is not None:
            validated.append(now)  # the validation pass's log line, after the step's

    # A preference run first scores every pair under its reference: the probe's steps need only the
    # pairs they train on (that one-off pass is left out of the estimate).
    probed_examples = list(train_examples)
    if resolved.objective.type in PREFERENCE_OBJECTIVES:
        probed_examples = probed_examples[: PROBE_STEPS * hyper.batch_size * hyper.gradient_accumulation_steps]
    scratch = Path(tempfile.mkdtemp(prefix="kubetune-probe-"))
    try:
        started = time.perf_counter()
        outcome = train(
            TrainConfig(
                model_dir=model_dir,
                resolved=probed,
                train=probed_examples,
                validation=list(validation),
                output_dir=scratch / "training",
                checkpoints=CheckpointStore(ObjectStore(), (scratch / "checkpoints").as_uri() + "/", run="probe"),
                checkpoint_every_steps=10**9,
                device=device,
                bf16=bf16,
                chat_template=chat_template,
                max_steps=PROBE_STEPS,
                on_progress=stamp,
                teacher_dir=teacher_dir,
            )
        )
        peak = outcome.peak_memory_bytes
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    if len(stamps) < 2:
        raise RuntimeError(f"the probe logged {len(stamps)} steps of {PROBE_STEPS}")
    (first_step, first), (last_step, last) = stamps[0], stamps[-1]
    probe_step = (last - first) / max(1, last_step - first_step)
    return MeasuredSteps(
        seconds_per_step=probe_step * private_scale,
        setup_seconds=max(0.0, first - started - probe_step),
        total_steps=total_steps,
        validation_seconds=validated[0] - last if validated else 0.0,
        validations=validations(resolved, total_steps) if validation else 0,
        peak_memory_bytes=peak,
    )
