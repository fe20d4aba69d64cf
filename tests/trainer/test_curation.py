"""The curation rules in bulk: normalisation as its regex definition, near-duplicates as an all-pairs
comparison would find them, MinHash estimates that track Jaccard similarity, token counts in batches
equal to one at a time."""

from __future__ import annotations

import json
import random
import re
import sys
import unicodedata
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kubetune.api.v1alpha1 import DatasetSpec
from kubetune_trainer.data import curation
from kubetune_trainer.data.curation import (
    CANDIDATE_RECALL,
    MIN_BAND_ROWS,
    ExampleKeys,
    MinHasher,
    _shingles,
    _word_hashes,
    banding,
    drop_near_duplicates,
    example_key,
    normalise,
)
from kubetune_trainer.data.prepare import prepare_dataset
from kubetune_trainer.data.types import Example, Message
from kubetune_trainer.storage import ObjectStore

_SPACE = re.compile(r"\s+")
_EDGE_PUNCT = re.compile(r"^[\W_]+|[\W_]+$")


def regex_normalise(text: str) -> str:
    """normalise() as it was first written, with regexes: the definition the fast one must keep."""
    folded = _SPACE.sub(" ", unicodedata.normalize("NFKC", text).casefold()).strip()
    return _EDGE_PUNCT.sub("", folded)


def test_string_methods_agree_with_the_regex_classes_on_every_code_point() -> None:
    word, space = re.compile(r"[^\W_]"), re.compile(r"\s")
    for code in range(sys.maxunicode + 1):
        char = chr(code)
        assert bool(word.match(char)) == char.isalnum(), hex(code)
        assert bool(space.match(char)) == char.isspace() == (len(f"a{char}b".split()) == 2), hex(code)


@settings(max_examples=400, deadline=None)
@given(st.text(alphabet=st.characters(codec="utf-8"), max_size=60))
def test_normalise_is_its_regex_definition(text: str) -> None:
    assert normalise(text) == regex_normalise(text)


@pytest.mark.parametrize(
    "text",
    [
        "",
        "!!",
        "  Hello,  World!! ",
        "_x_",
        "\ufb01ne \uff26\uff55\uff4c\uff4c",
        "A\u00a0b\u2028c",
        "¿Qué tal?",
        "x" * 3,
    ],
)
def test_normalise_edge_cases(text: str) -> None:
    assert normalise(text) == regex_normalise(text)


def test_example_keys_are_computed_once_and_match() -> None:
    pool = [Example(text="Text  number 0!"), Example(messages=(Message("user", "Hi"), Message("assistant", "Yo")))]
    keys = ExampleKeys(pool)
    assert [keys(e) for e in pool] == [example_key(e) for e in pool]
    outsider = Example(text="Text  number 0!")  # equal to pool[0], another object: normalised on the spot
    assert keys(outsider) == example_key(outsider)


# --- near-duplicates


def words(count: int, rng: random.Random) -> list[str]:
    return [f"w{rng.randrange(3000)}" for _ in range(count)]


def chat(user: str, answer: str, row: int) -> Example:
    return Example(messages=(Message("user", user), Message("assistant", answer)), source="mem", row=row)


def all_pairs(examples: list[Example], threshold: float) -> list[tuple[int, int]]:
    """(dropped, kept it duplicates) by comparing each example with every kept one before it."""
    kept: list[tuple[int, set[bytes]]] = []
    found = []
    for index, example in enumerate(examples):
        shingles = _shingles(example_key(example))
        match = next(
            (
                first
                for first, theirs in kept
                if shingles and len(shingles & theirs) / len(shingles | theirs) >= threshold
            ),
            None,
        )
        if match is None:
            kept.append((index, shingles))
        else:
            found.append((index, match))
    return found


def corpus(rng: random.Random) -> list[Example]:
    """Rows with edited copies after them: at, above and below the threshold."""
    examples = []
    for row in range(300):
        user, answer = words(rng.randrange(6, 14), rng), words(rng.randrange(10, 40), rng)
        examples.append(chat(" ".join(user), " ".join(answer), row))
        edit = rng.randrange(5)
        if edit == 0:  # punctuation inside: the same words
            answer = [*answer[:3], answer[3] + ",", *answer[4:]]
        elif edit == 1:  # one more word at the end
            answer = [*answer, "extra"]
        elif edit == 2:  # the last word replaced
            answer = [*answer[:-1], "other"]
        elif edit == 3:  # words replaced inside: usually below the threshold
            for at in rng.sample(range(1, len(answer) - 1), 2):
                answer[at] = "changed"
        else:
            continue
        examples.append(chat(" ".join(user), " ".join(answer), 1000 + row))
    rng.shuffle(examples)
    return examples


@pytest.mark.parametrize("threshold", [0.8, 0.9])
def test_near_duplicates_are_what_comparing_all_pairs_finds(threshold: float) -> None:
    examples = corpus(random.Random(7))
    expected = all_pairs(examples, threshold)
    assert len(expected) > 50, "the corpus plants enough near-duplicates"
    kept, dropped = drop_near_duplicates(examples, threshold)
    where = {(e.source, e.row): i for i, e in enumerate(examples)}
    found = []
    for item in dropped:
        match = re.fullmatch(r"~(\d\.\d\d) similar to (\S+):(\d+)", item.detail)
        assert match is not None and item.rule == "near_duplicate", item.detail
        found.append((where[(item.example.source, item.example.row)], where[(match.group(2), int(match.group(3)))]))
    assert found == expected
    assert [e.row for e in kept] == [e.row for i, e in enumerate(examples) if i not in dict(expected)]


def test_the_threshold_is_decided_on_exact_similarity() -> None:
    base = [f"word{i}" for i in range(22)]  # with "user q assistant" in front: 25 words, 23 shingles
    at = chat("q", " ".join([*base[:-1], "new"]), 2)  # 1 shingle replaced: 22/24 = 0.917
    below = chat("q", " ".join([*base[:-2], "new", base[-1]]), 3)  # 2 replaced: 21/25 = 0.84
    kept, dropped = drop_near_duplicates([chat("q", " ".join(base), 1), at, below], 0.9)
    assert [e.row for e in kept] == [1, 3]
    assert [d.detail for d in dropped] == ["~0.92 similar to mem:1"]


def test_short_and_wordless_texts() -> None:
    texts = ["Hi there", "hi, there!", "!!!", "...", "x"]
    examples = [Example(text=t, source="s", row=i) for i, t in enumerate(texts)]
    kept, dropped = drop_near_duplicates(examples, 0.9)
    # Two words are one shingle; texts without a word are kept and never compared.
    assert [e.row for e in kept] == [0, 2, 3, 4]
    assert [d.detail for d in dropped] == ["~1.00 similar to s:0"]


def test_the_result_is_deterministic_across_batches(monkeypatch: pytest.MonkeyPatch) -> None:
    examples = corpus(random.Random(3))
    first = drop_near_duplicates(examples, 0.9)
    monkeypatch.setattr(curation, "SIGNATURE_BATCH_CHARS", 500)  # many small batches
    assert drop_near_duplicates(examples, 0.9) == first


def test_word_hashes_are_the_regex_words() -> None:
    texts = ["hello world, it's me", "", "!!", "a", "ünïcödé wörds 中文 under_score", "world  hello", "x-y_z"]
    hashes, counts = _word_hashes(texts)
    found = [w for t in texts for w in re.findall(r"\w+", t)]
    assert counts.tolist() == [len(re.findall(r"\w+", t)) for t in texts]
    by_word: dict[str, int] = {}
    for word, value in zip(found, hashes.tolist(), strict=True):
        assert by_word.setdefault(word, value) == value, word
    assert len(set(by_word.values())) == len(by_word)
    again, _ = _word_hashes(texts[-2:])  # another batch, the same hashes
    assert again.tolist() == hashes.tolist()[-len(again) :]


def test_minhash_collisions_track_jaccard_similarity() -> None:
    rng = random.Random(1)
    hasher = MinHasher(128)
    for similarity in (0.3, 0.6, 0.9):
        estimates = []
        for _ in range(60):
            shared = [f"s{rng.randrange(10**9)}" for _ in range(round(60 * similarity))]
            a = shared + [f"a{rng.randrange(10**9)}" for _ in range(60 - len(shared))]
            b = shared + [f"b{rng.randrange(10**9)}" for _ in range(60 - len(shared))]
            # Each word repeated three times is a shingle of its own ("x x x"): sets of known overlap.
            texts = [" ".join(f"{w} {w} {w}" for w in words_) for words_ in (a, b)]
            true = len(_shingles(texts[0]) & _shingles(texts[1])) / len(_shingles(texts[0]) | _shingles(texts[1]))
            signatures, _ = hasher.signatures(texts)
            estimates.append(float(np.mean(signatures[:, 0] == signatures[:, 1])) - true)
        assert abs(float(np.mean(estimates))) < 0.02, similarity


@pytest.mark.parametrize("threshold", [0.5, 0.7, 0.8, 0.85, 0.9, 0.95, 1.0])
def test_banding_makes_pairs_at_the_threshold_candidates(threshold: float) -> None:
    shape = banding(threshold, 128)
    assert shape.rows >= MIN_BAND_ROWS and shape.bands * shape.rows <= 128
    recall = 1 - (1 - threshold**shape.rows) ** shape.bands
    if threshold >= 0.8:
        assert recall >= CANDIDATE_RECALL
    else:  # the fewest rows a band may have: low thresholds trade recall at the threshold for speed
        assert shape.rows == MIN_BAND_ROWS


# --- token counts


def test_token_counts_in_batches_equal_one_at_a_time(tokenizer_dir: Path) -> None:
    from kubetune_trainer.tensors import encode
    from kubetune_trainer.training.model import load_tokenizer

    tokenizer = load_tokenizer(tokenizer_dir)
    examples = [
        Example(messages=(Message("user", "How do I reset it?"), Message("assistant", "Hold the button."))),
        Example(
            messages=(
                Message("system", "Be brief."),
                Message("user", "Two turns"),
                Message("assistant", "one"),
                Message("user", "and <|im_end|> a special token"),
                Message("assistant", "  spaces\n\nand lines  "),
            )
        ),
        Example(text="Plain text, counted with its EOS."),
        Example(text="ünïcödé 中文 and emoji 🙂"),
    ] * 3
    counter = encode.TokenCounter(tokenizer)
    assert isinstance(counter, curation.BatchTokenCounter)
    one_at_a_time = [encode.count_tokens(e, tokenizer) for e in examples]
    assert counter.count_batch(examples) == one_at_a_time == [counter(e) for e in examples]
    small = encode.COUNT_CHUNK
    try:
        encode.COUNT_CHUNK = 2  # chunks that split chat and plain examples differently
        assert counter.count_batch(examples) == one_at_a_time
    finally:
        encode.COUNT_CHUNK = small


def test_prepare_dataset_is_the_same_with_a_batch_counter(tmp_path: Path, tokenizer_dir: Path) -> None:
    from kubetune_trainer.tensors import encode
    from kubetune_trainer.training.model import load_tokenizer

    tokenizer = load_tokenizer(tokenizer_dir)
    rng = random.Random(5)
    rows = []
    for _ in range(120):
        user, answer = " ".join(words(8, rng)), " ".join(words(rng.randrange(1, 30), rng))
        rows.append({"messages": [{"role": "user", "content": user}, {"role": "assistant", "content": answer}]})
        if rng.random() < 0.2:  # a near-duplicate when the answer is long enough
            rows.append(
                {"messages": [{"role": "user", "content": user}, {"role": "assistant", "content": answer + " more"}]}
            )
    (tmp_path / "d.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    spec = DatasetSpec.model_validate(
        {"sources": [{"uri": f"file://{tmp_path}/d.jsonl"}], "curation": {"minTokens": 75, "maxTokens": 120}}
    )
    batched = prepare_dataset(spec, ObjectStore(), encode.TokenCounter(tokenizer), max_tokens=100)
    single = prepare_dataset(spec, ObjectStore(), lambda e: encode.count_tokens(e, tokenizer), max_tokens=100)
    assert batched.report.to_dict() == single.report.to_dict()
    assert batched.train == single.train and batched.token_lengths == single.token_lengths
    dropped = batched.report.dropped
    assert dropped["near_duplicate"] > 0 and dropped["too_short"] > 0 and dropped["too_long"] > 0
