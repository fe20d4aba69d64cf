"""Curation of 1,000,000 short examples: the trainer's data stage against a naive baseline, in one run.

    python bench/curation.py            # the full measurement (under an hour on 2 cores; resumable)
    python bench/curation.py --smoke    # 2,000 examples, a few seconds (CI)

The data: seeded, generated chat and prompt-completion rows (20 to 60 words drawn from the built-in
tokenizer's word list), written as JSONL shards, with planted cases whose truth is recorded:

- exact duplicates (case, spacing, edge punctuation, the other format): equal after normalisation;
- near-duplicates: a word added, dropped or replaced at an end, or punctuation inside; the true Jaccard
  similarity of their word 3-shingles to the original is at least ``POSITIVE_MIN`` (0.95);
- hard negatives: words replaced inside, a true Jaccard of at most ``NEGATIVE_MAX`` (0.8): must be kept;
- borderline pairs, between the two: the threshold (0.9) decides, so either answer is right; they are
  counted apart, outside precision and recall;
- invalid rows, too-short and too-long rows.

Both implementations run ``prepare_dataset``, the trainer's own code path (read, validate, exact and
near dedup, length filter with the built-in SmolLM2 tokenizer, hash split, mixing), each in its own
process so its peak memory is its own. "ours" is the code as it is; "baseline" is the same call with
what the trainer did before this benchmark put back: near-duplicates found with datasketch's MinHash
and MinHashLSH one example at a time (kept below, verbatim), tokens counted one example at a time, and
every rule normalising each example again.

Reported: wall and CPU seconds per stage and in total, peak RSS, precision and recall of near- and
exact-duplicate detection against the planted truth, and how far the two agree (which rows each drops).
Results go to ``docs/measurements/curation.json`` with the command, commit, machine and seeds; each
implementation's result is cached under ``--cache`` keyed by the configuration (and, for ours, the
code), so an interrupted run re-uses what finished.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import random
import re
import resource
import subprocess
import sys
import tempfile
import time
import unicodedata
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))

from measurement import code_digest as measured_code  # noqa: E402
from measurement import cpu_model, git  # noqa: E402

RESULTS = ROOT / "docs" / "measurements" / "curation.json"
# The code whose change invalidates a cached result of ours (the baseline is frozen in this file).
CODE_PATHS = ("trainer_image/kubetune_trainer/data", "trainer_image/kubetune_trainer/tensors/encode.py")

# The planted pairs' true Jaccard similarity keeps a margin from the threshold on both sides: with 128
# permutations a MinHash estimate has a standard deviation of about 0.03 near 0.9, so a pair planted
# closer to the threshold is decided by chance, not by the implementation.
POSITIVE_MIN = 0.95
NEGATIVE_MAX = 0.8
NEGATIVE_MIN = 0.5

TARGET_SECONDS = 180.0
TARGET_BYTES = 4 * 10**9


@dataclass(frozen=True)
class Config:
    rows: int
    shards: int
    seed: int = 14
    threshold: float = 0.9  # NearDedupSpec's default: checked against the API in main()
    min_tokens: int = 45  # the planted short rows have at most 42 tokens, the others at least 54
    max_tokens: int = 160
    # Planted rows, as fractions of ``rows``.
    exact: float = 0.03
    near: float = 0.03
    negative: float = 0.01
    borderline: float = 0.005
    invalid: float = 0.001
    short: float = 0.001
    long: float = 0.001

    def count(self, fraction: float) -> int:
        return max(1, round(self.rows * fraction))

    def key(self) -> str:
        return hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:16]


FULL = Config(rows=1_000_000, shards=8)
SMOKE = Config(rows=2_000, shards=2)

# Row kinds in the truth file.
ORIGINAL, EXACT, NEAR, NEGATIVE, BORDERLINE, INVALID, SHORT, LONG = range(8)
KINDS = ("original", "exact", "near", "negative", "borderline", "invalid", "short", "long")

USER_OPENINGS = (
    "how do i",
    "can you help me with",
    "what is the best way to",
    "why does my",
    "please explain",
    "is it possible to",
    "i need help with",
    "what should i do about",
    "could you tell me how",
    "where can i find",
    "when should i",
    "my",
)
ANSWER_OPENINGS = (
    "sure,",
    "you can",
    "the short answer is",
    "first,",
    "it depends:",
    "yes,",
    "no,",
    "try to",
    "in most cases",
    "to fix this,",
    "good question:",
    "we recommend that you",
)


def vocabulary() -> list[str]:
    """Whole lowercase words of the built-in tokenizer, in its merge order (roughly by frequency)."""
    from kubetune_trainer.models.builtin import builtin_tokenizer_dir

    vocab = json.loads((builtin_tokenizer_dir() / "tokenizer.json").read_text())["model"]["vocab"]
    ordered = sorted(vocab.items(), key=lambda item: item[1])
    return [t[1:] for t, _ in ordered if t.startswith("Ġ") and t[1:].isascii() and t[1:].isalpha() and len(t) >= 4]


# ---------------------------------------------------------------------------------------------------
# The data: generated rows with planted duplicates, negatives and invalid rows, and their truth.


@dataclass(frozen=True)
class Row:
    user: str
    answer: str


@dataclass
class Truth:
    """Per row, in reading order (shard by shard, line by line): its kind, the row it was copied from
    (-1 for none) and the true Jaccard similarity of its 3-shingles to that row (NaN for none)."""

    kind: np.ndarray
    origin: np.ndarray
    jaccard: np.ndarray

    def save(self, path: Path) -> None:
        temporary = path.with_name(path.name + ".tmp.npz")
        np.savez_compressed(temporary, kind=self.kind, origin=self.origin, jaccard=self.jaccard)
        temporary.replace(path)

    @classmethod
    def load(cls, path: Path) -> Truth:
        with np.load(path) as saved:
            return cls(saved["kind"], saved["origin"], saved["jaccard"])


def _sentence(words: Sequence[str], end: str) -> str:
    text = " ".join(words)
    return text[:1].upper() + text[1:] + end


def _shingled(row: Row) -> set[bytes]:
    """The 3-shingles the trainer compares, from its own normalisation of the example."""
    from kubetune_trainer.data.curation import _shingles, example_key
    from kubetune_trainer.data.types import Example, Message

    return _shingles(example_key(Example(messages=(Message("user", row.user), Message("assistant", row.answer)))))


def _jaccard(a: set[bytes], b: set[bytes]) -> float:
    return len(a & b) / len(a | b) if a or b else 1.0


class Generator:
    """Seeded rows: Zipf-distributed words after a templated opening, a question and an answer."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.words = vocabulary()
        self.rng = np.random.default_rng(config.seed)
        self.edits = random.Random(config.seed)
        weights = 1.0 / (np.arange(len(self.words)) + 10.0)
        self.cumulative = np.cumsum(weights / weights.sum())

    def draw(self, count: int) -> list[str]:
        picks = np.asarray(np.searchsorted(self.cumulative, self.rng.random(count), side="right"))
        return [self.words[min(i, len(self.words) - 1)] for i in picks.tolist()]

    def row(self, user_words: tuple[int, int] = (8, 25), answer_words: tuple[int, int] = (10, 35)) -> Row:
        user = [*self.edits.choice(USER_OPENINGS).split(), *self.draw(int(self.rng.integers(*user_words)))]
        answer = [*self.edits.choice(ANSWER_OPENINGS).split(), *self.draw(int(self.rng.integers(*answer_words)))]
        if self.edits.random() < 0.2:  # some commas, as people write
            answer[self.edits.randrange(1, len(answer) - 1)] += ","
        return Row(_sentence(user, "?"), _sentence(answer, "."))

    def short_row(self) -> Row:
        return Row(_sentence(self.draw(2), "?"), _sentence(self.draw(int(self.rng.integers(1, 3))), "."))

    # Copies of a row. An exact copy normalises to the same key; the others are edited and measured.

    def exact_copy(self, row: Row) -> Row:
        how = self.edits.randrange(4)
        if how == 0:
            return row  # the same row, possibly in the other format (every other shard)
        if how == 1:
            return Row(row.user.upper(), row.answer)
        if how == 2:
            return Row("  " + row.user.replace(" ", "  ", 3), row.answer + " ")
        return Row(row.user, row.answer.rstrip(".") + "!!")

    def _punctuated(self, row: Row) -> Row:
        words = row.answer.split(" ")
        at = self.edits.randrange(1, len(words) - 1)
        words[at] += self.edits.choice((",", ";", " -", ":"))
        return Row(row.user, " ".join(words))

    def _end_edit(self, row: Row) -> Row:
        which = self.edits.choice(("user", "answer"))
        text = getattr(row, which)
        end = text[-1]
        words = text[:-1].split(" ")
        how = self.edits.randrange(3)
        if how == 0:
            words.append(self.draw(1)[0])
        elif how == 1 and len(words) > 4:
            words.pop()
        else:
            words[-1] = self.draw(1)[0]
        return replace(row, **{which: " ".join(words) + end})

    def _inner_edit(self, row: Row, count: int) -> Row:
        which = self.edits.choice(("user", "answer"))
        words = getattr(row, which).split(" ")
        for at in self.edits.sample(range(1, max(2, len(words) - 1)), min(count, max(1, len(words) - 2))):
            words[at] = self.draw(1)[0]
        return replace(row, **{which: " ".join(words)})

    def variant(self, row: Row, kind: int, taken: set[bytes]) -> tuple[Row, float] | None:
        """An edited copy of ``row`` whose true Jaccard falls in ``kind``'s band, or None."""
        original = _shingled(row)
        low, high = {NEAR: (POSITIVE_MIN, 1.0), NEGATIVE: (NEGATIVE_MIN, NEGATIVE_MAX)}.get(
            kind, (NEGATIVE_MAX, POSITIVE_MIN)
        )
        count = 3
        for _ in range(30):
            if kind == NEAR:
                edited = self._punctuated(row) if self.edits.random() < 0.35 else self._end_edit(row)
            elif kind == NEGATIVE:
                edited = self._inner_edit(row, count)
            else:
                edited = self._inner_edit(row, 1) if self.edits.random() < 0.5 else self._end_edit(self._end_edit(row))
            shingles = _shingled(edited)
            similarity = _jaccard(original, shingles)
            key = _key_digest(edited)
            inside = low <= similarity <= high if kind != BORDERLINE else low < similarity < high
            if inside and key not in taken:
                taken.add(key)
                return edited, similarity
            if kind == NEGATIVE:
                count = count + 1 if similarity > high else max(1, count - 1)
        return None


def _key_digest(row: Row) -> bytes:
    from kubetune_trainer.data.curation import example_key
    from kubetune_trainer.data.types import Example, Message

    key = example_key(Example(messages=(Message("user", row.user), Message("assistant", row.answer))))
    return hashlib.blake2b(key.encode(), digest_size=16).digest()


def _invalid_line(number: int, chat: bool) -> str:
    how = number % 3
    if how == 0:
        return '{"messages": [{"role": "user", "content": "cut short'  # malformed JSON
    if chat:
        turns = [{"role": "bot" if how == 1 else "user", "content": "a question"}]
        turns.append({"role": "assistant", "content": "an answer" if how == 1 else "   "})
        return json.dumps({"messages": turns})
    return json.dumps({"prompt": "a question", "completion": "" if how == 2 else 3})


def generate(config: Config, folder: Path) -> Truth:
    """Write ``config.rows`` rows as JSONL shards under ``folder/shards`` and return their truth.

    Every copy comes after the row it copies (the rules keep the first of a group); exact copies and
    near-duplicates share a pool of "popular" originals, so some originals have several copies;
    negatives and borderline pairs each have an original of their own.
    """
    generator = Generator(config)
    planted = {
        EXACT: config.count(config.exact),
        NEAR: config.count(config.near),
        NEGATIVE: config.count(config.negative),
        BORDERLINE: config.count(config.borderline),
    }
    others = {INVALID: config.count(config.invalid), SHORT: config.count(config.short), LONG: config.count(config.long)}
    originals = config.rows - sum(planted.values()) - sum(others.values())
    rows: list[Row | None] = [generator.row() for _ in range(originals)]
    kinds = [ORIGINAL] * originals
    origins = [-1] * originals
    similarity = [float("nan")] * originals
    taken: dict[int, set[bytes]] = {}
    popular = generator.rng.permutation(originals)
    shared, single = popular[: max(1, originals // 25)], iter(popular[max(1, originals // 25) :].tolist())
    for kind, count in planted.items():
        made = 0
        while made < count:
            source = int(generator.rng.choice(shared)) if kind in (EXACT, NEAR) else next(single)
            row = rows[source]
            assert row is not None
            group = taken.setdefault(source, {_key_digest(row)})
            if kind == EXACT:
                copy: tuple[Row, float] | None = (generator.exact_copy(row), 1.0)
            else:
                copy = generator.variant(row, kind, group)
            if copy is None:
                continue
            rows.append(copy[0])
            kinds.append(kind)
            origins.append(source)
            similarity.append(copy[1])
            made += 1
    seen = {_key_digest(row) for row in rows if row is not None}
    for kind, count in others.items():
        for _ in range(count):
            if kind == INVALID:
                rows.append(None)
            else:
                while True:
                    row = generator.short_row() if kind == SHORT else generator.row(answer_words=(150, 220))
                    if (digest := _key_digest(row)) not in seen:
                        seen.add(digest)
                        break
                rows.append(row)
            kinds.append(kind)
            origins.append(-1)
            similarity.append(float("nan"))

    # Reading order: random, but every copy after its original.
    place = generator.rng.random(len(rows))
    copies = np.asarray(origins) >= 0
    source_place = place[np.asarray(origins)[copies]]
    place[copies] = source_place + (1 - source_place) * generator.rng.random(int(copies.sum()))
    order = np.argsort(place, kind="stable")
    position = np.empty_like(order)
    position[order] = np.arange(len(order))
    origin_array = np.asarray(origins)
    truth = Truth(
        kind=np.asarray(kinds, dtype=np.int8)[order],
        origin=np.where(origin_array >= 0, position[np.maximum(origin_array, 0)], -1)[order].astype(np.int64),
        jaccard=np.asarray(similarity, dtype=np.float32)[order],
    )
    shards = folder / "shards"
    shards.mkdir(parents=True, exist_ok=True)
    size = config.rows // config.shards
    for shard in range(config.shards):
        chat = shard % 2 == 0  # the other shards hold prompt-completion rows: the formats mix
        lines = []
        for number, index in enumerate(order[shard * size : (shard + 1) * size].tolist()):
            row = rows[index]
            if row is None:
                lines.append(_invalid_line(number, chat))
            elif chat:
                turns = [{"role": "user", "content": row.user}, {"role": "assistant", "content": row.answer}]
                lines.append(json.dumps({"messages": turns}))
            else:
                lines.append(json.dumps({"prompt": row.user, "completion": row.answer}))
        (shards / f"part-{shard:04d}.jsonl").write_text("\n".join(lines) + "\n")
    return truth


# ---------------------------------------------------------------------------------------------------
# The baseline: the trainer's curation before this benchmark, kept verbatim (only renamed).

_BASELINE_SPACE = re.compile(r"\s+")
_BASELINE_EDGE_PUNCT = re.compile(r"^[\W_]+|[\W_]+$")


def baseline_normalise(text: str) -> str:
    """Text as compared for duplicates: NFKC, case-folded, whitespace collapsed, edge punctuation dropped."""
    folded = _BASELINE_SPACE.sub(" ", unicodedata.normalize("NFKC", text).casefold()).strip()
    return _BASELINE_EDGE_PUNCT.sub("", folded)


def baseline_drop_near_duplicates(examples: Sequence[Any], threshold: float, *, num_perm: int = 128, **_: Any) -> Any:
    """MinHash LSH over word 3-shingles; the first of each near-duplicate group is kept.

    Candidates from LSH are confirmed with the MinHash Jaccard estimate, so the threshold is
    what decides, not the banding's false positives.
    """
    from datasketch import MinHash, MinHashLSH

    from kubetune_trainer.data.curation import Dropped, _shingles, example_key

    lsh = MinHashLSH(threshold=threshold, num_perm=num_perm)
    hashes: dict[str, MinHash] = {}
    kept_by_key: dict[str, Any] = {}
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


def install_baseline() -> None:
    """Put the baseline's pieces where ``prepare_dataset`` looks them up (in the measuring process only):
    the regex normalisation, no key shared between rules (each normalises again), datasketch."""
    from kubetune_trainer.data import curation

    setattr(curation, "normalise", baseline_normalise)  # noqa: B010 - a module attribute, replaced on purpose
    setattr(curation, "ExampleKeys", lambda pool: curation.example_key)  # noqa: B010
    setattr(curation, "drop_near_duplicates", baseline_drop_near_duplicates)  # noqa: B010


# ---------------------------------------------------------------------------------------------------
# One implementation measured, in a process of its own.

IMPLEMENTATIONS = ("baseline", "ours")
STAGES = (
    ("read", "read and validate"),
    ("keys", "normalise"),
    ("exact", "exact duplicates"),
    ("near", "near-duplicates"),
    ("length", "length filter (tokenizer)"),
    ("split", "split, mixing, report"),
)
RULES = ("kept", "exact_duplicate", "near_duplicate", "too_short", "too_long")
_WHERE = re.compile(r"(?:same as|similar to) (\S+):(\d+)$")
_TOKENS = re.compile(r"^(\d+) tokens")


def _spec(config: Config, data: Path) -> Any:
    from kubetune.api.v1alpha1 import DatasetSpec

    return DatasetSpec.model_validate(
        {
            "sources": [{"uri": f"file://{data / 'shards'}/"}],
            "invalidRows": "drop",
            "minExamples": 1,
            "curation": {
                "minTokens": config.min_tokens,
                "maxTokens": config.max_tokens,
                "nearDedup": {"threshold": config.threshold},
            },
        }
    )


def _rss_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def measure(implementation: str, config: Config, data: Path, out: Path) -> None:
    """Run ``prepare_dataset`` on the generated data as ``implementation`` and write what happened:
    seconds per stage, peak memory, and per row its fate, the row it duplicates and its token count."""
    from kubetune_trainer.data import curation, prepare
    from kubetune_trainer.models.builtin import builtin_tokenizer_dir
    from kubetune_trainer.storage import ObjectStore
    from kubetune_trainer.tensors.encode import TokenCounter, count_tokens
    from kubetune_trainer.training.model import load_tokenizer

    tokenizer = load_tokenizer(builtin_tokenizer_dir())
    counter: Callable[[Any], int] = TokenCounter(tokenizer)
    if implementation == "baseline":
        install_baseline()
        counter = lambda example: count_tokens(example, tokenizer, None)  # noqa: E731 - as the trainer did
    size = config.rows // config.shards
    shard_of = {f"file://{path}": number for number, path in enumerate(sorted((data / "shards").glob("*.jsonl")))}
    rule: np.ndarray = np.zeros(config.rows, dtype=np.int8)
    matched: np.ndarray = np.full(config.rows, -1, dtype=np.int64)
    tokens: np.ndarray = np.full(config.rows, -1, dtype=np.int32)

    def position(example: Any) -> int:
        return shard_of[example.source] * size + example.row - 1

    def record(dropped: Sequence[Any]) -> None:
        for item in dropped:
            at = position(item.example)
            rule[at] = RULES.index(item.rule)
            if (where := _WHERE.search(item.detail)) is not None:
                matched[at] = shard_of[where.group(1)] * size + int(where.group(2)) - 1
            elif (count := _TOKENS.match(item.detail)) is not None:
                tokens[at] = int(count.group(1))

    seconds: dict[str, dict[str, float]] = {}
    bookkeeping = {"wall": 0.0, "cpu": 0.0}  # this function's own recording, taken out of the total

    def timed(module: Any, name: str, stage: str, after: Callable[[Any], None] | None = None) -> None:
        original = getattr(module, name)

        def wrapper(*args: Any, **kwargs: Any) -> Any:
            wall, cpu = time.perf_counter(), time.process_time()
            result = original(*args, **kwargs)
            spent = seconds.setdefault(stage, {"wall": 0.0, "cpu": 0.0})
            spent["wall"] += time.perf_counter() - wall
            spent["cpu"] += time.process_time() - cpu
            if after is not None:
                wall, cpu = time.perf_counter(), time.process_time()
                after(result)
                bookkeeping["wall"] += time.perf_counter() - wall
                bookkeeping["cpu"] += time.process_time() - cpu
            return result

        setattr(module, name, wrapper)

    def lengths(result: Any) -> None:
        kept, dropped, counts = result
        record(dropped)
        for example, count in zip(kept, counts, strict=True):
            tokens[position(example)] = count

    timed(prepare, "_read_source", "read")
    timed(curation, "ExampleKeys", "keys")
    timed(curation, "drop_exact_duplicates", "exact", lambda result: record(result[1]))
    timed(curation, "drop_near_duplicates", "near", lambda result: record(result[1]))
    timed(curation, "filter_length", "length", lengths)
    rss_before, load_before = _rss_bytes(), os.getloadavg()[0]
    wall, cpu = time.perf_counter(), time.process_time()
    prepared = prepare.prepare_dataset(_spec(config, data), ObjectStore(), counter, max_tokens=config.max_tokens)
    wall = time.perf_counter() - wall - bookkeeping["wall"]
    cpu = time.process_time() - cpu - bookkeeping["cpu"]
    seconds["split"] = {
        "wall": wall - sum(s["wall"] for s in seconds.values()),
        "cpu": cpu - sum(s["cpu"] for s in seconds.values()),
    }
    report = prepared.report
    summary = {
        "implementation": implementation,
        "seconds": {"wall": wall, "cpu": cpu},
        "stages": {stage: seconds.get(stage, {"wall": 0.0, "cpu": 0.0}) for stage, _ in STAGES},
        "peakRssBytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        "rssBeforeBytes": rss_before,  # the tokenizer and its libraries (torch) loaded, no data yet
        "loadAverage": {"before": load_before, "after": os.getloadavg()[0]},  # others' work on the machine
        "invalidRows": sum(report.invalid_rows.values()),
        "dropped": dict(report.dropped),
        "splits": report.splits,
        "trainAfterMixing": report.train_after_mixing,
    }
    np.savez_compressed(out.with_suffix(".npz"), rule=rule, matched=matched, tokens=tokens)
    out.write_text(json.dumps(summary, indent=1) + "\n")


# ---------------------------------------------------------------------------------------------------
# Scoring against the planted truth, and the two implementations against each other.


@dataclass
class Fate:
    """Per row: its rule (an index into RULES), the row it duplicates (-1: none), its token count (-1)."""

    rule: np.ndarray
    matched: np.ndarray
    tokens: np.ndarray

    @classmethod
    def load(cls, path: Path) -> Fate:
        with np.load(path) as saved:
            return cls(saved["rule"], saved["matched"], saved["tokens"])


def _ratio(numerator: int, denominator: int) -> float | None:
    return numerator / denominator if denominator else None


def score(truth: Truth, fate: Fate) -> dict[str, Any]:
    """Precision and recall of each duplicate rule against the planted truth.

    A planted copy is found when it is dropped by its rule as a duplicate of its own group (the row it
    was copied from, or another copy of that row). Precision counts every row the rule dropped, except
    borderline pairs, which the threshold may decide either way.
    """
    rows = np.arange(len(truth.kind))
    group = np.where(truth.origin >= 0, truth.origin, rows)
    same_group = (fate.matched >= 0) & (group[np.maximum(fate.matched, 0)] == group)
    scores: dict[str, Any] = {}
    for name, kind in (("near", NEAR), ("exact", EXACT)):
        rule = RULES.index(f"{name}_duplicate")
        dropped = fate.rule == rule
        found = int((dropped & same_group & (truth.kind == kind)).sum())
        judged = int((dropped & (truth.kind != BORDERLINE)).sum())
        planted = int((truth.kind == kind).sum())
        scores[name] = {
            "planted": planted,
            "dropped": int(dropped.sum()),
            "found": found,
            "precision": _ratio(found, judged),
            "recall": _ratio(found, planted),
        }
    near = RULES.index("near_duplicate")
    borderline = truth.kind == BORDERLINE
    scores["negativesDropped"] = int(((fate.rule == near) & (truth.kind == NEGATIVE)).sum())
    scores["negatives"] = int((truth.kind == NEGATIVE).sum())
    scores["borderline"] = int(borderline.sum())
    scores["borderlineDropped"] = int(((fate.rule == near) & borderline).sum())
    for name, kind in (("too_short", SHORT), ("too_long", LONG)):
        dropped = fate.rule == RULES.index(name)
        scores[name] = {
            "planted": int((truth.kind == kind).sum()),
            "plantedDropped": int((dropped & (truth.kind == kind)).sum()),
            "dropped": int(dropped.sum()),
        }
    return scores


def agreement(truth: Truth, ours: Fate, baseline: Fate) -> dict[str, Any]:
    """Which rows the two drop, rule by rule, the rows where they differ by planted kind, and whether
    they count the same tokens for the rows both count."""
    rules: dict[str, dict[str, int]] = {}
    for number, name in enumerate(RULES[1:], start=1):
        mine, theirs = ours.rule == number, baseline.rule == number
        rules[name] = {
            "both": int((mine & theirs).sum()),
            "oursOnly": int((mine & ~theirs).sum()),
            "baselineOnly": int((~mine & theirs).sum()),
        }
    differ = ours.rule != baseline.rule
    near = RULES.index("near_duplicate")
    both_near = (ours.rule == near) & (baseline.rule == near)
    counted = (ours.tokens >= 0) & (baseline.tokens >= 0)
    planted = (truth.kind == NEAR) | (truth.kind == EXACT)
    found_by_baseline = planted & (baseline.rule != 0)
    return {
        "plantedFoundByBaseline": int(found_by_baseline.sum()),
        "plantedFoundByBaselineAndOurs": int((found_by_baseline & (ours.rule == baseline.rule)).sum()),
        "plantedFoundByOursOnly": int((planted & (ours.rule != 0) & (baseline.rule == 0)).sum()),
        "rules": rules,
        "differingRows": int(differ.sum()),
        "differingByKind": {KINDS[k]: int((differ & (truth.kind == k)).sum()) for k in range(len(KINDS))},
        "nearSameOriginal": int((both_near & (ours.matched == baseline.matched)).sum()),
        "nearBoth": int(both_near.sum()),
        "tokensCountedByBoth": int(counted.sum()),
        "tokensEqual": int((counted & (ours.tokens == baseline.tokens)).sum()),
    }


# ---------------------------------------------------------------------------------------------------
# Orchestration: data, each implementation in its own process (cached), results and their rendering.


def code_digest() -> str:
    """sha256 of the trainer code a measurement of ours depends on (tracked or not)."""
    return measured_code(CODE_PATHS)


def _source_digest(*objects: Any) -> str:
    import inspect

    return hashlib.sha256("".join(inspect.getsource(o) for o in objects).encode()).hexdigest()


def machine() -> dict[str, Any]:
    import datasketch
    import tokenizers
    import transformers

    return {
        "cpu": cpu_model(),
        "cores": len(os.sched_getaffinity(0)),
        "memoryBytes": os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "tokenizers": tokenizers.__version__,
        "transformers": transformers.__version__,
        "datasketch": datasketch.__version__,
    }


def run_implementation(implementation: str, config: Config, data: Path, cache: Path) -> tuple[dict[str, Any], Fate]:
    """One implementation's result: from the cache when this configuration and code ran to the end
    before, else measured now in a child process (its peak memory is its own)."""
    parts: list[Any] = [measure, _spec, install_baseline]
    if implementation == "baseline":
        parts += [baseline_normalise, baseline_drop_near_duplicates]
    key = hashlib.sha256(f"{config.key()}/{code_digest()}/{_source_digest(*parts)}".encode()).hexdigest()[:16]
    out = cache / f"{implementation}-{key}.json"
    if out.exists() and out.with_suffix(".npz").exists():
        print(f"{implementation}: cached ({out})", file=sys.stderr)
    else:
        print(f"{implementation}: measuring {config.rows} rows", file=sys.stderr)
        partial = out.with_name(out.stem + ".partial.json")
        command = [sys.executable, __file__, "--child", implementation, "--data", str(data), "--out", str(partial)]
        subprocess.run([*command, "--config", json.dumps(asdict(config))], check=True)
        partial.with_suffix(".npz").replace(out.with_suffix(".npz"))
        partial.replace(out)  # last: the marker that this result is complete
    return json.loads(out.read_text()), Fate.load(out.with_suffix(".npz"))


def dataset(config: Config, cache: Path) -> tuple[Path, Truth, float]:
    """The generated rows and their truth, generated once per configuration and generator."""
    key = hashlib.sha256(f"{config.key()}/{_source_digest(Generator, generate, vocabulary)}".encode()).hexdigest()
    folder = cache / f"data-{key[:16]}"
    truth_file = folder / "truth.npz"
    seconds_file = folder / "generation-seconds.txt"
    if truth_file.exists() and seconds_file.exists():
        return folder, Truth.load(truth_file), float(seconds_file.read_text())
    print(f"generating {config.rows} rows into {folder}", file=sys.stderr)
    started = time.perf_counter()
    truth = generate(config, folder)
    seconds = time.perf_counter() - started
    truth.save(truth_file)
    seconds_file.write_text(f"{seconds:.1f}\n")
    return folder, truth, seconds


def met(run: dict[str, Any]) -> bool:
    return bool(run["seconds"]["wall"] <= TARGET_SECONDS and run["peakRssBytes"] <= TARGET_BYTES)


def _gb(size: float) -> str:
    return f"{size / 1e9:.2f} GB"


def _percent(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2%}"


def render_markdown(results: dict[str, Any]) -> str:
    """The docs section (docs/benchmarks.md), rendered from the recorded JSON; a test compares the two."""
    config, runs, planted = results["config"], results["runs"], results["planted"]
    ours, baseline = runs["ours"], runs["baseline"]
    stages = dict(STAGES)
    levers = {
        "read": "unchanged (the same reader)",
        "keys": "each example normalised once, without the edge-punctuation regex's scan",
        "exact": "reads the shared key",
        "near": "MinHash of whole batches in numpy, LSH bands in numpy, candidates confirmed exactly",
        "length": "one call of the Rust tokenizer per 4,096 examples (no offsets, no Python lists of ids), "
        "the next chunk's chat template rendered meanwhile",
        "split": "reads the shared key",
    }
    machine = results["machine"]
    ratio = results["ratio"]
    rows = config["rows"]
    lines = [
        f"## Curation of {rows:,} short examples",
        "",
        f"`{results['command']}` at commit `{results['commit'][:12]}`"
        + (" (with uncommitted changes, code sha256 " + f"`{results['codeSha256'][:12]}`)" if results["dirty"] else "")
        + f"; {machine['cpu']}, {machine['cores']} cores, {machine['memoryBytes'] / 2**30:.0f} GiB; Python "
        f"{machine['python']}, tokenizers {machine['tokenizers']}, datasketch {machine['datasketch']}. "
        "Recorded in `docs/measurements/curation.json`; this section is rendered from it by `bench/curation.py`.",
        "",
        f"What runs: `prepare_dataset`, the trainer's data stage, on {rows:,} generated chat and prompt-completion "
        f"rows (seed {results['seeds']['data']}, {config['shards']} JSONL shards): read and validate, exact "
        f"duplicates, near-duplicates (Jaccard similarity of word 3-shingles at least {config['threshold']}, the "
        f"API's default), the length filter ({config['min_tokens']} to {config['max_tokens']} tokens, counted with "
        "the built-in SmolLM2 tokenizer as training renders them), the hash split. Both implementations run on "
        f"all {rows:,} rows (no subsample, nothing extrapolated), each in a "
        "process of its own (peak RSS is that process's, the tokenizer and torch included: "
        f"{_gb(ours['rssBeforeBytes'])} before any data). The baseline is the code before this change: "
        "datasketch's MinHash and MinHashLSH one example at a time, one tokenizer call per example, every rule "
        "normalising each example again with regexes.",
        "",
        f"Planted: {planted['exact']:,} exact duplicates, {planted['near']:,} near-duplicates (true Jaccard at "
        f"least {POSITIVE_MIN}), {planted['negative']:,} hard negatives (true Jaccard {NEGATIVE_MIN} to "
        f"{NEGATIVE_MAX}: must be kept), {planted['borderline']:,} borderline pairs (between the two: counted "
        f"apart), {planted['invalid']:,} invalid, {planted['short']:,} too short and {planted['long']:,} too long rows.",
        "",
        "| stage | baseline wall s | ours wall s | ours CPU s | what changed |",
        "|---|---:|---:|---:|---|",
    ]
    for stage, label in stages.items():
        # The baseline has no stage of its own for this: each of its rules normalises again.
        before = "in each rule" if stage == "keys" else f"{baseline['stages'][stage]['wall']:.1f}"
        lines.append(
            f"| {label} | {before} | {ours['stages'][stage]['wall']:.1f} "
            f"| {ours['stages'][stage]['cpu']:.1f} | {levers[stage]} |"
        )
    lines += [
        f"| **total** | **{baseline['seconds']['wall']:.1f}** | **{ours['seconds']['wall']:.1f}** "
        f"| **{ours['seconds']['cpu']:.1f}** | |",
        f"| peak RSS | {_gb(baseline['peakRssBytes'])} | {_gb(ours['peakRssBytes'])} | | |",
        "",
        f"Ours/baseline, measured in the same run: wall time {ratio['wall']:.3f} ({1 / ratio['wall']:.1f}x "
        f"faster), CPU time {ratio['cpu']:.3f}, peak RSS {ratio['peakRss']:.2f}. Load average from other work "
        f"on the machine: {baseline['loadAverage']['before']:.1f} before the baseline, "
        f"{ours['loadAverage']['before']:.1f} before ours.",
        "",
        "| against the planted truth | baseline | ours |",
        "|---|---:|---:|",
    ]
    for name, label in (("near", "near-duplicates"), ("exact", "exact duplicates")):
        for measure_name in ("precision", "recall"):
            lines.append(
                f"| {label}: {measure_name} | {_percent(baseline['score'][name][measure_name])} "
                f"| {_percent(ours['score'][name][measure_name])} |"
            )
    lines += [
        f"| hard negatives dropped (of {planted['negative']:,}) | {baseline['score']['negativesDropped']:,} "
        f"| {ours['score']['negativesDropped']:,} |",
        f"| borderline pairs dropped (of {planted['borderline']:,}) | {baseline['score']['borderlineDropped']:,} "
        f"| {ours['score']['borderlineDropped']:,} |",
        f"| too short / too long dropped | {baseline['score']['too_short']['dropped']:,} / "
        f"{baseline['score']['too_long']['dropped']:,} | {ours['score']['too_short']['dropped']:,} / "
        f"{ours['score']['too_long']['dropped']:,} |",
    ]
    agreed = results["agreement"]
    near, exact = agreed["rules"]["near_duplicate"], agreed["rules"]["exact_duplicate"]
    bands = results["banding"]
    lines += [
        "",
        f"Agreement: both drop the same {exact['both']:,} exact duplicates ({exact['oursOnly']:,} only ours, "
        f"{exact['baselineOnly']:,} only the baseline). Of near-duplicates, {near['both']:,} are dropped by both "
        f"({agreed['nearSameOriginal']:,} of them as duplicates of the same row), {near['oursOnly']:,} by ours "
        f"only and {near['baselineOnly']:,} by the baseline only; the rows where the two differ are, by planted "
        "kind: "
        + ", ".join(f"{kind} {count:,}" for kind, count in agreed["differingByKind"].items() if count)
        + f". Token counts are equal for {agreed['tokensEqual']:,} of the {agreed['tokensCountedByBoth']:,} "
        "rows both count.",
        "",
        f"Why the baseline misses near-duplicates: datasketch sizes its LSH bands to balance false positives and "
        f"negatives ({bands['baseline']['bands']} bands of {bands['baseline']['rows']} rows at this threshold), so "
        f"a pair at Jaccard {POSITIVE_MIN} becomes a candidate only {bands['baseline']['candidateAt95']:.0%} of "
        "the time, and a candidate is then judged on a 128-permutation estimate. Ours uses "
        f"{bands['ours']['bands']} bands of {bands['ours']['rows']} rows (a pair at the threshold becomes a "
        f"candidate {bands['ours']['candidateAtThreshold']:.1%} of the time, one at {POSITIVE_MIN} "
        f"{bands['ours']['candidateAt95']:.2%}) and judges each candidate on its exact Jaccard similarity.",
        "",
    ]
    target = results["target"]
    lines.append(
        f"Target: under {target['seconds'] / 60:.0f} minutes and {target['bytes'] / 1e9:.0f} GB on "
        f"{machine['cores']} cores, the same duplicates found. {'Met' if target['met'] else 'Not met'}: ours took "
        f"{ours['seconds']['wall']:.0f} s ({ours['seconds']['cpu']:.0f} s of CPU, with a load average of "
        f"{ours['loadAverage']['before']:.1f} from other work when it started) and {_gb(ours['peakRssBytes'])} at "
        f"its peak; counting the tokens of every kept example is {ours['stages']['length']['wall']:.0f} s of it. "
        f"Ours drops {agreed['plantedFoundByBaselineAndOurs']:,} of the {agreed['plantedFoundByBaseline']:,} "
        f"planted duplicates the baseline finds, by the same rule, and {agreed['plantedFoundByOursOnly']:,} planted "
        "ones it misses."
    )
    return "\n".join(lines) + "\n"


def banding_summary(threshold: float) -> dict[str, dict[str, float]]:
    """Both implementations' LSH bands at ``threshold`` and how often a pair becomes a candidate."""
    from datasketch import MinHashLSH

    from kubetune_trainer.data.curation import banding

    def candidate(bands: int, rows: int, similarity: float) -> float:
        return float(1 - (1 - similarity**rows) ** bands)

    lsh = MinHashLSH(threshold=threshold, num_perm=128)
    ours = banding(threshold, 128)
    shapes = {"baseline": (lsh.b, lsh.r), "ours": (ours.bands, ours.rows)}
    return {
        name: {
            "bands": bands,
            "rows": rows,
            "candidateAtThreshold": candidate(bands, rows, threshold),
            "candidateAt95": candidate(bands, rows, POSITIVE_MIN),
        }
        for name, (bands, rows) in shapes.items()
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true", help=f"{SMOKE.rows:,} rows, a few seconds (CI)")
    parser.add_argument("--rows", type=int, help=f"rows to generate (default {FULL.rows:,})")
    parser.add_argument("--results", type=Path, help=f"where to write the results (default {RESULTS}; the smoke: none)")
    parser.add_argument(
        "--cache",
        type=Path,
        default=Path.home() / ".cache" / "kubetune" / "bench-curation",
        help="generated data and each implementation's finished result (an interrupted run resumes)",
    )
    parser.add_argument("--only", choices=IMPLEMENTATIONS, help="measure one implementation, record nothing")
    parser.add_argument("--child", choices=IMPLEMENTATIONS, help=argparse.SUPPRESS)
    parser.add_argument("--data", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--config", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        measure(args.child, Config(**json.loads(args.config)), args.data, args.out)
        return 0

    from kubetune.api.v1alpha1 import NearDedupSpec

    config = SMOKE if args.smoke else FULL
    if args.rows:
        config = replace(config, rows=args.rows)
    assert config.threshold == NearDedupSpec().threshold, "measure at the API's default threshold"
    implementations = (args.only,) if args.only else IMPLEMENTATIONS
    with tempfile.TemporaryDirectory(prefix="bench-curation-") as scratch:
        cache = Path(scratch) if args.smoke else args.cache
        cache.mkdir(parents=True, exist_ok=True)
        data, truth, generation_seconds = dataset(config, cache)
        runs: dict[str, dict[str, Any]] = {}
        fates: dict[str, Fate] = {}
        for implementation in implementations:
            summary, fates[implementation] = run_implementation(implementation, config, data, cache)
            runs[implementation] = {**summary, "score": score(truth, fates[implementation])}
            near = runs[implementation]["score"]["near"]
            print(
                f"{implementation:>8}: {summary['seconds']['wall']:7.1f} s wall, {summary['seconds']['cpu']:7.1f} s CPU, "
                f"peak RSS {_gb(summary['peakRssBytes'])}; near-duplicates precision {_percent(near['precision'])}, "
                f"recall {_percent(near['recall'])}"
            )
    if args.only:
        return 0
    ours, baseline = runs["ours"], runs["baseline"]
    ratio = {
        "wall": ours["seconds"]["wall"] / baseline["seconds"]["wall"],
        "cpu": ours["seconds"]["cpu"] / baseline["seconds"]["cpu"],
        "peakRss": ours["peakRssBytes"] / baseline["peakRssBytes"],
    }
    print(
        f"ours/baseline: wall time {ratio['wall']:.3f} ({1 / ratio['wall']:.1f}x faster), CPU time {ratio['cpu']:.3f}, "
        f"peak RSS {ratio['peakRss']:.2f}"
    )
    flags = (" --smoke" if args.smoke else "") + (f" --rows {args.rows}" if args.rows else "")
    results = {
        "command": f"python bench/curation.py{flags}",
        "commit": git("rev-parse", "HEAD"),
        "dirty": bool(git("status", "--porcelain", "--", *CODE_PATHS, "bench/curation.py")),
        "codeSha256": code_digest(),
        "machine": machine(),
        "seeds": {"data": config.seed, "minhash": 1, "datasketch": 1},
        "config": asdict(config),
        "planted": {name: int((truth.kind == kind).sum()) for kind, name in enumerate(KINDS)},
        "generationSeconds": generation_seconds,
        "banding": banding_summary(config.threshold),
        "runs": runs,
        "agreement": agreement(truth, fates["ours"], fates["baseline"]),
        "ratio": ratio,
        "target": {"seconds": TARGET_SECONDS, "bytes": TARGET_BYTES, "met": met(ours)},
    }
    destination = args.results or (None if args.smoke else RESULTS)
    if destination is not None:
        destination.parent.mkdir(parents=True, exist_ok=True)
        destination.write_text(json.dumps(results, indent=1) + "\n")
        print(f"recorded in {destination}", file=sys.stderr)
    if args.smoke:
        near, exact = ours["score"]["near"], ours["score"]["exact"]
        if near["recall"] != 1.0 or near["precision"] != 1.0 or exact["recall"] != 1.0:
            print("the planted duplicates were not all found (or something else was dropped)", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
