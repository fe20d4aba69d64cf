"""The training loss projected onto the vocabulary only where a label is.

A causal LM's head turns every position's hidden state into a vocabulary-sized row of logits
(49k columns for SmolLM2) and the loss then throws away every row whose target is ignored: the
prompt, the chat template, padding. In the README demo only about one token in five carries a
label, and on CPU the head and its backward were the largest single cost of a step. transformers
lets a model keep only some positions (``logits_to_keep``, a boolean mask per row); this module
passes the labelled positions as that mask and computes the same token-summed cross-entropy on
what comes back. The value is the loss transformers computes (checked by
``tests/trainer/test_training_loss.py``); only the work is smaller.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from transformers import Trainer

from kubetune_trainer.tensors.positions import keeps_selected_logits, labelled_positions


def summed_cross_entropy(outputs: Any, targets: torch.Tensor, num_items_in_batch: Any = None) -> torch.Tensor:
    """Token-summed cross-entropy over the kept positions, divided the way transformers divides its
    own causal-LM loss: by the labelled tokens of the whole accumulated batch when the Trainer
    counted them, else by this batch's."""
    logits = outputs["logits"] if isinstance(outputs, dict) else outputs[0]
    total = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), targets.reshape(-1), reduction="sum")
    if num_items_in_batch is None:
        return total / max(int(targets.numel()), 1)
    if isinstance(num_items_in_batch, torch.Tensor):
        num_items_in_batch = num_items_in_batch.to(total.device)
    return total / num_items_in_batch


class LabelledPositionsTrainer(Trainer):
    """A Trainer whose loss projects only labelled positions onto the vocabulary (module docstring).

    The Trainer's own bookkeeping still applies: counting labelled tokens across gradient
    accumulation and processes, scaling for data parallelism. A model without ``logits_to_keep``
    keeps the default loss."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, compute_loss_func=summed_cross_entropy, **kwargs)
        self.select_labelled = keeps_selected_logits(self.model)
        if not self.select_labelled:
            self.compute_loss_func = None

    def compute_loss(
        self,
        model: Any,
        inputs: dict[str, Any],
        return_outputs: bool = False,
        num_items_in_batch: Any = None,
    ) -> Any:
        labels = inputs.get("labels")
        if self.select_labelled and labels is not None:
            keep, targets = labelled_positions(labels)
            inputs = {**inputs, "labels": targets, "logits_to_keep": keep}
        return super().compute_loss(model, inputs, return_outputs=return_outputs, num_items_in_batch=num_items_in_batch)
