"""The ``kubetune`` command line as users and pods call it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.trainer.jobs import write_dataset, write_job

KUBETUNE = str(Path(sys.executable).parent / "kubetune")


def test_preflight_refuses_a_job_that_cannot_fit_the_declared_gpu(tmp_path: Path, tiny_model_dir: Path) -> None:
    data = write_dataset(tmp_path / "data.jsonl", 32)
    job = write_job(
        tmp_path / "job.yaml",
        model_dir=tiny_model_dir,
        data=data,
        output=f"file://{tmp_path}/out/",
        method={"type": "full"},
        resources={"gpus": 1, "gpuMemory": "64Mi"},
    )
    result = subprocess.run(
        [KUBETUNE, "preflight", "--job", str(job), "--workdir", str(tmp_path / "work")],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "OMP_NUM_THREADS": "1"},  # gpuMemory reaches the pre-flight in the job file only
    )
    assert result.returncode == 2, result.stderr[-2000:]
    assert "pre-flight failed" in result.stderr and "exceeds the 0.1 GiB" in result.stderr
    assert not (tmp_path / "out").exists(), "nothing is published by a pre-flight"


def test_validate_names_the_field(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "apiVersion: kubetune.dev/v1alpha1\nkind: FineTuneJob\nmetadata: {name: x}\nspec:\n  dataset: {sources: [{uri: 'ftp://x'}]}\n  output: {uri: 's3://models/x/'}\n"
    )
    result = subprocess.run([KUBETUNE, "validate", str(bad)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert "spec.dataset.sources[0].uri" in result.stderr
