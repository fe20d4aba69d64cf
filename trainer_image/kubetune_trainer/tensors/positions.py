"""Which positions of a batch carry a label: the only rows worth projecting onto the vocabulary.

A causal LM's head turns every position into a vocabulary-sized row of logits (49k columns for
SmolLM2); a loss or a likelihood needs only the rows whose next token is labelled. transformers
lets a model keep only some positions (``logits_to_keep``, a boolean mask per row). Training
(training/loss.py) and evaluation's likelihoods (evaluation/scoring.py) both pass this mask.
"""

from __future__ import annotations

import inspect
from typing import Any

import torch

from kubetune_trainer.tensors.encode import IGNORE_INDEX


def labelled_positions(labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(keep, targets)`` for ``labels`` of shape (batch, length): ``keep[b, t]`` is true where
    position ``t`` predicts a labelled token ``labels[b, t + 1]``; ``targets`` are those tokens, in
    the order boolean indexing returns the kept positions."""
    following = labels[:, 1:]
    keep = torch.zeros_like(labels, dtype=torch.bool)
    keep[:, :-1] = following != IGNORE_INDEX
    return keep, following[keep[:, :-1]]


def keeps_selected_logits(model: Any) -> bool:
    """Whether the causal LM inside ``model`` (a peft wrapper or the model itself) accepts
    ``logits_to_keep``; nearly every decoder in transformers does."""
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    return "logits_to_keep" in inspect.signature(inner.forward).parameters
