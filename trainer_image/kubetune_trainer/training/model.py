"""Load the base model for the chosen method: QLoRA (NF4 4-bit + LoRA), LoRA, or full."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from kubetune.api.v1alpha1 import (
    AdapterType,
    LoraScaling,
    MethodType,
    ResolvedAdaLora,
    ResolvedAdaLoraTraining,
    ResolvedAdapterTraining,
    ResolvedBottleneckTraining,
    ResolvedIa3,
    ResolvedIa3Training,
    ResolvedLora,
    ResolvedOsf,
    ResolvedOsfTraining,
    ResolvedPrefix,
    ResolvedPrefixTraining,
    ResolvedTraining,
)
from kubetune_trainer.environment import TrainerEnvironment


def bf16_capable(device: str) -> bool:
    import torch

    return device == "cuda" and torch.cuda.is_available() and torch.cuda.is_bf16_supported()


def compute_dtype(device: str, bf16: bool) -> Any:
    """bf16 on a capable GPU; fp32 on the CPU, where bf16 matmuls are slow and lossy."""
    import torch

    return torch.bfloat16 if device == "cuda" and bf16 else torch.float32


def load_tokenizer(model_dir: Path) -> Any:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir, trust_remote_code=False)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def quantization_config() -> Any:
    """NF4 with double quantization and bf16 compute, as in the QLoRA paper."""
    import torch
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=torch.bfloat16,
    )


def _device_map(device: str) -> dict[str, int | str]:
    # Under torchrun each process holds its own replica on its own GPU.
    return {"": TrainerEnvironment.from_env().local_rank} if device == "cuda" else {"": "cpu"}


def load_base(model_dir: Path, method: MethodType, *, device: str, bf16: bool) -> Any:
    """The frozen base as the method trains against it (4-bit for QLoRA)."""
    from transformers import AutoModelForCausalLM

    kwargs: dict[str, Any] = {"trust_remote_code": False, "use_safetensors": True}
    if method == MethodType.QLORA:
        kwargs["quantization_config"] = quantization_config()
        kwargs["device_map"] = _device_map(device)
    else:
        kwargs["dtype"] = compute_dtype(device, bf16)
        if device == "cuda":
            kwargs["device_map"] = _device_map(device)
    model = AutoModelForCausalLM.from_pretrained(model_dir, **kwargs)
    # Packed rows rely on transformers reading restarting position_ids as sequence
    # boundaries, which it does only without a KV cache.
    model.config.use_cache = False
    return model


def _targets(modules: list[str]) -> str | list[str]:
    """``all-linear`` is peft's own shorthand, given as a string."""
    return "all-linear" if modules == ["all-linear"] else list(modules)


def lora_config(lora: ResolvedLora, adapter: AdapterType) -> Any:
    """peft's LoraConfig from the resolved plan (DoRA and rsLoRA are its ``use_dora`` and
    ``use_rslora``)."""
    from peft import LoraConfig

    return LoraConfig(
        r=lora.r,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules=_targets(lora.target_modules),
        use_dora=adapter == AdapterType.DORA,
        use_rslora=lora.scaling == LoraScaling.RSLORA,
        bias="none",
        task_type="CAUSAL_LM",
    )


def adalora_config(adalora: ResolvedAdaLora) -> Any:
    """peft's AdaLoraConfig; its ``total_step``, ``tinit`` and ``tfinal`` are the plan's schedule."""
    from peft import AdaLoraConfig

    return AdaLoraConfig(
        init_r=adalora.initial_rank,
        target_r=adalora.target_rank,
        lora_alpha=adalora.alpha,
        lora_dropout=adalora.dropout,
        target_modules=_targets(adalora.target_modules),
        total_step=adalora.total_steps,
        tinit=adalora.warmup_steps,
        tfinal=adalora.final_steps,
        deltaT=adalora.interval,
        orth_reg_weight=adalora.orthogonality_weight,
        bias="none",
        task_type="CAUSAL_LM",
    )


def freeze_rank_counts(model: Any) -> None:
    """AdaLoRA divides each update by its layer's ``ranknum``, a constant; peft 0.21 leaves it trainable
    on a 4-bit base, where the optimizer then moves it and the adapter reloads as another model."""
    for name, parameter in model.named_parameters():
        if ".ranknum." in name:
            parameter.requires_grad_(False)


def prefix_config(prefix: ResolvedPrefix) -> Any:
    """peft's prefix tuning without the MLP reparametrisation: the trained keys and values are the adapter."""
    from peft import PrefixTuningConfig

    return PrefixTuningConfig(num_virtual_tokens=prefix.virtual_tokens, task_type="CAUSAL_LM")


def ia3_config(ia3: ResolvedIa3) -> Any:
    from peft import IA3Config

    return IA3Config(
        target_modules=_targets(ia3.target_modules),
        feedforward_modules=list(ia3.feedforward_modules),
        task_type="CAUSAL_LM",
    )


def osf_config(osf: ResolvedOsf) -> Any:
    from peft import OSFConfig

    return OSFConfig(
        effective_rank=osf.preserved_fraction,  # peft reads a float in (0, 1) as a fraction of each weight's rank
        target_modules=_targets(osf.target_modules),
        task_type="CAUSAL_LM",
    )


PeftTraining = (
    ResolvedAdapterTraining
    | ResolvedAdaLoraTraining
    | ResolvedIa3Training
    | ResolvedPrefixTraining
    | ResolvedOsfTraining
)
AdapterTraining = PeftTraining | ResolvedBottleneckTraining


def adapter_config(resolved: PeftTraining) -> Any:
    """peft's configuration of the adapter the plan trains."""
    if isinstance(resolved, ResolvedIa3Training):
        return ia3_config(resolved.ia3)
    if isinstance(resolved, ResolvedAdaLoraTraining):
        return adalora_config(resolved.adalora)
    if isinstance(resolved, ResolvedPrefixTraining):
        return prefix_config(resolved.prefix)
    if isinstance(resolved, ResolvedOsfTraining):
        return osf_config(resolved.osf)
    return lora_config(resolved.lora, AdapterType(resolved.adapter))


def load_for_training(
    model_dir: Path, resolved: ResolvedTraining, device: str, *, bf16: bool | None = None
) -> tuple[Any, Any]:
    """(model ready to train, tokenizer). An adapter (LoRA, DoRA, AdaLoRA, IA3, prefix, bottleneck, OSF; on a
    4-bit base for QLoRA):
    only the adapter is trainable; full: everything.

    ``bf16`` defaults to what the device supports.
    """
    from peft import get_peft_model, prepare_model_for_kbit_training

    method = MethodType(resolved.method)
    if bf16 is None:
        bf16 = bf16_capable(device)
    tokenizer = load_tokenizer(model_dir)
    # Full fine-tuning keeps fp32 master weights (the Trainer's bf16 autocast does the compute):
    # AdamW updates on bf16 weights lose most small steps to rounding.
    model = load_base(model_dir, method, device=device, bf16=bf16 and method != MethodType.FULL)
    checkpointing = resolved.hyperparameters.gradient_checkpointing
    if not isinstance(resolved, AdapterTraining):
        if checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        return model, tokenizer
    if method == MethodType.QLORA:
        model = prepare_model_for_kbit_training(
            model,
            use_gradient_checkpointing=checkpointing,
            gradient_checkpointing_kwargs={"use_reentrant": False},
        )
    elif checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.enable_input_require_grads()
    if isinstance(resolved, ResolvedBottleneckTraining):
        from kubetune_trainer.training.bottleneck import BottleneckModel

        return BottleneckModel(model, resolved.bottleneck), tokenizer
    model = get_peft_model(model, adapter_config(resolved))
    if isinstance(resolved, ResolvedAdaLoraTraining):
        freeze_rank_counts(model)
    return model, tokenizer


def load_tuned(model_dir: Path, trained_dir: Path, method: MethodType, *, device: str, bf16: bool) -> Any:
    """A trained run loaded back: base + adapter (peft's, or kubetune's bottleneck adapters) or the full model."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    if method == MethodType.FULL:
        return AutoModelForCausalLM.from_pretrained(
            trained_dir, dtype=compute_dtype(device, bf16), trust_remote_code=False, use_safetensors=True
        )
    from kubetune_trainer.training.bottleneck import BottleneckModel, is_bottleneck_adapter

    base = load_base(model_dir, method, device=device, bf16=bf16)
    if is_bottleneck_adapter(trained_dir):
        return BottleneckModel.from_pretrained(base, trained_dir)
    return PeftModel.from_pretrained(base, trained_dir)
