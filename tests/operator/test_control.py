"""Suspend/resume (with and without Kueue), deletion, restarts and foreign children."""

from __future__ import annotations

import copy
from typing import Any

from tests.kubeapi.cluster import TestCluster
from tests.operator.cluster import Cluster, wait_for
from tests.operator.conftest import running_operator
from tests.operator.test_lifecycle import JOB, phase


def foreign_job(name: str, **metadata: Any) -> dict[str, Any]:
    """A valid Job the operator did not make."""
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": name, **metadata},
        "spec": {
            "template": {"spec": {"containers": [{"name": "main", "image": "busybox"}], "restartPolicy": "Never"}}
        },
    }


def through_preflight(cluster: Cluster, manifest: dict[str, Any] = JOB) -> dict[str, Any]:
    cluster.apply(manifest)
    wait_for(lambda: cluster.job("tickets-preflight"), what="pre-flight Job")
    cluster.finish_job("tickets-preflight", succeeded=True)
    return wait_for(lambda: cluster.job("tickets-train"), what="training Job")


def job_suspended(cluster: Cluster, name: str = "tickets-train") -> bool | None:
    job = cluster.job(name)
    return None if job is None else job["spec"].get("suspend")


def test_suspend_and_resume_toggle_the_job(cluster: Cluster, operator: Any) -> None:
    through_preflight(cluster)
    cluster.start_job("tickets-train")
    wait_for(lambda: phase(cluster) == "Running", what="Running")
    cluster.patch_spec("tickets", {"suspend": True})
    wait_for(lambda: job_suspended(cluster) is True, what="Job suspended")
    cluster.set_job_status("tickets-train", {"active": 0, "ready": 0})  # the Job controller stops the pod
    wait_for(lambda: phase(cluster) == "Suspended", what="Suspended")
    cluster.patch_spec("tickets", {"suspend": False})
    wait_for(lambda: job_suspended(cluster) is False, what="Job resumed")
    cluster.start_job("tickets-train")
    wait_for(lambda: phase(cluster) == "Running", what="Running again")


def test_kueue_queue_and_workload_deactivation(test_cluster: TestCluster, cluster: Cluster, operator: Any) -> None:
    kueue = test_cluster.kueue
    manifest = copy.deepcopy(JOB)
    manifest["spec"]["queueName"] = "gpu-queue"
    job = through_preflight(cluster, manifest)
    assert job["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "gpu-queue"
    assert job["spec"]["suspend"] is True, "Kueue admits suspended Jobs"
    wait_for(lambda: phase(cluster) == "Queued", what="Queued")

    # Kueue: create the Workload for the Job, admit it (unsuspend), the pod starts.
    workload = {
        "apiVersion": "kueue.x-k8s.io/v1beta1",
        "kind": "Workload",
        "metadata": {
            "name": "job-tickets-train",
            "namespace": "default",
            "ownerReferences": [
                {
                    "apiVersion": "batch/v1",
                    "kind": "Job",
                    "name": "tickets-train",
                    "uid": job["metadata"]["uid"],
                    "controller": True,
                }
            ],
        },
        "spec": {"active": True, "queueName": "gpu-queue"},
    }
    kueue.custom.create_namespaced_custom_object("kueue.x-k8s.io", "v1beta1", "default", "workloads", workload)
    kueue.batch.patch_namespaced_job("tickets-train", "default", {"spec": {"suspend": False}})
    cluster.start_job("tickets-train")
    wait_for(lambda: phase(cluster) == "Running", what="Running after admission")

    # The user suspends: the operator deactivates the Workload instead of fighting Kueue over Job.spec.suspend.
    cluster.patch_spec("tickets", {"suspend": True})

    def workload_active() -> Any:
        return kueue.custom.get_namespaced_custom_object(
            "kueue.x-k8s.io", "v1beta1", "default", "workloads", "job-tickets-train"
        )["spec"]["active"]

    wait_for(lambda: workload_active() is False, what="Workload deactivated")
    assert job_suspended(cluster) is False, "the operator left Job.spec.suspend to Kueue"
    wait_for(lambda: phase(cluster) == "Suspended", what="Suspended")
    cluster.patch_spec("tickets", {"suspend": False})
    wait_for(lambda: workload_active() is True, what="Workload reactivated")

    # Kueue preempts: it suspends the Job again -> Queued.
    kueue.batch.patch_namespaced_job("tickets-train", "default", {"spec": {"suspend": True}})
    cluster.set_job_status("tickets-train", {"active": 0, "ready": 0})
    wait_for(lambda: phase(cluster) == "Queued", what="Queued after preemption")


def test_delete_removes_children_but_only_its_own(test_cluster: TestCluster, cluster: Cluster, operator: Any) -> None:
    through_preflight(cluster)
    keeper = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "x"}}
    cluster.core.create_namespaced_config_map("default", keeper)
    keeper_uid = cluster.core.read_namespaced_config_map("x", "default").metadata.uid
    owned_by_keeper = [{"apiVersion": "v1", "kind": "ConfigMap", "name": "x", "uid": keeper_uid, "controller": True}]
    cluster.batch.create_namespaced_job("default", foreign_job("someone-else", ownerReferences=owned_by_keeper))
    cluster.delete_finetunejob("tickets")
    removed = cluster.collect_garbage()
    for child in (
        "jobs/tickets-train",
        "jobs/tickets-preflight",
        "configmaps/tickets-spec",
        "roles/tickets-trainer",
        "rolebindings/tickets-trainer",
        "serviceaccounts/tickets-trainer",
    ):
        assert child in removed
    assert cluster.job("tickets-train") is None
    assert "jobs/someone-else" not in removed, "an object whose owner uid was never deleted stays"
    assert cluster.job("someone-else") is not None


def test_restart_mid_job_creates_no_duplicate_and_keeps_status(test_cluster: TestCluster, cluster: Cluster) -> None:
    with running_operator(test_cluster):
        through_preflight(cluster)
        cluster.start_job("tickets-train")
        wait_for(lambda: phase(cluster) == "Running", what="Running")
        before = cluster.finetunejob("tickets")["status"]
    # While the operator is down the Job finishes and the trainer reports its result.
    cluster.trainer_reports("tickets", {"result": {"version": "v7", "promoted": True}})
    cluster.finish_job("tickets-train", succeeded=True)
    with running_operator(test_cluster):
        wait_for(lambda: phase(cluster) == "Succeeded", what="Succeeded after restart")
        jobs = [j["metadata"]["name"] for j in cluster.jobs()]
        assert sorted(jobs) == ["tickets-preflight", "tickets-train"], "no duplicate Job after a restart"
        after = cluster.finetunejob("tickets")["status"]
    assert after["startTime"] == before["startTime"]
    assert after["jobName"] == before["jobName"]


def test_restart_between_job_creation_and_status_is_idempotent(test_cluster: TestCluster, cluster: Cluster) -> None:
    with running_operator(test_cluster):
        through_preflight(cluster)
        # Forget what the operator recorded, as if it died right after creating the Job.
        cluster.as_operator().custom.patch_namespaced_custom_object_status(
            "kubetune.dev",
            "v1alpha1",
            "default",
            "finetunejobs",
            "tickets",
            {"status": {"jobName": None, "phase": None}},
        )
    with running_operator(test_cluster):
        wait_for(
            lambda: cluster.finetunejob("tickets")["status"].get("jobName") == "tickets-train", what="Job re-found"
        )
        assert len([j for j in cluster.jobs() if j["metadata"]["name"] == "tickets-train"]) == 1


def test_a_job_owned_by_someone_else_is_never_adopted(cluster: Cluster, operator: Any) -> None:
    squatter = foreign_job("tickets-preflight", labels={"app.kubernetes.io/managed-by": "kubetune-operator"})
    cluster.batch.create_namespaced_job("default", squatter)
    cluster.apply(JOB)
    wait_for(lambda: phase(cluster) == "Failed", what="Failed")
    failed = next(c for c in cluster.finetunejob("tickets")["status"]["conditions"] if c["type"] == "Failed")
    assert failed["reason"] == "NameConflict"
    job = cluster.job("tickets-preflight")
    assert job is not None and not job["metadata"].get("ownerReferences"), "the foreign Job was not adopted or changed"
