"""``bench/estimate.py --smoke`` on the tiny model: one real ``kubetune run``, its pre-flight estimate
read back beside what the run measured. Accuracy is never asserted here: the figures come from the
full run, recorded in docs/measurements/estimate.json, which the docs must show as is."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.benchscripts import PAGE, load, recorded

bench = load("estimate")


def test_the_smoke_reads_the_estimate_and_the_measurement_of_a_real_run(tmp_path: Path, tiny_model_dir: Path) -> None:
    results = tmp_path / "estimate.json"
    arguments = ["--smoke", "--base-model", f"file://{tiny_model_dir}", "--work", str(tmp_path / "work")]
    assert bench.main([*arguments, "--results", str(results)]) == 0
    report = json.loads(results.read_text())
    (shape,) = report["shapes"].values()
    assert shape["measured"]["minutes"] > 0 and shape["measured"]["memoryGiB"] > 0.1
    assert shape["estimate"]["memoryGiB"] > 0 and shape["formula"]["memoryGiB"] > 0
    assert shape["plan"]["method"] == "lora"


def test_the_recorded_benchmark_is_what_the_docs_show() -> None:
    report = recorded("estimate")
    assert set(report["shapes"]) == set(bench.SHAPES), "every shape measured"
    page = " ".join(PAGE.read_text().split())
    assert " ".join(bench.render_markdown(report).split()) in page


def test_an_unknown_shape_is_refused_naming_the_option(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        bench.main(["--shapes", "example,huge", "--work", str(tmp_path / "work")])
    assert exit_.value.code == 2 and "--shapes: unknown huge" in capsys.readouterr().err
    assert not (tmp_path / "work").exists()
