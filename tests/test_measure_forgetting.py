"""``scripts/measure_forgetting.py --smoke``: the measurement's code path on the tiny model, a planted
forgetting run that must be refused promotion, resuming, and docs rendered from the JSON."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
import measure_forgetting  # noqa: E402

from kubetune_trainer.general_prompts import load_general_prompts  # noqa: E402

KNOWN_ANSWER_PROMPTS = sum(p.keywords is not None for p in load_general_prompts().regression)


def run_smoke(script: str, out: Path, scratch: Path, model: Path) -> subprocess.CompletedProcess[str]:
    """``scripts/<script>.py --smoke`` on the tiny ``model``, writing ``out``; the measurement scripts share it."""
    return subprocess.run(
        [
            sys.executable,
            str(ROOT / "scripts" / f"{script}.py"),
            "--smoke",
            "--base-model",
            f"file://{model}",
            "--out",
            str(out),
            "--scratch",
            str(scratch),
        ],
        capture_output=True,
        text=True,
        timeout=900,
    )


def smoke(tmp_path: Path, model: Path) -> subprocess.CompletedProcess[str]:
    return run_smoke("measure_forgetting", tmp_path / "forgetting.json", tmp_path / "scratch", model)


@pytest.mark.slow
def test_the_smoke_measures_refuses_the_planted_forgetting_and_resumes(tmp_path: Path, tiny_model_dir: Path) -> None:
    first = smoke(tmp_path, tiny_model_dir)
    assert first.returncode == 0, first.stderr[-3000:]
    results = json.loads((tmp_path / "forgetting.json").read_text())
    assert results["commit"] and results["machine"]["cpus"] >= 1 and "--smoke" in results["command"]
    (planted,) = results["runs"]
    assert planted["protections"] == "planted" and planted["replay"] is None
    assert planted["resolved"]["hyperparameters"]["learningRate"] == 0.05
    # The planted run forgets: the likelihood of the base's own answers falls beyond 5%, and it is refused.
    likelihood = planted["forgetting"]["likelihood"]
    assert likelihood["relative_loss"] > likelihood["max_regression"] == 0.05, likelihood
    assert planted["promoted"] is False and planted["gate"]["message"].startswith("not promoted")
    assert any(c["name"].startswith("forgetting") and c["passed"] is False for c in planted["gate"]["checks"])
    # Every generated output is kept: the known-answer general prompts and the held-out task rows.
    assert (
        len(planted["perExample"]["general"]) == KNOWN_ANSWER_PROMPTS
        and len(planted["perExample"]["test"]) == planted["task"]["examples"]
    )
    # The docs page is rendered from the JSON.
    page = (tmp_path / "forgetting.md").read_text()
    assert page == measure_forgetting.render_markdown(results)
    assert f"{likelihood['base']:.3f} → {likelihood['tuned']:.3f}" in page

    again = smoke(tmp_path, tiny_model_dir)
    assert again.returncode == 0, again.stderr[-3000:]
    assert again.stderr.count("recorded, skipped") == 1
    assert json.loads((tmp_path / "forgetting.json").read_text()) == results


@pytest.mark.parametrize("name", ["forgetting.json", "forgetting-sweep.json", "forgetting-candidate.json"])
def test_the_recorded_measurement_is_what_the_docs_show(name: str) -> None:
    recorded = ROOT / "docs" / "measurements" / name
    results = json.loads(recorded.read_text())
    page = recorded.with_suffix(".md").read_text()
    assert page == measure_forgetting.render_markdown(results, name)


def test_the_readme_quotes_the_recorded_demo_figures() -> None:
    """README's table of the example tickets, protections on and off, is the recorded measurement."""
    results = json.loads((ROOT / "docs" / "measurements" / "forgetting.json").read_text())
    runs = {run["protections"]: run for run in results["runs"] if run["dataset"] == "support-tickets"}
    readme = (ROOT / "README.md").read_text().replace("\u2212", "-")
    for label, setting in (("protections on (the demo)", "on"), ("protections off", "off")):
        run = runs[setting]
        task, likelihood, known = run["task"], run["forgetting"]["likelihood"], run["forgetting"]["knownAnswers"]
        cells = [
            label,
            f"{task['base']:.3f} → {task['tuned']:.3f}",
            # "+ 0.0" turns a negative zero into zero: no change reads +0.0%, not -0.0%.
            f"{likelihood['base']:.3f} → {likelihood['tuned']:.3f} ({-likelihood['relative_loss'] + 0.0:+.1%})",
            f"{known['base']:.1%} → {known['tuned']:.1%} ({-known['relative_loss'] + 0.0:+.1%})",
            "yes" if run["promoted"] else "no",
        ]
        assert "| " + " | ".join(cells) + " |" in readme, cells
    if "adapterStrength" in runs["on"]:
        assert f"the\nadapter kept at strength {runs['on']['adapterStrength']['scale']:g}" in readme


def test_a_run_cut_short_keeps_its_checkpoints_for_the_next_attempt_and_any_other_starts_clean(tmp_path: Path) -> None:
    """A run past its hour (or an interrupted invocation) is measured again from its checkpoints:
    ``kubetune run`` resumes a run with the same spec, data and model from them."""
    folder = tmp_path / "tickets-defaults"
    folder.mkdir()
    (folder / "job.yaml").write_text("spec: {a: 1}\n")
    (folder / "runs" / "tickets" / "checkpoints").mkdir(parents=True)
    assert measure_forgetting.clear_unless_resumable(folder, "spec: {a: 1}\n") is True
    assert (folder / "runs" / "tickets" / "checkpoints").is_dir()
    assert measure_forgetting.clear_unless_resumable(folder, "spec: {a: 2}\n") is False  # another job
    assert folder.is_dir() and not any(folder.iterdir())
    assert measure_forgetting.clear_unless_resumable(tmp_path / "new", "spec: {a: 1}\n") is False
    assert (tmp_path / "new").is_dir()
