"""Names the API server would refuse, children it refuses, and trainers that cannot report.

The test API server validates every child as kube-apiserver does (name and label lengths among
them), so a child a real cluster would refuse fails here too.
"""

from __future__ import annotations

import copy
from typing import Any

import pytest

from tests.kubeapi.cluster import TestCluster
from tests.operator.cluster import Cluster, wait_for
from tests.operator.test_control import through_preflight
from tests.operator.test_lifecycle import JOB, condition, phase


@pytest.mark.parametrize("length", [64, 253])
def test_a_long_finetunejob_name_works_end_to_end(cluster: Cluster, operator: Any, length: int) -> None:
    """Label values are at most 63 characters and Job names too (the pods' job-name label): the
    operator shortens what it derives from the name with a stable hash."""
    name = ("tickets-" * 40)[: length - 1] + "x"
    manifest = {**copy.deepcopy(JOB), "metadata": {"name": name}}
    cluster.apply(manifest)
    wait_for(lambda: phase(cluster, name) == "Validating", what="Validating")
    (preflight,) = cluster.jobs()
    assert len(preflight["metadata"]["name"]) <= 63
    assert all(len(value) <= 63 for value in preflight["metadata"]["labels"].values())
    assert preflight["metadata"]["annotations"]["kubetune.dev/finetunejob"] == name
    cluster.finish_job(preflight["metadata"]["name"], succeeded=True)
    wait_for(lambda: len(cluster.jobs()) == 2, what="the training Job")
    training = cluster.finetunejob(name)["status"]["jobName"]
    cluster.start_job(training)
    cluster.trainer_reports(name, {"result": {"version": "v1", "promoted": True}})
    cluster.finish_job(training, succeeded=True)
    wait_for(lambda: phase(cluster, name) == "Succeeded", what="Succeeded")
    # The phase Event follows the status write that announced the phase: wait for it, under load too.
    wait_for(lambda: len(cluster.events_for(name)) >= 4, what="phase Events (valid names too)")


def test_a_child_the_api_server_refuses_fails_the_finetunejob_with_its_message(
    test_cluster: TestCluster, cluster: Cluster, operator: Any
) -> None:
    """A platform's admission policy refuses the training Job: Failed at once, in the API's words."""
    policy = {
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "ValidatingAdmissionPolicy",
        "metadata": {"name": "one-gpu-per-job"},
        "spec": {
            "failurePolicy": "Fail",
            "matchConstraints": {
                "resourceRules": [
                    {"apiGroups": ["batch"], "apiVersions": ["v1"], "operations": ["CREATE"], "resources": ["jobs"]}
                ]
            },
            "validations": [
                {
                    "expression": "object.spec.template.spec.containers.all(c, !has(c.resources.limits) || "
                    "!('nvidia.com/gpu' in c.resources.limits) || int(c.resources.limits['nvidia.com/gpu']) <= 1)",
                    "message": "at most one GPU per Job in this cluster",
                }
            ],
        },
    }
    binding = {
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "ValidatingAdmissionPolicyBinding",
        "metadata": {"name": "one-gpu-per-job"},
        "spec": {"policyName": "one-gpu-per-job", "validationActions": ["Deny"]},
    }
    test_cluster.installer.create(policy)
    test_cluster.installer.create(binding)
    cluster.apply(JOB)  # two GPUs
    wait_for(lambda: cluster.job("tickets-preflight"), what="the pre-flight Job (no GPU)")
    cluster.finish_job("tickets-preflight", succeeded=True)
    wait_for(lambda: phase(cluster) == "Failed", what="Failed")
    failed = condition(cluster, "Failed")
    assert failed["reason"] == "ChildRefused"
    assert "the API server refused to create Job tickets-train: HTTP 422" in failed["message"]
    assert "ValidatingAdmissionPolicy 'one-gpu-per-job'" in failed["message"]
    assert "at most one GPU per Job in this cluster" in failed["message"]
    assert cluster.job("tickets-train") is None


@pytest.mark.parametrize(
    ("exit_code", "said", "reason", "quoted"),
    [
        (
            3,
            'TrainerCannotReport: HTTP 403 Forbidden: finetunejobs.kubetune.dev "tickets" is forbidden',
            "TrainerCannotReport",
            "HTTP 403 Forbidden",
        ),
        (3, "", "TrainerCannotReport", "could not write the FineTuneJob status"),
        (
            4,
            "ResultNotReported: v3 published at s3://models/tickets/v3/manifest.json, but the FineTuneJob status could not be written: HTTP 500",
            "ResultNotReported",
            "s3://models/tickets/v3/manifest.json",
        ),
    ],
)
def test_a_trainer_that_could_not_report_says_why_through_its_pod(
    cluster: Cluster, operator: Any, exit_code: int, said: str, reason: str, quoted: str
) -> None:
    """The trainer's exit code fails the Job at once (pod failure policy), and the operator reads the
    why from the pod's termination message, since the trainer could not write it into status."""
    through_preflight(cluster)
    cluster.start_job("tickets-train")
    wait_for(lambda: phase(cluster) == "Running", what="Running")
    cluster.finish_job("tickets-train", succeeded=False, exit_code=exit_code, termination_message=said)
    wait_for(lambda: phase(cluster) == "Failed", what="Failed")
    failed = condition(cluster, "Failed")
    assert failed["reason"] == reason
    assert quoted in failed["message"]
