"""RBAC authorization and escalation prevention, as kube-apiserver's RBAC authorizer and RBAC storage do them.

- ``Authorizer.authorize`` mirrors plugin/pkg/auth/authorizer/rbac: a request is allowed when a rule of a
  role bound to the user allows it (ClusterRoleBindings everywhere, RoleBindings in their namespace);
  members of ``system:masters`` are allowed everything without RBAC being consulted.
- ``Authorizer.forbidden`` renders the 403 the real server sends for a denied request.
- ``Authorizer.check_escalation`` mirrors the Role/ClusterRole/RoleBinding/ClusterRoleBinding storage:
  nobody grants a permission they do not hold, unless they may ``escalate`` the role or ``bind`` it.
- Aggregated ClusterRoles get the rules the aggregation controller would write into them.

The effective rules of each (user, namespace) are computed once and cached, so that authorizing a
request is a short scan of the rules bound to that user. After an RBAC object changes the server calls
``changed(kind, obj)``: a Role or RoleBinding updates its own entry and drops the rule sets of its namespace;
a ClusterRole or ClusterRoleBinding drops everything (``invalidate()``).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from tests.kubeapi.model import MASTERS, ApiError, UserInfo

RBAC_GROUP = "rbac.authorization.k8s.io"
SERVICE_ACCOUNT_PREFIX = "system:serviceaccount:"
ALL = "*"
# Past this many cached (user, namespace) rule sets the cache starts over, so a long test session
# that invents many users cannot grow it without bound.
_MAX_CACHED_RULE_SETS = 4096


class Objects(Protocol):
    """The stored objects of a kind, in the server's listing order: all of them, or one namespace's."""

    def __call__(self, kind: str, namespace: str | None = None, /) -> Iterable[dict[str, Any]]: ...


DecisionListener = Callable[["Attributes", "Decision"], None]


@dataclass(frozen=True)
class Attributes:
    """What a request asks to do: kube-apiserver's ``authorizer.Attributes``."""

    user: UserInfo
    verb: str  # get list watch create update patch delete deletecollection, escalate, bind...; "get" for paths
    api_group: str = ""
    resource: str = ""  # plural, e.g. "finetunejobs"
    subresource: str = ""  # e.g. "status", "finalizers"
    namespace: str = ""  # "" for cluster-scoped requests and for all-namespaces list/watch
    name: str = ""  # "" for list/watch/create-without-name
    path: str = ""  # for non-resource requests, e.g. "/apis" or "/version"
    resource_request: bool = True


@dataclass(frozen=True)
class Decision:
    allowed: bool
    reason: str  # e.g. 'RBAC: allowed by ClusterRoleBinding "x" of ClusterRole "y" to User "z"'


# ---------------------------------------------------------------------------------------------- Go-style text
def go_quote(text: str) -> str:
    """``%q`` of a Go string (JSON escaping agrees with Go's for everything an RBAC name holds)."""
    return json.dumps(text, ensure_ascii=False)


def go_quote_list(items: Iterable[str]) -> str:
    """``%q`` of a Go ``[]string``: ``["a" "b"]``."""
    return "[" + " ".join(go_quote(item) for item in items) + "]"


def aggregate_errors(messages: list[str]) -> str:
    """What ``utilerrors.NewAggregate(errs).Error()`` prints: one message bare, several deduplicated in brackets."""
    unique = list(dict.fromkeys(messages))
    return unique[0] if len(unique) == 1 else "[" + ", ".join(unique) + "]"


# ---------------------------------------------------------------------------------------------- rules
@dataclass(frozen=True)
class PolicyRule:
    """One ``rules[]`` entry of a Role or ClusterRole, in the order the object lists its values."""

    verbs: tuple[str, ...] = ()
    api_groups: tuple[str, ...] = ()
    resources: tuple[str, ...] = ()
    resource_names: tuple[str, ...] = ()
    non_resource_urls: tuple[str, ...] = ()

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> PolicyRule:
        return cls(
            verbs=tuple(raw.get("verbs") or ()),
            api_groups=tuple(raw.get("apiGroups") or ()),
            resources=tuple(raw.get("resources") or ()),
            resource_names=tuple(raw.get("resourceNames") or ()),
            non_resource_urls=tuple(raw.get("nonResourceURLs") or ()),
        )

    def to_dict(self) -> dict[str, Any]:
        """The rule as Kubernetes JSON (empty lists omitted, as the real server omits them)."""
        raw: dict[str, Any] = {}
        if self.api_groups:
            raw["apiGroups"] = list(self.api_groups)
        if self.resources:
            raw["resources"] = list(self.resources)
        if self.resource_names:
            raw["resourceNames"] = list(self.resource_names)
        if self.non_resource_urls:
            raw["nonResourceURLs"] = list(self.non_resource_urls)
        raw["verbs"] = list(self.verbs)
        return raw

    # -------------------------------------------------------------- evaluation (rbac.go RuleAllows)
    def allows(self, request: Attributes) -> bool:
        if ALL not in self.verbs and request.verb not in self.verbs:
            return False
        if not request.resource_request:
            return self._url_matches(request.path)
        if ALL not in self.api_groups and request.api_group not in self.api_groups:
            return False
        if not self._resource_matches(request.resource, request.subresource):
            return False
        # A rule naming resources never matches a request without a name (list, watch, create).
        return not self.resource_names or request.name in self.resource_names

    def _resource_matches(self, resource: str, subresource: str) -> bool:
        resources = self.resources
        if ALL in resources:
            return True  # "*" is every resource and every subresource
        if not subresource:
            return resource in resources
        # "finetunejobs/status" exactly, or "*/status"; "finetunejobs/*" is no wildcard for RBAC.
        return f"{resource}/{subresource}" in resources or f"*/{subresource}" in resources

    def _url_matches(self, path: str) -> bool:
        for url in self.non_resource_urls:
            if url in (ALL, path):
                return True
            if url.endswith("*") and path.startswith(url.rstrip("*")):
                return True
        return False

    # -------------------------------------------------------------- escalation (policy_comparator.go)
    def atoms(self) -> Iterator[PolicyRule]:
        """The rule broken into rules of one group, resource, verb and name each (``breakdownRule``)."""
        for group in self.api_groups:
            for resource in self.resources:
                for verb in self.verbs:
                    if self.resource_names:
                        for name in self.resource_names:
                            yield PolicyRule((verb,), (group,), (resource,), (name,))
                    else:
                        yield PolicyRule((verb,), (group,), (resource,))
        for url in self.non_resource_urls:
            for verb in self.verbs:
                yield PolicyRule((verb,), non_resource_urls=(url,))

    def as_request(self, user: UserInfo, namespace: str) -> Attributes:
        """The request an atom of a rule stands for: holding the atom is being allowed that request.

        Asking the authorizer this is exactly ``Covers`` of policy_comparator.go for one atom: wildcards
        in the atom ("*" verb, group or resource, "*/status") are only allowed by the same wildcard.
        """
        if self.non_resource_urls:
            return Attributes(
                user, self.verbs[0], namespace=namespace, path=self.non_resource_urls[0], resource_request=False
            )
        resource, _, subresource = self.resources[0].partition("/")
        name = self.resource_names[0] if self.resource_names else ""
        return Attributes(user, self.verbs[0], self.api_groups[0], resource, subresource, namespace, name)

    def compact_string(self) -> str:
        """``CompactString`` of evaluation_helpers.go: ``{APIGroups:["g"], Resources:["r"], Verbs:["get"]}``."""
        parts = [
            f"{label}:{go_quote_list(values)}"
            for label, values in (
                ("APIGroups", self.api_groups),
                ("Resources", self.resources),
                ("NonResourceURLs", self.non_resource_urls),
                ("ResourceNames", self.resource_names),
                ("Verbs", self.verbs),
            )
            if values
        ]
        return "{" + ", ".join(parts) + "}"


def compact_rules(rules: list[PolicyRule]) -> list[PolicyRule]:
    """``CompactRules``: atoms of one group and resource (no names, no URLs) merged into one rule per resource."""
    compacted: list[PolicyRule] = []
    simple: dict[tuple[str, str], list[str]] = {}
    for rule in rules:
        is_simple = (
            len(rule.api_groups) == 1
            and len(rule.resources) == 1
            and not rule.resource_names
            and not rule.non_resource_urls
        )
        if is_simple:
            simple.setdefault((rule.api_groups[0], rule.resources[0]), []).extend(rule.verbs)
        else:
            compacted.append(rule)
    compacted.extend(PolicyRule(tuple(verbs), (group,), (resource,)) for (group, resource), verbs in simple.items())
    return compacted


FULL_AUTHORITY = (PolicyRule((ALL,), (ALL,), (ALL,)), PolicyRule((ALL,), non_resource_urls=(ALL,)))


# ---------------------------------------------------------------------------------------------- label selectors
def label_selector_matches(selector: Mapping[str, Any], labels: Mapping[str, str]) -> bool:
    """A ``metav1.LabelSelector`` (matchLabels and matchExpressions); the empty selector matches everything."""
    for key, value in (selector.get("matchLabels") or {}).items():
        if labels.get(key) != value:
            return False
    for expression in selector.get("matchExpressions") or ():
        key, operator, values = expression.get("key", ""), expression.get("operator"), expression.get("values") or ()
        if operator == "In":
            matched = key in labels and labels[key] in values
        elif operator == "NotIn":
            matched = key not in labels or labels[key] not in values  # an absent label is "not in"
        elif operator == "Exists":
            matched = key in labels
        elif operator == "DoesNotExist":
            matched = key not in labels
        else:
            matched = False  # validation refuses other operators; never let one widen a selector
        if not matched:
            return False
    return True


def _labels(obj: Mapping[str, Any]) -> Mapping[str, str]:
    return obj.get("metadata", {}).get("labels") or {}


def _name(obj: Mapping[str, Any]) -> str:
    return str(obj.get("metadata", {}).get("name", ""))


def _rules_of(obj: Mapping[str, Any]) -> tuple[PolicyRule, ...]:
    return tuple(PolicyRule.from_dict(raw) for raw in obj.get("rules") or ())


def effective_cluster_role_rules(cluster_roles: Iterable[Mapping[str, Any]]) -> dict[str, tuple[PolicyRule, ...]]:
    """The rules of every ClusterRole by name; an aggregated one has what the aggregation controller writes.

    The controller gives a ClusterRole with an ``aggregationRule`` the union, without duplicates, of the
    rules of the other ClusterRoles any of its selectors match (selector by selector, those roles by
    name), whatever rules the object itself lists. Aggregated roles that select aggregated roles (admin
    selects edit) see the latter's aggregated rules, the fixed point the controller converges to.
    """
    by_name = {_name(role): role for role in cluster_roles}
    resolved: dict[str, tuple[PolicyRule, ...]] = {}
    in_progress: set[str] = set()

    def resolve(name: str) -> tuple[PolicyRule, ...]:
        if name in resolved:
            return resolved[name]
        role = by_name[name]
        aggregation = role.get("aggregationRule")
        if aggregation is None or name in in_progress:
            # A selection cycle stops at the rules stored in the object, as the controller's would.
            return _rules_of(role)
        in_progress.add(name)
        rules: list[PolicyRule] = []
        for selector in aggregation.get("clusterRoleSelectors") or ():
            for other in sorted(by_name):
                if other != name and label_selector_matches(selector, _labels(by_name[other])):
                    rules.extend(rule for rule in resolve(other) if rule not in rules)
        in_progress.discard(name)
        resolved[name] = tuple(rules)
        return resolved[name]

    return {name: resolve(name) for name in by_name}


# ---------------------------------------------------------------------------------------------- bindings
@dataclass(frozen=True)
class _Binding:
    kind: str  # ClusterRoleBinding or RoleBinding
    name: str
    namespace: str  # "" for a ClusterRoleBinding
    role_kind: str
    role_name: str
    subjects: tuple[Mapping[str, Any], ...]
    order: int  # position in the listing, so that grants keep the order the server lists bindings in

    @classmethod
    def from_object(cls, obj: Mapping[str, Any], order: int) -> _Binding:
        role_ref = obj.get("roleRef") or {}
        return cls(
            kind=str(obj.get("kind", "")),
            name=_name(obj),
            namespace=str(obj.get("metadata", {}).get("namespace", "")),
            role_kind=str(role_ref.get("kind", "")),
            role_name=str(role_ref.get("name", "")),
            subjects=tuple(obj.get("subjects") or ()),
            order=order,
        )

    def service_account_namespace(self, subject: Mapping[str, Any]) -> str:
        # A RoleBinding's ServiceAccount subject without a namespace means the binding's namespace.
        return str(subject.get("namespace") or self.namespace)

    def applies_to(self, subject: Mapping[str, Any], user: UserInfo) -> bool:
        kind, name = subject.get("kind"), subject.get("name", "")
        if kind == "User":
            return user.name == name
        if kind == "Group":
            return name in user.groups
        if kind == "ServiceAccount":
            namespace = self.service_account_namespace(subject)
            return bool(namespace) and user.name == f"{SERVICE_ACCOUNT_PREFIX}{namespace}:{name}"
        return False

    def describe(self, user: UserInfo) -> str:
        """``RoleBinding "b/ns" of Role "r" to User "u"``, naming the first subject that is the user."""
        subject = next(s for s in self.subjects if self.applies_to(s, user))
        if subject.get("kind") == "ServiceAccount":
            who = f"ServiceAccount {go_quote(subject.get('name', '') + '/' + self.service_account_namespace(subject))}"
        else:
            who = f"{subject.get('kind')} {go_quote(subject.get('name', ''))}"
        binding = self.name if self.kind == "ClusterRoleBinding" else f"{self.name}/{self.namespace}"
        return f"{self.kind} {go_quote(binding)} of {self.role_kind} {go_quote(self.role_name)} to {who}"


class _SubjectIndex:
    """Bindings by the users, groups and service accounts they name, so a lookup never scans the others."""

    def __init__(self) -> None:
        self._by_user: dict[str, list[_Binding]] = {}
        self._by_group: dict[str, list[_Binding]] = {}
        self._by_service_account: dict[str, list[_Binding]] = {}  # by the user name it authenticates as
        self._by_name: dict[str, _Binding] = {}
        self._next_order = 0

    def _lists_of(self, binding: _Binding) -> Iterator[list[_Binding]]:
        for subject in binding.subjects:
            kind, name = subject.get("kind"), str(subject.get("name", ""))
            if kind == "User":
                yield self._by_user.setdefault(name, [])
            elif kind == "Group":
                yield self._by_group.setdefault(name, [])
            elif kind == "ServiceAccount" and (namespace := binding.service_account_namespace(subject)):
                yield self._by_service_account.setdefault(f"{SERVICE_ACCOUNT_PREFIX}{namespace}:{name}", [])

    def add(self, binding: _Binding) -> None:
        self._by_name[binding.name] = binding
        self._next_order = max(self._next_order, binding.order + 1)
        for bindings in self._lists_of(binding):
            bindings.append(binding)

    def remove(self, name: str) -> _Binding | None:
        binding = self._by_name.pop(name, None)
        if binding is not None:
            for bindings in self._lists_of(binding):
                bindings[:] = [b for b in bindings if b is not binding]
        return binding

    def put(self, obj: Mapping[str, Any]) -> None:
        """Add or replace one binding; a replaced one keeps its place in the listing order (as an update
        keeps an object's place in the server's listing), a new one comes last."""
        gone = self.remove(_name(obj))
        order = gone.order if gone is not None else self._next_order
        self.add(_Binding.from_object(obj, order))

    def bindings_for(self, user: UserInfo) -> list[_Binding]:
        found = {b.order: b for b in self._by_user.get(user.name, ())}
        found.update((b.order, b) for b in self._by_service_account.get(user.name, ()))
        for group in user.groups:
            found.update((b.order, b) for b in self._by_group.get(group, ()))
        return [found[order] for order in sorted(found)]


@dataclass(frozen=True)
class _MissingRole:
    """A binding's role that does not exist: it grants nothing, and shows up in denial messages."""

    kind: str
    name: str

    def message(self, *, storage: bool) -> str:
        # The authorizer reads roles from listers (singular resource in the error), the RBAC storage's
        # escalation check from the registry (plural), and each says so in its own words.
        if self.kind not in ("Role", "ClusterRole"):
            return f"unsupported role reference kind: {go_quote(self.kind)}"
        resource = self.kind.lower() + ("s" if storage else "")
        return f"{resource}.{RBAC_GROUP} {go_quote(self.name)} not found"


@dataclass
class _RuleSet:
    """Everything one user holds in one namespace: the rules with where they come from, in order."""

    grants: list[tuple[str, tuple[PolicyRule, ...]]] = field(default_factory=list)
    missing: list[_MissingRole] = field(default_factory=list)


class _NamespaceRbac:
    """The Roles and RoleBindings of one namespace, kept up to date one object at a time."""

    def __init__(self, objects: Objects, namespace: str) -> None:
        self.roles = {_name(role): _rules_of(role) for role in objects("Role", namespace)}
        self.bindings = _SubjectIndex()
        for order, obj in enumerate(objects("RoleBinding", namespace)):
            self.bindings.add(_Binding.from_object(obj, order))

    def apply(self, kind: str, obj: Mapping[str, Any], *, deleted: bool) -> None:
        if kind == "Role":
            if deleted:
                self.roles.pop(_name(obj), None)
            else:
                self.roles[_name(obj)] = _rules_of(obj)
        elif deleted:
            self.bindings.remove(_name(obj))
        else:
            self.bindings.put(obj)


class _Index:
    """The RBAC objects of one moment, indexed for rule resolution. A namespace's part is built when first
    asked for, then follows each change of its Roles and RoleBindings (an operator makes two per
    FineTuneJob, often all in one namespace: rebuilding after each made the cost grow with the square
    of the jobs)."""

    def __init__(self, objects: Objects) -> None:
        self._objects = objects
        self.cluster_roles = effective_cluster_role_rules(objects("ClusterRole"))
        self.cluster_bindings = _SubjectIndex()
        for order, obj in enumerate(objects("ClusterRoleBinding")):
            self.cluster_bindings.add(_Binding.from_object(obj, order))
        self._namespaces: dict[str, _NamespaceRbac] = {}

    def namespace(self, namespace: str) -> _NamespaceRbac:
        part = self._namespaces.get(namespace)
        if part is None:
            part = self._namespaces[namespace] = _NamespaceRbac(self._objects, namespace)
        return part

    def apply(self, kind: str, obj: Mapping[str, Any], *, deleted: bool) -> None:
        """One Role or RoleBinding created, updated or deleted (a namespace not built yet reads it then)."""
        part = self._namespaces.get(str(obj.get("metadata", {}).get("namespace", "")))
        if part is not None:
            part.apply(kind, obj, deleted=deleted)

    def role_rules(self, kind: str, name: str, namespace: str) -> tuple[PolicyRule, ...] | None:
        """``GetRoleReferenceRules``: a Role is looked up in the binding's namespace; None when there is none."""
        if kind == "ClusterRole":
            return self.cluster_roles.get(name)
        if kind == "Role" and namespace:
            return self.namespace(namespace).roles.get(name)
        return None

    def rule_set(self, user: UserInfo, namespace: str) -> _RuleSet:
        """``VisitRulesFor``: ClusterRoleBindings first, then (with a namespace) that namespace's RoleBindings."""
        result = _RuleSet()
        bindings = self.cluster_bindings.bindings_for(user)
        if namespace:
            bindings += self.namespace(namespace).bindings.bindings_for(user)
        for binding in bindings:
            rules = self.role_rules(binding.role_kind, binding.role_name, binding.namespace)
            if rules is None:
                result.missing.append(_MissingRole(binding.role_kind, binding.role_name))
            elif rules:
                result.grants.append((binding.describe(user), rules))
        return result


# ---------------------------------------------------------------------------------------------- messages
def _forbidden_message(request: Attributes) -> str:
    """``forbiddenMessage`` of the endpoint handlers (responsewriters/errors.go)."""
    user = go_quote(request.user.name)
    if not request.resource_request:
        return f"User {user} cannot {request.verb} path {go_quote(request.path)}"
    resource = f"{request.resource}/{request.subresource}" if request.subresource else request.resource
    what = f"User {user} cannot {request.verb} resource {go_quote(resource)} in API group {go_quote(request.api_group)}"
    if request.namespace:
        return f"{what} in the namespace {go_quote(request.namespace)}"
    return f"{what} at the cluster scope"


def _sanitize(text: str) -> str:
    # The real handler HTML-escapes the message it builds from the request (the request is user input).
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _no_rules_reason(request: Attributes) -> str:
    """The denial kube-apiserver logs at -v=5, kept as the decision's reason for test failure messages."""
    if request.resource_request:
        resource = request.resource + (f".{request.api_group}" if request.api_group else "")
        resource += f"/{request.subresource}" if request.subresource else ""
        operation = f"{go_quote(request.verb)} resource {go_quote(resource)}"
        operation += f" named {go_quote(request.name)}" if request.name else ""
    else:
        operation = f"{go_quote(request.verb)} nonResourceURL {go_quote(request.path)}"
    scope = f"in namespace {go_quote(request.namespace)}" if request.namespace else "cluster-wide"
    user = request.user
    return f"RBAC: no rules authorize user {go_quote(user.name)} with groups {go_quote_list(user.groups)} to {operation} {scope}"


def forbidden_error(resource: str, group: str, name: str, message: str) -> ApiError:
    """``apierrors.NewForbidden``: ``<resource>.<group> "<name>" is forbidden: <message>``."""
    qualified = f"{resource}.{group}" if group else resource
    if not qualified:
        text = f"forbidden: {message}"
    elif not name:
        text = f"{qualified} is forbidden: {message}"
    else:
        text = f"{qualified} {go_quote(name)} is forbidden: {message}"
    details = {key: value for key, value in (("name", name), ("group", group), ("kind", resource)) if value}
    return ApiError(403, "Forbidden", text, details)


def _not_found(resource: str, name: str) -> ApiError:
    details = {"name": name, "group": RBAC_GROUP, "kind": resource}
    return ApiError(404, "NotFound", f"{resource}.{RBAC_GROUP} {go_quote(name)} not found", details)


_GC_FIELDS = frozenset({"ownerReferences", "finalizers", "selfLink", "managedFields"})


def _without_gc_fields(value: Any) -> Any:
    """The object minus what the garbage collector may change, with empty values dropped (Semantic.DeepEqual)."""
    if isinstance(value, dict):
        cleaned = {k: _without_gc_fields(v) for k, v in value.items()}
        return {k: v for k, v in cleaned.items() if v not in (None, [], {}, "")}
    if isinstance(value, list):
        return [_without_gc_fields(item) for item in value]
    return value


def only_gc_fields_changed(obj: Mapping[str, Any], old: Mapping[str, Any]) -> bool:
    """``IsOnlyMutatingGCFields``: an update touching only ownerReferences and finalizers needs no RBAC check."""

    def comparable(o: Mapping[str, Any]) -> Any:
        metadata = {k: v for k, v in (o.get("metadata") or {}).items() if k not in _GC_FIELDS}
        return _without_gc_fields({**o, "metadata": metadata})

    return comparable(obj) == comparable(old)


def _aggregates(cluster_role: Mapping[str, Any]) -> bool:
    return bool((cluster_role.get("aggregationRule") or {}).get("clusterRoleSelectors"))


# ---------------------------------------------------------------------------------------------- the authorizer
class Authorizer:
    """kube-apiserver's authorizer chain for this server: system:masters, then RBAC."""

    def __init__(self, objects: Objects, on_decision: DecisionListener | None = None) -> None:
        self._objects = objects
        self._on_decision = on_decision
        self._index: _Index | None = None
        self._rule_sets: dict[str, dict[UserInfo, _RuleSet]] = {}  # by namespace, then user
        self._cached_rule_sets = 0

    def invalidate(self) -> None:
        """Forget everything derived from RBAC objects."""
        self._index = None
        self._rule_sets = {}
        self._cached_rule_sets = 0

    def changed(self, kind: str, obj: Mapping[str, Any], *, deleted: bool = False) -> None:
        """Called by the server after an RBAC object was written or deleted. A Role or RoleBinding can
        change only what users hold in its namespace, and only its own entry of the index; a ClusterRole
        or ClusterRoleBinding (aggregation, bindings everywhere) forgets everything."""
        namespace = str(obj.get("metadata", {}).get("namespace", ""))
        if kind not in ("Role", "RoleBinding") or not namespace:
            self.invalidate()
            return
        if self._index is not None:
            self._index.apply(kind, obj, deleted=deleted)
        self._cached_rule_sets -= len(self._rule_sets.pop(namespace, {}))

    # -------------------------------------------------------------- resolution
    def _current_index(self) -> _Index:
        if self._index is None:
            self._index = _Index(self._objects)
        return self._index

    def _rule_set(self, user: UserInfo, namespace: str) -> _RuleSet:
        rule_set = self._rule_sets.get(namespace, {}).get(user)
        if rule_set is None:
            index = self._current_index()  # before touching the cache: building it may not be cheap
            if self._cached_rule_sets >= _MAX_CACHED_RULE_SETS:
                self._rule_sets, self._cached_rule_sets = {}, 0
            rule_set = self._rule_sets.setdefault(namespace, {})[user] = index.rule_set(user, namespace)
            self._cached_rule_sets += 1
        return rule_set

    def cluster_role_rules(self, name: str) -> list[dict[str, Any]] | None:
        """The rules a ClusterRole has now (aggregated ones included), as JSON; None when there is no such role."""
        rules = self._current_index().cluster_roles.get(name)
        return None if rules is None else [rule.to_dict() for rule in rules]

    # -------------------------------------------------------------- authorization
    def authorize(self, attributes: Attributes) -> Decision:
        decision = self._decide(attributes)
        if self._on_decision is not None:
            self._on_decision(attributes, decision)
        return decision

    def _decide(self, request: Attributes) -> Decision:
        if MASTERS in request.user.groups:
            return Decision(True, f"allowed: member of the privileged group {go_quote(MASTERS)}")
        rule_set = self._rule_set(request.user, request.namespace)
        for source, rules in rule_set.grants:
            for rule in rules:
                if rule.allows(request):
                    return Decision(True, f"RBAC: allowed by {source}")
        reason = _no_rules_reason(request)
        if rule_set.missing:
            reason += "; " + self._resolution_reason(rule_set)
        return Decision(False, reason)

    @staticmethod
    def _resolution_reason(rule_set: _RuleSet) -> str:
        return "RBAC: " + aggregate_errors([missing.message(storage=False) for missing in rule_set.missing])

    def forbidden(self, attributes: Attributes) -> ApiError:
        """The 403 the real server sends for a denied request (``responsewriters.Forbidden``).

        As there, the message ends with the authorizer's reason only when RBAC had one: a binding
        whose role does not exist (``...: RBAC: clusterrole.rbac.authorization.k8s.io "x" not found``).
        """
        message = _sanitize(_forbidden_message(attributes))
        if MASTERS not in attributes.user.groups:
            rule_set = self._rule_set(attributes.user, attributes.namespace)
            if rule_set.missing:
                message += ": " + self._resolution_reason(rule_set)
        if not attributes.resource_request:
            return forbidden_error("", "", "", message)
        return forbidden_error(attributes.resource, attributes.api_group, attributes.name, message)

    # -------------------------------------------------------------- escalation prevention
    def check_escalation(
        self, user: UserInfo, obj: dict[str, Any], namespace: str, *, old: dict[str, Any] | None = None
    ) -> ApiError | None:
        """The refusal the RBAC storage gives ``user`` for writing ``obj``, or None when it may.

        ``obj`` is a Role, ClusterRole, RoleBinding or ClusterRoleBinding being created (``old`` None)
        or updated (``old`` the stored object); ``namespace`` is the request's namespace. Every
        permission the check needs is asked of ``authorize()``, so ``on_decision`` sees each one.
        """
        if MASTERS in user.groups:
            return None  # EscalationAllowed: the API server's own loopback identity
        kind = obj.get("kind")
        if kind in ("Role", "ClusterRole"):
            return self._check_role(user, obj, namespace if kind == "Role" else "", old)
        if kind in ("RoleBinding", "ClusterRoleBinding"):
            return self._check_binding(user, obj, namespace if kind == "RoleBinding" else "", old)
        raise ValueError(f"not an RBAC role or binding: {kind!r}")

    def _check_role(
        self, user: UserInfo, obj: dict[str, Any], namespace: str, old: dict[str, Any] | None
    ) -> ApiError | None:
        resource = "roles" if obj["kind"] == "Role" else "clusterroles"
        name = _name(obj)
        # RoleEscalationAuthorized asks with the request's name, which a create (POST) does not have.
        escalate = Attributes(
            user, "escalate", RBAC_GROUP, resource, namespace=namespace, name=name if old is not None else ""
        )
        if self.authorize(escalate).allowed:
            return None
        if old is not None and only_gc_fields_changed(obj, old):
            return None
        refusal = self._confirm_no_escalation(user, namespace, _rules_of(obj))
        if refusal is not None:
            return forbidden_error(resource, RBAC_GROUP, name, refusal)
        # An aggregation rule can gather anything, so setting or changing one takes "*" on "*".
        uses_aggregation = resource == "clusterroles" and (_aggregates(obj) or (old is not None and _aggregates(old)))
        if uses_aggregation and self._confirm_no_escalation(user, "", FULL_AUTHORITY) is not None:
            return forbidden_error(
                resource, RBAC_GROUP, name, "must have cluster-admin privileges to use the aggregationRule"
            )
        return None

    def _check_binding(
        self, user: UserInfo, obj: dict[str, Any], namespace: str, old: dict[str, Any] | None
    ) -> ApiError | None:
        resource = "rolebindings" if obj["kind"] == "RoleBinding" else "clusterrolebindings"
        if old is not None and only_gc_fields_changed(obj, old):
            return None
        role_ref = obj.get("roleRef") or {}
        role_kind, role_name = str(role_ref.get("kind", "")), str(role_ref.get("name", ""))
        if role_kind in ("Role", "ClusterRole"):
            # BindingAuthorized: "bind" on exactly this role, in the binding's namespace ("" cluster-wide).
            role_resource = "roles" if role_kind == "Role" else "clusterroles"
            group = str(role_ref.get("apiGroup", RBAC_GROUP))
            bind = Attributes(user, "bind", group, role_resource, namespace=namespace, name=role_name)
            if self.authorize(bind).allowed:
                return None
        rules = self._current_index().role_rules(role_kind, role_name, namespace)
        if rules is None:
            if role_kind not in ("Role", "ClusterRole"):
                return ApiError(
                    500,
                    "InternalError",
                    f"Internal error occurred: {_MissingRole(role_kind, role_name).message(storage=True)}",
                )
            return _not_found("roles" if role_kind == "Role" else "clusterroles", role_name)
        refusal = self._confirm_no_escalation(user, namespace, rules)
        return None if refusal is None else forbidden_error(resource, RBAC_GROUP, _name(obj), refusal)

    def _confirm_no_escalation(self, user: UserInfo, namespace: str, rules: Iterable[PolicyRule]) -> str | None:
        """``ConfirmNoEscalation``: None when ``user`` holds every rule in ``namespace``, else why not."""
        missing = [
            atom
            for rule in rules
            for atom in rule.atoms()
            if not self.authorize(atom.as_request(user, namespace)).allowed
        ]
        if not missing:
            return None
        descriptions = sorted({rule.compact_string() for rule in compact_rules(missing)})
        message = (
            f"user {go_quote(user.name)} (groups={go_quote_list(user.groups)}) is attempting to grant RBAC permissions"
            " not currently held:\n" + "\n".join(descriptions)
        )
        unresolved = self._rule_set(user, namespace).missing
        if unresolved:
            message += f"; resolution errors: [{aggregate_errors([m.message(storage=True) for m in unresolved])}]"
        return message
