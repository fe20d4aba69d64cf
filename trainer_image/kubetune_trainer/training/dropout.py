"""LoRA dropout on the CPU with masks drawn from 16-bit integers instead of torch's ``bernoulli_``.

peft drops out each adapted layer's input with a fresh mask per layer (7 per decoder layer with
every linear layer adapted). On the CPU torch draws those masks with ``bernoulli_``, one 32-bit
Mersenne Twister float per element: on 2 cores that was a fifth of every LoRA step of
SmolLM2-135M (``bench/train.py``, levers). numpy's PCG64 draws 16-bit integers about six times
faster; an element is kept when its integer is at least ``round(p * 2**16)``, which is the same
inverted dropout as ``torch.nn.Dropout`` (each element kept independently with probability
``1 - p``, to within 2**-17, and scaled by ``1 / (1 - p)``). Meant for CPU training only: on a GPU
torch's Philox generator is fast already.

Not yet the default: other masks mean other trained weights, so switching it on changes the
README's recorded demo figures, which are re-measured (``scripts/measure_forgetting.py``) when it
is. Until then ``bench/train.py`` measures it as a lever.

Each mask's generator is seeded from torch's global generator, so a run is reproducible from its
seed, and a resumed run (the Trainer restores torch's RNG state from the checkpoint) draws the
same masks as the run it continues.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

_LEVELS = 1 << 16
_SEED_BOUND = (1 << 63) - 1


class IntegerMaskDropout(nn.Module):
    """``nn.Dropout(p)`` for CPU tensors, its mask compared from uniform 16-bit integers."""

    def __init__(self, p: float) -> None:
        super().__init__()
        if not 0.0 <= p < 1.0:
            raise ValueError(f"dropout probability must be in [0, 1), got {p}")
        self.p = p
        self.threshold = round(p * _LEVELS)
        self.scale = 1.0 / (1.0 - p)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.threshold == 0:
            return x
        seed = int(torch.randint(0, _SEED_BOUND, (1,)))
        draws = np.random.default_rng(seed).integers(0, _LEVELS, size=tuple(x.shape), dtype=np.uint16)
        keep = torch.from_numpy(np.greater_equal(draws, self.threshold))
        return x * keep.to(x.dtype).mul_(self.scale)

    def extra_repr(self) -> str:
        return f"p={self.p}"


def use_integer_mask_dropout(model: Any) -> int:
    """Swap every LoRA dropout of a peft ``model`` for :class:`IntegerMaskDropout`; returns how many."""
    swapped = 0
    for module in model.modules():
        dropouts = getattr(module, "lora_dropout", None)
        if not isinstance(dropouts, nn.ModuleDict):
            continue
        for adapter, dropout in dropouts.items():
            if isinstance(dropout, nn.Dropout) and dropout.p > 0:
                dropouts[adapter] = IntegerMaskDropout(dropout.p)
                swapped += 1
    return swapped
