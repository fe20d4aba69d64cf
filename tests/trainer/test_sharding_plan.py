"""resources.sharding in the plan: auto shards only when one process's memory is too small, the
pre-flight estimates per process, and a plan that fits neither way names the fields to change."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from kubetune.api.v1alpha1 import MethodType, PreflightReport, ResolvedTraining, Sharding
from kubetune_trainer.hardware import Hardware
from kubetune_trainer.plan import choose_sharding, preflight_estimate, resolve_training
from tests.trainer.plans import CPU, L4, NO_REPLAY, SEVEN_B, SMOL, spec

TWO_CPU_NODES = dataclasses.replace(CPU, nodes=2)


def planned(hardware: Hardware, memory_gib: float | None, **fields: Any) -> tuple[ResolvedTraining, PreflightReport]:
    """The plan for full fine-tuning of SmolLM2-135M on ``hardware`` with ``memory_gib`` per pod, sharding
    chosen as the trainer's pre-flight chooses it."""
    job = spec(**{"method": {"type": "full"}, "hyperparameters": {"sequenceLength": 512}, **fields})
    resolved = resolve_training(
        job, hardware, train_examples=1000, token_lengths=[400] * 1000, shape=SMOL, replay=NO_REPLAY
    )

    def estimate(candidate: ResolvedTraining) -> PreflightReport:
        return preflight_estimate(candidate, SMOL, hardware, train_tokens=400_000, total_memory_limit_gib=memory_gib)

    return choose_sharding(job, resolved, hardware, estimate)


def per_process_gib(sharding: str) -> float:
    """The estimate for each sharding with memory unlimited (0: not checked)."""
    resolved, report = planned(TWO_CPU_NODES, 0.0, resources={"nodes": 2, "gpus": 0, "sharding": sharding})
    assert resolved.hyperparameters.sharding == sharding and report.estimated_memory_gib is not None
    return report.estimated_memory_gib


def test_auto_shards_only_a_job_whose_unsharded_state_does_not_fit_one_process() -> None:
    replicated, sharded = per_process_gib("none"), per_process_gib("fsdp")
    assert sharded < replicated - 1.0, "sharding over two processes must save half the state (1.6 GiB here)"
    auto = {"resources": {"nodes": 2, "gpus": 0}}
    resolved, report = planned(TWO_CPU_NODES, replicated * 1.1, **auto)
    assert resolved.hyperparameters.sharding == Sharding.NONE and report.passed, "DDP while it fits"
    between = (replicated + sharded) / 2
    resolved, report = planned(TWO_CPU_NODES, between, **auto)
    assert resolved.hyperparameters.sharding == Sharding.FSDP and report.passed, report.message
    assert report.message.startswith("sharding auto chose fsdp") and "per process (sharded over 2)" in report.message


def test_a_plan_that_fits_neither_way_names_what_to_change() -> None:
    tight = per_process_gib("fsdp") * 0.8
    resolved, report = planned(TWO_CPU_NODES, tight, resources={"nodes": 2, "gpus": 0})
    assert not report.passed and resolved.hyperparameters.sharding == Sharding.FSDP
    for field in ("spec.resources.memory", "spec.resources.nodes", "spec.hyperparameters.batchSize"):
        assert field in report.message, report.message
    assert "set spec.method.type to lora" in report.message, "full fine-tuning: an adapter trains in less"
    _, unsharded = planned(TWO_CPU_NODES, tight, resources={"nodes": 2, "gpus": 0, "sharding": "none"})
    assert not unsharded.passed and "set spec.resources.sharding to fsdp" in unsharded.message


@pytest.mark.parametrize("sharding", ["auto", "fsdp"])
def test_one_process_is_never_sharded(sharding: str) -> None:
    """kubetune run plans one node whatever the manifest asks: nothing to shard over."""
    resolved, _ = planned(CPU, 0.1, resources={"nodes": 2, "gpus": 0, "sharding": sharding})
    assert resolved.hyperparameters.sharding == Sharding.NONE


def test_fsdp_trains_lora_where_auto_would_pick_qlora() -> None:
    """kubetune does not shard 4-bit weights: method auto on a GPU is LoRA under fsdp, and auto sharding
    leaves a QLoRA plan unsharded."""
    two_gpus = dataclasses.replace(L4, gpu_count=2)
    job = spec(resources={"gpus": 2, "sharding": "fsdp"})
    resolved = resolve_training(
        job, two_gpus, train_examples=500, token_lengths=[100] * 500, shape=SMOL, replay=NO_REPLAY
    )
    assert (resolved.method, resolved.hyperparameters.sharding) == (MethodType.LORA, Sharding.FSDP)
    auto = spec(resources={"gpus": 2})
    resolved = resolve_training(
        auto, two_gpus, train_examples=500, token_lengths=[100] * 500, shape=SMOL, replay=NO_REPLAY
    )
    assert (resolved.method, resolved.hyperparameters.sharding) == (MethodType.QLORA, Sharding.NONE)


def test_a_sharded_gpu_plan_that_does_not_fit_suggests_qlora_only_unsharded() -> None:
    """qlora with fsdp is refused (kubetune does not shard 4-bit weights), so the hint says both."""
    two_gpu_nodes = dataclasses.replace(L4, nodes=2)
    job = spec(method={"type": "full"}, resources={"nodes": 2, "gpus": 1, "sharding": "fsdp"})
    resolved = resolve_training(
        job, two_gpu_nodes, train_examples=1000, token_lengths=[400] * 1000, shape=SEVEN_B, replay=NO_REPLAY
    )
    assert resolved.hyperparameters.sharding == Sharding.FSDP
    report = preflight_estimate(resolved, SEVEN_B, two_gpu_nodes, train_tokens=400_000, total_memory_limit_gib=None)
    assert not report.passed
    assert "set spec.method.type to qlora with spec.resources.sharding none" in report.message, report.message
    assert "spec.resources.gpuMemory" in report.message
