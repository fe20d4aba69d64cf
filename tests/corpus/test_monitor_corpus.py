"""The DriftMonitor corpus: every invalid monitor gets the same verdict from ``kubetune validate`` and
from the API server (the generated CRD: schema and CEL, nested FineTuneJob template included), at the
same field; valid ones pass both. Tenants get DriftMonitors through the chart's aggregated roles:
``edit`` creates and changes them, ``view`` reads them, nobody but the operator writes their status.

Files follow the manifest corpus' header convention (``# expect-field:``, ``# expect-message:``).
"""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml
from kubernetes.client.exceptions import ApiException

from tests.corpus.verdicts import EXIT_CONFIG, NAMESPACE, api_server_verdict, cli_verdict, expected, the_object
from tests.kubeapi.cluster import Identity, TestCluster
from tests.kubeapi.model import UserInfo

CORPUS = Path(__file__).parent / "monitors"
INVALID = sorted((CORPUS / "invalid").glob("*.yaml"))
VALID = sorted((CORPUS / "valid").glob("*.yaml"))
PLURAL = "driftmonitors"
BASE = f"/apis/kubetune.dev/v1alpha1/namespaces/{NAMESPACE}/{PLURAL}"


@pytest.fixture(scope="module")
def tenant(installed_cluster: TestCluster) -> Identity:
    return installed_cluster.tenant


@pytest.mark.parametrize("path", INVALID, ids=[p.stem for p in INVALID])
def test_invalid_monitor_is_refused_at_its_field_by_the_cli_and_the_api_server(
    path: Path, tenant: Identity, capsys: pytest.CaptureFixture[str]
) -> None:
    want = expected(path)
    code, text = cli_verdict(["validate", str(path)], capsys)
    assert code == EXIT_CONFIG, f"kubetune validate accepted {path.name}: {text}"
    assert "Traceback" not in text and "invalid DriftMonitor" in text
    assert f"{want.field}: " in text and want.message in text, text
    monitor = the_object(path, "DriftMonitor")
    assert monitor is not None
    status, refusal = api_server_verdict(tenant, monitor, PLURAL)
    assert status in (400, 422), f"the API server answered {status} to {path.name}: {refusal}"
    assert want.field in refusal, f"the API server named another field: {refusal}"


@pytest.mark.parametrize("path", VALID, ids=[p.stem for p in VALID])
def test_valid_monitor_is_accepted_by_the_cli_and_the_api_server(
    path: Path, tenant: Identity, capsys: pytest.CaptureFixture[str]
) -> None:
    code, text = cli_verdict(["validate", str(path)], capsys)
    assert code == 0 and "valid DriftMonitor" in text, text
    monitor = the_object(path, "DriftMonitor")
    assert monitor is not None
    status, refusal = api_server_verdict(tenant, monitor, PLURAL)
    assert status == 201, refusal


def _refused(identity: Identity, method: str, path: str, body: object = None) -> int:
    try:
        identity.call(method, path, body, "application/merge-patch+json" if method == "PATCH" else "application/json")
    except ApiException as err:
        return int(err.status)
    return 0


def test_tenants_edit_and_view_monitors_through_the_aggregated_roles_and_never_write_status(
    installed_cluster: TestCluster,
) -> None:
    tenant = installed_cluster.tenant
    monitor = yaml.safe_load((CORPUS / "valid" / "minimal.yaml").read_text())
    monitor["metadata"]["name"] = "roles-check"
    created = tenant.call("POST", BASE, monitor)
    assert created["spec"]["detection"]["persistence"] == 2, "the API server applies the schema's defaults"

    # A monitor is tuned while it runs: its spec may change (a FineTuneJob's may not).
    tenant.call(
        "PATCH", f"{BASE}/roles-check", {"spec": {"detection": {"alpha": 0.01}}}, "application/merge-patch+json"
    )
    assert tenant.call("GET", f"{BASE}/roles-check")["spec"]["detection"]["alpha"] == 0.01
    # A change still passes validation.
    assert _refused(tenant, "PATCH", f"{BASE}/roles-check", {"spec": {"detection": {"alpha": 0.9}}}) == 422
    # Status is the operator's: the tenant's edit role does not reach the subresource.
    assert _refused(tenant, "PATCH", f"{BASE}/roles-check/status", {"status": {"champion": "v9"}}) == 403

    installer = installed_cluster.installer
    installer.call(
        "POST",
        f"/apis/rbac.authorization.k8s.io/v1/namespaces/{NAMESPACE}/rolebindings",
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "RoleBinding",
            "metadata": {"name": "auditor-view", "namespace": NAMESPACE},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "view"},
            "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": "auditor"}],
        },
    )
    viewer = installed_cluster.identity(UserInfo.user("auditor", "auditors"))
    assert [m["metadata"]["name"] for m in viewer.call("GET", BASE)["items"]] == ["roles-check"]
    other = copy.deepcopy(monitor)
    other["metadata"]["name"] = "by-a-viewer"
    assert _refused(viewer, "POST", BASE, other) == 403
    stranger = installed_cluster.identity(UserInfo.user("mallory", "elsewhere"))
    assert _refused(stranger, "GET", BASE) == 403
    tenant.call("DELETE", f"{BASE}/roles-check")
