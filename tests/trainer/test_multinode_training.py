"""Two "nodes" on one machine: the training command the operator builds for ``resources.nodes: 2``, run
as two torchrun agents (one per pod, each with its own scratch) that rendezvous over loopback (c10d).

The fixture plays the kubelet and the cluster DNS: it starts each pod's command with the job file
where the ConfigMap would be mounted, and the rendezvous host, pod 0's DNS name, resolves to loopback.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from kubetune.api.contract import JOB_FILE, RENDEZVOUS_PORT
from kubetune.api.manifest import parse_spec
from kubetune.operator.children import group_env, rendezvous_service_name, training_command, training_job_name
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


# Two epochs of 5 optimizer steps (38 training rows, 2 processes x 2 rows x 2 micro-batches), unpacked
# so the step count does not hang on packing, checkpointed every 2 steps: a kill in step 5 resumes at 4.
HYPERPARAMETERS = {"epochs": 2, "batchSize": 2, "gradientAccumulationSteps": 2, "packing": False}


@dataclass
class JobPods:
    """The pods of a ``resources.nodes: 2`` job's Indexed Job as the kubelet runs them: every pod of an
    index (the first and any replacement) runs the same command, pod 0's name at the same address, with
    its own scratch, its log appended to ``folder/pod-<index>.log`` (micro-steps traced)."""

    folder: Path
    command: list[str]
    environment: dict[str, str]

    def start(self, index: int, scratch: str) -> subprocess.Popen[str]:
        return subprocess.Popen(
            [*self.command, "--workdir", str(self.folder / scratch)],  # each pod's own scratch
            stdout=subprocess.DEVNULL,
            stderr=(self.folder / f"pod-{index}.log").open("a"),
            text=True,
            env={**self.environment, "JOB_COMPLETION_INDEX": str(index)},
        )


def job_pods(folder: Path, model_dir: Path, **resources: object) -> JobPods:
    folder.mkdir()
    job = multiprocess_job(
        folder,
        model_dir,
        resources={"gpus": 0, "nodes": 2, **resources},
        hyperparameters=HYPERPARAMETERS,
        checkpoint={"everySteps": 2},
    )
    spec = parse_spec(yaml.safe_load(job.read_text())["spec"])
    command = training_command(
        spec, job_name=training_job_name("tickets", 2), service=rendezvous_service_name("tickets"), run_id="run-1"
    )
    pod_env = {variable["name"]: variable["value"] for variable in group_env(spec)}
    environment = {**os.environ, **pod_env, "OMP_NUM_THREADS": "1", "KUBETUNE_TRACE_MICROSTEPS": "1"}
    return JobPods(folder, as_the_kubelet_runs_it(command, job, free_port()), environment)


def start_two_pods(folder: Path, model_dir: Path, **resources: object) -> list[subprocess.Popen[str]]:
    pods = job_pods(folder, model_dir, **resources)
    return [pods.start(index, f"node-{index}") for index in range(2)]


def finished(folder: Path, pods: list[subprocess.Popen[str]]) -> tuple[str, Path]:
    """Both pods' logs once they have succeeded, and the one version they published."""
    for index, pod in enumerate(pods):
        pod.wait(timeout=380)
        assert pod.returncode == 0, (folder / f"pod-{index}.log").read_text()[-3000:]
    versions = [p for p in (folder / "out").iterdir() if p.name.startswith("v")]
    assert len(versions) == 1, "only rank 0 publishes"
    return "".join((folder / f"pod-{index}.log").read_text() for index in range(2)), versions[0]


def train_on_two_nodes(folder: Path, model_dir: Path, **resources: object) -> tuple[str, Path]:
    return finished(folder, start_two_pods(folder, model_dir, **resources))


def kubetune_run_on_two_nodes(folder: Path, model_dir: Path, **resources: object) -> tuple[str, Path]:
    """``kubetune run --nodes 2`` on the one-node manifest, as a user exercises the multi-node path on a
    laptop: node 0 logs to the command's stderr, node 1 to its file."""
    folder.mkdir()
    job = multiprocess_job(
        folder,
        model_dir,
        resources={"gpus": 0, **resources},
        hyperparameters=HYPERPARAMETERS,
        checkpoint={"everySteps": 2},
    )
    assert "nodes" not in yaml.safe_load(job.read_text())["spec"]["resources"]
    kubetune = str(Path(sys.executable).parent / "kubetune")
    done = subprocess.run(
        [kubetune, "run", str(job), "--nodes", "2", "--workdir", str(folder / "work")],
        capture_output=True,
        text=True,
        timeout=380,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    group = folder / "work" / "nodes"
    logs = done.stderr + (group / "node-1.log").read_text()
    assert done.returncode == 0, logs[-3000:]
    assert yaml.safe_load((group / "job.yaml").read_text())["spec"]["resources"]["nodes"] == 2
    (version,) = [p for p in (folder / "out").iterdir() if p.name.startswith("v")]
    return logs, version


@pytest.fixture(scope="module")
def sharded_run(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> tuple[str, Path]:
    """An uninterrupted two-node FSDP run: its logs and its published version."""
    return train_on_two_nodes(tmp_path_factory.mktemp("sharded") / "fsdp", tiny_model_dir, sharding="fsdp")


def shares(logs: str) -> list[tuple[int, int]]:
    """Each rank's parameter elements held and in all, as the trainer logs them after training."""
    found = dict(re.findall(r"parameters held by process (\d): (\d+ of \d+) elements", logs))
    assert sorted(found) == ["0", "1"], logs[-3000:]
    return [tuple(int(n) for n in found[rank].split(" of ")) for rank in ("0", "1")]  # type: ignore[misc]


def evaluated_by_both_ranks(logs: str) -> bool:
    """Every rank took part in the evaluation (its share of the batches: evaluation/sharing.py)."""
    found = re.findall(r"evaluation shared by 2 processes: process (\d) scored \d+ of \d+ batches", logs)
    return sorted(found) == ["0", "1"]


def losses(version: Path) -> list[float]:
    history = json.loads((version / "reports" / "training_history.json").read_text())
    return [entry["loss"] for entry in history if "loss" in entry]


def adapter_weights(version: Path) -> dict[str, torch.Tensor]:
    (weights,) = version.glob("adapter/*.safetensors")
    return load_file(str(weights))


@pytest.mark.timeout(700)
def test_two_nodes_train_as_one_group_sharded_or_not_and_rank_0_alone_publishes(
    tmp_path: Path, tiny_model_dir: Path, sharded_run: tuple[str, Path]
) -> None:
    """The operator's pods shard (fsdp); ``kubetune run --nodes 2`` replicates (none) the same job."""
    logs, replicated = kubetune_run_on_two_nodes(tmp_path / "ddp", tiny_model_dir, sharding="none")
    assert "process 0 of 2" in logs and "process 1 of 2" in logs, "a rank on each node trained"
    assert [held / total for held, total in shares(logs)] == [1.0, 1.0], "DDP: every process holds every weight"
    assert evaluated_by_both_ranks(logs), logs[-3000:]
    logs, sharded = sharded_run
    assert "process 0 of 2" in logs and "process 1 of 2" in logs
    manifests = [json.loads((version / "manifest.json").read_text()) for version in (replicated, sharded)]
    assert [m["resolved"]["hyperparameters"]["sharding"] for m in manifests] == ["none", "fsdp"]
    assert [held / total for held, total in shares(logs)] == pytest.approx([0.5, 0.5], abs=0.02), "each holds half"
    assert evaluated_by_both_ranks(logs), "rank 1 rebuilt the model from rank 0's weights to evaluate"
    # The same global batch, steps and seed: sharding changes where the state lives, not what is learned.
    assert len(losses(sharded)) == len(losses(replicated)) >= 2
    assert losses(sharded) == pytest.approx(losses(replicated), rel=1e-3)
    assert manifests[1]["training"]["bestEvalLoss"] == pytest.approx(manifests[0]["training"]["bestEvalLoss"], rel=1e-3)
    # Rank 0's export is the whole adapter gathered from both ranks' shards, equal to DDP's.
    ddp, fsdp = adapter_weights(replicated), adapter_weights(sharded)
    assert fsdp.keys() == ddp.keys() and len(ddp) > 0
    for name, tensor in ddp.items():
        assert fsdp[name].shape == tensor.shape, name
        assert torch.allclose(fsdp[name], tensor, rtol=1e-3, atol=1e-5), name


def worker_of(agent: subprocess.Popen[str]) -> int:
    """The training process torchrun's agent runs (its one child), as the pod's process tree shows it."""
    children = Path(f"/proc/{agent.pid}/task/{agent.pid}/children").read_text().split()
    assert len(children) == 1, children
    return int(children[0])


def wait_for_line(log: Path, prefix: str, timeout: float) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for line in log.read_text().splitlines():
            if line.startswith(prefix):
                return line
        time.sleep(0.05)
    raise AssertionError(f"{log.name} never logged {prefix!r}: {log.read_text()[-3000:]}")


@pytest.mark.timeout(700)
def test_a_rank_killed_mid_run_restarts_the_group_which_resumes_from_the_sharded_checkpoint(
    tmp_path: Path, tiny_model_dir: Path, sharded_run: tuple[str, Path]
) -> None:
    """Pod 1's training process dies (SIGKILL, as the OOM killer or a crash would) in step 5, after
    step 4's checkpoint: its torchrun agent restarts the group through a new rendezvous, pod 0's agent
    joins it, every rank resumes its shards from storage, and the group ends where an uninterrupted
    run ends."""
    folder = tmp_path / "killed"
    pods = start_two_pods(folder, tiny_model_dir, sharding="fsdp")
    wait_for_line(folder / "pod-1.log", "kubetune-microstep step=4 substep=1", timeout=300)
    os.kill(worker_of(pods[1]), signal.SIGKILL)
    _, resumed = finished(folder, pods)
    for index in range(2):  # both pods' agents restarted their worker, which resumed at step 4
        log = (folder / f"pod-{index}.log").read_text()
        assert log.count("training: process") == 2 and "checkpoint-4" in log.split("resuming from", 1)[1], log[-3000:]
    steps = [json.loads((v / "manifest.json").read_text())["training"]["globalStep"] for v in (sharded_run[1], resumed)]
    assert steps[0] == steps[1] >= 6, steps
    expected, got = adapter_weights(sharded_run[1]), adapter_weights(resumed)
    assert got.keys() == expected.keys()
    for name, tensor in expected.items():
        torch.testing.assert_close(got[name], tensor, atol=1e-5, rtol=1e-4)


def lose(pod: subprocess.Popen[str]) -> None:
    """The pod gone at once, as with its node: its training process and its torchrun agent killed."""
    worker = worker_of(pod)
    pod.kill()
    os.kill(worker, signal.SIGKILL)
    pod.wait()


REPLACEMENTS = 3  # the Job's per-index backoff limit in this fixture


@pytest.mark.timeout(900)
def test_losing_pod_0_the_rendezvous_host_its_replacement_and_the_group_resume_from_the_checkpoint(
    tmp_path: Path, tiny_model_dir: Path, sharded_run: tuple[str, Path]
) -> None:
    """Pod 0's agent hosts the rendezvous store. Pod 0 lost in step 5 (after step 4's checkpoint): the
    fixture, playing the Job controller, starts a replacement pod 0 at once (the same name, so the same
    address, and an empty scratch) and replaces any pod that fails, as the Job's per-index backoff does.
    Pod 1 is left to do what it does (its agent may fail without the store, or reach the new one):
    either way the group ends where an uninterrupted run ends, resumed from the sharded checkpoint."""
    folder = tmp_path / "lost-pod-0"
    group = job_pods(folder, tiny_model_dir, sharding="fsdp")
    pods = [group.start(index, f"node-{index}") for index in range(2)]
    try:
        wait_for_line(folder / "pod-0.log", "kubetune-microstep step=4 substep=1", timeout=300)
        lose(pods[0])
        before_loss = len((folder / "pod-0.log").read_text())
        started = {0: 1, 1: 0}
        pods[0] = group.start(0, "pod-0-replacement-1")
        deadline = time.monotonic() + 600
        while any(pod.poll() != 0 for pod in pods):
            for index, pod in enumerate(pods):
                if pod.poll() not in (None, 0):
                    assert started[index] < REPLACEMENTS, (folder / f"pod-{index}.log").read_text()[-3000:]
                    started[index] += 1
                    pods[index] = group.start(index, f"pod-{index}-replacement-{started[index]}")
            assert time.monotonic() < deadline, f"the group did not finish; replacements {started}"
            time.sleep(0.5)
    finally:
        for pod in pods:
            if pod.poll() is None:
                pod.kill()
    after_loss = (folder / "pod-0.log").read_text()[before_loss:]
    resumptions = [line for line in after_loss.splitlines() if "resuming from" in line]
    assert resumptions and all("checkpoint-4" in line for line in resumptions), after_loss[-3000:]
    (resumed,) = [p for p in (folder / "out").iterdir() if p.name.startswith("v")]
    steps = [json.loads((v / "manifest.json").read_text())["training"]["globalStep"] for v in (sharded_run[1], resumed)]
    assert steps[0] == steps[1] >= 6, steps
    expected, got = adapter_weights(sharded_run[1]), adapter_weights(resumed)
    for name, tensor in expected.items():
        torch.testing.assert_close(got[name], tensor, atol=1e-5, rtol=1e-4)
