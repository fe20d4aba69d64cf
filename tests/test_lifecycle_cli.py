"""``kubetune submit``, ``status`` and ``wait`` through a user's kubeconfig against the test API server,
which authenticates, authorizes (the chart's RBAC: the tenant may create jobs in its namespaces only)
and validates (the CRD's schema and CEL) like a real one."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from kubetune.api.contract import EXIT_CONFIG, EXIT_OK
from kubetune_trainer.cli import main as kubetune
from kubetune_trainer.lifecycle import EXIT_NOT_REACHED
from tests.builders import minimal_spec, trainer_result
from tests.kubeapi.cluster import TestCluster


@pytest.fixture
def as_tenant(installed_cluster: TestCluster, monkeypatch: pytest.MonkeyPatch) -> TestCluster:
    monkeypatch.setenv("KUBECONFIG", str(installed_cluster.tenant.kubeconfig))
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    return installed_cluster


def manifest(tmp_path: Path, name: str, **spec: Any) -> Path:
    path = tmp_path / f"{name}.yaml"
    document = {
        "apiVersion": "kubetune.dev/v1alpha1",
        "kind": "FineTuneJob",
        "metadata": {"name": name},
        "spec": minimal_spec(**spec),
    }
    path.write_text(yaml.safe_dump(document))
    return path


def set_status(cluster: TestCluster, name: str, status: dict[str, Any]) -> None:
    """What the operator and the trainer would write (the test plays them, as the operator's identity)."""
    cluster.identity(cluster.operator_user).custom.patch_namespaced_custom_object_status(
        "kubetune.dev", "v1alpha1", "default", "finetunejobs", name, {"status": status}
    )


def test_submit_creates_the_job_as_written_and_status_shows_it(
    tmp_path: Path, as_tenant: TestCluster, capsys: pytest.CaptureFixture[str]
) -> None:
    assert kubetune(["submit", str(manifest(tmp_path, "tickets"))]) == EXIT_OK
    assert "finetunejobs.kubetune.dev/tickets created in namespace default" in capsys.readouterr().out
    stored = as_tenant.tenant.custom.get_namespaced_custom_object(
        "kubetune.dev", "v1alpha1", "default", "finetunejobs", "tickets"
    )
    assert stored["spec"]["method"]["type"] == "auto", "the API server applied the schema's defaults"

    assert kubetune(["submit", str(manifest(tmp_path, "tickets"))]) == EXIT_CONFIG
    assert "already exists" in capsys.readouterr().err

    set_status(
        as_tenant,
        "tickets",
        {
            "phase": "Running",
            "progress": {"stage": "train", "step": 30, "totalSteps": 120, "trainLoss": 0.5125, "etaSeconds": 750},
            "result": trainer_result(),
        },
    )
    assert kubetune(["status", "tickets"]) == EXIT_OK
    text = capsys.readouterr().out
    assert text.splitlines()[0] == "tickets: Running" and "step 30/120, loss 0.5125, about 12 min left" in text
    assert "version v20261204-101500-0a1b2c: promoted" in text
    assert kubetune(["status", "tickets", "-o", "json"]) == EXIT_OK
    shown = json.loads(capsys.readouterr().out)
    assert shown["progress"]["step"] == 30
    assert kubetune(["status", "tickets", "-o", "yaml"]) == EXIT_OK
    assert yaml.safe_load(capsys.readouterr().out) == shown


def test_what_the_cluster_or_the_manifest_refuses_is_one_line_and_exit_2(
    tmp_path: Path, as_tenant: TestCluster, capsys: pytest.CaptureFixture[str]
) -> None:
    # invalid: refused before the API server is asked, with the field
    assert (
        kubetune(["submit", str(manifest(tmp_path, "bad", method={"type": "qlora"}, resources={"gpus": 0}))])
        == EXIT_CONFIG
    )
    assert "spec.method.type" in capsys.readouterr().err
    # forbidden: the tenant may not create in kube-system
    assert kubetune(["submit", str(manifest(tmp_path, "elsewhere")), "-n", "kube-system"]) == EXIT_CONFIG
    err = capsys.readouterr().err
    assert (
        err.startswith("error: cannot create FineTuneJob 'elsewhere' in namespace 'kube-system'") and "forbidden" in err
    )
    assert "Traceback" not in err
    assert kubetune(["status", "nobody"]) == EXIT_CONFIG
    assert "not found" in capsys.readouterr().err


def test_wait_returns_when_the_phase_is_reached_and_fails_on_another_end(
    tmp_path: Path, as_tenant: TestCluster, capsys: pytest.CaptureFixture[str]
) -> None:
    assert kubetune(["submit", str(manifest(tmp_path, "waited"))]) == EXIT_OK
    capsys.readouterr()
    assert kubetune(["submit", str(manifest(tmp_path, "failing")), "-o", "yaml"]) == EXIT_OK
    created = yaml.safe_load(capsys.readouterr().out)
    assert created["metadata"]["name"] == "failing" and created["spec"]["method"]["type"] == "auto"

    def operator() -> None:
        time.sleep(0.5)
        set_status(as_tenant, "waited", {"phase": "Running"})
        time.sleep(0.5)
        set_status(as_tenant, "waited", {"phase": "Succeeded"})

    player = threading.Thread(target=operator)
    player.start()
    assert kubetune(["wait", "waited", "--for", "succeeded", "--timeout", "20", "--interval", "0.1"]) == EXIT_OK
    player.join()
    assert "waited: Succeeded" in capsys.readouterr().out

    set_status(as_tenant, "failing", {"phase": "Failed"})
    assert kubetune(["wait", "failing", "--timeout", "20", "--interval", "0.1"]) == EXIT_NOT_REACHED
    assert "failing: Failed, not Succeeded" in capsys.readouterr().err
    assert kubetune(["wait", "waited", "--for", "Failed", "--timeout", "0.3", "--interval", "0.1"]) == EXIT_NOT_REACHED
    for output, load in (("json", json.loads), ("yaml", yaml.safe_load)):
        assert kubetune(["wait", "failing", "--for", "failed", "-o", output]) == EXIT_OK
        assert load(capsys.readouterr().out) == {
            "name": "failing",
            "phase": "Failed",
            "wanted": "Failed",
            "reached": True,
        }
    assert kubetune(["wait", "failing", "--timeout", "1", "--interval", "0.1", "-o", "json"]) == EXIT_NOT_REACHED
    captured = capsys.readouterr()
    assert json.loads(captured.out)["reached"] is False and "failing: Failed, not Succeeded" in captured.err


def trainer_pod(cluster: TestCluster, job: str, pod: str, output: str) -> None:
    """The Job controller makes a pod of Job ``job``; the kubelet starts it; the trainer writes ``output``."""
    owner = {"apiVersion": "batch/v1", "kind": "Job", "name": job, "uid": f"uid-{job}", "controller": True}
    spec = {"containers": [{"name": "trainer", "image": "trainer:test"}, {"name": "metrics", "image": "m:1"}]}
    created = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": pod, "ownerReferences": [owner]}, "spec": spec}
    cluster.job_controller.core.create_namespaced_pod("default", created)
    running = {"running": {"startedAt": "2026-12-06T00:00:00Z"}}
    statuses = [
        {"name": c["name"], "ready": True, "image": c["image"], "imageID": "", "restartCount": 0, "state": running}
        for c in spec["containers"]
    ]
    cluster.kubelet.core.patch_namespaced_pod_status(pod, "default", {"status": {"containerStatuses": statuses}})
    write_output(cluster, pod, output)


def write_output(cluster: TestCluster, pod: str, text: str) -> None:
    server = cluster.apiserver.server
    cluster.apiserver.call(lambda: server.write_container_log("default", pod, "trainer", text))


def test_logs_shows_the_newest_training_pods_output_and_follows_it(
    tmp_path: Path, as_tenant: TestCluster, capsys: pytest.CaptureFixture[str]
) -> None:
    assert kubetune(["submit", str(manifest(tmp_path, "logged"))]) == EXIT_OK
    capsys.readouterr()
    assert kubetune(["logs", "logged"]) == EXIT_CONFIG
    assert "FineTuneJob 'logged' has no pre-flight pod yet (phase Pending)" in capsys.readouterr().err

    set_status(as_tenant, "logged", {"phase": "Validating", "preflightJobName": "logged-preflight"})
    trainer_pod(as_tenant, "logged-preflight", "logged-preflight-x1", "pre-flight: fits, 3.1 GiB peak\n")
    assert kubetune(["logs", "logged"]) == EXIT_OK
    assert capsys.readouterr().out == "pre-flight: fits, 3.1 GiB peak\n", "before training: the pre-flight's"

    set_status(as_tenant, "logged", {"phase": "Running", "jobName": "logged-train"})
    trainer_pod(as_tenant, "logged-train", "logged-train-a1", "attempt 1\nkilled\n")
    time.sleep(1.1)  # creation timestamps have whole seconds: the retry is newer
    trainer_pod(as_tenant, "logged-train", "logged-train-b2", "attempt 2\nstep 1/4\n")
    assert kubetune(["logs", "logged"]) == EXIT_OK
    assert capsys.readouterr().out == "attempt 2\nstep 1/4\n", "the newest pod, the trainer's container"
    assert kubetune(["logs", "logged", "--tail", "1"]) == EXIT_OK
    assert capsys.readouterr().out == "step 1/4\n"
    assert kubetune(["logs", "logged", "--preflight"]) == EXIT_OK
    assert capsys.readouterr().out == "pre-flight: fits, 3.1 GiB peak\n"

    followed = threading.Thread(target=lambda: kubetune(["logs", "logged", "-f"]), daemon=True)
    followed.start()
    time.sleep(0.5)
    write_output(as_tenant, "logged-train-b2", "step 2/4\npublished v20261206\n")
    time.sleep(0.3)
    assert followed.is_alive(), "-f follows while the trainer runs"
    done = {"terminated": {"exitCode": 0, "reason": "Completed"}}
    status = {
        "containerStatuses": [
            {
                "name": "trainer",
                "ready": False,
                "image": "trainer:test",
                "imageID": "",
                "restartCount": 0,
                "state": done,
            }
        ]
    }
    as_tenant.kubelet.core.patch_namespaced_pod_status("logged-train-b2", "default", {"status": status})
    followed.join(timeout=10)
    assert not followed.is_alive(), "-f ends when the trainer exits"
    assert capsys.readouterr().out == "attempt 2\nstep 1/4\nstep 2/4\npublished v20261206\n"
