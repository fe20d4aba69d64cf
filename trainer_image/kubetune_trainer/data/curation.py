"""Curation rules: exact duplicates, near-duplicates, length limits, deterministic splits, mixing.

Each rule returns the examples it keeps and the ones it dropped, so the report can count and
show them. Everything is deterministic: the same data and spec give the same result.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from kubetune_trainer.data.types import Example

_SPACE = re.compile(r"\s+")
_EDGE_PUNCT = re.compile(r"^[\W_]+|[\W_]+$")
_WORD = re.compile(r"\w+")


def normalise(text: str) -> str:
    """Text as compared for duplicates: NFKC, case-folded, whitespace collapsed, edge punctuation dropped."""
    folded = _SPACE.sub(" ", unicodedata.normalize("NFKC", text).casefold()).strip()
    return _EDGE_PUNCT.sub("", folded)


def example_key(example: Example) -> str:
    if example.text is not None:
        return normalise(example.text)
    return "\x1e".join(f"{m.role}\x1f{normalise(m.content)}" for m in example.messages)


@dataclass(frozen=True)
class Dropped:
    example: Example
    rule: str
    detail: str


def drop_exact_duplicates(examples: Sequence[Example]) -> tuple[list[Example], list[Dropped]]:
    seen: dict[str, Example] = {}
    kept, dropped = [], []
    for example in examples:
        key = example_key(example)
        first = seen.get(key)
        if first is not None:
            dropped.append(Dropped(example, "exact_duplicate", f"same as {first.source}:{first.row}"))
            continue
        seen[key] = example
        kept.append(example)
    return kept, dropped


def _shingles(text: str, size: int = 3) -> set[bytes]:
    words = _WORD.findall(text)
    if len(words) < size:
        return {" ".join(words).encode()} if words else set()
    return {" ".join(words[i : i + size]).encode() for i in range(len(words) - size + 1)}


def drop_near_duplicates(
    examples: Sequence[Example], threshold: float, *, num_perm: int = 128
) -> tuple[list[Example], list[Dropped]]:
    """MinHash LSH over word 3-shingles; the first of each near-duplicate group is kept.

    Candidates from LSH are confirmed with the MinHash Jaccard estimate, so the threshold is
    what decides, not the banding's false positives.
    """
    from datasketch import MinHash, MinHashLSH

    lsh = MinHashLSH(threshold=threshold, num_perm=num_perm)
    hashes: dict[str, MinHash] = {}
    kept_by_key: dict[str, Example] = {}
    kept, dropped = [], []
    for index, example in enumerate(examples):
        minhash = MinHash(num_perm=num_perm, seed=1)
        shingles = _shingles(example_key(example))
        if not shingles:
            kept.append(example)
            continue
        minhash.update_batch(list(shingles))
        match = next(
            (key for key in lsh.query(minhash) if hashes[key].jaccard(minhash) >= threshold),
            None,
        )
        if match is not None:
            first = kept_by_key[match]
            similarity = hashes[match].jaccard(minhash)
            dropped.append(
                Dropped(example, "near_duplicate", f"~{similarity:.2f} similar to {first.source}:{first.row}")
            )
            continue
        key = str(index)
        lsh.insert(key, minhash)
        hashes[key] = minhash
        kept_by_key[key] = example
        kept.append(example)
    return kept, dropped


def filter_length(
    examples: Sequence[Example], count_tokens: Callable[[Example], int], min_tokens: int, max_tokens: int
) -> tuple[list[Example], list[Dropped], list[int]]:
    """Drops examples outside [min_tokens, max_tokens]; returns the kept examples' token counts too."""
    kept, dropped, lengths = [], [], []
    for example in examples:
        tokens = count_tokens(example)
        if tokens < min_tokens:
            dropped.append(Dropped(example, "too_short", f"{tokens} tokens < minTokens {min_tokens}"))
        elif tokens > max_tokens:
            dropped.append(Dropped(example, "too_long", f"{tokens} tokens > maxTokens {max_tokens}"))
        else:
            kept.append(example)
            lengths.append(tokens)
    return kept, dropped, lengths


def split_bucket(example: Example, seed: str) -> float:
    """A stable number in [0, 1) from the example's normalised content: its split never changes."""
    digest = hashlib.sha256(f"{seed}\x00{example_key(example)}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def assign_split(example: Example, seed: str, validation: float, test: float) -> str:
    bucket = split_bucket(example, seed)
    if bucket < test:
        return "test"
    if bucket < test + validation:
        return "validation"
    return "train"


def apply_weight(examples: Sequence[Example], weight: float, seed: str) -> list[Example]:
    """Repeat a source ``int(weight)`` times and keep a hash-chosen fraction for the remainder."""
    whole = int(weight)
    fraction = weight - whole
    mixed = [e for e in examples for _ in range(whole)]
    if fraction > 0:
        mixed += [e for e in examples if split_bucket(e, f"{seed}/weight") < fraction]
    return mixed
