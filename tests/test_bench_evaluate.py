"""``bench/evaluate.py --smoke`` on the tiny model: the evaluation as it was, ours cold and ours warm
run on the same model and data and decide exactly the same values, intervals, verdict and answers.
Speed is never asserted here: the figures come from the full run, recorded in
docs/measurements/evaluation.json, which the docs must quote as is."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.benchscripts import PAGE, load, recorded

bench = load("evaluate")


def test_the_smoke_evaluates_three_ways_with_identical_results(tmp_path: Path, tiny_model_dir: Path) -> None:
    results = tmp_path / "evaluation.json"
    arguments = ["--smoke", "--base-model", f"file://{tiny_model_dir}", "--work", str(tmp_path / "work")]
    assert bench.main([*arguments, "--results", str(results)]) == 0
    report = json.loads(results.read_text())
    assert set(report["seconds"]) == set(bench.WAYS)
    assert report["identical"] == {"cold": True, "warm": True}
    assert report["testExamples"] > 0 and report["knownAnswerPrompts"] > 0, "both the test split and forgetting ran"
    assert list((tmp_path / "work" / "cache" / "evaluation").glob("*.jsonl")), "the cold run kept the base's scores"


def test_a_difference_from_before_fails_the_run(
    tmp_path: Path, tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Planted: a warm cache that answers differently (as a stale or wrong cache would) is caught."""
    from kubetune_trainer.evaluation import base_cache

    real = base_cache.cached_base_scores

    def stale(*args, **kwargs):  # type: ignore[no-untyped-def]
        scores, origin = real(*args, **kwargs)
        if origin == "cache":
            scores.outputs[:] = ["stale"] * len(scores.outputs)
        return scores, origin

    monkeypatch.setattr(base_cache, "cached_base_scores", stale)
    arguments = ["--smoke", "--base-model", f"file://{tiny_model_dir}", "--work", str(tmp_path / "work")]
    assert bench.main([*arguments, "--results", str(tmp_path / "out.json")]) == 1
    report = json.loads((tmp_path / "out.json").read_text())
    assert report["identical"] == {"cold": True, "warm": False}
    assert "predictions" in report["differing"]["warm"]


def test_the_recorded_benchmark_is_what_the_docs_show() -> None:
    report = recorded("evaluation")
    assert all(report["identical"].values()), "a faster evaluation that decides differently does not count"
    page = " ".join(PAGE.read_text().split())
    assert " ".join(bench.render_markdown(report).split()) in page
    for figure in bench.quoted_figures(report):
        assert figure in page, figure


@pytest.mark.parametrize(
    ("arguments", "said"),
    [(["--examples", "0"], "--examples: must be positive"), (["--adapter", "/nowhere"], "--adapter: /nowhere holds")],
)
def test_bad_arguments_are_refused_naming_the_option_before_anything_runs(
    arguments: list[str], said: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_:
        bench.main([*arguments, "--work", str(tmp_path / "work")])
    assert exit_.value.code == 2 and said in capsys.readouterr().err
    assert not (tmp_path / "work").exists(), "nothing measured or written"
