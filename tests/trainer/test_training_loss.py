"""The training loss on labelled positions only is transformers' causal-LM loss, for less work."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, TrainingArguments

from kubetune_trainer.data.types import Example, Message
from kubetune_trainer.tensors.batching import RowDataset, build_rows, collator_for
from kubetune_trainer.tensors.encode import IGNORE_INDEX, encode_example
from kubetune_trainer.tensors.positions import labelled_positions
from kubetune_trainer.training.loss import LabelledPositionsTrainer


def chat(i: int) -> Example:
    return Example(messages=(Message("user", f"question {i} " * (i + 2)), Message("assistant", f"answer number {i}")))


@pytest.fixture()
def packed_batch(tokenizer_dir: Path) -> dict[str, torch.Tensor]:
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    encoded = [encode_example(chat(i), tokenizer, 96) for i in range(7)]
    rows = RowDataset(build_rows(encoded, 96, packing=True))
    return collator_for(tokenizer, packing=True)([rows[i] for i in range(len(rows))])


def test_labelled_positions_pair_each_kept_position_with_the_token_it_predicts() -> None:
    labels = torch.tensor([[IGNORE_INDEX, IGNORE_INDEX, 7, 8, IGNORE_INDEX], [IGNORE_INDEX, 5, IGNORE_INDEX, 6, 9]])
    keep, targets = labelled_positions(labels)
    assert keep.tolist() == [[False, True, True, False, False], [True, False, True, True, False]]
    assert targets.tolist() == [7, 8, 5, 6, 9]


def test_the_loss_and_its_gradients_are_transformers_own(
    tiny_model_dir: Path, packed_batch: dict[str, torch.Tensor], tmp_path: Path
) -> None:
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    model.config.use_cache = False
    reference = model(**packed_batch).loss
    reference.backward()
    expected = {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()

    projected_rows: list[int] = []
    model.lm_head.register_forward_hook(lambda module, args, out: projected_rows.append(args[0].shape[0]))
    trainer = LabelledPositionsTrainer(model=model, args=TrainingArguments(output_dir=str(tmp_path), use_cpu=True))
    loss = trainer.compute_loss(model, dict(packed_batch))
    loss.backward()

    labelled = int((packed_batch["labels"][:, 1:] != IGNORE_INDEX).sum())
    total = packed_batch["input_ids"].numel()
    assert projected_rows == [labelled] and labelled < total / 2  # the head saw the labelled positions only
    torch.testing.assert_close(loss, reference)
    for name, p in model.named_parameters():
        if name in expected:
            torch.testing.assert_close(p.grad, expected[name], rtol=1e-4, atol=1e-6, msg=name)
    # Across gradient accumulation the Trainer passes the whole accumulated batch's label count.
    halved = trainer.compute_loss(model, dict(packed_batch), num_items_in_batch=torch.tensor(2 * labelled))
    torch.testing.assert_close(halved, reference.detach() / 2)
