"""What a real cluster throws at the operator: API outages, Jobs removed by TTL or by hand."""

from __future__ import annotations

from typing import Any

from kubetune.operator.children import training_job_name
from tests.builders import trainer_result
from tests.kubeapi.cluster import TestCluster
from tests.kubeapi.server import Outage
from tests.operator.cluster import Cluster, wait_for
from tests.operator.conftest import running_operator
from tests.operator.test_control import through_preflight
from tests.operator.test_lifecycle import JOB, condition, phase


def training_jobs(cluster: Cluster) -> list[str]:
    return [j["metadata"]["name"] for j in cluster.jobs() if j["metadata"]["name"] == training_job_name("tickets")]


def test_an_api_outage_while_creating_the_training_job_is_retried(cluster: Cluster, operator: Any) -> None:
    cluster.apply(JOB)
    wait_for(lambda: cluster.job("tickets-preflight"), what="pre-flight Job")
    wait_for(lambda: phase(cluster) == "Validating", what="the operator idle")
    # More refusals than the Job's status change causes watch events: only retries get through.
    outage = cluster.outage(Outage(verb="create", plural="jobs", name="tickets-train", count=3))
    cluster.finish_job("tickets-preflight", succeeded=True)
    wait_for(lambda: cluster.job("tickets-train"), timeout=30, what="training Job after the outage")
    assert outage.refused == 3, "the operator met the outage and retried through it"
    assert training_jobs(cluster) == ["tickets-train"]
    wait_for(lambda: phase(cluster) == "Queued", what="Queued")


def test_a_finished_job_removed_by_its_ttl_is_never_rerun(cluster: Cluster, operator: Any) -> None:
    through_preflight(cluster)
    cluster.start_job("tickets-train")
    cluster.trainer_reports("tickets", {"result": trainer_result()})
    cluster.finish_job("tickets-train", succeeded=True)
    cluster.verify_promotion("tickets")
    wait_for(lambda: phase(cluster) == "Succeeded", what="Succeeded")
    cluster.delete_job("tickets-train")  # ttlSecondsAfterFinished
    cluster.patch_spec("tickets", {"suspend": True})  # any later change makes the operator look again
    wait_for(lambda: cluster.finetunejob("tickets")["status"].get("observedGeneration") == 2, what="generation 2 seen")
    assert cluster.job("tickets-train") is None, "a finished training is not run again"
    assert phase(cluster) == "Succeeded"
    assert condition(cluster, "QualityGatePassed")["status"] == "True"


def test_a_running_job_deleted_by_hand_fails_the_finetunejob(cluster: Cluster, operator: Any) -> None:
    through_preflight(cluster)
    cluster.start_job("tickets-train")
    wait_for(lambda: phase(cluster) == "Running", what="Running")
    cluster.delete_job("tickets-train")
    wait_for(lambda: phase(cluster) == "Failed", what="Failed")
    assert condition(cluster, "Failed")["reason"] == "TrainingJobLost"
    assert cluster.job("tickets-train") is None


def test_a_job_finished_and_removed_while_the_operator_was_down(test_cluster: TestCluster, cluster: Cluster) -> None:
    with running_operator(test_cluster):
        through_preflight(cluster)
        cluster.start_job("tickets-train")
        wait_for(lambda: phase(cluster) == "Running", what="Running")
    cluster.trainer_reports("tickets", {"result": {"version": "v9", "promoted": False}})
    cluster.finish_job("tickets-train", succeeded=True)
    cluster.delete_job("tickets-train")
    with running_operator(test_cluster):
        wait_for(lambda: phase(cluster) == "Succeeded", what="Succeeded from the trainer's result")
        assert "v9" in condition(cluster, "Succeeded")["message"]
        assert condition(cluster, "QualityGatePassed")["reason"] == "QualityGateNotMet"
        assert cluster.job("tickets-train") is None


def test_a_preflight_job_deleted_before_it_ran_is_made_again(cluster: Cluster, operator: Any) -> None:
    cluster.apply(JOB)
    first = wait_for(lambda: cluster.job("tickets-preflight"), what="pre-flight Job")
    jobs = cluster.test_cluster.job_controller.batch
    jobs.delete_namespaced_job("tickets-preflight", "default", propagation_policy="Background")  # as kubectl does

    def made_again() -> dict[str, Any] | None:
        job = cluster.job("tickets-preflight")
        return job if job is not None and job["metadata"]["uid"] != first["metadata"]["uid"] else None

    wait_for(made_again, what="a new pre-flight Job")
    assert phase(cluster) == "Validating"
