"""Encoded examples → training rows and batches, without training on padding.

Packing (the default) fills rows of up to ``max_length`` tokens first-fit-decreasing and
restarts ``position_ids`` at 0 for each example. With no 2-D attention mask, transformers
(``masking_utils.find_packed_sequence_indices``) turns restarting position ids into a
block-diagonal causal mask, so packed examples never attend to each other. Padding inside a
packed batch is one more "example" of its own, masked out of the loss.

The model must run with ``use_cache=False`` for this (a KV cache disables the detection);
the training code sets it. Without packing, rows are one example each, padded per batch with an attention mask; the
Trainer's length-grouped sampler keeps batches of similar lengths.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch.utils.data import Dataset

from kubetune_trainer.tensors.encode import IGNORE_INDEX, EncodedExample


@dataclass(frozen=True)
class Row:
    input_ids: list[int]
    labels: list[int]
    position_ids: list[int]


def pack_examples(examples: Sequence[EncodedExample], max_length: int) -> list[Row]:
    """First-fit-decreasing packing into rows of at most ``max_length`` tokens (deterministic)."""
    order = sorted(range(len(examples)), key=lambda i: (-len(examples[i]), i))
    bins: list[list[int]] = []
    free: list[int] = []
    for index in order:
        size = min(len(examples[index]), max_length)
        for slot, room in enumerate(free):
            if room >= size:
                bins[slot].append(index)
                free[slot] -= size
                break
        else:
            bins.append([index])
            free.append(max_length - size)
    rows = []
    for members in bins:
        ids: list[int] = []
        labels: list[int] = []
        positions: list[int] = []
        for index in members:
            example = examples[index]
            ids += example.input_ids[:max_length]
            # An example's first label is never a target on its own (nothing precedes it); in a
            # packed row it would become the target of the previous example's last token.
            labels += [IGNORE_INDEX, *example.labels[1:max_length]]
            positions += list(range(min(len(example), max_length)))
        rows.append(Row(ids, labels, positions))
    return rows


def single_rows(examples: Sequence[EncodedExample], max_length: int) -> list[Row]:
    return [
        Row(e.input_ids[:max_length], e.labels[:max_length], list(range(min(len(e), max_length)))) for e in examples
    ]


class RowDataset(Dataset[dict[str, list[int]]]):
    """Pre-built rows as the Trainer's dataset; ``lengths`` feeds length-grouped sampling."""

    def __init__(self, rows: Sequence[Row]) -> None:
        self.rows = list(rows)

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> dict[str, list[int]]:
        row = self.rows[index]
        return {"input_ids": row.input_ids, "labels": row.labels, "position_ids": row.position_ids}

    @property
    def lengths(self) -> list[int]:
        return [len(row.input_ids) for row in self.rows]


@dataclass
class RowCollator:
    """Pads a batch of rows. ``packed``: padding becomes its own segment, no attention mask."""

    pad_token_id: int
    packed: bool

    def __call__(self, features: list[dict[str, list[int]]]) -> dict[str, torch.Tensor]:
        width = max(len(f["input_ids"]) for f in features)
        ids, labels, positions, mask = [], [], [], []
        for feature in features:
            gap = width - len(feature["input_ids"])
            ids.append(feature["input_ids"] + [self.pad_token_id] * gap)
            labels.append(feature["labels"] + [IGNORE_INDEX] * gap)
            positions.append(feature["position_ids"] + list(range(gap)))
            mask.append([1] * len(feature["input_ids"]) + [0] * gap)
        batch = {
            "input_ids": torch.tensor(ids, dtype=torch.long),
            "labels": torch.tensor(labels, dtype=torch.long),
            "position_ids": torch.tensor(positions, dtype=torch.long),
        }
        if not self.packed:
            batch["attention_mask"] = torch.tensor(mask, dtype=torch.long)
        return batch


@dataclass(frozen=True)
class TokenCounts:
    positions: int = 0  # every position of every batch, padding included
    tokens: int = 0  # input tokens, padding excluded
    trained: int = 0  # tokens the loss is computed on (targets, after the causal shift)

    @property
    def padding_ratio(self) -> float:
        return 1.0 - self.tokens / self.positions if self.positions else 0.0

    def __add__(self, other: TokenCounts) -> TokenCounts:
        return TokenCounts(self.positions + other.positions, self.tokens + other.tokens, self.trained + other.trained)

    def __sub__(self, other: TokenCounts) -> TokenCounts:
        return TokenCounts(self.positions - other.positions, self.tokens - other.tokens, self.trained - other.trained)


@dataclass
class TokenMeter:
    """What the training batches held: throughput and padding are measured, not estimated from
    the rows (the sampler's order decides the padding).

    Batches are counted when collated and committed when a training step consumes them: data
    loaders fetch ahead, and a batch fetched for the next step must not count in this one.
    """

    counts: TokenCounts = field(default_factory=TokenCounts)
    _collated: deque[TokenCounts] = field(default_factory=deque, repr=False)

    def collated(self, batch: TokenCounts) -> None:
        self._collated.append(batch)

    def consumed(self) -> None:
        if self._collated:
            self.counts = self.counts + self._collated.popleft()


@dataclass
class MeteredCollator:
    collator: Callable[[list[dict[str, Any]]], dict[str, torch.Tensor]]  # a RowCollator, or pairs' collator
    meter: TokenMeter

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        batch = self.collator(features)
        self.meter.collated(
            TokenCounts(
                positions=batch["input_ids"].numel(),
                tokens=int(batch["attention_mask"].sum())
                if "attention_mask" in batch
                else sum(len(f["input_ids"]) for f in features),
                trained=int((batch["labels"][:, 1:] != IGNORE_INDEX).sum()),
            )
        )
        return batch


def build_rows(examples: Sequence[EncodedExample], max_length: int, *, packing: bool) -> list[Row]:
    return pack_examples(examples, max_length) if packing else single_rows(examples, max_length)


def padding_id(tokenizer: Any) -> int:
    """The token that pads a batch: the tokenizer's own, else its end of sequence (Llama tokenizers have none)."""
    return int(tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id)


def collator_for(tokenizer: Any, *, packing: bool) -> RowCollator:
    return RowCollator(pad_token_id=padding_id(tokenizer), packed=packing)
