"""The base model's answers to the general prompts are generated once per key and found again:
shipped, in the local cache, or in object storage beside the output (a real S3 server on loopback)."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest

from kubetune.api.v1alpha1 import S3Spec
from kubetune_trainer import general_answers
from kubetune_trainer.general_answers import (
    AnswerKey,
    as_examples,
    base_answers,
    base_likelihoods,
    find_answers,
    likelihoods_file,
)
from kubetune_trainer.general_prompts import GeneralPrompt, load_general_prompts
from kubetune_trainer.storage import ObjectStore

PROMPTS = load_general_prompts()
EVERY = [*PROMPTS.regression, *PROMPTS.replay]


class Answerer:
    """Stands in for the model: the generation itself is not what these tests are about."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, prompts: Sequence[GeneralPrompt]) -> list[str]:
        self.calls += 1
        return [f"answer to {p.id}" for p in prompts]


def key(**changes: object) -> AnswerKey:
    fields: dict[str, object] = {"model_sha256": "a" * 64, "prompts_version": PROMPTS.version, "chat_template": None}
    return AnswerKey(**{**fields, **changes})  # type: ignore[arg-type]


def test_the_key_covers_everything_that_decides_the_answers() -> None:
    digests = {
        key().digest,
        key(model_sha256="b" * 64).digest,
        key(prompts_version="general-v1-000000000000").digest,
        key(chat_template="{{ messages }}").digest,
        key(weights="nf4").digest,
        key(max_new_tokens=64).digest,
    }
    assert len(digests) == 6
    assert key().digest == key().digest


@pytest.fixture()
def beside_output(
    tmp_path: Path, s3_endpoint: str, s3_bucket: str, monkeypatch: pytest.MonkeyPatch
) -> tuple[ObjectStore, str]:
    """Nothing shipped; object storage (a real S3 server) and the output prefix a job publishes under."""
    monkeypatch.setattr(general_answers, "SHIPPED", tmp_path / "shipped")
    return ObjectStore(S3Spec(endpoint=s3_endpoint, region="us-east-1")), f"s3://{s3_bucket}/models/job/"


def test_generated_once_then_found_locally_and_in_storage(
    tmp_path: Path, beside_output: tuple[ObjectStore, str]
) -> None:
    store, output = beside_output
    answerer = Answerer()
    first = base_answers(key(), EVERY, answerer, cache_dir=tmp_path / "cache-a", store=store, output_uri=output)
    assert first.origin == "generated" and answerer.calls == 1 and len(first.answers) == len(EVERY)
    again = base_answers(key(), EVERY, answerer, cache_dir=tmp_path / "cache-a", store=store, output_uri=output)
    assert again.origin == "cache" and again.answers == first.answers and answerer.calls == 1
    # Another pod (an empty local cache) finds them beside the output, and caches them locally.
    elsewhere = base_answers(key(), EVERY, answerer, cache_dir=tmp_path / "cache-b", store=store, output_uri=output)
    assert elsewhere.origin == "storage" and elsewhere.answers == first.answers and answerer.calls == 1
    assert find_answers(key(), EVERY, cache_dir=tmp_path / "cache-b", store=store, output_uri=output).origin == "cache"  # type: ignore[union-attr]
    # Another base model: nothing found, generated again.
    other = base_answers(
        key(model_sha256="c" * 64), EVERY, answerer, cache_dir=tmp_path / "cache-a", store=store, output_uri=output
    )
    assert other.origin == "generated" and answerer.calls == 2


def test_shipped_answers_come_first_and_a_partial_file_is_not_trusted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    shipped = tmp_path / "shipped"
    monkeypatch.setattr(general_answers, "SHIPPED", shipped)
    store = ObjectStore()
    output = (tmp_path / "out").as_uri() + "/"
    answerer = Answerer()
    made = base_answers(key(), EVERY, answerer, cache_dir=tmp_path / "build", store=store, output_uri=output)
    shipped.mkdir()
    (tmp_path / "build" / "general-answers" / f"{key().digest}.jsonl").rename(shipped / f"{key().digest}.jsonl")
    found = find_answers(
        key(),
        EVERY,
        cache_dir=tmp_path / "empty",
        store=ObjectStore(),
        output_uri=(tmp_path / "nowhere").as_uri() + "/",
    )
    assert found is not None and found.origin == "shipped" and found.answers == made.answers
    partial = shipped / f"{key().digest}.jsonl"
    partial.write_text("\n".join(partial.read_text().splitlines()[:10]) + "\n")
    assert (
        find_answers(
            key(),
            EVERY,
            cache_dir=tmp_path / "empty",
            store=ObjectStore(),
            output_uri=(tmp_path / "nowhere").as_uri() + "/",
        )
        is None
    )


def test_answers_become_chat_rows_with_the_answer_as_the_assistant_turn(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(general_answers, "SHIPPED", tmp_path / "shipped")
    answers = base_answers(
        key(), EVERY, Answerer(), cache_dir=tmp_path, store=ObjectStore(), output_uri=(tmp_path / "o").as_uri() + "/"
    )
    rows = as_examples(PROMPTS.regression, answers)
    assert len(rows) == len(PROMPTS.regression)
    first = rows[0]
    assert first.prompt_messages()[-1].content == PROMPTS.regression[0].text
    assert first.reference() == f"answer to {PROMPTS.regression[0].id}"


@pytest.mark.slow
def test_the_builtin_models_answers_ship_for_the_current_prompts() -> None:
    """The demo and CI generate nothing: the built-in model's answers ship under today's key."""
    script = Path(__file__).resolve().parents[2] / "scripts" / "make_builtin_general_answers.py"
    checked = subprocess.run([sys.executable, str(script), "--check"], capture_output=True, text=True, timeout=600)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    answers, likelihoods = sorted(general_answers.SHIPPED.glob("*.jsonl"), key=lambda f: "likelihood" in f.name)
    ids = {json.loads(line)["id"] for line in answers.read_text().splitlines()}
    assert ids == {p.id for p in EVERY}
    scored = [json.loads(line) for line in likelihoods.read_text().splitlines()]
    assert [row["id"] for row in scored] == [p.id for p in PROMPTS.regression]
    assert all(row["tokens"] > 0 and row["nllSum"] > 0 for row in scored)


def test_the_base_likelihoods_are_computed_once_per_key_and_length_then_found(
    tmp_path: Path, beside_output: tuple[ObjectStore, str]
) -> None:
    store, output = beside_output
    computed: list[int] = []

    def compute() -> list[tuple[float, int]]:
        computed.append(1)
        return [(0.5 + i, 3 + i) for i in range(len(PROMPTS.regression))]

    def lookup(
        cache: str, max_length: int = 512, precision: str = "fp32", **changes: object
    ) -> tuple[list[tuple[float, int]], str]:
        return base_likelihoods(
            key(**changes),
            PROMPTS.regression,
            compute,
            max_length=max_length,
            precision=precision,
            cache_dir=tmp_path / cache,
            store=store,
            output_uri=output,
        )

    first, origin = lookup("cache-a")
    assert origin == "computed" and len(computed) == 1 and first[2] == (2.5, 5)
    assert lookup("cache-a") == (first, "cache") and lookup("cache-b") == (first, "storage") and len(computed) == 1
    # Another scoring length, precision or base model is another file: computed again.
    assert lookup("cache-a", max_length=256)[1] == "computed" and lookup("cache-a", precision="bf16")[1] == "computed"
    assert lookup("cache-a", model_sha256="d" * 64)[1] == "computed" and len(computed) == 4
    names = {likelihoods_file(key(), 512, "fp32"), likelihoods_file(key(), 256, "fp32"), f"{key().digest}.jsonl"}
    assert len(names | {likelihoods_file(key(), 512, "bf16")}) == 4


@pytest.mark.parametrize(
    "damage",
    [
        lambda rows: rows[:-1],
        lambda rows: [*rows[:-1], "{not json"],
        lambda rows: [*rows[:-1], json.dumps({**json.loads(rows[-1]), "tokens": 0})],
        lambda rows: [*rows[:-1], json.dumps({**json.loads(rows[-1]), "nllSum": "NaN"})],
        lambda rows: [*rows[:-1], json.dumps({**json.loads(rows[-1]), "nllSum": float("nan")})],
        lambda rows: [*rows[:-1], json.dumps({"id": json.loads(rows[-1])["id"]})],
        lambda rows: ["[1, 2]", *rows],
    ],
    ids=["partial", "not-json", "no-tokens", "string-number", "nan", "no-fields", "not-an-object"],
)
def test_a_damaged_cached_file_is_a_miss_never_trusted_and_never_a_crash(
    tmp_path: Path, beside_output: tuple[ObjectStore, str], damage: Callable[[list[str]], list[str]]
) -> None:
    """Object storage beside the output is writable by others: what is read back is checked."""
    store, output = beside_output
    computed: list[int] = []

    def compute() -> list[tuple[float, int]]:
        computed.append(1)
        return [(1.0, 2)] * len(PROMPTS.regression)

    def lookup(cache: str) -> str:
        return base_likelihoods(
            key(),
            PROMPTS.regression,
            compute,
            max_length=512,
            precision="fp32",
            cache_dir=tmp_path / cache,
            store=store,
            output_uri=output,
        )[1]

    assert lookup("first") == "computed"
    name = likelihoods_file(key(), 512, "fp32")
    uri = f"{output}.kubetune/general-answers/{name}"
    stored = store.read_bytes(uri).decode().splitlines()
    store.write_bytes(uri, ("\n".join(damage(stored)) + "\n").encode())
    assert lookup("second") == "computed" and len(computed) == 2  # storage ignored: computed again
    local = tmp_path / "second" / "general-answers" / name
    local.write_text("\n".join(damage(local.read_text().splitlines())) + "\n")
    assert lookup("second") == "computed" and len(computed) == 3  # the local cache is checked too


def test_a_cached_answer_that_is_not_text_is_a_miss(tmp_path: Path, beside_output: tuple[ObjectStore, str]) -> None:
    store, output = beside_output
    base_answers(key(), EVERY, Answerer(), cache_dir=tmp_path / "a", store=store, output_uri=output)
    cached = tmp_path / "a" / "general-answers" / f"{key().digest}.jsonl"
    lines = cached.read_text().splitlines()
    cached.write_text("\n".join([*lines[:-1], json.dumps({"id": json.loads(lines[-1])["id"], "answer": 3})]) + "\n")
    nowhere = (tmp_path / "nowhere").as_uri() + "/"
    assert find_answers(key(), EVERY, cache_dir=tmp_path / "a", store=ObjectStore(), output_uri=nowhere) is None
