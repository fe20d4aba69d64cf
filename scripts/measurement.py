"""What every measurement script records about where and on what code it ran.

Shared by ``scripts/measure_*.py`` and ``bench/*.py`` (the bench scripts put this folder on
``sys.path``): the commit, a digest of the files a result depends on, and the machine's CPU.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import platform
import signal
import subprocess
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def git(*args: str) -> str:
    return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, check=True).stdout.strip()


def code_digest(paths: Sequence[str]) -> str:
    """sha256 of every file under ``paths`` (tracked or not, ignored ones aside): the code a
    recorded result was measured on, committed or not."""
    files = git("ls-files", "--cached", "--others", "--exclude-standard", "--", *paths).splitlines()
    digest = hashlib.sha256()
    for name in sorted(set(files)):
        path = ROOT / name
        if path.is_file():
            digest.update(name.encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()


def run_within(
    command: Sequence[str], seconds: float, env: Mapping[str, str] | None = None, *, grace_seconds: float | None = None
) -> subprocess.CompletedProcess[str]:
    """``command`` with its output captured, in a process group of its own, ended within ``seconds``: as
    a pod is, the group gets SIGTERM ``grace_seconds`` before the end (default a tenth of the time, at
    most 5 minutes), on which ``kubetune run`` checkpoints at the next step and stops, so the next
    invocation resumes from there. A run with fewer steps than ``checkpoint.everySteps`` (a private run's
    24, say) has no other checkpoint: killed outright at its hour, it started over at every invocation.
    What is left at ``seconds`` is killed, and the result has exit code 124 (``timeout``'s), with what it
    had written to stderr. subprocess.run's timeout kills the direct child only, and a child it spawned
    would outlive it and compete with the next invocation (which resumes the same run).

    Whenever the run ends, what it spawned and left behind is killed with it. Its output goes to files,
    not pipes: a helper it leaves behind holding a pipe (multiprocessing's resource tracker, which ignores
    SIGTERM, after a run stopped by SIGTERM from outside) kept the reader waiting for the whole hour."""
    grace = min(300.0, seconds / 10) if grace_seconds is None else grace_seconds
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        process = subprocess.Popen(list(command), stdout=out, stderr=err, text=True, env=env, start_new_session=True)
        timed_out = False
        try:
            process.wait(timeout=seconds - grace)
        except subprocess.TimeoutExpired:
            timed_out = True
            _signal_group(process.pid, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=grace)
        _signal_group(process.pid, signal.SIGKILL)  # whatever the run left behind, or the run past its grace
        process.wait()
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read(), err.read()
    if timed_out:
        return subprocess.CompletedProcess(list(command), 124, "", f"timed out after {seconds:g} s\n{stderr}")
    return subprocess.CompletedProcess(list(command), process.returncode, stdout, stderr)


def _signal_group(group: int, signum: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):  # the group has ended
        os.killpg(group, signum)


def cpu_model() -> str:
    cpuinfo = Path("/proc/cpuinfo")
    lines = cpuinfo.read_text().splitlines() if cpuinfo.exists() else []
    found = (line.split(":", 1)[1].strip() for line in lines if line.startswith("model name"))
    return next(found, platform.processor() or "unknown")
