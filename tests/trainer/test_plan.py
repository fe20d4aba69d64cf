"""Auto values for the hardware, the user's values winning, and pre-flight estimates."""

from __future__ import annotations

import dataclasses
import re

import pytest

from kubetune.api.v1alpha1 import (
    QUANTITY_PATTERN,
    AdapterType,
    LoraScaling,
    MethodType,
    ResolvedAdapterTraining,
    ResolvedFullTraining,
    ResolvedIa3Training,
    ResolvedTraining,
)
from kubetune_trainer.errors import ConfigurationError
from kubetune_trainer.hardware import quantity_gib, training_hardware
from kubetune_trainer.plan import DEFAULTS, ModelShape, preflight_estimate, resolve_training
from tests.trainer.plans import CPU, L4, NO_REPLAY, SEVEN_B, SMOL, spec


def test_auto_method_fits_the_hardware() -> None:
    assert (
        resolve_training(
            spec(), CPU, train_examples=500, token_lengths=[100] * 500, shape=SMOL, replay=NO_REPLAY
        ).method
        == MethodType.LORA
    )
    assert (
        resolve_training(spec(), L4, train_examples=500, token_lengths=[100] * 500, shape=SMOL, replay=NO_REPLAY).method
        == MethodType.QLORA
    )


def test_user_values_win_and_everything_is_filled() -> None:
    resolved = resolve_training(
        spec(
            method={"type": "full"},
            hyperparameters={"learningRate": 3e-5, "epochs": 1, "packing": False, "sequenceLength": 256},
        ),
        L4,
        train_examples=500,
        token_lengths=[100] * 500,
        shape=SMOL,
        replay=NO_REPLAY,
    )
    hp = resolved.hyperparameters
    assert (resolved.method, hp.learning_rate, hp.epochs, hp.packing, hp.sequence_length) == (
        MethodType.FULL,
        3e-5,
        1,
        False,
        256,
    )
    assert isinstance(resolved, ResolvedFullTraining)
    assert all(value is not None for value in hp.model_dump().values())


def test_sequence_length_covers_the_99th_percentile() -> None:
    lengths = [100] * 990 + [700] * 10
    resolved = resolve_training(spec(), CPU, train_examples=1000, token_lengths=lengths, shape=SMOL, replay=NO_REPLAY)
    assert resolved.hyperparameters.sequence_length == 128
    lengths = [100] * 980 + [700] * 20
    assert (
        resolve_training(
            spec(), CPU, train_examples=1000, token_lengths=lengths, shape=SMOL, replay=NO_REPLAY
        ).hyperparameters.sequence_length
        == 704
    )


def test_the_sequence_length_is_the_tasks_and_longer_replay_rows_are_truncated() -> None:
    """Replay rows (a general prompt and up to 96 answer tokens) do not stretch the task's packed rows:
    the sequence length comes from the task, and the packed-row count from the truncated replay."""
    replay = NO_REPLAY.model_copy(update={"enabled": True, "examples": 200, "fraction": 1.0})
    task = resolve_training(spec(), CPU, train_examples=200, token_lengths=[60] * 200, shape=SMOL, replay=NO_REPLAY)
    mixed = resolve_training(
        spec(),
        CPU,
        train_examples=400,
        token_lengths=[60] * 200,
        shape=SMOL,
        replay=replay,
        replay_token_lengths=[300] * 200,
    )
    assert task.hyperparameters.sequence_length == mixed.hyperparameters.sequence_length == 64
    # 200 task rows of 60 tokens and 200 replay rows truncated to 64: 24,800 tokens, 431 packed rows
    # of 64 at 90% fill, 54 optimizer steps of 8 per epoch, 3 epochs, evaluated 5 times.
    assert mixed.hyperparameters.eval_steps == 54 * 3 // 5


def test_estimates_grow_with_the_job_and_refuse_what_cannot_fit() -> None:
    small = resolve_training(
        spec(method={"type": "qlora"}, resources={"gpus": 1}),
        L4,
        train_examples=1000,
        token_lengths=[512] * 1000,
        shape=SEVEN_B,
        replay=NO_REPLAY,
    )
    fits = preflight_estimate(small, SEVEN_B, L4, train_tokens=512_000, total_memory_limit_gib=None)
    assert fits.passed and fits.estimated_memory_gib is not None and fits.estimated_memory_gib < 24
    full = resolve_training(
        spec(method={"type": "full"}),
        L4,
        train_examples=1000,
        token_lengths=[512] * 1000,
        shape=SEVEN_B,
        replay=NO_REPLAY,
    )
    refused = preflight_estimate(full, SEVEN_B, L4, train_tokens=512_000, total_memory_limit_gib=None)
    assert not refused.passed
    assert (
        "exceeds the 24.0 GiB of 'NVIDIA L4'" in refused.message and "set spec.method.type to qlora" in refused.message
    )
    assert refused.estimated_memory_gib is not None and refused.estimated_memory_gib > fits.estimated_memory_gib
    longer = preflight_estimate(small, SEVEN_B, L4, train_tokens=1_024_000, total_memory_limit_gib=None)
    assert (
        longer.estimated_minutes is not None
        and fits.estimated_minutes is not None
        and longer.estimated_minutes > fits.estimated_minutes
    )


def test_every_nodes_processes_share_the_batch_and_the_work() -> None:
    """resources.nodes: 4 L4 nodes x 2 GPUs are 8 processes. The effective batch stays what one node
    would take (each process accumulates an eighth of it), and the estimate divides the time by 4."""

    def plan(nodes: int) -> tuple[ResolvedTraining, float]:
        hardware = dataclasses.replace(L4, gpu_count=2, nodes=nodes)
        assert hardware.processes == 2 * nodes
        manifest = spec(
            method={"type": "qlora"}, hyperparameters={"batchSize": 1}, resources={"gpus": 2, "nodes": nodes}
        )
        tokens = [512] * 4000
        resolved = resolve_training(
            manifest, hardware, train_examples=4000, token_lengths=tokens, shape=SEVEN_B, replay=NO_REPLAY
        )
        estimate = preflight_estimate(resolved, SEVEN_B, hardware, train_tokens=2_048_000, total_memory_limit_gib=None)
        assert estimate.estimated_minutes is not None
        return resolved, estimate.estimated_minutes

    (one, one_minutes), (four, four_minutes) = plan(1), plan(4)
    per_step = [r.hyperparameters.batch_size * r.hyperparameters.gradient_accumulation_steps for r in (one, four)]
    assert per_step[0] == 4 * per_step[1], "the processes' batches add up to the same effective batch"
    assert four_minutes == pytest.approx(one_minutes / 4, rel=0.05)


def test_a_local_run_is_one_node_whatever_the_manifest_asks() -> None:
    manifest = spec(resources={"gpus": 0, "nodes": 4})
    assert training_hardware(manifest.resources, preflight=False, local=True).nodes == 1
    assert training_hardware(manifest.resources, preflight=False).nodes == 4
    assert training_hardware(manifest.resources, preflight=True).processes == 4


@pytest.mark.parametrize("suffix", ["", "k", "M", "G", "T", "P", "Ki", "Mi", "Gi", "Ti", "Pi"])
def test_every_gpu_memory_the_api_admits_is_read_by_the_preflight(suffix: str) -> None:
    declared = f"1.5{suffix}"
    assert re.fullmatch(QUANTITY_PATTERN, declared), "the API must admit it"
    assert quantity_gib(declared) == pytest.approx(1.5 * {**DECIMAL, **BINARY}[suffix] / 2**30)
    with pytest.raises(ConfigurationError, match="not a memory quantity"):
        quantity_gib(f"1.5{suffix}x")


DECIMAL = {"": 1, "k": 1e3, "M": 1e6, "G": 1e9, "T": 1e12, "P": 1e15}
BINARY = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50}


def test_the_adapter_is_plain_lora_with_standard_scaling_unless_the_manifest_names_another() -> None:
    def resolve(**method: object) -> ResolvedAdapterTraining:
        resolved = resolve_training(
            spec(method=method), L4, train_examples=1000, token_lengths=[512] * 1000, shape=SEVEN_B, replay=NO_REPLAY
        )
        assert isinstance(resolved, ResolvedAdapterTraining)
        return resolved

    lora = resolve()
    assert (lora.adapter, lora.lora.scaling) == (AdapterType.LORA, LoraScaling.STANDARD)
    dora = resolve(adapter="dora", lora={"scaling": "rslora"})
    assert (dora.adapter, dora.lora.scaling) == (AdapterType.DORA, LoraScaling.RSLORA)
    # DoRA trains a magnitude per output feature besides the low-rank matrices: 16 bytes each
    # (weight, gradient, Adam's two moments).
    lora_gib, dora_gib = (
        preflight_estimate(plan, SEVEN_B, L4, train_tokens=512_000, total_memory_limit_gib=None).estimated_memory_gib
        for plan in (lora, dora)
    )
    assert lora_gib is not None and dora_gib is not None
    assert dora_gib - lora_gib == pytest.approx(SEVEN_B.dora_magnitude_params() * 16 * 1.2 / 2**30, abs=0.01)


def test_an_ia3_plan_takes_peft_modules_for_the_architecture_or_the_manifests() -> None:
    def resolve(shape: ModelShape = SMOL, **method: object) -> ResolvedIa3Training:
        resolved = resolve_training(
            spec(method={"adapter": "ia3", **method}),
            CPU,
            train_examples=500,
            token_lengths=[100] * 500,
            shape=shape,
            replay=NO_REPLAY,
        )
        assert isinstance(resolved, ResolvedIa3Training)
        return resolved

    default = resolve()
    assert (default.ia3.target_modules, default.ia3.feedforward_modules) == (
        ["k_proj", "v_proj", "down_proj"],
        ["down_proj"],
    )
    assert default.hyperparameters.learning_rate == DEFAULTS.lr_ia3 and default.ia3.strengths == list(
        DEFAULTS.adapter_strengths
    )
    named = resolve(ia3={"targetModules": ["q_proj", "up_proj"], "feedforwardModules": ["up_proj"], "scale": 0.7})
    assert (named.ia3.target_modules, named.ia3.feedforward_modules, named.ia3.strengths) == (
        ["q_proj", "up_proj"],
        ["up_proj"],
        [0.7],
    )
    everything = resolve(ia3={"targetModules": ["all-linear"], "feedforwardModules": ["down_proj"]})
    assert (everything.ia3.target_modules, everything.ia3.feedforward_modules) == (["all-linear"], ["down_proj"])
    unknown = dataclasses.replace(SMOL, model_type="mystery")
    with pytest.raises(ConfigurationError, match=r"spec\.method\.ia3\.targetModules: .* 'mystery'"):
        resolve(unknown)
    assert resolve(unknown, ia3={"targetModules": ["attn"]}).ia3.target_modules == ["attn"]
