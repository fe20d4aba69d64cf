"""The chart's ValidatingAdmissionPolicies installed in the test API server and met through what each
party holds: a tenant's FineTuneJob run by the real operator, the trainer's own ServiceAccount token
patching its status, and the operator's credentials used by hand (as a compromised operator would).

Each refusal is shown with the policies installed (refused, in the policy's words) and with the chart
installed with ``admissionPolicy.enabled=false`` (accepted); where the status was forged, the operator
still derives phase, conditions and the promotion itself. The rendered policies, request by request:
tests/helm/test_admission_policy.py."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest
from kubernetes.client.rest import ApiException

from kubetune.operator import children
from kubetune.operator.config import OperatorConfig
from tests.builders import spec, trainer_result
from tests.kubeapi.cluster import CLUSTERWIDE, OPERATOR_NAMESPACE, RbacMode, TestCluster
from tests.kubeapi.runner import ApiServerThread
from tests.operator.cluster import Cluster, wait_for
from tests.operator.test_lifecycle import JOB, condition, phase

TRAINER_ONLY = "a trainer may change only status.progress, status.preflight, status.resolved and status.result"


@pytest.fixture(params=[True, False], ids=["policy-on", "policy-off"])
def policy(request: pytest.FixtureRequest) -> bool:
    return bool(request.param)


@pytest.fixture()
def test_cluster(apiserver: ApiServerThread, tmp_path: Path, rbac_mode: RbacMode, policy: bool) -> TestCluster:
    """The chart installed with its admission policies on or off (conftest's operator and cluster use it)."""
    return TestCluster(apiserver, tmp_path / "cluster", rbac_mode, admission_policy=policy)


def refusal(err: ApiException) -> str:
    assert err.status == 403, err.body
    return str(json.loads(err.body)["message"])


# ---------------------------------------------------------------------------------------------- the operator's flow
@pytest.mark.parametrize("policy", [True], ids=["policy-on"])
def test_a_finetunejob_runs_to_its_promotion_with_the_policies_installed(cluster: Cluster, operator: Any) -> None:
    """Every Job the operator creates and every status write the trainer makes passes the policies."""
    cluster.apply(JOB)
    preflight = wait_for(lambda: cluster.job("tickets-preflight"), what="the pre-flight Job")
    assert preflight["spec"]["template"]["spec"]["containers"][0]["image"] == "trainer:test"
    cluster.trainer_reports("tickets", {"progress": {"stage": "preflight"}, "preflight": {"passed": True}})
    cluster.finish_job("tickets-preflight", succeeded=True)
    wait_for(lambda: cluster.job("tickets-train"), what="the training Job")
    cluster.start_job("tickets-train")
    wait_for(lambda: phase(cluster) == "Running", what="phase Running")
    cluster.trainer_reports("tickets", {"progress": {"step": 9, "totalSteps": 9}, "result": trainer_result()})
    cluster.finish_job("tickets-train", succeeded=True)
    verification = cluster.verify_promotion("tickets")  # a Job the policy admits too
    assert verification["spec"]["template"]["spec"]["containers"][0]["image"] == "trainer:test"
    wait_for(lambda: condition(cluster, "QualityGatePassed").get("status") == "True", what="QualityGatePassed")
    assert phase(cluster) == "Succeeded"


# ---------------------------------------------------------------------------------------------- the trainer's token
@pytest.mark.parametrize("rbac_mode", [CLUSTERWIDE], ids=["clusterwide"])
@pytest.mark.parametrize(
    ("forged", "key"),
    [({"phase": "Succeeded"}, "phase"), ({"promoted": True}, "promoted")],
    ids=["phase", "promoted"],
)
def test_a_trainer_writes_only_its_part_of_the_status(
    cluster: Cluster, operator: Any, policy: bool, forged: dict[str, Any], key: str
) -> None:
    cluster.apply(JOB)
    wait_for(lambda: cluster.job("tickets-preflight"), what="the pre-flight Job (and the trainer's account)")
    cluster.trainer_reports("tickets", {"progress": {"stage": "preflight", "step": 1, "totalSteps": 9}})
    progress = lambda: cluster.finetunejob("tickets")["status"].get("progressText") == "1/9"  # noqa: E731
    wait_for(progress, what="the operator's answer to the report")
    # Let the reconcile its own write triggered finish: the forgery then meets an idle operator, not
    # one already deriving the status again (which would overwrite it whatever the operator trusts).
    time.sleep(1.0)
    if policy:
        with pytest.raises(ApiException) as refused:
            cluster.trainer_reports("tickets", forged)
        message = refusal(refused.value)
        assert "ValidatingAdmissionPolicy 'kubetune-operator-jobs'" not in message
        assert "ValidatingAdmissionPolicy 'kubetune-trainer-status'" in message
        assert f"{TRAINER_ONLY}, not status.{key} (the kubetune operator's)" in message
    else:
        cluster.trainer_reports("tickets", forged)  # accepted: only the operator's own derivation answers it
    # Either way the operator's verdict stands: nothing has finished, and nothing was promoted.
    wait_for(
        lambda: phase(cluster) == "Validating" and "promoted" not in cluster.finetunejob("tickets")["status"],
        what="phase Validating and no status.promoted",
    )
    assert cluster.finetunejob("tickets")["status"]["progress"]["step"] == 1
    assert cluster.job("tickets-train") is None


# ---------------------------------------------------------------------------------------------- the operator's credentials
def _unlabelled(job: dict[str, Any]) -> None:
    job["metadata"]["labels"] = {}
    job["spec"]["template"]["metadata"]["labels"] = {}


def _foreign_image(job: dict[str, Any]) -> None:
    job["spec"]["template"]["spec"]["containers"][0]["image"] = "docker.io/evil/miner:latest"


def _in(namespace: str) -> Any:
    def move(job: dict[str, Any]) -> None:
        job["metadata"]["namespace"] = namespace

    return move


@pytest.mark.parametrize("rbac_mode", [CLUSTERWIDE], ids=["clusterwide"])
@pytest.mark.parametrize(
    ("change", "message"),
    [
        (None, None),
        (_unlabelled, "a Job of the kubetune operator carries kubetune's labels"),
        (_foreign_image, "image docker.io/evil/miner:latest is not in the platform's allowed images"),
        (_in("kube-system"), "runs no Job in its own namespace (kubetune-system) or a kube-* namespace"),
        (_in(OPERATOR_NAMESPACE), "runs no Job in its own namespace (kubetune-system) or a kube-* namespace"),
    ],
    ids=["as built", "no labels", "foreign image", "kube-system", "operator namespace"],
)
def test_the_operators_credentials_create_only_kubetunes_jobs(
    cluster: Cluster, policy: bool, change: Any, message: str | None
) -> None:
    """The Job the operator builds for a FineTuneJob, created with the operator's own token (no
    operator running), as built and with one thing changed."""
    owner = children.Owner.from_body(cluster.apply(JOB))
    config = OperatorConfig.from_env({"KUBETUNE_TRAINER_IMAGE": "trainer:test"})
    job = children.build_preflight_job(owner, spec(**JOB["spec"]), config)
    if change is not None:
        change(job)
    namespace = job["metadata"]["namespace"]
    operator = cluster.as_operator()
    if policy and message is not None:
        with pytest.raises(ApiException) as refused:
            operator.batch.create_namespaced_job(namespace, job)
        assert message in refusal(refused.value)
        assert "ValidatingAdmissionPolicy 'kubetune-operator-jobs'" in refusal(refused.value)
        assert not _exists(cluster, job)
    else:
        operator.batch.create_namespaced_job(namespace, job)
        assert _exists(cluster, job)


def _exists(cluster: Cluster, job: dict[str, Any]) -> bool:
    """Read by the Job controller: the tenant may not read kube-system or the operator's namespace."""
    jobs = cluster.test_cluster.job_controller.batch
    try:
        jobs.read_namespaced_job(job["metadata"]["name"], job["metadata"]["namespace"])
    except ApiException as err:
        if err.status == 404:
            return False
        raise
    return True
