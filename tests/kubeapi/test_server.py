"""The test API server refuses what kube-apiserver refuses, through real clients over HTTPS."""

from __future__ import annotations

import json
import ssl
import threading
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client, watch
from kubernetes.client.rest import ApiException

from tests.kubeapi.cluster import TENANT, TestCluster
from tests.kubeapi.model import UserInfo
from tests.kubeapi.runner import ApiServerThread

GROUP, VERSION, PLURAL = "kubetune.dev", "v1alpha1", "finetunejobs"
JOB: dict[str, Any] = {
    "apiVersion": "kubetune.dev/v1alpha1",
    "kind": "FineTuneJob",
    "metadata": {"name": "tickets"},
    "spec": {"dataset": {"sources": [{"uri": "s3://data/x.jsonl"}]}, "output": {"uri": "s3://models/x/"}},
}


@pytest.fixture()
def installed(apiserver: ApiServerThread, tmp_path: Path) -> TestCluster:
    return TestCluster(apiserver, tmp_path / "cluster")


def raw_get(apiserver: ApiServerThread, path: str, token: str | None) -> tuple[int, dict[str, Any]]:
    context = ssl.create_default_context(cafile=str(apiserver.pki.ca_path))
    request = urllib.request.Request(apiserver.url + path)
    if token is not None:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, context=context, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def status_of(err: ApiException) -> dict[str, Any]:
    return dict(json.loads(err.body))


# ---------------------------------------------------------------------- authentication and TLS
def test_requests_without_a_known_token_get_401(apiserver: ApiServerThread) -> None:
    assert raw_get(apiserver, "/version", None)[0] == 401
    code, body = raw_get(apiserver, "/api/v1/namespaces", "not-a-token")
    assert code == 401 and body["reason"] == "Unauthorized" and body["kind"] == "Status"
    token = apiserver.issue_token(TENANT)
    assert raw_get(apiserver, "/version", token)[0] == 200
    apiserver.server.authn.revoke(token)
    assert raw_get(apiserver, "/version", token)[0] == 401


def test_the_server_certificate_verifies_only_against_the_cluster_ca(apiserver: ApiServerThread) -> None:
    with pytest.raises(urllib.error.URLError, match="CERTIFICATE_VERIFY_FAILED"):
        urllib.request.urlopen(apiserver.url + "/version", context=ssl.create_default_context(), timeout=10)


# ---------------------------------------------------------------------- authorization
def test_rbac_decides_and_the_403_names_user_verb_and_resource(installed: TestCluster) -> None:
    stranger = installed.identity(UserInfo.user("mallory"))
    with pytest.raises(ApiException) as refused:
        stranger.custom.list_namespaced_custom_object(GROUP, VERSION, "default", PLURAL)
    assert refused.value.status == 403
    assert status_of(refused.value)["message"] == (
        'finetunejobs.kubetune.dev is forbidden: User "mallory" cannot list resource "finetunejobs" '
        'in API group "kubetune.dev" in the namespace "default"'
    )
    # The tenant holds `edit` in its namespaces, extended to FineTuneJobs by the chart's aggregated role.
    assert installed.tenant.custom.list_namespaced_custom_object(GROUP, VERSION, "default", PLURAL)["items"] == []
    with pytest.raises(ApiException) as elsewhere:
        installed.tenant.custom.list_namespaced_custom_object(GROUP, VERSION, "kube-system", PLURAL)
    assert elsewhere.value.status == 403


def test_creating_a_role_with_permissions_one_lacks_is_an_escalation(installed: TestCluster) -> None:
    """A namespace admin may create Roles, but only with permissions it holds itself."""
    installed.installer.create(
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "RoleBinding",
            "metadata": {"name": "bob-admin", "namespace": "default"},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "admin"},
            "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": "bob"}],
        }
    )
    admin = installed.identity(UserInfo.user("bob"))
    allowed = {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "Role",
        "metadata": {"name": "reader", "namespace": "default"},
        "rules": [{"apiGroups": [""], "resources": ["configmaps"], "verbs": ["get"]}],
    }
    admin.rbac.create_namespaced_role("default", allowed)
    role = {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "Role",
        "metadata": {"name": "sneaky", "namespace": "default"},
        "rules": [{"apiGroups": [""], "resources": ["nodes"], "verbs": ["get"]}],
    }
    with pytest.raises(ApiException) as refused:
        admin.rbac.create_namespaced_role("default", role)
    assert refused.value.status == 403
    assert "attempting to grant RBAC permissions not currently held" in status_of(refused.value)["message"]


# ---------------------------------------------------------------------- validation and semantics
def test_a_custom_resource_is_validated_by_its_crd_schema(installed: TestCluster) -> None:
    bad = {**JOB, "spec": {**JOB["spec"], "hyperparameters": {"learningRate": "fast"}}}
    with pytest.raises(ApiException) as refused:
        installed.tenant.custom.create_namespaced_custom_object(GROUP, VERSION, "default", PLURAL, bad)
    assert refused.value.status == 422
    causes = status_of(refused.value)["details"]["causes"]
    assert causes[0]["field"] == "spec.hyperparameters.learningRate"
    # As kube-apiserver says when a schema error keeps CEL rules from running:
    assert causes[1]["message"].endswith(
        "some validation rules were not checked because the object was invalid; correct the existing errors to complete validation"
    )


def test_status_and_spec_change_only_through_their_own_endpoints(installed: TestCluster) -> None:
    custom = installed.tenant.custom
    created = custom.create_namespaced_custom_object(
        GROUP, VERSION, "default", PLURAL, {**JOB, "status": {"phase": "Running"}}
    )
    assert "status" not in created, "status is dropped on create"
    assert created["metadata"]["generation"] == 1 and created["metadata"]["uid"]
    operator = installed.identity(installed.operator_user).custom
    written = operator.patch_namespaced_custom_object_status(
        GROUP, VERSION, "default", PLURAL, "tickets", {"status": {"phase": "Validating"}, "spec": {"suspend": True}}
    )
    assert written["status"]["phase"] == "Validating" and written["spec"]["suspend"] is False
    assert written["metadata"]["generation"] == 1, "a status write is not a spec change"
    patched = custom.patch_namespaced_custom_object(
        GROUP, VERSION, "default", PLURAL, "tickets", {"spec": {"suspend": True}, "status": {"phase": "Failed"}}
    )
    assert patched["spec"]["suspend"] is True and patched["status"]["phase"] == "Validating"
    assert patched["metadata"]["generation"] == 2


def test_a_stale_resource_version_is_a_conflict(installed: TestCluster) -> None:
    custom = installed.tenant.custom
    created = custom.create_namespaced_custom_object(GROUP, VERSION, "default", PLURAL, JOB)
    custom.patch_namespaced_custom_object(GROUP, VERSION, "default", PLURAL, "tickets", {"spec": {"suspend": True}})
    stale = {**created, "spec": {**created["spec"], "suspend": False}}
    with pytest.raises(ApiException) as refused:
        custom.replace_namespaced_custom_object(GROUP, VERSION, "default", PLURAL, "tickets", stale)
    assert refused.value.status == 409 and status_of(refused.value)["reason"] == "Conflict"


def test_strategic_merge_patch_is_refused_for_custom_resources(installed: TestCluster) -> None:
    installed.tenant.custom.create_namespaced_custom_object(GROUP, VERSION, "default", PLURAL, JOB)
    with pytest.raises(ApiException) as refused:
        installed.tenant.call(
            "PATCH",
            f"/apis/{GROUP}/{VERSION}/namespaces/default/{PLURAL}/tickets",
            {"spec": {"suspend": True}},
            "application/strategic-merge-patch+json",
        )
    assert refused.value.status == 415


def test_objects_go_only_into_namespaces_that_exist(installed: TestCluster) -> None:
    config_map = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "x"}}
    with pytest.raises(ApiException) as refused:
        installed.installer.core.create_namespaced_config_map("nowhere", config_map)
    assert refused.value.status == 404


def test_a_finalizer_holds_deletion_until_it_is_removed(installed: TestCluster) -> None:
    custom = installed.tenant.custom
    custom.create_namespaced_custom_object(
        GROUP, VERSION, "default", PLURAL, {**JOB, "metadata": {"name": "tickets", "finalizers": ["example.com/hold"]}}
    )
    custom.delete_namespaced_custom_object(GROUP, VERSION, "default", PLURAL, "tickets")
    held = custom.get_namespaced_custom_object(GROUP, VERSION, "default", PLURAL, "tickets")
    assert held["metadata"]["deletionTimestamp"]
    with pytest.raises(ApiException) as refused:
        custom.patch_namespaced_custom_object(
            GROUP,
            VERSION,
            "default",
            PLURAL,
            "tickets",
            {"metadata": {"finalizers": ["example.com/hold", "example.com/more"]}},
        )
    assert refused.value.status == 422
    custom.patch_namespaced_custom_object(
        GROUP, VERSION, "default", PLURAL, "tickets", {"metadata": {"finalizers": None}}
    )
    with pytest.raises(ApiException) as gone:
        custom.get_namespaced_custom_object(GROUP, VERSION, "default", PLURAL, "tickets")
    assert gone.value.status == 404


# ---------------------------------------------------------------------- watches
def _events(api: client.CustomObjectsApi, resource_version: str, timeout: int = 2) -> list[tuple[str, str, Any]]:
    stream = watch.Watch().stream(
        api.list_namespaced_custom_object,
        GROUP,
        VERSION,
        "default",
        PLURAL,
        resource_version=resource_version,
        timeout_seconds=timeout,
    )
    return [(e["type"], e["object"]["metadata"]["name"] if e["type"] != "ERROR" else "", e["object"]) for e in stream]


def test_a_watch_resumes_from_a_resource_version_without_missing_events(installed: TestCluster) -> None:
    custom = installed.tenant.custom
    listed = custom.list_namespaced_custom_object(GROUP, VERSION, "default", PLURAL)
    for name in ("a", "b"):
        custom.create_namespaced_custom_object(GROUP, VERSION, "default", PLURAL, {**JOB, "metadata": {"name": name}})
    custom.delete_namespaced_custom_object(GROUP, VERSION, "default", PLURAL, "a")
    seen = [(kind, name) for kind, name, _ in _events(custom, listed["metadata"]["resourceVersion"])]
    assert seen == [("ADDED", "a"), ("ADDED", "b"), ("DELETED", "a")], (
        "events between the list and the watch are replayed"
    )


def test_a_watch_from_a_compacted_version_gets_410_gone(installed: TestCluster) -> None:
    custom = installed.tenant.custom
    listed = custom.list_namespaced_custom_object(GROUP, VERSION, "default", PLURAL)
    custom.create_namespaced_custom_object(GROUP, VERSION, "default", PLURAL, JOB)
    installed.apiserver.call(installed.apiserver.server.store.compact)
    with pytest.raises(ApiException) as gone:
        _events(custom, listed["metadata"]["resourceVersion"])
    assert gone.value.status == 410


def test_watchers_see_writes_made_while_they_watch(installed: TestCluster) -> None:
    custom = installed.tenant.custom
    listed = custom.list_namespaced_custom_object(GROUP, VERSION, "default", PLURAL)
    seen: list[tuple[str, str, Any]] = []
    watcher = threading.Thread(
        target=lambda: seen.extend(_events(custom, listed["metadata"]["resourceVersion"], timeout=3))
    )
    watcher.start()
    custom.create_namespaced_custom_object(GROUP, VERSION, "default", PLURAL, JOB)
    custom.patch_namespaced_custom_object(GROUP, VERSION, "default", PLURAL, "tickets", {"spec": {"suspend": True}})
    watcher.join(10)
    assert [kind for kind, _, _ in seen] == ["ADDED", "MODIFIED"]
    assert seen[1][2]["spec"]["suspend"] is True


def test_a_job_is_orphaned_by_default_and_deleted_at_once_when_asked_in_the_query(installed: TestCluster) -> None:
    """batch/v1 Jobs default to the Orphan policy (an ``orphan`` finalizer the garbage collector removes);
    client libraries send ``propagationPolicy`` as a query parameter, which the real API server honours."""
    job = {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": "x"},
        "spec": {
            "template": {"spec": {"containers": [{"name": "main", "image": "busybox"}], "restartPolicy": "Never"}}
        },
    }
    batch = installed.tenant.batch
    batch.create_namespaced_job("default", job)
    batch.delete_namespaced_job("x", "default")
    held = installed.tenant.plain(batch.read_namespaced_job("x", "default"))
    assert held["metadata"]["finalizers"] == ["orphan"]
    batch.create_namespaced_job("default", {**job, "metadata": {"name": "y"}})
    batch.delete_namespaced_job("y", "default", propagation_policy="Background")
    with pytest.raises(ApiException) as gone:
        batch.read_namespaced_job("y", "default")
    assert gone.value.status == 404
