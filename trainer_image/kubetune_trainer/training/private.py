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
would reveal that the batch was empty. The loop keeps no checkpoints: a run cut short starts again, and a
restarted run is a second use of the data that this job's epsilon does not count (docs/privacy.md).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch.nn import functional

from kubetune.api.v1alpha1 import PrivacySpent, Progress, ResolvedHyperparameters, ResolvedPrivacy
from kubetune_trainer.tensors.batching import RowCollator, RowDataset, TokenCounts

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PrivateRun:
    """What the loop did: the steps it took, their losses, and the privacy they spent."""

    spent: PrivacySpent
    history: list[dict[str, float]]
    counts: TokenCounts  # what the drawn batches held
    seconds: float


def noise_multiplier(privacy: ResolvedPrivacy) -> float:
    """The smallest noise (standard deviation over the clipping norm) that keeps the planned steps within
    the target epsilon at delta, by Opacus's search over the RDP accountant."""
    from opacus.accountants.utils import get_noise_multiplier

    return float(
        get_noise_multiplier(
            target_epsilon=privacy.target_epsilon,
            target_delta=privacy.delta,
            sample_rate=privacy.sample_rate,
            steps=privacy.steps,
            accountant=privacy.accountant,
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


def _draw(rows: int, sample_rate: float, generator: torch.Generator) -> list[int]:
    return torch.nonzero(torch.rand(rows, generator=generator) < sample_rate).flatten().tolist()


def train_private(
    model: Any,
    rows: RowDataset,
    collator: RowCollator,
    *,
    privacy: ResolvedPrivacy,
    hyperparameters: ResolvedHyperparameters,
    device: str,
    on_progress: Callable[[Progress], None] | None = None,
) -> PrivateRun:
    """Train ``model``'s trainable parameters (a LoRA adapter) with DP-SGD on ``rows``; the model is
    trained in place and unwrapped again when done."""
    from opacus import GradSampleModule
    from opacus.accountants import RDPAccountant
    from opacus.optimizers import DPOptimizer
    from transformers import get_scheduler

    hp = hyperparameters
    noise = noise_multiplier(privacy)
    sampler = torch.Generator().manual_seed(hp.seed)
    noise_generator = torch.Generator(device=device).manual_seed(hp.seed + 1)
    wrapped = GradSampleModule(model, batch_first=True, loss_reduction="mean")
    trainable = [p for p in model.parameters() if p.requires_grad]
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
    log.info(
        "training with DP-SGD: %d steps, sample rate %.4f, noise multiplier %.3f, clipping at %g",
        privacy.steps,
        privacy.sample_rate,
        noise,
        privacy.max_grad_norm,
    )
    history: list[dict[str, float]] = []
    counts = TokenCounts()
    started = time.perf_counter()
    wrapped.train()
    for step in range(1, privacy.steps + 1):
        drawn = _draw(len(rows), privacy.sample_rate, sampler)
        chunks = [drawn[i : i + hp.batch_size] for i in range(0, len(drawn), hp.batch_size)]
        losses: list[float] = []
        for index, chunk in enumerate(chunks):
            batch = {k: v.to(device) for k, v in collator([rows[i] for i in chunk]).items()}
            labels = batch.pop("labels")
            loss = row_mean_loss(wrapped(**batch).logits, labels)
            loss.backward()
            losses.append(float(loss.detach()) * len(chunk))
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
        if not chunks:
            for parameter in trainable:  # nobody drawn: the step is noise alone, and it is counted
                parameter.grad_sample = torch.zeros((0, *parameter.shape), dtype=parameter.dtype, device=device)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        schedule.step()
        entry = {"step": float(step), "rows": float(len(drawn)), "learning_rate": schedule.get_last_lr()[0]}
        if drawn:
            entry["loss"] = sum(losses) / len(drawn)
        history.append(entry)
        if on_progress is not None:
            on_progress(
                Progress(
                    stage="train",
                    step=step,
                    total_steps=privacy.steps,
                    epoch=round(step * privacy.sample_rate, 3),
                    train_loss=entry.get("loss"),
                    eta_seconds=round((time.perf_counter() - started) / step * (privacy.steps - step)),
                )
            )
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
    return PrivateRun(spent, history, counts, seconds)
