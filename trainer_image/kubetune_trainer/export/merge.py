"""Merge a LoRA adapter into its base and save a serving-ready model folder.

For QLoRA the adapter was trained against the NF4-quantized base, not the original weights:
merging into the original bf16 weights would shift every layer by its quantization error. So
the 4-bit base is loaded exactly as in training, de-quantized layer by layer, and the adapter
is merged into those weights.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import torch

from kubetune.api.v1alpha1 import MethodType

SERVING_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "chat_template.jinja",
    "generation_config.json",
)


def copy_serving_files(source: Path, dest: Path) -> None:
    """Tokenizer, chat template and generation config (EOS) next to the weights."""
    for name in SERVING_FILES:
        if (source / name).exists() and not (dest / name).exists():
            shutil.copy(source / name, dest / name)


def dequantized_base(model_dir: Path) -> Any:
    """The base as QLoRA saw it: NF4-quantized then de-quantized, in float32."""
    import bitsandbytes as bnb
    from bitsandbytes.functional import dequantize_4bit
    from transformers import AutoModelForCausalLM

    from kubetune_trainer.training.model import quantization_config

    quantized = AutoModelForCausalLM.from_pretrained(
        model_dir, quantization_config=quantization_config(), device_map={"": "cpu"}, use_safetensors=True
    )
    plain = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32, use_safetensors=True)
    modules = dict(plain.named_modules())
    with torch.no_grad():
        for name, module in quantized.named_modules():
            if isinstance(module, bnb.nn.Linear4bit):
                weight = dequantize_4bit(module.weight.data, module.weight.quant_state).to(torch.float32)
                modules[name].weight.copy_(weight)
    return plain


def merge_adapter(base_model_dir: Path, adapter_dir: Path, out_dir: Path, *, method: MethodType) -> Path:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    if method == MethodType.QLORA:
        base = dequantized_base(base_model_dir)
    else:
        base = AutoModelForCausalLM.from_pretrained(base_model_dir, dtype=torch.float32, use_safetensors=True)
    merged = PeftModel.from_pretrained(base, adapter_dir).merge_and_unload()
    merged.config.use_cache = True
    out_dir.mkdir(parents=True, exist_ok=True)
    merged.save_pretrained(out_dir, safe_serialization=True)
    copy_serving_files(adapter_dir, out_dir)
    copy_serving_files(base_model_dir, out_dir)
    return out_dir
