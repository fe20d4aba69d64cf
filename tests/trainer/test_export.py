"""Each export loads back and agrees with the merged model within its quantization's error."""

from __future__ import annotations

import shutil
from pathlib import Path

import gguf
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from kubetune_trainer.export.bnb4 import export_bnb_4bit
from kubetune_trainer.export.gguf import GGUFExportError, export_gguf

PROMPT = [{"role": "user", "content": "Where is my parcel? It was due on Monday."}]


@pytest.fixture(scope="module")
def merged(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A "merged" model: the tiny model with perturbed weights, saved like a merge would be."""
    out = tmp_path_factory.mktemp("merged")
    torch.manual_seed(1)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    with torch.no_grad():
        for param in model.parameters():
            param.add_(torch.randn_like(param) * 0.02)
    model.save_pretrained(out)
    for item in tiny_model_dir.iterdir():
        if not item.name.endswith(".safetensors") and item.name != "config.json":
            shutil.copy(item, out / item.name)
    return out


def logits(model: torch.nn.Module, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=ids).logits.float()


def relative_error(got: torch.Tensor, expected: torch.Tensor) -> float:
    return float((got - expected).norm() / expected.norm())


# Q8_0 keeps ~8 bits per weight: well under 2% of the logits. Q4_0 keeps 4 bits (16 levels per
# block of 32), and a tiny random model is its worst case (nothing for errors to average out
# in), hence a loose bound — still far below the ~1.4 relative error of an unrelated model.
@pytest.mark.parametrize(("quant", "bound"), [("Q8_0", 0.02), ("Q4_0", 0.3)])
def test_gguf_loads_back_in_transformers(merged: Path, tmp_path: Path, quant: str, bound: float) -> None:
    path = export_gguf(merged, tmp_path / f"model-{quant.lower()}.gguf", quant=quant)  # type: ignore[arg-type]
    tokenizer = AutoTokenizer.from_pretrained(merged)
    text = tokenizer.apply_chat_template(PROMPT, tokenize=False, add_generation_prompt=True)
    gguf_tokenizer = AutoTokenizer.from_pretrained(tmp_path, gguf_file=path.name)
    assert (
        gguf_tokenizer(text, add_special_tokens=False)["input_ids"]
        == tokenizer(text, add_special_tokens=False)["input_ids"]
    )
    reader = gguf.GGUFReader(str(path))
    fields = reader.fields
    template = bytes(fields["tokenizer.chat_template"].parts[-1]).decode()
    assert "<|im_start|>" in template
    eos = int(fields["tokenizer.ggml.eos_token_id"].parts[-1][0])
    assert eos == tokenizer.eos_token_id
    ids = torch.tensor([tokenizer(text, add_special_tokens=False)["input_ids"]])
    expected = logits(AutoModelForCausalLM.from_pretrained(merged, dtype=torch.float32).eval(), ids)
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path, gguf_file=path.name, dtype=torch.float32).eval()
    assert relative_error(logits(loaded, ids), expected) < bound


def test_gguf_refuses_other_architectures(merged: Path, tmp_path: Path) -> None:
    other = tmp_path / "gpt"
    shutil.copytree(merged, other)
    config = (other / "config.json").read_text().replace("LlamaForCausalLM", "GPT2LMHeadModel")
    (other / "config.json").write_text(config)
    with pytest.raises(GGUFExportError, match="Llama-family"):
        export_gguf(other, tmp_path / "x.gguf", quant="Q8_0")


def test_bnb_4bit_folder_loads_with_from_pretrained(merged: Path, tmp_path: Path) -> None:
    out = export_bnb_4bit(merged, tmp_path / "bnb")
    loaded = AutoModelForCausalLM.from_pretrained(out)
    assert loaded.config.quantization_config.load_in_4bit
    for name in ("tokenizer.json", "chat_template.jinja", "generation_config.json"):
        assert (out / name).exists()
    ids = torch.tensor([[1, 10, 20, 30, 40, 50]])
    expected = logits(AutoModelForCausalLM.from_pretrained(merged, dtype=torch.float32).eval(), ids)
    # NF4 has 16 levels per block of 64 weights; a tiny random model is its worst case (no
    # structure for errors to average out in), so the bound is loose: well below the ~1.4 of
    # an unrelated model, and the weights really are 4-bit.
    error = relative_error(logits(loaded.eval(), ids), expected)
    assert 0 < error < 0.3
    import bitsandbytes as bnb

    assert any(isinstance(m, bnb.nn.Linear4bit) for m in loaded.modules())


@pytest.mark.slow
def test_gguf_q8_of_the_real_default_model_still_answers(tmp_path: Path) -> None:
    from kubetune_trainer.models.builtin import builtin_model_dir

    source = builtin_model_dir()
    path = export_gguf(source, tmp_path / "smollm2-q8_0.gguf", quant="Q8_0")
    tokenizer = AutoTokenizer.from_pretrained(tmp_path, gguf_file=path.name)
    model = AutoModelForCausalLM.from_pretrained(tmp_path, gguf_file=path.name, dtype=torch.float32).eval()
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": "What is the capital of France?"}],
        add_generation_prompt=True,
        return_tensors="pt",
        return_dict=True,
    )
    with torch.no_grad():
        out = model.generate(**prompt, max_new_tokens=12, do_sample=False)
    answer = tokenizer.decode(out[0, prompt["input_ids"].shape[1] :], skip_special_tokens=True)
    assert "Paris" in answer
    reference = AutoModelForCausalLM.from_pretrained(source, dtype=torch.float32).eval()
    assert relative_error(logits(model, prompt["input_ids"]), logits(reference, prompt["input_ids"])) < 0.05
