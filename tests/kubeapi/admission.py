"""ValidatingAdmissionPolicy admission: CEL rules a cluster admin binds to writes, as kube-apiserver runs them.

Mirrors staging/src/k8s.io/apiserver/pkg/admission/plugin/policy/validating (dispatcher.go, validator.go)
and its matching (namespace, object and resource-rule selectors): a policy applies to a write when a
binding names it and the request matches both the policy's ``matchConstraints`` and the binding's
``matchResources``; then its ``matchConditions`` must all hold, and each failed ``validations[]`` entry
is acted on as the binding's ``validationActions`` say (Deny refuses, Warn warns, Audit is not kept).

CEL runs on cel-python with the variables kube-apiserver gives (``object``, ``oldObject``, ``request``,
``namespaceObject``, ``variables``, ``params``). Not supported: param resources (a policy with a
``paramKind`` is a configuration error, handled by its failurePolicy), the ``authorizer`` variable,
``auditAnnotations``, CEL cost limits, type checking against schemas, and the Kubernetes CEL
libraries beyond a few string functions (``lowerAscii``, ``upperAscii``, ``trim``, ``replace``,
``split``, ``join``, ``indexOf``, ``lastIndexOf``).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import celpy
from celpy import celtypes
from celpy.celparser import CELParseError
from celpy.evaluation import CELEvalError

from tests.kubeapi.model import ApiError, ResourceType, UserInfo
from tests.kubeapi.rbac import aggregate_errors, label_selector_matches

Objects = Callable[[str], Iterable[dict[str, Any]]]

ADMISSION_GROUP = "admissionregistration.k8s.io"
# Admission never applies to its own configuration, so that a bad policy cannot lock admins out of fixing it.
_EXEMPT_KINDS = frozenset(
    {
        "ValidatingWebhookConfiguration",
        "MutatingWebhookConfiguration",
        "ValidatingAdmissionPolicy",
        "ValidatingAdmissionPolicyBinding",
    }
)
# The reasons a validation may give, and the status code each gets (dispatcher.go reasonToCode).
_REASON_CODES = {"Unauthorized": 401, "Forbidden": 403, "Invalid": 422, "RequestEntityTooLarge": 413}
_MAX_MESSAGE_BYTES = 5 * 1024  # celconfig.MaxEvaluatedMessageExpressionSizeBytes


# ---------------------------------------------------------------------------------------------- CEL
def _lower_ascii(text: str) -> celtypes.StringType:
    return celtypes.StringType("".join(c.lower() if c.isascii() else c for c in text))


def _upper_ascii(text: str) -> celtypes.StringType:
    return celtypes.StringType("".join(c.upper() if c.isascii() else c for c in text))


def _split(text: str, separator: str, limit: int = -1) -> celtypes.ListType:
    """``split(sep)``, or ``split(sep, n)``: at most n parts, none for n == 0, all for n < 0."""
    if limit == 0:
        return celtypes.ListType()
    parts = text.split(separator) if limit < 0 else text.split(separator, int(limit) - 1)
    return celtypes.ListType([celtypes.StringType(part) for part in parts])


def _join(items: Iterable[str], separator: str = "") -> celtypes.StringType:
    return celtypes.StringType(separator.join(items))


# The part of the Kubernetes CEL string library (cel-go ext.Strings) that policies commonly use.
_FUNCTIONS: dict[str, Callable[..., Any]] = {
    "lowerAscii": _lower_ascii,
    "upperAscii": _upper_ascii,
    "trim": lambda text: celtypes.StringType(text.strip()),
    "replace": lambda text, old, new: celtypes.StringType(text.replace(old, new)),
    "split": _split,
    "join": _join,
    "indexOf": lambda text, sub: celtypes.IntType(text.find(sub)),
    "lastIndexOf": lambda text, sub: celtypes.IntType(text.rfind(sub)),
}

_NO_SUCH_MEMBER = re.compile(r"^no such member in mapping: '(.*)'$")


def _error_detail(error: Exception) -> str:
    """The error as cel-go words it, where cel-python words it differently."""
    text = str(error.args[0]) if error.args else str(error)
    if match := _NO_SUCH_MEMBER.match(text):
        return f"no such key: {match.group(1)}"
    return text


def _syntax_error(expression: str, error: CELParseError) -> str:
    """A syntax error in cel-go's words: position, then the line with a caret under the column."""
    line, column = error.line or 1, error.column or 1
    source = expression.splitlines()[line - 1] if expression.splitlines() else ""
    return f"ERROR: <input>:{line}:{column}: Syntax error\n | {source}\n | {'.' * (column - 1)}^"


@dataclass(frozen=True)
class _Outcome:
    value: Any = None
    error: str | None = None  # the whole evaluation error message, as in kube-apiserver's


class _Cel:
    """Compiles each expression once (the cache outlives ``invalidate()``: it is keyed by the text)."""

    def __init__(self) -> None:
        self._environment = celpy.Environment()
        self._programs: dict[str, celpy.Runner | str] = {}

    def _program(self, expression: str) -> celpy.Runner | str:
        program = self._programs.get(expression)
        if program is None:
            try:
                program = self._environment.program(self._environment.compile(expression), functions=_FUNCTIONS)
            except CELParseError as error:
                program = f"compilation error: {_syntax_error(expression, error)}"
            self._programs[expression] = program
        return program

    def evaluate(self, expression: str, activation: Mapping[str, Any]) -> _Outcome:
        program = self._program(expression)
        if isinstance(program, str):
            return _Outcome(error=program)
        try:
            return _Outcome(value=program.evaluate(dict(activation)))
        except Exception as error:  # a CEL runtime error, whatever Python raised it as
            return _Outcome(error=f"expression '{expression}' resulted in error: {_error_detail(error)}")


class _LazyVariables(celtypes.MapType):
    """``variables``: each of ``spec.variables`` evaluated when first used, once per request and binding."""

    def __init__(self, definitions: list[Mapping[str, Any]], cel: _Cel, activation: dict[str, Any]) -> None:
        super().__init__()
        self._expressions = {str(d.get("name")): str(d.get("expression", "")) for d in definitions}
        self._cel = cel
        self._activation = activation
        self._results: dict[str, Any] = {}

    def __contains__(self, key: object) -> bool:
        return key in self._expressions

    def __getitem__(self, key: Any) -> Any:
        name = str(key)
        if name not in self._expressions:
            raise KeyError(key)
        if name not in self._results:
            # A variable may use earlier ones; one that (wrongly) reaches itself gets an error, not a loop.
            self._results[name] = CELEvalError(f'composited variable "{name}" refers to itself', RecursionError, None)
            outcome = self._cel.evaluate(self._expressions[name], self._activation)
            if outcome.error is None:
                self._results[name] = outcome.value
            else:
                message = f'composited variable "{name}" fails to evaluate: {outcome.error}'
                self._results[name] = CELEvalError(message, RuntimeError, None)
        return self._results[name]


# ---------------------------------------------------------------------------------------------- the request
@dataclass
class _Request:
    operation: str
    rtype: ResourceType
    obj: dict[str, Any] | None
    old: dict[str, Any] | None
    user: UserInfo
    namespace: str
    name: str
    subresource: str
    find_namespace: Callable[[str], dict[str, Any] | None]
    _cel_values: dict[str, Any] = field(default_factory=dict)
    _namespace_object: dict[str, Any] | None = None

    @property
    def is_namespace(self) -> bool:
        return self.rtype.group == "" and self.rtype.plural == "namespaces"

    def namespace_object(self) -> dict[str, Any] | None:
        """The request's Namespace (None when cluster-scoped); a missing one refuses the request with 404."""
        if self.is_namespace or not self.namespace:
            return None
        if self._namespace_object is None:
            found = self.find_namespace(self.namespace)
            if found is None:
                raise ApiError(
                    404,
                    "NotFound",
                    f'namespaces "{self.namespace}" not found',
                    {"name": self.namespace, "kind": "namespaces"},
                )
            self._namespace_object = found
        return self._namespace_object

    def namespace_labels(self) -> Mapping[str, str]:
        if self.is_namespace:  # a Namespace's own request: its labels as written (as stored, for DELETE)
            return _labels(self.obj if self.obj is not None else self.old)
        return _labels(self.namespace_object())

    def _admission_request(self) -> dict[str, Any]:
        kind = {"group": self.rtype.group, "version": self.rtype.version, "kind": self.rtype.kind}
        resource = {"group": self.rtype.group, "version": self.rtype.version, "resource": self.rtype.plural}
        return {
            "uid": "",
            "kind": kind,
            "resource": resource,
            "subResource": self.subresource,
            "requestKind": kind,
            "requestResource": resource,
            "requestSubResource": self.subresource,
            "name": self.name,
            "namespace": self.namespace,
            "operation": self.operation,
            "userInfo": {"username": self.user.name, "uid": "", "groups": list(self.user.groups), "extra": {}},
            "dryRun": False,
        }

    def activation(self) -> dict[str, Any]:
        """The CEL variables of this request (converted once, shared by every policy that applies)."""
        if not self._cel_values:
            namespace = self.namespace_object()
            if namespace is not None:
                # CreateNamespaceObject exposes the metadata a policy may use, not the server's bookkeeping.
                hidden = ("managedFields", "ownerReferences", "selfLink")
                metadata = {k: v for k, v in namespace.get("metadata", {}).items() if k not in hidden}
                namespace = {**namespace, "metadata": metadata}
            self._cel_values = {
                "object": celpy.json_to_cel(self.obj),
                "oldObject": celpy.json_to_cel(self.old),
                "request": celpy.json_to_cel(self._admission_request()),
                "namespaceObject": celpy.json_to_cel(namespace),
                "params": None,
            }
        return dict(self._cel_values)


def _labels(obj: Mapping[str, Any] | None) -> Mapping[str, str]:
    return (obj or {}).get("metadata", {}).get("labels") or {}


# ---------------------------------------------------------------------------------------------- matching
def _rule_matches(rule: Mapping[str, Any], request: _Request) -> bool:
    """One ``NamedRuleWithOperations`` (webhook/predicates/rules and matching.go matchesResourceRules)."""
    operations = rule.get("operations") or ()
    if "*" not in operations and request.operation not in operations:
        return False
    groups, versions = rule.get("apiGroups") or (), rule.get("apiVersions") or ()
    if "*" not in groups and request.rtype.group not in groups:
        return False
    if "*" not in versions and request.rtype.version not in versions:
        return False
    # Unlike RBAC, "*" is every resource but no subresource; "*/*" is everything, "jobs/*" any subresource.
    for pattern in rule.get("resources") or ():
        resource, _, subresource = pattern.partition("/")
        if resource in ("*", request.rtype.plural) and subresource in ("*", request.subresource):
            break
    else:
        return False
    scope = rule.get("scope") or "*"
    cluster_scoped = request.is_namespace or not request.namespace
    if (scope == "Namespaced" and cluster_scoped) or (scope == "Cluster" and not cluster_scoped):
        return False
    names = rule.get("resourceNames") or ()
    return not names or request.name in names


def _selector_is_empty(selector: Mapping[str, Any]) -> bool:
    return not selector.get("matchLabels") and not selector.get("matchExpressions")


def _matches(match: Mapping[str, Any], request: _Request) -> bool:
    """``matchConstraints`` of a policy or ``matchResources`` of a binding (matching.go Matches)."""
    namespace_selector = match.get("namespaceSelector") or {}
    cluster_scoped = not request.is_namespace and not request.namespace
    # A cluster-scoped request (other than for a Namespace) is never exempted by a namespaceSelector.
    if (
        not cluster_scoped
        and not _selector_is_empty(namespace_selector)
        and not label_selector_matches(namespace_selector, request.namespace_labels())
    ):
        return False
    object_selector = match.get("objectSelector") or {}
    if not _selector_is_empty(object_selector):
        candidates = [o for o in (request.obj, request.old) if o is not None]
        if not any(label_selector_matches(object_selector, _labels(o)) for o in candidates):
            return False
    if any(_rule_matches(rule, request) for rule in match.get("excludeResourceRules") or ()):
        return False
    rules = match.get("resourceRules") or ()
    return not rules or any(_rule_matches(rule, request) for rule in rules)


# ---------------------------------------------------------------------------------------------- evaluation
@dataclass(frozen=True)
class _Failure:
    """A validation that failed (or errored under failurePolicy Fail): what a binding acts on."""

    message: str
    reason: str = "Invalid"


@dataclass(frozen=True)
class _Denial:
    policy: str
    binding: str | None  # None for a configuration error of the policy itself
    failure: _Failure


@dataclass(frozen=True)
class _Hook:
    """A policy with the bindings that name it."""

    name: str
    spec: Mapping[str, Any]
    bindings: tuple[Mapping[str, Any], ...]

    @property
    def fails_closed(self) -> bool:
        return self.spec.get("failurePolicy", "Fail") != "Ignore"


def _is_true(value: Any) -> bool:
    return isinstance(value, celtypes.BoolType) and bool(value)


def _is_false(value: Any) -> bool:
    return isinstance(value, celtypes.BoolType) and not bool(value)


def _evaluate(hook: _Hook, cel: _Cel, request: _Request) -> list[_Failure]:
    """``validator.Validate`` for one binding: the failures its validationActions then apply to."""
    activation = request.activation()
    activation["variables"] = _LazyVariables(list(hook.spec.get("variables") or ()), cel, activation)
    errors: list[str] = []
    for condition in hook.spec.get("matchConditions") or ():
        outcome = cel.evaluate(str(condition.get("expression", "")), activation)
        if outcome.error is not None:
            errors.append(outcome.error)
        elif _is_false(outcome.value):
            return []  # a false condition skips the policy, whatever errors the others had
    if errors:
        return [_Failure(aggregate_errors(errors))] if hook.fails_closed else []
    failures: list[_Failure] = []
    for validation in hook.spec.get("validations") or ():
        expression = str(validation.get("expression", ""))
        outcome = cel.evaluate(expression, activation)
        if outcome.error is not None:
            if hook.fails_closed:
                failures.append(_Failure(outcome.error))
        elif not _is_true(outcome.value):
            message = _message(validation, cel, activation) or f"failed expression: {expression.strip()}"
            failures.append(_Failure(message, str(validation.get("reason") or "Invalid")))
    return failures


def _message(validation: Mapping[str, Any], cel: _Cel, activation: Mapping[str, Any]) -> str:
    """The failure message: messageExpression's if usable (a one-line string), else ``message``."""
    if expression := validation.get("messageExpression"):
        outcome = cel.evaluate(str(expression), activation)
        if outcome.error is None and isinstance(outcome.value, str):
            text = outcome.value.strip()
            if len(text.encode()) <= _MAX_MESSAGE_BYTES and "\n" not in text and text:
                return text
    return str(validation.get("message") or "").strip()


def _refusal(request: _Request, denial: _Denial) -> ApiError:
    """``admission.NewForbidden`` with the validation's reason and code, as dispatcher.go builds it."""
    if denial.binding is None:
        inner = f"ValidatingAdmissionPolicy '{denial.policy}' denied request: {denial.failure.message}"
    else:
        inner = f"ValidatingAdmissionPolicy '{denial.policy}' with binding '{denial.binding}' denied request: {denial.failure.message}"
    metadata = (request.obj or {}).get("metadata", {})
    # The object's name (or generateName); a DELETE has no object, so "Unknown", as the real server says.
    name = metadata.get("name") or metadata.get("generateName") or "Unknown"
    rtype = request.rtype
    qualified = f"{rtype.plural}.{rtype.group}" if rtype.group else rtype.plural
    details: dict[str, Any] = {"name": name, "kind": rtype.plural, "causes": [{"message": inner}]}
    if rtype.group:
        details["group"] = rtype.group
    reason = denial.failure.reason if denial.failure.reason in _REASON_CODES else "Invalid"
    return ApiError(_REASON_CODES[reason], reason, f'{qualified} "{name}" is forbidden: {inner}', details)


# ---------------------------------------------------------------------------------------------- the plugin
class AdmissionPolicies:
    """The ValidatingAdmissionPolicy admission plugin over the policies and bindings the server stores."""

    def __init__(self, objects: Objects) -> None:
        self._objects = objects
        self._cel = _Cel()
        self._hooks: list[_Hook] | None = None

    def invalidate(self) -> None:
        """Re-read policies and bindings on next use; called by the server after any of them changes."""
        self._hooks = None

    def _current_hooks(self) -> list[_Hook]:
        if self._hooks is None:
            bindings: dict[str, list[Mapping[str, Any]]] = {}
            for binding in self._objects("ValidatingAdmissionPolicyBinding"):
                bindings.setdefault(str(binding.get("spec", {}).get("policyName", "")), []).append(binding)
            hooks = []
            for policy in self._objects("ValidatingAdmissionPolicy"):
                name = str(policy.get("metadata", {}).get("name", ""))
                if name in bindings:  # a policy nothing binds is never evaluated
                    ordered = tuple(sorted(bindings[name], key=lambda b: str(b.get("metadata", {}).get("name", ""))))
                    hooks.append(_Hook(name, policy.get("spec") or {}, ordered))
            self._hooks = sorted(hooks, key=lambda hook: hook.name)
        return self._hooks

    def _find_namespace(self, name: str) -> dict[str, Any] | None:
        # Read live: namespaces come and go without invalidate(), and only a matching policy asks.
        return next((ns for ns in self._objects("Namespace") if ns.get("metadata", {}).get("name") == name), None)

    def validate(
        self,
        *,
        operation: str,
        rtype: ResourceType,
        obj: dict[str, Any] | None,
        old: dict[str, Any] | None,
        user: UserInfo,
        namespace: str,
        name: str,
        subresource: str = "",
    ) -> tuple[ApiError | None, list[str]]:
        """The refusal of a CREATE, UPDATE or DELETE (or None) and the warnings to send with the answer."""
        hooks = self._current_hooks()
        if not hooks or (rtype.group == ADMISSION_GROUP and rtype.kind in _EXEMPT_KINDS):
            return None, []
        request = _Request(operation, rtype, obj, old, user, namespace, name, subresource, self._find_namespace)
        denials: list[_Denial] = []
        warnings: list[str] = []
        try:
            for hook in hooks:
                self._dispatch(hook, request, denials, warnings)
        except ApiError as error:  # the request's namespace does not exist
            return error, warnings
        return (_refusal(request, denials[0]) if denials else None), warnings

    def _dispatch(self, hook: _Hook, request: _Request, denials: list[_Denial], warnings: list[str]) -> None:
        """dispatcher.go ``Dispatch`` for one policy and its bindings."""
        constraints = hook.spec.get("matchConstraints")
        if constraints is None:
            if hook.fails_closed:
                message = "failed to configure policy: policy contained no match constraints, a required field"
                denials.append(_Denial(hook.name, None, _Failure(message)))
            return
        if not _matches(constraints, request):
            return
        for binding in hook.bindings:
            binding_name = str(binding.get("metadata", {}).get("name", ""))
            spec = binding.get("spec") or {}
            if not _matches(spec.get("matchResources") or {}, request):
                continue
            if hook.spec.get("paramKind") is not None:
                if hook.fails_closed:
                    message = "failed to configure binding: params are not supported by the test API server"
                    denials.append(_Denial(hook.name, binding_name, _Failure(message)))
                continue
            for failure in _evaluate(hook, self._cel, request):
                for action in spec.get("validationActions") or ():
                    if action == "Deny":
                        denials.append(_Denial(hook.name, binding_name, failure))
                    elif action == "Warn":
                        warnings.append(
                            f"Validation failed for ValidatingAdmissionPolicy '{hook.name}' with binding '{binding_name}': {failure.message}"
                        )
                    # Audit: kube-apiserver writes an audit annotation; this server keeps no audit log of it.
