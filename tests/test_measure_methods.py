"""``scripts/measure_methods.py --smoke``: a planted DoRA run through ``kubetune run`` on the tiny
model that the gate must refuse, resuming, and the docs page rendered from the JSON."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
import measure_methods  # noqa: E402
from measure_forgetting import job_manifest  # noqa: E402

from kubetune.api.v1alpha1 import FineTuneJob  # noqa: E402
from tests.test_measure_forgetting import run_smoke  # noqa: E402


def smoke(tmp_path: Path, model: Path) -> subprocess.CompletedProcess[str]:
    return run_smoke("measure_methods", tmp_path / "methods.json", tmp_path / "scratch", model)


@pytest.mark.slow
def test_the_smoke_trains_dora_refuses_the_planted_forgetting_and_resumes(tmp_path: Path, tiny_model_dir: Path) -> None:
    first = smoke(tmp_path, tiny_model_dir)
    assert first.returncode == 0, first.stderr[-3000:]
    results = json.loads((tmp_path / "methods.json").read_text())
    assert results["commit"] and "--smoke" in results["command"]
    planted, preference = results["runs"]
    assert planted["method"] == "dora, planted forgetting"
    resolved = planted["resolved"]
    assert (resolved["adapter"], resolved["hyperparameters"]["learningRate"]) == ("dora", 0.05)
    likelihood = planted["forgetting"]["likelihood"]
    assert likelihood["relative_loss"] > likelihood["max_regression"], likelihood
    assert planted["promoted"] is False and planted["gate"]["message"].startswith("not promoted")
    training = planted["training"]
    assert training["trainedTokensPerSecond"] > 0 and training["peakMemoryBytes"] > 0
    # The preference example's DPO, planted the same way: its rewards and judged answers are recorded.
    assert preference["method"] == "dpo, planted forgetting" and preference["promoted"] is False
    assert preference["resolved"]["objective"]["type"] == "dpo"
    judged = preference["preference"]["judged"]
    assert judged["prompts"] == preference["splits"]["test"] > 0 and 0 <= judged["winRate"] <= 1
    page = (tmp_path / "methods.md").read_text()
    assert page == measure_methods.render_markdown(results)
    assert f"| dpo, planted forgetting | {judged['prompts']} |" in page
    assert f"| {training['trainedTokensPerSecond']:.0f} |" in page and "dora r=" in page

    again = smoke(tmp_path, tiny_model_dir)
    assert again.returncode == 0, again.stderr[-3000:]
    assert again.stderr.count("skipped") == 2
    assert json.loads((tmp_path / "methods.json").read_text()) == results


def test_the_recorded_measurement_is_what_the_docs_show() -> None:
    recorded = ROOT / "docs" / "measurements" / "methods.json"
    results = json.loads(recorded.read_text())
    assert recorded.with_suffix(".md").read_text() == measure_methods.render_markdown(results)
    # Every preference figure docs/methods.md quotes is the recorded one.
    page = (ROOT / "docs" / "methods.md").read_text()
    for run in results["runs"]:
        if run.get("preference"):
            figures, judged = run["preference"], run["preference"]["judged"]
            quoted = measure_methods.quoted_preference_figures(run["method"], figures, judged)
        else:
            quoted = measure_methods.quoted_task_figures(run)
        for phrase in quoted:
            assert phrase in page, phrase


def test_runs_measured_at_other_commits_are_kept_and_the_page_says_so(tmp_path: Path) -> None:
    """Methods are measured a few at a time over several sessions: a later invocation keeps the runs an
    earlier one recorded at another commit, each with its own provenance, and the page warns that their
    speeds do not compare."""
    recorded = json.loads((ROOT / "docs" / "measurements" / "methods.json").read_text())
    earlier = {**recorded["runs"][0], "method": "earlier"}
    earlier["provenance"] = {**earlier["provenance"], "commit": "0" * 40, "codeSha256": "other"}
    path = tmp_path / "methods.json"
    path.write_text(json.dumps({**recorded, "runs": [earlier]}))
    now = measure_methods.provenance(["python", "scripts/measure_methods.py", "--only", "lora"])
    results = measure_methods.load_runs(path, now)
    assert results["runs"] == [earlier] and results["commit"] == now["commit"] != earlier["provenance"]["commit"]
    page = measure_methods.render_markdown({**results, "runs": [earlier, recorded["runs"][0]]})
    assert "- earlier: `" in page and f"at commit `{'0' * 12}`" in page
    assert "measured at different commits or on different machines" in page
    assert "different commits" not in measure_methods.render_markdown({**recorded, "runs": [earlier]})


def test_candidates_for_a_default_run_only_when_named() -> None:
    """A default's change rests on runs of its candidates; they are not methods, so "all" leaves them out."""
    everything = measure_methods.planned_runs(smoke=False)
    assert list(everything) == list(measure_methods.METHODS)
    asked = measure_methods.planned_runs(smoke=False, only=["dpo, 1 epoch"])
    # Beta 0.1 named: the default it was measured at, since replaced by 0.5.
    assert asked["dpo, 1 epoch"].override == {"hyperparameters": {"epochs": 1}, "method": {"dpo": {"beta": 0.1}}}
    assert "dpo, beta 0.5" not in asked
    assert measure_methods.planned_runs(smoke=True, only=["dpo, 1 epoch"]) == measure_methods.PLANTED
    for candidate in measure_methods.CANDIDATES.values():  # each a manifest the API accepts
        manifest = job_manifest(
            measure_methods.MANIFESTS[candidate.dataset], candidate.override, base_model=None, smoke_data=None
        )
        assert FineTuneJob.model_validate(manifest).spec.method.objective == "dpo"
