"""Evaluation shared by the ranks of a multi-process job (``evaluation/sharing.py``): kubetune's own
evaluation run by one process and by two under torchrun (gloo), through ``sharded_evaluation_probe.py``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

PROBE = Path(__file__).with_name("sharded_evaluation_probe.py")


def evaluate_in(processes: int, model_dir: Path, output: Path, mode: str) -> list[dict[str, Any]]:
    """Each rank's evaluation result, by rank."""
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={processes}"]
    # One thread each: the same kernels in both runs, so that equal batches give equal floats.
    environment = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [*command, str(PROBE), str(model_dir), str(output), mode],
        capture_output=True,
        text=True,
        timeout=300,
        env=environment,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return [json.loads((output / f"rank-{rank}.json").read_text()) for rank in range(processes)]


def test_two_processes_share_the_batches_and_score_exactly_what_one_process_scores(
    tmp_path: Path, tiny_model_dir: Path
) -> None:
    (alone,) = evaluate_in(1, tiny_model_dir, tmp_path / "one", "miss")
    first, second = evaluate_in(2, tiny_model_dir, tmp_path / "two", "miss")
    assert alone["batches"] is None, "one process: nothing shared"
    (mine, everything), (theirs, everything_too) = first["batches"], second["batches"]
    assert everything == everything_too >= 6 and mine + theirs == everything and min(mine, theirs) >= 2
    # Whole batches are shared, so every example is scored in the batch it has in one process: every
    # answer, likelihood, metric and interval is the one process's, and every rank ends with all of it.
    for result in (first, second):
        shared = {key: value for key, value in result.items() if key != "batches"}
        assert shared == {key: value for key, value in alone.items() if key != "batches"}
    assert len(alone["predictions"]) == 80 and len(alone["general"]) == 70
    assert len({p["tuned"] for p in alone["predictions"]}) > 1, "the answers differ from row to row"


def test_rank_0_alone_reads_the_caches_and_the_others_follow_it(tmp_path: Path, tiny_model_dir: Path) -> None:
    """A cache hit on one node and a miss on another would hang the group: the probe's caches fail a
    rank other than 0 that consults them, and hold planted values on rank 0, which every rank ends with."""
    first, second = evaluate_in(2, tiny_model_dir, tmp_path / "hit", "hit")
    for result in (first, second):
        assert {p["base"] for p in result["predictions"]} == {"cached"}
        assert [p["baseNll"] for p in result["predictions"]] == [1.0 + i for i in range(80)]
        assert result["likelihood"]["base"] == first["likelihood"]["base"]
    assert first["predictions"] == second["predictions"] and first["general"] == second["general"]
