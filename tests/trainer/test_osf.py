"""Orthogonal subspace fine-tuning (peft's OSF): each adapted weight's largest singular directions frozen,
the others trained; on a 16-bit base (auto never picks QLoRA for it), at full fine-tuning's rate, published
as an adapter and merged like a LoRA."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file

from kubetune.api.v1alpha1 import MethodType, ResolvedAdapterTraining, ResolvedOsfTraining, ResolvedTraining
from kubetune_trainer.hardware import Hardware
from kubetune_trainer.plan import DEFAULTS, ModelShape, preflight_estimate, resolve_training
from kubetune_trainer.training.model import load_for_training
from tests.builders import spec
from tests.trainer.jobs import run_unmergeable_adapter
from tests.trainer.plans import CPU, L4, NO_REPLAY, SMOL

PROJECTION = "model.layers.0.self_attn.q_proj.weight"


def plan_for(method: dict[str, object], hardware: Hardware = L4) -> ResolvedTraining:
    manifest = spec(method=method, resources={"gpus": 1 if hardware is L4 else 0})
    return resolve_training(
        manifest, hardware, train_examples=200, token_lengths=[64] * 200, shape=SMOL, replay=NO_REPLAY
    )


def test_auto_picks_a_16_bit_base_and_full_fine_tuning_rate_for_osf() -> None:
    osf = plan_for({"adapter": "osf"})
    assert isinstance(osf, ResolvedOsfTraining)
    assert osf.method == MethodType.LORA, "a 4-bit base has no 16-bit weights to decompose"
    assert (osf.osf.preserved_fraction, osf.osf.target_modules) == (DEFAULTS.osf_preserved_fraction, ["all-linear"])
    assert osf.hyperparameters.learning_rate == DEFAULTS.lr_full
    lora = plan_for({})
    assert isinstance(lora, ResolvedAdapterTraining) and lora.method == MethodType.QLORA
    chosen = plan_for({"adapter": "osf", "osf": {"preservedFraction": 0.75, "targetModules": ["q_proj"]}}, CPU)
    assert isinstance(chosen, ResolvedOsfTraining)
    assert (chosen.osf.preserved_fraction, chosen.osf.target_modules) == (0.75, ["q_proj"])


def test_the_memory_estimate_counts_the_trained_half_of_the_model() -> None:
    """Half of SmolLM2's projections' singular directions are ~59% of its parameters: OSF's optimizer
    state is a full fine-tune's scale, not a LoRA's, and the pre-flight says so."""
    osf, lora = plan_for({"adapter": "osf"}, CPU), plan_for({}, CPU)
    assert isinstance(osf, ResolvedOsfTraining)
    trained = SMOL.osf_params(osf.osf)
    assert 0.5 * SMOL.params < trained < 0.65 * SMOL.params
    estimate = {
        name: preflight_estimate(plan, SMOL, CPU, train_tokens=10_000, total_memory_limit_gib=None).estimated_memory_gib
        for name, plan in (("osf", osf), ("lora", lora))
    }
    assert estimate["osf"] > estimate["lora"] + trained * 16 / 2**30, estimate


def test_osf_trains_the_counted_components_of_the_adapted_weights(tiny_model_dir: Path) -> None:
    from transformers import AutoConfig

    plan = plan_for({"adapter": "osf", "osf": {"preservedFraction": 0.25}}, CPU)
    assert isinstance(plan, ResolvedOsfTraining)
    model, _ = load_for_training(tiny_model_dir, plan, "cpu", bf16=False)
    trainable = {name: p for name, p in model.named_parameters() if p.requires_grad}
    assert trainable and all("osf_svd_params" in name for name in trainable), sorted(trainable)
    shape = ModelShape.from_config(AutoConfig.from_pretrained(tiny_model_dir))
    assert sum(p.numel() for p in trainable.values()) == shape.osf_params(plan.osf)


def _in_frozen_directions(delta: torch.Tensor, base: torch.Tensor, preserved: float) -> float:
    """The share of ``delta``'s norm inside the span of ``base``'s top singular directions (both sides)."""
    u, _, vh = torch.linalg.svd(base.float(), full_matrices=False)
    kept = int(min(base.shape) * preserved)
    inside = u[:, :kept].T @ delta.float() @ vh[:kept].T
    return float(inside.norm() / delta.norm())


def test_kubetune_run_trains_osf_off_the_largest_directions_and_publishes_it_merged(
    tmp_path: Path, tiny_model_dir: Path
) -> None:
    resolved, lineage, version = run_unmergeable_adapter(
        tmp_path,
        tiny_model_dir,
        {"adapter": "osf"},
        hyperparameters={"epochs": 2, "learningRate": 0.01, "batchSize": 2, "gradientAccumulationSteps": 1},
    )
    assert (resolved["adapter"], resolved["method"], resolved["osf"]) == (
        "osf",
        "lora",
        {"preservedFraction": 0.5, "targetModules": ["all-linear"]},
    )
    published = {artifact["path"].split("/")[0] for artifact in lineage["artifacts"]}
    assert {"adapter", "merged"} <= published, published
    config = json.loads((version / "adapter" / "adapter_config.json").read_text())
    assert (config["peft_type"], config["effective_rank"]) == ("OSF", 0.5)
    (perplexity,) = [m for m in lineage["evaluation"]["metrics"] if m["name"] == "perplexity"]
    assert perplexity["tuned"] < perplexity["base"], perplexity

    # The merged weights moved, and mostly outside the base's largest singular directions: a random
    # change of a square weight puts half its norm inside the top half of both sides' directions.
    base = load_file(str(tiny_model_dir / "model.safetensors"))[PROJECTION]
    (merged_file,) = (version / "merged").glob("*.safetensors")
    delta = load_file(str(merged_file))[PROJECTION].float() - base.float()
    assert delta.norm() > 1e-3 * base.norm(), "the weight was trained"
    assert _in_frozen_directions(delta, base, 0.5) < 0.25
