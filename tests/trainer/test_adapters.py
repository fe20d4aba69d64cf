"""LoRA's variants, DoRA and rsLoRA: each trains what defines it, and saves, reloads, merges and keeps
a strength like plain LoRA."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch
from peft import get_peft_model_state_dict
from safetensors.torch import load_file

from kubetune.api.v1alpha1 import MethodType, ResolvedIa3Training
from kubetune_trainer.export.merge import merge_adapter
from kubetune_trainer.plan import ModelShape
from kubetune_trainer.training.model import load_for_training, load_tuned
from kubetune_trainer.training.strength import lora_layers, publish_scale, set_scale
from tests.trainer.plans import tiny_plan
from tests.trainer.test_training_methods import losses, run

IDS = torch.tensor([[1, 5, 9, 13, 17, 21, 25]])
MAGNITUDE = ".lora_magnitude_vector"


def logits(model: Any) -> torch.Tensor:
    with torch.no_grad():
        return model.eval()(input_ids=IDS).logits.float()


def magnitudes(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The DoRA magnitudes of an adapter's saved state."""
    return {key: tensor for key, tensor in state.items() if key.endswith(MAGNITUDE)}


def saved_magnitudes(adapter_dir: Path) -> dict[str, torch.Tensor]:
    return magnitudes(load_file(str(adapter_dir / "adapter_model.safetensors")))


@pytest.mark.parametrize("method", ["lora", "qlora"])
def test_dora_trains_a_magnitude_for_every_output_feature(tmp_path: Path, tiny_model_dir: Path, method: str) -> None:
    outcome = run(tmp_path, tiny_model_dir, method, adapter="dora")
    first, last = losses(outcome)[0], losses(outcome)[-1]
    assert last < first * 0.95, (first, last)
    config = json.loads((outcome.trained_dir / "adapter_config.json").read_text())
    assert (config["use_dora"], config["use_rslora"]) == (True, False)

    trained = saved_magnitudes(outcome.trained_dir)
    untrained_model, _ = load_for_training(tiny_model_dir, tiny_plan(method, adapter="dora"), "cpu")
    untrained = magnitudes(get_peft_model_state_dict(untrained_model))
    # all-linear on 2 layers: q, k, v, o, gate, up, down; each starts at its base weight's row norms
    assert sorted(trained) == sorted(untrained) and len(trained) == 2 * 7, sorted(trained)
    base = load_file(str(tiny_model_dir / "model.safetensors"))
    q_proj = "base_model.model.model.layers.0.self_attn.q_proj" + MAGNITUDE
    expected_start = torch.linalg.norm(base["model.layers.0.self_attn.q_proj.weight"], dim=1)
    # QLoRA's start is the norms of the NF4-rounded weights
    torch.testing.assert_close(untrained[q_proj], expected_start, atol=0.05 if method == "qlora" else 1e-6, rtol=0.02)
    moved = {name for name, magnitude in trained.items() if (magnitude - untrained[name]).abs().max() > 1e-4}
    assert moved == set(trained), f"magnitudes never trained: {set(trained) - moved}"
    trainable = {n for n, p in outcome.model.named_parameters() if p.requires_grad}
    assert any(MAGNITUDE in n for n in trainable) and any("lora_B" in n for n in trainable)


@pytest.mark.parametrize("method", [MethodType.LORA, MethodType.QLORA])
def test_a_dora_adapter_reloads_and_merges_to_the_model_trained(
    tmp_path: Path, tiny_model_dir: Path, method: MethodType
) -> None:
    from transformers import AutoModelForCausalLM

    outcome = run(tmp_path, tiny_model_dir, str(method), adapter="dora")
    trained = logits(outcome.model)
    reloaded = load_tuned(tiny_model_dir, outcome.trained_dir, method, device="cpu", bf16=False)
    torch.testing.assert_close(logits(reloaded), trained, atol=1e-5, rtol=1e-5)
    merged_dir = merge_adapter(tiny_model_dir, outcome.trained_dir, tmp_path / "merged", method=method)
    merged = logits(AutoModelForCausalLM.from_pretrained(merged_dir, dtype=torch.float32))
    if method == MethodType.LORA:
        torch.testing.assert_close(merged, trained, atol=1e-4, rtol=1e-4)
        return
    # QLoRA trains on a 4-bit base computing in bf16, and DoRA's norms were taken in bf16 there; the
    # merged model is fp32. Measured: the merge is off by a fifteenth of what training changed.
    base = logits(AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32))
    assert (merged - trained).abs().mean() < 0.1 * (trained - base).abs().mean()


def assert_strength_runs_from_base_to_tuned_and_is_published(
    model: Any, trained_dir: Path, tiny_model_dir: Path, merged_dir: Path
) -> None:
    """Strength 0 is the base, 1 the trained model, 0.6 in between; and the adapter published at 0.6,
    reloaded or merged, is the model at 0.6."""
    from transformers import AutoModelForCausalLM

    trained = logits(model)
    base = logits(AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32))
    assert not torch.allclose(trained, base, atol=1e-3)
    undo = set_scale(model, 0.0)
    torch.testing.assert_close(logits(model), base, atol=1e-5, rtol=1e-5)
    undo()
    torch.testing.assert_close(logits(model), trained, atol=0, rtol=0)

    set_scale(model, 0.6)
    halfway = logits(model)
    assert (halfway - base).abs().mean() < (trained - base).abs().mean()
    publish_scale(model, trained_dir, 0.6)
    reloaded = load_tuned(tiny_model_dir, trained_dir, MethodType.LORA, device="cpu", bf16=False)
    torch.testing.assert_close(logits(reloaded), halfway, atol=1e-5, rtol=1e-5)
    merge_adapter(tiny_model_dir, trained_dir, merged_dir, method=MethodType.LORA)
    merged = AutoModelForCausalLM.from_pretrained(merged_dir, dtype=torch.float32)
    torch.testing.assert_close(logits(merged), halfway, atol=1e-4, rtol=1e-4)


def test_a_dora_strength_runs_from_the_base_to_the_tuned_model_and_is_published(
    tmp_path: Path, tiny_model_dir: Path
) -> None:
    outcome = run(tmp_path, tiny_model_dir, "lora", adapter="dora")
    # Both the direction and the magnitude go back: scaling the direction alone would leave the
    # trained magnitudes on the base weights, and strength 0 would not be the base.
    assert_strength_runs_from_base_to_tuned_and_is_published(
        outcome.model, outcome.trained_dir, tiny_model_dir, tmp_path / "merged"
    )


def test_rslora_scales_by_the_square_root_of_the_rank(tmp_path: Path, tiny_model_dir: Path) -> None:
    outcome = run(tmp_path, tiny_model_dir, "lora", lora={"scaling": "rslora"})
    assert losses(outcome)[-1] < losses(outcome)[0] * 0.95
    config = json.loads((outcome.trained_dir / "adapter_config.json").read_text())
    assert (config["use_rslora"], config["use_dora"], config["r"], config["lora_alpha"]) == (True, False, 4, 8)
    layers = lora_layers(outcome.model)
    assert layers and all(layer.scaling["default"] == pytest.approx(8 / math.sqrt(4)) for layer in layers)
    assert not saved_magnitudes(outcome.trained_dir), "rsLoRA trains plain LoRA weights, no DoRA magnitudes"
    reloaded = load_tuned(tiny_model_dir, outcome.trained_dir, MethodType.LORA, device="cpu", bf16=False)
    assert all(layer.scaling["default"] == pytest.approx(4.0) for layer in lora_layers(reloaded))
    torch.testing.assert_close(logits(reloaded), logits(outcome.model), atol=1e-5, rtol=1e-5)


def test_the_plan_counts_the_parameters_dora_trains(tiny_model_dir: Path) -> None:
    from transformers import AutoConfig

    shape = ModelShape.from_config(AutoConfig.from_pretrained(tiny_model_dir))
    model, _ = load_for_training(tiny_model_dir, tiny_plan("lora", adapter="dora"), "cpu")
    trainable = {name: p.numel() for name, p in model.named_parameters() if p.requires_grad}
    assert sum(n for name, n in trainable.items() if MAGNITUDE in name) == shape.dora_magnitude_params()
    assert sum(n for name, n in trainable.items() if MAGNITUDE not in name) == shape.lora_params(4)


def test_a_dora_strength_of_zero_is_the_base_for_embeddings_too(tiny_model_dir: Path) -> None:
    from transformers import AutoModelForCausalLM

    plan = tiny_plan("lora", adapter="dora", lora={"targetModules": ["embed_tokens", "q_proj"]})
    model, _ = load_for_training(tiny_model_dir, plan, "cpu")
    with torch.no_grad():  # as if trained: a direction and magnitudes away from the base's norms
        for name, parameter in model.named_parameters():
            if "lora_B" in name or "lora_embedding_B" in name:
                parameter.normal_(std=0.1)
            elif MAGNITUDE in name:
                parameter.mul_(1.3)
    tuned = logits(model)
    base = logits(AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32))
    undo = set_scale(model, 0.0)
    torch.testing.assert_close(logits(model), base, atol=1e-5, rtol=1e-5)
    undo()
    torch.testing.assert_close(logits(model), tuned, atol=0, rtol=0)


IA3 = "ia3_l"


def test_ia3_trains_rescaling_vectors_and_nothing_else(tmp_path: Path, tiny_model_dir: Path) -> None:
    outcome = run(tmp_path, tiny_model_dir, "lora", lr=0.1, adapter="ia3")
    first, last = losses(outcome)[0], losses(outcome)[-1]
    # Rescaling a random tiny model's activations moves its loss less than a LoRA does (10.8 -> 10.5).
    assert last < first * 0.98, (first, last)
    config = json.loads((outcome.trained_dir / "adapter_config.json").read_text())
    assert config["peft_type"] == "IA3"
    assert (sorted(config["target_modules"]), config["feedforward_modules"]) == (
        ["down_proj", "k_proj", "v_proj"],
        ["down_proj"],
    )
    saved = load_file(str(outcome.trained_dir / "adapter_model.safetensors"))
    assert saved and all(key.endswith(IA3) for key in saved), sorted(saved)
    # 2 layers x (k, v, down); each vector moved away from 1, where peft starts it
    assert len(saved) == 6 and all((vector - 1).abs().max() > 1e-3 for vector in saved.values())
    trainable = [n for n, p in outcome.model.named_parameters() if p.requires_grad]
    assert trainable and all(IA3 in name for name in trainable), trainable


@pytest.mark.parametrize("method", [MethodType.LORA, MethodType.QLORA])
def test_an_ia3_adapter_reloads_merges_and_keeps_a_strength(
    tmp_path: Path, tiny_model_dir: Path, method: MethodType
) -> None:
    outcome = run(tmp_path, tiny_model_dir, str(method), lr=0.1, adapter="ia3")
    reloaded = load_tuned(tiny_model_dir, outcome.trained_dir, method, device="cpu", bf16=False)
    torch.testing.assert_close(logits(reloaded), logits(outcome.model), atol=1e-5, rtol=1e-5)
    if method == MethodType.LORA:  # QLoRA's merge and strength are LoRA's on the 4-bit base
        assert_strength_runs_from_base_to_tuned_and_is_published(
            outcome.model, outcome.trained_dir, tiny_model_dir, tmp_path / "merged"
        )


@pytest.mark.parametrize(
    "ia3",
    [{}, {"targetModules": ["all-linear"], "feedforwardModules": ["down_proj"]}],
    ids=["peft-default", "all-linear"],
)
def test_the_plan_counts_the_parameters_ia3_trains(tiny_model_dir: Path, ia3: dict[str, Any]) -> None:
    from transformers import AutoConfig

    shape = ModelShape.from_config(AutoConfig.from_pretrained(tiny_model_dir))
    plan = tiny_plan("lora", adapter="ia3", ia3=ia3)
    assert isinstance(plan, ResolvedIa3Training)
    model, _ = load_for_training(tiny_model_dir, plan, "cpu")
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert trainable == shape.ia3_params(plan.ia3)
