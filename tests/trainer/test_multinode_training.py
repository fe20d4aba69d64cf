"""Two "nodes" on one machine: the training command the operator builds for ``resources.nodes: 2``, run
as two torchrun agents (one per pod, each with its own scratch) that rendezvous over loopback (c10d).

The fixture plays the kubelet and the cluster DNS: it starts each pod's command with the job file
where the ConfigMap would be mounted, and the rendezvous host, pod 0's DNS name, resolves to loopback.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from kubetune.api.contract import JOB_FILE, RENDEZVOUS_PORT
from kubetune.api.manifest import parse_spec
from kubetune.operator.children import rendezvous_service_name, training_command, training_job_name
from tests.trainer.jobs import multiprocess_job


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def as_the_kubelet_runs_it(command: list[str], job_file: Path, port: int) -> list[str]:
    """The pod's command on this machine: torchrun from this environment, the job file at its local
    path, pod 0's name resolved to loopback and its port to a free one (every test picks its own)."""
    pod0 = f"{training_job_name('tickets', 2)}-0.{rendezvous_service_name('tickets')}:{RENDEZVOUS_PORT}"
    local = [str(Path(sys.executable).parent / "torchrun"), *command[1:]]
    local = [arg.replace(pod0, f"127.0.0.1:{port}") for arg in local]
    assert f"--rdzv-endpoint=127.0.0.1:{port}" in local, "the command names pod 0 as the rendezvous host"
    return [str(job_file) if arg == JOB_FILE else arg for arg in local]


@pytest.mark.timeout(400)
def test_two_nodes_train_as_one_group_and_rank_0_alone_publishes(tmp_path: Path, tiny_model_dir: Path) -> None:
    job = multiprocess_job(tmp_path, tiny_model_dir, resources={"gpus": 0, "nodes": 2})
    spec = parse_spec(yaml.safe_load(job.read_text())["spec"])
    command = training_command(
        spec, job_name=training_job_name("tickets", 2), service=rendezvous_service_name("tickets"), run_id="run-1"
    )
    local = as_the_kubelet_runs_it(command, job, free_port())
    pods = [
        subprocess.Popen(
            [*local, "--workdir", str(tmp_path / f"node-{index}")],  # each pod's own scratch
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, "OMP_NUM_THREADS": "1", "JOB_COMPLETION_INDEX": str(index)},
        )
        for index in range(2)
    ]
    outputs = [pod.communicate(timeout=380) for pod in pods]
    for pod, (_, stderr) in zip(pods, outputs, strict=True):
        assert pod.returncode == 0, stderr[-3000:]
    logs = "".join(stderr for _, stderr in outputs)
    assert "process 0 of 2" in logs and "process 1 of 2" in logs, "a rank on each node trained"
    versions = [p for p in (tmp_path / "out").iterdir() if p.name.startswith("v")]
    assert len(versions) == 1, "only rank 0 evaluates and publishes"
