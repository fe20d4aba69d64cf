"""Resolved plans for tests, made by the plan itself (never a dict literal that could drift from it)."""

from __future__ import annotations

from kubetune.api.v1alpha1 import ReplaySpec, ResolvedTraining
from kubetune_trainer.hardware import Hardware
from kubetune_trainer.plan import ModelShape, resolve_replay, resolve_training
from tests.builders import spec

CPU = Hardware("cpu", 0, "cpu", 0.0, False, 24.0, 2)
L4 = Hardware("cuda", 1, "NVIDIA L4", 24.0, True, 64.0, 8)
SMOL = ModelShape(
    hidden_size=576,
    layers=30,
    intermediate_size=1536,
    vocab_size=49152,
    attention_heads=9,
    kv_heads=3,
    tied_embeddings=True,
    max_positions=8192,
    model_type="llama",
)
SEVEN_B = ModelShape(
    hidden_size=4096,
    layers=32,
    intermediate_size=14336,
    vocab_size=128256,
    attention_heads=32,
    kv_heads=8,
    tied_embeddings=False,
    max_positions=8192,
    model_type="llama",
)
NO_REPLAY = resolve_replay(ReplaySpec(enabled=False), task_train_examples=0, pool_size=0)

# What the tiny training tests pin: short rows, a constant rate and no early stopping, so that a few
# steps on a tiny model move the loss measurably and deterministically.
TINY_TRAINING = {
    "epochs": 3,
    "lrScheduler": "constant",
    "warmupRatio": 0.0,
    "batchSize": 4,
    "gradientAccumulationSteps": 1,
    "sequenceLength": 64,
    "earlyStoppingPatience": 0,
    "seed": 3,
    "evalSteps": 100,
}


def tiny_plan(
    method: str,
    lr: float = 5e-3,
    *,
    adapter: str | None = None,
    lora: dict[str, object] | None = None,
    ia3: dict[str, object] | None = None,
    adalora: dict[str, object] | None = None,
    prefix: dict[str, object] | None = None,
    bottleneck: dict[str, object] | None = None,
    hyperparameters: dict[str, object] | None = None,
) -> ResolvedTraining:
    """The plan for a few steps of ``method`` on the tiny test model (LoRA r=4, no dropout; ``adapter``,
    ``lora``, ``ia3``, ``adalora``, ``prefix`` and ``bottleneck`` as in the manifest's ``method`` block; ``hyperparameters`` over
    TINY_TRAINING's)."""
    lora_block = {"r": 4, "alpha": 8, "dropout": 0.0, **(lora or {})}
    method_block: dict[str, object] = {"type": method, "allowCpuQlora": True}
    # the other adapters are configured by blocks of their own; method.lora is refused with them.
    if adapter not in ("ia3", "adalora", "prefix", "bottleneck", "osf"):
        method_block["lora"] = lora_block
    if ia3:
        method_block["ia3"] = ia3
    if adalora:
        method_block["adalora"] = adalora
    if prefix:
        method_block["prefix"] = prefix
    if bottleneck:
        method_block["bottleneck"] = bottleneck
    manifest = spec(
        method=method_block if adapter is None else {**method_block, "adapter": adapter},
        hyperparameters={**TINY_TRAINING, "learningRate": lr, **(hyperparameters or {})},
        resources={"gpus": 0},
    )
    return resolve_training(manifest, CPU, train_examples=24, token_lengths=[16] * 24, shape=SMOL, replay=NO_REPLAY)
