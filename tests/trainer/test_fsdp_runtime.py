"""Fully sharded data parallelism on the pinned torch and transformers, on CPU with gloo (issue 17's
first step: what the multi-node path can build on). Two processes under torchrun with c10d
rendezvous, as the Indexed Job's pods will run, against one process on the same global batch."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

PROBE = Path(__file__).with_name("fsdp_probe.py")


def torchrun(processes: int, *args: str) -> dict[str, object]:
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={processes}"]
    result = subprocess.run([*command, str(PROBE), *args], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    (line,) = [line for line in result.stdout.splitlines() if line.startswith('{"losses"')]
    reported: dict[str, object] = json.loads(line)
    assert reported["world"] == processes
    return reported


def test_two_sharded_processes_train_as_one_and_their_checkpoint_resumes_at_any_world_size(tmp_path: Path) -> None:
    checkpoint = str(tmp_path / "checkpoint")
    sharded = torchrun(2, "loop", "fsdp", checkpoint)
    single = torchrun(1, "loop", "single", checkpoint)
    assert sharded["losses"] == pytest.approx(single["losses"], rel=1e-5)
    assert sharded["checksum"] == pytest.approx(single["checksum"], rel=1e-6)
    assert (tmp_path / "checkpoint" / ".metadata").is_file(), "a distributed checkpoint: shards plus metadata"
    for processes in (1, 2):  # the checkpoint two ranks wrote, loaded by one and by two
        resumed = torchrun(processes, "loop", "resume", checkpoint)
        assert resumed["losses"] == pytest.approx(sharded["losses"][4:], rel=1e-5)  # type: ignore[index]
        assert resumed["checksum"] == pytest.approx(sharded["checksum"], rel=1e-6)


def test_the_trainer_shards_on_cpu_only_as_kubetune_sets_it_up(tmp_path: Path) -> None:
    """accelerate turns the Trainer's FSDP option into DDP on CPU: every rank holds every weight. With
    kubetune's switch (``shard_on_cpu``) rank 0 holds half, and the run learns what one process learns.
    Should accelerate start sharding on CPU itself, the first assertion fails and the switch can go."""
    unsharded = torchrun(2, "trainer", "accelerate", str(tmp_path / "accelerate"))
    assert unsharded["share"] == 1.0
    sharded = torchrun(2, "trainer", "fsdp", str(tmp_path / "fsdp"))
    assert sharded["share"] == pytest.approx(0.5, abs=0.02)
    single = torchrun(1, "trainer", "single", str(tmp_path / "single"))
    assert len(sharded["losses"]) == 8  # type: ignore[arg-type]
    assert sharded["losses"] == pytest.approx(single["losses"], rel=1e-5)
    assert sharded["checksum"] == pytest.approx(single["checksum"], rel=1e-6)
