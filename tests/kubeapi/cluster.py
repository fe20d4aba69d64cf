"""A cluster for tests: the API server, installed the way a platform team installs kubetune, and the
identities that use it.

- The cluster bootstrap (the server itself) binds ``cluster-admin`` to the components a cluster
  runs: an installer (what ``helm install`` runs as), the Job controller, the kubelet and the
  garbage collector, each under its own identity. Nobody else holds cluster-admin.
- The installer applies the CRDs from ``helm/kubetune/crds`` and every object ``helm template``
  renders that the server serves (ServiceAccount, ClusterRole/Role and their bindings, ...), so the
  operator runs with exactly the chart's grants, in the chart's cluster-wide (``clusterWide=true``) or
  namespaced mode, or with the chart's default values and nothing set (``DEFAULTS``).
  The chart's ValidatingAdmissionPolicies are installed (and enforced by the server) when a test asks
  for them (``admission_policy=True``), else the chart is installed with ``admissionPolicy.enabled=false``
  (``admission_policy=None``: as the mode's values leave them, on by default).
- A tenant user (``alice``, group ``ml-team``) holds the built-in ``edit`` ClusterRole in the tenant
  namespaces through RoleBindings; the chart's aggregated roles extend ``edit`` to FineTuneJobs.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import yaml
from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

from tests.helm.chart import CHART, helm
from tests.kubeapi.model import AUTHENTICATED, UserInfo
from tests.kubeapi.runner import ApiServerThread

ROOT = Path(__file__).resolve().parents[2]
OPERATOR_NAMESPACE = "kubetune-system"
RELEASE = "kubetune"
TENANT_NAMESPACES = ("default", "research")
TENANT = UserInfo.user("alice", "ml-team")
INSTALLER = UserInfo.user("cluster-installer")
JOB_CONTROLLER = UserInfo.service_account("kube-system", "job-controller")
KUBELET = UserInfo("system:node:test-node", ("system:nodes", AUTHENTICATED))
GARBAGE_COLLECTOR = UserInfo.service_account("kube-system", "generic-garbage-collector")
KUEUE = UserInfo.service_account("kueue-system", "kueue-controller-manager")
COMPONENTS = (INSTALLER, JOB_CONTROLLER, KUBELET, GARBAGE_COLLECTOR, KUEUE)

# Kueue's Workload kind, as a cluster with Kueue installed serves it (its schema is Kueue's business).
KUEUE_CRD: dict[str, Any] = {
    "apiVersion": "apiextensions.k8s.io/v1",
    "kind": "CustomResourceDefinition",
    "metadata": {"name": "workloads.kueue.x-k8s.io"},
    "spec": {
        "group": "kueue.x-k8s.io",
        "scope": "Namespaced",
        "names": {"plural": "workloads", "singular": "workload", "kind": "Workload", "listKind": "WorkloadList"},
        "versions": [
            {
                "name": "v1beta1",
                "served": True,
                "storage": True,
                "subresources": {"status": {}},
                "schema": {"openAPIV3Schema": {"type": "object", "x-kubernetes-preserve-unknown-fields": True}},
            }
        ],
    },
}


@dataclass(frozen=True)
class RbacMode:
    """How the chart is installed: watching every namespace (``clusterWide``), or a list of namespaces."""

    name: str
    helm_sets: tuple[str, ...]
    namespaces: tuple[str, ...]  # the operator's KUBETUNE_NAMESPACES; empty: cluster-wide


# Values whose only effect in these tests is a grant the operator tests use: the chart grants networkpolicies
# only with trainer egress on, and the platform webhooks' Secrets only when some are named. Whether the
# operator creates NetworkPolicies or sends to platform webhooks is its own environment
# (KUBETUNE_TRAINER_EGRESS, KUBETUNE_PLATFORM_WEBHOOKS), which the tests of those features set
# (tests/operator/test_trainer_egress.py, tests/operator/test_webhooks.py).
PLATFORM_WEBHOOK_SECRET = "platform-hook"
GRANT_SETS = (
    "networkPolicy.trainerEgress.enabled=true",
    "notifications.webhooks[0].name=platform",
    f"notifications.webhooks[0].secretName={PLATFORM_WEBHOOK_SECRET}",
)
# Cluster-wide is opt-in: clusterWide=true, with the default watchNamespaces ([default]) removed.
CLUSTERWIDE = RbacMode("clusterwide", (*GRANT_SETS, "clusterWide=true", "watchNamespaces=null"), ())
NAMESPACED = RbacMode(
    "namespaced", (*GRANT_SETS, f"watchNamespaces={{{','.join(TENANT_NAMESPACES)}}}"), TENANT_NAMESPACES
)
# `helm install` with no values at all: namespaced, watching `default` only (tests/operator/test_default_install.py).
DEFAULTS = RbacMode("defaults", (), ("default",))

# The operator under test runs the trainer image ``trainer:test`` (tests/operator/conftest.py) and tests
# change its allow-list through the environment; the chart's admission policy admits only the images its
# values name, so it is installed where a test asks for it (with the values matching the operator's),
# and the chart is otherwise installed with it off.
ADMISSION_POLICY_SETS = ("trainerImage.repository=trainer", "trainerImage.tag=test")
NO_ADMISSION_POLICY_SETS = ("admissionPolicy.enabled=false",)


@cache
def rendered_chart(helm_sets: tuple[str, ...]) -> tuple[dict[str, Any], ...]:
    """``helm template`` output of the real chart (hooks and tests excluded: helm does not install them)."""
    args = ["template", RELEASE, str(CHART), "--namespace", OPERATOR_NAMESPACE]
    for assignment in helm_sets:
        args += ["--set", assignment]
    result = helm(*args)
    if result.returncode != 0:
        raise RuntimeError(f"helm template failed: {result.stderr}")
    documents = [doc for doc in yaml.safe_load_all(result.stdout) if doc]
    return tuple(doc for doc in documents if "helm.sh/hook" not in (doc["metadata"].get("annotations") or {}))


def chart_crds() -> list[dict[str, Any]]:
    return [yaml.safe_load(path.read_text()) for path in sorted((CHART / "crds").glob("*.yaml"))]


def api_client(kubeconfig: Path) -> client.ApiClient:
    configuration = client.Configuration()
    config.load_kube_config(config_file=str(kubeconfig), client_configuration=configuration, persist_config=False)
    return client.ApiClient(configuration)


@dataclass
class Identity:
    """A client of the test cluster with its own credentials."""

    user: UserInfo
    kubeconfig: Path
    api_client: client.ApiClient = field(init=False)

    def __post_init__(self) -> None:
        self.api_client = api_client(self.kubeconfig)

    @property
    def core(self) -> client.CoreV1Api:
        return client.CoreV1Api(self.api_client)

    @property
    def batch(self) -> client.BatchV1Api:
        return client.BatchV1Api(self.api_client)

    @property
    def custom(self) -> client.CustomObjectsApi:
        return client.CustomObjectsApi(self.api_client)

    @property
    def rbac(self) -> client.RbacAuthorizationV1Api:
        return client.RbacAuthorizationV1Api(self.api_client)

    def plain(self, obj: Any) -> dict[str, Any]:
        return dict(self.api_client.sanitize_for_serialization(obj))

    def create(self, manifest: dict[str, Any]) -> dict[str, Any]:
        """Create any served kind the way ``kubectl create -f`` does: its resource found by discovery."""
        api_version, kind = manifest["apiVersion"], manifest["kind"]
        base = f"/apis/{api_version}" if "/" in api_version else f"/api/{api_version}"
        plural = self._plural(base, kind)
        namespace = manifest.get("metadata", {}).get("namespace")
        return dict(
            self.call("POST", f"{base}/namespaces/{namespace}/{plural}" if namespace else f"{base}/{plural}", manifest)
        )

    def _plural(self, base: str, kind: str) -> str:
        resources = self.call("GET", base)["resources"]
        return next(r["name"] for r in resources if r["kind"] == kind and "/" not in r["name"])

    def call(self, method: str, path: str, body: Any = None, content_type: str = "application/json") -> Any:
        """A raw request with this identity's credentials; refusals raise ApiException like the client's calls."""
        auth = self.api_client.configuration.auth_settings()["BearerToken"]
        headers = {"Content-Type": content_type, "Accept": "application/json", auth["key"]: auth["value"]}
        response = self.api_client.call_api(method, self.api_client.configuration.host + path, headers, body)
        response.read()
        if not 200 <= response.status < 300:
            raise ApiException(http_resp=response)
        return json.loads(response.data) if response.data else None


class TestCluster:
    """The API server, installed with the chart in ``mode``, with its identities."""

    __test__ = False  # not a pytest test class

    def __init__(
        self,
        apiserver: ApiServerThread,
        folder: Path,
        mode: RbacMode = CLUSTERWIDE,
        *,
        kueue: bool = True,
        admission_policy: bool | None = False,
    ) -> None:
        self.apiserver = apiserver
        self.folder = folder
        self.mode = mode
        # What `helm install` is given: the RBAC mode's values, and the admission policy on or off (None:
        # nothing more, the policy as the mode's values leave it).
        policy_sets = {True: ADMISSION_POLICY_SETS, False: NO_ADMISSION_POLICY_SETS, None: ()}[admission_policy]
        self.helm_sets = mode.helm_sets + policy_sets
        self._identities: dict[str, Identity] = {}
        self._bootstrap()
        self.installer = self.identity(INSTALLER)
        self._install(kueue)
        self.tenant = self.identity(TENANT)
        self.job_controller = self.identity(JOB_CONTROLLER)
        self.kubelet = self.identity(KUBELET)
        self.garbage_collector = self.identity(GARBAGE_COLLECTOR)
        self.kueue = self.identity(KUEUE)

    @property
    def url(self) -> str:
        return self.apiserver.url

    def identity(self, user: UserInfo) -> Identity:
        if user.name not in self._identities:
            path = self.folder / "kubeconfigs" / f"{user.name.replace(':', '_')}.yaml"
            self._identities[user.name] = Identity(user, self.apiserver.kubeconfig(user, path))
        return self._identities[user.name]

    # ------------------------------------------------------------------ what exists before helm install
    def _bootstrap(self) -> None:
        seeds: list[dict[str, Any]] = [
            {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}}
            for name in ("kube-system", OPERATOR_NAMESPACE, *TENANT_NAMESPACES)
        ]
        for user in COMPONENTS:
            seeds.append(
                {
                    "apiVersion": "rbac.authorization.k8s.io/v1",
                    "kind": "ClusterRoleBinding",
                    "metadata": {"name": f"test-{user.name.replace(':', '-')}"},
                    "roleRef": {
                        "apiGroup": "rbac.authorization.k8s.io",
                        "kind": "ClusterRole",
                        "name": "cluster-admin",
                    },
                    "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": user.name}],
                }
            )
        server = self.apiserver.server
        for seed in seeds:
            self.apiserver.call(lambda seed=seed: server.seed(seed))

    # ------------------------------------------------------------------ helm install, as the installer
    def _install(self, kueue: bool) -> None:
        for crd in chart_crds() + ([KUEUE_CRD] if kueue else []):
            self.installer.create(crd)
        for document in rendered_chart(self.helm_sets):
            if document["kind"] in ("Deployment", "Service", "ServiceMonitor", "PodMonitor", "PrometheusRule"):
                continue  # kinds this server does not serve; nothing in them grants or refuses anything
            manifest = dict(document)
            if manifest["kind"] in ("ConfigMap", "ServiceAccount", "Secret") and not manifest["metadata"].get(
                "namespace"
            ):
                manifest["metadata"] = {**manifest["metadata"], "namespace": OPERATOR_NAMESPACE}
            self.installer.create(manifest)
        for namespace in TENANT_NAMESPACES:
            self.installer.create(
                {
                    "apiVersion": "rbac.authorization.k8s.io/v1",
                    "kind": "RoleBinding",
                    "metadata": {"name": "ml-team-edit", "namespace": namespace},
                    "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "edit"},
                    "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "Group", "name": "ml-team"}],
                }
            )

    @property
    def operator_user(self) -> UserInfo:
        (account,) = [d for d in rendered_chart(self.helm_sets) if d["kind"] == "ServiceAccount"]
        return UserInfo.service_account(OPERATOR_NAMESPACE, account["metadata"]["name"])

    def operator_kubeconfig(self) -> Path:
        return self.apiserver.kubeconfig(self.operator_user, self.folder / "kubeconfigs" / "operator.yaml")
