"""Hard caps for clusters without Kueue: GPUs per job (refused before any pod) and FineTuneJobs a
namespace trains at once (the rest wait in Queued, reason NamespaceQuota, and start in creation order
as slots free). Shown with the cap on and off."""

from __future__ import annotations

import copy
import time
from typing import Any

import pytest

from kubetune.operator.config import ConfigError, OperatorConfig
from kubetune.operator.quota import RECHECK_SECONDS, waiting_reason
from tests.kubeapi.cluster import NAMESPACED, TestCluster
from tests.operator.cluster import Cluster, wait_for
from tests.operator.conftest import running_operator
from tests.operator.test_lifecycle import JOB
from tests.operator.test_validation import assert_rejected, with_spec


def named(name: str) -> dict[str, Any]:
    manifest = copy.deepcopy(JOB)
    manifest["metadata"] = {**manifest["metadata"], "name": name}
    manifest["spec"]["output"] = {"uri": f"s3://models/{name}/"}
    return manifest


def status(cluster: Cluster, name: str) -> dict[str, Any]:
    return dict(cluster.finetunejob(name).get("status") or {})


def pass_preflight(cluster: Cluster, name: str) -> None:
    wait_for(lambda: cluster.job(f"{name}-preflight"), what=f"{name}'s pre-flight Job")
    cluster.trainer_reports(name, {"preflight": {"passed": True, "message": "fits"}})
    cluster.finish_job(f"{name}-preflight", succeeded=True)


def queued_for_quota(cluster: Cluster, name: str) -> dict[str, Any] | None:
    """The phase transition that queued the job on the namespace's cap, while it is still queued."""
    current = status(cluster, name)
    history = current.get("phaseHistory") or []
    if current.get("phase") == "Queued" and history and history[-1]["reason"] == "NamespaceQuota":
        return dict(history[-1])
    return None


def test_more_gpus_than_the_platform_allows_one_job_is_refused(cluster: Cluster, test_cluster: TestCluster) -> None:
    with running_operator(test_cluster, KUBETUNE_MAX_GPUS_PER_JOB="4"):
        cluster.apply(with_spec(resources={"gpus": 8}))
        assert_rejected(
            cluster, "GpuQuotaExceeded", "spec.resources.gpus: 8 is more GPUs than the platform allows one job (4)"
        )
        cluster.apply(named("four-gpus") | {"spec": {**JOB["spec"], "resources": {"gpus": 4}}})
        wait_for(lambda: cluster.job("four-gpus-preflight"), what="the pre-flight Job of a job within the cap")


# The cap reads the namespace's Jobs and FineTuneJobs with namespaced lists, which the namespaced
# grants must allow (the cluster-wide ones are a superset): one RBAC mode proves it.
@pytest.mark.parametrize("rbac_mode", [NAMESPACED], ids=["namespaced"])
def test_over_the_namespace_cap_jobs_wait_and_start_in_creation_order(
    cluster: Cluster, test_cluster: TestCluster
) -> None:
    with running_operator(test_cluster, KUBETUNE_MAX_JOBS_PER_NAMESPACE="1"):
        # Created in name order: jobs created within the same second (creationTimestamp has a
        # one-second resolution) are ordered by name, so the creation order is unambiguous either way.
        for name in ("first", "second", "third"):
            cluster.apply(named(name))
        pass_preflight(cluster, "first")
        wait_for(lambda: cluster.job("first-train"), what="the first job's training Job")
        pass_preflight(cluster, "third")  # the third's pre-flight ends before the second's
        pass_preflight(cluster, "second")
        wait_for(lambda: queued_for_quota(cluster, "second"), what="the second job queued on the namespace quota")
        wait_for(lambda: queued_for_quota(cluster, "third"), what="the third job queued on the namespace quota")
        message = queued_for_quota(cluster, "second")["message"]  # type: ignore[index]
        assert message.startswith("the namespace trains 1 of the 1 FineTuneJobs the platform allows at once")
        assert cluster.job("second-train") is None and cluster.job("third-train") is None

        cluster.finish_job("first-train", succeeded=True)  # a slot frees: the older waiting job takes it
        wait_for(lambda: cluster.job("second-train"), what="the second job's training Job")
        time.sleep(RECHECK_SECONDS + 1.0)  # a recheck: the third still waits behind the second
        assert cluster.job("third-train") is None and queued_for_quota(cluster, "third")
        cluster.finish_job("second-train", succeeded=False)
        wait_for(lambda: cluster.job("third-train"), timeout=30, what="the third job's training Job")


def test_without_a_cap_every_job_starts(cluster: Cluster, operator: Any) -> None:
    for name in ("first", "second"):
        cluster.apply(named(name))
        pass_preflight(cluster, name)
    for name in ("first", "second"):
        wait_for(lambda name=name: cluster.job(f"{name}-train"), what=f"{name}'s training Job")


def job(name: str, component: str, *, done: bool = False) -> dict[str, Any]:
    conditions = [{"type": "Complete", "status": "True"}] if done else []
    labels = {"app.kubernetes.io/component": component, "kubetune.dev/job": name}
    return {"metadata": {"name": f"{name}-{component}", "labels": labels}, "status": {"conditions": conditions}}


def ftj(name: str, created: str, phase: str | None = None) -> dict[str, Any]:
    return {"metadata": {"name": name, "creationTimestamp": created}, "status": {"phase": phase} if phase else {}}


def test_finished_jobs_free_their_slot_and_only_passed_preflights_wait_ahead() -> None:
    jobs = [job("a", "trainer", done=True), job("b", "preflight", done=True), job("c", "preflight")]
    ftjs = [ftj("a", "t1", "Succeeded"), ftj("b", "t2"), ftj("c", "t3"), ftj("d", "t4")]
    assert waiting_reason("b", 1, jobs, ftjs) is None  # a's training finished; c's pre-flight still runs
    assert waiting_reason("d", 1, jobs, ftjs) is not None  # b passed its pre-flight first: b goes first
    assert waiting_reason("d", 2, jobs, ftjs) is None


@pytest.mark.parametrize("value", ["-1", "two", "1.5"])
def test_an_invalid_cap_stops_the_operator_at_startup(value: str) -> None:
    with pytest.raises(ConfigError, match=r"policy\.maxJobsPerNamespace"):
        OperatorConfig.from_env({"KUBETUNE_MAX_JOBS_PER_NAMESPACE": value})
