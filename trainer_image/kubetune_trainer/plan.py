"""Resolve ``auto`` for the hardware at hand, and estimate memory and time before training.

Defaults follow common QLoRA/LoRA practice (Axolotl, TRL, the QLoRA paper) but lean
conservative on learning rate and rank: a small model tuned hard on a narrow task forgets
general ability fast, and kubetune's default must lose at most 5% on a general regression set.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kubetune.api.v1alpha1 import (
    FineTuneJobSpec,
    HyperparametersSpec,
    LoraSpec,
    LrScheduler,
    MethodType,
    PreflightReport,
    ReplaySpec,
    ResolvedReplay,
    ResolvedTraining,
)
from kubetune_trainer.general_answers import MAX_NEW_TOKENS as ANSWER_MAX_NEW_TOKENS

LLAMA_LINEAR_MODULES = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


@dataclass(frozen=True)
class Defaults:
    """Every auto value in one place, with the reason next to it."""

    lora_r: int = 8  # small rank: enough for task adaptation, less capacity to overwrite general skills
    lora_alpha_per_r: int = 2  # alpha = 2r, the common scaling
    lora_dropout: float = 0.05
    # Small models tuned on small datasets need a higher LoRA rate than the 1e-4..2e-4 common
    # for 7B+ models: measured on the example tickets (SmolLM2-135M), 2e-4 for 30 steps only
    # taught the label format (accuracy 0.12 -> 0.22); forgetting is held in check by replay
    # data and the regression gate, not by a timid rate.
    lr_lora: float = 5e-4
    lr_qlora: float = 2e-4  # QLoRA paper uses 1e-4..2e-4
    lr_full: float = 1e-5
    scheduler: LrScheduler = LrScheduler.COSINE
    warmup_ratio: float = 0.05
    weight_decay: float = 0.0  # LoRA adapters rarely benefit; full fine-tunes get it via spec
    max_grad_norm: float = 1.0
    effective_batch: int = 8  # packed rows per optimizer step: enough updates on small datasets
    early_stopping_patience: int = 2
    evaluations_per_run: int = 5  # each costs a validation pass; early stopping needs a few
    seed: int = 42
    # Self-distillation replay rows per task training row. On the example tickets 0.3 kept the
    # likelihood of the base's answers (+21%) but lost 18% of the known answers; docs/defaults.md has
    # the measurements behind 0.5 (docs/measurements/forgetting.json: three datasets, replay on and off).
    replay_fraction: float = 0.5
    # A small task still gets enough replay to anchor the model: its few rows are seen every epoch.
    replay_min_examples: int = 48
    max_sequence_length: int = 2048
    checkpointing_min_params: float = 1e9  # gradient checkpointing pays off on bigger models


DEFAULTS = Defaults()


@dataclass(frozen=True)
class Hardware:
    device: str  # "cuda" or "cpu"
    gpu_count: int
    gpu_name: str
    gpu_memory_gib: float  # per GPU
    bf16: bool
    host_memory_gib: float
    cpu_count: int

    @classmethod
    def detect(cls) -> Hardware:
        import torch

        host = _host_memory_gib()
        cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
        if torch.cuda.is_available():
            props = torch.cuda.get_device_properties(0)
            return cls(
                "cuda",
                torch.cuda.device_count(),
                props.name,
                props.total_memory / 2**30,
                bool(torch.cuda.is_bf16_supported()),
                host,
                cpus,
            )
        return cls("cpu", 0, "cpu", 0.0, False, host, cpus)


def _host_memory_gib() -> float:
    limit = _cgroup_memory_limit()
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    except (ValueError, OSError):
        total = 0.0
    return min(limit, total) if limit else total


def _cgroup_memory_limit() -> float | None:
    for path in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            raw = Path(path).read_text().strip()
        except OSError:
            continue
        if raw.isdigit() and int(raw) < 2**60:
            return int(raw) / 2**30
    return None


def _epochs_for(train_examples: int) -> float:
    if train_examples < 1000:
        return 3.0
    if train_examples < 10000:
        return 2.0
    return 1.0


def _sequence_length(token_lengths: list[int], model_max: int) -> int:
    if not token_lengths:
        return min(512, model_max)
    ordered = sorted(token_lengths)
    p99 = ordered[min(len(ordered) - 1, math.ceil(0.99 * len(ordered)) - 1)]
    return max(64, min(model_max, DEFAULTS.max_sequence_length, 64 * math.ceil(p99 / 64)))


def resolve_replay(spec: ReplaySpec, *, task_train_examples: int, pool_size: int) -> ResolvedReplay | None:
    """How many replay rows to mix in: a share of the task's training rows, at least
    ``replay_min_examples`` and never more than the pool (a pool repeated many times over would be
    memorised rather than replayed). None when replay is off."""
    if not spec.enabled:
        return None
    fraction = spec.fraction if spec.fraction is not None else DEFAULTS.replay_fraction
    wanted = round(fraction * task_train_examples)
    if spec.fraction is None:
        wanted = max(wanted, DEFAULTS.replay_min_examples)
    examples = min(pool_size, wanted)
    return ResolvedReplay(examples=examples, fraction=round(examples / max(1, task_train_examples), 4))


def resolve_method(spec: FineTuneJobSpec, hardware: Hardware) -> MethodType:
    requested = MethodType(spec.method.type)
    if requested != MethodType.AUTO:
        return requested
    # QLoRA needs bitsandbytes' CUDA kernels to be worth it; on a CPU plain LoRA is faster.
    return MethodType.QLORA if hardware.device == "cuda" else MethodType.LORA


def resolve_training(
    spec: FineTuneJobSpec,
    hardware: Hardware,
    *,
    train_examples: int,
    token_lengths: list[int],
    model_config: Any,
    replay: ResolvedReplay | None = None,
) -> ResolvedTraining:
    """Every auto value filled in; the user's own values always win. ``train_examples`` and
    ``token_lengths`` include the replay rows."""
    method = resolve_method(spec, hardware)
    user = spec.hyperparameters
    model_max = int(getattr(model_config, "max_position_embeddings", 2048) or 2048)
    seq_len = user.sequence_length or _sequence_length(token_lengths, model_max)
    micro = user.batch_size or (4 if hardware.device == "cpu" else _gpu_micro_batch(hardware, seq_len))
    world = max(1, hardware.gpu_count if hardware.device == "cuda" else 1)
    accumulation = user.gradient_accumulation_steps or max(1, round(DEFAULTS.effective_batch / (micro * world)))
    epochs = user.epochs or _epochs_for(train_examples)
    packing = user.packing if user.packing is not None else True
    rows = train_examples
    if packing and token_lengths:
        # Packed rows hold several examples: count rows, not examples, or evaluations end up
        # spaced for a run several times longer than the real one.
        mean_tokens = sum(token_lengths) / len(token_lengths)
        rows = max(1, math.ceil(train_examples * mean_tokens / (seq_len * 0.9)))
    total_steps = max(1, math.ceil(rows / (micro * accumulation * world)) * math.ceil(epochs))
    lr = (
        user.learning_rate
        or {
            MethodType.QLORA: DEFAULTS.lr_qlora,
            MethodType.LORA: DEFAULTS.lr_lora,
            MethodType.FULL: DEFAULTS.lr_full,
        }[method]
    )
    params = _param_count(model_config)
    hyper = HyperparametersSpec(
        epochs=epochs,
        learning_rate=lr,
        lr_scheduler=user.lr_scheduler or DEFAULTS.scheduler,
        warmup_ratio=user.warmup_ratio if user.warmup_ratio is not None else DEFAULTS.warmup_ratio,
        batch_size=micro,
        gradient_accumulation_steps=accumulation,
        weight_decay=user.weight_decay if user.weight_decay is not None else DEFAULTS.weight_decay,
        max_grad_norm=user.max_grad_norm or DEFAULTS.max_grad_norm,
        sequence_length=seq_len,
        packing=packing,
        early_stopping_patience=(
            user.early_stopping_patience
            if user.early_stopping_patience is not None
            else DEFAULTS.early_stopping_patience
        ),
        gradient_checkpointing=(
            user.gradient_checkpointing
            if user.gradient_checkpointing is not None
            else hardware.device == "cuda" and params > DEFAULTS.checkpointing_min_params
        ),
        seed=user.seed if user.seed is not None else DEFAULTS.seed,
        eval_steps=user.eval_steps or max(1, total_steps // DEFAULTS.evaluations_per_run),
    )
    lora = None
    if method != MethodType.FULL:
        requested = spec.method.lora
        r = requested.r or DEFAULTS.lora_r
        lora = LoraSpec(
            r=r,
            alpha=requested.alpha or DEFAULTS.lora_alpha_per_r * r,
            dropout=requested.dropout if requested.dropout is not None else DEFAULTS.lora_dropout,
            target_modules=requested.target_modules or ["all-linear"],
            scale=requested.scale,  # unset: chosen on the validation split after training (training/strength.py)
        )
    return ResolvedTraining(method=method, lora=lora, hyperparameters=hyper, replay=replay)


def _gpu_micro_batch(hardware: Hardware, seq_len: int) -> int:
    budget = 8 if hardware.gpu_memory_gib < 30 else 16
    return max(1, budget * 1024 // max(seq_len, 1024))


def _param_count(config: Any) -> float:
    hidden = int(getattr(config, "hidden_size", 0) or 0)
    layers = int(getattr(config, "num_hidden_layers", 0) or 0)
    inter = int(getattr(config, "intermediate_size", 4 * hidden) or 4 * hidden)
    vocab = int(getattr(config, "vocab_size", 0) or 0)
    heads = int(getattr(config, "num_attention_heads", 1) or 1)
    kv_heads = int(getattr(config, "num_key_value_heads", heads) or heads)
    kv_dim = hidden * kv_heads // heads
    per_layer = 2 * hidden * hidden + 2 * hidden * kv_dim + 3 * hidden * inter
    tied = bool(getattr(config, "tie_word_embeddings", True))
    return float(layers * per_layer + vocab * hidden * (1 if tied else 2))


def _lora_params(config: Any, r: int) -> float:
    hidden = int(getattr(config, "hidden_size", 0) or 0)
    inter = int(getattr(config, "intermediate_size", 4 * hidden) or 4 * hidden)
    layers = int(getattr(config, "num_hidden_layers", 0) or 0)
    heads = int(getattr(config, "num_attention_heads", 1) or 1)
    kv_dim = hidden * int(getattr(config, "num_key_value_heads", heads) or heads) // heads
    per_layer = r * ((hidden + hidden) * 2 + (hidden + kv_dim) * 2 + (hidden + inter) * 3)
    return float(layers * per_layer)


# Sustained training throughput assumed by the time estimate, in model FLOPs per second.
# CPU: calibrated on 2 cores (SmolLM2-135M LoRA: ~200 tokens/s = 6 x 135e6 x 200 ≈ 1.6e11).
CPU_FLOPS_PER_CORE = 8e10
GPU_FLOPS = 1.5e14  # ~40% MFU of a bf16 datacenter GPU; a deliberately rough prior
# Greedy decoding in small batches uses a fraction of the training throughput, and a batch runs until
# its longest answer ends. Calibrated on 2 cores: 372 general answers of SmolLM2-135M, up to 96 new
# tokens each, took 4 minutes (scripts/make_builtin_general_answers.py).
GENERATION_EFFICIENCY = 0.25


def preflight_estimate(
    resolved: ResolvedTraining,
    model_config: Any,
    hardware: Hardware,
    *,
    train_tokens: int,
    total_memory_limit_gib: float | None,
    answers_to_generate: int = 0,
) -> PreflightReport:
    """Peak memory and wall time for the plan, and whether it fits the machine it will run on.

    ``answers_to_generate``: base-model answers to general prompts the training pod must generate
    first (none when they are cached); their time is part of the estimate."""
    params = _param_count(model_config)
    hyper = resolved.hyperparameters
    method = MethodType(resolved.method)
    on_gpu = hardware.device == "cuda"
    weight_bytes = {
        MethodType.QLORA: 0.55,
        MethodType.LORA: 2.0 if on_gpu else 4.0,
        MethodType.FULL: 2.0 if on_gpu else 4.0,
    }[method]
    trainable = (
        params
        if method == MethodType.FULL
        else _lora_params(model_config, (resolved.lora.r or 8) if resolved.lora else 8)
    )
    # fp32 master copy + Adam's two moments + gradient for each trainable parameter.
    optimizer_bytes = trainable * (4 + 8 + 4)
    hidden = int(getattr(model_config, "hidden_size", 0) or 0)
    layers = int(getattr(model_config, "num_hidden_layers", 0) or 0)
    vocab = int(getattr(model_config, "vocab_size", 0) or 0)
    tokens_in_flight = (hyper.batch_size or 1) * (hyper.sequence_length or 512)
    activation_factor = 4 if hyper.gradient_checkpointing else 34  # bytes·layer per hidden unit per token
    activations = tokens_in_flight * hidden * layers * activation_factor + tokens_in_flight * vocab * 4 * 2
    peak_gib = (params * weight_bytes + optimizer_bytes + activations) / 2**30 * 1.2  # 20% allocator slack

    flops_per_token = 6 * params if method == MethodType.FULL else 4 * params  # no weight grads for frozen base
    throughput = GPU_FLOPS * max(1, hardware.gpu_count) if on_gpu else CPU_FLOPS_PER_CORE * max(1, hardware.cpu_count)
    seconds = train_tokens * (hyper.epochs or 1) * flops_per_token / throughput
    generated_tokens = answers_to_generate * ANSWER_MAX_NEW_TOKENS
    seconds += generated_tokens * 2 * params / (throughput * GENERATION_EFFICIENCY)

    where = f"'{hardware.gpu_name}' ({hardware.gpu_memory_gib:.1f} GiB)" if on_gpu else "host memory"
    available = hardware.gpu_memory_gib if on_gpu else (total_memory_limit_gib or hardware.host_memory_gib)
    passed = available <= 0 or peak_gib <= available
    if passed:
        message = (
            f"{method} fits: ~{peak_gib:.1f} GiB peak {'GPU' if on_gpu else 'host'} memory"
            + (f" of {available:.1f} GiB" if available > 0 else "")
            + f", ~{seconds / 60:.1f} min for {train_tokens} tokens x {hyper.epochs:g} epochs"
            + (f" and {answers_to_generate} base answers to generate" if answers_to_generate else "")
        )
    else:
        hint = "use method qlora" if method != MethodType.QLORA else "use a smaller batchSize or sequenceLength"
        message = (
            f"estimated {peak_gib:.1f} GiB peak memory for {method} of {params / 1e9:.2f} B params "
            f"exceeds the {available:.1f} GiB of {where}; {hint} or request more resources"
        )
    return PreflightReport(
        passed=passed,
        message=message,
        train_tokens=train_tokens,
        estimated_memory_gib=round(peak_gib, 2),
        estimated_minutes=round(seconds / 60, 1),
        method=str(method),
    )
