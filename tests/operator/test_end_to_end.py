"""Operator and trainer together: the Job-controller fixture runs the trainer's real entry points
(tiny model, local files) for the pre-flight and training Jobs, and the trainer reports its
progress, pre-flight findings and result into the FineTuneJob status through the API."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import yaml

from kubetune.api.contract import EXIT_CANNOT_REPORT, EXIT_CONFIG, EXIT_OK
from tests.kubeapi.cluster import CLUSTERWIDE, NAMESPACED, RbacMode, TestCluster
from tests.kubeapi.model import UserInfo
from tests.operator.cluster import Cluster, wait_for
from tests.trainer.jobs import write_dataset, write_pairs


def run_pod(
    cluster: Cluster,
    job_name: str,
    tmp_path: Path,
    cache: Path | None = None,
    *,
    expected_exits: tuple[int, ...] = (EXIT_OK, EXIT_CONFIG, EXIT_CANNOT_REPORT),
) -> int:
    """What the kubelet does with the Job's pod: run its command with its env, the mounted spec, the
    pod's ServiceAccount token (from the TokenRequest API) and the cluster CA; then record the exit
    code and termination message, and the Job controller finishes the Job. ``cache``: the pod's
    KUBETUNE_CACHE (default: the machine's, shared by the tests)."""
    job = cluster.job(job_name)
    assert job is not None
    pod = job["spec"]["template"]["spec"]
    container = pod["containers"][0]
    config_map = cluster.core.read_namespaced_config_map(pod["volumes"][0]["configMap"]["name"], "default")
    spec_file = tmp_path / f"{job_name}.yaml"
    spec_file.write_text(config_map.data["job.yaml"])
    termination_log = tmp_path / f"{job_name}.termination-log"
    command = [spec_file.as_posix() if arg == "/etc/kubetune/job.yaml" else arg for arg in container["command"]]
    assert command[0] == "kubetune"
    env = {e["name"]: e["value"] for e in container["env"] if "value" in e}
    assert env["KUBETUNE_TERMINATION_LOG"] == container["terminationMessagePath"]
    env.update(
        {
            "KUBETUNE_SCRATCH": str(tmp_path / "scratch"),
            "KUBETUNE_CACHE": str(cache or os.environ.get("KUBETUNE_CACHE", Path.home() / ".cache" / "kubetune")),
            "HOME": str(tmp_path),
            "KUBETUNE_TERMINATION_LOG": str(termination_log),
            "KUBECONFIG": str(cluster.pod_kubeconfig(job)),
        }
    )
    # The pod sees its own environment, not the operator's (both use KUBETUNE_METRICS_PORT, for example).
    machine = {k: v for k, v in os.environ.items() if not k.startswith("KUBETUNE_") and k != "KUBECONFIG"}
    cluster.start_job(job_name)
    result = subprocess.run(
        [str(Path(sys.executable).parent / "kubetune"), *command[1:], *_workdir(command, tmp_path / job_name)],
        env={**machine, **env, "OMP_NUM_THREADS": "1"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    said = termination_log.read_text() if termination_log.exists() else ""
    cluster.finish_job(
        job_name, succeeded=result.returncode == 0, exit_code=result.returncode, termination_message=said
    )
    if result.returncode not in expected_exits or "Traceback" in result.stderr:
        raise AssertionError(f"{job_name}: the trainer crashed (exit {result.returncode}):\n{result.stderr[-3000:]}")
    return result.returncode


def _workdir(command: list[str], folder: Path) -> list[str]:
    """Where a pre-flight or training pod works (its scratch); the verification pod only reads."""
    return ["--workdir", str(folder)] if command[1] in ("preflight", "train") else []


# The trainer really runs (tiny model, but two Python processes importing torch each): tens of seconds.
@pytest.mark.slow
def test_trainer_entry_points_driven_by_the_operator(
    tmp_path: Path, tiny_model_dir: Path, cluster: Cluster, operator: Any, rbac_mode: RbacMode
) -> None:
    # Each RBAC mode also trains another method, so that DoRA (with rsLoRA), and IA3 learning preference
    # pairs by DPO, go the operator's whole way (pre-flight, training Job, status, artifacts) without a
    # third trainer run.
    fresh = rbac_mode is CLUSTERWIDE
    preference = not fresh
    adapter, method = (
        ("dora", "{adapter: dora, lora: {r: 4, scaling: rslora}}")
        if fresh
        else ("ia3", "{adapter: ia3, objective: dpo}")
    )
    data = write_pairs(tmp_path / "data.jsonl", 64) if preference else write_dataset(tmp_path / "data.jsonl", 48)
    manifest = yaml.safe_load(
        f"""
apiVersion: kubetune.dev/v1alpha1
kind: FineTuneJob
metadata: {{name: e2e}}
spec:
  baseModel: {{uri: "file://{tiny_model_dir}"}}
  dataset: {{sources: [{{uri: "file://{data}"}}]}}
  method: {method}
  hyperparameters: {{epochs: 1, batchSize: 2, gradientAccumulationSteps: 1, sequenceLength: 64}}
  evaluation: {{metrics: [perplexity], maxNewTokens: 4}}
  output: {{uri: "file://{tmp_path}/out/", formats: [adapter]}}
  resources: {{gpus: 0}}
"""
    )
    cluster.apply(manifest)
    # The pods do the same in both RBAC modes, so only one generates the base answers: it starts from a
    # fresh cache (nobody has the tiny model's answers to the general prompts yet); the other uses
    # the machine's cache, as a second job on the same base model would.
    cache = tmp_path / "cache" if fresh else Path(os.environ.get("KUBETUNE_CACHE", Path.home() / ".cache" / "kubetune"))
    stored_answers = tmp_path / "out" / ".kubetune" / "general-answers"
    wait_for(lambda: cluster.job("e2e-preflight"), what="pre-flight Job")
    assert run_pod(cluster, "e2e-preflight", tmp_path, cache) == 0
    status = wait_for(lambda: cluster.finetunejob("e2e")["status"].get("preflight"), what="pre-flight report in status")
    assert status["passed"] is True and status["trainTokens"] > 0
    # Replay is on by default; the pre-flight plans it and counts the base answers' time, but never generates.
    # Preference pairs replay nothing (single answers are no pairs).
    replayed = status["examples"]["replay"]
    assert replayed == 0 if preference else replayed >= 48
    assert status["examples"]["trainAfterMixing"] == status["examples"]["train"] + replayed
    # From a fresh cache, the pre-flight counts the time of the base answers the training pod will generate.
    assert not fresh or "base answers to generate" in status["message"], status["message"]
    assert not stored_answers.exists() and (not fresh or not (cache / "general-answers").exists())
    wait_for(lambda: cluster.job("e2e-train"), what="training Job")
    assert run_pod(cluster, "e2e-train", tmp_path, cache) == 0
    wait_for(lambda: cluster.finetunejob("e2e")["status"].get("phase") == "Succeeded", what="Succeeded")
    final = cluster.finetunejob("e2e")["status"]
    assert final["progress"]["step"] == final["progress"]["totalSteps"] > 0
    assert final["progressText"] == f"{final['progress']['step']}/{final['progress']['totalSteps']}"
    assert (final["resolved"]["method"], final["resolved"]["adapter"]) == ("lora", adapter)
    result = final["result"]
    assert result["manifestUri"].endswith("/manifest.json") and Path(result["manifestUri"][len("file://") :]).exists()
    assert any(a["name"] == "adapter/adapter_model.safetensors" and len(a["sha256"]) == 64 for a in result["artifacts"])
    assert "tuned.perplexity" in result["metrics"]
    if preference:
        assert final["resolved"]["objective"]["type"] == "dpo"
        assert {"tuned.rewardAccuracy", "tuned.rewardMargin"} <= set(result["metrics"])
    # The training pod trained on the planned replay rows; from a fresh cache, it generated the base
    # answers once and cached them locally and beside the output.
    assert final["resolved"]["replay"]["examples"] == replayed
    lineage = json.loads(Path(result["manifestUri"][len("file://") :]).read_text())
    published = Path(result["manifestUri"][len("file://") :]).parent / "adapter" / "adapter_config.json"
    config = json.loads(published.read_text())
    assert (config["peft_type"], config.get("use_dora", False)) == (
        ("LORA", True) if adapter == "dora" else ("IA3", False)
    )
    if fresh:
        # The answers, and the base model's likelihood of the regression pool's (evaluation scored it).
        for folder in (cache / "general-answers", stored_answers):
            assert sorted("likelihood" in f.name for f in folder.glob("*.jsonl")) == [False, True], folder
        assert lineage["dataset"]["replay"]["answers"] == "generated"
    # Every drawn prompt is accounted for: trained on, or left out because the base answered it wrongly.
    if preference:
        assert "replay" not in lineage["dataset"]
    else:
        trained_replay = lineage["dataset"]["replay"]
        assert trained_replay["examples"] + trained_replay["withheldWrongAnswers"] == replayed, trained_replay
        assert lineage["dataset"]["replay"]["answers"] in ("generated", "cache")
    forgetting = lineage["evaluation"]["forgetting"]
    assert forgetting["optedOut"] is False and forgetting["likelihood"]["examples"] == 188
    assert "built-in general prompts" in forgetting["set"]


# The methods the test above does not train, each the operator's whole way (pre-flight, training Job,
# status, artifacts), as a user writes them: no output formats, so each publishes what it can (a prefix
# or bottleneck adapter cannot be merged). Small runs without replay or the forgetting check, in one
# RBAC mode (the pods do the same in both), and the kubelet runs their pods side by side as a node
# would: what is checked is that each method's fields cross the API server, the pod contract and the
# status intact. (method block, the files its adapter is published as)
OTHER_METHODS: dict[str, tuple[str, set[str]]] = {
    "adalora": ("{adapter: adalora}", {"adapter/adapter_config.json", "merged/config.json"}),
    "prefix-orpo": ("{adapter: prefix, objective: orpo}", {"adapter/adapter_config.json"}),
    "bottleneck": ("{adapter: bottleneck}", {"adapter/bottleneck_config.json"}),
    "full": ("{type: full}", {"merged/config.json"}),
    "osf": ("{adapter: osf}", {"adapter/adapter_config.json", "merged/config.json"}),
    "private": ("{adapter: lora}", {"adapter/adapter_config.json", "merged/config.json"}),
}
# Blocks beside the method: the private job trains with DP-SGD (spec.privacy).
EXTRA_SPEC: dict[str, dict[str, Any]] = {"private": {"privacy": {"targetEpsilon": 8}}}


def method_job(name: str, method: str, model: Path, data: Path, tmp_path: Path) -> dict[str, Any]:
    """A FineTuneJob training ``method`` (a method block in YAML) on the tiny model, quickly."""
    manifest: dict[str, Any] = yaml.safe_load(
        f"""
apiVersion: kubetune.dev/v1alpha1
kind: FineTuneJob
metadata: {{name: {name}}}
spec:
  baseModel: {{uri: "file://{model}"}}
  dataset: {{sources: [{{uri: "file://{data}"}}], replay: {{enabled: false}}}}
  method: {method}
  hyperparameters: {{epochs: 1, batchSize: 4, gradientAccumulationSteps: 1, sequenceLength: 64}}
  evaluation: {{metrics: [perplexity], forgetting: false}}
  output: {{uri: "file://{tmp_path}/out/{name}/"}}
  resources: {{gpus: 0}}
"""
    )
    return manifest


@pytest.mark.slow
@pytest.mark.parametrize("rbac_mode", [NAMESPACED], ids=["namespaced"])
def test_every_other_method_goes_the_operators_whole_way(
    tmp_path: Path, tiny_model_dir: Path, cluster: Cluster, operator: Any
) -> None:
    sft, pairs = write_dataset(tmp_path / "data.jsonl", 32), write_pairs(tmp_path / "pairs.jsonl", 32)
    manifests = {
        name: method_job(name, method, tiny_model_dir, pairs if "orpo" in method else sft, tmp_path)
        for name, (method, _) in OTHER_METHODS.items()
    }
    for name, extra in EXTRA_SPEC.items():
        manifests[name]["spec"] |= extra
    for manifest in manifests.values():
        cluster.apply(manifest)

    def kubelet(name: str) -> None:
        wait_for(lambda: cluster.job(f"{name}-preflight"), what=f"{name}: pre-flight Job")
        assert run_pod(cluster, f"{name}-preflight", tmp_path) == 0
        wait_for(lambda: cluster.job(f"{name}-train"), what=f"{name}: training Job")
        assert run_pod(cluster, f"{name}-train", tmp_path) == 0
        wait_for(lambda: cluster.finetunejob(name)["status"].get("phase") == "Succeeded", what=f"{name}: Succeeded")

    with ThreadPoolExecutor(len(manifests)) as node:
        for done in [node.submit(kubelet, name) for name in manifests]:
            done.result()
    for name, (_, published) in OTHER_METHODS.items():
        final = cluster.finetunejob(name)["status"]
        assert final["preflight"]["passed"] is True
        asked, resolved = manifests[name]["spec"]["method"], final["resolved"]
        assert (resolved["method"], resolved["adapter"]) == (asked.get("type", "lora"), asked.get("adapter", "none"))
        assert resolved["objective"]["type"] == asked.get("objective", "sft")
        if "adapter" in asked:
            assert asked["adapter"] in resolved, resolved  # the adapter's own block, resolved into status
        artifacts = {artifact["name"] for artifact in final["result"]["artifacts"]}
        assert published <= artifacts and ("merged/config.json" in artifacts) is ("merged/config.json" in published)
        assert final["progress"]["step"] == final["progress"]["totalSteps"] > 0
        if name in EXTRA_SPEC:  # what DP-SGD spent reaches the job's status
            privacy = final["result"]["privacy"]
            assert resolved["privacy"]["mechanism"] == "dp-sgd" and 0 < privacy["epsilon"] <= 8, privacy
            assert privacy["steps"] == resolved["privacy"]["steps"]
            assert final["progress"].get("trainLoss") is None, "the un-noised loss left the DP mechanism"
        if asked.get("objective") == "orpo":
            assert {"tuned.rewardAccuracy", "tuned.rewardMargin"} <= set(final["result"]["metrics"])


def local_job(name: str, model: Path, data: Path, tmp_path: Path) -> dict[str, Any]:
    """A CPU-only FineTuneJob on the tiny model and a local dataset, publishing under ``tmp_path``."""
    return {
        "apiVersion": "kubetune.dev/v1alpha1",
        "kind": "FineTuneJob",
        "metadata": {"name": name},
        "spec": {
            "baseModel": {"uri": f"file://{model}"},
            "dataset": {"sources": [{"uri": f"file://{data}"}]},
            "output": {"uri": f"file://{tmp_path}/out/"},
            "resources": {"gpus": 0},
        },
    }


@pytest.mark.slow
def test_a_bad_dataset_fails_the_preflight_with_the_row(
    tmp_path: Path, tiny_model_dir: Path, cluster: Cluster, operator: Any
) -> None:
    (tmp_path / "bad.jsonl").write_text('{"messages": [{"role": "robot", "content": "x"}]}\n')
    cluster.apply(local_job("bad", tiny_model_dir, tmp_path / "bad.jsonl", tmp_path))
    wait_for(lambda: cluster.job("bad-preflight"), what="pre-flight Job")
    assert run_pod(cluster, "bad-preflight", tmp_path) == 2

    def validated() -> dict[str, Any]:
        conditions = cluster.finetunejob("bad").get("status", {}).get("conditions", [])
        return next((c for c in conditions if c["type"] == "Validated" and c["status"] == "False"), {})

    condition = wait_for(validated, what="Validated=False")
    assert condition["reason"] == "PreflightFailed"
    assert f"{tmp_path}/bad.jsonl:1: field 'messages[0].role': unknown role 'robot'" in condition["message"]
    assert cluster.job("bad-train") is None


@pytest.mark.slow
def test_a_trainer_whose_credentials_are_refused_stops_and_the_operator_says_why(
    tmp_path: Path, tiny_model_dir: Path, test_cluster: TestCluster, cluster: Cluster, operator: Any
) -> None:
    """The pod's token is revoked before it starts: the trainer's first status write gets 401, it exits
    with its own code before any work, and the FineTuneJob fails quoting the HTTP status."""
    cluster.apply(local_job("mute", tiny_model_dir, write_dataset(tmp_path / "data.jsonl", 8), tmp_path))
    job = wait_for(lambda: cluster.job("mute-preflight"), what="pre-flight Job")
    cluster.pod_kubeconfig(job)  # the kubelet mounts the token...
    account = UserInfo.service_account("default", job["spec"]["template"]["spec"]["serviceAccountName"])
    server = test_cluster.apiserver.server
    test_cluster.apiserver.call(lambda: server.authn.revoke_user(account))  # ...and it is revoked
    assert run_pod(cluster, "mute-preflight", tmp_path) == EXIT_CANNOT_REPORT
    wait_for(lambda: cluster.finetunejob("mute")["status"].get("phase") == "Failed", what="Failed")
    failed = next(c for c in cluster.finetunejob("mute")["status"]["conditions"] if c["type"] == "Failed")
    assert failed["reason"] == "TrainerCannotReport"
    assert "HTTP 401 Unauthorized" in failed["message"]
    assert cluster.job("mute-train") is None
