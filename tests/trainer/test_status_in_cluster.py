"""The trainer's status reporter against the test API server, started as in a pod: the ServiceAccount
token and CA the kubelet mounts (in-cluster configuration), the per-job Role the operator makes.
It keeps reporting when its token is rotated, and it can write nothing but its own job's status."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client
from kubernetes.client.rest import ApiException

from kubetune import kubeclient
from kubetune.api.v1alpha1 import FineTuneJobSpec, Progress, TrainerResult
from kubetune.operator import children
from kubetune_trainer.reporting.kubernetes import KubernetesStatusReporter
from tests.builders import minimal_spec
from tests.kubeapi.cluster import TestCluster
from tests.kubeapi.model import UserInfo
from tests.kubeapi.runner import ApiServerThread
from tests.operator.cluster import Cluster, wait_for

GROUP, VERSION, PLURAL = "kubetune.dev", "v1alpha1", "finetunejobs"
SPEC = minimal_spec()


@pytest.fixture()
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    apiserver = ApiServerThread(tmp_path / "apiserver").start()
    try:
        yield Cluster(TestCluster(apiserver, tmp_path / "cluster"))
    finally:
        apiserver.stop()


def create_job_with_trainer_rbac(cluster: Cluster, name: str) -> UserInfo:
    """The FineTuneJob (by the tenant) and its trainer's ServiceAccount, Role and RoleBinding (by the operator)."""
    created = cluster.apply(
        {"apiVersion": "kubetune.dev/v1alpha1", "kind": "FineTuneJob", "metadata": {"name": name}, "spec": SPEC}
    )
    owner = children.Owner(name, "default", created["metadata"]["uid"])
    operator = cluster.as_operator()
    for manifest in children.build_trainer_rbac(owner, FineTuneJobSpec.model_validate(SPEC)):
        operator.create(manifest)
    return UserInfo.service_account("default", children.trainer_account_name(name))


def mount_token(cluster: Cluster, account: UserInfo, folder: Path) -> None:
    """What the kubelet does for the pod: a token from the TokenRequest API, the CA, the namespace."""
    name = account.name.rsplit(":", 1)[1]
    issued = cluster.test_cluster.kubelet.call(
        "POST",
        f"/api/v1/namespaces/default/serviceaccounts/{name}/token",
        {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": {}},
    )
    cluster.apiserver.service_account_files(account, folder, issued["status"]["token"])


@pytest.fixture()
def in_pod(cluster: Cluster, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    host, port = cluster.apiserver.url.removeprefix("https://").split(":")
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", host)
    monkeypatch.setenv("KUBERNETES_SERVICE_PORT", port)
    monkeypatch.delenv("KUBECONFIG", raising=False)
    folder = tmp_path / "serviceaccount"
    monkeypatch.setattr(kubeclient, "SERVICE_ACCOUNT_DIR", folder)
    monkeypatch.setenv("KUBETUNE_JOB_NAMESPACE", "default")
    return folder


def status(cluster: Cluster, name: str) -> dict[str, Any]:
    return dict(cluster.finetunejob(name).get("status") or {})


def test_the_trainer_keeps_reporting_after_its_token_is_rotated(
    cluster: Cluster, in_pod: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    account = create_job_with_trainer_rbac(cluster, "tickets")
    mount_token(cluster, account, in_pod)
    monkeypatch.setenv("KUBETUNE_JOB_NAME", "tickets")
    reporter = KubernetesStatusReporter.from_environment()
    reporter.stage("model")
    assert status(cluster, "tickets")["progress"]["stage"] == "model", "the first write is synchronous"

    server = cluster.apiserver.server
    cluster.apiserver.call(lambda: server.authn.revoke_user(account))
    mount_token(cluster, account, in_pod)  # the kubelet rotates the projected token
    reporter.progress(Progress(step=2, total_steps=2))
    wait_for(lambda: status(cluster, "tickets")["progress"].get("step") == 2, what="progress after the rotation")
    reporter.result(TrainerResult(version="v1", manifest_uri="s3://models/x/v1/manifest.json", promoted=True))
    reporter.close(0)
    assert status(cluster, "tickets")["result"]["version"] == "v1"


def test_the_trainer_can_write_only_its_own_jobs_status(cluster: Cluster, in_pod: Path) -> None:
    account = create_job_with_trainer_rbac(cluster, "mine")
    create_job_with_trainer_rbac(cluster, "theirs")
    mount_token(cluster, account, in_pod)
    api = kubeclient.ReauthenticatingApiClient()
    custom, core = client.CustomObjectsApi(api), client.CoreV1Api(api)
    custom.patch_namespaced_custom_object_status(
        GROUP, VERSION, "default", PLURAL, "mine", {"status": {"progress": {"step": 1}}}
    )
    refusals = {
        "another job's status": lambda: custom.patch_namespaced_custom_object_status(
            GROUP, VERSION, "default", PLURAL, "theirs", {"status": {"progress": {"step": 1}}}
        ),
        "its own spec": lambda: custom.patch_namespaced_custom_object(
            GROUP, VERSION, "default", PLURAL, "mine", {"spec": {"suspend": True}}
        ),
        "reading its job": lambda: custom.get_namespaced_custom_object(GROUP, VERSION, "default", PLURAL, "mine"),
        "a Secret": lambda: core.read_namespaced_secret("anything", "default"),
        "listing Secrets": lambda: core.list_namespaced_secret("default"),
    }
    for what, attempt in refusals.items():
        with pytest.raises(ApiException) as refused:
            attempt()
        assert refused.value.status == 403, what
        assert f'User "{account.name}" cannot' in json.loads(refused.value.body)["message"], what
