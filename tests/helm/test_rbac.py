"""The chart's RBAC: bound to the operator's own ServiceAccount, namespaced unless cluster-wide is asked
for (``clusterWide: true``), no wildcards, and FineTuneJobs added to the built-in user roles.

Which grants exactly is proven by use, not written out here: tests/operator/test_rbac_usage.py compares
the chart's grants with every request the operator made over the whole operator suite, both ways.
"""

from __future__ import annotations

import pytest

from tests.helm.chart import CLUSTER_WIDE, RELEASE_NAMESPACE, Manifest, of_kind, only, render

Grants = dict[tuple[str, str], set[str]]


def operator_roles(docs: list[Manifest], kind: str) -> list[Manifest]:
    return [d for d in of_kind(docs, kind) if d["metadata"]["labels"].get("app.kubernetes.io/component") == "operator"]


def the_operator_role(docs: list[Manifest], kind: str) -> Manifest:
    (role,) = operator_roles(docs, kind)
    return role


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


def test_clusterwide_watch_grants_every_operator_rule_cluster_wide() -> None:
    docs = render(*CLUSTER_WIDE)
    role = the_operator_role(docs, "ClusterRole")
    flat = grants(role)
    assert flat[("kubetune.dev", "finetunejobs/status")] == {"patch"}
    assert ("batch", "jobs") in flat and ("", "secrets") in flat, "every operator rule, in every namespace"
    assert ("", "namespaces") not in flat, "cluster-wide, kopf needs no namespace list"
    assert not of_kind(docs, "Role") and not of_kind(docs, "RoleBinding")
    assert_binds_operator(only(docs, "ClusterRoleBinding"), role, operator_account(docs))


@pytest.mark.parametrize(
    ("sets", "namespaces"),
    [((), ["default"]), (("watchNamespaces={ml}",), ["ml"]), (("watchNamespaces={ml,research}",), ["ml", "research"])],
    ids=["defaults", "one", "two"],
)
def test_namespaced_watch_grants_rules_only_in_the_watched_namespaces(
    sets: tuple[str, ...], namespaces: list[str]
) -> None:
    """Namespaced is the default: with no values, a Role in `default` only."""
    docs = render(*sets)
    roles = of_kind(docs, "Role")
    bindings = {b["metadata"]["namespace"]: b for b in of_kind(docs, "RoleBinding")}
    assert sorted(r["metadata"]["namespace"] for r in roles) == namespaces == sorted(bindings)
    clusterwide = grants(the_operator_role(render(*CLUSTER_WIDE), "ClusterRole"))
    for role in roles:
        assert grants(role).items() <= clusterwide.items(), "the same namespaced rules as cluster-wide"
        assert ("batch", "jobs") in grants(role)
        assert_binds_operator(bindings[role["metadata"]["namespace"]], role, operator_account(docs))
    cluster_role = the_operator_role(docs, "ClusterRole")
    assert set(grants(cluster_role)) == {
        ("apiextensions.k8s.io", "customresourcedefinitions"),
        ("", "namespaces"),
    }, "namespaced mode holds only cluster-scoped reads cluster-wide"
    assert_binds_operator(only(docs, "ClusterRoleBinding"), cluster_role, operator_account(docs))


def test_existing_service_account_is_bound_instead_of_created() -> None:
    docs = render("serviceAccount.create=false", "serviceAccount.name=platform-operator")
    assert not of_kind(docs, "ServiceAccount")
    assert operator_account(docs) == "platform-operator"
    assert_binds_operator(only(docs, "ClusterRoleBinding"), the_operator_role(docs, "ClusterRole"), "platform-operator")


def test_finetunejobs_join_the_built_in_user_roles_unless_disabled() -> None:
    docs = render()
    user_roles = {
        r["metadata"]["name"]: r for r in of_kind(docs, "ClusterRole") if r not in operator_roles(docs, "ClusterRole")
    }
    edit, view = user_roles["kt-kubetune-edit"], user_roles["kt-kubetune-view"]
    aggregate = "rbac.authorization.k8s.io/aggregate-to-"
    assert {k for k, v in edit["metadata"]["labels"].items() if k.startswith(aggregate) and v == "true"} == {
        aggregate + "admin",
        aggregate + "edit",
    }
    assert view["metadata"]["labels"][aggregate + "view"] == "true"
    assert grants(edit)[("kubetune.dev", "finetunejobs")] >= {"create", "delete", "get", "list", "watch"}
    assert grants(view)[("kubetune.dev", "finetunejobs")] == {"get", "list", "watch"}
    assert len(of_kind(render("userRoles.aggregateToDefaultRoles=false"), "ClusterRole")) == 1


def test_network_policies_are_granted_only_with_trainer_egress_on() -> None:
    """The per-job egress NetworkPolicy (networkPolicy.trainerEgress): read, created, put back when changed."""
    policies = ("networking.k8s.io", "networkpolicies")
    assert policies not in grants(the_operator_role(render(*CLUSTER_WIDE), "ClusterRole"))
    on = "networkPolicy.trainerEgress.enabled=true"
    assert grants(the_operator_role(render(on, *CLUSTER_WIDE), "ClusterRole"))[policies] == {"get", "create", "patch"}
    namespaced = render(on, "watchNamespaces={ml}")
    assert grants(the_operator_role(namespaced, "Role"))[policies] == {"get", "create", "patch"}
    assert policies not in grants(the_operator_role(namespaced, "ClusterRole")), "only where it watches"


def test_platform_webhooks_grant_reading_exactly_their_secrets_in_the_release_namespace() -> None:
    """notifications.webhooks: the operator reads those Secrets (URL, signing key) and no other of its namespace."""
    assert not [r for r in of_kind(render(), "Role") if r["metadata"]["name"].endswith("-webhooks")]
    hooks = ("notifications.webhooks[0].name=ci", "notifications.webhooks[0].secretName=ci-hook")
    chat = ("notifications.webhooks[1].name=chat", "notifications.webhooks[1].secretName=slack-hook")
    docs = render(*hooks, *chat)
    (role,) = [r for r in of_kind(docs, "Role") if r["metadata"]["name"].endswith("-webhooks")]
    assert role["metadata"]["namespace"] == RELEASE_NAMESPACE
    assert role["rules"] == [
        {"apiGroups": [""], "resources": ["secrets"], "resourceNames": ["ci-hook", "slack-hook"], "verbs": ["get"]}
    ]
    (binding,) = [b for b in of_kind(docs, "RoleBinding") if b["roleRef"]["name"] == role["metadata"]["name"]]
    assert binding["metadata"]["namespace"] == RELEASE_NAMESPACE
    assert [s["name"] for s in binding["subjects"]] == [only(docs, "ServiceAccount")["metadata"]["name"]]
