"""`helm install` with no values is a working, least-privilege install: namespaced, watching `default`.

The chart is installed with nothing set (admission policies included), and the operator is started the
way its Deployment starts it: the container's command with the container's environment, as rendered
(a kubeconfig for the pod's ServiceAccount files, free ports, the downward API's namespace filled in).
Under exactly the grants the chart renders, it reconciles a FineTuneJob in `default` without the API
server refusing it anything, and never sees the one a tenant created in another namespace.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from tests.kubeapi.cluster import DEFAULTS, OPERATOR_NAMESPACE, TestCluster, rendered_chart
from tests.kubeapi.runner import ApiServerThread
from tests.operator.cluster import Cluster, wait_for
from tests.operator.conftest import free_port, terminate
from tests.operator.test_lifecycle import JOB, phase
from tests.scrape import get

OTHER_NAMESPACE = "research"  # a tenant namespace of the test cluster the defaults do not watch


@pytest.fixture()
def default_install(apiserver: ApiServerThread, tmp_path: Path) -> TestCluster:
    return TestCluster(apiserver, tmp_path / "cluster", DEFAULTS, admission_policy=None)


def operator_container(test_cluster: TestCluster) -> dict[str, Any]:
    (deployment,) = [d for d in rendered_chart(test_cluster.helm_sets) if d["kind"] == "Deployment"]
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    return dict(container)


def deployment_environment(test_cluster: TestCluster, health_port: int) -> dict[str, str]:
    """The operator container's environment as rendered; only what a pod gets from its node differs."""
    env: dict[str, str] = {}
    for item in operator_container(test_cluster)["env"]:
        if "value" in item:
            env[item["name"]] = item["value"]
        else:
            assert item["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.namespace"}}, item
            env[item["name"]] = OPERATOR_NAMESPACE
    return {
        **env,
        "KUBECONFIG": str(test_cluster.operator_kubeconfig()),
        "KUBETUNE_METRICS_PORT": str(free_port()),
        "KUBETUNE_HEALTH_PORT": str(health_port),
    }


@contextmanager
def chart_operator(test_cluster: TestCluster) -> Iterator[dict[str, str]]:
    """The operator process the chart's Deployment runs, up and healthy; yields its environment."""
    (command,) = operator_container(test_cluster)["command"]
    executable = shutil.which(command, path=str(Path(sys.executable).parent))
    assert executable is not None, f"{command} is installed with the package"
    health_port = free_port()
    settings = deployment_environment(test_cluster, health_port)
    inherited = {k: v for k, v in os.environ.items() if not k.startswith("KUBETUNE_") and k != "KUBECONFIG"}
    process = subprocess.Popen(
        [executable], env={**inherited, **settings}, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    try:
        wait_for(lambda: get(f"http://127.0.0.1:{health_port}/healthz"), timeout=30, what="/healthz")
        yield settings
    finally:
        terminate(process)


def test_the_default_install_reconciles_in_default_and_never_sees_another_namespace(
    default_install: TestCluster, apiserver: ApiServerThread
) -> None:
    cluster = Cluster(default_install)
    # Created before the operator starts: an operator watching it would list it at startup.
    cluster.apply(JOB, namespace=OTHER_NAMESPACE)
    with chart_operator(default_install) as settings:
        assert settings["KUBETUNE_NAMESPACES"] == "default"
        cluster.apply(JOB)
        preflight = wait_for(lambda: cluster.job("tickets-preflight"), what="the pre-flight Job")
        image = preflight["spec"]["template"]["spec"]["containers"][0]["image"]
        assert image == settings["KUBETUNE_TRAINER_IMAGE"], "the chart's trainer image, admitted by its policy"
        cluster.trainer_reports("tickets", {"progress": {"stage": "preflight"}, "preflight": {"passed": True}})
        cluster.finish_job("tickets-preflight", succeeded=True)
        wait_for(lambda: cluster.job("tickets-train"), what="the training Job")
        cluster.start_job("tickets-train")
        wait_for(lambda: phase(cluster) == "Running", what="phase Running")

    operator = default_install.operator_user.name
    refused = sorted(
        (use.api_group, use.resource, use.verb, "namespaced" if use.namespaced else "cluster")
        for use in apiserver.server.audit.refused(operator)
        if use.verb not in ("escalate", "bind")  # the escalation check's first question, answered no by design
    )
    assert refused == [], "the chart's default grants cover everything the operator asked for"
    unseen = cluster.finetunejob("tickets", OTHER_NAMESPACE)
    assert not unseen.get("status"), "no status written outside the watched namespace"
    assert not unseen["metadata"].get("finalizers")
    assert not [key for key in unseen["metadata"].get("annotations") or {} if key.startswith("kopf.")]
    assert cluster.jobs(OTHER_NAMESPACE) == []
