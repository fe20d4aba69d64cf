"""Load the base model for the chosen method: QLoRA (NF4 4-bit + LoRA), LoRA, or full."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from kubetune.api.v1alpha1 import LoraSpec, MethodType, ResolvedTraining


def compute_dtype(device: str, bf16: bool) -> Any:
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


def load_base(model_dir: Path, method: MethodType, *, device: str, bf16: bool) -> Any:
    """The frozen base as the method trains against it (4-bit for QLoRA)."""
    from transformers import AutoModelForCausalLM

    kwargs: dict[str, Any] = {"trust_remote_code": False, "use_safetensors": True}
    if method == MethodType.QLORA:
        kwargs["quantization_config"] = quantization_config()
        kwargs["device_map"] = {"": 0} if device == "cuda" else {"": "cpu"}
    else:
        kwargs["dtype"] = compute_dtype(device, bf16)
    model = AutoModelForCausalLM.from_pretrained(model_dir, **kwargs)
    # Packed rows rely on transformers reading restarting position_ids as sequence
    # boundaries, which it does only without a KV cache.
    model.config.use_cache = False
    return model


def lora_config(lora: LoraSpec) -> Any:
    from peft import LoraConfig

    targets = lora.target_modules or ["all-linear"]
    return LoraConfig(
        r=lora.r or 8,
        lora_alpha=lora.alpha or 16,
        lora_dropout=lora.dropout or 0.0,
        target_modules="all-linear" if targets == ["all-linear"] else list(targets),
        bias="none",
        task_type="CAUSAL_LM",
    )


def load_for_training(model_dir: Path, resolved: ResolvedTraining, *, device: str, bf16: bool) -> tuple[Any, Any]:
    """(model ready to train, tokenizer). LoRA/QLoRA: only the adapter is trainable."""
    from peft import get_peft_model, prepare_model_for_kbit_training

    method = MethodType(resolved.method)
    tokenizer = load_tokenizer(model_dir)
    model = load_base(model_dir, method, device=device, bf16=bf16)
    checkpointing = bool(resolved.hyperparameters.gradient_checkpointing)
    if method == MethodType.FULL:
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
    assert resolved.lora is not None
    return get_peft_model(model, lora_config(resolved.lora)), tokenizer


def load_tuned(model_dir: Path, trained_dir: Path, method: MethodType, *, device: str, bf16: bool) -> Any:
    """A trained run loaded back: base + adapter (LoRA/QLoRA) or the full model."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    if method == MethodType.FULL:
        return AutoModelForCausalLM.from_pretrained(
            trained_dir, dtype=compute_dtype(device, bf16), trust_remote_code=False, use_safetensors=True
        )
    base = load_base(model_dir, method, device=device, bf16=bf16)
    return PeftModel.from_pretrained(base, trained_dir)
