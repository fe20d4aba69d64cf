"""``scripts/measure_continual.py --smoke``: version A from the base with its Fisher published, a
planted variant of B (sequential tuning at a destructive learning rate) the script must flag as
forgetting A, resuming without running anything again, and the page rendered from the JSON."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
import measure_continual  # noqa: E402

from tests.test_measure_forgetting import run_smoke  # noqa: E402


def test_rows_are_held_out_by_their_hash_whatever_their_order() -> None:
    rows = [json.dumps({"text": f"row {i}"}) for i in range(2000)]
    train, test = measure_continual.split_rows(rows)
    assert set(train).isdisjoint(test) and len(train) + len(test) == len(rows)
    assert 0.17 < len(test) / len(rows) < 0.23
    assert measure_continual.split_rows(list(reversed(rows)))[1] == list(reversed(test))


def test_a_variant_keeps_a_within_five_percent_of_its_accuracy_or_its_likelihood() -> None:
    figures = {"before": 0.8, "after": 0.761, "nllBefore": 1.0, "nllAfter": 3.0}
    assert measure_continual.kept(figures)
    assert not measure_continual.kept({**figures, "after": 0.759})
    # No accuracy to lose (a random model): the likelihood of A's answers decides.
    assert measure_continual.kept({**figures, "before": 0.0, "after": 0.0, "nllAfter": 1.05})
    assert not measure_continual.kept({**figures, "before": 0.0, "after": 0.0, "nllAfter": 1.06})


def test_version_a_is_known_again_by_its_published_weights(tmp_path: Path) -> None:
    def version(merged: str, fisher: str) -> Path:
        folder = tmp_path / f"{merged}-{fisher}"
        folder.mkdir()
        artifacts = [
            {"path": "merged/model.safetensors", "sha256": merged},
            {"path": "adapter/adapter_model.safetensors", "sha256": "a" * 64},
            {"path": "fisher/fisher.safetensors", "sha256": fisher},
        ]
        (folder / "manifest.json").write_text(json.dumps({"artifacts": artifacts}))
        return folder

    first = measure_continual.weights_digest(version("1" * 64, "f" * 64))
    assert measure_continual.weights_digest(version("1" * 64, "e" * 64)) == first, "the weights decide, not the Fisher"
    assert measure_continual.weights_digest(version("2" * 64, "f" * 64)) != first


def test_version_a_is_recorded_before_any_variant_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An invocation stopped during its first variant (a session's end, a kill) keeps version A's record,
    so the next one continues from it rather than training A again. ``run_job`` stands in for
    ``kubetune run`` here: what is checked is the script's bookkeeping, not a run."""
    version = tmp_path / "A" / "v1"
    version.mkdir(parents=True)
    (version / "manifest.json").write_text(json.dumps({"artifacts": [{"path": "merged/w", "sha256": "1" * 64}]}))
    ran: list[str] = []

    def run_job(name: str, job: dict[str, object], folder: Path) -> tuple[dict[str, object], Path]:
        ran.append(name)
        if name != "A":
            raise KeyboardInterrupt  # the invocation is stopped while the variant trains
        return {"manifest": job, "exitCode": 0, "wallSeconds": 1.0}, version

    monkeypatch.setattr(measure_continual, "run_job", run_job)
    out = tmp_path / "continual.json"
    with pytest.raises(KeyboardInterrupt):
        measure_continual.main(["--out", str(out), "--scratch", str(tmp_path / "scratch"), "--only", "plain"])
    assert ran == ["A", "plain"]
    recorded = json.loads(out.read_text())["versionA"]
    assert recorded["version"] == str(version) and recorded["exitCode"] == 0
    assert recorded["weightsSha256"] == measure_continual.weights_digest(version)


def test_an_ewc_sweep_adds_ewc_alone_at_each_weight_and_refuses_a_non_weight() -> None:
    variants = measure_continual._variants(False, ["1e5", "3e6"])
    assert list(variants)[: len(measure_continual.VARIANTS)] == list(measure_continual.VARIANTS)
    assert variants["ewc, lambda 1e5"] == {"continual": {"replayFraction": 0, "ewc": {"lambda": 100000.0}}}
    assert variants["ewc, lambda 3e6"]["continual"]["ewc"] == {"lambda": 3000000.0}
    for bad in ("-1", "many"):
        with pytest.raises(SystemExit):
            measure_continual.main(["--ewc-lambda", bad])


def test_the_page_names_the_commit_of_a_variant_measured_by_an_earlier_invocation() -> None:
    results = json.loads((ROOT / "docs" / "measurements" / "continual.json").read_text())
    moved = {**results, "commit": "f" * 40}
    page = measure_continual.render_markdown(moved)
    for run in results["variants"]:
        assert f"{run['variant']} at {run['commit'][:12]}" in page
    same = {**results, "variants": [{**run, "commit": results["commit"]} for run in results["variants"]]}
    assert "another commit" not in measure_continual.render_markdown(same)


@pytest.mark.slow
def test_the_smoke_flags_the_planted_forgetting_and_resumes(tmp_path: Path, tiny_model_dir: Path) -> None:
    out, scratch = tmp_path / "continual.json", tmp_path / "scratch"
    first = run_smoke("measure_continual", out, scratch, tiny_model_dir)
    assert first.returncode == 0, first.stderr[-3000:]
    results = json.loads(out.read_text())
    assert results["commit"] and "--smoke" in results["command"] and results["versionA"]["exitCode"] == 0
    version_a = Path(results["versionA"]["version"])
    assert (version_a / "fisher" / "fisher.safetensors").is_file(), "version A publishes its Fisher"

    (planted,) = results["variants"]
    assert planted["variant"] == measure_continual.PLANTED and planted["keptA"] is False
    assert planted["manifest"]["spec"]["continual"] == {"from": f"file://{version_a}", "replayFraction": 0}
    assert planted["continual"]["from"]["uri"] == f"file://{version_a}"
    a, b = planted["tasks"]["A"], planted["tasks"]["B"]
    assert a["examples"] > 0 and b["examples"] > 0
    assert a["nllAfter"] > 1.05 * a["nllBefore"], a  # A's answers lost their likelihood too
    # Every held-out row of both tasks is kept with both models' answers.
    assert len(planted["perExample"]["test"]) == a["examples"] + b["examples"]
    assert all(p["base"] is not None and p["tuned"] is not None for p in planted["perExample"]["test"])
    assert "FORGETS A" in first.stderr

    page = out.with_suffix(".md").read_text()
    assert page == measure_continual.render_markdown(results)
    assert f"{a['nllBefore']:.3f} → {a['nllAfter']:.3f}" in page and "| **no** |" in page

    again = run_smoke("measure_continual", out, scratch, tiny_model_dir)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "recorded or not asked for, skipped" in again.stderr and "running" not in again.stderr
    assert json.loads(out.read_text())["variants"] == results["variants"]


def test_the_recorded_measurement_is_what_the_docs_show() -> None:
    """The page is rendered from the JSON, and docs/methods.md quotes its figures: A and B before and
    after, and whether A was kept, for each variant it lists."""
    recorded = ROOT / "docs" / "measurements" / "continual.json"
    results = json.loads(recorded.read_text())
    assert recorded.with_suffix(".md").read_text() == measure_continual.render_markdown(results)
    methods = (ROOT / "docs" / "methods.md").read_text()
    runs = {run["variant"]: run for run in results["variants"]}
    assert runs[measure_continual.DEFAULT_VARIANT]["keptA"], "the default recipe keeps task A (issue 16's bar)"
    labels = {
        "plain": "plain (`replayFraction: 0`)",
        "replay": "replay (the default, 0.5)",
        "ewc": "ewc (`replayFraction: 0`, `ewc: {}`)",
        "replay + ewc": "replay + ewc (0.5, `ewc: {}`)",
        "osf": "osf (`adapter: osf`, `replayFraction: 0`)",
    }
    sweep = "ewc, lambda "
    for variant, run in runs.items():  # every recorded variant has its row in the docs
        label = labels.get(variant) or f"ewc, `lambda: {variant.removeprefix(sweep)}` (`replayFraction: 0`)"
        assert variant in labels or variant.startswith(sweep), f"{variant}: no label for the docs' table"
        a, b = run["tasks"]["A"], run["tasks"]["B"]
        cells = [
            label,
            f"{a['before']:.3f} → {a['after']:.3f}",
            f"{b['before']:.3f} → {b['after']:.3f}",
            "yes" if run["keptA"] else "no",
        ]
        assert "| " + " | ".join(cells) + " |" in methods, cells
