"""Bad specs and missing references: phase Failed with a precise condition, an Event, no Job."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest
from kubernetes.client.rest import ApiException

from kubetune.api.manifest import parse_spec
from kubetune.operator.validation import Reader, check_references
from tests.kubeapi.cluster import TestCluster, chart_crds
from tests.operator.cluster import Cluster, wait_for
from tests.operator.test_lifecycle import JOB, condition, phase


def with_spec(**changes: Any) -> dict[str, Any]:
    manifest: dict[str, Any] = copy.deepcopy(JOB)
    manifest["spec"].update(changes)
    return manifest


def assert_rejected(cluster: Cluster, reason: str, fragment: str) -> None:
    wait_for(lambda: phase(cluster) == "Failed", what="phase Failed")
    validated = condition(cluster, "Validated")
    assert validated["status"] == "False"
    assert validated["reason"] == reason
    assert fragment in validated["message"]
    assert cluster.jobs() == [], "no Job may be created for an invalid FineTuneJob"
    wait_for(
        lambda: any(e["type"] == "Warning" and fragment in e["message"] for e in cluster.events_for("tickets")),
        what=f"a Warning Event mentioning {fragment!r}",
    )


INVALID_SPECS = [
    ({"method": {"type": "qlora"}, "resources": {"gpus": 0}}, "spec.method.type", "qlora needs resources.gpus > 0"),
    ({"method": {"type": "dpo"}}, "spec.method.type", "spec.method.type"),
    ({"output": {"uri": "http://example.com/out"}}, "spec.output.uri", "spec.output.uri"),
    (
        {"hyperparameters": {"learningRate": -1}},
        "spec.hyperparameters.learningRate",
        "spec.hyperparameters.learningRate",
    ),
    ({"dataset": {"sources": []}}, "spec.dataset.sources", "spec.dataset.sources"),
]


@pytest.mark.parametrize(("spec", "field", "fragment"), INVALID_SPECS)
def test_the_api_server_refuses_an_invalid_spec_at_the_field(
    cluster: Cluster, spec: dict[str, Any], field: str, fragment: str
) -> None:
    """The CRD's schema and CEL rules, enforced by the API server: nothing is stored, nothing runs."""
    with pytest.raises(ApiException) as refused:
        cluster.apply(with_spec(**spec))
    assert refused.value.status == 422
    causes = json.loads(refused.value.body)["details"]["causes"]
    assert causes[0]["field"] == field and fragment in json.dumps(causes)


@pytest.mark.parametrize(("spec", "field", "fragment"), INVALID_SPECS)
def test_a_stored_spec_the_operator_finds_invalid_fails_with_the_field(
    test_cluster: TestCluster, cluster: Cluster, operator: Any, spec: dict[str, Any], field: str, fragment: str
) -> None:
    """A FineTuneJob stored before a stricter CRD was installed (the API server validates only on
    write): the operator refuses it with the same field, and creates nothing."""
    (crd,) = [c for c in chart_crds() if c["spec"]["names"]["kind"] == "FineTuneJob"]
    lax_version = {
        **crd["spec"]["versions"][0],
        "schema": {"openAPIV3Schema": {"type": "object", "x-kubernetes-preserve-unknown-fields": True}},
    }
    lax = {**crd, "spec": {**crd["spec"], "versions": [lax_version]}}
    installer = test_cluster.installer
    path = f"/apis/apiextensions.k8s.io/v1/customresourcedefinitions/{crd['metadata']['name']}"
    installer.call(
        "PUT",
        path,
        {
            **lax,
            "metadata": {
                **crd["metadata"],
                "resourceVersion": installer.call("GET", path)["metadata"]["resourceVersion"],
            },
        },
    )
    cluster.apply(with_spec(**spec))
    installer.call(
        "PUT",
        path,
        {
            **crd,
            "metadata": {
                **crd["metadata"],
                "resourceVersion": installer.call("GET", path)["metadata"]["resourceVersion"],
            },
        },
    )
    assert_rejected(cluster, "InvalidSpec", fragment)


def test_missing_secret_is_caught_before_any_pod(cluster: Cluster, operator: Any) -> None:
    cluster.apply(with_spec(s3={"credentialsSecret": {"name": "s3-creds"}}))
    assert_rejected(
        cluster, "SecretNotFound", "spec.s3.credentialsSecret.name: Secret 's3-creds' not found in namespace 'default'"
    )


def test_a_missing_scratch_volume_claim_is_caught_before_any_pod(cluster: Cluster, operator: Any) -> None:
    cluster.apply(with_spec(storage={"pvc": {"claimName": "scratch"}}))
    assert_rejected(cluster, "PersistentVolumeClaimNotFound", "PersistentVolumeClaim 'scratch' not found")


SPEC: dict[str, Any] = JOB["spec"]
SECRET = {"name": "creds", "sessionTokenKey": "token"}


def objects(*items: tuple[str, str, dict[str, Any]]) -> Reader:
    """A namespace's objects by (kind, name), read the way the operator reads the API."""
    store = {(kind, name): obj for kind, name, obj in items}
    return lambda kind, namespace, name: store.get((kind, name)) if namespace == "ml" else None


OPTED_IN_SECRET = ("Secret", "creds", {"metadata": {"labels": {"kubetune.dev/s3-credentials": "true"}}})
OPTED_IN_ACCOUNT = ("ServiceAccount", "s3-reader", {"metadata": {"labels": {"kubetune.dev/trainer-identity": "true"}}})


@pytest.mark.parametrize(
    ("spec", "present", "reason", "message"),
    [
        (
            {"s3": {"credentialsSecret": SECRET}},
            [("Secret", "creds", {"metadata": {"labels": {"kubetune.dev/s3-credentials": "yes"}}})],
            "SecretNotAllowed",
            "spec.s3.credentialsSecret.name: Secret 'creds' is not labelled kubetune.dev/s3-credentials=true",
        ),
        (
            {"hub": {"tokenSecret": {"name": "hub-token"}}},
            [("Secret", "hub-token", {"metadata": {"labels": {"kubetune.dev/s3-credentials": "true"}}})],
            "SecretNotAllowed",
            "spec.hub.tokenSecret.name: Secret 'hub-token' is not labelled kubetune.dev/hub-token=true",
        ),
        (
            {"hub": {"tokenSecret": {"name": "hub-token"}}},
            [],
            "SecretNotFound",
            "spec.hub.tokenSecret.name: Secret 'hub-token' not found in namespace 'ml'",
        ),
        (
            {"tracking": {"mlflow": {"credentialsSecret": {"name": "mlflow-login"}}}},
            [("Secret", "mlflow-login", {"metadata": {"labels": {"kubetune.dev/hub-token": "true"}}})],
            "SecretNotAllowed",
            "spec.tracking.mlflow.credentialsSecret.name: Secret 'mlflow-login' is not labelled "
            "kubetune.dev/mlflow-credentials=true",
        ),
        (
            {"tracking": {"mlflow": {"credentialsSecret": {"name": "mlflow-login"}}}},
            [],
            "SecretNotFound",
            "spec.tracking.mlflow.credentialsSecret.name: Secret 'mlflow-login' not found in namespace 'ml'",
        ),
        (
            {"serviceAccountName": "s3-reader"},
            [("ServiceAccount", "s3-reader", {"metadata": {}})],
            "ServiceAccountNotAllowed",
            "spec.serviceAccountName: ServiceAccount 's3-reader' is not labelled kubetune.dev/trainer-identity=true",
        ),
        (
            {"s3": {"credentialsSecret": SECRET, "caBundle": {"name": "ca"}}},
            [OPTED_IN_SECRET],
            "ConfigMapNotFound",
            "spec.s3.caBundle.name: ConfigMap 'ca' not found in namespace 'ml'",
        ),
        (
            {"s3": {"caBundle": {"name": "ca", "key": "bundle.pem"}}},
            [("ConfigMap", "ca", {"data": {"ca.crt": "PEM"}})],
            "ConfigMapKeyMissing",
            "spec.s3.caBundle.key: ConfigMap 'ca' has no key 'bundle.pem'",
        ),
        (
            {"storage": {"pvc": {"claimName": "scratch"}}},
            [],
            "PersistentVolumeClaimNotFound",
            "spec.storage.pvc.claimName: PersistentVolumeClaim 'scratch' not found in namespace 'ml'",
        ),
        (
            {"serviceAccountName": "s3-reader"},
            [],
            "ServiceAccountNotFound",
            "spec.serviceAccountName: ServiceAccount 's3-reader' not found in namespace 'ml'",
        ),
    ],
)
def test_each_reference_problem_names_its_field(
    spec: dict[str, Any], present: list[tuple[str, str, dict[str, Any]]], reason: str, message: str
) -> None:
    parsed = parse_spec({**SPEC, **spec})
    problem = check_references(parsed, "ml", objects(*present))
    assert problem is not None and (problem.reason, problem.message[: len(message)]) == (reason, message)


def test_references_that_all_exist_pass() -> None:
    parsed = parse_spec(
        {
            **SPEC,
            "s3": {"credentialsSecret": SECRET, "caBundle": {"name": "ca"}},
            "storage": {"pvc": {"claimName": "scratch"}},
            "serviceAccountName": "s3-reader",
        }
    )
    present = objects(
        OPTED_IN_SECRET,
        ("ConfigMap", "ca", {"data": {"ca.crt": "PEM"}}),
        ("PersistentVolumeClaim", "scratch", {}),
        OPTED_IN_ACCOUNT,
    )
    assert check_references(parsed, "ml", present) is None
