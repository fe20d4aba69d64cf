"""Training step time with the loss projected on labelled positions only, against transformers'
default loss (every position through the LM head), in the same run.

    python bench/labelled_loss.py [--steps 8]

Rows are the README demo's: examples/support-tickets packed into 192-token rows, micro-batches of
4, LoRA r=8 on all linear layers of the built-in SmolLM2-135M-Instruct, on this machine's CPU.
Steps alternate between the two losses so both see the same machine state; the first step of
each is a warm-up and not counted. Prints seconds per step for each and their ratio.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM, AutoTokenizer, Trainer, TrainingArguments

from kubetune_trainer.data.types import Example, Message
from kubetune_trainer.models.builtin import builtin_model_dir
from kubetune_trainer.tensors.batching import RowDataset, build_rows, collator_for
from kubetune_trainer.tensors.encode import IGNORE_INDEX, encode_example
from kubetune_trainer.training.loss import LabelledPositionsTrainer

DATA = Path(__file__).resolve().parents[1] / "examples" / "support-tickets" / "tickets.jsonl"


def batches(tokenizer, count: int) -> list[dict[str, torch.Tensor]]:  # type: ignore[no-untyped-def]
    rows_of = [json.loads(line)["messages"] for line in DATA.read_text().splitlines() if line.strip()]
    examples = [Example(messages=tuple(Message(m["role"], m["content"]) for m in row)) for row in rows_of]
    rows = RowDataset(build_rows([encode_example(e, tokenizer, 192) for e in examples], 192, packing=True))
    collate = collator_for(tokenizer, packing=True)
    return [collate([rows[(4 * b + i) % len(rows)] for i in range(4)]) for b in range(count)]


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=8, help="timed steps per loss (after one warm-up each)")
    args = parser.parse_args()
    torch.manual_seed(0)
    model_dir = builtin_model_dir()
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    model.config.use_cache = False
    model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, lora_dropout=0.05, target_modules="all-linear"))
    model.train()
    with tempfile.TemporaryDirectory() as scratch:
        arguments = TrainingArguments(output_dir=scratch, use_cpu=True, report_to="none")
        trainers = {
            "default": Trainer(model=model, args=arguments),
            "labelled": LabelledPositionsTrainer(model=model, args=arguments),
        }
        data = batches(tokenizer, args.steps + 1)
        labelled = sum(int((b["labels"][:, 1:] != IGNORE_INDEX).sum()) for b in data)
        total = sum(b["input_ids"].numel() for b in data)
        seconds: dict[str, list[float]] = {name: [] for name in trainers}
        for step, batch in enumerate(data):
            for name, trainer in trainers.items():
                started = time.perf_counter()
                trainer.compute_loss(model, dict(batch)).backward()
                model.zero_grad()
                if step:
                    seconds[name].append(time.perf_counter() - started)
    default, mine = (statistics.median(seconds[n]) for n in ("default", "labelled"))
    print(f"labelled positions: {labelled} of {total} tokens ({labelled / total:.1%})")
    print(f"default loss:  {default:.3f} s/step (median of {args.steps})")
    print(f"labelled loss: {mine:.3f} s/step (median of {args.steps})")
    print(f"speed-up: {default / mine:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
