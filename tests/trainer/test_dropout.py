"""The CPU LoRA dropout (training/dropout.py) is torch's inverted dropout with faster masks: the same
keep rate and scale, nothing in evaluation, reproducible from torch's seed, and it replaces every
LoRA dropout of a peft model (bench/train.py measures it as a lever; not yet the default)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from torch import nn

from kubetune_trainer.training.dropout import IntegerMaskDropout, use_integer_mask_dropout


@pytest.mark.parametrize("p", [0.05, 0.1, 0.5])
def test_keeps_each_element_with_probability_one_minus_p_and_scales_like_torch(p: float) -> None:
    torch.manual_seed(0)
    dropout = IntegerMaskDropout(p).train()
    x = torch.ones(400, 1000)
    out = dropout(x)
    kept = out != 0
    n = x.numel()
    # Five standard deviations of a binomial keep count: a wrong rate (or p and 1-p swapped) fails.
    assert abs(int(kept.sum()) - n * (1 - p)) < 5 * math.sqrt(n * p * (1 - p))
    assert torch.allclose(out[kept], torch.full_like(out[kept], 1 / (1 - p)))
    reference = nn.Dropout(p).train()(x)
    assert torch.allclose(out.sum() / n, reference.sum() / n, atol=0.02), "same expectation as torch's dropout"


def test_masks_differ_by_call_are_independent_of_rows_and_follow_the_torch_seed() -> None:
    dropout = IntegerMaskDropout(0.5).train()
    x = torch.ones(64, 256)
    torch.manual_seed(7)
    first, second = dropout(x), dropout(x)
    assert not torch.equal(first, second), "a fresh mask per call"
    assert not torch.equal(first[0], first[1]), "a fresh draw per element"
    torch.manual_seed(7)
    assert torch.equal(dropout(x), first) and torch.equal(dropout(x), second), "reproducible from torch's RNG"


def test_evaluation_and_zero_p_pass_the_input_through_and_gradients_flow_through_kept_elements() -> None:
    x = torch.randn(8, 32, requires_grad=True)
    assert IntegerMaskDropout(0.3).eval()(x) is x
    assert IntegerMaskDropout(0.0).train()(x) is x
    out = IntegerMaskDropout(0.3).train()(x)
    out.sum().backward()
    assert x.grad is not None
    assert torch.equal(x.grad != 0, out != 0) or torch.equal(x.grad != 0, (out != 0) | (x == 0))
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        IntegerMaskDropout(1.0)


def test_it_replaces_every_lora_dropout_of_a_model_loaded_for_training(tiny_model_dir: Path) -> None:
    from kubetune_trainer.plan import resolve_training
    from kubetune_trainer.training.model import load_for_training
    from tests.builders import spec
    from tests.trainer.plans import CPU, NO_REPLAY, SMOL

    manifest = spec(method={"type": "lora", "lora": {"r": 4, "dropout": 0.05}})
    resolved = resolve_training(manifest, CPU, train_examples=24, token_lengths=[16] * 24, shape=SMOL, replay=NO_REPLAY)
    model, _ = load_for_training(tiny_model_dir, resolved, device="cpu")
    assert use_integer_mask_dropout(model) == 2 * 7, "two layers, seven adapted linear layers each"
    dropouts = [
        d
        for m in model.modules()
        if isinstance(getattr(m, "lora_dropout", None), nn.ModuleDict)
        for d in m.lora_dropout.values()
    ]
    assert dropouts and all(isinstance(d, IntegerMaskDropout) and d.p == 0.05 for d in dropouts), dropouts
    assert use_integer_mask_dropout(model) == 0, "nothing left to swap"
