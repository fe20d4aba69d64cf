"""Logit distillation (``method.objective: distill``, mode logits): the student matches a frozen teacher.

loss = alpha * T^2 * KL(teacher_T || student_T) + (1 - alpha) * CE(labels), both summed over the answer
tokens (the positions whose next token is labelled, as the supervised loss) and divided the way the
supervised loss is: by the labelled tokens of the whole accumulated batch when the Trainer counted them,
else by this batch's. T^2 keeps the soft term's gradients at the label loss's scale (Hinton et al. 2015).

The teacher sees exactly the student's batch (same ids, attention mask, position ids), so packed rows
work as they do for SFT: each segment's positions restart and transformers reads that as a boundary
for both models. Only the labelled positions are projected onto the vocabulary, for both.

Why not TRL (1.16 here): ``trl.DistillationTrainer`` is on-policy distillation (the student generates the
completions from a ``prompt`` column, matched under a generalised JSD, with an identity collator and its
own dataset pipeline), and ``trl.experimental.gkd.GKDTrainer`` subclasses ``SFTTrainer`` with its own data
pipeline and collator. kubetune's loop needs its own rows (chat-template spans, packing, token metering,
checkpoint sync, the preference and EWC hooks) and the classic supervised KD loss, so the loss, a few
lines, is written here on the same Trainer subclass as the supervised one.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from kubetune.api.v1alpha1 import MethodType, ResolvedDistillObjective
from kubetune_trainer.tensors.positions import keeps_selected_logits, labelled_positions
from kubetune_trainer.training.progress import MeteredTrainer


def load_teacher(teacher_dir: Path, method: MethodType, *, device: str, bf16: bool) -> Any:
    """The teacher, frozen, with the base's device and dtype policy (4-bit under qlora, as the base is)."""
    from kubetune_trainer.training.model import load_base

    teacher = load_base(teacher_dir, method, device=device, bf16=bf16)
    teacher.eval()
    teacher.requires_grad_(False)
    return teacher


def kept_logits(model: Any, features: dict[str, Any], keep: torch.Tensor, selects: bool) -> torch.Tensor:
    """(kept positions, vocabulary) logits of ``model`` where ``keep`` is true, in boolean-indexing order."""
    logits = model(**features, logits_to_keep=keep).logits if selects else model(**features).logits[keep]
    return logits.reshape(-1, logits.shape[-1])


def distill_loss_sums(
    student: torch.Tensor, teacher: torch.Tensor, targets: torch.Tensor, temperature: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """(KL(teacher_T || student_T) summed over positions and scaled by T^2, cross-entropy summed), from
    logits of shape (positions, vocabulary). The KL is over the vocabulary both heads have (a head may be
    padded past its tokenizer's ids)."""
    ce = F.cross_entropy(student.float(), targets, reduction="sum")
    width = min(student.shape[-1], teacher.shape[-1])
    student_log = F.log_softmax(student[:, :width].float() / temperature, dim=-1)
    teacher_log = F.log_softmax(teacher[:, :width].float() / temperature, dim=-1)
    kl = F.kl_div(student_log, teacher_log, log_target=True, reduction="sum") * temperature**2
    return kl, ce


class DistillTrainer(MeteredTrainer):
    """The training loop with the distillation loss in place of the supervised one (module docstring)."""

    def __init__(self, *args: Any, objective: ResolvedDistillObjective, teacher: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.objective = objective
        self.teacher = teacher
        self.teacher_selects = keeps_selected_logits(teacher)
        self.student_selects = keeps_selected_logits(self.model)

    def compute_loss(
        self, model: Any, inputs: dict[str, Any], return_outputs: bool = False, num_items_in_batch: Any = None
    ) -> Any:
        keep, targets = labelled_positions(inputs["labels"])
        features = {name: value for name, value in inputs.items() if name != "labels"}
        student = kept_logits(model, features, keep, self.student_selects)
        with torch.no_grad():
            teacher = kept_logits(self.teacher, features, keep, self.teacher_selects)
        kl, ce = distill_loss_sums(student, teacher.to(student.device), targets, self.objective.temperature)
        alpha = self.objective.alpha
        total = alpha * kl + (1 - alpha) * ce
        # Scaled as the supervised loss (training/loss.py): over the accumulated batch's labelled tokens
        # when the Trainer counted them (then already scaled for accumulation), else this batch's mean.
        self.loss_is_scaled_for_ga = num_items_in_batch is not None
        if num_items_in_batch is None:
            loss = total / max(int(targets.numel()), 1)
        else:
            if isinstance(num_items_in_batch, torch.Tensor):
                num_items_in_batch = num_items_in_batch.to(total.device)
            loss = total / num_items_in_batch
            if self.args.average_tokens_across_devices:  # the count is over every process (as Trainer does)
                loss = loss * self.accelerator.num_processes
        return (loss, {"logits": student}) if return_outputs else loss
