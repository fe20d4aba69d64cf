"""Export a merged Llama-family model to GGUF (Q8_0 or Q4_0) for llama.cpp and Ollama users.

Written with the ``gguf`` package alone (no llama.cpp checkout): architecture metadata, the
tokenizer (GPT-2 style BPE from ``tokenizer.json``) with its chat template and special ids, and
the weights under llama.cpp's tensor names. Q/K projection rows are permuted the way
llama.cpp's converter does for its rotary embedding layout (transformers' GGUF loader undoes
it). Only Q8_0 and Q4_0 are offered: their block size is 32, while K-quants need the hidden
size to be a multiple of 256, which small models such as SmolLM2-135M (576) are not.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

import numpy as np

SUPPORTED_ARCHITECTURES = {"LlamaForCausalLM"}
QUANTS = ("Q8_0", "Q4_0")


class GGUFExportError(ValueError):
    pass


def _permute(weights: np.ndarray, heads: int) -> np.ndarray:
    return (
        weights.reshape(heads, 2, weights.shape[0] // heads // 2, *weights.shape[1:])
        .swapaxes(1, 2)
        .reshape(weights.shape)
    )


def _tokenizer_metadata(writer: Any, model_dir: Path, config: dict[str, Any]) -> None:
    import gguf

    raw = json.loads((model_dir / "tokenizer.json").read_text())
    model = raw["model"]
    if model.get("type") != "BPE":
        raise GGUFExportError(f"GGUF export supports BPE tokenizers; this one is {model.get('type')}")
    vocab: dict[str, int] = dict(model["vocab"])
    special = {t["content"]: t["id"] for t in raw.get("added_tokens", [])}
    vocab.update(special)
    size = max(int(config.get("vocab_size", 0)), max(vocab.values()) + 1)
    tokens = [f"[PAD{i}]" for i in range(size)]
    types = [gguf.TokenType.UNUSED] * size
    for text, index in vocab.items():
        tokens[index] = text
        types[index] = gguf.TokenType.CONTROL if text in special else gguf.TokenType.NORMAL
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])]
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("smollm" if "smollm" in str(config.get("_name_or_path", "")).lower() else "gpt2")
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges(merges)
    tokenizer_config = json.loads((model_dir / "tokenizer_config.json").read_text())
    generation = (
        json.loads((model_dir / "generation_config.json").read_text())
        if (model_dir / "generation_config.json").exists()
        else {}
    )

    def token_id(name: str) -> int | None:
        value = tokenizer_config.get(name)
        if isinstance(value, dict):
            value = value.get("content")
        return vocab.get(value) if isinstance(value, str) else None

    eos = generation.get("eos_token_id", token_id("eos_token"))
    eos = eos[0] if isinstance(eos, list) else eos
    for adder, value in (
        (writer.add_bos_token_id, token_id("bos_token")),
        (writer.add_eos_token_id, eos),
        (writer.add_pad_token_id, token_id("pad_token")),
        (writer.add_unk_token_id, token_id("unk_token")),
    ):
        if value is not None:
            adder(int(value))
    writer.add_add_bos_token(bool(tokenizer_config.get("add_bos_token", False)))
    template_file = model_dir / "chat_template.jinja"
    template = template_file.read_text() if template_file.exists() else tokenizer_config.get("chat_template")
    if template:
        writer.add_chat_template(template)


def export_gguf(merged_dir: Path, out_path: Path, *, quant: Literal["Q8_0", "Q4_0"]) -> Path:
    import gguf
    import torch
    from safetensors import safe_open

    if quant not in QUANTS:
        raise GGUFExportError(f"quantization {quant!r} is not supported (choose from {', '.join(QUANTS)})")
    config = json.loads((merged_dir / "config.json").read_text())
    architectures = set(config.get("architectures") or [])
    if not architectures & SUPPORTED_ARCHITECTURES:
        raise GGUFExportError(
            f"GGUF export supports Llama-family models; this one is {sorted(architectures) or 'unknown'}"
        )
    layers = int(config["num_hidden_layers"])
    heads = int(config["num_attention_heads"])
    kv_heads = int(config.get("num_key_value_heads", heads))
    hidden = int(config["hidden_size"])
    qtype = getattr(gguf.GGMLQuantizationType, quant)

    out_path.parent.mkdir(parents=True, exist_ok=True)
    partial = out_path.with_name(out_path.name + ".partial")
    writer = gguf.GGUFWriter(str(partial), "llama")
    writer.add_name(config.get("_name_or_path") or merged_dir.name)
    writer.add_context_length(int(config.get("max_position_embeddings", 2048)))
    writer.add_embedding_length(hidden)
    writer.add_block_count(layers)
    writer.add_feed_forward_length(int(config["intermediate_size"]))
    writer.add_head_count(heads)
    writer.add_head_count_kv(kv_heads)
    writer.add_rope_dimension_count(int(config.get("head_dim") or hidden // heads))
    writer.add_rope_freq_base(
        float(config.get("rope_theta") or (config.get("rope_parameters") or {}).get("rope_theta", 10000.0))
    )
    writer.add_layer_norm_rms_eps(float(config.get("rms_norm_eps", 1e-5)))
    writer.add_vocab_size(int(config["vocab_size"]))
    writer.add_file_type(gguf.LlamaFileType.MOSTLY_Q8_0 if quant == "Q8_0" else gguf.LlamaFileType.MOSTLY_Q4_0)
    _tokenizer_metadata(writer, merged_dir, config)

    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, layers)
    tied = bool(config.get("tie_word_embeddings", False))
    for shard in sorted(merged_dir.glob("*.safetensors")):
        with safe_open(str(shard), framework="pt") as handle:
            for name in handle.keys():  # noqa: SIM118 (safe_open is not a dict)
                if name.endswith("rotary_emb.inv_freq") or (tied and name == "lm_head.weight"):
                    continue
                target = names.get_name(name, try_suffixes=(".weight", ".bias"))
                if target is None:
                    raise GGUFExportError(f"no GGUF name for tensor {name}")
                data = handle.get_tensor(name).to(torch.float32).numpy()
                if name.endswith("q_proj.weight"):
                    data = _permute(data, heads)
                elif name.endswith("k_proj.weight"):
                    data = _permute(data, kv_heads)
                if data.ndim == 2 and data.shape[-1] % 32 == 0:
                    writer.add_tensor(target, gguf.quants.quantize(data, qtype), raw_dtype=qtype)
                else:
                    writer.add_tensor(target, data.astype(np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    partial.replace(out_path)
    return out_path
