"""A promotion the trainer reports is checked against the version it published before the operator
says so: the operator's verification Job runs the real ``kubetune verify`` (played by the kubelet
fixture, as the other pods are) on the published version, with the tenant's storage access and the
platform's image, and its Job's verdict decides QualityGatePassed.

The version is published by the trainer's own ``publish_run`` to a local folder (``file://``), so the
manifest and its artifacts are exactly what a training pod leaves; the trainer's report goes through
the API server with the trainer's token.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from kubetune.api.contract import EXIT_DAMAGED, EXIT_OK
from kubetune_trainer.publish import publish_run
from kubetune_trainer.storage import ObjectStore
from tests.builders import trainer_result
from tests.kubeapi.cluster import CLUSTERWIDE
from tests.operator.cluster import Cluster, wait_for
from tests.operator.test_end_to_end import run_pod
from tests.operator.test_lifecycle import condition, phase

CHECKS = [
    {"name": "task", "passed": True, "detail": "accuracy 0.40 -> 0.90"},
    {"name": "forgetting.knownAnswers", "passed": True, "detail": "known answers 41% -> 42%"},
]


def publish(tmp_path: Path, uid: str, *, promoted: bool, checks: list[dict[str, Any]]) -> tuple[str, str]:
    """A published version as a training pod leaves it: (version, manifest URI)."""
    artifacts = tmp_path / "artifacts"
    (artifacts / "adapter").mkdir(parents=True)
    (artifacts / "adapter" / "adapter_model.safetensors").write_bytes(b"weights" * 100)
    manifest = {
        "job": {"name": "tickets", "namespace": "default", "uid": uid},
        "evaluation": {"gate": {"passed": promoted, "checks": checks}},
        "promoted": promoted,
    }
    published = publish_run(artifacts, f"file://{tmp_path}/out/", ObjectStore(), manifest)
    return published.version, published.manifest_uri


def trained(cluster: Cluster, tmp_path: Path) -> str:
    """A FineTuneJob through its pre-flight and running: its uid."""
    cluster.apply(
        {
            "apiVersion": "kubetune.dev/v1alpha1",
            "kind": "FineTuneJob",
            "metadata": {"name": "tickets"},
            "spec": {
                "dataset": {"sources": [{"uri": f"file://{tmp_path}/data.jsonl"}]},
                "output": {"uri": f"file://{tmp_path}/out/", "channel": "prod"},
                "resources": {"gpus": 0},
            },
        }
    )
    wait_for(lambda: cluster.job("tickets-preflight"), what="pre-flight Job")
    cluster.trainer_reports("tickets", {"preflight": {"passed": True}})
    cluster.finish_job("tickets-preflight", succeeded=True)
    wait_for(lambda: cluster.job("tickets-train"), what="training Job")
    cluster.start_job("tickets-train")
    return str(cluster.finetunejob("tickets")["metadata"]["uid"])


def report_promoted(cluster: Cluster, version: str, manifest_uri: str) -> None:
    result = {**trainer_result(version), "manifestUri": manifest_uri, "gateChecks": CHECKS}
    cluster.trainer_reports("tickets", {"result": result})
    cluster.finish_job("tickets-train", succeeded=True)


@pytest.mark.parametrize("rbac_mode", [CLUSTERWIDE], ids=["clusterwide"])
@pytest.mark.parametrize("backed", [True, False], ids=["manifest-agrees", "manifest-disagrees"])
def test_a_reported_promotion_stands_only_when_the_published_manifest_says_so(
    tmp_path: Path, cluster: Cluster, operator: Any, backed: bool
) -> None:
    uid = trained(cluster, tmp_path)
    # Disagreeing: the run missed its gate and its manifest says so, but the report claims promotion.
    published_checks = CHECKS if backed else [{**CHECKS[0], "passed": False}, CHECKS[1]]
    version, manifest_uri = publish(tmp_path, uid, promoted=backed, checks=published_checks)
    report_promoted(cluster, version, manifest_uri)
    wait_for(lambda: condition(cluster, "Running").get("reason") == "VerifyingPromotion", what="verifying")
    assert "QualityGatePassed" not in {c["type"] for c in cluster.finetunejob("tickets")["status"]["conditions"]}

    code = run_pod(cluster, "tickets-verify", tmp_path, expected_exits=(EXIT_OK, EXIT_DAMAGED))
    assert code == (EXIT_OK if backed else EXIT_DAMAGED)
    wait_for(lambda: phase(cluster) == "Succeeded", what="Succeeded")
    gate = condition(cluster, "QualityGatePassed")
    entries = sorted((tmp_path / "out" / "channels" / "prod").glob("*.json"))
    if backed:
        assert (gate["status"], gate["reason"]) == ("True", "QualityGatePassed")
        (entry,) = entries  # the verified version joined spec.output.channel
        assert json.loads(entry.read_text())["version"] == version
    else:
        assert entries == [], "an unverified promotion moves no channel"
        assert (gate["status"], gate["reason"]) == ("False", "PromotionNotVerified")
        assert "the published manifest does not back it" in gate["message"]
        assert "the manifest says promoted: false" in gate["message"], gate["message"]


@pytest.mark.parametrize("rbac_mode", [CLUSTERWIDE], ids=["clusterwide"])
def test_an_artifact_changed_after_publishing_fails_the_verification(
    tmp_path: Path, cluster: Cluster, operator: Any
) -> None:
    uid = trained(cluster, tmp_path)
    version, manifest_uri = publish(tmp_path, uid, promoted=True, checks=CHECKS)
    (tmp_path / "out" / version / "adapter" / "adapter_model.safetensors").write_bytes(b"other weights")
    report_promoted(cluster, version, manifest_uri)
    wait_for(lambda: cluster.job("tickets-verify"), what="the verification Job")
    assert run_pod(cluster, "tickets-verify", tmp_path, expected_exits=(EXIT_DAMAGED,)) == EXIT_DAMAGED
    wait_for(lambda: condition(cluster, "QualityGatePassed").get("reason") == "PromotionNotVerified", what="refused")
    assert "adapter_model.safetensors: sha256" in condition(cluster, "QualityGatePassed")["message"]


@pytest.mark.parametrize("rbac_mode", [CLUSTERWIDE], ids=["clusterwide"])
def test_a_verification_job_made_by_the_tenant_is_not_the_operators_check(
    tmp_path: Path, cluster: Cluster, operator: Any
) -> None:
    """The tenant names a Job of its own as the check, owned by its FineTuneJob (anyone who can create
    a Job can write that ownerReference), running a command that always succeeds."""
    uid = trained(cluster, tmp_path)
    forged = {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {
            "name": "tickets-verify",
            "ownerReferences": [
                {
                    "apiVersion": "kubetune.dev/v1alpha1",
                    "kind": "FineTuneJob",
                    "name": "tickets",
                    "uid": uid,
                    "controller": True,
                }
            ],
        },
        "spec": {
            "template": {
                "spec": {
                    "restartPolicy": "Never",
                    "containers": [{"name": "trainer", "image": "trainer:test", "command": ["true"]}],
                }
            }
        },
    }
    cluster.batch.create_namespaced_job("default", forged)
    cluster.start_job("tickets-verify")
    cluster.finish_job("tickets-verify", succeeded=True)
    version, manifest_uri = publish(tmp_path, uid, promoted=True, checks=CHECKS)
    report_promoted(cluster, version, manifest_uri)
    wait_for(lambda: phase(cluster) == "Succeeded", what="Succeeded")
    gate = condition(cluster, "QualityGatePassed")
    assert (gate["status"], gate["reason"]) == ("False", "PromotionNotVerified")
    assert "does not run the check the operator builds" in gate["message"]
