"""``kubetune run``'s pre-flight times real steps of the plan and scales them: the estimate says so,
counts the steps the run then takes, and reports the memory the steps took."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from kubetune.api.contract import EXIT_OK
from kubetune_trainer import steps
from kubetune_trainer.cli import main as kubetune
from tests.trainer.jobs import write_dataset, write_job


# A private run trains with its own DP-SGD loop, whose steps the probe must time (and stop after) too.
@pytest.mark.parametrize(
    "options",
    [
        {"hyperparameters": {"epochs": 2, "packing": True}},
        {"hyperparameters": {"epochs": 2}, "privacy": {"targetEpsilon": 8}},
    ],
    ids=["trainer", "dp-sgd"],
)
def test_the_estimate_of_a_local_run_comes_from_real_steps_and_counts_the_steps_it_takes(
    options: dict[str, Any],
    tmp_path: Path,
    tiny_model_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
    capfd: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setattr(steps, "TIME_REAL_STEPS_FROM_MINUTES", 0.0)  # the tiny run is short: time it anyway
    monkeypatch.setenv("KUBETUNE_TRACE_MICROSTEPS", "1")  # the probe's process inherits it
    job = write_job(
        tmp_path / "job.yaml",
        model_dir=tiny_model_dir,
        data=write_dataset(tmp_path / "data.jsonl", 96),
        output=f"file://{tmp_path}/out/",
        **options,
    )
    assert kubetune(["run", str(job), "--workdir", str(tmp_path / "work")]) == EXIT_OK
    preflight = json.loads((tmp_path / "work" / "artifacts" / "reports" / "preflight.json").read_text())
    found = re.search(r"from real steps on this machine: (\d+) of ([0-9.]+) s", preflight["message"])
    assert found, preflight["message"]
    (version,) = (tmp_path / "out").glob("v*")
    training = json.loads((version / "manifest.json").read_text())["training"]
    assert int(found[1]) == training["globalStep"] > 4, "the steps the estimate counts are the steps the run took"
    # The steps ran in a process of their own: torch, the model and the rows are in its peak.
    assert 0.2 < preflight["estimatedMemoryGib"] < training["peakMemoryBytes"] / 2**30 * 2
    # The probe took its three steps and stopped; the run took them all.
    ended = re.findall(r"kubetune-microstep step=(\d+) substep=end", capfd.readouterr().err)
    assert ended.count("3") == 2 and ended.count("4") == 1, ended


def test_without_real_steps_a_pre_flight_pod_estimates_from_the_formulas(tmp_path: Path, tiny_model_dir: Path) -> None:
    from tests.trainer.test_cli import preflight

    result = preflight(tmp_path, tiny_model_dir)
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads((tmp_path / "work" / "artifacts" / "reports" / "preflight.json").read_text())
    assert "from real steps" not in report["message"] and report["estimatedMinutes"] is not None


def test_the_probe_times_smaller_private_steps_and_scales_them_to_the_planned_batch() -> None:
    from kubetune.api.v1alpha1 import ResolvedAdapterTraining, ResolvedPrivacy
    from kubetune_trainer.plan import resolve_training
    from kubetune_trainer.training.probe import PROBE_PRIVATE_MICRO_BATCHES, smaller_private_steps
    from tests.builders import spec
    from tests.trainer.plans import CPU, NO_REPLAY, SMOL

    def plan(rows: int, **extra: Any) -> ResolvedAdapterTraining:
        resolved = resolve_training(
            spec(resources={"gpus": 0}, **extra),
            CPU,
            train_examples=rows,
            token_lengths=[40] * rows,
            shape=SMOL,
            replay=NO_REPLAY,
        )
        assert isinstance(resolved, ResolvedAdapterTraining)
        return resolved

    private = plan(561, privacy={"targetEpsilon": 4})  # 72 rows a step, about 18 micro-batches of 4
    assert isinstance(private.privacy, ResolvedPrivacy)
    probed, scale = smaller_private_steps(private, 561)
    assert isinstance(probed, ResolvedAdapterTraining) and isinstance(probed.privacy, ResolvedPrivacy)
    assert probed.privacy.sample_rate * 561 == pytest.approx(PROBE_PRIVATE_MICRO_BATCHES * 4)
    assert probed.privacy.sample_rate * scale == pytest.approx(private.privacy.sample_rate)
    assert probed.privacy.steps == private.privacy.steps and probed.hyperparameters == private.hyperparameters
    # A step no larger than the probe's is timed as planned; a run without privacy is untouched.
    small = plan(40, privacy={"targetEpsilon": 4})
    assert smaller_private_steps(small, 40) == (small, 1.0)
    plain = plan(561)
    assert smaller_private_steps(plain, 561) == (plain, 1.0)
