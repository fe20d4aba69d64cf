"""A real Pushgateway keeps trainer groups until the operator removes those of deleted FineTuneJobs."""

from __future__ import annotations

from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, Gauge, push_to_gateway

from kubetune.api.contract import PUSHGATEWAY_JOB, pushgateway_grouping_key
from kubetune.operator.kube import Kube
from kubetune.operator.pushgateway import Sweeper, sweep, trainer_groups
from tests.kubeapi.cluster import TestCluster
from tests.observability.prometheus import pushgateway
from tests.operator.cluster import Cluster, wait_for
from tests.operator.conftest import free_port, operator_environment
from tests.operator.test_lifecycle import JOB


def push(url: str, namespace: str, name: str, job: str = PUSHGATEWAY_JOB) -> None:
    registry = CollectorRegistry()
    Gauge("kubetune_trainer_step", "steps", registry=registry).set(3)
    push_to_gateway(url, job=job, registry=registry, grouping_key=pushgateway_grouping_key(namespace, name))


def test_the_sweep_deletes_only_the_groups_of_deleted_jobs_it_watches(
    tmp_path: Path, test_cluster: TestCluster, cluster: Cluster
) -> None:
    cluster.apply(JOB, namespace="default")  # FineTuneJob default/tickets exists
    with operator_environment(test_cluster):
        kube = Kube.from_environment()  # the operator's own client, credentials and grants
    with pushgateway(tmp_path) as url:
        push(url, "default", "tickets")
        push(url, "default", "deleted-last-week")
        push(url, "research", "deleted-too")  # not watched in the namespaced case below
        push(url, "default", "someone-elses", job="other-batch-job")
        assert trainer_groups(url) == {
            ("default", "tickets"),
            ("default", "deleted-last-week"),
            ("research", "deleted-too"),
        }

        namespaced = sweep(url, lambda: kube.finetunejob_keys(("default",)), ("default",))
        assert namespaced == [("default", "deleted-last-week")]
        assert trainer_groups(url) == {("default", "tickets"), ("research", "deleted-too")}

        sweeper = Sweeper(url, lambda: kube.finetunejob_keys(()), (), interval=3600).start()
        try:
            wait_for(lambda: trainer_groups(url) == {("default", "tickets")}, what="the cluster-wide sweep")
        finally:
            sweeper.stop()


def test_a_sweep_with_the_pushgateway_down_is_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    sweeper = Sweeper(f"http://127.0.0.1:{free_port()}", set, (), interval=3600).start()
    wait_for(lambda: "Pushgateway sweep at" in caplog.text, what="the warning")
    sweeper.stop()


def test_one_pushgateway_per_namespace_each_is_swept_for_its_own_jobs(
    tmp_path: Path, test_cluster: TestCluster, cluster: Cluster, caplog: pytest.LogCaptureFixture
) -> None:
    """``{namespace}`` in the URL: each watched namespace's Pushgateway is swept; one without any is skipped.

    (A route prefix stands in for the per-namespace host name: ``http://127.0.0.1:PORT/{namespace}``.)
    """
    caplog.set_level("INFO")
    cluster.apply(JOB, namespace="default")
    with operator_environment(test_cluster):
        kube = Kube.from_environment()
    with pushgateway(tmp_path, route_prefix="/default") as url:
        push(url, "default", "tickets")
        push(url, "default", "deleted-last-week")
        template = url.removesuffix("/default") + "/{namespace}"
        sweeper = Sweeper(template, lambda: kube.finetunejob_keys(("default",)), ("default", "research"), interval=3600)
        assert sweeper.sweep_all() == [("default", "deleted-last-week")]
        assert trainer_groups(url) == {("default", "tickets")}
        assert "/research skipped" in caplog.text, "a namespace without a Pushgateway is skipped, not an error"
