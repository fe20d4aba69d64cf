"""README's first command, for real: the built-in SmolLM2-135M-Instruct on the example tickets.

The manifest is minimal (the data and the output): everything else is kubetune's defaults. Slow
(minutes on 2 cores) and run on every landing: it checks the quality claims (the tuned model beats
the base on the held-out split, measures its general ability on the built-in regression prompts, and the
default gate's verdict follows its checks) and that everything is published. The example is run
with one line added, ``output.channel: prod``: a promoted run joins the channel, one that is not does
not.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
@pytest.mark.timeout(2400)
def test_kubetune_run_example_improves_the_default_model(tmp_path: Path) -> None:
    kubetune = Path(sys.executable).parent / "kubetune"
    example = yaml.safe_load((ROOT / "examples" / "support-tickets.yaml").read_text())
    example["spec"]["output"]["channel"] = "prod"
    (tmp_path / "support-tickets.yaml").write_text(yaml.safe_dump(example))
    result = subprocess.run(
        [
            str(kubetune),
            "run",
            str(tmp_path / "support-tickets.yaml"),
            "--map",
            f"/opt/kubetune/examples={ROOT / 'examples'}",
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
    assert evaluation["primaryMetric"] == "accuracy"  # six labels: chosen automatically, not asked for
    # Forgetting, measured on the built-in regression pool with nothing asked: within 5% on both measures.
    forgetting = evaluation["forgetting"]
    assert forgetting["likelihood"]["examples"] == 188 and forgetting["likelihood"]["passed"], forgetting
    assert forgetting["knownAnswers"]["examples"] >= 100, forgetting
    # The default gate ran every check and its verdict follows them. Recorded on 2 cores
    # (docs/measurements/forgetting.md, the frozen defaults): promoted, with known answers
    # 41.5% -> 41.5%, two prompts to spare within the 5% tolerance; three answered differently on
    # another CPU would flip it, so the test holds the verdict to the checks, not to the recording.
    checks = {c["name"]: c["passed"] for c in evaluation["gate"]["checks"]}
    assert {"task", "forgetting.likelihood", "forgetting.knownAnswers"} <= set(checks), evaluation["gate"]
    assert checks["task"] is True and evaluation["gate"]["default_gate"], evaluation["gate"]
    gated = [passed for passed in checks.values() if passed is not None]
    assert manifest["promoted"] is all(gated), evaluation["gate"]
    # Within 2 points of what auto reached before the protections (0.948), at the strength chosen on
    # the validation split.
    assert accuracy["tuned"] >= 0.928, accuracy
    # Recorded: 0.9 (0.8 lost one validation row); another CPU may choose a neighbour.
    strength = manifest["training"]["adapterStrength"]
    assert strength["how"] == "validation" and 0.5 <= strength["scale"] <= 1.0, strength
    # Replay by default, from the base answers shipped for the built-in model: nothing was generated.
    replay = manifest["dataset"]["replay"]
    assert replay["examples"] > 0 and replay["answers"] == "shipped", replay
    assert replay["withheldWrongAnswers"] > 0, "the base model's wrong answers are not replayed"
    paths = {a["path"] for a in manifest["artifacts"]}
    assert {
        "adapter/adapter_model.safetensors",
        "merged/model.safetensors",
        "reports/evaluation.md",
        "reports/loss_curve.png",
    } <= paths
    verdict = "quality gate: promoted" if manifest["promoted"] else "quality gate: not promoted"
    assert verdict in result.stdout and "stage times" in result.stderr
    entries = sorted((tmp_path / "runs" / "support-tickets" / "channels" / "prod").glob("*.json"))
    if manifest["promoted"]:
        (entry,) = entries
        assert json.loads(entry.read_text())["version"] == version.name and entry.name == "000001.json"
    else:
        assert entries == [], "a run its gate did not promote stays off the channel"
