"""One test API server, installed with the chart, for every corpus: its tenant creates what the files hold."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.kubeapi.cluster import CLUSTERWIDE, TestCluster
from tests.kubeapi.runner import ApiServerThread


@pytest.fixture(scope="session")
def corpus_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestCluster]:
    folder = tmp_path_factory.mktemp("corpus-cluster")
    server = ApiServerThread(folder / "apiserver").start()
    try:
        yield TestCluster(server, folder / "cluster", CLUSTERWIDE, kueue=False)
    finally:
        server.stop()
