"""Bottleneck adapters (kubetune's own module): they start as the identity, train their projections and
nothing else, switch off to the base exactly, save and reload equal, checkpoint only themselves, and
are published as an adapter with no merged model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from kubetune.api.v1alpha1 import ArtifactFormat, MethodType, ResolvedBottleneckTraining
from kubetune_trainer.plan import ModelShape, resolve_formats
from kubetune_trainer.training.bottleneck import CONFIG_FILE, WEIGHTS_FILE, Bottleneck
from kubetune_trainer.training.model import load_for_training, load_tuned
from tests.builders import spec
from tests.trainer.jobs import run_unmergeable_adapter
from tests.trainer.plans import SMOL, tiny_plan
from tests.trainer.test_adapters import logits
from tests.trainer.test_training_methods import losses, run


def base_logits(model_dir: Path) -> torch.Tensor:
    from transformers import AutoModelForCausalLM

    return logits(AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32))


def test_the_plan_sizes_the_bottleneck_by_the_model_and_publishes_the_adapter_alone() -> None:
    plan = tiny_plan("lora", adapter="bottleneck")
    assert isinstance(plan, ResolvedBottleneckTraining)
    # tiny_plan plans for SmolLM2's shape: 576 / 16 (the tiny model's 64 / 16 is under the floor of 8: below)
    assert SMOL.hidden_size == 576 and (plan.bottleneck.size, plan.bottleneck.placement) == (36, "mlp")
    smol = spec(method={"adapter": "bottleneck"}, resources={"gpus": 0})
    assert resolve_formats(smol) == [ArtifactFormat.ADAPTER]


@pytest.mark.parametrize(("placement", "per_layer"), [("mlp", 1), ("attention-and-mlp", 2)])
def test_a_new_adapter_is_the_identity_and_the_plan_counts_its_parameters(
    tiny_model_dir: Path, placement: str, per_layer: int
) -> None:
    from transformers import AutoConfig

    plan = tiny_plan("lora", adapter="bottleneck", bottleneck={"size": 6, "placement": placement})
    assert isinstance(plan, ResolvedBottleneckTraining)
    model, _ = load_for_training(tiny_model_dir, plan, "cpu")
    assert len(model.adapters()) == 2 * per_layer  # the tiny model's 2 layers
    torch.testing.assert_close(logits(model), base_logits(tiny_model_dir), atol=0, rtol=0)
    shape = ModelShape.from_config(AutoConfig.from_pretrained(tiny_model_dir))
    trainable = {n: p.numel() for n, p in model.named_parameters() if p.requires_grad}
    assert all(".bottleneck." in name for name in trainable), sorted(trainable)
    assert sum(trainable.values()) == shape.bottleneck_params(plan.bottleneck)


@pytest.mark.parametrize("method", [MethodType.LORA, MethodType.QLORA])
def test_bottleneck_adapters_train_switch_off_to_the_base_and_reload_equal(
    tmp_path: Path, tiny_model_dir: Path, method: MethodType
) -> None:
    outcome = run(tmp_path, tiny_model_dir, str(method), lr=0.01, adapter="bottleneck")
    first, last = losses(outcome)[0], losses(outcome)[-1]
    assert last < first * 0.95, (first, last)
    model = outcome.model
    assert all(adapter.up.weight.abs().max() > 0 for adapter in model.adapters()), "every up-projection trained"
    saved = load_file(str(outcome.trained_dir / WEIGHTS_FILE))
    assert saved and all(".bottleneck." in key for key in saved), sorted(saved)
    assert json.loads((outcome.trained_dir / CONFIG_FILE).read_text()) == {"placement": "mlp", "size": 36}

    tuned = logits(model)
    with model.disable_adapter():
        off = logits(model)
    if method == MethodType.LORA:  # QLoRA's base is its 4-bit rounding, not the fp32 checkpoint
        torch.testing.assert_close(off, base_logits(tiny_model_dir), atol=1e-5, rtol=1e-5)
    assert not torch.allclose(tuned, off, atol=1e-3)
    reloaded = load_tuned(tiny_model_dir, outcome.trained_dir, method, device="cpu", bf16=False)
    assert isinstance(reloaded.adapters()[0], Bottleneck)
    torch.testing.assert_close(logits(reloaded), tuned, atol=1e-5, rtol=1e-5)


def test_kubetune_run_checkpoints_and_publishes_only_the_adapters(tmp_path: Path, tiny_model_dir: Path) -> None:
    resolved, lineage, version = run_unmergeable_adapter(
        tmp_path,
        tiny_model_dir,
        {"adapter": "bottleneck", "bottleneck": {"placement": "attention-and-mlp"}},
        hyperparameters={"learningRate": 0.01},
    )
    assert (resolved["adapter"], resolved["bottleneck"]) == (
        "bottleneck",
        {"size": 8, "placement": "attention-and-mlp"},
    )
    published = {artifact["path"] for artifact in lineage["artifacts"]}
    assert f"adapter/{WEIGHTS_FILE}" in published and not any(p.startswith("merged/") for p in published), published
    assert json.loads((version / "adapter" / CONFIG_FILE).read_text()) == resolved["bottleneck"]
    (perplexity,) = [m for m in lineage["evaluation"]["metrics"] if m["name"] == "perplexity"]
    assert perplexity["tuned"] < perplexity["base"], perplexity
    # Every checkpoint holds the adapters alone, not the frozen base (a resumed run loads them back).
    checkpoints = sorted((tmp_path / "runs" / "tiny-job" / "checkpoints" / "tiny-job").glob("checkpoint-*"))
    assert checkpoints
    for checkpoint in checkpoints:
        weights = load_file(str(checkpoint / "model.safetensors"))
        assert weights and all(".bottleneck." in key for key in weights), sorted(weights)[:3]


def test_a_model_without_the_placed_sub_layers_is_refused_naming_the_field() -> None:
    from kubetune.api.v1alpha1 import ResolvedBottleneck
    from kubetune_trainer.errors import ConfigurationError
    from kubetune_trainer.training.bottleneck import BottleneckModel

    other = torch.nn.Sequential(torch.nn.Linear(8, 8))  # no mlp.down_proj: not a Llama-style layer
    with pytest.raises(ConfigurationError, match=r"^spec\.method\.bottleneck\.placement: .*mlp\.down_proj"):
        BottleneckModel(other, ResolvedBottleneck(size=4, placement="mlp"))
