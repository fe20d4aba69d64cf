"""The RBAC objects a fresh cluster has: the part of kube-apiserver's bootstrap policy a client can notice.

Shapes follow plugin/pkg/auth/authorizer/rbac/bootstrappolicy (policy.go and its testdata): the same
names, labels, annotations, aggregation rules and bindings to the system groups. The built-in rules of
``system:aggregate-to-*`` are a realistic subset of the real ones (the core workload resources), so
``admin``, ``edit`` and ``view`` bound to a test user behave as in a real cluster for those resources.
Discovery (``GET /api``, ``/apis``, ``/apis/<group>/<version>``) is open to every authenticated user,
as kopf needs; unauthenticated callers see only the public-info paths.
"""

from __future__ import annotations

from typing import Any

from tests.kubeapi.model import AUTHENTICATED, MASTERS
from tests.kubeapi.rbac import RBAC_GROUP, effective_cluster_role_rules

UNAUTHENTICATED = "system:unauthenticated"
SERVICE_ACCOUNTS = "system:serviceaccounts"
MONITORING = "system:monitoring"

READ = ["get", "list", "watch"]
WRITE = ["create", "delete", "deletecollection", "patch", "update"]
READ_WRITE = ["get", "list", "watch", "create", "update", "patch", "delete", "deletecollection"]


def _rule(groups: list[str], resources: list[str], verbs: list[str]) -> dict[str, Any]:
    return {"apiGroups": groups, "resources": resources, "verbs": verbs}


def _paths(urls: list[str], verbs: list[str]) -> dict[str, Any]:
    return {"nonResourceURLs": urls, "verbs": verbs}


def _metadata(name: str, extra_labels: dict[str, str] | None = None) -> dict[str, Any]:
    return {
        "name": name,
        "labels": {"kubernetes.io/bootstrapping": "rbac-defaults", **(extra_labels or {})},
        "annotations": {"rbac.authorization.kubernetes.io/autoupdate": "true"},
    }


def _cluster_role(
    name: str,
    rules: list[dict[str, Any]],
    *,
    labels: dict[str, str] | None = None,
    aggregate_from: str | None = None,
) -> dict[str, Any]:
    role: dict[str, Any] = {
        "apiVersion": f"{RBAC_GROUP}/v1",
        "kind": "ClusterRole",
        "metadata": _metadata(name, labels),
        "rules": rules,
    }
    if aggregate_from is not None:
        selector = {"matchLabels": {f"{RBAC_GROUP}/aggregate-to-{aggregate_from}": "true"}}
        role["aggregationRule"] = {"clusterRoleSelectors": [selector]}
    return role


def _binding(name: str, groups: list[str]) -> dict[str, Any]:
    return {
        "apiVersion": f"{RBAC_GROUP}/v1",
        "kind": "ClusterRoleBinding",
        "metadata": _metadata(name),
        "roleRef": {"apiGroup": RBAC_GROUP, "kind": "ClusterRole", "name": name},
        "subjects": [{"apiGroup": RBAC_GROUP, "kind": "Group", "name": group} for group in groups],
    }


def _aggregate_to(role: str) -> dict[str, str]:
    return {f"{RBAC_GROUP}/aggregate-to-{role}": "true"}


_PUBLIC_INFO = ["/healthz", "/livez", "/readyz", "/version", "/version/"]

_AGGREGATE_TO_VIEW = [
    _rule(
        [""],
        [
            "configmaps",
            "endpoints",
            "persistentvolumeclaims",
            "persistentvolumeclaims/status",
            "pods",
            "replicationcontrollers",
            "replicationcontrollers/scale",
            "serviceaccounts",
            "services",
            "services/status",
        ],
        READ,
    ),
    _rule(
        [""],
        ["bindings", "events", "limitranges", "namespaces/status", "pods/log", "pods/status", "resourcequotas"],
        READ,
    ),
    _rule([""], ["namespaces"], READ),
    _rule(["discovery.k8s.io"], ["endpointslices"], READ),
    _rule(
        ["apps"],
        ["controllerrevisions", "daemonsets", "deployments", "deployments/scale", "replicasets", "statefulsets"],
        READ,
    ),
    _rule(["batch"], ["cronjobs", "cronjobs/status", "jobs", "jobs/status"], READ),
    _rule(["policy"], ["poddisruptionbudgets", "poddisruptionbudgets/status"], READ),
    _rule(["networking.k8s.io"], ["ingresses", "ingresses/status", "networkpolicies"], READ),
]

_AGGREGATE_TO_EDIT = [
    _rule([""], ["pods/attach", "pods/exec", "pods/portforward", "pods/proxy", "secrets", "services/proxy"], READ),
    _rule([""], ["serviceaccounts"], ["impersonate"]),
    _rule([""], ["pods", "pods/attach", "pods/exec", "pods/portforward", "pods/proxy"], WRITE),
    _rule([""], ["pods/eviction"], ["create"]),
    _rule(
        [""],
        [
            "configmaps",
            "events",
            "persistentvolumeclaims",
            "replicationcontrollers",
            "secrets",
            "serviceaccounts",
            "services",
        ],
        WRITE,
    ),
    _rule([""], ["serviceaccounts/token"], ["create"]),
    _rule(["apps"], ["daemonsets", "deployments", "deployments/scale", "replicasets", "statefulsets"], WRITE),
    _rule(["batch"], ["cronjobs", "jobs"], WRITE),
    _rule(["policy"], ["poddisruptionbudgets"], WRITE),
    _rule(["networking.k8s.io"], ["ingresses", "networkpolicies"], WRITE),
    _rule(["coordination.k8s.io"], ["leases"], READ_WRITE),
]

_AGGREGATE_TO_ADMIN = [
    _rule(["authorization.k8s.io"], ["localsubjectaccessreviews"], ["create"]),
    _rule([RBAC_GROUP], ["rolebindings", "roles"], READ_WRITE),
]


def _cluster_roles() -> list[dict[str, Any]]:
    return [
        _cluster_role("cluster-admin", [_rule(["*"], ["*"], ["*"]), _paths(["*"], ["*"])]),
        # The user-facing roles hold nothing of their own: the aggregation controller fills them in,
        # and "view" feeds "edit" which feeds "admin".
        _cluster_role("admin", [], aggregate_from="admin"),
        _cluster_role("edit", [], labels=_aggregate_to("admin"), aggregate_from="edit"),
        _cluster_role("view", [], labels=_aggregate_to("edit"), aggregate_from="view"),
        _cluster_role("system:aggregate-to-admin", _AGGREGATE_TO_ADMIN, labels=_aggregate_to("admin")),
        _cluster_role("system:aggregate-to-edit", _AGGREGATE_TO_EDIT, labels=_aggregate_to("edit")),
        _cluster_role("system:aggregate-to-view", _AGGREGATE_TO_VIEW, labels=_aggregate_to("view")),
        _cluster_role(
            "system:basic-user",
            [
                _rule(["authorization.k8s.io"], ["selfsubjectaccessreviews", "selfsubjectrulesreviews"], ["create"]),
                _rule(["authentication.k8s.io"], ["selfsubjectreviews"], ["create"]),
            ],
        ),
        _cluster_role(
            "system:discovery",
            [_paths(["/api", "/api/*", "/apis", "/apis/*", *_PUBLIC_INFO, "/openapi", "/openapi/*"], ["get"])],
        ),
        _cluster_role("system:public-info-viewer", [_paths(_PUBLIC_INFO, ["get"])]),
        _cluster_role(
            "system:monitoring",
            [
                _paths(
                    [
                        "/healthz",
                        "/healthz/*",
                        "/livez",
                        "/livez/*",
                        "/readyz",
                        "/readyz/*",
                        "/metrics",
                        "/metrics/slis",
                    ],
                    ["get"],
                )
            ],
        ),
        _cluster_role(
            "system:service-account-issuer-discovery",
            [
                _paths(
                    [
                        "/.well-known/openid-configuration",
                        "/.well-known/openid-configuration/",
                        "/openid/v1/jwks",
                        "/openid/v1/jwks/",
                    ],
                    ["get"],
                )
            ],
        ),
    ]


def _cluster_role_bindings() -> list[dict[str, Any]]:
    return [
        _binding("cluster-admin", [MASTERS]),
        _binding("system:basic-user", [AUTHENTICATED]),
        _binding("system:discovery", [AUTHENTICATED]),
        _binding("system:public-info-viewer", [AUTHENTICATED, UNAUTHENTICATED]),
        _binding("system:monitoring", [MONITORING]),
        _binding("system:service-account-issuer-discovery", [SERVICE_ACCOUNTS]),
    ]


def bootstrap_objects() -> list[dict[str, Any]]:
    """Fresh copies of the bootstrap ClusterRoles and ClusterRoleBindings, for the server to seed and serve.

    ``admin``, ``edit`` and ``view`` already carry the rules the aggregation controller would have
    written by the time a client looks (the authorizer recomputes them itself whenever RBAC changes).
    """
    roles = _cluster_roles()
    aggregated = effective_cluster_role_rules(roles)
    for role in roles:
        if "aggregationRule" in role:
            role["rules"] = [rule.to_dict() for rule in aggregated[role["metadata"]["name"]]]
    return [*roles, *_cluster_role_bindings()]
