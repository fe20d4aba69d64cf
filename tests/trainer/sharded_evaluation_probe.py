"""kubetune's evaluation (``evaluation.runner.evaluate``) run under torchrun by
``test_sharded_evaluation.py``, every rank inside ``shared_between_ranks`` as the pipeline runs it after
a multi-node job's training; each rank writes what it ended with to ``OUTPUT/rank-<r>.json``.

    sharded_evaluation_probe.py MODEL_DIR OUTPUT miss|hit

``miss``: the base side's caches (test split and general prompts) miss, so every rank scores its share.
``hit``: rank 0's caches hold planted values; any other rank that consults a cache fails the run.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

import torch
import torch.distributed as dist
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM, AutoTokenizer

from kubetune.api.v1alpha1 import EvaluationSpec
from kubetune_trainer.data.types import Example, Message
from kubetune_trainer.evaluation.forgetting import RegressionItem, RegressionSet
from kubetune_trainer.evaluation.runner import ModelUnderTest, evaluate
from kubetune_trainer.evaluation.scoring import SideScores, TokenLoss
from kubetune_trainer.evaluation.sharing import shared_between_ranks

LABELS = ("billing", "shipping", "account", "returns")
# Enough rows of varied length for several scoring batches (32 rows) and generation batches (64 rows).
TEST = [
    Example(
        messages=(
            Message("user", "ticket " + "word " * (2 + 9 * (i % 5)) + f"number {i}"),
            Message("assistant", LABELS[i % len(LABELS)]),
        ),
        source="test.jsonl",
        row=i + 1,
    )
    for i in range(80)
]
GENERAL = [
    Example(
        messages=(Message("user", f"what is {i} plus {i}? " + "please " * (i % 7)), Message("assistant", str(2 * i)))
    )
    for i in range(70)
]


def model(model_dir: str) -> ModelUnderTest:
    torch.manual_seed(0)  # the same adapter on every rank, as after training rank 0's weights are copied
    base = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    tuned = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, target_modules="all-linear"))
    with torch.no_grad():
        for name, parameter in tuned.named_parameters():
            if "lora_B" in name:
                parameter.normal_(0, 0.3)
    return ModelUnderTest(tuned.eval())


def consulted_by_rank0_alone(rank: int) -> None:
    if rank != 0:
        raise AssertionError(f"rank {rank} consulted a cache, which rank 0 alone reads")


def split_cache(rank: int, hit: bool) -> Callable[[list[Example], int | None, Callable[[], SideScores]], SideScores]:
    """The base's scores on the test split: planted on rank 0 (a hit), else computed (a miss)."""

    def consult(examples: list[Example], max_new_tokens: int | None, compute: Callable[[], SideScores]) -> SideScores:
        if not hit:
            return compute()
        consulted_by_rank0_alone(rank)
        return SideScores([TokenLoss(1.0 + i, 1) for i in range(len(examples))], ["cached"] * len(examples))

    return consult


def general_cache(rank: int, hit: bool) -> Callable[[Callable[[], list[TokenLoss]]], list[TokenLoss]]:
    """The base's likelihoods of its general answers: planted on rank 0 (a hit), else computed."""

    def consult(compute: Callable[[], list[TokenLoss]]) -> list[TokenLoss]:
        if not hit:
            return compute()
        consulted_by_rank0_alone(rank)
        return [TokenLoss(2.0, 1)] * len(GENERAL)

    return consult


def main() -> None:
    model_dir, output, mode = sys.argv[1:4]
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    if world > 1:
        dist.init_process_group("gloo")
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    hit = mode == "hit"
    regression = RegressionSet(
        "probe prompts", tuple(RegressionItem(e, (e.reference(),)) for e in GENERAL), general_cache(rank, hit)
    )
    with shared_between_ranks(rank, world) as sharing:
        report = evaluate(
            model(model_dir),
            tokenizer,
            TEST,
            EvaluationSpec(metrics=["accuracy", "perplexity"], maxNewTokens=4),
            regression=regression,
            max_length=128,
            base_test_scores=split_cache(rank, hit),
        )
    result = {
        "predictions": report.predictions,
        "general": report.general_predictions,
        "metrics": [asdict(metric) for metric in report.metrics],
        "likelihood": asdict(report.forgetting.likelihood) if report.forgetting.likelihood else None,
        "batches": [sharing.batches_scored, sharing.batches_in_all] if sharing else None,
    }
    Path(output).mkdir(parents=True, exist_ok=True)
    (Path(output) / f"rank-{rank}.json").write_text(json.dumps(result))
    if world > 1:
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
