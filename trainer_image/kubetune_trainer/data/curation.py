"""Curation rules: exact duplicates, near-duplicates, length limits, deterministic splits, mixing.

Each rule returns the examples it keeps and the ones it dropped, so the report can count and
show them. Everything is deterministic: the same data and spec give the same result.

A dataset may hold a million examples, so the rules work in bulk: each example is normalised
once (:class:`ExampleKeys`), near-duplicates are found with MinHash signatures computed with numpy
for thousands of examples at a time, and a token counter that can count many examples at once
(:class:`BatchTokenCounter`) is handed all of them (``bench/curation.py`` measures each step).
"""

from __future__ import annotations

import functools
import hashlib
import re
import unicodedata
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Protocol, TypeAlias, runtime_checkable

import numpy as np
from numpy.typing import NDArray

from kubetune_trainer.data.types import Example

_WORD = re.compile(r"\w+")

KeyOf = Callable[[Example], str]
# What each numpy array holds (mypy skips numpy's own types: pyproject).
Hashes: TypeAlias = NDArray[np.uint64]
Signatures: TypeAlias = NDArray[np.uint32]
Counts: TypeAlias = NDArray[np.int64]
Mask: TypeAlias = NDArray[np.bool_]


def _strip_edges(text: str) -> str:
    """``text`` without its leading and trailing characters that are not letters or digits."""
    start, end = 0, len(text)
    while start < end and not text[start].isalnum():
        start += 1
    while end > start and not text[end - 1].isalnum():
        end -= 1
    return text[start:end]


def normalise(text: str) -> str:
    """Text as compared for duplicates: NFKC, case-folded, whitespace collapsed, edge punctuation dropped."""
    # str.split() splits on exactly what the regex \s matches, and str.isalnum() is exactly [^\W_]
    # (tests check every code point): the regexes' result, without a regex scanning every position.
    return _strip_edges(" ".join(unicodedata.normalize("NFKC", text).casefold().split()))


def example_key(example: Example) -> str:
    if example.text is not None:
        return normalise(example.text)
    key = "\x1e".join(f"{m.role}\x1f{normalise(m.content)}" for m in example.messages)
    return key if example.rejected is None else f"{key}\x1erejected\x1f{normalise(example.rejected)}"


class ExampleKeys:
    """Each example's :func:`example_key`, computed once for a whole pool: the exact and near rules,
    the split and the source weights all read it, and normalising is most of what they cost.

    Called with an example from elsewhere it normalises that example on the spot.
    """

    def __init__(self, examples: Sequence[Example]) -> None:
        self._examples = list(examples)  # held, so that no id below is reused while this lives
        self._keys = [example_key(e) for e in self._examples]
        self._index = {id(e): i for i, e in enumerate(self._examples)}

    def __call__(self, example: Example) -> str:
        index = self._index.get(id(example))
        if index is not None and self._examples[index] is example:
            return self._keys[index]
        return example_key(example)


@dataclass(frozen=True)
class Dropped:
    example: Example
    rule: str
    detail: str


def drop_exact_duplicates(
    examples: Sequence[Example], *, key: KeyOf = example_key
) -> tuple[list[Example], list[Dropped]]:
    seen: dict[str, Example] = {}
    kept, dropped = [], []
    for example in examples:
        normalised = key(example)
        first = seen.get(normalised)
        if first is not None:
            dropped.append(Dropped(example, "exact_duplicate", f"same as {first.source}:{first.row}"))
            continue
        seen[normalised] = example
        kept.append(example)
    return kept, dropped


def _shingles(text: str, size: int = 3) -> set[bytes]:
    words = _WORD.findall(text)
    if len(words) < size:
        return {" ".join(words).encode()} if words else set()
    return {" ".join(words[i : i + size]).encode() for i in range(len(words) - size + 1)}


def _jaccard(a: set[bytes], b: set[bytes]) -> float:
    common = len(a & b)
    return common / (len(a) + len(b) - common)


# --- Near-duplicates: MinHash signatures in bulk, LSH bands, candidates confirmed exactly.

# A pair exactly at the threshold becomes a candidate at least this often (1 - (1 - t^r)^b) ...
CANDIDATE_RECALL = 0.995
# ... with at least this many signature rows per band: fewer would make nearly unrelated short texts,
# which share a few common phrases, candidates by the million.
MIN_BAND_ROWS = 5
# Characters of text per numpy batch: about 45,000 shingles, a (num_perm x shingles) uint32 matrix of
# ~25 MB, which stays in cache far better than larger batches (they were slower, not faster).
SIGNATURE_BATCH_CHARS = 2**18
_SHINGLE_MIX = (np.uint64(0x9E3779B97F4A7C15), np.uint64(0xC2B2AE3D27D4EB4F), np.uint64(0x165667B19E3779F9))
_BYTE_BASE = np.uint64(0x100000001B3)
_BYTE_BASE_INVERSE = np.uint64(pow(0x100000001B3, -1, 2**64))
_BAND_MIX = np.uint64(0x100000001B3)
# An ASCII byte that is not a word character (regex \w: letters, digits, underscore) becomes a space;
# the table's upper half is never used (only ASCII text is translated).
_WORD_BYTES = bytes(c if chr(c).isalnum() or c == ord("_") else ord(" ") for c in range(128)) + bytes(128)


@dataclass(frozen=True)
class Banding:
    bands: int
    rows: int


def banding(threshold: float, num_perm: int) -> Banding:
    """The LSH bands for ``threshold``: as many signature rows per band as still make a pair at the
    threshold a candidate with probability CANDIDATE_RECALL (the more rows, the fewer dissimilar pairs
    are compared), and at least MIN_BAND_ROWS. Candidates are confirmed with their exact Jaccard
    similarity, so the bands decide only what is compared, never what is dropped."""
    chosen = Banding(num_perm // MIN_BAND_ROWS, MIN_BAND_ROWS)
    for rows in range(MIN_BAND_ROWS, num_perm + 1):
        bands = num_perm // rows
        if 1 - (1 - threshold**rows) ** bands >= CANDIDATE_RECALL:
            chosen = Banding(bands, rows)
    return chosen


def _mix64(values: Hashes) -> Hashes:
    """splitmix64's finaliser: every output bit depends on every input bit."""
    values = values ^ (values >> np.uint64(30))
    values = values * np.uint64(0xBF58476D1CE4E5B9)
    values = values ^ (values >> np.uint64(27))
    values = values * np.uint64(0x94D049BB133111EB)
    return values ^ (values >> np.uint64(31))


def _words_only(text: str) -> bytes:
    """The text's words (as the regex \\w+ finds them) as UTF-8, separated by spaces."""
    if text.isascii():  # the common case, without a regex: every other byte becomes a space
        return text.encode().translate(_WORD_BYTES)
    return " ".join(_WORD.findall(text)).encode()


def _word_hashes(texts: Sequence[str]) -> tuple[Hashes, Counts]:
    """A 64-bit hash of every word of ``texts`` in order, and each text's number of words.

    All in numpy over the texts' bytes, without a Python object per word: a word's hash is the
    polynomial of its bytes modulo 2^64 (from prefix sums: one pass over the bytes, then one step
    per word), mixed. Stable across runs and machines.
    """
    words = [_words_only(text) for text in texts]
    data: NDArray[np.uint8] = np.frombuffer(b" ".join(words) + b" ", dtype=np.uint8)
    inside: Mask = data != ord(" ")
    word_starts: Counts = np.flatnonzero(inside & ~np.r_[False, inside[:-1]])
    word_ends: Counts = np.flatnonzero(inside & ~np.r_[inside[1:], False]) + 1
    text_starts: Counts = np.cumsum([0] + [len(w) + 1 for w in words[:-1]])
    counts: Counts = np.bincount(np.searchsorted(text_starts, word_starts, side="right") - 1, minlength=len(texts))
    # prefix[i] = sum over k < i of (byte_k + 1) * B^k; a word [s, e) is (prefix[e] - prefix[s]) * B^-s.
    size = 1 << (len(data) - 1).bit_length()
    powers, inverse = _powers(size) if size <= _CACHED_POWERS else _powers.__wrapped__(size)
    prefix: Hashes = np.r_[np.uint64(0), np.cumsum((data.astype(np.uint64) + np.uint64(1)) * powers[: len(data)])]
    return _mix64((prefix[word_ends] - prefix[word_starts]) * inverse[word_starts]), counts


_CACHED_POWERS = 4 * SIGNATURE_BATCH_CHARS  # a batch of one very long text gets tables it does not keep


@functools.lru_cache(maxsize=4)
def _powers(size: int) -> tuple[Hashes, Hashes]:
    """B^i and B^-i modulo 2^64 for i < size (a power of two, so that few sizes are ever built)."""
    powers: Hashes = np.r_[np.uint64(1), np.cumprod(np.full(size - 1, _BYTE_BASE))]
    inverse: Hashes = np.r_[np.uint64(1), np.cumprod(np.full(size - 1, _BYTE_BASE_INVERSE))]
    return powers, inverse


class MinHasher:
    """MinHash signatures of the word 3-shingles of many texts at once.

    A shingle's 64-bit hash mixes its three words' (see :func:`_word_hashes`); each of ``num_perm``
    hash functions is x -> a*x + b mod 2^32 on the shingle's top 32 bits (odd ``a``: a permutation),
    and a text's signature holds each function's minimum. Texts of one or two words are one shingle
    of all their words, as in :func:`_shingles`.
    """

    def __init__(self, num_perm: int, seed: int = 1) -> None:
        generator = np.random.default_rng(seed)
        self.num_perm = num_perm
        self._a = generator.integers(0, 2**32, num_perm, dtype=np.uint64).astype(np.uint32) | np.uint32(1)
        self._b = generator.integers(0, 2**32, num_perm, dtype=np.uint64).astype(np.uint32)

    def signatures(self, texts: Sequence[str]) -> tuple[Signatures, Mask]:
        """A (num_perm x texts with words) uint32 matrix of signatures, and which texts have words."""
        hashes, counts = _word_hashes(texts)
        owner: Counts = np.repeat(np.arange(len(texts)), counts)
        size = counts[owner]
        position = np.arange(len(hashes)) - (np.cumsum(counts) - counts)[owner]
        second, third = np.zeros_like(hashes), np.zeros_like(hashes)
        second[:-1], third[:-2] = hashes[1:], hashes[2:]
        second[position + 1 >= size] = 0  # past the end of its text: a short text's shingle is all of it
        third[position + 2 >= size] = 0
        starts = (position <= size - 3) | ((size < 3) & (position == 0))
        shingles = _mix64(
            hashes[starts] * _SHINGLE_MIX[0] + second[starts] * _SHINGLE_MIX[1] + third[starts] * _SHINGLE_MIX[2]
        )
        values: Signatures = np.multiply.outer(self._a, (shingles >> np.uint64(32)).astype(np.uint32))
        values += self._b[:, None]
        per_text: Counts = np.where(counts >= 3, counts - 2, np.minimum(counts, 1))
        has_words = per_text > 0
        first = (np.cumsum(per_text) - per_text)[has_words]
        if not len(first):
            return np.empty((self.num_perm, 0), dtype=np.uint32), has_words
        return np.minimum.reduceat(values, first, axis=1), has_words


def _batches(texts: Sequence[str], chars: int) -> Iterator[tuple[int, int]]:
    """[start, end) ranges of ``texts`` of about ``chars`` characters each (a longer text: alone)."""
    start, size = 0, 0
    for index, text in enumerate(texts):
        size += len(text) + 1
        if size >= chars:
            yield start, index + 1
            start, size = index + 1, 0
    if start < len(texts):
        yield start, len(texts)


def _band_hashes(texts: Sequence[str], shape: Banding) -> tuple[Hashes, Mask]:
    """Each text's band hashes (texts x bands, uint64) and which texts have any (texts with words)."""
    hasher = MinHasher(shape.bands * shape.rows)
    hashes: Hashes = np.zeros((len(texts), shape.bands), dtype=np.uint64)
    has_words: Mask = np.zeros(len(texts), dtype=bool)
    for start, end in _batches(texts, SIGNATURE_BATCH_CHARS):
        signatures, present = hasher.signatures(texts[start:end])
        rows = np.arange(start, end)[present]
        has_words[rows] = True
        for band in range(shape.bands):
            combined: Hashes = np.zeros(signatures.shape[1], dtype=np.uint64)
            for row in signatures[band * shape.rows : (band + 1) * shape.rows]:
                combined = combined * _BAND_MIX + row
            hashes[rows, band] = combined
    return hashes, has_words


def _candidate_groups(hashes: Hashes, has_words: Mask) -> Iterator[list[int]]:
    """Per band, each set of two or more texts with the same band hash, in text order."""
    texts: Counts = np.flatnonzero(has_words)
    for band in range(hashes.shape[1]):
        values = hashes[texts, band]
        order = np.argsort(values, kind="stable")  # stable: members stay in text order
        ordered = values[order]
        same = ordered[1:] == ordered[:-1]
        member: Mask = np.zeros(len(ordered), dtype=bool)
        member[1:] |= same
        member[:-1] |= same
        if not member.any():
            continue
        members = texts[order[member]]
        group_starts = np.flatnonzero(np.r_[True, ordered[member][1:] != ordered[member][:-1]])
        yield from (group.tolist() for group in np.split(members, group_starts[1:]))


def _near_matches(
    texts: Sequence[str], threshold: float, num_perm: int, *, always_kept: int = 0
) -> dict[int, tuple[int, float]]:
    """{index: (the earliest kept index it is a near-duplicate of, their similarity)}.

    MinHash LSH proposes the candidates (see :func:`banding`); each candidate pair's exact Jaccard
    similarity decides, so neither the bands' nor the signatures' randomness drops an example. An
    example is compared with the kept examples before it. The first ``always_kept`` are never
    matched, so every later one is compared with each of them it shares a band with.
    """
    hashes, has_words = _band_hashes(texts, banding(threshold, num_perm))
    groups = list(_candidate_groups(hashes, has_words))
    groups_of: dict[int, list[int]] = {}
    for number, group in enumerate(groups):
        for member in group:
            groups_of.setdefault(member, []).append(number)
    # Each group's kept members so far: visiting examples in order, they are the ones before.
    kept_in: list[list[int]] = [[] for _ in groups]
    shingles: dict[int, set[bytes]] = {}

    def shingles_of(index: int) -> set[bytes]:
        found = shingles.get(index)
        if found is None:
            found = shingles[index] = _shingles(texts[index])
        return found

    matches: dict[int, tuple[int, float]] = {}
    for index in sorted(groups_of):
        if index >= always_kept:
            for earlier in sorted({kept for number in groups_of[index] for kept in kept_in[number]}):
                similarity = _jaccard(shingles_of(earlier), shingles_of(index))
                if similarity >= threshold:
                    matches[index] = (earlier, similarity)
                    break
        if index not in matches:
            for number in groups_of[index]:
                kept_in[number].append(index)
    return matches


def drop_near_duplicates(
    examples: Sequence[Example], threshold: float, *, num_perm: int = 128, key: KeyOf = example_key
) -> tuple[list[Example], list[Dropped]]:
    """Near-duplicates by the Jaccard similarity of word 3-shingles; the first of each group is kept
    (:func:`_near_matches`): an example is dropped as a duplicate of the earliest kept one at or
    above the threshold."""
    matches = _near_matches([key(example) for example in examples], threshold, num_perm)
    kept, dropped = [], []
    for index, example in enumerate(examples):
        if index not in matches:
            kept.append(example)
            continue
        earlier, similarity = matches[index]
        first = examples[earlier]
        dropped.append(Dropped(example, "near_duplicate", f"~{similarity:.2f} similar to {first.source}:{first.row}"))
    return kept, dropped


TEST_LEAKAGE = "test_leakage"


def drop_leaked(
    held_out: Sequence[Example],
    candidates: Sequence[Example],
    threshold: float,
    *,
    num_perm: int = 128,
    key: KeyOf = example_key,
) -> tuple[list[Example], list[Dropped]]:
    """``candidates`` without those that repeat a ``held_out`` example exactly or nearly (the
    near-duplicate rule's similarity at ``threshold``): a model scored on what it trained on looks
    better than it is. Whatever the dataset's own dedup settings, this always runs."""
    held = {key(example): example for example in held_out}
    remaining, dropped = [], []
    for example in candidates:
        twin = held.get(key(example))
        if twin is None:
            remaining.append(example)
        else:
            dropped.append(Dropped(example, TEST_LEAKAGE, f"same as test row {twin.source}:{twin.row}"))
    texts = [key(example) for example in (*held_out, *remaining)]
    matches = _near_matches(texts, threshold, num_perm, always_kept=len(held_out))
    kept = []
    for index, example in enumerate(remaining, start=len(held_out)):
        earlier, similarity = matches.get(index, (len(held_out), 0.0))
        if earlier >= len(held_out):  # no match, or only another candidate: not a leak
            kept.append(example)
            continue
        twin = held_out[earlier]
        dropped.append(
            Dropped(example, TEST_LEAKAGE, f"~{similarity:.2f} similar to test row {twin.source}:{twin.row}")
        )
    return kept, dropped


# --- Length limits


@runtime_checkable
class BatchTokenCounter(Protocol):
    """A token counter that can also count many examples at once (a tokenizer's batch call is faster)."""

    def __call__(self, example: Example) -> int: ...

    def count_batch(self, examples: Sequence[Example]) -> list[int]: ...


def filter_length(
    examples: Sequence[Example], count_tokens: Callable[[Example], int], min_tokens: int, max_tokens: int
) -> tuple[list[Example], list[Dropped], list[int]]:
    """Drops examples outside [min_tokens, max_tokens]; returns the kept examples' token counts too."""
    if isinstance(count_tokens, BatchTokenCounter):
        counts = count_tokens.count_batch(examples)
    else:
        counts = [count_tokens(example) for example in examples]
    kept, dropped, lengths = [], [], []
    for example, tokens in zip(examples, counts, strict=True):
        if tokens < min_tokens:
            dropped.append(Dropped(example, "too_short", f"{tokens} tokens < minTokens {min_tokens}"))
        elif tokens > max_tokens:
            dropped.append(Dropped(example, "too_long", f"{tokens} tokens > maxTokens {max_tokens}"))
        else:
            kept.append(example)
            lengths.append(tokens)
    return kept, dropped, lengths


# --- Splits and mixing


def split_bucket(example: Example, seed: str, *, key: KeyOf = example_key) -> float:
    """A stable number in [0, 1) from the example's normalised content: its split never changes."""
    digest = hashlib.sha256(f"{seed}\x00{key(example)}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def assign_split(example: Example, seed: str, validation: float, test: float, *, key: KeyOf = example_key) -> str:
    bucket = split_bucket(example, seed, key=key)
    if bucket < test:
        return "test"
    if bucket < test + validation:
        return "validation"
    return "train"


def apply_weight(examples: Sequence[Example], weight: float, seed: str, *, key: KeyOf = example_key) -> list[Example]:
    """Repeat a source ``int(weight)`` times and keep a hash-chosen fraction for the remainder."""
    whole = int(weight)
    fraction = weight - whole
    mixed = [e for e in examples for _ in range(whole)]
    if fraction > 0:
        mixed += [e for e in examples if split_bucket(e, f"{seed}/weight", key=key) < fraction]
    return mixed
