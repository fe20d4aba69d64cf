"""A published version as models: its base, and the tuned model it was evaluated as."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from kubetune.api.v1alpha1 import MethodType
from kubetune_trainer.storage import ObjectStore, join_uri


def load_version(
    store: ObjectStore, manifest: dict[str, Any], version_uri: str, base_dir: Path, scratch: Path
) -> tuple[Any, Any]:
    """(the base model, the tuned one) on the CPU in float32; the tuned one is None where it cannot be
    rebuilt here as it was evaluated (QLoRA's 4-bit base needs CUDA), and the loss method is skipped."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    method = MethodType(manifest.get("resolved", {}).get("method", "lora"))
    base = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32, use_safetensors=True).eval()
    paths = {str(a["path"]) for a in manifest.get("artifacts") or []}
    if method == MethodType.QLORA and not torch.cuda.is_available():
        return base, None
    if method in (MethodType.LORA, MethodType.QLORA) and any(p.startswith("adapter/") for p in paths):
        adapter = store.download_tree(join_uri(version_uri, "adapter"), scratch / "adapter")
        # A second copy of the base for the adapter: the first stays plain for the embeddings.
        plain = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32, use_safetensors=True)
        return base, PeftModel.from_pretrained(plain, adapter).eval()
    if any(p.startswith("merged/") for p in paths):
        merged = store.download_tree(join_uri(version_uri, "merged"), scratch / "merged")
        return base, AutoModelForCausalLM.from_pretrained(merged, dtype=torch.float32, use_safetensors=True).eval()
    return base, None
