"""Per-process peak memory of full fine-tuning on two CPU "nodes", unsharded (DDP) and fully sharded
(FSDP), beside the pre-flight's estimates; then the pre-flight of the same manifest with
``resources.memory`` between the two measured figures and ``sharding: auto``, which must choose FSDP.
Beside them the same job in one process on every core: the baseline of the training throughput each
two-node run is compared with (the scaling table).

    .venv/bin/python scripts/measure_sharding.py            # SmolLM2-135M-Instruct, about 7 minutes
    .venv/bin/python scripts/measure_sharding.py --smoke --base-model /path/to/tiny/model

Each run is the training command the operator builds for ``resources.nodes: 2`` (two torchrun agents,
c10d rendezvous, the pods' own environment), both agents on this machine over loopback, one thread
each; the baseline is its command for one node (``kubetune train``, no torchrun) with every core's
thread. A run is stopped once every rank has logged its training peak (``ru_maxrss``, the process's
resident high-water mark up to the end of training) and its trained tokens and seconds: evaluation and
export are not what is measured. A group's throughput is its ranks' trained tokens (padding aside) over
the slowest rank's training seconds.
Writes ``docs/measurements/sharding.json`` and renders ``docs/measurements/sharding.md``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml
from measurement import ROOT, code_digest, cpu_model, git

from kubetune.api.contract import JOB_FILE, RENDEZVOUS_PORT
from kubetune.api.manifest import parse_spec
from kubetune.operator.children import group_env, rendezvous_service_name, training_command, training_job_name

EXAMPLE = ROOT / "examples" / "support-tickets" / "tickets.jsonl"
OUT = ROOT / "docs" / "measurements" / "sharding.json"
NAME = "sharding"
# Full fine-tuning, no replay (the measured state is the model's, not the data's), one epoch of the
# first rows: enough optimizer steps for Adam's state to exist and every rank's peak to settle.
ROWS, SMOKE_ROWS = 64, 24
PEAK_LINE = re.compile(
    r"parameters held by process (\d+): (\d+) of (\d+) elements; peak memory (\d+) bytes; "
    r"(\d+) tokens trained in ([\d.]+) s"
)
PLAN_LINE = re.compile(r"pre-flight (?:passed|failed): (.*)")
GIB = 2**30


def write_job(folder: Path, *, base_model: str | None, rows: int, sharding: str, memory: str, nodes: int = 2) -> Path:
    data = folder / "rows.jsonl"
    data.write_text("".join(EXAMPLE.read_text().splitlines(keepends=True)[:rows]))
    spec: dict[str, Any] = {
        "dataset": {"sources": [{"uri": f"file://{data}"}], "replay": {"enabled": False}},
        "method": {"type": "full"},
        "hyperparameters": {"epochs": 1, "batchSize": 4, "gradientAccumulationSteps": 1},
        "evaluation": {"forgetting": False},
        "output": {"uri": f"file://{folder}/out/"},
        "resources": {"nodes": nodes, "gpus": 0, "sharding": sharding, "memory": memory},
        "storage": {"shmSize": "64Mi"},  # counted in resources.memory, which the auto run sets low
    }
    if base_model:
        spec["baseModel"] = {"uri": f"file://{base_model}"}
    job = folder / "job.yaml"
    job.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "kubetune.dev/v1alpha1",
                "kind": "FineTuneJob",
                "metadata": {"name": NAME, "namespace": "default"},
                "spec": spec,
            }
        )
    )
    return job


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def pod_command(job: Path) -> tuple[list[str], dict[str, str]]:
    """The operator's command and group environment for the job's pods, run here: pod 0's DNS name is
    loopback and the job file is at its local path."""
    spec = parse_spec(yaml.safe_load(job.read_text())["spec"])
    name = training_job_name(NAME, spec.resources.nodes)
    command = training_command(spec, job_name=name, service=rendezvous_service_name(NAME), run_id="measure")
    pod0, port = f"{name}-0.{rendezvous_service_name(NAME)}:{RENDEZVOUS_PORT}", free_port()
    local = [str(Path(sys.executable).parent / command[0]), *command[1:]]  # torchrun, or kubetune on one node
    local = [arg.replace(pod0, f"127.0.0.1:{port}") for arg in local]
    env = {variable["name"]: variable["value"] for variable in group_env(spec)}
    return [str(job) if arg == JOB_FILE else arg for arg in local], env


def stop(pods: list[subprocess.Popen[bytes]]) -> None:
    """Each pod's training processes, then its agent: torchrun starts its workers in sessions of their
    own, which outlive a signal to the agent's."""
    for pod in pods:
        children = Path(f"/proc/{pod.pid}/task/{pod.pid}/children")
        for child in children.read_text().split() if children.exists() else []:
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(child), signal.SIGKILL)
        if pod.poll() is None:
            os.killpg(pod.pid, signal.SIGKILL)
        pod.wait()


def train_until_peaks(folder: Path, job: Path, timeout: float, *, nodes: int = 2) -> dict[str, Any]:
    """Every pod until each rank has logged its training peak; then they are stopped. The pods share
    this machine's cores, divided between them."""
    command, env = pod_command(job)
    logs = [folder / f"pod-{index}.log" for index in range(nodes)]
    threads = max(1, available_cores() // nodes)
    pods = [
        subprocess.Popen(
            [*command, "--workdir", str(folder / f"node-{index}")],
            stdout=subprocess.DEVNULL,
            stderr=log.open("w"),
            env={**os.environ, **env, "OMP_NUM_THREADS": str(threads), "JOB_COMPLETION_INDEX": str(index)},
            start_new_session=True,
        )
        for index, log in enumerate(logs)
    ]
    started, peaks = time.monotonic(), dict[int, tuple[str, ...]]()
    try:
        while len(peaks) < nodes:
            text = "".join(log.read_text() for log in logs)
            peaks = {int(m[0]): m for m in PEAK_LINE.findall(text)}
            failed = [pod for pod in pods if pod.poll() not in (None, 0)]
            if failed or time.monotonic() - started > timeout:
                raise SystemExit(f"{job}: the run failed or timed out before both peaks: {text[-3000:]}")
            time.sleep(0.5)
    finally:
        stop(pods)
    plan = PLAN_LINE.search(logs[0].read_text())
    ranks = [
        {
            "rank": int(rank),
            "heldElements": int(held),
            "totalElements": int(total),
            "peakBytes": int(peak),
            "trainedTokens": int(tokens),
            "trainSeconds": float(seconds),
        }
        for rank, held, total, peak, tokens, seconds in (peaks[r] for r in sorted(peaks))
    ]
    return {
        "seconds": round(time.monotonic() - started, 1),
        "threadsPerProcess": threads,
        "ranks": ranks,
        "tokensPerSecond": sum(r["trainedTokens"] for r in ranks) / max(r["trainSeconds"] for r in ranks),
        "preflight": plan.group(1) if plan else None,
    }


def available_cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def preflight(folder: Path, job: Path) -> dict[str, Any]:
    """The pre-flight pod's own command (``kubetune_trainer.cli preflight``) on the job: its verdict and plan."""
    result = subprocess.run(
        [sys.executable, "-m", "kubetune_trainer.cli", "preflight", "--job", str(job), "--workdir", str(folder / "pf")],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    if result.returncode != 0 and not (folder / "pf" / "artifacts" / "reports" / "preflight.json").exists():
        raise SystemExit(f"{job}: the pre-flight did not run: {result.stderr[-3000:]}")
    resolved = json.loads((folder / "pf" / "artifacts" / "reports" / "resolved.json").read_text())
    report = json.loads((folder / "pf" / "artifacts" / "reports" / "preflight.json").read_text())
    return {"exitCode": result.returncode, "sharding": resolved["hyperparameters"]["sharding"], "report": report}


def peak_gib(run: dict[str, Any]) -> float:
    return max(rank["peakBytes"] for rank in run["ranks"]) / GIB


def render_markdown(results: dict[str, Any]) -> str:
    lines = [
        f"Measured by `{results['command']}` at commit `{results['commit'][:12]}` on {results['cpu']} "
        f"({results['model']}, full fine-tuning, two processes over loopback, gloo, one thread each).",
        "",
        "| sharding | rank | parameter elements held | peak resident memory | pre-flight estimate per process |",
        "|---|---|---|---|---|",
    ]
    for run in results["runs"]:
        for rank in run["ranks"]:
            share = rank["heldElements"] / rank["totalElements"]
            lines.append(
                f"| {run['sharding']} | {rank['rank']} | {rank['heldElements']:,} of {rank['totalElements']:,} "
                f"({share:.0%}) | {rank['peakBytes'] / GIB:.2f} GiB | {run['estimateGiB']:.2f} GiB |"
            )
    chosen = results["auto"]
    lines += [
        "",
        f"With `resources.memory: {chosen['memory']}` (between the two measured peaks) and `sharding: auto`, the "
        f"pre-flight chose **{chosen['sharding']}**: {chosen['report']['message']}",
        "",
    ]
    single = results["single"]
    cores = single["threadsPerProcess"]
    lines += [
        f"Training speed on the same {cores} cores, one epoch of the same rows (training seconds of the slowest "
        "rank; trained tokens are the answer tokens the loss is computed on, which the two-node runs' "
        "sampler pads to equal shares):",
        "",
        "| run | processes x threads | peak resident memory (highest rank) | training seconds | trained tokens/s "
        "| speed against one process |",
        "|---|---|---|---|---|---|",
    ]
    for label, run in [("one process (`nodes: 1`)", single)] + [
        (f"two nodes, sharding {run['sharding']}", run) for run in results["runs"]
    ]:
        seconds = max(rank["trainSeconds"] for rank in run["ranks"])
        baseline = max(rank["trainSeconds"] for rank in single["ranks"])
        lines.append(
            f"| {label} | {len(run['ranks'])} x {run['threadsPerProcess']} | {peak_gib(run):.2f} GiB | "
            f"{seconds:.1f} | {run['tokensPerSecond']:.2f} | {baseline / seconds:.2f} |"
        )
    lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--base-model", help="a model folder instead of the built-in SmolLM2-135M-Instruct")
    parser.add_argument("--smoke", action="store_true", help=f"{SMOKE_ROWS} rows (with a tiny --base-model)")
    parser.add_argument("--scratch", type=Path, default=Path("/tmp/kubetune-measure-sharding"))
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--timeout", type=float, default=1800)
    args = parser.parse_args(argv)
    rows = SMOKE_ROWS if args.smoke else ROWS
    runs = []
    for sharding in ("none", "fsdp"):
        folder = args.scratch / sharding
        folder.mkdir(parents=True, exist_ok=True)
        job = write_job(folder, base_model=args.base_model, rows=rows, sharding=sharding, memory="64Gi")
        run = {"sharding": sharding, **train_until_peaks(folder, job, args.timeout)}
        estimate = re.search(r"~([\d.]+) GiB", run["preflight"] or "")
        run["estimateGiB"] = float(estimate.group(1)) if estimate else None
        runs.append(run)
        print(f"{sharding}: peaks {[r['peakBytes'] / GIB for r in run['ranks']]} GiB", file=sys.stderr)
    folder = args.scratch / "single"
    folder.mkdir(parents=True, exist_ok=True)
    single_job = write_job(folder, base_model=args.base_model, rows=rows, sharding="none", memory="64Gi", nodes=1)
    single = train_until_peaks(folder, single_job, args.timeout, nodes=1)
    between = (peak_gib(runs[0]) + peak_gib(runs[1])) / 2
    memory = f"{round(between * 1024)}Mi"
    folder = args.scratch / "auto"
    folder.mkdir(parents=True, exist_ok=True)
    auto = {
        "memory": memory,
        **preflight(folder, write_job(folder, base_model=args.base_model, rows=rows, sharding="auto", memory=memory)),
    }
    results = {
        "command": " ".join(["scripts/measure_sharding.py", *(argv if argv is not None else sys.argv[1:])]),
        "commit": git("rev-parse", "HEAD"),
        "codeSha256": code_digest(["trainer_image", "api", "operator", "scripts/measure_sharding.py"]),
        "cpu": cpu_model(),
        "model": args.base_model or "SmolLM2-135M-Instruct",
        "rows": rows,
        "runs": runs,
        "single": single,
        "auto": auto,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    args.out.with_suffix(".md").write_text(render_markdown(results))
    print(render_markdown(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
