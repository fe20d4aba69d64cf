"""``scripts/measure_privacy.py --smoke``: one private run on the tiny model through ``kubetune run``, its
epsilon recomputed from its steps, a planted record (half the noise) flagged, and the page rendered from
the JSON."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
import measure_privacy  # noqa: E402

from tests.test_measure_forgetting import run_smoke  # noqa: E402


@pytest.mark.slow
def test_the_smoke_recomputes_the_budget_and_flags_the_planted_record(tmp_path: Path, tiny_model_dir: Path) -> None:
    out = tmp_path / "privacy.json"
    result = run_smoke("measure_privacy", out, tmp_path / "scratch", tiny_model_dir)
    assert result.returncode == 0, result.stderr[-3000:]
    results = json.loads(out.read_text())
    (run,) = results["runs"]
    assert run["exitCode"] == 0 and run["problems"] == [], run.get("error")
    privacy = run["privacy"]
    assert privacy["targetEpsilon"] == 8 and 0 < privacy["epsilon"] <= 8
    assert run["resolved"]["privacy"]["mechanism"] == "dp-sgd"
    assert run["test"]["examples"] == len(run["perExample"]["test"]) > 0
    planted = results["planted"]["problems"]
    assert planted and planted[0].startswith("reported epsilon"), planted
    assert "planted: reported epsilon" in result.stderr
    assert out.with_suffix(".md").read_text() == measure_privacy.render_markdown(results)


def test_a_record_over_its_budget_is_flagged() -> None:
    privacy = {"noiseMultiplier": 1.0, "sampleRate": 0.01, "steps": 1000, "delta": 1e-5, "targetEpsilon": 1.0}
    honest = {**privacy, "epsilon": measure_privacy.recomputed_epsilon({**privacy, "epsilon": 0})}
    assert honest["epsilon"] > 1.0
    (problem,) = measure_privacy.problems(honest)
    assert "over its target" in problem
    assert measure_privacy.problems({**honest, "targetEpsilon": 100.0}) == []


def test_the_recorded_measurement_is_what_the_docs_show() -> None:
    """The page is rendered from the JSON, and docs/privacy.md quotes every recorded run's row."""
    recorded = ROOT / "docs" / "measurements" / "privacy.json"
    results = json.loads(recorded.read_text())
    assert "--smoke" not in results["command"] and results["runs"]
    assert recorded.with_suffix(".md").read_text() == measure_privacy.render_markdown(results)
    page = (ROOT / "docs" / "privacy.md").read_text()
    for run in results["runs"]:
        assert run["exitCode"] == 0 and run["problems"] == [], run["run"]
        assert measure_privacy._row(run) in page, run["run"]
