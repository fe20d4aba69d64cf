"""The operator's RBAC is exactly the least privilege it needs, in both watch modes.

The expected grants are written out here by hand (not derived from the templates), so adding a
verb or resource to the chart, or losing one, fails these tests.
"""

from __future__ import annotations

import pytest

from tests.helm.chart import RELEASE_NAMESPACE, Manifest, of_kind, only, render

Grants = dict[tuple[str, str], set[str]]

NAMESPACED_GRANTS: Grants = {
    ("kubetune.dev", "finetunejobs"): {"get", "list", "watch", "patch"},
    ("kubetune.dev", "finetunejobs/status"): {"get", "patch"},
    ("batch", "jobs"): {"get", "list", "watch", "create", "patch", "delete"},
    ("", "configmaps"): {"get", "create"},
    ("", "serviceaccounts"): {"get", "create"},
    ("rbac.authorization.k8s.io", "roles"): {"get", "create"},
    ("rbac.authorization.k8s.io", "rolebindings"): {"get", "create"},
    ("", "secrets"): {"get"},
    ("", "persistentvolumeclaims"): {"get"},
    ("", "events"): {"create", "patch"},
    ("events.k8s.io", "events"): {"create", "patch"},
    ("kueue.x-k8s.io", "workloads"): {"get", "list", "watch", "patch"},
}
CLUSTER_GRANTS: Grants = {
    ("apiextensions.k8s.io", "customresourcedefinitions"): {"get", "list", "watch"},
    ("", "namespaces"): {"list", "watch"},
}


def grants(role: Manifest) -> Grants:
    """(apiGroup, resource) -> verbs; refuses wildcards and grants by name or URL."""
    flat: Grants = {}
    for rule in role["rules"]:
        where = f"{role['kind']}/{role['metadata']['name']} rule {rule}"
        assert set(rule) == {"apiGroups", "resources", "verbs"}, f"{where}: unexpected keys"
        for field in ("apiGroups", "resources", "verbs"):
            assert "*" not in rule[field], f"{where}: wildcard in {field}"
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                flat.setdefault((group, resource), set()).update(rule["verbs"])
    return flat


def assert_binds_operator(binding: Manifest, role: Manifest, account: str) -> None:
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": role["kind"],
        "name": role["metadata"]["name"],
    }
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": account, "namespace": RELEASE_NAMESPACE}]


def operator_account(docs: list[Manifest]) -> str:
    return str(only(docs, "Deployment")["spec"]["template"]["spec"]["serviceAccountName"])


def test_clusterwide_watch_grants_exactly_the_operator_rules_cluster_wide() -> None:
    docs = render()
    role = only(docs, "ClusterRole")
    assert grants(role) == NAMESPACED_GRANTS | CLUSTER_GRANTS
    assert not of_kind(docs, "Role") and not of_kind(docs, "RoleBinding")
    assert_binds_operator(only(docs, "ClusterRoleBinding"), role, operator_account(docs))


@pytest.mark.parametrize("namespaces", [["ml"], ["ml", "research"]])
def test_namespaced_watch_grants_rules_only_in_the_watched_namespaces(namespaces: list[str]) -> None:
    docs = render(f"watchNamespaces={{{','.join(namespaces)}}}")
    roles = of_kind(docs, "Role")
    bindings = {b["metadata"]["namespace"]: b for b in of_kind(docs, "RoleBinding")}
    assert sorted(r["metadata"]["namespace"] for r in roles) == namespaces == sorted(bindings)
    for role in roles:
        assert grants(role) == NAMESPACED_GRANTS
        assert_binds_operator(bindings[role["metadata"]["namespace"]], role, operator_account(docs))
    cluster_role = only(docs, "ClusterRole")
    assert grants(cluster_role) == CLUSTER_GRANTS, "namespaced mode needs only cluster-scoped reads cluster-wide"
    assert_binds_operator(only(docs, "ClusterRoleBinding"), cluster_role, operator_account(docs))


def test_existing_service_account_is_bound_instead_of_created() -> None:
    docs = render("serviceAccount.create=false", "serviceAccount.name=platform-operator")
    assert not of_kind(docs, "ServiceAccount")
    assert operator_account(docs) == "platform-operator"
    assert_binds_operator(only(docs, "ClusterRoleBinding"), only(docs, "ClusterRole"), "platform-operator")
