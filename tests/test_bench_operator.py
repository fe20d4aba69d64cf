"""``bench/operator.py``: the smoke drives the real operator process through the scenarios on 30
FineTuneJobs each (one uncached pair), and must flag the planted fault (a pre-flight Job deleted, so made twice) and
nothing else; the docs section quotes exactly what ``docs/measurements/operator.json`` records.
Benchmarks are not timed tests: nothing here asserts on speed."""

from __future__ import annotations

from pathlib import Path

from tests.benchscripts import assert_page_quotes, load, recorded, run_smoke


def test_the_smoke_drives_every_job_to_succeeded_and_flags_only_the_planted_fault(tmp_path: Path) -> None:
    run, smoke = run_smoke("operator", tmp_path)
    assert smoke["command"] == "python bench/operator.py --smoke"
    runs = smoke["runs"]
    assert set(runs) == {"burst", "burst-uncached", "sustained", "kills"}
    for name, measured in runs.items():
        assert measured["violationCount"] == 0, (name, measured["violations"])
        assert measured["creationToPreflightJob"]["count"] == 30, name
        assert measured["trainingDoneToSucceeded"]["count"] == 30, name
        assert measured["operatorRequests"] > 0 and measured["operatorPeakMegabytes"] > 0, name
    assert runs["burst"]["plantedFlagged"] == ["job-0003: 2 Jobs job-0003-preflight created (one expected)"]
    assert runs["kills"]["operatorProcesses"] == 2, "one kill, one restart"
    # The cache is what the uncached baseline lacks: it reads Jobs, ours does not.
    assert not any(key.startswith("get jobs") for key in runs["burst"]["requestsByVerb"])
    assert runs["burst-uncached"]["requestsByVerb"]["get jobs"] > 0
    assert "burst, baseline/ours: requestsPerJob" in run.stdout, "the ratio measured in the same run is printed"
    assert load("operator").render_markdown(smoke).startswith("## The operator at scale: 30 FineTuneJobs")


def test_a_missed_job_and_a_duplicated_one_are_both_violations() -> None:
    module = load("operator")
    timeline = module.Timeline()
    timeline.job_uids.update({"a-preflight": {"1"}, "a-train": {"2"}, "b-preflight": {"3", "4"}, "b-train": {"5"}})
    timeline.final_phase.update({"a": "Succeeded", "b": "Succeeded", "c": "Validating"})
    found = module.violations(["a", "b", "c"], timeline)
    assert found == [
        "b: 2 Jobs b-preflight created (one expected)",
        "c: 0 Jobs c-preflight created (one expected)",
        "c: 0 Jobs c-train created (one expected)",
        "c: ended Validating, not Succeeded",
    ]


def test_the_docs_section_is_the_recorded_measurement() -> None:
    """docs/benchmarks.md holds the section ``render_markdown`` makes of the recorded JSON, unchanged:
    every figure it quotes is the JSON's."""
    results = recorded("operator")
    assert results["command"] == "python bench/operator.py"
    section = load("operator").render_markdown(results)
    assert_page_quotes(section)
