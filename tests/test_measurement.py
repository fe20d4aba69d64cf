"""The measurement scripts' shared helpers (scripts/measurement.py)."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))

from measurement import run_within  # noqa: E402


def assert_ends_soon(pid: int, what: str, seconds: float = 5) -> None:
    deadline = time.time() + seconds
    while time.time() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.05)
    raise AssertionError(f"{what} ({pid}) outlived the run")


def test_a_run_past_its_time_is_killed_with_every_process_it_spawned(tmp_path: Path) -> None:
    pid_file = tmp_path / "grandchild.pid"
    # the grandchild holds no pipe of the run: only killing its group ends it
    script = f"sleep 60 >/dev/null 2>&1 & echo $! > {pid_file}; echo started >&2; wait"
    result = run_within(["sh", "-c", script], 1.5)
    assert result.returncode == 124 and "timed out after 1.5 s" in result.stderr and "started" in result.stderr
    assert_ends_soon(int(pid_file.read_text()), "the process the run spawned")


def test_a_run_within_its_time_returns_its_output_and_code() -> None:
    result = run_within(["sh", "-c", "echo out; echo err >&2; exit 3"], 30)
    assert (result.returncode, result.stdout, result.stderr) == (3, "out\n", "err\n")


def test_a_run_past_its_time_gets_sigterm_first_and_its_grace_to_stop(tmp_path: Path) -> None:
    """As a pod: SIGTERM, on which kubetune checkpoints, then the kill at the end of the time."""
    saved = tmp_path / "saved"
    script = f"trap 'echo checkpoint > {saved}; exit 143' TERM; echo started >&2; while :; do sleep 0.05; done"
    result = run_within(["sh", "-c", script], 3.0, grace_seconds=1.5)
    assert result.returncode == 124 and "started" in result.stderr, result
    assert saved.read_text() == "checkpoint\n", "the run was killed without its SIGTERM"


def test_a_run_that_ends_returns_at_once_and_what_it_left_behind_is_killed(tmp_path: Path) -> None:
    """A helper left behind holding the run's output and ignoring SIGTERM (multiprocessing's resource
    tracker after ``kubetune run`` was stopped) must neither hold the result back nor outlive the run."""
    pid_file = tmp_path / "helper.pid"
    script = f"(trap '' TERM; sleep 60; echo late) & echo $! > {pid_file}; echo done; exit 5"
    started = time.monotonic()
    result = run_within(["sh", "-c", script], 30)
    assert (result.returncode, result.stdout) == (5, "done\n") and time.monotonic() - started < 10, result
    assert_ends_soon(int(pid_file.read_text()), "the helper the run left behind")
