"""``bench/train.py --smoke`` on the tiny model: every trainer of the comparison runs, the planted run
(one that trains on less) is flagged instead of counted, packed examples are checked for
cross-attention, and the lever and method tables fill. Speed is never asserted here: the figures
come from the full run, recorded in docs/measurements/train.json, which the docs must quote as is."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

import train as bench  # noqa: E402

RECORDED = ROOT / "docs" / "measurements" / "train.json"


def test_the_smoke_runs_every_trainer_and_flags_the_planted_run(tmp_path: Path, tiny_model_dir: Path) -> None:
    results = tmp_path / "train.json"
    arguments = ["--smoke", "--base-model", f"file://{tiny_model_dir}", "--work", str(tmp_path / "work")]
    assert bench.main([*arguments, "--results", str(results)]) == 0
    report = json.loads(results.read_text())
    runs = report["runs"]
    assert {"ours", "a-defaults", "a-tuned", "b-tuned", bench.PLANTED} <= set(runs)
    assert bench.PLANTED in report["flagged"] and "trained" in report["flagged"][bench.PLANTED]
    assert "ours" not in report["flagged"]
    for name in ("ours", "a-tuned", "b-tuned"):
        run = runs[name]
        assert run["trained"] > 0 and run["tokens"] <= run["positions"] and run["validationLoss"] > 0, (name, run)
    assert runs["ours"]["trained"] == runs["a-tuned"]["trained"], "the same examples, the same labelled tokens"
    assert runs["b-tuned"]["positions"] == runs["b-tuned"]["tokens"], "TRL's padding-free rows hold no padding"
    assert set(report["ratios"]) == {"a", "b"}
    isolation = report["packingIsolation"]
    assert isolation["ours"] < 1e-3 and isolation["trlPaddingFree"] < 1e-3 < isolation["control"], isolation
    assert set(report["levers"]) == {bench.REFERENCE, *bench.SMOKE_LEVERS}
    assert report["methods"]["qlora"]["trainableParameters"] == report["levers"][bench.REFERENCE]["trainableParameters"]
    assert results.with_suffix(".md").read_text() == bench.render_markdown(report)
    # Resumable: a second invocation measures nothing again and reports the same runs.
    assert bench.main([*arguments, "--results", str(results)]) == 0
    assert json.loads(results.read_text())["runs"] == runs


def test_the_recorded_benchmark_is_what_the_docs_show() -> None:
    report = json.loads(RECORDED.read_text())
    assert RECORDED.with_suffix(".md").read_text() == bench.render_markdown(report)
    page = " ".join((ROOT / "docs" / "benchmarks.md").read_text().split())
    for figure in bench.quoted_figures(report):
        assert figure in page, figure
    for ratio in report["ratios"].values():
        assert ratio["comparable"], f"the ratio is taken against {ratio['against']}, which did other work or quality"
    assert report["packingIsolation"]["trlPaddingFree"] < 1e-3, "baseline B packs without cross-attention"


@pytest.mark.parametrize(
    ("arguments", "said"),
    [
        (["--runs", "a-tuned"], "--runs: include ours"),
        (["--runs", "ours,zzz"], "--runs: unknown zzz"),
        (["--seeds", "0"], "--seeds: must be positive"),
        (["--lever-steps", "-3"], "--lever-steps: must be positive"),
    ],
)
def test_bad_arguments_are_refused_naming_the_option_before_anything_runs(
    arguments: list[str], said: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_:
        bench.main([*arguments, "--work", str(tmp_path / "work")])
    assert exit_.value.code == 2 and said in capsys.readouterr().err
    assert not (tmp_path / "work").exists(), "nothing measured or written"
