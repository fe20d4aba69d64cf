"""``bench/curation.py``: the smoke runs the measurement end to end on 2,000 rows and must find every
planted duplicate; the docs section quotes exactly what ``docs/measurements/curation.json`` records.
Benchmarks are not timed tests: nothing here asserts on speed."""

from __future__ import annotations

from pathlib import Path

from tests.benchscripts import assert_page_quotes, load, recorded, run_smoke


def test_the_smoke_finds_every_planted_duplicate(tmp_path: Path) -> None:
    run, smoke = run_smoke("curation", tmp_path)
    assert "ours/baseline: wall time" in run.stdout, "the ratio measured in the same run is printed"
    for name in ("ours", "baseline"):
        score = smoke["runs"][name]["score"]
        assert score["near"]["planted"] > 0 and score["exact"]["planted"] > 0
        assert score["near"]["precision"] is not None and score["near"]["recall"] is not None, name
    ours = smoke["runs"]["ours"]["score"]
    assert ours["near"]["recall"] == ours["near"]["precision"] == 1.0, "every planted near-duplicate, nothing else"
    assert ours["exact"]["recall"] == ours["exact"]["precision"] == 1.0
    assert ours["negativesDropped"] == 0, "no hard negative dropped"
    agreement = smoke["agreement"]
    assert agreement["plantedFoundByBaselineAndOurs"] == agreement["plantedFoundByBaseline"]
    assert agreement["tokensEqual"] == agreement["tokensCountedByBoth"] > 0
    assert smoke["config"]["rows"] == 2000 and smoke["command"] == "python bench/curation.py --smoke"
    assert load("curation").render_markdown(smoke).startswith("## Curation of 2,000 short examples")


def test_the_docs_section_is_the_recorded_measurement() -> None:
    """docs/benchmarks.md holds the section ``render_markdown`` makes of the recorded JSON, unchanged:
    every figure it quotes is the JSON's."""
    module = load("curation")
    results = recorded("curation")
    section = module.render_markdown(results)
    assert_page_quotes(section)


def test_the_recording_is_the_full_measurement() -> None:
    module = load("curation")
    results = recorded("curation")
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
