"""``scripts/measure_drift.py --smoke`` on the tiny model: the measurement's code path end to end,
with its planted case (every request of a window moved) that it must find, and its null windows
that must stay within the binomial bound; resumable (a second run measures nothing again)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))

import measure_drift  # noqa: E402


def test_the_smoke_finds_the_planted_shift_and_stays_calibrated(tmp_path: Path, tiny_model_dir: Path) -> None:
    results = tmp_path / "drift.json"
    arguments = [
        "--smoke",
        "--base-model",
        f"file://{tiny_model_dir}",
        "--results",
        str(results),
        "--permutations",
        "199",
    ]
    assert measure_drift.main(arguments) == 0
    recorded = json.loads(results.read_text())
    by_source = {s["source"]: s for s in recorded["settings"]}
    assert set(by_source) == {"none", "general"}
    assert by_source["general"]["rate"] >= 0.9 and by_source["general"]["mixture"] == 1.0
    assert by_source["none"]["alarms"] <= measure_drift.alarm_bound(by_source["none"]["checks"])
    assert recorded["nullPool"] >= 10 * by_source["none"]["size"]
    assert (tmp_path / "drift.md").read_text() == measure_drift.render_markdown(recorded), "rendered beside it"
    assert measure_drift.main(arguments) == 0
    assert json.loads(results.read_text())["settings"] == recorded["settings"], "resumed: nothing measured again"


@pytest.mark.parametrize(("successes", "trials"), [(0, 200), (10, 200), (200, 200)])
def test_the_reported_intervals_hold_the_rate(successes: int, trials: int) -> None:
    low, high = measure_drift.wilson(successes, trials)
    assert 0.0 <= low <= successes / trials <= high <= 1.0
    assert measure_drift.alarm_bound(200) == 15, "the bound the issue states for 200 checks at alpha 0.05"


RECORDED = ROOT / "docs" / "measurements" / "drift.json"


def test_the_recorded_measurement_is_what_the_docs_show() -> None:
    """docs/measurements/drift.md is rendered from the recorded JSON, docs/drift.md quotes its figures,
    and the API's documented minimum window is the one measured."""
    from kubetune.api.driftmonitor import DOCUMENTED_MIN_WINDOW

    results = json.loads(RECORDED.read_text())
    assert RECORDED.with_suffix(".md").read_text() == measure_drift.render_markdown(results)
    page = " ".join((ROOT / "docs" / "drift.md").read_text().split())
    for figure in measure_drift.quoted_figures(results):
        assert figure in page, figure
    assert measure_drift.minimum_window(results) == DOCUMENTED_MIN_WINDOW


def test_the_recording_meets_the_issues_bar() -> None:
    """At least 200 checks a setting, null windows from a pool ten times the largest window, every null
    setting within the binomial bound, and the documented minimum window at most 200."""
    results = json.loads(RECORDED.read_text())
    measured = [s for s in results["settings"] if "rate" in s]
    assert measured and all(s["checks"] >= 200 for s in measured)
    null = [s for s in measured if s["source"] == "none"]
    assert {s["size"] for s in null} == set(measure_drift.SIZES)
    assert all(s["alarms"] <= measure_drift.alarm_bound(s["checks"]) for s in null), null
    assert results["nullPool"] >= 10 * max(measure_drift.SIZES)
    minimum = measure_drift.minimum_window(results)
    assert minimum is not None and minimum <= 200
