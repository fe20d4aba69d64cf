"""The two extra example tasks for measuring forgetting: short free-text answers (chat) and intents (Alpaca).

Each is reproducible from its generator, runs from a minimal manifest, passes the trainer's own
data pipeline untouched (nothing invalid, nothing deduplicated away), has the shape its purpose
needs (free text vs a few balanced labels), and is no near-copy of the tickets or of the other.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from kubetune.api.manifest import load_manifest
from kubetune.api.v1alpha1 import DatasetFormat
from kubetune_trainer.data.curation import normalise
from kubetune_trainer.data.formats import to_example
from kubetune_trainer.data.prepare import prepare_dataset
from kubetune_trainer.data.types import Example
from kubetune_trainer.localrun import IMAGE_EXAMPLES_DIR, PathMapping, localize
from kubetune_trainer.storage import ObjectStore

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
KUBETUNE = Path(sys.executable).parent / "kubetune"
TICKETS = EXAMPLES / "support-tickets" / "tickets.jsonl"
REPLAY = EXAMPLES / "general" / "replay.jsonl"
NEAR_DUPLICATE = 0.6  # MinHash Jaccard on word 3-grams at or above which two prompts count as near-copies
MAX_TOKENS = 2048  # what the trainer allows the built-in model when the manifest sets no sequence length


@dataclass(frozen=True)
class ExampleDataset:
    name: str  # the manifest is examples/<name>.yaml, the data examples/<name>/data.jsonl
    generator: str  # in examples/tools
    format: DatasetFormat

    @property
    def manifest(self) -> Path:
        return EXAMPLES / f"{self.name}.yaml"

    @property
    def data(self) -> Path:
        return EXAMPLES / self.name / "data.jsonl"

    def examples(self) -> list[Example]:
        return read_examples(self.data, self.format)


SHORT_ANSWERS = ExampleDataset("short-answers", "make_short_answers.py", DatasetFormat.CHAT)
INTENTS = ExampleDataset("intents", "make_intents.py", DatasetFormat.ALPACA)
DATASETS = [SHORT_ANSWERS, INTENTS]


def read_examples(path: Path, fmt: DatasetFormat) -> list[Example]:
    return [to_example(json.loads(line), fmt) for line in path.read_text().splitlines() if line.strip()]


def prompt(example: Example) -> str:
    """What the user asks: every user turn before the answer (alpaca: instruction + input)."""
    return "\n".join(m.content for m in example.prompt_messages() if m.role == "user")


@pytest.mark.parametrize("dataset", DATASETS, ids=lambda d: d.name)
def test_generator_reproduces_the_committed_file(dataset: ExampleDataset, tmp_path: Path) -> None:
    out = tmp_path / "data.jsonl"
    subprocess.run([sys.executable, str(EXAMPLES / "tools" / dataset.generator), str(out)], check=True, timeout=60)
    assert out.read_bytes() == dataset.data.read_bytes()


@pytest.mark.parametrize("dataset", DATASETS, ids=lambda d: d.name)
def test_manifest_is_minimal_and_valid(dataset: ExampleDataset) -> None:
    done = subprocess.run([str(KUBETUNE), "validate", str(dataset.manifest)], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    spec = yaml.safe_load(dataset.manifest.read_text())["spec"]
    # What a new user writes: the data and where the model goes, everything else left to defaults.
    assert set(spec) == {"dataset", "output"} and set(spec["output"]) == {"uri"}
    assert spec["dataset"] == {
        "sources": [{"uri": f"file://{IMAGE_EXAMPLES_DIR}/{dataset.name}/data.jsonl", "format": str(dataset.format)}]
    }
    assert spec["output"]["uri"].startswith("s3://")


@pytest.fixture(scope="module")
def count_tokens(tokenizer_dir: Path) -> Callable[[Example], int]:
    from transformers import AutoTokenizer

    from kubetune_trainer.tensors import encode

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)

    def count(example: Example) -> int:
        return encode.count_tokens(example, tokenizer)

    return count


@pytest.mark.parametrize("dataset", DATASETS, ids=lambda d: d.name)
def test_trainer_keeps_every_row(dataset: ExampleDataset, count_tokens: Callable[[Example], int]) -> None:
    job = localize(load_manifest(dataset.manifest), [PathMapping(IMAGE_EXAMPLES_DIR, EXAMPLES)], None)
    data = prepare_dataset(job.spec.dataset, ObjectStore(), count_tokens, max_tokens=MAX_TOKENS)
    rows = len(dataset.data.read_text().splitlines())
    assert 380 <= rows <= 420
    assert not data.report.invalid_rows and not data.report.dropped, data.report.to_markdown()
    assert data.report.sources[0].rows_valid == rows
    assert sum(data.report.splits.values()) == rows and data.report.splits["test"] >= 25
    # A minimal manifest trains 3 epochs (auto, under 1000 rows): no more tokens than the tickets
    # example's 2 epochs over the tickets and half the replay set, measured at 11 min on 2 CPU cores.
    tickets = sum(count_tokens(e) for e in read_examples(TICKETS, DatasetFormat.CHAT))
    replay = sum(count_tokens(e) for e in read_examples(REPLAY, DatasetFormat.CHAT))
    assert 3 * sum(data.token_lengths) <= 2 * (tickets + 0.5 * replay)


def test_intents_are_a_few_balanced_labels_other_than_the_tickets_six() -> None:
    examples = INTENTS.examples()
    labels = Counter(e.reference() for e in examples)
    assert len(labels) == 9
    assert max(labels.values()) <= 2 * min(labels.values())
    # Each output is a bare label (one snake_case identifier), never text.
    assert all(re.fullmatch(r"[a-z]+(?:_[a-z]+)*", label) for label in labels)


def test_short_answers_are_free_text_spans_of_their_prompt() -> None:
    answers = [(e.reference(), prompt(e)) for e in SHORT_ANSWERS.examples()]
    assert len({answer for answer, _ in answers}) > 50
    assert all(1 <= len(answer.split()) <= 5 for answer, _ in answers)
    missing = [(answer, text) for answer, text in answers if answer not in text]
    assert not missing, missing[:3]


def shingles(text: str) -> set[bytes]:
    words = re.findall(r"\w+", normalise(text))
    return {" ".join(words[i : i + 3]).encode() for i in range(len(words) - 2)}


def near_copies(prompts: list[str], others: list[str]) -> list[tuple[str, str]]:
    """Pairs (prompt, other) whose MinHash-estimated Jaccard similarity is at least NEAR_DUPLICATE."""
    from datasketch import MinHash, MinHashLSH

    def minhash(text: str) -> MinHash:
        hashed = MinHash(num_perm=128, seed=1)
        hashed.update_batch(list(shingles(text)))
        return hashed

    index = MinHashLSH(threshold=NEAR_DUPLICATE, num_perm=128)
    hashes = {str(i): minhash(text) for i, text in enumerate(others)}
    for key, hashed in hashes.items():
        index.insert(key, hashed)
    found = []
    for text in prompts:
        hashed = minhash(text)
        found += [(text, others[int(k)]) for k in index.query(hashed) if hashes[k].jaccard(hashed) >= NEAR_DUPLICATE]
    return found


def test_no_prompt_is_a_near_copy_of_the_tickets_or_of_the_other_dataset() -> None:
    tickets = [prompt(e) for e in read_examples(TICKETS, DatasetFormat.CHAT)]
    short_answers = [prompt(e) for e in SHORT_ANSWERS.examples()]
    intents = [prompt(e) for e in INTENTS.examples()]
    # The check finds a planted near-copy, so an empty result below means something.
    assert near_copies([f"{tickets[0]} Sent from my phone."], tickets)
    assert not near_copies(short_answers, tickets)
    assert not near_copies(intents, tickets)
    assert not near_copies(intents, short_answers)
