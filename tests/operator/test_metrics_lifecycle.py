"""/metrics of the real operator, scraped over HTTP while it runs jobs against the emulated API server."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from tests.kubeapi.cluster import TestCluster
from tests.operator.cluster import Cluster, wait_for
from tests.operator.conftest import free_port, running_operator
from tests.operator.test_lifecycle import JOB, phase
from tests.scrape import Samples, scrape, value


def scraper(port: int) -> Callable[[], Samples]:
    return lambda: scrape(f"http://127.0.0.1:{port}/metrics")


def wait_metric(read: Callable[[], Samples], name: str, expected: float, **labels: str) -> Samples:
    def check() -> Samples:
        samples = read()
        return samples if value(samples, name, **labels) == expected else {}

    return wait_for(check, what=f"{name}{labels} == {expected}")  # type: ignore[no-any-return]


def job_series(samples: Samples, name: str = "tickets") -> dict[str, float]:
    """The active job's phase-timestamp series, by phase."""
    return {
        dict(labels)["phase"]: number
        for (metric, labels), number in samples.items()
        if metric == "kubetune_finetunejob_phase_timestamp_seconds" and dict(labels)["finetunejob"] == name
    }


def test_metrics_follow_a_job_from_creation_to_success(test_cluster: TestCluster, cluster: Cluster) -> None:
    port = free_port()
    read = scraper(port)
    with running_operator(test_cluster, KUBETUNE_METRICS_PORT=str(port)):
        created = time.time()
        cluster.apply(JOB)
        m = wait_metric(read, "kubetune_finetunejobs", 1, namespace="default", phase="Validating")
        assert (
            value(
                m,
                "kubetune_finetunejob_phase_transitions_total",
                namespace="default",
                from_phase="New",
                to_phase="Validating",
            )
            == 1
        )
        assert value(m, "kubetune_finetunejob_failures_total", namespace="default", reason="TrainingFailed") == 0
        assert value(m, "kubetune_gpus_in_use", namespace="default") == 0
        assert value(m, "kubetune_gpu_seconds_total", namespace="default") == 0
        assert list(job_series(m)) == ["Validating"] and abs(job_series(m)["Validating"] - created) < 5
        assert value(m, "kubetune_finetunejob_job_creation_delay_seconds_count", namespace="default") is None

        cluster.trainer_reports("tickets", {"preflight": {"passed": True, "message": "fits"}})
        cluster.finish_job("tickets-preflight", succeeded=True)
        m = wait_metric(read, "kubetune_finetunejobs", 1, namespace="default", phase="Queued")
        assert value(m, "kubetune_finetunejob_job_creation_delay_seconds_count", namespace="default") == 1
        assert value(m, "kubetune_finetunejob_queue_seconds_count", namespace="default") is None, "not running yet"
        assert list(job_series(m)) == ["Queued"]

        cluster.start_job("tickets-train")
        m = wait_metric(read, "kubetune_finetunejobs", 1, namespace="default", phase="Running")
        assert value(m, "kubetune_finetunejob_queue_seconds_count", namespace="default") == 1
        assert value(m, "kubetune_gpus_in_use", namespace="default") == 2
        assert value(m, "kubetune_finetunejob_gpus_in_use", namespace="default", finetunejob="tickets") == 2
        first = value(m, "kubetune_gpu_seconds_total", namespace="default") or 0.0
        time.sleep(1.0)
        later = value(read(), "kubetune_gpu_seconds_total", namespace="default") or 0.0
        assert 2 * 0.9 <= later - first <= 2 * 3.0, "two GPUs for about a second"

        cluster.trainer_reports("tickets", {"result": {"version": "v1", "promoted": True}})
        cluster.finish_job("tickets-train", succeeded=True)
        m = wait_metric(read, "kubetune_finetunejobs", 1, namespace="default", phase="Succeeded")
        assert value(m, "kubetune_finetunejobs", namespace="default", phase="Running") == 0
        assert value(m, "kubetune_gpus_in_use", namespace="default") == 0
        assert value(m, "kubetune_finetunejob_duration_seconds_count", namespace="default", outcome="Succeeded") == 1
        assert job_series(m) == {}, "finished jobs have no per-job series"
        frozen = value(m, "kubetune_gpu_seconds_total", namespace="default")
        time.sleep(0.5)
        assert value(read(), "kubetune_gpu_seconds_total", namespace="default") == frozen
        path = [
            (dict(labels)["from_phase"], dict(labels)["to_phase"])
            for (metric, labels), number in m.items()
            if metric == "kubetune_finetunejob_phase_transitions_total" and number == 1
        ]
        assert sorted(path) == sorted(
            [("New", "Validating"), ("Validating", "Queued"), ("Queued", "Running"), ("Running", "Succeeded")]
        ), "the pre-flight passing creates the training Job in the same reconcile: no Pending"
        assert (value(m, "kubetune_reconcile_duration_seconds_count") or 0) >= len(path)


def test_failures_are_counted_by_reason_in_each_namespace(test_cluster: TestCluster, cluster: Cluster) -> None:
    port = free_port()
    read = scraper(port)
    with running_operator(test_cluster, KUBETUNE_METRICS_PORT=str(port)):
        cluster.apply(JOB)
        wait_metric(read, "kubetune_finetunejobs", 1, namespace="default", phase="Validating")
        cluster.trainer_reports("tickets", {"preflight": {"passed": True, "message": "fits"}})
        cluster.finish_job("tickets-preflight", succeeded=True)
        wait_for(lambda: cluster.job("tickets-train"), what="training Job")
        cluster.start_job("tickets-train")
        wait_metric(read, "kubetune_finetunejobs", 1, namespace="default", phase="Running")
        cluster.finish_job("tickets-train", succeeded=False, reason="BackoffLimitExceeded", message="OOMKilled")
        m = wait_metric(read, "kubetune_finetunejob_failures_total", 1, namespace="default", reason="TrainingFailed")
        assert value(m, "kubetune_finetunejob_duration_seconds_count", namespace="default", outcome="Failed") == 1

        # A namespace the operator has never seen, and a reference the API server cannot check.
        bad: dict[str, Any] = {**JOB, "metadata": {"name": "typo"}}
        bad["spec"] = {**JOB["spec"], "s3": {"credentialsSecret": {"name": "no-such-secret"}}}
        cluster.apply(bad, namespace="research")
        m = wait_metric(read, "kubetune_finetunejob_failures_total", 1, namespace="research", reason="SecretNotFound")
        assert value(m, "kubetune_finetunejob_failures_total", namespace="research", reason="TrainingFailed") == 0
        assert value(m, "kubetune_finetunejobs", namespace="research", phase="Failed") == 1
        assert value(m, "kubetune_finetunejobs", namespace="default", phase="Failed") == 1


def test_a_restarted_operator_counts_nothing_twice(test_cluster: TestCluster, cluster: Cluster) -> None:
    with running_operator(test_cluster):
        cluster.apply(JOB)
        wait_for(lambda: phase(cluster) == "Validating", what="Validating")
        cluster.finish_job("tickets-preflight", succeeded=True)
        wait_for(lambda: cluster.job("tickets-train"), what="training Job")
        cluster.start_job("tickets-train")
        wait_for(lambda: phase(cluster) == "Running", what="Running")
    running_since = next(
        c["lastTransitionTime"]
        for c in cluster.finetunejob("tickets")["status"]["conditions"]
        if c["type"] == "Running"
    )
    time.sleep(1.5)
    port = free_port()
    read = scraper(port)
    restarted = time.time()
    with running_operator(test_cluster, KUBETUNE_METRICS_PORT=str(port)):
        m = wait_metric(read, "kubetune_finetunejobs", 1, namespace="default", phase="Running")
        assert value(m, "kubetune_finetunejob_queue_seconds_count", namespace="default") is None, "observed before"
        assert value(m, "kubetune_finetunejob_job_creation_delay_seconds_count", namespace="default") is None
        assert not [key for key in m if key[0] == "kubetune_finetunejob_phase_transitions_total"]
        from kubetune.operator.metrics import parse_time

        assert job_series(m)["Running"] == parse_time(running_since), "since the status says, not since the restart"
        gpu_seconds = value(m, "kubetune_gpu_seconds_total", namespace="default") or 0.0
        assert gpu_seconds <= 2 * (time.time() - restarted) + 0.5, "the time before the restart is not counted again"
