"""The ``kubetune-operator`` console script as a process: config checked at startup, /healthz and /metrics."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from kubetune.operator import cli
from tests.kubeapi.cluster import TestCluster
from tests.operator.cluster import Cluster, wait_for
from tests.operator.conftest import free_port, operator_environment, terminate
from tests.operator.test_lifecycle import JOB, phase
from tests.scrape import Samples, get, scrape, value

OPERATOR = shutil.which("kubetune-operator", path=str(Path(sys.executable).parent))


@pytest.fixture()
def ports() -> tuple[int, int]:
    return free_port(), free_port()


@pytest.fixture()
def operator_process(test_cluster: TestCluster, ports: tuple[int, int]) -> Iterator[subprocess.Popen[str]]:
    """The console script, started the way the chart's Deployment starts it (a kubeconfig here
    instead of the pod's ServiceAccount files: both are read by kubetune.kubeclient)."""
    assert OPERATOR is not None, "the kubetune-operator console script is installed with the package"
    metrics_port, health_port = ports
    with operator_environment(
        test_cluster, KUBETUNE_METRICS_PORT=str(metrics_port), KUBETUNE_HEALTH_PORT=str(health_port)
    ) as settings:
        env = {**os.environ, **settings}
    process = subprocess.Popen([OPERATOR], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        yield process
    finally:
        terminate(process)


def test_the_operator_process_serves_health_and_metrics(
    cluster: Cluster, operator_process: subprocess.Popen[str], ports: tuple[int, int]
) -> None:
    metrics_port, health_port = ports
    wait_for(lambda: get(f"http://127.0.0.1:{health_port}/healthz"), timeout=30, what="/healthz")
    cluster.apply(JOB)
    wait_for(lambda: phase(cluster) == "Validating", what="Validating")
    cluster.finish_job("tickets-preflight", succeeded=False, reason="PodFailurePolicy", message="exit code 2")
    wait_for(lambda: phase(cluster) == "Failed", what="Failed")

    def scraped() -> Samples:
        found = scrape(f"http://127.0.0.1:{metrics_port}/metrics")
        return found if value(found, "kubetune_finetunejobs", namespace="default", phase="Failed") else {}

    metrics = wait_for(scraped, what="the Failed job counted")
    assert value(metrics, "kubetune_finetunejobs", namespace="default", phase="Failed") == 1
    assert value(metrics, "kubetune_finetunejobs", namespace="default", phase="Validating") == 0
    transition = {"namespace": "default", "from_phase": "Validating", "to_phase": "Failed"}
    assert value(metrics, "kubetune_finetunejob_phase_transitions_total", **transition) == 1
    assert value(metrics, "kubetune_finetunejob_failures_total", namespace="default", reason="PreflightFailed") == 1
    assert (value(metrics, "kubetune_reconcile_duration_seconds_count") or 0) >= 2
    assert (value(metrics, "process_resident_memory_bytes") or 0) > 0, "the standard process metrics are there"
    build = next(key for key in metrics if key[0] == "kubetune_build_info")
    assert dict(build[1])["version"]


def test_invalid_configuration_stops_the_operator_at_startup(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("KUBETUNE_METRICS_PORT", "eighty")
    assert cli.main() == 2
    assert "KUBETUNE_METRICS_PORT='eighty': expected a TCP port number" in capsys.readouterr().err
