"""Fixtures: the emulated API server, the cluster's controllers, and the real operator."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest

from tests.operator.cluster import Cluster, EmulatorThread


@pytest.fixture()
def emulator() -> Iterator[EmulatorThread]:
    server = EmulatorThread().start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture()
def cluster(emulator: EmulatorThread) -> Cluster:
    return Cluster(emulator.url)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@contextmanager
def running_operator(url: str, **env: str) -> Iterator[Any]:
    """The real operator (kopf + kubetune's handlers) in a thread, talking HTTP to ``url``."""
    from kopf.testing import KopfRunner

    settings = {
        "KUBETUNE_KUBE_API": url,
        "KUBETUNE_METRICS_PORT": str(free_port()),
        "KUBETUNE_TRAINER_IMAGE": "trainer:test",
        **env,
    }
    saved = {k: os.environ.get(k) for k in settings}
    os.environ.update(settings)
    try:
        with KopfRunner(
            ["run", "--all-namespaces", "--standalone", "-m", "kubetune.operator.main"], timeout=60
        ) as runner:
            yield runner
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@pytest.fixture()
def operator(emulator: EmulatorThread) -> Iterator[Any]:
    with running_operator(emulator.url) as runner:
        yield runner
