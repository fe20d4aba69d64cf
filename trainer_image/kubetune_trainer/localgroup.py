"""``kubetune run --nodes N``: a multi-node job's path on one machine.

The operator runs a job of ``resources.nodes: N`` as N pods, each starting torchrun's elastic agent with
the options of :func:`kubetune.api.contract.group_launch` around ``kubetune train --job <manifest>``.
Here the same command starts N times on this machine: the rendezvous on loopback instead of pod 0's
DNS name, each "node" its own scratch folder (``<workdir>/nodes/node-<i>``, as each pod has its own volume),
the same group environment and restart count, one process per node on the CPU (gloo), so a laptop
exercises what a cluster runs: rendezvous, sharding, sharded checkpoints and group restarts.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import uuid
from pathlib import Path

import yaml

from kubetune.api.contract import EXIT_OK, GROUP_ENV, group_launch
from kubetune.api.manifest import load_manifest
from kubetune.api.v1alpha1 import FineTuneJob

# The group's own folder under the work folder: the manifest the nodes train and each node's scratch and
# log live there, so that no file of the user's in --workdir (their own job.yaml, say) is overwritten.
GROUP_FOLDER = "nodes"
GROUP_FILE = "job.yaml"  # the manifest the nodes train, under the group folder (the pods' mounted one)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def write_group_manifest(job: FineTuneJob, nodes: int, folder: Path) -> Path:
    """The job as the nodes read it: ``resources.nodes`` set to ``nodes``, checked the way every
    manifest is (a rule that a multi-node job breaks is refused here, before any process starts)."""
    manifest = job.model_dump(by_alias=True, exclude_none=True, mode="json")
    manifest["spec"].setdefault("resources", {})["nodes"] = nodes
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / GROUP_FILE
    path.write_text(yaml.safe_dump(manifest, sort_keys=False))
    load_manifest(path)  # ManifestError names the field
    return path


def node_commands(job_file: Path, nodes: int, folder: Path, endpoint: str) -> list[list[str]]:
    """Each node's command: torchrun from this environment with the pods' options, one process each."""
    launch = group_launch(nodes, 1, endpoint=endpoint, run_id=uuid.uuid4().hex[:12])
    train = ["-m", "kubetune_trainer.cli", "train", "--job", str(job_file)]
    return [
        [sys.executable, "-m", "torch.distributed.run", *launch, *train, "--workdir", str(folder / f"node-{index}")]
        for index in range(nodes)
    ]


def group_environment(nodes: int) -> dict[str, str]:
    """The pods' group environment; the CPU only (NCCL cannot put two ranks on one GPU), and this
    machine's cores divided between the nodes unless OMP_NUM_THREADS says otherwise."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return {
        "OMP_NUM_THREADS": str(max(1, cores // nodes)),
        **os.environ,
        **GROUP_ENV,
        "CUDA_VISIBLE_DEVICES": "",
    }


def run_group(job: FineTuneJob, nodes: int, workdir: Path) -> int:
    """Train ``job`` on ``nodes`` local nodes; node 0 (rank 0: it publishes) logs to this
    terminal, the others to ``<workdir>/nodes/node-<i>.log``. The exit code is the first failing node's."""
    folder = workdir / GROUP_FOLDER
    job_file = write_group_manifest(job, nodes, folder)
    endpoint = f"127.0.0.1:{_free_port()}"
    commands = node_commands(job_file, nodes, folder, endpoint)
    environment = group_environment(nodes)
    logs = [folder / f"node-{index}.log" for index in range(1, nodes)]
    others = ", ".join(str(log) for log in logs)
    print(
        f"{nodes} local nodes, one torchrun agent each, rendezvous at {endpoint}; the other nodes' logs: {others}",
        file=sys.stderr,
    )
    agents = [subprocess.Popen(commands[0], env=environment)]
    for command, log in zip(commands[1:], logs, strict=True):
        with log.open("w") as sink:
            agents.append(subprocess.Popen(command, env=environment, stdout=sink, stderr=subprocess.STDOUT))
    try:
        codes = [agent.wait() for agent in agents]
    except KeyboardInterrupt:  # the agents stop their workers on SIGTERM
        for agent in agents:
            agent.send_signal(signal.SIGTERM)
        codes = [agent.wait() for agent in agents]
    return next((code for code in codes if code != EXIT_OK), EXIT_OK)
