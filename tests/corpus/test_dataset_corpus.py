"""The dataset corpus: each broken dataset gets its documented outcome, with file and line, through
``kubetune preflight`` (in process: the real built-in tokenizer, no model weights) and never a traceback.

Cases and their expected outcomes: ``tests/corpus/datasets/cases.yaml``.
"""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from kubetune.api.v1alpha1 import BUILTIN_MODEL_URI
from kubetune_trainer.cli import main as kubetune

DATASETS = Path(__file__).parent / "datasets"
CASES: list[dict[str, Any]] = yaml.safe_load((DATASETS / "cases.yaml").read_text())


def generated(name: str, folder: Path) -> list[dict[str, Any]]:
    """Inputs too big to keep in the repository, written for the test."""
    assert name == "huge-line"
    row = {"messages": [{"role": "user", "content": "hello"}, {"role": "assistant", "content": "world"}]}
    path = folder / "huge-line.jsonl"
    huge = {"messages": [{"role": "user", "content": "x" * (9 * 2**20)}, {"role": "assistant", "content": "y"}]}
    path.write_text("".join(json.dumps(r) + "\n" for r in [row, row, huge] + [row] * 30))
    return [{"uri": f"file://{path}"}]


def manifest(case: dict[str, Any], folder: Path) -> Path:
    if "generate" in case:
        sources = generated(case["generate"], folder)
    else:
        sources = [
            {"uri": f"file://{DATASETS / s['file']}", **{k: v for k, v in s.items() if k != "file"}}
            for s in case["sources"]
        ]
    dataset = {"sources": sources, **case.get("dataset", {})}
    job = {
        "apiVersion": "kubetune.dev/v1alpha1",
        "kind": "FineTuneJob",
        "metadata": {"name": "dataset-case"},
        "spec": {
            "baseModel": {"uri": BUILTIN_MODEL_URI},
            "dataset": dataset,
            "method": {"type": "lora", **case.get("method", {})},
            "output": {"uri": f"file://{folder}/out/"},
            "resources": {"gpus": 0},
        },
    }
    path = folder / "job.yaml"
    path.write_text(yaml.safe_dump(job))
    return path


@pytest.mark.parametrize("case", CASES, ids=[c["name"] for c in CASES])
def test_broken_dataset_gets_its_documented_outcome(case: dict[str, Any], tmp_path: Path) -> None:
    output = io.StringIO()
    with contextlib.redirect_stdout(output), contextlib.redirect_stderr(output):
        code = kubetune(["preflight", "--job", str(manifest(case, tmp_path)), "--workdir", str(tmp_path / "work")])
    text = output.getvalue()
    assert "Traceback" not in text
    assert code == case["exit"], text[-3000:]
    for fragment in case.get("messages", []):
        assert fragment in text, text[-3000:]
    if code == 0:
        report = json.loads((tmp_path / "work" / "artifacts" / "reports" / "curation.json").read_text())
        assert report["invalidRows"] == case["invalid"], report["invalidSamples"]
    assert not (tmp_path / "out").exists(), "a pre-flight publishes nothing"


def test_the_corpus_has_25_cases_and_uses_every_file() -> None:
    assert len(CASES) >= 25
    used = {s["file"].split("/")[0] for c in CASES for s in c.get("sources", [])}
    kept = {p.name for p in DATASETS.iterdir() if p.name != "cases.yaml"}
    assert kept <= used, kept - used
