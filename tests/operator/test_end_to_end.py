"""Operator and trainer together: the Job-controller fixture runs the trainer's real entry points
(tiny model, local files) for the pre-flight and training Jobs, and the trainer reports its
progress, pre-flight findings and result into the FineTuneJob status through the API."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.operator.cluster import Cluster, EmulatorThread, wait_for
from tests.trainer.jobs import write_dataset


def run_pod(cluster: Cluster, emulator: EmulatorThread, job_name: str, tmp_path: Path) -> int:
    """What the kubelet would do with the Job's pod: run its command with its env and the mounted spec."""
    job = cluster.job(job_name)
    assert job is not None
    container = job["spec"]["template"]["spec"]["containers"][0]
    config_map = cluster.core.read_namespaced_config_map(
        job["spec"]["template"]["spec"]["volumes"][0]["configMap"]["name"], "default"
    )
    spec_file = tmp_path / f"{job_name}.yaml"
    spec_file.write_text(config_map.data["job.yaml"])
    command = [spec_file.as_posix() if arg == "/etc/kubetune/job.yaml" else arg for arg in container["command"]]
    assert command[0] == "kubetune"
    env = {e["name"]: e["value"] for e in container["env"] if "value" in e}
    env.update(
        {
            "KUBETUNE_SCRATCH": str(tmp_path / "scratch"),
            "KUBETUNE_CACHE": os.environ.get("KUBETUNE_CACHE", str(Path.home() / ".cache" / "kubetune")),
            "HOME": str(tmp_path),
        }
    )
    env["KUBETUNE_KUBE_API"] = emulator.url  # the pod's in-cluster API endpoint
    # The pod sees its own environment, not the operator's (both use KUBETUNE_METRICS_PORT, for example).
    machine = {k: v for k, v in os.environ.items() if not k.startswith("KUBETUNE_")}
    cluster.start_job(job_name)
    result = subprocess.run(
        [str(Path(sys.executable).parent / "kubetune"), *command[1:], "--workdir", str(tmp_path / job_name)],
        env={**machine, **env, "OMP_NUM_THREADS": "1"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    cluster.finish_job(
        job_name, succeeded=result.returncode == 0, reason="PodFailurePolicy" if result.returncode == 2 else ""
    )
    if result.returncode not in (0, 2):
        raise AssertionError(f"{job_name}: the trainer crashed (exit {result.returncode}):\n{result.stderr[-3000:]}")
    return result.returncode


# The trainer really runs (tiny model, but two Python processes importing torch each): tens of seconds.
@pytest.mark.slow
def test_trainer_entry_points_driven_by_the_operator(
    tmp_path: Path, tiny_model_dir: Path, emulator: EmulatorThread, cluster: Cluster, operator: Any
) -> None:
    data = write_dataset(tmp_path / "data.jsonl", 48)
    manifest = yaml.safe_load(
        f"""
apiVersion: kubetune.dev/v1alpha1
kind: FineTuneJob
metadata: {{name: e2e}}
spec:
  baseModel: {{uri: "file://{tiny_model_dir}"}}
  dataset: {{sources: [{{uri: "file://{data}"}}]}}
  method: {{type: lora, lora: {{r: 4}}}}
  hyperparameters: {{epochs: 1, batchSize: 2, gradientAccumulationSteps: 1, sequenceLength: 64}}
  evaluation: {{metrics: [perplexity], maxNewTokens: 4}}
  output: {{uri: "file://{tmp_path}/out/", formats: [adapter]}}
  resources: {{gpus: 0}}
"""
    )
    cluster.apply(manifest)
    wait_for(lambda: cluster.job("e2e-preflight"), what="pre-flight Job")
    assert run_pod(cluster, emulator, "e2e-preflight", tmp_path) == 0
    status = wait_for(lambda: cluster.finetunejob("e2e")["status"].get("preflight"), what="pre-flight report in status")
    assert status["passed"] is True and status["trainTokens"] > 0
    wait_for(lambda: cluster.job("e2e-train"), what="training Job")
    assert run_pod(cluster, emulator, "e2e-train", tmp_path) == 0
    wait_for(lambda: cluster.finetunejob("e2e")["status"].get("phase") == "Succeeded", what="Succeeded")
    final = cluster.finetunejob("e2e")["status"]
    assert final["progress"]["step"] == final["progress"]["totalSteps"] > 0
    assert final["progressText"] == f"{final['progress']['step']}/{final['progress']['totalSteps']}"
    assert final["resolved"]["method"] == "lora"
    result = final["result"]
    assert result["manifestUri"].endswith("/manifest.json") and Path(result["manifestUri"][len("file://") :]).exists()
    assert any(a["name"] == "adapter/adapter_model.safetensors" and len(a["sha256"]) == 64 for a in result["artifacts"])
    assert "tuned.perplexity" in result["metrics"]


@pytest.mark.slow
def test_a_bad_dataset_fails_the_preflight_with_the_row(
    tmp_path: Path, tiny_model_dir: Path, emulator: EmulatorThread, cluster: Cluster, operator: Any
) -> None:
    (tmp_path / "bad.jsonl").write_text('{"messages": [{"role": "robot", "content": "x"}]}\n')
    manifest = {
        "apiVersion": "kubetune.dev/v1alpha1",
        "kind": "FineTuneJob",
        "metadata": {"name": "bad"},
        "spec": {
            "baseModel": {"uri": f"file://{tiny_model_dir}"},
            "dataset": {"sources": [{"uri": f"file://{tmp_path}/bad.jsonl"}]},
            "output": {"uri": f"file://{tmp_path}/out/"},
            "resources": {"gpus": 0},
        },
    }
    cluster.apply(manifest)
    wait_for(lambda: cluster.job("bad-preflight"), what="pre-flight Job")
    assert run_pod(cluster, emulator, "bad-preflight", tmp_path) == 2

    def validated() -> dict[str, Any]:
        conditions = cluster.finetunejob("bad").get("status", {}).get("conditions", [])
        return next((c for c in conditions if c["type"] == "Validated" and c["status"] == "False"), {})

    condition = wait_for(validated, what="Validated=False")
    assert condition["reason"] == "PreflightFailed"
    assert f"{tmp_path}/bad.jsonl:1: field 'messages[0].role': unknown role 'robot'" in condition["message"]
    assert cluster.job("bad-train") is None
