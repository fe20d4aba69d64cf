"""The RBAC authorizer, escalation prevention and bootstrap policy behave as kube-apiserver's do."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import pytest

from tests.kubeapi.bootstrap import bootstrap_objects
from tests.kubeapi.model import MASTERS, UserInfo
from tests.kubeapi.rbac import RBAC_GROUP, Attributes, Authorizer, Decision, label_selector_matches

GROUP = "kubetune.dev"
TRAINER = UserInfo.service_account("ml", "x-trainer")
ALICE = UserInfo.user("alice", "data-scientists")
ANONYMOUS = UserInfo("system:anonymous", ("system:unauthenticated",))


# ---------------------------------------------------------------------------------------------- fixtures
class Cluster:
    """The stored RBAC objects, as the server's ``objects(kind)`` callable serves them."""

    def __init__(self, *objects: dict[str, Any]) -> None:
        self.objects = list(objects)
        self.reads: list[tuple[str, str | None]] = []

    def __call__(self, kind: str, namespace: str | None = None, /) -> Iterable[dict[str, Any]]:
        self.reads.append((kind, namespace))
        return [
            obj
            for obj in self.objects
            if obj["kind"] == kind and (namespace is None or obj["metadata"].get("namespace") == namespace)
        ]

    def add(self, *objects: dict[str, Any]) -> None:
        self.objects.extend(objects)


def rule(groups: list[str], resources: list[str], verbs: list[str], names: list[str] | None = None) -> dict[str, Any]:
    raw: dict[str, Any] = {"apiGroups": groups, "resources": resources, "verbs": verbs}
    if names:
        raw["resourceNames"] = names
    return raw


def paths(urls: list[str], verbs: list[str]) -> dict[str, Any]:
    return {"nonResourceURLs": urls, "verbs": verbs}


def role(namespace: str, name: str, *rules: dict[str, Any]) -> dict[str, Any]:
    metadata = {"name": name, "namespace": namespace}
    return {"apiVersion": f"{RBAC_GROUP}/v1", "kind": "Role", "metadata": metadata, "rules": list(rules)}


def cluster_role(name: str, *rules: dict[str, Any], labels: dict[str, str] | None = None) -> dict[str, Any]:
    metadata: dict[str, Any] = {"name": name, "labels": labels or {}}
    return {"apiVersion": f"{RBAC_GROUP}/v1", "kind": "ClusterRole", "metadata": metadata, "rules": list(rules)}


def user(name: str) -> dict[str, Any]:
    return {"apiGroup": RBAC_GROUP, "kind": "User", "name": name}


def group(name: str) -> dict[str, Any]:
    return {"apiGroup": RBAC_GROUP, "kind": "Group", "name": name}


def service_account(name: str, namespace: str | None = None) -> dict[str, Any]:
    subject = {"kind": "ServiceAccount", "name": name}
    return subject if namespace is None else {**subject, "namespace": namespace}


def role_binding(namespace: str, name: str, role_ref: tuple[str, str], *subjects: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": f"{RBAC_GROUP}/v1",
        "kind": "RoleBinding",
        "metadata": {"name": name, "namespace": namespace},
        "roleRef": {"apiGroup": RBAC_GROUP, "kind": role_ref[0], "name": role_ref[1]},
        "subjects": list(subjects),
    }


def cluster_role_binding(name: str, role_name: str, *subjects: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": f"{RBAC_GROUP}/v1",
        "kind": "ClusterRoleBinding",
        "metadata": {"name": name},
        "roleRef": {"apiGroup": RBAC_GROUP, "kind": "ClusterRole", "name": role_name},
        "subjects": list(subjects),
    }


def request(
    who: UserInfo, verb: str, resource: str, namespace: str = "", name: str = "", group: str = GROUP
) -> Attributes:
    resource, _, subresource = resource.partition("/")
    return Attributes(who, verb, group, resource, subresource, namespace, name)


def path_request(who: UserInfo, path: str, verb: str = "get") -> Attributes:
    return Attributes(who, verb, path=path, resource_request=False)


JOBS_EDITOR = role("ml", "jobs-editor", rule([GROUP], ["finetunejobs"], ["get", "list", "patch"]))
TRAINER_IN_ML = role_binding("ml", "trainer-jobs", ("Role", "jobs-editor"), service_account("x-trainer"))


# ---------------------------------------------------------------------------------------------- rule matching
# (objects, request, allowed): every kind of grant, and the request next to it that it must not grant.
CASES: list[tuple[str, list[dict[str, Any]], Attributes, bool]] = [
    # system:masters needs no RBAC at all.
    ("masters bypass RBAC", [], request(UserInfo("root", (MASTERS,)), "delete", "nodes", group=""), True),
    ("nothing bound, nothing allowed", [], request(ALICE, "get", "finetunejobs", "ml"), False),
    # A ClusterRoleBinding grants everywhere; a RoleBinding only in its namespace.
    *[
        (f"ClusterRoleBinding grants {where}", [cluster_role("reader", rule([GROUP], ["finetunejobs"], ["list"])),
          cluster_role_binding("alice-reads", "reader", user("alice"))], request(ALICE, "list", "finetunejobs", ns), True)
        for where, ns in (("in a namespace", "ml"), ("at cluster scope", ""))
    ],
    ("RoleBinding grants its Role in its namespace", [JOBS_EDITOR, TRAINER_IN_ML], request(TRAINER, "patch", "finetunejobs", "ml"), True),
    ("RoleBinding grants nothing in another namespace", [JOBS_EDITOR, TRAINER_IN_ML], request(TRAINER, "patch", "finetunejobs", "other"), False),
    ("RoleBinding grants nothing at cluster scope", [JOBS_EDITOR, TRAINER_IN_ML], request(TRAINER, "list", "finetunejobs"), False),
    (
        "RoleBinding of a ClusterRole grants it in the binding's namespace",
        [cluster_role("editor", rule([GROUP], ["finetunejobs"], ["patch"])),
         role_binding("ml", "b", ("ClusterRole", "editor"), user("alice"))],
        request(ALICE, "patch", "finetunejobs", "ml"),
        True,
    ),
    (
        "RoleBinding of a ClusterRole grants nothing elsewhere",
        [cluster_role("editor", rule([GROUP], ["finetunejobs"], ["patch"])),
         role_binding("ml", "b", ("ClusterRole", "editor"), user("alice"))],
        request(ALICE, "patch", "finetunejobs", "other"),
        False,
    ),
    (
        "a Role of the same name in another namespace is not the binding's",
        [role("other", "jobs-editor", rule([GROUP], ["finetunejobs"], ["patch"])), TRAINER_IN_ML],
        request(TRAINER, "patch", "finetunejobs", "ml"),
        False,
    ),
    # Subjects.
    ("User subject: another user", [JOBS_EDITOR, role_binding("ml", "b", ("Role", "jobs-editor"), user("bob"))], request(ALICE, "get", "finetunejobs", "ml"), False),
    ("Group subject", [JOBS_EDITOR, role_binding("ml", "b", ("Role", "jobs-editor"), group("data-scientists"))], request(ALICE, "get", "finetunejobs", "ml"), True),
    ("Group subject: not a member", [JOBS_EDITOR, role_binding("ml", "b", ("Role", "jobs-editor"), group("admins"))], request(ALICE, "get", "finetunejobs", "ml"), False),
    ("ServiceAccount subject with its namespace", [JOBS_EDITOR, role_binding("ml", "b", ("Role", "jobs-editor"), service_account("x-trainer", "ml"))], request(TRAINER, "get", "finetunejobs", "ml"), True),
    ("ServiceAccount subject of another namespace", [JOBS_EDITOR, role_binding("ml", "b", ("Role", "jobs-editor"), service_account("x-trainer", "ci"))], request(TRAINER, "get", "finetunejobs", "ml"), False),
    ("ServiceAccount subject in a ClusterRoleBinding needs a namespace", [cluster_role("r", rule([GROUP], ["finetunejobs"], ["get"])), cluster_role_binding("b", "r", service_account("x-trainer"))], request(TRAINER, "get", "finetunejobs", "ml"), False),
    ("a user named like a ServiceAccount is one", [JOBS_EDITOR, role_binding("ml", "b", ("Role", "jobs-editor"), user("system:serviceaccount:ml:x-trainer"))], request(TRAINER, "get", "finetunejobs", "ml"), True),
    # apiGroups.
    ("apiGroups '*'", [cluster_role("r", rule(["*"], ["finetunejobs"], ["get"])), cluster_role_binding("b", "r", user("alice"))], request(ALICE, "get", "finetunejobs", "ml"), True),
    ("another apiGroup", [cluster_role("r", rule(["batch"], ["finetunejobs"], ["get"])), cluster_role_binding("b", "r", user("alice"))], request(ALICE, "get", "finetunejobs", "ml"), False),
    ("the core group is the empty string", [cluster_role("r", rule([""], ["pods"], ["get"])), cluster_role_binding("b", "r", user("alice"))], request(ALICE, "get", "pods", "ml", group=""), True),
    # resources and subresources.
    ("a resource is not its subresource", [cluster_role("r", rule([GROUP], ["finetunejobs"], ["patch"])), cluster_role_binding("b", "r", user("alice"))], request(ALICE, "patch", "finetunejobs/status", "ml"), False),
    ("resource/subresource", [cluster_role("r", rule([GROUP], ["finetunejobs/status"], ["patch"])), cluster_role_binding("b", "r", user("alice"))], request(ALICE, "patch", "finetunejobs/status", "ml"), True),
    ("a subresource is not its resource", [cluster_role("r", rule([GROUP], ["finetunejobs/status"], ["patch"])), cluster_role_binding("b", "r", user("alice"))], request(ALICE, "patch", "finetunejobs", "ml"), False),
    ("another subresource", [cluster_role("r", rule([GROUP], ["finetunejobs/status"], ["update"])), cluster_role_binding("b", "r", user("alice"))], request(ALICE, "update", "finetunejobs/finalizers", "ml"), False),
    ("'*' is every resource", [cluster_role("r", rule([GROUP], ["*"], ["get"])), cluster_role_binding("b", "r", user("alice"))], request(ALICE, "get", "finetunejobs", "ml"), True),
    ("'*' is every subresource too", [cluster_role("r", rule([GROUP], ["*"], ["update"])), cluster_role_binding("b", "r", user("alice"))], request(ALICE, "update", "finetunejobs/finalizers", "ml"), True),
    ("'*/status' is any status", [cluster_role("r", rule([GROUP], ["*/status"], ["patch"])), cluster_role_binding("b", "r", user("alice"))], request(ALICE, "patch", "finetunejobs/status", "ml"), True),
    ("'*/status' is no main resource", [cluster_role("r", rule([GROUP], ["*/status"], ["patch"])), cluster_role_binding("b", "r", user("alice"))], request(ALICE, "patch", "finetunejobs", "ml"), False),
    ("'*/status' is no other subresource", [cluster_role("r", rule([GROUP], ["*/status"], ["update"])), cluster_role_binding("b", "r", user("alice"))], request(ALICE, "update", "finetunejobs/finalizers", "ml"), False),
    # As in kube-apiserver, "finetunejobs/*" is a literal name, not a wildcard: it grants no subresource.
    ("'finetunejobs/*' is no wildcard", [cluster_role("r", rule([GROUP], ["finetunejobs/*"], ["patch"])), cluster_role_binding("b", "r", user("alice"))], request(ALICE, "patch", "finetunejobs/status", "ml"), False),
    # verbs.
    ("verbs '*'", [cluster_role("r", rule([GROUP], ["finetunejobs"], ["*"])), cluster_role_binding("b", "r", user("alice"))], request(ALICE, "deletecollection", "finetunejobs", "ml"), True),
    ("another verb", [cluster_role("r", rule([GROUP], ["finetunejobs"], ["get"])), cluster_role_binding("b", "r", user("alice"))], request(ALICE, "watch", "finetunejobs", "ml"), False),
    # resourceNames.
    ("resourceNames: that name", [cluster_role("r", rule([GROUP], ["finetunejobs"], ["get", "list", "create"], ["x"])), cluster_role_binding("b", "r", user("alice"))], request(ALICE, "get", "finetunejobs", "ml", "x"), True),
    ("resourceNames: another name", [cluster_role("r", rule([GROUP], ["finetunejobs"], ["get", "list", "create"], ["x"])), cluster_role_binding("b", "r", user("alice"))], request(ALICE, "get", "finetunejobs", "ml", "y"), False),
    ("resourceNames: never a list", [cluster_role("r", rule([GROUP], ["finetunejobs"], ["get", "list", "create"], ["x"])), cluster_role_binding("b", "r", user("alice"))], request(ALICE, "list", "finetunejobs", "ml"), False),
    ("resourceNames: never a create without name", [cluster_role("r", rule([GROUP], ["finetunejobs"], ["get", "list", "create"], ["x"])), cluster_role_binding("b", "r", user("alice"))], request(ALICE, "create", "finetunejobs", "ml"), False),
    # nonResourceURLs.
    ("nonResourceURL exact", [cluster_role("r", paths(["/version"], ["get"])), cluster_role_binding("b", "r", user("alice"))], path_request(ALICE, "/version"), True),
    ("nonResourceURL exact is not a prefix", [cluster_role("r", paths(["/version"], ["get"])), cluster_role_binding("b", "r", user("alice"))], path_request(ALICE, "/version/x"), False),
    ("nonResourceURL trailing '*' is a prefix", [cluster_role("r", paths(["/apis/*"], ["get"])), cluster_role_binding("b", "r", user("alice"))], path_request(ALICE, "/apis/kubetune.dev/v1alpha1"), True),
    ("nonResourceURL prefix needs the prefix", [cluster_role("r", paths(["/apis/*"], ["get"])), cluster_role_binding("b", "r", user("alice"))], path_request(ALICE, "/apis"), False),
    ("nonResourceURL '*'", [cluster_role("r", paths(["*"], ["get"])), cluster_role_binding("b", "r", user("alice"))], path_request(ALICE, "/metrics"), True),
    ("nonResourceURL verb", [cluster_role("r", paths(["*"], ["get"])), cluster_role_binding("b", "r", user("alice"))], path_request(ALICE, "/metrics", "post"), False),
    ("nonResourceURLs only through ClusterRoleBindings", [cluster_role("r", paths(["*"], ["*"])), role_binding("ml", "b", ("ClusterRole", "r"), user("alice"))], path_request(ALICE, "/version"), False),
    ("a resource rule grants no path", [cluster_role("r", rule(["*"], ["*"], ["*"])), cluster_role_binding("b", "r", user("alice"))], path_request(ALICE, "/version"), False),
    ("a path rule grants no resource", [cluster_role("r", paths(["*"], ["*"])), cluster_role_binding("b", "r", user("alice"))], request(ALICE, "get", "finetunejobs", "ml"), False),
    # A binding to a role that does not exist grants nothing, and breaks nothing.
    ("binding to a missing ClusterRole", [cluster_role_binding("b", "missing", user("alice"))], request(ALICE, "get", "finetunejobs", "ml"), False),
    ("binding to a missing Role", [role_binding("ml", "b", ("Role", "missing"), user("alice"))], request(ALICE, "get", "finetunejobs", "ml"), False),
]  # fmt: skip


@pytest.mark.parametrize(
    ("objects", "attributes", "allowed"), [case[1:] for case in CASES], ids=[case[0] for case in CASES]
)
def test_rule_matching(objects: list[dict[str, Any]], attributes: Attributes, allowed: bool) -> None:
    decisions: list[tuple[Attributes, Decision]] = []
    authorizer = Authorizer(Cluster(*objects), on_decision=lambda a, d: decisions.append((a, d)))
    decision = authorizer.authorize(attributes)
    assert decision.allowed is allowed, decision.reason
    assert decisions == [(attributes, decision)], "every authorize() call is reported to on_decision"


def test_decision_reason_names_binding_role_and_subject() -> None:
    authorizer = Authorizer(Cluster(JOBS_EDITOR, TRAINER_IN_ML))
    decision = authorizer.authorize(request(TRAINER, "patch", "finetunejobs", "ml", "x"))
    assert decision.reason == (
        'RBAC: allowed by RoleBinding "trainer-jobs/ml" of Role "jobs-editor" to ServiceAccount "x-trainer/ml"'
    )
    crb = Authorizer(Cluster(cluster_role("y", rule(["*"], ["*"], ["*"])), cluster_role_binding("x", "y", user("z"))))
    assert crb.authorize(request(UserInfo.user("z"), "get", "pods")).reason == (
        'RBAC: allowed by ClusterRoleBinding "x" of ClusterRole "y" to User "z"'
    )
    denied = authorizer.authorize(request(TRAINER, "delete", "finetunejobs", "ml", "x"))
    assert not denied.allowed
    assert '"delete" resource "finetunejobs.kubetune.dev" named "x" in namespace "ml"' in denied.reason


# ---------------------------------------------------------------------------------------------- 403 messages
@pytest.mark.parametrize(
    ("attributes", "message", "details"),
    [
        (
            request(TRAINER, "patch", "finetunejobs/status", "ml", "x"),
            'finetunejobs.kubetune.dev "x" is forbidden: User "system:serviceaccount:ml:x-trainer" cannot patch'
            ' resource "finetunejobs/status" in API group "kubetune.dev" in the namespace "ml"',
            {"name": "x", "group": GROUP, "kind": "finetunejobs"},
        ),
        (
            request(ALICE, "list", "namespaces", group=""),
            'namespaces is forbidden: User "alice" cannot list resource "namespaces" in API group "" at the cluster scope',
            {"kind": "namespaces"},
        ),
        (path_request(ALICE, "/apis"), 'forbidden: User "alice" cannot get path "/apis"', {}),
    ],
    ids=["namespaced subresource", "cluster scope, core group", "non-resource"],
)
def test_forbidden_message_shapes(attributes: Attributes, message: str, details: dict[str, Any]) -> None:
    error = Authorizer(Cluster()).forbidden(attributes)
    assert (error.code, error.reason, error.message, error.details) == (403, "Forbidden", message, details)


def test_forbidden_message_ends_with_the_missing_role_as_the_real_one_does() -> None:
    authorizer = Authorizer(Cluster(role_binding("ml", "b", ("ClusterRole", "gone"), user("alice"))))
    error = authorizer.forbidden(request(ALICE, "get", "finetunejobs", "ml", "x"))
    assert error.message.endswith('in the namespace "ml": RBAC: clusterrole.rbac.authorization.k8s.io "gone" not found')


# ---------------------------------------------------------------------------------------------- caching
def test_changes_apply_after_invalidate() -> None:
    cluster = Cluster(JOBS_EDITOR)
    authorizer = Authorizer(cluster)
    patch = request(TRAINER, "patch", "finetunejobs", "ml", "x")
    assert not authorizer.authorize(patch).allowed
    cluster.add(TRAINER_IN_ML)
    assert not authorizer.authorize(patch).allowed, "rules are cached until the server says RBAC changed"
    authorizer.invalidate()
    assert authorizer.authorize(patch).allowed
    cluster.objects.remove(TRAINER_IN_ML)
    authorizer.invalidate()
    assert not authorizer.authorize(patch).allowed


def test_a_namespaced_change_updates_only_its_own_entry() -> None:
    other_editor = role("other", "jobs-editor", rule([GROUP], ["finetunejobs"], ["get"]))
    alice_in_other = role_binding("other", "alice-jobs", ("Role", "jobs-editor"), user("alice"))
    cluster = Cluster(JOBS_EDITOR, other_editor, alice_in_other)
    authorizer = Authorizer(cluster)
    patch = request(TRAINER, "patch", "finetunejobs", "ml", "x")
    get_other = request(ALICE, "get", "finetunejobs", "other", "x")
    assert not authorizer.authorize(patch).allowed
    assert authorizer.authorize(get_other).allowed

    cluster.reads.clear()
    cluster.add(TRAINER_IN_ML)
    authorizer.changed("RoleBinding", TRAINER_IN_ML)
    assert authorizer.authorize(patch).allowed, "the new binding applies in its namespace"
    assert authorizer.authorize(get_other).allowed
    assert cluster.reads == [], "the index follows the change without reading anything again"

    cluster.objects.remove(alice_in_other)
    authorizer.changed("RoleBinding", alice_in_other, deleted=True)
    assert not authorizer.authorize(get_other).allowed, "a deleted binding stops granting"
    assert authorizer.authorize(patch).allowed

    narrower = role("ml", "jobs-editor", rule([GROUP], ["finetunejobs"], ["get"]))
    cluster.objects[cluster.objects.index(JOBS_EDITOR)] = narrower
    authorizer.changed("Role", narrower)
    assert not authorizer.authorize(patch).allowed, "an updated role grants what it says now"
    assert authorizer.authorize(request(TRAINER, "get", "finetunejobs", "ml", "x")).allowed

    cluster.add(cluster_role_binding("everyone", "jobs-reader", user("alice")))
    cluster.add(cluster_role("jobs-reader", rule([GROUP], ["finetunejobs"], ["get"])))
    authorizer.changed("ClusterRoleBinding", cluster.objects[-2])
    assert authorizer.authorize(get_other).allowed, "a cluster-wide change applies everywhere"
    assert ("ClusterRoleBinding", None) in cluster.reads, "and is read again whole"


def test_an_updated_binding_keeps_its_place_in_the_order() -> None:
    first = role_binding("ml", "first", ("Role", "jobs-editor"), service_account("x-trainer"))
    second = role_binding("ml", "second", ("Role", "jobs-editor"), service_account("x-trainer"))
    cluster = Cluster(JOBS_EDITOR, first, second)
    authorizer = Authorizer(cluster)
    patch = request(TRAINER, "patch", "finetunejobs", "ml", "x")
    assert '"first/ml"' in authorizer.authorize(patch).reason
    relabelled = {**first, "metadata": {**first["metadata"], "labels": {"a": "b"}}}
    authorizer.changed("RoleBinding", relabelled)
    assert '"first/ml"' in authorizer.authorize(patch).reason, "an update keeps its place, as in the listing"
    authorizer.changed("RoleBinding", first, deleted=True)
    authorizer.changed("RoleBinding", first)
    assert '"second/ml"' in authorizer.authorize(patch).reason, "made again, it comes last"


# ---------------------------------------------------------------------------------------------- aggregation
def aggregating(name: str, *selectors: dict[str, Any], labels: dict[str, str] | None = None) -> dict[str, Any]:
    return {**cluster_role(name, labels=labels), "aggregationRule": {"clusterRoleSelectors": list(selectors)}}


def test_aggregated_cluster_role_gathers_matching_roles_after_invalidate() -> None:
    cluster = Cluster(*bootstrap_objects(), role_binding("ml", "alice-edits", ("ClusterRole", "edit"), user("alice")))
    authorizer = Authorizer(cluster)
    patch_jobs = request(ALICE, "patch", "finetunejobs", "ml", "x")
    assert authorizer.authorize(request(ALICE, "create", "jobs", "ml", group="batch")).allowed
    assert not authorizer.authorize(patch_jobs).allowed

    cluster.add(
        cluster_role(
            "kubetune-edit",
            rule([GROUP], ["finetunejobs"], ["create", "patch", "update", "delete"]),
            labels={f"{RBAC_GROUP}/aggregate-to-edit": "true"},
        )
    )
    authorizer.invalidate()
    assert authorizer.authorize(patch_jobs).allowed
    assert authorizer.authorize(patch_jobs).reason == (
        'RBAC: allowed by RoleBinding "alice-edits/ml" of ClusterRole "edit" to User "alice"'
    )
    assert rule([GROUP], ["finetunejobs"], ["create", "patch", "update", "delete"]) in (
        authorizer.cluster_role_rules("admin") or []
    ), "admin aggregates edit, so it gets the new rules too"
    assert not authorizer.authorize(request(ALICE, "patch", "finetunejobs", "other", "x")).allowed


def test_aggregation_selectors_match_expressions_and_ignore_own_rules() -> None:
    cluster = Cluster(
        # It matches its own selector: the controller never counts a role among its own sources.
        aggregating(
            "team",
            {"matchExpressions": [{"key": "team", "operator": "In", "values": ["ml", "data"]}]},
            labels={"team": "data"},
        ),
        cluster_role("ml-jobs", rule([GROUP], ["finetunejobs"], ["get"]), labels={"team": "ml"}),
        cluster_role("web", rule(["apps"], ["deployments"], ["get"]), labels={"team": "web"}),
        cluster_role_binding("b", "team", user("alice")),
    )
    cluster.objects[0]["rules"] = [rule(["*"], ["*"], ["*"])]  # what a client wrote; the controller overwrites it
    authorizer = Authorizer(cluster)
    assert authorizer.authorize(request(ALICE, "get", "finetunejobs", "ml")).allowed
    assert not authorizer.authorize(request(ALICE, "get", "deployments", "ml", group="apps")).allowed
    assert authorizer.cluster_role_rules("team") == [rule([GROUP], ["finetunejobs"], ["get"])]


@pytest.mark.parametrize(
    ("selector", "labels", "matches"),
    [
        ({}, {}, True),
        ({"matchLabels": {"a": "1"}}, {"a": "1", "b": "2"}, True),
        ({"matchLabels": {"a": "1"}}, {"a": "2"}, False),
        ({"matchExpressions": [{"key": "a", "operator": "In", "values": ["1", "2"]}]}, {"a": "2"}, True),
        ({"matchExpressions": [{"key": "a", "operator": "In", "values": ["1"]}]}, {}, False),
        ({"matchExpressions": [{"key": "a", "operator": "NotIn", "values": ["1"]}]}, {}, True),
        ({"matchExpressions": [{"key": "a", "operator": "NotIn", "values": ["1"]}]}, {"a": "1"}, False),
        ({"matchExpressions": [{"key": "a", "operator": "Exists"}]}, {"a": ""}, True),
        ({"matchExpressions": [{"key": "a", "operator": "Exists"}]}, {"b": "1"}, False),
        ({"matchExpressions": [{"key": "a", "operator": "DoesNotExist"}]}, {"b": "1"}, True),
        ({"matchExpressions": [{"key": "a", "operator": "DoesNotExist"}]}, {"a": "1"}, False),
        ({"matchLabels": {"a": "1"}, "matchExpressions": [{"key": "b", "operator": "Exists"}]}, {"a": "1"}, False),
    ],
)
def test_label_selectors(selector: dict[str, Any], labels: dict[str, str], matches: bool) -> None:
    assert label_selector_matches(selector, labels) is matches


# ---------------------------------------------------------------------------------------------- bootstrap policy
@pytest.mark.parametrize(
    ("who", "path", "allowed"),
    [
        (ALICE, "/api", True),
        (ALICE, "/api/v1", True),
        (ALICE, "/apis", True),
        (ALICE, "/apis/kubetune.dev/v1alpha1", True),
        (ALICE, "/version", True),
        (ALICE, "/openapi/v3", True),
        (TRAINER, "/apis/batch/v1", True),
        (ALICE, "/metrics", False),
        (ANONYMOUS, "/version", True),
        (ANONYMOUS, "/healthz", True),
        (ANONYMOUS, "/readyz", True),
        (ANONYMOUS, "/apis", False),
        (ANONYMOUS, "/api", False),
        (ANONYMOUS, "/openapi/v3", False),
    ],
)
def test_bootstrap_discovery(who: UserInfo, path: str, allowed: bool) -> None:
    assert Authorizer(Cluster(*bootstrap_objects())).authorize(path_request(who, path)).allowed is allowed


def test_bootstrap_roles() -> None:
    objects = bootstrap_objects()
    by_name = {(o["kind"], o["metadata"]["name"]): o for o in objects}
    assert by_name["ClusterRoleBinding", "cluster-admin"]["subjects"] == [group(MASTERS)]
    assert by_name["ClusterRole", "cluster-admin"]["rules"] == [rule(["*"], ["*"], ["*"]), paths(["*"], ["*"])]
    assert {s["name"] for s in by_name["ClusterRoleBinding", "system:public-info-viewer"]["subjects"]} == {
        "system:authenticated",
        "system:unauthenticated",
    }
    assert by_name["ClusterRole", "edit"]["metadata"]["labels"][f"{RBAC_GROUP}/aggregate-to-admin"] == "true"
    assert by_name["ClusterRole", "view"]["aggregationRule"] == {
        "clusterRoleSelectors": [{"matchLabels": {f"{RBAC_GROUP}/aggregate-to-view": "true"}}]
    }
    assert by_name["ClusterRole", "view"]["rules"], "served with the rules the aggregation controller writes"
    assert bootstrap_objects()[0] is not objects[0], "fresh copies: the server may own what it seeds"

    cluster = Cluster(
        *objects,
        role_binding("ml", "v", ("ClusterRole", "view"), user("viewer")),
        role_binding("ml", "a", ("ClusterRole", "admin"), user("boss")),
    )
    authorizer = Authorizer(cluster)
    viewer, boss = UserInfo.user("viewer"), UserInfo.user("boss")
    ssar = request(viewer, "create", "selfsubjectaccessreviews", group="authorization.k8s.io")
    assert authorizer.authorize(ssar).allowed, "system:basic-user is every authenticated user's"
    assert authorizer.authorize(request(viewer, "list", "pods", "ml", group="")).allowed
    assert not authorizer.authorize(request(viewer, "get", "secrets", "ml", "s", group="")).allowed
    assert not authorizer.authorize(request(viewer, "create", "pods", "ml", group="")).allowed
    assert authorizer.authorize(request(boss, "create", "rolebindings", "ml", group=RBAC_GROUP)).allowed
    assert authorizer.authorize(request(boss, "get", "secrets", "ml", "s", group="")).allowed
    assert not authorizer.authorize(request(boss, "create", "rolebindings", "other", group=RBAC_GROUP)).allowed


# ---------------------------------------------------------------------------------------------- escalation
FINETUNE_STATUS_READER = role("ml", "status-reader", rule([GROUP], ["finetunejobs/status"], ["get"]))
MANAGES_ROLES = role("ml", "rbac-manager", rule([RBAC_GROUP], ["roles", "rolebindings"], ["create", "update"]))


def rbac_manager(*extra: dict[str, Any]) -> Cluster:
    """Alice may write Roles and RoleBindings in "ml" (what RBAC itself asks before storage does)."""
    return Cluster(MANAGES_ROLES, role_binding("ml", "alice-rbac", ("Role", "rbac-manager"), user("alice")), *extra)


def test_creating_a_role_with_permissions_not_held_is_refused_with_the_real_message() -> None:
    error = Authorizer(rbac_manager()).check_escalation(ALICE, FINETUNE_STATUS_READER, "ml")
    assert error is not None
    assert (error.code, error.reason) == (403, "Forbidden")
    assert error.message == (
        'roles.rbac.authorization.k8s.io "status-reader" is forbidden: user "alice" (groups=["data-scientists"'
        ' "system:authenticated"]) is attempting to grant RBAC permissions not currently held:\n'
        '{APIGroups:["kubetune.dev"], Resources:["finetunejobs/status"], Verbs:["get"]}'
    )
    assert error.details == {"name": "status-reader", "group": RBAC_GROUP, "kind": "roles"}


def test_refusal_lists_only_missing_rules_compacted_one_per_line() -> None:
    held = role("ml", "held", rule([""], ["configmaps"], ["get"]), rule([GROUP], ["finetunejobs"], ["get"], ["a"]))
    cluster = rbac_manager(held, role_binding("ml", "alice-held", ("Role", "held"), user("alice")))
    wanted = role(
        "ml",
        "wanted",
        rule(["", GROUP], ["configmaps", "finetunejobs/status"], ["get", "list"]),
        rule([GROUP], ["finetunejobs"], ["get"], ["a", "b"]),
        paths(["/healthz"], ["get"]),
    )
    error = Authorizer(cluster).check_escalation(ALICE, wanted, "ml")
    assert error is not None
    assert error.message.split("\n")[1:] == [
        '{APIGroups:[""], Resources:["configmaps"], Verbs:["list"]}',
        '{APIGroups:[""], Resources:["finetunejobs/status"], Verbs:["get" "list"]}',
        '{APIGroups:["kubetune.dev"], Resources:["configmaps"], Verbs:["get" "list"]}',
        '{APIGroups:["kubetune.dev"], Resources:["finetunejobs"], ResourceNames:["b"], Verbs:["get"]}',
        '{APIGroups:["kubetune.dev"], Resources:["finetunejobs/status"], Verbs:["get" "list"]}',
        '{NonResourceURLs:["/healthz"], Verbs:["get"]}',
    ]


@pytest.mark.parametrize(
    ("held", "wanted", "allowed"),
    [
        (rule([GROUP], ["finetunejobs/status"], ["get"]), rule([GROUP], ["finetunejobs/status"], ["get"]), True),
        (rule([GROUP], ["*/status"], ["get"]), rule([GROUP], ["finetunejobs/status"], ["get"]), True),
        (rule([GROUP], ["*"], ["*"]), rule([GROUP], ["finetunejobs", "finetunejobs/status"], ["get", "patch"]), True),
        (rule(["*"], ["finetunejobs"], ["get"]), rule([GROUP], ["finetunejobs"], ["get"]), True),
        (rule([GROUP], ["finetunejobs"], ["get"]), rule([GROUP], ["finetunejobs"], ["get"], ["x"]), True),
        # Granting a wildcard takes holding that wildcard.
        (rule([GROUP], ["finetunejobs"], ["get", "list"]), rule([GROUP], ["finetunejobs"], ["*"]), False),
        (rule([GROUP], ["finetunejobs"], ["get"]), rule([GROUP], ["*"], ["get"]), False),
        (rule([GROUP], ["finetunejobs"], ["get"]), rule(["*"], ["finetunejobs"], ["get"]), False),
        (rule([GROUP], ["finetunejobs"], ["get"]), rule([GROUP], ["finetunejobs/status"], ["get"]), False),
        (rule([GROUP], ["finetunejobs"], ["get"], ["x"]), rule([GROUP], ["finetunejobs"], ["get"]), False),
    ],
    ids=["same", "*/status", "* on *", "group *", "names within all", "verb *", "resource *", "group * wanted",
         "subresource", "all names wanted"],
)  # fmt: skip
def test_role_coverage_uses_wildcard_semantics(held: dict[str, Any], wanted: dict[str, Any], allowed: bool) -> None:
    cluster = rbac_manager(role("ml", "held", held), role_binding("ml", "h", ("Role", "held"), user("alice")))
    error = Authorizer(cluster).check_escalation(ALICE, role("ml", "wanted", wanted), "ml")
    assert (error is None) is allowed, error and error.message


def test_cluster_role_needs_the_permissions_cluster_wide() -> None:
    # Alice holds the rule in "ml" only: enough for a Role there, not for a ClusterRole.
    cluster = rbac_manager(FINETUNE_STATUS_READER, role_binding("ml", "r", ("Role", "status-reader"), user("alice")))
    authorizer = Authorizer(cluster)
    assert authorizer.check_escalation(ALICE, role("ml", "copy", *FINETUNE_STATUS_READER["rules"]), "ml") is None
    error = authorizer.check_escalation(ALICE, cluster_role("copy", *FINETUNE_STATUS_READER["rules"]), "")
    assert error is not None
    assert error.message.startswith('clusterroles.rbac.authorization.k8s.io "copy" is forbidden: user "alice"')


def test_escalate_verb_allows_any_role_and_resource_names_apply_to_updates_only() -> None:
    escalate_any = role("ml", "escalator", rule([RBAC_GROUP], ["roles"], ["escalate"]))
    authorizer = Authorizer(rbac_manager(escalate_any, role_binding("ml", "e", ("Role", "escalator"), user("alice"))))
    assert authorizer.check_escalation(ALICE, FINETUNE_STATUS_READER, "ml") is None
    assert authorizer.check_escalation(ALICE, FINETUNE_STATUS_READER, "other") is not None

    escalate_named = role("ml", "escalator", rule([RBAC_GROUP], ["roles"], ["escalate"], ["status-reader"]))
    authorizer = Authorizer(rbac_manager(escalate_named, role_binding("ml", "e", ("Role", "escalator"), user("alice"))))
    # A create request carries no name, so a named escalate grant does not cover it (as in kube-apiserver).
    assert authorizer.check_escalation(ALICE, FINETUNE_STATUS_READER, "ml") is not None
    old = role("ml", "status-reader")
    assert authorizer.check_escalation(ALICE, FINETUNE_STATUS_READER, "ml", old=old) is None
    other = role("ml", "other-role", *FINETUNE_STATUS_READER["rules"])
    assert authorizer.check_escalation(ALICE, other, "ml", old=role("ml", "other-role")) is not None


def test_binding_needs_the_role_permissions_or_bind() -> None:
    binding = role_binding("ml", "trainer-status", ("Role", "status-reader"), service_account("x-trainer"))
    cluster = rbac_manager(FINETUNE_STATUS_READER)
    error = Authorizer(cluster).check_escalation(ALICE, binding, "ml")
    assert error is not None
    assert error.message == (
        'rolebindings.rbac.authorization.k8s.io "trainer-status" is forbidden: user "alice" (groups=["data-scientists"'
        ' "system:authenticated"]) is attempting to grant RBAC permissions not currently held:\n'
        '{APIGroups:["kubetune.dev"], Resources:["finetunejobs/status"], Verbs:["get"]}'
    )

    holds = Cluster(*cluster.objects, role_binding("ml", "alice-status", ("Role", "status-reader"), user("alice")))
    assert Authorizer(holds).check_escalation(ALICE, binding, "ml") is None

    def with_bind(names: list[str]) -> Authorizer:
        binder = role("ml", "binder", rule([RBAC_GROUP], ["roles"], ["bind"], names))
        return Authorizer(Cluster(*cluster.objects, binder, role_binding("ml", "b", ("Role", "binder"), user("alice"))))

    assert with_bind(["status-reader"]).check_escalation(ALICE, binding, "ml") is None
    assert with_bind(["another-role"]).check_escalation(ALICE, binding, "ml") is not None


def test_cluster_role_bindings_need_cluster_wide_permissions_role_bindings_local_ones() -> None:
    reader = cluster_role("status-reader", rule([GROUP], ["finetunejobs/status"], ["get"]))
    cluster = rbac_manager(reader, role_binding("ml", "alice-reads", ("ClusterRole", "status-reader"), user("alice")))
    authorizer = Authorizer(cluster)
    local = role_binding("ml", "x", ("ClusterRole", "status-reader"), user("bob"))
    assert authorizer.check_escalation(ALICE, local, "ml") is None
    assert authorizer.check_escalation(ALICE, {**local, "metadata": {"name": "x", "namespace": "ci"}}, "ci") is not None
    error = authorizer.check_escalation(ALICE, cluster_role_binding("x", "status-reader", user("bob")), "")
    assert error is not None
    assert error.message.startswith('clusterrolebindings.rbac.authorization.k8s.io "x" is forbidden: user "alice"')


def test_binding_a_role_that_does_not_exist_is_not_found() -> None:
    binding = role_binding("ml", "b", ("ClusterRole", "nope"), user("bob"))
    error = Authorizer(rbac_manager()).check_escalation(ALICE, binding, "ml")
    assert error is not None
    assert (error.code, error.reason, error.message) == (
        404,
        "NotFound",
        'clusterroles.rbac.authorization.k8s.io "nope" not found',
    )


def test_aggregation_rule_takes_cluster_admin() -> None:
    editor = Cluster(
        cluster_role("crole-writer", rule([RBAC_GROUP], ["clusterroles"], ["create"])),
        cluster_role_binding("alice-crole-writer", "crole-writer", user("alice")),
    )
    aggregated = aggregating("my-view", {"matchLabels": {"x": "y"}})
    error = Authorizer(editor).check_escalation(ALICE, aggregated, "")
    assert error is not None
    assert error.message == (
        'clusterroles.rbac.authorization.k8s.io "my-view" is forbidden: must have cluster-admin privileges to use'
        " the aggregationRule"
    )
    admin = Cluster(*editor.objects, *bootstrap_objects(), cluster_role_binding("a", "cluster-admin", user("alice")))
    assert Authorizer(admin).check_escalation(ALICE, aggregated, "") is None


def test_updates_of_garbage_collector_fields_only_are_not_checked() -> None:
    old = role("ml", "status-reader", *FINETUNE_STATUS_READER["rules"])
    new = {**old, "metadata": {**old["metadata"], "finalizers": ["x"], "ownerReferences": [{"name": "o"}]}}
    authorizer = Authorizer(rbac_manager())
    assert authorizer.check_escalation(ALICE, new, "ml", old=old) is None
    changed = {**new, "rules": [rule([GROUP], ["finetunejobs"], ["delete"])]}
    assert authorizer.check_escalation(ALICE, changed, "ml", old=old) is not None


def test_masters_may_grant_anything() -> None:
    root = UserInfo("root", (MASTERS,))
    decisions: list[Attributes] = []
    authorizer = Authorizer(Cluster(), on_decision=lambda a, d: decisions.append(a))
    assert authorizer.check_escalation(root, cluster_role("all", rule(["*"], ["*"], ["*"])), "") is None
    assert authorizer.check_escalation(root, cluster_role_binding("b", "missing", user("x")), "") is None
    assert decisions == [], "EscalationAllowed needs no authorization"


def test_escalation_checks_go_through_authorize_so_the_audit_sees_the_grants_used() -> None:
    decisions: list[tuple[Attributes, Decision]] = []
    cluster = rbac_manager(
        FINETUNE_STATUS_READER, role_binding("ml", "alice-status", ("Role", "status-reader"), user("alice"))
    )
    authorizer = Authorizer(cluster, on_decision=lambda a, d: decisions.append((a, d)))
    assert authorizer.check_escalation(ALICE, role("ml", "copy", *FINETUNE_STATUS_READER["rules"]), "ml") is None
    assert decisions == [
        (Attributes(ALICE, "escalate", RBAC_GROUP, "roles", namespace="ml"), decisions[0][1]),
        (
            Attributes(ALICE, "get", GROUP, "finetunejobs", "status", "ml"),
            Decision(True, 'RBAC: allowed by RoleBinding "alice-status/ml" of Role "status-reader" to User "alice"'),
        ),
    ]
    assert not decisions[0][1].allowed

    decisions.clear()
    binding = role_binding("ml", "x", ("Role", "status-reader"), user("bob"))
    assert authorizer.check_escalation(ALICE, binding, "ml") is None
    assert [(a.verb, a.resource, a.name) for a, _ in decisions] == [
        ("bind", "roles", "status-reader"),
        ("get", "finetunejobs", ""),
    ]


def test_refusal_reports_bindings_whose_roles_are_missing() -> None:
    cluster = rbac_manager(role_binding("ml", "dangling", ("Role", "gone"), user("alice")))
    error = Authorizer(cluster).check_escalation(ALICE, FINETUNE_STATUS_READER, "ml")
    assert error is not None
    assert error.message.endswith('; resolution errors: [roles.rbac.authorization.k8s.io "gone" not found]')
