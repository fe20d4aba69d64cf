"""``scripts/measure_distill.py --smoke``: a tuned teacher, a student with every other layer of the base
dropped, that student tuned on labels alone and distilled from the teacher through ``kubetune run``,
their paired comparison and speeds, a planted record naming another teacher that the script must flag,
resuming without running anything again, and the page rendered from the JSON."""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
import measure_distill  # noqa: E402

from tests.test_measure_forgetting import run_smoke  # noqa: E402


def _rows(answers: list[tuple[str, str]]) -> list[dict[str, str]]:
    return [
        {"source": f"file:///test.jsonl:{i}", "tuned": tuned, "reference": ref}
        for i, (tuned, ref) in enumerate(answers)
    ]


def test_the_students_are_compared_row_by_row() -> None:
    distilled = _rows([("billing", "billing"), ("technical", "technical"), ("account", "shipping"), ("x", "returns")])
    labels_only = _rows([("billing", "billing"), ("account", "technical"), ("account", "shipping"), ("x", "returns")])
    comparison = measure_distill.compare(distilled, labels_only)
    assert comparison["examples"] == 4 and comparison["difference"] == pytest.approx(0.25)
    assert comparison["ci"][0] <= 0.25 <= comparison["ci"][1]
    with pytest.raises(SystemExit, match="different test rows"):
        measure_distill.compare(distilled, labels_only[:3])


def test_a_distilled_run_is_checked_against_the_teachers_version_and_manifest(tmp_path: Path) -> None:
    folder = tmp_path / "v20261206-000000-abcdef"
    folder.mkdir()
    (folder / "manifest.json").write_text('{"version": "v20261206-000000-abcdef"}')
    digest = hashlib.sha256((folder / "manifest.json").read_bytes()).hexdigest()
    teacher = {"version": str(folder)}

    def run(version: str, sha: str) -> dict[str, Any]:
        return {"run": "distilled", "distill": {"teacher": {"version": {"version": version, "manifestSha256": sha}}}}

    assert measure_distill.taught_by_teacher(run(folder.name, digest), teacher) is None
    assert "not the teacher" in str(measure_distill.taught_by_teacher(run("v2", digest), teacher))
    assert "the teacher's is" in str(measure_distill.taught_by_teacher(run(folder.name, "0" * 64), teacher))
    assert measure_distill.taught_by_teacher({"run": "distilled", "distill": None}, teacher) is not None


@pytest.mark.slow
def test_the_smoke_distils_into_a_half_depth_student_and_resumes(tmp_path: Path, tiny_model_dir: Path) -> None:
    out, scratch = tmp_path / "distill.json", tmp_path / "scratch"
    first = run_smoke("measure_distill", out, scratch, tiny_model_dir)
    assert first.returncode == 0, first.stderr[-3000:]
    results = json.loads(out.read_text())
    assert results["commit"] and "--smoke" in results["command"]
    runs = {run["run"]: run for run in results["runs"]}
    assert list(runs) == ["teacher", measure_distill.LABELS_ONLY, measure_distill.DISTILLED]
    assert all(run["exitCode"] == 0 for run in runs.values())

    student = json.loads((scratch / "student" / "config.json").read_text())
    assert student["num_hidden_layers"] == 1 and results["student"]["keptLayers"] == [0]
    teacher, labels_only, distilled = runs.values()
    assert teacher["manifest"]["spec"]["baseModel"]["uri"] == f"file://{tiny_model_dir}"
    for run in (labels_only, distilled):
        assert run["manifest"]["spec"]["baseModel"]["uri"] == results["student"]["uri"]
        assert run["size"]["parameters"] < teacher["size"]["parameters"], "a layer fewer"
    # The teacher is the only difference between the students, and the distilled one learnt from it.
    spec = json.loads(json.dumps(distilled["manifest"]["spec"]))
    assert spec["method"].pop("objective") == "distill"
    assert spec["method"].pop("distill") == {"teacher": f"file://{teacher['version']}"}
    assert spec == labels_only["manifest"]["spec"]
    assert distilled["distill"]["mode"] == "logits", "same tokenizer: auto resolves to logit distillation"
    assert distilled["distill"]["teacher"]["version"]["version"] == Path(teacher["version"]).name
    assert labels_only["distill"] is None and distilled["resolved"]["objective"]["type"] == "distill"

    assert (
        results["comparison"]["examples"] == distilled["task"]["examples"] == len(distilled["perExample"]["test"]) > 0
    )
    assert set(results["speed"]["msPerToken"]) == {"teacher", measure_distill.DISTILLED}
    assert all(len(rounds) == measure_distill.SPEED_ROUNDS for rounds in results["speed"]["rounds"].values())
    page = out.with_suffix(".md").read_text()
    assert page == measure_distill.render_markdown(results)
    assert "(1 of 2)" in page and f"{results['comparison']['difference']:+.3f}" in page

    again = run_smoke("measure_distill", out, scratch, tiny_model_dir)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "recorded or not asked for, skipped" in again.stderr and "running" not in again.stderr
    assert json.loads(out.read_text())["runs"] == results["runs"]


def test_the_recorded_measurement_is_what_the_docs_show() -> None:
    """The page is rendered from the JSON, and docs/methods.md quotes its figures: each run's accuracy
    and size, the paired difference and the speed."""
    recorded = ROOT / "docs" / "measurements" / "distill.json"
    results = json.loads(recorded.read_text())
    assert recorded.with_suffix(".md").read_text() == measure_distill.render_markdown(results)
    methods = (ROOT / "docs" / "methods.md").read_text()
    runs = {run["run"]: run for run in results["runs"]}
    for name in ("teacher", "labels only", "distilled"):
        task, size = runs[name]["task"], runs[name]["size"]
        assert (
            f"{task['before']:.3f} → {task['after']:.3f} [{task['afterCi'][0]:.3f}, {task['afterCi'][1]:.3f}]"
            in methods
        )
        assert f"{size['parameters'] / 1e6:.1f} M parameters, {size['bytes'] / 2**20:.0f} MiB" in methods
    comparison = results["comparison"]
    assert f"{comparison['difference']:+.3f} [{comparison['ci'][0]:+.3f}, {comparison['ci'][1]:+.3f}]" in methods
    ms = results["speed"]["msPerToken"]
    assert f"{ms['distilled']:.1f} ms per token against the teacher's {ms['teacher']:.1f}" in methods
    assert f"({ms['teacher'] / ms['distilled']:.2f}x as fast" in methods
    # The run the page calls distilled was taught by the recorded teacher (its lineage says so).
    assert runs["distilled"]["distill"]["teacher"]["version"]["version"] == Path(runs["teacher"]["version"]).name
