"""kubetune's built-in general prompts: content rules, pool separation, the generator and the loader.

Forgetting is measured on the regression pool and the replay pool is trained on, so the two must
not overlap, nor may either repeat a dataset the project ships; near-duplicates are found as the
trainer's curation finds them (word 3-shingles, MinHash LSH), at Jaccard 0.6.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from datasketch import MinHash, MinHashLSH

from kubetune_trainer.data.curation import _shingles, normalise
from kubetune_trainer.data.formats import detect_format, to_example
from kubetune_trainer.data.readers import SUPPORTED_SUFFIXES, read_rows
from kubetune_trainer.general_prompts import (
    FIELDS,
    POOLS,
    PROMPTS_FILE,
    GeneralPrompt,
    GeneralPromptsError,
    GeneralPromptSet,
    load_general_prompts,
    matches_known_answer,
)

ROOT = Path(__file__).resolve().parents[2]
GENERATOR = ROOT / "scripts" / "make_general_prompts.py"
NEAR_DUPLICATE_JACCARD = 0.6
CATEGORIES = {"facts", "arithmetic", "language", "instructions", "reasoning", "open-ended", "definitions"}


@pytest.fixture(scope="module")
def prompt_set() -> GeneralPromptSet:
    return load_general_prompts()


def every_prompt(prompt_set: GeneralPromptSet) -> list[GeneralPrompt]:
    return [*prompt_set.regression, *prompt_set.replay]


# --- content ------------------------------------------------------------------------------------


def test_the_set_is_large_and_varied_enough(prompt_set: GeneralPromptSet) -> None:
    prompts = every_prompt(prompt_set)
    assert len(prompts) >= 300
    assert {p.category for p in prompts} == CATEGORIES
    assert sum(p.keywords is not None for p in prompts) >= 100
    sizes = {pool: len(getattr(prompt_set, pool)) for pool in POOLS}
    assert min(sizes.values()) >= 150, sizes
    assert max(sizes.values()) <= 1.15 * min(sizes.values()), f"pools of unequal size: {sizes}"


@pytest.mark.parametrize("pool", POOLS)
def test_each_pool_covers_every_category_with_known_answers(prompt_set: GeneralPromptSet, pool: str) -> None:
    prompts: tuple[GeneralPrompt, ...] = getattr(prompt_set, pool)
    assert {p.pool for p in prompts} == {pool}
    by_category = Counter(p.category for p in prompts)
    assert set(by_category) == CATEGORIES, by_category
    assert min(by_category.values()) >= 10, by_category
    assert sum(p.keywords is not None for p in prompts) >= 50
    assert sum(p.keywords is None for p in prompts) >= 20, "open-ended prompts too, not only quizzes"


def test_some_prompts_are_written_in_french_spanish_and_german(prompt_set: GeneralPromptSet) -> None:
    texts = [p.text for p in every_prompt(prompt_set)]
    for marker in ("Quelle est", "Comment dit-on", "¿Cuál es", "¿Cómo se dice", "Wie viele", "Was ist das"):
        assert any(text.startswith(marker) for text in texts), marker


def test_every_row_has_exactly_the_documented_fields() -> None:
    for number, line in enumerate(PROMPTS_FILE.read_text(encoding="utf-8").splitlines(), 1):
        row = json.loads(line)
        assert tuple(row) == FIELDS, f"line {number}"
        assert row["messages"] == [{"role": "user", "content": row["messages"][0]["content"]}], f"line {number}"
        assert row["answer"] is None or (set(row["answer"]) == {"keywords"} and row["answer"]["keywords"])
        assert row["id"].startswith(f"{row['template']}/"), f"line {number}: ids are <template>/<entity>"


def test_prompts_are_short(prompt_set: GeneralPromptSet) -> None:
    # A 135M-parameter model answers short, plain prompts; long ones measure little but noise.
    longest = max(every_prompt(prompt_set), key=lambda p: len(p.text.split()))
    assert len(longest.text.split()) <= 20, longest.text


def test_no_known_answer_is_given_away_by_its_prompt(prompt_set: GeneralPromptSet) -> None:
    # A keyword already in the prompt would pass the check whenever the model repeats the question.
    leaks = [p.text for p in every_prompt(prompt_set) if p.keywords and matches_known_answer(p.text, p.keywords)]
    assert not leaks


# --- the pools stay apart -------------------------------------------------------------------------


def test_the_pools_share_no_template_and_no_source(prompt_set: GeneralPromptSet) -> None:
    for field in ("template", "source"):
        regression = {getattr(p, field) for p in prompt_set.regression}
        replay = {getattr(p, field) for p in prompt_set.replay}
        assert regression and replay
        assert not regression & replay, f"{field}s in both pools: {sorted(regression & replay)}"


def test_no_prompt_is_repeated_anywhere(prompt_set: GeneralPromptSet) -> None:
    prompts = every_prompt(prompt_set)
    ids = Counter(p.id for p in prompts)
    texts = Counter(normalise(p.text) for p in prompts)
    assert not [i for i, n in ids.items() if n > 1]
    assert not [t for t, n in texts.items() if n > 1]


@dataclass(frozen=True)
class Prompt:
    where: str  # file:line
    text: str


def shipped_dataset_prompts() -> list[Prompt]:
    """The user turns (or texts) of every dataset file under examples/, read as the trainer reads them."""
    found = []
    for path in sorted((ROOT / "examples").rglob("*")):
        if path.suffix.lower() not in SUPPORTED_SUFFIXES:
            continue
        name = path.relative_to(ROOT).as_posix()
        for row in read_rows(name, path.read_bytes()):
            assert row.data is not None, f"{row.where}: {row.error}"
            fmt = detect_format(set(row.data))
            assert fmt is not None, f"{row.where}: not a dataset row the trainer can read"
            example = to_example(row.data, fmt)
            turns = [m.content for m in example.messages if m.role == "user"] or [example.text or ""]
            found += [Prompt(row.where, turn) for turn in turns]
    return found


def pool_prompts(prompts: Sequence[GeneralPrompt]) -> list[Prompt]:
    lines = {json.loads(line)["id"]: n for n, line in enumerate(PROMPTS_FILE.read_text().splitlines(), 1)}
    name = PROMPTS_FILE.relative_to(ROOT).as_posix()
    return [Prompt(f"{name}:{lines[p.id]}", p.text) for p in prompts]


def _minhash(text: str) -> MinHash | None:
    shingles = _shingles(normalise(text))  # the curation's shingles: "near-duplicate" means the same here
    if not shingles:
        return None
    minhash = MinHash(num_perm=128, seed=1)
    minhash.update_batch(list(shingles))
    return minhash


def near_duplicates(queries: Sequence[Prompt], corpus: Sequence[Prompt]) -> list[str]:
    """Each query that equals (after normalisation) or nearly duplicates a corpus prompt, with both texts."""
    exact = {normalise(item.text): item for item in corpus}
    index = MinHashLSH(threshold=NEAR_DUPLICATE_JACCARD, num_perm=128)
    hashes: dict[str, tuple[Prompt, MinHash]] = {}
    for number, item in enumerate(corpus):
        if (minhash := _minhash(item.text)) is not None:
            index.insert(str(number), minhash)
            hashes[str(number)] = (item, minhash)
    hits = []
    for query in queries:
        if (same := exact.get(normalise(query.text))) is not None:
            hits.append(f"{query.where} {query.text!r} is {same.where} {same.text!r}")
        if (minhash := _minhash(query.text)) is None:
            continue
        for key in index.query(minhash):
            item, other = hashes[key]
            if (similarity := other.jaccard(minhash)) >= NEAR_DUPLICATE_JACCARD:
                hits.append(f"{query.where} {query.text!r} ~{similarity:.2f} {item.where} {item.text!r}")
    return hits


@pytest.fixture(scope="module")
def datasets() -> list[Prompt]:
    prompts = shipped_dataset_prompts()
    files = {p.where.rsplit(":", 1)[0] for p in prompts}
    assert {
        "examples/support-tickets/tickets.jsonl",
        "examples/general/regression.jsonl",
        "examples/general/replay.jsonl",
    } <= files
    return prompts


def test_the_pools_are_not_near_duplicates_of_each_other(prompt_set: GeneralPromptSet) -> None:
    hits = near_duplicates(pool_prompts(prompt_set.regression), pool_prompts(prompt_set.replay))
    assert not hits, "near-duplicates between the pools:\n" + "\n".join(hits)


@pytest.mark.parametrize("pool", POOLS)
def test_no_prompt_nearly_repeats_a_shipped_dataset(
    prompt_set: GeneralPromptSet, pool: str, datasets: list[Prompt]
) -> None:
    hits = near_duplicates(pool_prompts(getattr(prompt_set, pool)), datasets)
    assert not hits, f"{pool} prompts that repeat a shipped dataset:\n" + "\n".join(hits)


def test_the_near_duplicate_check_catches_a_rewording(datasets: list[Prompt]) -> None:
    shipped = next(p for p in datasets if p.text == "What is the opposite of 'bright'?")
    reworded = Prompt("crafted:1", "What is the opposite of 'bright', please?")
    echoed = Prompt("crafted:2", "WHAT is the opposite of 'bright'")
    unrelated = Prompt("crafted:3", "Name the antonym of the word 'hot'.")
    hits = near_duplicates([reworded, echoed, unrelated], datasets)
    assert any(hit.startswith("crafted:1 ") and shipped.where in hit for hit in hits), hits
    assert any(hit.startswith("crafted:2 ") and f"is {shipped.where}" in hit for hit in hits), hits
    assert not any(hit.startswith("crafted:3 ") for hit in hits), hits


# --- the generator --------------------------------------------------------------------------------


def run_generator(*args: str, hash_seed: str = "0") -> subprocess.CompletedProcess[str]:
    environment = {**os.environ, "PYTHONHASHSEED": hash_seed}
    return subprocess.run(
        [sys.executable, str(GENERATOR), *args], capture_output=True, text=True, timeout=60, env=environment
    )


def test_the_committed_prompts_are_the_generated_ones() -> None:
    result = run_generator("--check")
    assert result.returncode == 0, result.stderr


def test_the_generator_is_deterministic(tmp_path: Path) -> None:
    outputs = []
    for hash_seed in ("1", "2"):  # set and dict ordering must not leak into the file
        out = tmp_path / f"prompts-{hash_seed}.jsonl"
        result = run_generator("--output", str(out), hash_seed=hash_seed)
        assert result.returncode == 0, result.stderr
        outputs.append(out.read_bytes())
    assert outputs[0] == outputs[1] == PROMPTS_FILE.read_bytes()


def test_the_check_fails_on_a_stale_file(tmp_path: Path) -> None:
    stale = tmp_path / "prompts.jsonl"
    stale.write_text(PROMPTS_FILE.read_text(encoding="utf-8").replace("Stockholm", "Oslo", 1), encoding="utf-8")
    result = run_generator("--check", "--output", str(stale))
    assert result.returncode == 1
    assert str(stale) in result.stderr


# --- the loader ---------------------------------------------------------------------------------


def test_the_loader_returns_typed_prompts_and_a_content_version(prompt_set: GeneralPromptSet) -> None:
    assert prompt_set.version == "general-v1-" + hashlib.sha256(PROMPTS_FILE.read_bytes()).hexdigest()[:12]
    capital = next(p for p in prompt_set.regression if p.id == "capital-which-city/sweden")
    assert capital == GeneralPrompt(
        id="capital-which-city/sweden",
        category="facts",
        pool="regression",
        template="capital-which-city",
        source="countries-a",
        messages=({"role": "user", "content": "Which city is the capital of Sweden?"},),
        keywords=("Stockholm",),
    )
    assert capital.text == "Which city is the capital of Sweden?"
    assert any(p.keywords is None for p in prompt_set.replay)


def test_the_version_follows_the_bytes(tmp_path: Path, prompt_set: GeneralPromptSet) -> None:
    copy = tmp_path / "prompts.jsonl"
    copy.write_bytes(PROMPTS_FILE.read_bytes())
    assert load_general_prompts(copy).version == prompt_set.version
    copy.write_bytes(PROMPTS_FILE.read_bytes() + b"\n")
    assert load_general_prompts(copy).version != prompt_set.version


def row(pool: str = "regression", **overrides: Any) -> dict[str, Any]:
    name = overrides.pop("name", pool)
    return {
        "id": f"{name}/1",
        "category": "facts",
        "pool": pool,
        "template": f"{name}-template",
        "source": f"{name}-source",
        "messages": [{"role": "user", "content": f"A question from {name}?"}],
        "answer": {"keywords": ["yes"]},
        **overrides,
    }


def write_rows(path: Path, *rows: dict[str, Any] | str) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows), encoding="utf-8")
    return path


def test_a_well_formed_crafted_file_loads(tmp_path: Path) -> None:
    loaded = load_general_prompts(write_rows(tmp_path / "ok.jsonl", row("regression"), row("replay")))
    assert [p.id for p in loaded.regression] == ["regression/1"]
    assert [p.id for p in loaded.replay] == ["replay/1"]


def test_the_loader_refuses_pools_that_share_a_template(tmp_path: Path) -> None:
    path = write_rows(
        tmp_path / "shared.jsonl", row("regression"), row("replay", template="regression-template", name="replay")
    )
    with pytest.raises(
        GeneralPromptsError, match=rf"{re.escape(str(path))}:2: template 'regression-template' is in both pools"
    ):
        load_general_prompts(path)


def test_the_loader_refuses_pools_that_share_a_source(tmp_path: Path) -> None:
    path = write_rows(tmp_path / "shared.jsonl", row("regression"), row("replay", source="regression-source"))
    with pytest.raises(
        GeneralPromptsError, match=rf"{re.escape(str(path))}:2: source 'regression-source' is in both pools"
    ):
        load_general_prompts(path)


BAD_ROWS = [
    (row("training", name="other"), r"pool 'training' is not one of regression, replay"),
    (row("replay", answer={"keywords": []}), r"field 'answer'"),
    (row("replay", answer={"keywords": ["?!"]}), r"field 'answer'"),
    (row("replay", answer="Paris"), r"field 'answer'"),
    (row("replay", messages=[{"role": "system", "content": "Be brief."}]), r"field 'messages'"),
    (row("replay", messages=[{"role": "user", "content": "a"}, {"role": "user", "content": "b"}]), r"field 'messages'"),
    (row("replay", category=""), r"field 'category' must be a non-empty string"),
    ({k: v for k, v in row("replay").items() if k != "source"}, r"missing field\(s\) source"),
    (row("replay", weight=2), r"unknown field\(s\) weight"),
    (row("replay", id="regression/1"), r"duplicate id 'regression/1' \(first at line 1\)"),
    (row("replay", messages=[{"role": "user", "content": "a question from REGRESSION"}]), r"the same prompt as line 1"),
    ('{"id": "broken"', r"malformed JSON"),
    ("[1, 2]", r"expected a JSON object"),
]


@pytest.mark.parametrize(("bad", "message"), BAD_ROWS)
def test_the_loader_refuses_a_bad_row_naming_its_file_and_line(
    tmp_path: Path, bad: dict[str, Any] | str, message: str
) -> None:
    path = write_rows(tmp_path / "bad.jsonl", row("regression"), bad, row("replay", name="third"))
    with pytest.raises(GeneralPromptsError, match=rf"^{re.escape(str(path))}:2: {message}"):
        load_general_prompts(path)


def test_the_loader_refuses_a_set_without_a_replay_pool(tmp_path: Path) -> None:
    path = write_rows(tmp_path / "one-pool.jsonl", row("regression"))
    with pytest.raises(GeneralPromptsError, match="no prompts in the replay pool"):
        load_general_prompts(path)


def test_the_loader_errors_are_value_errors(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="cannot read the general prompts"):
        load_general_prompts(tmp_path / "missing.jsonl")


def test_the_loader_stays_light() -> None:
    # The CPU-only pre-flight imports it: no ML libraries.
    code = (
        "import sys, kubetune_trainer.general_prompts as g; g.load_general_prompts(); "
        "print(sorted({'torch', 'transformers', 'datasketch', 'numpy'} & set(sys.modules)))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert result.stdout.strip() == "[]"


# --- the keyword matcher --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("answer", "keywords", "expected"),
    [
        ("The capital of France is Paris.", ["Paris"], True),
        ("PARIS!", ["paris"], True),
        ("Paris's museums are famous.", ["Paris"], True),
        ("Parisian cafes", ["Paris"], False),
        ("La capitale est Bogotá.", ["Bogota"], True),
        ("It is Bogota.", ["Bogotá"], True),
        ("Der Gegensatz ist „GROSS“.", ["groß"], True),
        ("7 times 8 is 56.", ["56", "fifty-six"], True),
        ("7 times 8 is 156.", ["56", "fifty-six"], False),
        ("It is 5,600.", ["56"], False),
        ("It is 56.5.", ["56"], False),
        ("It is 1,000.", ["1000"], True),
        ("The numbers are 3,56,7.", ["56"], True),
        ("Seven times eight is fifty six.", ["56", "fifty-six"], True),
        ("Seven times eight is Fifty-Six.", ["fifty six"], True),
        ("one hundred and forty-four", ["one hundred and forty-four"], True),
        ("It is cold outside.", ["cold"], True),
        ("It is colder outside.", ["cold"], False),
        ("Le mot est « chat ».", ["chat"], True),
        ("A chatbot.", ["chat"], False),
        ("It was made in the U.S.", ["U.S."], True),
        ("South America", ["south america"], True),
        ("America, south of here", ["south america"], False),
        ("anything", [], False),
        ("anything", ["", "..."], False),
        ("", ["Paris"], False),
    ],
)
def test_matches_known_answer(answer: str, keywords: list[str], expected: bool) -> None:
    assert matches_known_answer(answer, keywords) is expected
