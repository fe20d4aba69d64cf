"""A user's own test set (``evalOnly`` sources): it is the whole test split, and every training row
that repeats one of its rows, exactly or nearly, is removed and counted, whatever the dedup settings."""

from __future__ import annotations

import json
import random
import sys
from pathlib import Path
from typing import Any

import pytest

from kubetune.api.v1alpha1 import DatasetSpec
from kubetune_trainer.data.curation import example_key
from kubetune_trainer.data.prepare import prepare_dataset
from kubetune_trainer.data.types import Example
from kubetune_trainer.storage import ObjectStore
from tests.trainer.jobs import run_locally, write_job

KUBETUNE = str(Path(sys.executable).parent / "kubetune")
VOCABULARY = [
    f"{stem}{suffix}" for stem in ("parcel", "order", "refund", "label", "box", "door") for suffix in "abcdefgh"
]


def sentence(rng: random.Random, words: int = 80) -> str:
    return " ".join(rng.choice(VOCABULARY) for _ in range(words))


def rows(texts: list[str]) -> str:
    return "".join(json.dumps({"prompt": text, "completion": " ok"}) + "\n" for text in texts)


def words(example: Example) -> int:
    return len(example.flat_text().split())


def user_text(example: Example) -> str:
    return example.prompt_messages()[-1].content


def keys(examples: list[Example]) -> set[str]:
    return {example_key(example) for example in examples}


@pytest.fixture
def leaky(tmp_path: Path) -> tuple[Path, Path, list[str], list[str]]:
    """A training file holding, besides its own rows, an exact, a near and a half copy of held-out rows."""
    rng = random.Random(5)
    held_out = [sentence(rng) for _ in range(10)]
    own = [sentence(rng) for _ in range(40)]
    leaked = [
        held_out[0].upper(),  # the same after normalisation
        held_out[1] + " doora",  # one word more: a near-duplicate
        " ".join([*held_out[2].split()[:40], "refundz", *held_out[2].split()[41:]]) + ".",  # one word changed
    ]
    half = " ".join(held_out[3].split()[:40] + sentence(rng, 40).split())  # shares half: not a duplicate
    (tmp_path / "train.jsonl").write_text(rows([*own, *leaked, half]))
    (tmp_path / "holdout.jsonl").write_text(rows(held_out))
    return tmp_path / "train.jsonl", tmp_path / "holdout.jsonl", held_out, [*own, half]


def prepared(train: Path, holdout: Path, **dataset: Any) -> Any:
    spec = DatasetSpec.model_validate(
        {
            "sources": [{"uri": f"file://{train}"}, {"uri": f"file://{holdout}", "evalOnly": True}],
            "split": {"validation": 0.2, "test": 0.3},
            **dataset,
        }
    )
    return prepare_dataset(spec, ObjectStore(), words, max_tokens=200)


@pytest.mark.parametrize(
    "curation",
    [{}, {"dedupExact": False, "nearDedup": {"enabled": False}}],
    ids=["default-curation", "dedup-off"],
)
def test_the_test_split_is_the_users_and_rows_that_repeat_it_leave_training(
    leaky: tuple[Path, Path, list[str], list[str]], curation: dict[str, Any]
) -> None:
    train, holdout, held_out, kept = leaky
    data = prepared(train, holdout, curation=curation)
    assert sorted(user_text(e) for e in data.test) == sorted(held_out)
    trained_on = data.train + data.validation
    assert not keys(trained_on) & keys(data.test)
    # Exactly the three copies left; split.test does not apply, so every other row trains or validates.
    assert sorted(user_text(e) for e in trained_on) == sorted(kept)
    assert data.report.dropped["test_leakage"] == 3
    details = [sample["detail"] for sample in data.report.dropped_samples["test_leakage"]]
    assert all(f"test row file://{holdout}:" in detail for detail in details), details
    assert sum("similar to" in detail for detail in details) == 2
    assert data.report.splits["test"] == len(held_out)
    assert "| test_leakage | 3 |" in data.report.to_markdown()


def test_without_eval_only_sources_the_split_decides_the_test_set(
    leaky: tuple[Path, Path, list[str], list[str]],
) -> None:
    train, _, _, _ = leaky
    spec = DatasetSpec.model_validate({"sources": [{"uri": f"file://{train}"}], "split": {"test": 0.3}})
    data = prepare_dataset(spec, ObjectStore(), words, max_tokens=200)
    assert data.test and "test_leakage" not in data.report.dropped
    assert not keys(data.train) & keys(data.test)


@pytest.mark.slow
def test_a_run_evaluates_on_the_users_test_set_only(
    tmp_path: Path, tiny_model_dir: Path, leaky: tuple[Path, Path, list[str], list[str]]
) -> None:
    train, holdout, held_out, _ = leaky
    job = write_job(
        tmp_path / "job.yaml",
        model_dir=tiny_model_dir,
        data=train,
        output=f"file://{tmp_path}/out/",
        dataset={"sources": [{"uri": f"file://{train}"}, {"uri": f"file://{holdout}", "evalOnly": True}]},
        hyperparameters={"epochs": 1, "batchSize": 4, "sequenceLength": 256, "seed": 7},
    )
    _, manifest_path = run_locally(job, tmp_path)
    lineage = json.loads(manifest_path.read_text())
    assert lineage["dataset"]["splits"]["test"] == lineage["evaluation"]["testExamples"] == len(held_out)
    curation = json.loads((manifest_path.parent / "reports" / "curation.json").read_text())
    assert curation["dropped"]["test_leakage"] == 3
    predictions = [json.loads(line) for line in (manifest_path.parent / "reports" / "predictions.jsonl").open()]
    assert len(predictions) == len(held_out)
