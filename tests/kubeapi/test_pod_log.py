"""``pods/log`` as kube-apiserver serves the kubelet's copy of a container's output: authorised as the
``log`` subresource, refused while the container waits to start or when a pod of several containers is
asked without a name, and with ``follow`` streamed until the container terminates."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from kubernetes.client.rest import ApiException

from tests.kubeapi.cluster import TestCluster
from tests.kubeapi.model import UserInfo
from tests.kubeapi.runner import ApiServerThread


@pytest.fixture()
def installed(apiserver: ApiServerThread, tmp_path: Path) -> TestCluster:
    return TestCluster(apiserver, tmp_path / "cluster")


def make_pod(cluster: TestCluster, name: str, containers: tuple[str, ...] = ("trainer",)) -> None:
    """The Job controller creates the pod; its containers have no status yet (waiting to start)."""
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {"containers": [{"name": c, "image": "trainer:test"} for c in containers]},
    }
    cluster.job_controller.core.create_namespaced_pod("default", pod)


def set_state(
    cluster: TestCluster, pod: str, state: dict[str, Any], containers: tuple[str, ...] = ("trainer",)
) -> None:
    """The kubelet reports each container's state."""
    statuses = [
        {
            "name": c,
            "ready": "running" in state,
            "image": "trainer:test",
            "imageID": "",
            "restartCount": 0,
            "state": state,
        }
        for c in containers
    ]
    cluster.kubelet.core.patch_namespaced_pod_status(pod, "default", {"status": {"containerStatuses": statuses}})


def write(cluster: TestCluster, pod: str, text: str, container: str = "trainer") -> None:
    server = cluster.apiserver.server
    cluster.apiserver.call(lambda: server.write_container_log("default", pod, container, text))


def refusal(action: Any) -> tuple[int, str]:
    """The status code and the Status message of a refused request."""
    with pytest.raises(ApiException) as caught:
        action()
    return caught.value.status, str(json.loads(caught.value.body)["message"])


def test_a_containers_output_is_read_as_text_once_it_started(installed: TestCluster) -> None:
    core = installed.tenant.core
    make_pod(installed, "train-a")
    status, said = refusal(lambda: core.read_namespaced_pod_log("train-a", "default"))
    assert status == 400 and 'container "trainer" in pod "train-a" is waiting to start: ContainerCreating' in said
    set_state(installed, "train-a", {"running": {"startedAt": "2026-12-06T00:00:00Z"}})
    write(installed, "train-a", "step 1/4 loss 2.1\nstep 2/4 loss 1.7\n")
    assert core.read_namespaced_pod_log("train-a", "default") == "step 1/4 loss 2.1\nstep 2/4 loss 1.7\n"
    assert core.read_namespaced_pod_log("train-a", "default", tail_lines=1) == "step 2/4 loss 1.7\n"
    status, said = refusal(lambda: core.read_namespaced_pod_log("missing", "default"))
    assert status == 404
    status, said = refusal(lambda: core.read_namespaced_pod_log("train-a", "default", container="sidecar"))
    assert status == 400 and "container sidecar is not valid for pod train-a" in said


def test_a_pod_of_several_containers_needs_a_name_and_rbac_decides_on_pods_log(installed: TestCluster) -> None:
    make_pod(installed, "two", ("trainer", "metrics"))
    set_state(installed, "two", {"running": {"startedAt": "2026-12-06T00:00:00Z"}}, ("trainer", "metrics"))
    write(installed, "two", "from the metrics sidecar\n", "metrics")
    core = installed.tenant.core
    status, said = refusal(lambda: core.read_namespaced_pod_log("two", "default"))
    assert status == 400 and "a container name must be specified for pod two, choose one of: [trainer metrics]" in said
    assert core.read_namespaced_pod_log("two", "default", container="metrics") == "from the metrics sidecar\n"
    stranger = installed.identity(UserInfo.user("mallory"))
    status, said = refusal(lambda: stranger.core.read_namespaced_pod_log("two", "default", container="metrics"))
    assert status == 403 and "pods/log" in said


def test_follow_streams_new_output_until_the_container_terminates(installed: TestCluster) -> None:
    make_pod(installed, "train-b")
    set_state(installed, "train-b", {"running": {"startedAt": "2026-12-06T00:00:00Z"}})
    write(installed, "train-b", "loading\n")
    received: list[str] = []

    def follow() -> None:
        stream = installed.tenant.core.read_namespaced_pod_log(
            "train-b", "default", follow=True, _preload_content=False
        )
        for chunk in stream.stream(64):
            received.append(chunk.decode())

    reader = threading.Thread(target=follow, daemon=True)
    reader.start()
    deadline = time.monotonic() + 10
    while "loading\n" not in "".join(received) and time.monotonic() < deadline:
        time.sleep(0.02)
    write(installed, "train-b", "step 1/2\n")
    write(installed, "train-b", "published v1\n")
    assert reader.is_alive(), "the stream stays open while the container runs"
    set_state(installed, "train-b", {"terminated": {"exitCode": 0, "reason": "Completed"}})
    reader.join(timeout=10)
    assert not reader.is_alive(), "the stream ends when the container terminates"
    assert "".join(received) == "loading\nstep 1/2\npublished v1\n"
