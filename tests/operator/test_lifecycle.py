"""The whole lifecycle with the real operator against the emulated API server."""

from __future__ import annotations

from typing import Any

from tests.builders import trainer_result
from tests.operator.cluster import Cluster, wait_for

JOB: dict[str, Any] = {
    "apiVersion": "kubetune.dev/v1alpha1",
    "kind": "FineTuneJob",
    "metadata": {"name": "tickets"},
    "spec": {
        "dataset": {"sources": [{"uri": "s3://datasets/tickets.jsonl"}]},
        "output": {"uri": "s3://models/tickets/"},
        "resources": {"gpus": 2},
    },
}


def phase(cluster: Cluster, name: str = "tickets") -> str | None:
    return cluster.finetunejob(name).get("status", {}).get("phase")


def condition(cluster: Cluster, kind: str, name: str = "tickets") -> dict[str, Any]:
    conditions = cluster.finetunejob(name).get("status", {}).get("conditions", [])
    return next((c for c in conditions if c["type"] == kind), {})


def test_create_preflight_then_training_job_then_success(cluster: Cluster, operator: Any) -> None:
    cluster.apply(JOB)
    preflight = wait_for(lambda: cluster.job("tickets-preflight"), what="pre-flight Job")
    container = preflight["spec"]["template"]["spec"]["containers"][0]
    assert "nvidia.com/gpu" not in container["resources"].get("requests", {})
    assert container["command"][:2] == ["kubetune", "preflight"]
    wait_for(lambda: phase(cluster) == "Validating", what="phase Validating")
    assert cluster.job("tickets-train") is None, "no GPU Job before the pre-flight passed"

    cluster.trainer_reports("tickets", {"preflight": {"passed": True, "message": "fits: 3.1 GiB"}})
    cluster.finish_job("tickets-preflight", succeeded=True)
    train = wait_for(lambda: cluster.job("tickets-train"), what="training Job")
    pod = train["spec"]["template"]["spec"]
    assert pod["containers"][0]["resources"]["requests"]["nvidia.com/gpu"] == "2"
    assert pod["containers"][0]["command"][0] == "torchrun"
    assert pod["containers"][0]["securityContext"]["readOnlyRootFilesystem"] is True
    owner = cluster.finetunejob("tickets")["metadata"]["uid"]
    assert train["metadata"]["ownerReferences"][0]["uid"] == owner
    wait_for(lambda: condition(cluster, "Validated")["status"] == "True", what="Validated=True")

    cluster.start_job("tickets-train")
    wait_for(lambda: phase(cluster) == "Running", what="phase Running")
    cluster.trainer_reports("tickets", {"progress": {"step": 10, "totalSteps": 40, "trainLoss": 1.5}})
    wait_for(lambda: cluster.finetunejob("tickets")["status"].get("progressText") == "10/40", what="progress")

    cluster.trainer_reports("tickets", {"result": trainer_result()})
    cluster.finish_job("tickets-train", succeeded=True)
    # A promotion is checked against the published manifest before the phase is Succeeded.
    wait_for(lambda: condition(cluster, "Running")["reason"] == "VerifyingPromotion", what="verifying")
    verification = cluster.verify_promotion("tickets")
    assert verification["spec"]["template"]["spec"]["containers"][0]["command"][:2] == ["kubetune", "verify"]
    wait_for(lambda: phase(cluster) == "Succeeded", what="phase Succeeded")
    status = cluster.finetunejob("tickets")["status"]
    assert status["jobName"] == "tickets-train"
    assert status["completionTime"]
    assert condition(cluster, "QualityGatePassed")["status"] == "True"
    reasons = [e["reason"] for e in cluster.events_for("tickets")]
    for expected in ("PhaseValidating", "PhaseRunning", "PhaseSucceeded"):
        assert expected in reasons


def test_training_failure_sets_failed_with_reason(cluster: Cluster, operator: Any) -> None:
    cluster.apply(JOB)
    wait_for(lambda: cluster.job("tickets-preflight"), what="pre-flight Job")
    cluster.finish_job("tickets-preflight", succeeded=True)
    wait_for(lambda: cluster.job("tickets-train"), what="training Job")
    cluster.finish_job(
        "tickets-train",
        succeeded=False,
        reason="BackoffLimitExceeded",
        message="Job has reached the specified backoff limit",
    )
    wait_for(lambda: phase(cluster) == "Failed", what="phase Failed")
    failed = condition(cluster, "Failed")
    assert failed["status"] == "True"
    assert failed["reason"] == "TrainingFailed"
    assert "BackoffLimitExceeded" in failed["message"]
    events = cluster.events_for("tickets")
    assert any(e["type"] == "Warning" and e["reason"] == "PhaseFailed" for e in events)


def test_preflight_failure_never_requests_a_gpu(cluster: Cluster, operator: Any) -> None:
    cluster.apply(JOB)
    wait_for(lambda: cluster.job("tickets-preflight"), what="pre-flight Job")
    message = "estimated 31.2 GiB peak memory for full of 7.00 B params exceeds the 24.0 GiB"
    cluster.trainer_reports("tickets", {"preflight": {"passed": False, "message": message}})
    cluster.finish_job("tickets-preflight", succeeded=False, reason="PodFailurePolicy")
    expected = ("False", "PreflightFailed", message)
    # Level-based: the trainer's report and the Job's failure may be seen in either order.
    wait_for(
        lambda: tuple(condition(cluster, "Validated").get(k) for k in ("status", "reason", "message")) == expected,
        what=str(expected),
    )
    assert phase(cluster) == "Failed"
    assert cluster.job("tickets-train") is None


def test_quality_gate_missed_is_succeeded_but_not_promoted(cluster: Cluster, operator: Any) -> None:
    cluster.apply(JOB)
    wait_for(lambda: cluster.job("tickets-preflight"), what="pre-flight Job")
    cluster.finish_job("tickets-preflight", succeeded=True)
    wait_for(lambda: cluster.job("tickets-train"), what="training Job")
    gate = "accuracy 0.4000 -> 0.4200 (relative improvement +5.0%, required +15.0%): missed"
    cluster.trainer_reports("tickets", {"result": {"version": "v2", "promoted": False, "qualityGateMessage": gate}})
    cluster.finish_job("tickets-train", succeeded=True)
    expected = ("False", "QualityGateNotMet", gate)
    wait_for(
        lambda: (
            tuple(condition(cluster, "QualityGatePassed").get(k) for k in ("status", "reason", "message")) == expected
        ),
        what=str(expected),
    )
    assert phase(cluster) == "Succeeded"
