"""A bitsandbytes NF4 folder of the merged model, loadable with ``from_pretrained(folder)``."""

from __future__ import annotations

from pathlib import Path

from kubetune_trainer.export.merge import copy_serving_files


def export_bnb_4bit(merged_dir: Path, out_dir: Path) -> Path:
    from transformers import AutoModelForCausalLM

    from kubetune_trainer.training.model import quantization_config

    model = AutoModelForCausalLM.from_pretrained(
        merged_dir, quantization_config=quantization_config(), device_map={"": "cpu"}, use_safetensors=True
    )
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir, safe_serialization=True)  # quantization_config goes into config.json
    copy_serving_files(merged_dir, out_dir)
    return out_dir
