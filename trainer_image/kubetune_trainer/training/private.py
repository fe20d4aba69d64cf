"""Differentially private training (``spec.privacy``): DP-SGD (Abadi et al. 2016) with Opacus.

Opacus has no integration with transformers' Trainer: its guarantee needs its own sampling (every row
drawn independently with probability ``sampleRate`` at each step: Poisson sampling, which the accountant
assumes; the Trainer's shuffled epochs are another mechanism) and its own optimizer (each row's gradient
clipped, Gaussian noise added to their sum). So this is a loop of its own, with Opacus's parts:
``GradSampleModule`` computes per-row gradients of the trainable (LoRA) layers, ``DPOptimizer`` clips,
noises and steps, ``RDPAccountant`` counts every noisy step. The noise multiplier is the smallest that
keeps epsilon at ``targetEpsilon`` over the planned steps; the epsilon reported is the accountant's, over
the steps actually taken.

One training row is one privacy unit: rows are never packed (the plan and the API refuse it), and each
row's loss is the mean over its own answer tokens, so its gradient depends on it alone. A logical batch
larger than the plan's micro-batch is processed in micro-batches whose clipped gradients are summed
before the one noisy step (Opacus's virtual steps). An empty draw still takes its noisy step: skipping it
would reveal that the batch was empty.

Checkpoints and resuming: every ``checkpoint.everySteps`` steps, and on SIGTERM, the loop's whole state is
saved (the adapter, AdamW's moments, the schedule, the step, the accountant's history, and the states of
the two random generators: the Poisson sampler's and the noise's). A restart continues from there with the
same generators, so the steps it takes again after the checkpoint draw the same rows and the same noise as
the steps the killed process took and lost: the same mechanism's output computed twice, not a second
sample. Epsilon therefore counts the steps of the chain that is released (the accountant's history is
restored with the state and checked against it), whatever the number of restarts (docs/privacy.md).

The two generators are seeded from the operating system's secure random source on a fresh run, never from
``hyperparameters.seed``: the seed is recorded in the status and the lineage, and whoever knows it could
replay the rows drawn and the noise added. Their states live in the checkpoints alone, which the pipeline
deletes once the run is published and reported.
"""

from __future__ import annotations

import functools
import logging
import math
import secrets
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch.nn import functional

from kubetune.api.v1alpha1 import PrivacySpent, Progress, ResolvedHyperparameters, ResolvedPrivacy
from kubetune_trainer.errors import ConfigurationError
from kubetune_trainer.tensors.batching import RowCollator, RowDataset, TokenCounts

log = logging.getLogger(__name__)
STATE_FILE = "kubetune_private_state.pt"


@dataclass(frozen=True)
class PrivateRun:
    """What the loop did: the steps it took and the privacy they spent."""

    spent: PrivacySpent
    history: list[dict[str, float]]  # every step of the released chain, resumed ones included
    counts: TokenCounts  # what the drawn batches held (this process's steps)
    seconds: float  # this process's training time
    resumed_from_step: int | None = None
    preempted: bool = False  # stopped on SIGTERM after saving its state


@dataclass(frozen=True)
class Checkpointing:
    """How the loop saves its state (``save``: the step and the state, written and uploaded) and what it
    resumes from (``resume``: a state read back by ``read_state``)."""

    every_steps: int
    save: Callable[[int, dict[str, Any]], None]
    resume: dict[str, Any] | None = None
    stop_requested: Callable[[], bool] = field(default=lambda: False)
    trace_microsteps: bool = False  # one stderr line per micro-batch, as the Trainer's loop prints them


def write_state(folder: Path, state: dict[str, Any]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    torch.save(state, folder / STATE_FILE)


def read_state(folder: Path) -> dict[str, Any]:
    """A saved state, read with torch's weights-only loader: the file comes back from storage the tenant
    can write, and an ordinary unpickler would run whatever it holds."""
    path = folder / STATE_FILE
    if not path.exists():
        raise ConfigurationError(f"{folder.name}: no {STATE_FILE}, not a DP-SGD checkpoint; refusing to resume")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # any unreadable file is the same verdict: not resumed from
        raise ConfigurationError(f"{folder.name}/{STATE_FILE}: unreadable ({err}); refusing to resume") from err
    if not isinstance(state, dict) or state.get("format") != 1:
        raise ConfigurationError(f"{folder.name}/{STATE_FILE}: not a DP-SGD state of this trainer; refusing to resume")
    return state


def noise_multiplier(privacy: ResolvedPrivacy) -> float:
    """The smallest noise (standard deviation over the clipping norm) that keeps the planned steps within
    the target epsilon at delta, by Opacus's search over the RDP accountant."""
    return _searched_noise(
        privacy.target_epsilon, privacy.delta, privacy.sample_rate, privacy.steps, privacy.accountant
    )


@functools.cache  # the search takes seconds: a process that trains the same plan again does not repeat it
def _searched_noise(target_epsilon: float, delta: float, sample_rate: float, steps: int, accountant: str) -> float:
    from opacus.accountants.utils import get_noise_multiplier

    return float(
        get_noise_multiplier(
            target_epsilon=target_epsilon,
            target_delta=delta,
            sample_rate=sample_rate,
            steps=steps,
            accountant=accountant,
        )
    )


def epsilon_spent(noise: float, sample_rate: float, steps: int, delta: float) -> float:
    """Epsilon at ``delta`` of ``steps`` Poisson-sampled Gaussian steps, as the RDP accountant counts it."""
    from opacus.accountants import RDPAccountant

    if steps == 0:
        return 0.0
    accountant = RDPAccountant()
    accountant.history = [(noise, sample_rate, steps)]
    return float(accountant.get_epsilon(delta))


def row_mean_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """The mean over rows of each row's mean next-token loss on its answer: each row's share depends on
    that row alone (a token mean over the whole batch would weigh a row by the others' lengths)."""
    shifted = labels[:, 1:]
    per_token = functional.cross_entropy(
        logits[:, :-1].float().transpose(1, 2), shifted, ignore_index=-100, reduction="none"
    )
    counted = (shifted != -100).sum(dim=1).clamp(min=1)
    return (per_token.sum(dim=1) / counted).mean()


def _secret_seed() -> int:
    """63 bits from the operating system's secure random source: a seed nobody can know or choose. (torch's
    generators are not cryptographic ones, as Opacus's ``secure_mode`` with torchcsprng would be; what they
    draw is only ever released summed with the clipped gradients: docs/privacy.md.)"""
    return secrets.randbits(63)


def _draw(rows: int, sample_rate: float, generator: torch.Generator) -> list[int]:
    return torch.nonzero(torch.rand(rows, generator=generator) < sample_rate).flatten().tolist()


def resumable_step(state: dict[str, Any], noise: float, privacy: ResolvedPrivacy) -> int:
    """The step ``state`` was saved at, refused unless its accountant counted exactly those steps at this
    run's noise and sample rate: otherwise the epsilon of the released chain would not add up."""
    step = state.get("step")
    expected = [[noise, privacy.sample_rate, step]]
    if not isinstance(step, int) or not 0 < step <= privacy.steps or state.get("accountant") != expected:
        raise ConfigurationError(
            f"checkpoint-{step}: its accountant counted {state.get('accountant')}, not {step} of at most "
            f"{privacy.steps} steps at noise {noise} and sample rate {privacy.sample_rate}; refusing to resume"
        )
    return step


def restore_state(
    state: dict[str, Any], model: Any, parts: LoopParts, noise: float, privacy: ResolvedPrivacy
) -> tuple[int, list[dict[str, float]]]:
    """Load ``state`` into the model and the loop's parts; the step it was saved at and the history of
    the steps before it."""
    step = resumable_step(state, noise, privacy)
    trainable = dict((n, p) for n, p in model.named_parameters() if p.requires_grad)
    saved = state.get("trainable")
    if not isinstance(saved, dict) or trainable.keys() != saved.keys():
        raise ConfigurationError(
            f"checkpoint-{step}: its trained weights are not this run's adapter; refusing to resume"
        )
    try:
        with torch.no_grad():
            for name, parameter in trainable.items():
                parameter.copy_(saved[name].to(parameter.device, parameter.dtype))
        parts.optimizer.original_optimizer.load_state_dict(state["optimizer"])
        parts.schedule.load_state_dict(state["schedule"])
        parts.sampler.set_state(state["sampler"])
        parts.noise.set_state(state["noise"])
        torch.set_rng_state(state["global_rng"])  # dropout's masks: the restart is the uninterrupted run
        history = [dict(entry) for entry in state["history"]]
    except (KeyError, TypeError, ValueError, RuntimeError, AttributeError) as err:  # a damaged state, read back
        raise ConfigurationError(
            f"checkpoint-{step}: its saved state does not load ({err!r}); refusing to resume"
        ) from err
    parts.accountant.history = [tuple(entry) for entry in state["accountant"]]
    return step, history


def _snapshot(step: int, model: Any, parts: LoopParts, history: list[dict[str, float]]) -> dict[str, Any]:
    return {
        "format": 1,
        "step": step,
        "trainable": {n: p.detach().cpu().clone() for n, p in model.named_parameters() if p.requires_grad},
        "optimizer": parts.optimizer.original_optimizer.state_dict(),
        "schedule": parts.schedule.state_dict(),
        "sampler": parts.sampler.get_state(),
        "noise": parts.noise.get_state(),
        "global_rng": torch.get_rng_state(),
        "accountant": [list(entry) for entry in parts.accountant.history],
        "history": history,
    }


@dataclass
class LoopParts:
    """The loop's stateful parts, all of which a checkpoint holds."""

    optimizer: Any  # Opacus's DPOptimizer around AdamW
    schedule: Any
    sampler: torch.Generator  # Poisson sampling of the rows
    noise: torch.Generator  # the Gaussian noise
    accountant: Any


def train_private(
    model: Any,
    rows: RowDataset,
    collator: RowCollator,
    *,
    privacy: ResolvedPrivacy,
    hyperparameters: ResolvedHyperparameters,
    device: str,
    checkpointing: Checkpointing,
    max_steps: int | None = None,
    on_progress: Callable[[Progress], None] | None = None,
) -> PrivateRun:
    """Train ``model``'s trainable parameters (a LoRA adapter) with DP-SGD on ``rows``, from the state
    ``checkpointing`` resumes if any; the model is trained in place and unwrapped again when done.
    ``max_steps``: stop after that many of the planned steps (the pre-flight's timing probe)."""
    from opacus import GradSampleModule
    from opacus.accountants import RDPAccountant
    from opacus.optimizers import DPOptimizer
    from transformers import get_scheduler

    hp = hyperparameters
    noise = noise_multiplier(privacy)
    wrapped = GradSampleModule(model, batch_first=True, loss_reduction="mean")
    trainable = [p for p in model.parameters() if p.requires_grad]
    noise_generator = torch.Generator(device=device).manual_seed(_secret_seed())
    optimizer = DPOptimizer(
        torch.optim.AdamW(trainable, lr=hp.learning_rate, weight_decay=hp.weight_decay),
        noise_multiplier=noise,
        max_grad_norm=privacy.max_grad_norm,
        expected_batch_size=max(1, round(privacy.sample_rate * len(rows))),
        loss_reduction="mean",
        generator=noise_generator,
    )
    accountant = RDPAccountant()
    optimizer.attach_step_hook(accountant.get_optimizer_hook_fn(sample_rate=privacy.sample_rate))
    schedule = get_scheduler(
        str(hp.lr_scheduler),
        optimizer=optimizer.original_optimizer,
        num_warmup_steps=math.ceil(hp.warmup_ratio * privacy.steps),
        num_training_steps=privacy.steps,
    )
    parts = LoopParts(optimizer, schedule, torch.Generator().manual_seed(_secret_seed()), noise_generator, accountant)
    history: list[dict[str, float]] = []
    resumed = None
    if checkpointing.resume is not None:
        resumed, history = restore_state(checkpointing.resume, model, parts, noise, privacy)
        log.info("resumed DP-SGD at step %d of %d, its accountant's history restored", resumed, privacy.steps)
    log.info(
        "training with DP-SGD: %d steps, sample rate %.4f, noise multiplier %.3f, clipping at %g",
        privacy.steps,
        privacy.sample_rate,
        noise,
        privacy.max_grad_norm,
    )
    counts = TokenCounts()
    started = time.perf_counter()
    first = (resumed or 0) + 1
    preempted = False
    wrapped.train()
    last = privacy.steps if max_steps is None else min(privacy.steps, max_steps)
    for step in range(first, last + 1):
        drawn = _draw(len(rows), privacy.sample_rate, parts.sampler)
        chunks = [drawn[i : i + hp.batch_size] for i in range(0, len(drawn), hp.batch_size)]
        for index, chunk in enumerate(chunks):
            batch = {k: v.to(device) for k, v in collator([rows[i] for i in chunk]).items()}
            labels = batch.pop("labels")
            loss = row_mean_loss(wrapped(**batch).logits, labels)
            loss.backward()
            mask = batch.get("attention_mask")
            positions = int(batch["input_ids"].numel())
            counts += TokenCounts(
                positions=positions,
                tokens=int(mask.sum()) if mask is not None else positions,
                trained=int((labels[:, 1:] != -100).sum()),
            )
            if index < len(chunks) - 1:
                # Opacus's virtual step: these rows' gradients are clipped and summed, the noise waits
                # for the last micro-batch (several backward passes before one step would be counted,
                # and scaled, as several Poisson draws).
                optimizer.signal_skip_step(do_skip=True)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                if checkpointing.trace_microsteps:
                    print(f"kubetune-microstep step={step - 1} substep={index + 1}", file=sys.stderr, flush=True)
        if not chunks:
            for parameter in trainable:  # nobody drawn: the step is noise alone, and it is counted
                parameter.grad_sample = torch.zeros((0, *parameter.shape), dtype=parameter.dtype, device=device)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        schedule.step()
        # No loss in the history, the progress or the logs: the drawn rows' loss is computed without noise,
        # and releasing it (status, metrics, lineage) would be outside the guarantee.
        entry = {"step": float(step), "rows": float(len(drawn)), "learning_rate": schedule.get_last_lr()[0]}
        history.append(entry)
        if checkpointing.trace_microsteps:
            print(f"kubetune-microstep step={step} substep=end", file=sys.stderr, flush=True)
        preempted = checkpointing.stop_requested()
        if preempted or step % checkpointing.every_steps == 0:
            checkpointing.save(step, _snapshot(step, model, parts, history))
        if on_progress is not None:
            done = step - first + 1
            on_progress(
                Progress(
                    stage="train",
                    step=step,
                    total_steps=privacy.steps,
                    epoch=round(step * privacy.sample_rate, 3),
                    eta_seconds=round((time.perf_counter() - started) / done * (privacy.steps - step)),
                )
            )
        if preempted:
            log.warning("SIGTERM: DP-SGD state saved at step %d of %d; stopping", step, privacy.steps)
            break
    seconds = time.perf_counter() - started
    wrapped.to_standard_module()  # removes the hooks and the per-row gradients: a plain peft model again
    steps_taken = sum(count for _, _, count in accountant.history)
    spent = PrivacySpent(
        epsilon=float(accountant.get_epsilon(privacy.delta)),
        delta=privacy.delta,
        target_epsilon=privacy.target_epsilon,
        noise_multiplier=noise,
        sample_rate=privacy.sample_rate,
        steps=steps_taken,
    )
    return PrivateRun(spent, history, counts, seconds, resumed_from_step=resumed, preempted=preempted)
