"""README's first command, for real: the built-in SmolLM2-135M-Instruct on the example tickets.

Slow (minutes on 2 cores) and run on every landing: it checks the quality claims — the tuned
model beats the base on the held-out split, loses at most 5% on the general regression set,
passes the gate — and that everything is published.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
@pytest.mark.timeout(2400)
def test_kubetune_run_example_improves_the_default_model(tmp_path: Path) -> None:
    kubetune = Path(sys.executable).parent / "kubetune"
    result = subprocess.run(
        [
            str(kubetune),
            "run",
            str(ROOT / "examples" / "support-tickets.yaml"),
            "--output-dir",
            str(tmp_path / "runs"),
            "--workdir",
            str(tmp_path / "work"),
        ],
        capture_output=True,
        text=True,
        timeout=2300,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    assert result.returncode == 0, result.stderr[-4000:]
    (version,) = [p for p in (tmp_path / "runs" / "support-tickets").iterdir() if p.name.startswith("v")]
    manifest = json.loads((version / "manifest.json").read_text())
    evaluation = manifest["evaluation"]
    accuracy = next(m for m in evaluation["metrics"] if m["name"] == "accuracy")
    perplexity = next(m for m in evaluation["metrics"] if m["name"] == "perplexity")
    assert accuracy["tuned"] > accuracy["base"] and accuracy["ciLow" if "ciLow" in accuracy else "ci_low"] > 0, accuracy
    assert perplexity["tuned"] < perplexity["base"], perplexity
    regression = evaluation["forgetting"]["likelihood"]
    assert regression["examples"] >= 200 and regression["passed"], regression
    assert manifest["promoted"] is True, evaluation["gate"]
    paths = {a["path"] for a in manifest["artifacts"]}
    assert {
        "adapter/adapter_model.safetensors",
        "merged/model.safetensors",
        "reports/evaluation.md",
        "reports/loss_curve.png",
    } <= paths
    assert "quality gate: promoted" in result.stdout and "stage times" in result.stderr
