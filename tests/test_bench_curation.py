"""``bench/curation.py``: the smoke runs the measurement end to end on 2,000 rows and must find every
planted duplicate; the docs section quotes exactly what ``docs/measurements/curation.json`` records.
Benchmarks are not timed tests: nothing here asserts on speed."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "bench" / "curation.py"
RECORDED = ROOT / "docs" / "measurements" / "curation.json"
PAGE = ROOT / "docs" / "benchmarks.md"


def bench() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_curation", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def test_the_smoke_finds_every_planted_duplicate(tmp_path: Path) -> None:
    results = tmp_path / "curation.json"
    run = subprocess.run(
        [sys.executable, str(SCRIPT), "--smoke", "--results", str(results)],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=ROOT,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    assert "ours/baseline: wall time" in run.stdout, "the ratio measured in the same run is printed"
    recorded = json.loads(results.read_text())
    for name in ("ours", "baseline"):
        score = recorded["runs"][name]["score"]
        assert score["near"]["planted"] > 0 and score["exact"]["planted"] > 0
        assert score["near"]["precision"] is not None and score["near"]["recall"] is not None, name
    ours = recorded["runs"]["ours"]["score"]
    assert ours["near"]["recall"] == ours["near"]["precision"] == 1.0, "every planted near-duplicate, nothing else"
    assert ours["exact"]["recall"] == ours["exact"]["precision"] == 1.0
    assert ours["negativesDropped"] == 0, "no hard negative dropped"
    agreement = recorded["agreement"]
    assert agreement["plantedFoundByBaselineAndOurs"] == agreement["plantedFoundByBaseline"]
    assert agreement["tokensEqual"] == agreement["tokensCountedByBoth"] > 0
    assert recorded["config"]["rows"] == 2000 and recorded["command"] == "python bench/curation.py --smoke"
    assert bench().render_markdown(recorded).startswith("## Curation of 2,000 short examples")


def test_the_docs_section_is_the_recorded_measurement() -> None:
    """docs/benchmarks.md holds the section ``render_markdown`` makes of the recorded JSON, unchanged:
    every figure it quotes is the JSON's."""
    module = bench()
    results = json.loads(RECORDED.read_text())
    section = module.render_markdown(results)
    heading = section.splitlines()[0]
    page = PAGE.read_text()
    assert heading in page, f"{PAGE} has no section '{heading}'"
    start = page.index(heading)
    following = page.find("\n## ", start + len(heading))
    quoted = page[start : following + 1 if following >= 0 else len(page)]
    assert quoted.strip() == section.strip()


def test_the_recording_is_the_full_measurement() -> None:
    module = bench()
    results = json.loads(RECORDED.read_text())
    assert results["command"] == "python bench/curation.py"
    assert results["config"] == module.asdict(module.FULL)
    assert (
        results["planted"]["original"] + sum(count for kind, count in results["planted"].items() if kind != "original")
        == results["config"]["rows"]
    )
    assert set(results["runs"]) == {"ours", "baseline"}
    for run in results["runs"].values():
        assert run["peakRssBytes"] > run["rssBeforeBytes"] > 0
        assert run["seconds"]["wall"] > 0 and set(run["stages"]) == {stage for stage, _ in module.STAGES}
    assert (
        results["ratio"]["wall"]
        == results["runs"]["ours"]["seconds"]["wall"] / (results["runs"]["baseline"]["seconds"]["wall"])
    )
