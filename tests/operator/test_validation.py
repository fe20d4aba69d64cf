"""Bad specs and missing references: phase Failed with a precise condition, an Event, no Job."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from tests.operator.cluster import Cluster, wait_for
from tests.operator.test_lifecycle import JOB, condition, phase


def with_spec(**changes: Any) -> dict[str, Any]:
    manifest = copy.deepcopy(JOB)
    manifest["spec"].update(changes)
    return manifest


def assert_rejected(cluster: Cluster, reason: str, fragment: str) -> None:
    wait_for(lambda: phase(cluster) == "Failed", what="phase Failed")
    validated = condition(cluster, "Validated")
    assert validated["status"] == "False"
    assert validated["reason"] == reason
    assert fragment in validated["message"]
    assert cluster.jobs() == [], "no Job may be created for an invalid FineTuneJob"
    events = cluster.events_for("tickets")
    assert any(e["type"] == "Warning" and fragment in e["message"] for e in events)


@pytest.mark.parametrize(
    ("spec", "fragment"),
    [
        ({"method": {"type": "qlora"}, "resources": {"gpus": 0}}, "qlora needs resources.gpus > 0"),
        ({"method": {"type": "dpo"}}, "spec.method.type"),
        ({"output": {"uri": "http://example.com/out"}}, "spec.output.uri"),
        ({"hyperparameters": {"learningRate": -1}}, "spec.hyperparameters.learningRate"),
        ({"dataset": {"sources": []}}, "spec.dataset.sources"),
    ],
)
def test_invalid_spec_fails_with_the_field(
    cluster: Cluster, operator: Any, spec: dict[str, Any], fragment: str
) -> None:
    cluster.apply(with_spec(**spec))
    assert_rejected(cluster, "InvalidSpec", fragment)


def test_missing_secret_is_caught_before_any_pod(cluster: Cluster, operator: Any) -> None:
    cluster.apply(with_spec(s3={"credentialsSecret": {"name": "s3-creds"}}))
    assert_rejected(
        cluster, "SecretNotFound", "spec.s3.credentialsSecret.name: Secret 's3-creds' not found in namespace 'default'"
    )


def test_missing_secret_key_is_caught_before_any_pod(cluster: Cluster, operator: Any) -> None:
    cluster.create_secret("s3-creds", {"AWS_ACCESS_KEY_ID": "AKIA"})
    cluster.apply(with_spec(s3={"credentialsSecret": {"name": "s3-creds"}}))
    assert_rejected(cluster, "SecretKeyMissing", "has no key 'AWS_SECRET_ACCESS_KEY'")


def test_credentials_come_from_the_secret_not_the_manifest(cluster: Cluster, operator: Any) -> None:
    cluster.create_secret("s3-creds", {"id": "AKIA", "key": "s3cr3t"})
    secret_ref = {"name": "s3-creds", "accessKeyIdKey": "id", "secretAccessKeyKey": "key"}
    cluster.apply(with_spec(s3={"endpoint": "https://minio.internal:9000", "credentialsSecret": secret_ref}))
    job = wait_for(lambda: cluster.job("tickets-preflight"), what="pre-flight Job")
    env = {e["name"]: e for e in job["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["AWS_SECRET_ACCESS_KEY"]["valueFrom"]["secretKeyRef"] == {"name": "s3-creds", "key": "key"}
    assert "s3cr3t" not in str(job)
