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
    assert measure_drift.main(arguments) == 0
    assert json.loads(results.read_text())["settings"] == recorded["settings"], "resumed: nothing measured again"


@pytest.mark.parametrize(("successes", "trials"), [(0, 200), (10, 200), (200, 200)])
def test_the_reported_intervals_hold_the_rate(successes: int, trials: int) -> None:
    low, high = measure_drift.wilson(successes, trials)
    assert 0.0 <= low <= successes / trials <= high <= 1.0
    assert measure_drift.alarm_bound(200) == 15, "the bound the issue states for 200 checks at alpha 0.05"
