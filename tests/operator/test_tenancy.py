"""What a tenant may reference through a FineTuneJob: only ServiceAccounts and Secrets a namespace
admin opted in, never a system namespace or the operator's own, and a Secret's contents never
reach the operator (metadata-only reads; the trainer reads the credentials as files).

Each guardrail is shown on (refused, before any pod) and off (the opted-in object is used)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from kubetune.api.contract import ENV_S3_CREDENTIALS_DIR, S3_CREDENTIALS_DIR
from kubetune.api.v1alpha1 import GROUP, PLURAL, VERSION
from tests.kubeapi.cluster import CLUSTERWIDE, OPERATOR_NAMESPACE, TestCluster
from tests.operator.cluster import Cluster, wait_for
from tests.operator.conftest import free_port, running_operator
from tests.operator.test_validation import assert_rejected, with_spec
from tests.scrape import get

PLANTED = "planted-secret-value-4f1c9e"
SECRET_REF = {"name": "s3-creds", "accessKeyIdKey": "id", "secretAccessKeyKey": "key", "sessionTokenKey": "token"}


def secret_contents_served(test_cluster: TestCluster) -> list[tuple[str, str, str]]:
    server = test_cluster.apiserver.server
    return list(test_cluster.apiserver.call(lambda: list(server.secret_contents_served)))


def test_a_secret_nobody_opted_in_is_refused(cluster: Cluster, operator: Any) -> None:
    cluster.create_secret("s3-creds", {"id": "AKIA", "key": PLANTED}, s3_credentials=False)
    cluster.apply(with_spec(s3={"credentialsSecret": SECRET_REF}))
    assert_rejected(
        cluster,
        "SecretNotAllowed",
        "spec.s3.credentialsSecret.name: Secret 's3-creds' is not labelled kubetune.dev/s3-credentials=true",
    )


def test_an_opted_in_secret_is_mounted_as_files_and_its_contents_never_reach_the_operator(
    cluster: Cluster, test_cluster: TestCluster
) -> None:
    """The planted value is in no object the operator wrote (a Job, a ConfigMap, the FineTuneJob, an
    Event: every object of every kind but Secrets), not on its /metrics and not in its log."""
    cluster.create_secret("s3-creds", {"id": "AKIA", "key": PLANTED})  # no "token" key: the trainer says so
    port = free_port()
    with running_operator(test_cluster, KUBETUNE_METRICS_PORT=str(port)) as runner:
        cluster.apply(with_spec(s3={"endpoint": "https://s3.example.com", "credentialsSecret": SECRET_REF}))
        job = wait_for(lambda: cluster.job("tickets-preflight"), what="the pre-flight Job")
        metrics = get(f"http://127.0.0.1:{port}/metrics")
        written = [obj for path, obj in Cluster._everything(test_cluster.garbage_collector) if "/secrets/" not in path]
    assert any(obj.get("kind") == "ConfigMap" or "data" in obj for obj in written)  # the job's ConfigMap is there
    assert "tickets" in runner.output and "kubetune_" in metrics  # both were read, not empty
    assert PLANTED not in json.dumps(written) and PLANTED not in metrics and PLANTED not in runner.output
    pod = job["spec"]["template"]["spec"]
    (volume,) = [v for v in pod["volumes"] if v["name"] == "s3-credentials"]
    assert volume["secret"] == {
        "secretName": "s3-creds",
        "items": [
            {"key": "id", "path": "access-key-id"},
            {"key": "key", "path": "secret-access-key"},
            {"key": "token", "path": "session-token"},
        ],
        "optional": True,
        "defaultMode": 0o440,
    }
    (container,) = pod["containers"]
    assert {"name": "s3-credentials", "mountPath": S3_CREDENTIALS_DIR, "readOnly": True} in container["volumeMounts"]
    env = {e["name"]: e for e in container["env"]}
    assert env[ENV_S3_CREDENTIALS_DIR]["value"] == S3_CREDENTIALS_DIR
    assert not [e for e in container["env"] if "valueFrom" in e], "no credential travels as an environment variable"
    operator_user = test_cluster.operator_user.name
    assert [served for served in secret_contents_served(test_cluster) if served[0] == operator_user] == []
    seen = json.dumps([job, cluster.finetunejob("tickets"), cluster.events_for("tickets")])
    assert PLANTED not in seen


def test_a_service_account_nobody_opted_in_is_refused(cluster: Cluster, operator: Any) -> None:
    cluster.create_service_account("deployer", trainer_identity=False)
    cluster.apply(with_spec(serviceAccountName="deployer"))
    assert_rejected(
        cluster,
        "ServiceAccountNotAllowed",
        "spec.serviceAccountName: ServiceAccount 'deployer' is not labelled kubetune.dev/trainer-identity=true",
    )


def test_an_opted_in_service_account_runs_the_pods(cluster: Cluster, operator: Any) -> None:
    cluster.create_service_account("s3-reader")
    cluster.apply(with_spec(serviceAccountName="s3-reader"))
    job = wait_for(lambda: cluster.job("tickets-preflight"), what="the pre-flight Job")
    assert job["spec"]["template"]["spec"]["serviceAccountName"] == "s3-reader"


@pytest.mark.parametrize("rbac_mode", [CLUSTERWIDE], ids=["clusterwide"])
@pytest.mark.parametrize(
    ("namespace", "whose"), [("kube-system", "a system"), (OPERATOR_NAMESPACE, "the operator's own")]
)
def test_system_namespaces_and_the_operators_own_take_no_finetunejobs(
    test_cluster: TestCluster, operator: Any, namespace: str, whose: str
) -> None:
    """Only a cluster admin can create one there (tenants have no grant); the operator still refuses
    it, so the operator's ServiceAccount and the system's are never a trainer's identity."""
    admin = test_cluster.installer
    manifest = with_spec(serviceAccountName="kubetune")
    manifest["metadata"] = {**manifest["metadata"], "namespace": namespace}
    admin.create(manifest)

    def status() -> dict[str, Any]:
        job = admin.custom.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, "tickets")
        return dict(job.get("status") or {})

    wait_for(lambda: status().get("phase") == "Failed", what="phase Failed")
    (validated,) = [c for c in status()["conditions"] if c["type"] == "Validated"]
    assert validated["reason"] == "NamespaceNotAllowed"
    assert f"metadata.namespace: '{namespace}' is {whose} namespace" in validated["message"]
    assert admin.plain(admin.batch.list_namespaced_job(namespace))["items"] == []
