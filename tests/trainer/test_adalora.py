"""AdaLoRA: its rank budget is pruned on the plan's schedule, its schedule survives a checkpoint, and
the adapter trains, saves pruned, reloads, merges and keeps a strength like LoRA."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch
from safetensors.torch import load_file

from kubetune.api.v1alpha1 import MethodType, ResolvedAdaLoraTraining
from kubetune_trainer.plan import ModelShape
from kubetune_trainer.training.adalora import AdaLoraSchedule, kept_ranks, orthogonality_penalty
from kubetune_trainer.training.model import load_for_training, load_tuned
from tests.trainer.plans import tiny_plan
from tests.trainer.test_adapters import assert_strength_runs_from_base_to_tuned_and_is_published, logits
from tests.trainer.test_training_methods import losses, run

# 2 layers x 7 projections of the tiny model, each starting at rank 6 and left 2 on average.
RANKS = {"initialRank": 6, "targetRank": 2, "dropout": 0.0}
MATRICES = 14
IDS = torch.tensor([[1, 5, 9, 13, 17, 21, 25], [2, 6, 10, 14, 18, 22, 26]])


def adalora_plan() -> ResolvedAdaLoraTraining:
    """Unpacked, so that its 24 examples make 6 steps an epoch: 18 in all."""
    plan = tiny_plan("lora", adapter="adalora", adalora=RANKS, hyperparameters={"packing": False})
    assert isinstance(plan, ResolvedAdaLoraTraining)
    return plan


def step(model: Any, optimizer: Any, schedule: AdaLoraSchedule, global_step: int) -> None:
    """One optimizer step as the Trainer takes it, with the callback hooks it calls around it."""
    state = SimpleNamespace(global_step=global_step, is_world_process_zero=True)
    loss = model(input_ids=IDS, labels=IDS).loss
    loss.backward()
    schedule.on_pre_optimizer_step(None, state, None)
    optimizer.step()
    schedule.on_optimizer_step(None, state, None)
    optimizer.zero_grad()


def test_the_plan_lays_the_pruning_schedule_over_its_steps() -> None:
    ada = adalora_plan().adalora
    # 24 examples in batches of 4 for 3 epochs: 18 steps; a tenth of warm-up, the last 30% at the final ranks
    assert (ada.total_steps, ada.warmup_steps, ada.final_steps, ada.interval) == (18, 2, 5, 1)
    assert (ada.initial_rank, ada.target_rank, ada.alpha) == (6, 2, 12)
    default = tiny_plan("lora", adapter="adalora")
    assert isinstance(default, ResolvedAdaLoraTraining)
    assert (default.adalora.initial_rank, default.adalora.target_rank) == (12, 8)


def test_ranks_are_pruned_on_the_schedule_and_the_schedule_survives_a_checkpoint(
    tmp_path: Path, tiny_model_dir: Path
) -> None:
    plan = adalora_plan()
    ada = plan.adalora
    torch.manual_seed(0)
    model, _ = load_for_training(tiny_model_dir, plan, "cpu")
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    schedule = AdaLoraSchedule(model, ada.orthogonality_weight)
    budget = []
    for global_step in range(ada.total_steps):
        step(model, optimizer, schedule, global_step)
        budget.append(sum(kept_ranks(model).values()))
        if global_step == 7:  # a checkpoint in the middle of the pruning phase
            checkpoint = tmp_path / "checkpoint-8"
            checkpoint.mkdir()
            schedule.on_save(
                SimpleNamespace(output_dir=str(tmp_path)),
                SimpleNamespace(global_step=8, is_world_process_zero=True),
                None,
            )
            weights = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
            moments = copy.deepcopy(optimizer.state_dict())  # its tensors are updated in place
    start, end = ada.warmup_steps, ada.total_steps - ada.final_steps
    # The warm-up keeps every rank; pruning shrinks the budget, never growing it, down to the target.
    assert budget[: start + 1] == [6 * MATRICES] * (start + 1), budget
    assert all(b <= a for a, b in zip(budget[start:end], budget[start + 1 : end + 1], strict=True)), budget
    assert 2 * MATRICES < budget[start + 2] < 6 * MATRICES, budget
    assert budget[end:] == [2 * MATRICES] * (ada.total_steps - end), budget
    assert len(set(kept_ranks(model).values())) > 1, "the budget went to some weights more than others"

    # Resumed from the checkpoint: the same weights, optimizer and schedule state go on to the same ranks.
    torch.manual_seed(0)
    again, _ = load_for_training(tiny_model_dir, plan, "cpu")
    with torch.no_grad():
        for name, parameter in again.named_parameters():
            if name in weights:
                parameter.copy_(weights[name])
    resumed_optimizer = torch.optim.AdamW([p for p in again.parameters() if p.requires_grad], lr=1e-2)
    resumed_optimizer.load_state_dict(moments)
    resumed = AdaLoraSchedule(again, ada.orthogonality_weight)
    resumed.load_from(checkpoint)
    for global_step in range(8, ada.total_steps):
        step(again, resumed_optimizer, resumed, global_step)
    assert kept_ranks(again) == kept_ranks(model)
    assert resumed.rank_pattern == schedule.rank_pattern


def test_the_penalty_pulls_the_singular_vectors_towards_orthogonal(tiny_model_dir: Path) -> None:
    model, _ = load_for_training(tiny_model_dir, adalora_plan(), "cpu")
    before = orthogonality_penalty(model)
    # peft starts A and B near zero (std 0.02), so P Pᵀ is near 0, not I; the penalty's own gradient brings it up.
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=0.02)
    for _ in range(30):
        optimizer.zero_grad()
        orthogonality_penalty(model).backward()
        optimizer.step()
    assert orthogonality_penalty(model) < 0.5 * before


@pytest.mark.parametrize("method", [MethodType.LORA, MethodType.QLORA])
def test_adalora_trains_saves_pruned_reloads_merges_and_keeps_a_strength(
    tmp_path: Path, tiny_model_dir: Path, method: MethodType
) -> None:
    # The update starts at zero singular values between near-zero singular vectors: a higher rate than LoRA's.
    unpacked = {"packing": False}  # the plan counts an unpacked run's steps exactly
    outcome = run(
        tmp_path, tiny_model_dir, str(method), lr=0.05, adapter="adalora", adalora=RANKS, hyperparameters=unpacked
    )
    first, last = losses(outcome)[0], losses(outcome)[-1]
    assert last < first * 0.95, (first, last)
    trainable = [n for n, p in outcome.model.named_parameters() if p.requires_grad]
    assert any(".lora_E." in n for n in trainable), "singular values are trained"
    assert all(any(f".lora_{part}." in n for part in "ABE") for n in trainable), trainable

    config = json.loads((outcome.trained_dir / "adapter_config.json").read_text())
    assert (config["peft_type"], config["init_r"], config["target_r"]) == ("ADALORA", 6, 2)
    assert config["total_step"] == outcome.global_step == 18
    ranks = kept_ranks(outcome.model)
    assert sum(ranks.values()) == 2 * MATRICES
    # The published adapter holds only the ranks kept: A's rows per weight are its kept rank.
    saved = load_file(str(outcome.trained_dir / "adapter_model.safetensors"))
    rows = {
        k.removeprefix("base_model.model.").removesuffix(".lora_A"): v.shape[0]
        for k, v in saved.items()
        if k.endswith(".lora_A")
    }
    assert sorted(rows.values()) == sorted(ranks.values()) and sum(rows.values()) == 2 * MATRICES

    reloaded = load_tuned(tiny_model_dir, outcome.trained_dir, method, device="cpu", bf16=False)
    # On a 4-bit base peft 0.21 rebuilds each pruned layer in the base's bf16 compute type before it loads
    # the saved fp32 weights into it: the reloaded singular values are bf16-rounded (measured: logits
    # within 0.004), as in any peft consumer of the adapter.
    tolerance = 1e-2 if method == MethodType.QLORA else 1e-5
    torch.testing.assert_close(logits(reloaded), logits(outcome.model), atol=tolerance, rtol=tolerance)
    if method == MethodType.QLORA:  # QLoRA's merge and strength are LoRA's on the 4-bit base
        return
    assert_strength_runs_from_base_to_tuned_and_is_published(
        outcome.model, outcome.trained_dir, tiny_model_dir, tmp_path / "merged"
    )


def test_the_plan_counts_the_parameters_adalora_trains(tiny_model_dir: Path) -> None:
    from transformers import AutoConfig

    shape = ModelShape.from_config(AutoConfig.from_pretrained(tiny_model_dir))
    model, _ = load_for_training(tiny_model_dir, adalora_plan(), "cpu")
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) == shape.adalora_params(6)
