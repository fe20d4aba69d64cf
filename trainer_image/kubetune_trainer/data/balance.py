"""Class balance for data whose answers are labels (``dataset.curation.balance``): a minority label is
not drowned by a frequent one. The curation report shows the label distribution whenever the answers
are labels; balancing applies only when the manifest asks, before the split, and is seeded by the
split's seed, so the same data gives the same rows on every run."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

from kubetune.api.v1alpha1 import BalanceMethod, BalanceSpec
from kubetune_trainer.data.curation import Dropped, KeyOf, example_key, split_bucket
from kubetune_trainer.data.types import Example

# Answers are labels when there are a few distinct ones, each short: classification, routing, intents.
MAX_LABELS = 50
MAX_LABEL_CHARS = 40
BALANCE_DOWNSAMPLED = "balance_downsampled"


def label_of(example: Example) -> str:
    return " ".join(example.reference().split()).lower()


def label_counts(examples: Sequence[Example]) -> Counter[str] | None:
    """The count of each label, or None when the answers are not labels (free text, pairs, plain text)."""
    if not examples or any(e.is_pair or not e.is_chat for e in examples):
        return None
    counts = Counter(label_of(e) for e in examples)
    if not 2 <= len(counts) <= MAX_LABELS or any(len(label) > MAX_LABEL_CHARS or not label for label in counts):
        return None
    return counts


@dataclass
class Balanced:
    examples: list[Example]
    lengths: list[int]  # the examples' token counts, in step with them
    dropped: list[Dropped]
    repeated: int  # rows added by upsampling


def balance(
    examples: Sequence[Example], lengths: Sequence[int], spec: BalanceSpec, seed: str, *, key: KeyOf = example_key
) -> Balanced:
    """``examples`` (labels, as ``label_counts`` says) with no label more than ``spec.max_ratio`` times as
    frequent as the rarest: the frequent labels' rows chosen by a seeded hash, or the rare labels'
    repeated in that order."""
    counts = label_counts(examples)
    if counts is None:
        raise ValueError("only data whose answers are labels can be balanced (label_counts)")
    order = sorted(range(len(examples)), key=lambda i: split_bucket(examples[i], f"{seed}/balance", key=key))
    by_label: dict[str, list[int]] = {}
    for index in order:
        by_label.setdefault(label_of(examples[index]), []).append(index)
    kept: list[int] = []
    dropped: list[Dropped] = []
    repeated = 0
    if spec.by == BalanceMethod.DOWNSAMPLE:
        allowed = math.floor(min(counts.values()) * spec.max_ratio)
        for label, members in by_label.items():
            kept += members[:allowed]
            detail = f"label '{label}': {len(members)} rows, at most {allowed} (maxRatio {spec.max_ratio:g})"
            dropped += [Dropped(examples[i], BALANCE_DOWNSAMPLED, detail) for i in members[allowed:]]
        kept.sort()  # the data's own order
    else:
        needed = math.ceil(max(counts.values()) / spec.max_ratio)
        kept = list(range(len(examples)))
        for members in by_label.values():
            extra = [members[i % len(members)] for i in range(max(0, needed - len(members)))]
            kept += extra
            repeated += len(extra)
    return Balanced([examples[i] for i in kept], [lengths[i] for i in kept], dropped, repeated)
