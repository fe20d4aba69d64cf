"""Fixtures: the test API server installed with the chart, the cluster's components, and the real operator.

The operator suite runs twice, once per way the chart installs RBAC (cluster-wide and namespaced),
and every operator runs with exactly the chart's grants: as the chart's ServiceAccount, through a
kubeconfig with its token and the cluster CA, over HTTPS.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from tests.kubeapi.audit import Audit
from tests.kubeapi.cluster import CLUSTERWIDE, NAMESPACED, OPERATOR_NAMESPACE, RbacMode, TestCluster
from tests.kubeapi.runner import ApiServerThread
from tests.operator.cluster import Cluster

# What the test API servers of this session saw, per RBAC mode, for the comparison of the grants the
# operator used with what the chart grants (test_rbac_usage.py).
SESSION_AUDIT: dict[str, Audit] = {}
AUDIT_FILE_ENV = "KUBETUNE_TEST_AUDIT_FILE"


@pytest.fixture(params=[CLUSTERWIDE, NAMESPACED], ids=lambda mode: mode.name)
def rbac_mode(request: pytest.FixtureRequest) -> RbacMode:
    return request.param  # type: ignore[no-any-return]


@pytest.fixture()
def test_cluster(apiserver: ApiServerThread, tmp_path: Path, rbac_mode: RbacMode) -> Iterator[TestCluster]:
    yield TestCluster(apiserver, tmp_path / "cluster", rbac_mode)
    apiserver.server.audit.merge_into(SESSION_AUDIT.setdefault(rbac_mode.name, Audit()))


SUITE_COMPLETE = pytest.StashKey[bool]()
RBAC_USAGE_TEST = "tests/operator/test_rbac_usage.py"
_deselected_operator_tests: list[str] = []


def pytest_deselected(items: list[pytest.Item]) -> None:
    _deselected_operator_tests.extend(i.nodeid for i in items if i.nodeid.startswith("tests/operator/"))


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """The RBAC usage comparison runs last, after every operator test has fed the audit."""
    last = [item for item in items if item.nodeid.startswith(RBAC_USAGE_TEST)]
    items[:] = [item for item in items if item not in last] + last


def pytest_collection_finish(session: pytest.Session) -> None:
    """Whether this session runs the whole operator suite (else test_rbac_usage.py runs it itself)."""
    on_disk = {f"tests/operator/{p.name}" for p in Path(__file__).parent.glob("test_*.py")} - {RBAC_USAGE_TEST}
    collected = {item.nodeid.split("::")[0] for item in session.items}
    session.config.stash[SUITE_COMPLETE] = on_disk <= collected and not _deselected_operator_tests
    session.config.stash[OPERATOR_TESTS] = frozenset(
        item.nodeid
        for item in session.items
        if item.nodeid.startswith("tests/operator/") and not item.nodeid.startswith(RBAC_USAGE_TEST)
    )


# Under pytest-xdist (scripts/test.sh) the operator tests are spread over the workers, each with its own
# SESSION_AUDIT. Each worker publishes its audit and the operator tests it has finished in a directory of
# this run; the comparison waits until every operator test is finished and merges the audits.
_published: dict[str, Path] = {}
_finished_here: list[str] = []
OPERATOR_TESTS = pytest.StashKey[frozenset[str]]()
WAIT_FOR_WORKERS_S = 1500


def pytest_configure(config: pytest.Config) -> None:
    workerinput = getattr(config, "workerinput", None)
    if workerinput is not None:
        directory = Path(tempfile.gettempdir()) / f"kubetune-audit-{workerinput['testrunuid']}"
        directory.mkdir(exist_ok=True)
        _published.update(directory=directory, audit=directory / f"audit-{workerinput['workerid']}.json")
        _published["finished"] = directory / f"finished-{workerinput['workerid']}.txt"


def _write_atomically(path: Path, text: str) -> None:
    partial = path.with_suffix(".partial")
    partial.write_text(text)
    partial.replace(path)


def pytest_runtest_logfinish(nodeid: str) -> None:
    if not _published or not nodeid.startswith("tests/operator/") or nodeid.startswith(RBAC_USAGE_TEST):
        return
    _finished_here.append(nodeid)
    # The audit first: a test listed as finished has its uses in the published audit.
    _write_atomically(_published["audit"], json.dumps({m: a.to_json() for m, a in SESSION_AUDIT.items()}))
    _write_atomically(_published["finished"], "\n".join(_finished_here))


def audit_of_this_run(config: pytest.Config) -> dict[str, Audit]:
    """What the operator identity did over every operator test of this run, on every worker."""
    if not _published:
        return SESSION_AUDIT
    expected = config.stash[OPERATOR_TESTS]
    directory = _published["directory"]
    deadline = time.monotonic() + WAIT_FOR_WORKERS_S
    while True:
        finished = {line for f in directory.glob("finished-*.txt") for line in f.read_text().splitlines()}
        if expected <= finished:
            break
        if time.monotonic() > deadline:
            missing = sorted(expected - finished)
            raise AssertionError(f"{len(missing)} operator tests unfinished on other workers, e.g. {missing[:3]}")
        time.sleep(1)
    merged: dict[str, Audit] = {}
    for published in directory.glob("audit-*.json"):
        for mode, data in json.loads(published.read_text()).items():
            Audit.from_json(data).merge_into(merged.setdefault(mode, Audit()))
    return merged


def pytest_sessionfinish(session: pytest.Session) -> None:
    """With KUBETUNE_TEST_AUDIT_FILE set (test_rbac_usage.py runs the suite that way when it runs alone),
    write what the operator identity did, per mode."""
    target = os.environ.get(AUDIT_FILE_ENV)
    if target:
        Path(target).write_text(json.dumps({mode: audit.to_json() for mode, audit in SESSION_AUDIT.items()}))


@pytest.fixture()
def cluster(test_cluster: TestCluster) -> Cluster:
    return Cluster(test_cluster)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@contextmanager
def operator_environment(test_cluster: TestCluster, **env: str) -> Iterator[dict[str, str]]:
    """The environment the chart's Deployment gives the operator, with a kubeconfig instead of the
    pod's mounted ServiceAccount (both are read by kubetune.kubeclient)."""
    settings = {
        "KUBECONFIG": str(test_cluster.operator_kubeconfig()),
        "KUBETUNE_NAMESPACES": ",".join(test_cluster.mode.namespaces),
        "KUBETUNE_METRICS_PORT": str(free_port()),
        "KUBETUNE_HEALTH_PORT": str(free_port()),
        "KUBETUNE_TRAINER_IMAGE": "trainer:test",
        "KUBETUNE_OPERATOR_NAMESPACE": OPERATOR_NAMESPACE,  # the chart's downward API
        **env,
    }
    saved = {k: os.environ.get(k) for k in settings}
    os.environ.update(settings)
    try:
        yield settings
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@contextmanager
def running_operator(test_cluster: TestCluster, **env: str) -> Iterator[Any]:
    """The real operator (kopf + kubetune's handlers) in a thread, with the chart's identity and grants."""
    from kopf.testing import KopfRunner

    namespaces = test_cluster.mode.namespaces
    scope = [arg for namespace in namespaces for arg in ("--namespace", namespace)] or ["--all-namespaces"]
    with (
        operator_environment(test_cluster, **env),
        KopfRunner(["run", *scope, "--standalone", "-m", "kubetune.operator.main"], timeout=60) as runner,
    ):
        yield runner


def terminate(process: subprocess.Popen[str]) -> None:
    """Stop an operator process as Kubernetes does: SIGTERM, then SIGKILL after a grace period."""
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


@pytest.fixture()
def operator(test_cluster: TestCluster) -> Iterator[Any]:
    with running_operator(test_cluster) as runner:
        yield runner


__all__ = ["NAMESPACED", "SESSION_AUDIT", "Cluster", "running_operator"]
