"""QLoRA on the CPU, full fine-tuning, and DDP with two processes (gloo) for the multi-GPU path."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import bitsandbytes as bnb
import pytest
import torch
from safetensors.torch import load_file

from kubetune.api.v1alpha1 import MethodType
from kubetune_trainer.data.types import Example, Message
from kubetune_trainer.export.merge import merge_adapter
from kubetune_trainer.storage import ObjectStore
from kubetune_trainer.training.checkpoints import CheckpointStore
from kubetune_trainer.training.loop import TrainConfig, train
from kubetune_trainer.training.model import load_tuned
from tests.trainer.jobs import multiprocess_job
from tests.trainer.plans import tiny_plan

EXAMPLES = [
    Example(messages=(Message("user", f"ticket {i}: parcel {i * 31} is late"), Message("assistant", "shipping")))
    for i in range(24)
]


def run(tmp_path: Path, model_dir: Path, method: str, lr: float = 5e-3, **lora_options):  # type: ignore[no-untyped-def]
    """Train ``method`` on the tiny model (``lora_options``: tiny_plan's ``adapter`` and ``lora``)."""
    return train(
        TrainConfig(
            model_dir=model_dir,
            resolved=tiny_plan(method, lr, **lora_options),
            train=EXAMPLES,
            validation=[],
            output_dir=tmp_path / method,
            checkpoints=CheckpointStore(ObjectStore(), f"file://{tmp_path}/ckpt-{method}"),
            checkpoint_every_steps=1000,
        )
    )


def losses(outcome) -> list[float]:  # type: ignore[no-untyped-def]
    return [h["loss"] for h in outcome.history if "loss" in h]


def test_qlora_trains_on_cpu_against_a_4bit_base(tmp_path: Path, tiny_model_dir: Path) -> None:
    outcome = run(tmp_path, tiny_model_dir, "qlora")
    layers = [m for m in outcome.model.modules() if isinstance(m, bnb.nn.Linear4bit)]
    assert layers and all(m.weight.quant_type == "nf4" for m in layers)
    assert layers[0].weight.quant_state.nested, "double quantization"
    first, last = losses(outcome)[0], losses(outcome)[-1]
    assert last < first * 0.95, (first, last)
    assert (outcome.trained_dir / "adapter_model.safetensors").exists()


def test_qlora_merge_uses_the_dequantized_nf4_base(tmp_path: Path, tiny_model_dir: Path) -> None:
    outcome = run(tmp_path, tiny_model_dir, "qlora")
    merged_dir = merge_adapter(tiny_model_dir, outcome.trained_dir, tmp_path / "merged", method=MethodType.QLORA)
    from transformers import AutoModelForCausalLM

    merged = AutoModelForCausalLM.from_pretrained(merged_dir, dtype=torch.float32).eval()
    reference = load_tuned(tiny_model_dir, outcome.trained_dir, MethodType.QLORA, device="cpu", bf16=False).eval()
    ids = torch.tensor([[1, 2, 3, 4, 5, 6, 7, 8]])
    with torch.no_grad():
        expected = reference(input_ids=ids).logits.float()
        got = merged(input_ids=ids).logits
    # The 4-bit base computes in bf16; the merged model is fp32: differences are bf16 rounding.
    assert torch.allclose(got, expected, atol=0.05, rtol=0.02), (got - expected).abs().max()
    original = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    q_original = original.model.layers[0].self_attn.q_proj.weight
    q_merged = merged.model.layers[0].self_attn.q_proj.weight
    assert not torch.allclose(q_original, q_merged), "merged into the NF4-dequantized weights, not the originals"


def test_lora_merge_equals_adapter_on_base(tmp_path: Path, tiny_model_dir: Path) -> None:
    outcome = run(tmp_path, tiny_model_dir, "lora")
    merged_dir = merge_adapter(tiny_model_dir, outcome.trained_dir, tmp_path / "merged", method=MethodType.LORA)
    from transformers import AutoModelForCausalLM

    merged = AutoModelForCausalLM.from_pretrained(merged_dir, dtype=torch.float32).eval()
    reference = load_tuned(tiny_model_dir, outcome.trained_dir, MethodType.LORA, device="cpu", bf16=False).eval()
    ids = torch.tensor([[1, 5, 9, 13, 17]])
    with torch.no_grad():
        torch.testing.assert_close(merged(input_ids=ids).logits, reference(input_ids=ids).logits, atol=1e-4, rtol=1e-4)
    for name in ("tokenizer.json", "chat_template.jinja", "generation_config.json"):
        assert (merged_dir / name).exists(), f"merged model is serving-ready: {name}"


def test_full_fine_tuning_updates_every_weight(tmp_path: Path, tiny_model_dir: Path) -> None:
    outcome = run(tmp_path, tiny_model_dir, "full", lr=1e-3)
    assert losses(outcome)[-1] < losses(outcome)[0]
    saved = load_file(str(outcome.trained_dir / "model.safetensors"))
    original = load_file(str(tiny_model_dir / "model.safetensors"))
    changed = [k for k in original if k in saved and not torch.equal(original[k], saved[k])]
    assert len(changed) > len(original) // 2


@pytest.mark.timeout(300)
def test_two_process_ddp_on_cpu(tmp_path: Path, tiny_model_dir: Path) -> None:
    job = multiprocess_job(tmp_path, tiny_model_dir)
    torchrun = Path(sys.executable).parent / "torchrun"
    result = subprocess.run(
        [
            str(torchrun),
            "--standalone",
            "--nproc-per-node=2",
            "-m",
            "kubetune_trainer.cli",
            "train",
            "--job",
            str(job),
            "--workdir",
            str(tmp_path / "work"),
        ],
        capture_output=True,
        text=True,
        timeout=280,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert (tmp_path / "work" / "training" / "trained" / "adapter_model.safetensors").exists()
    versions = [p for p in (tmp_path / "out").iterdir() if p.name.startswith("v")]
    assert len(versions) == 1, "only rank 0 publishes"
    assert "process 0 of 2" in result.stderr and "process 1 of 2" in result.stderr, "both ranks trained"
    for rank in (0, 1):
        assert f"evaluation shared by 2 processes: process {rank} scored" in result.stderr, "both ranks evaluated"
