"""The test API server and its cluster fixtures, shared with the operator tests (cluster-wide RBAC only:
the operator suite covers both RBAC modes)."""

import pytest

from tests.kubeapi.cluster import CLUSTERWIDE, RbacMode
from tests.operator.conftest import cluster, test_cluster


@pytest.fixture()
def rbac_mode() -> RbacMode:
    return CLUSTERWIDE


__all__ = ["cluster", "rbac_mode", "test_cluster"]
