"""Kill the trainer in the middle of a gradient-accumulation cycle; the restart resumes from the
last checkpoint in S3 and ends where an uninterrupted run ends."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import IO

import pytest
import torch
from safetensors.torch import load_file

from kubetune.api.v1alpha1 import S3Spec
from kubetune_trainer.storage import ObjectStore
from tests.trainer.jobs import write_dataset, write_job, write_pairs

# Two epochs of 4 steps: the kill lands in the second (after step 4's checkpoint), with steps left after it.
HYPER = {"epochs": 2, "gradientAccumulationSteps": 4, "batchSize": 2}


def trainer(job: Path, workdir: Path, log: IO[str] | None = None, **env: str) -> subprocess.Popen[str]:
    """The trainer's own command; its stderr piped to the test, or into ``log`` for a run nobody reads
    while it runs (a full pipe would stall it)."""
    return subprocess.Popen(
        [sys.executable, "-m", "kubetune_trainer.cli", "train", "--job", str(job), "--workdir", str(workdir)],
        stdout=subprocess.DEVNULL,
        stderr=log or subprocess.PIPE,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1", "KUBETUNE_TRACE_MICROSTEPS": "1", **env},
        start_new_session=True,
    )


def adapter(workdir: Path) -> dict[str, torch.Tensor]:
    trained = workdir / "training" / "trained"
    weights = trained / "adapter_model.safetensors"
    return load_file(str(weights if weights.exists() else trained / "bottleneck_model.safetensors"))


# DPO too: its reference log-likelihoods, computed before training, must come out the same on the restart;
# and AdaLoRA, whose checkpoints must hold full-size masked weights for the restart to load (peft would
# save them pruned and fail to load them); its pruning state file is proven in test_adalora.py.
@pytest.mark.parametrize("objective", ["sft", "dpo", "adalora", "bottleneck"])
def test_sigkill_mid_accumulation_then_resume_matches_uninterrupted(
    objective: str, tmp_path: Path, tiny_model_dir: Path, s3_spec: S3Spec, s3_bucket: str
) -> None:
    if objective == "dpo":
        # Half the rows (each pair is two): 39 pairs leave 32 to train after the content-hashed
        # validation and test splits, so still 4 whole steps an epoch and 8 in all, killed after 4.
        data, method = write_pairs(tmp_path / "data.jsonl", 39), {"method": {"objective": "dpo"}}
    elif objective == "bottleneck":  # checkpoints hold the adapters alone, not a PreTrainedModel's weights
        data = write_dataset(tmp_path / "data.jsonl", 80)
        method = {"method": {"adapter": "bottleneck", "lora": {}, "bottleneck": {"size": 8}}}
    elif objective == "adalora":
        adalora = {"initialRank": 6, "targetRank": 2, "dropout": 0.0}
        data = write_dataset(tmp_path / "data.jsonl", 80)
        method = {"method": {"adapter": "adalora", "lora": {}, "adalora": adalora}}
    else:
        data, method = write_dataset(tmp_path / "data.jsonl", 80), {}
    reference_job = write_job(
        tmp_path / "ref.yaml",
        model_dir=tiny_model_dir,
        data=data,
        output=f"s3://{s3_bucket}/ref/",
        s3_endpoint=s3_spec.endpoint,
        hyperparameters=HYPER,
        **method,
    )
    # The uninterrupted reference runs beside the run that gets killed (one thread each): they share
    # nothing but the CPU, and the test takes two runs' time instead of three.
    reference_log = (tmp_path / "ref.log").open("w")
    reference = trainer(reference_job, tmp_path / "ref-work", log=reference_log)

    job = write_job(
        tmp_path / "job.yaml",
        model_dir=tiny_model_dir,
        data=data,
        output=f"s3://{s3_bucket}/run/",
        s3_endpoint=s3_spec.endpoint,
        hyperparameters=HYPER,
        **method,
    )
    first = trainer(job, tmp_path / "work-1")
    assert first.stderr is not None
    killed_at = None
    for line in first.stderr:
        # Step 4 was checkpointed (every 2 steps); kill after 2 of the 4 micro-batches of step 5.
        if line.startswith("kubetune-microstep step=4 substep=2"):
            os.killpg(first.pid, signal.SIGKILL)
            killed_at = line.strip()
            break
    first.wait(timeout=60)
    reference.wait(timeout=300)
    reference_log.close()
    assert killed_at is not None and first.returncode == -signal.SIGKILL
    assert reference.returncode == 0, (tmp_path / "ref.log").read_text()[-3000:]
    store = ObjectStore(s3_spec)
    assert store.exists(f"s3://{s3_bucket}/run/checkpoints/tiny-job/latest.json")

    second = trainer(job, tmp_path / "work-2")
    _, err = second.communicate(timeout=300)
    assert second.returncode == 0, err[-3000:]
    assert "resuming from" in err and "checkpoint-4" in err
    assert "kubetune-microstep step=1 substep=end" not in err, "the restart did not start over"

    resumed, expected = adapter(tmp_path / "work-2"), adapter(tmp_path / "ref-work")
    assert resumed.keys() == expected.keys()
    for name in expected:
        torch.testing.assert_close(resumed[name], expected[name], atol=1e-5, rtol=1e-4)


def test_sigterm_checkpoints_and_exits_with_the_preemption_code(
    tmp_path: Path, tiny_model_dir: Path, s3_spec: S3Spec, s3_bucket: str
) -> None:
    data = write_dataset(tmp_path / "data.jsonl", 80)
    job = write_job(
        tmp_path / "job.yaml",
        model_dir=tiny_model_dir,
        data=data,
        output=f"s3://{s3_bucket}/run/",
        s3_endpoint=s3_spec.endpoint,
        hyperparameters=HYPER,
        checkpoint={"everySteps": 100},
    )
    process = trainer(job, tmp_path / "work")
    assert process.stderr is not None
    for line in process.stderr:
        if line.startswith("kubetune-microstep step=3 substep=end"):
            os.killpg(process.pid, signal.SIGTERM)
            break
    _, rest = process.communicate(timeout=120)
    assert process.returncode == 143, rest[-2000:]
    pointer = ObjectStore(s3_spec).read_bytes(f"s3://{s3_bucket}/run/checkpoints/tiny-job/latest.json")
    assert b'"step": 4' in pointer or b'"step": 3' in pointer


def test_a_new_run_under_a_used_job_name_never_resumes_the_old_runs_checkpoints(
    tmp_path: Path, tiny_model_dir: Path
) -> None:
    """The checkpoint prefix is keyed by the job's name; a second run of that name with other data (a
    FineTuneJob applied again, a second local run) trains from the base model, not from the first
    run's last checkpoint, and its checkpoints then belong to it."""
    from kubetune_trainer.cli import main as kubetune

    output = f"file://{tmp_path}/out/"
    first = write_job(
        tmp_path / "first.yaml", model_dir=tiny_model_dir, data=write_dataset(tmp_path / "a.jsonl", 40), output=output
    )
    assert kubetune(["run", str(first), "--workdir", str(tmp_path / "w1"), "--output-dir", str(tmp_path / "runs")]) == 0
    other = write_dataset(tmp_path / "b.jsonl", 48)
    other.write_text(other.read_text().replace("Classify ticket", "Sort request"))
    second = write_job(tmp_path / "second.yaml", model_dir=tiny_model_dir, data=other, output=output)
    assert (
        kubetune(["run", str(second), "--workdir", str(tmp_path / "w2"), "--output-dir", str(tmp_path / "runs")]) == 0
    )
    versions = sorted((tmp_path / "runs" / "tiny-job").glob("v*"), key=lambda v: v.stat().st_mtime)
    import json

    trained = [json.loads((v / "manifest.json").read_text())["training"] for v in versions]
    assert [t["resumedFromStep"] for t in trained] == [None, None], trained
    assert trained[1]["globalStep"] > 0
