"""ValidatingAdmissionPolicy admission refuses, warns and ignores writes as kube-apiserver's plugin does."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import pytest

from tests.kubeapi.admission import AdmissionPolicies
from tests.kubeapi.model import ApiError, ResourceType, UserInfo

JOBS = ResourceType("batch", "v1", "jobs", "Job", True, frozenset({"status"}))
CONFIGMAPS = ResourceType("", "v1", "configmaps", "ConfigMap", True)
NAMESPACES = ResourceType("", "v1", "namespaces", "Namespace", False)
POLICIES = ResourceType(
    "admissionregistration.k8s.io", "v1", "validatingadmissionpolicies", "ValidatingAdmissionPolicy", False
)
ALICE = UserInfo.user("alice")
OPERATOR = UserInfo.service_account("kubetune-system", "kubetune")

ALLOWED_IMAGES = "object.spec.template.spec.containers.all(c, c.image.startsWith('registry.example.com/'))"


# ---------------------------------------------------------------------------------------------- fixtures
class Cluster:
    def __init__(self, *objects: dict[str, Any]) -> None:
        self.objects = [
            namespace("tenant-a", {"tenant": "true"}),
            namespace("shared", {}),
            *objects,
        ]

    def __call__(self, kind: str) -> Iterable[dict[str, Any]]:
        return [obj for obj in self.objects if obj["kind"] == kind]


def namespace(name: str, labels: dict[str, str]) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name, "labels": labels}}


def policy(name: str = "images", *, validations: list[dict[str, Any]] | None = None, **spec: Any) -> dict[str, Any]:
    """Jobs in namespaces labelled tenant=true must run images from registry.example.com."""
    default_match = {
        "resourceRules": [
            {"apiGroups": ["batch"], "apiVersions": ["v1"], "operations": ["CREATE", "UPDATE"], "resources": ["jobs"]}
        ],
        "namespaceSelector": {"matchLabels": {"tenant": "true"}},
    }
    body = {
        "failurePolicy": "Fail",
        "matchConstraints": default_match,
        "validations": validations if validations is not None else [{"expression": ALLOWED_IMAGES}],
        **spec,
    }
    return {
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "ValidatingAdmissionPolicy",
        "metadata": {"name": name},
        "spec": body,
    }


def binding(
    name: str = "images-binding", policy_name: str = "images", actions: tuple[str, ...] = ("Deny",), **spec: Any
) -> dict[str, Any]:
    return {
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "ValidatingAdmissionPolicyBinding",
        "metadata": {"name": name},
        "spec": {"policyName": policy_name, "validationActions": list(actions), **spec},
    }


def job(image: str, ns: str = "tenant-a", name: str = "train", labels: dict[str, str] | None = None) -> dict[str, Any]:
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": name, "namespace": ns, "labels": labels or {}},
        "spec": {"template": {"spec": {"containers": [{"name": "trainer", "image": image}]}}},
    }


def create(
    policies: AdmissionPolicies, obj: dict[str, Any], *, user: UserInfo = ALICE, rtype: ResourceType = JOBS
) -> tuple[ApiError | None, list[str]]:
    meta = obj["metadata"]
    return policies.validate(
        operation="CREATE",
        rtype=rtype,
        obj=obj,
        old=None,
        user=user,
        namespace=meta.get("namespace", ""),
        name=meta["name"],
    )


def admission(*objects: dict[str, Any]) -> AdmissionPolicies:
    return AdmissionPolicies(Cluster(*objects))


def denial(policy_name: str, binding_name: str, message: str, name: str = "train") -> str:
    return f"jobs.batch \"{name}\" is forbidden: ValidatingAdmissionPolicy '{policy_name}' with binding '{binding_name}' denied request: {message}"


BAD = "docker.io/evil:latest"
GOOD = "registry.example.com/trainer:1.0"


# ---------------------------------------------------------------------------------------------- the basic policy
def test_denies_a_job_with_a_foreign_image_in_a_tenant_namespace() -> None:
    error, warnings = create(admission(policy(), binding()), job(BAD))
    assert error is not None
    assert (error.code, error.reason) == (422, "Invalid")
    assert error.message == denial("images", "images-binding", f"failed expression: {ALLOWED_IMAGES}")
    inner = error.message.split(" is forbidden: ")[1]
    assert error.details == {"name": "train", "group": "batch", "kind": "jobs", "causes": [{"message": inner}]}
    assert warnings == []


def test_allows_an_allowed_image_and_ignores_other_namespaces() -> None:
    policies = admission(policy(), binding())
    assert create(policies, job(GOOD)) == (None, [])
    assert create(policies, job(BAD, ns="shared")) == (None, [])


def test_other_resources_and_operations_are_not_matched() -> None:
    policies = admission(policy(), binding())
    configmap = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "train", "namespace": "tenant-a"}}
    assert create(policies, configmap, rtype=CONFIGMAPS) == (None, [])
    deleted = policies.validate(
        operation="DELETE", rtype=JOBS, obj=None, old=job(BAD), user=ALICE, namespace="tenant-a", name="train"
    )
    assert deleted == (None, [])


def test_warn_and_audit_actions_do_not_refuse() -> None:
    error, warnings = create(admission(policy(), binding(actions=("Warn", "Audit"))), job(BAD))
    assert error is None
    assert warnings == [
        f"Validation failed for ValidatingAdmissionPolicy 'images' with binding 'images-binding': failed expression: {ALLOWED_IMAGES}"
    ]
    assert create(admission(policy(), binding(actions=("Audit",))), job(BAD)) == (None, [])


def test_deny_and_warn_together() -> None:
    error, warnings = create(admission(policy(), binding(actions=("Deny", "Warn"))), job(BAD))
    assert error is not None
    assert len(warnings) == 1


# ---------------------------------------------------------------------------------------------- messages and reasons
@pytest.mark.parametrize(
    ("validation", "message"),
    [
        (
            {"messageExpression": "'image ' + object.spec.template.spec.containers[0].image + ' is not allowed'"},
            f"image {BAD} is not allowed",
        ),
        ({"message": "  use registry.example.com  "}, "use registry.example.com"),
        # A messageExpression that errors, is not a string or spans lines falls back to message.
        ({"messageExpression": "object.spec.nothing", "message": "fallback"}, "fallback"),
        ({"messageExpression": "1", "message": "fallback"}, "fallback"),
        ({"messageExpression": "'two\\nlines'", "message": "fallback"}, "fallback"),
        ({"messageExpression": "'  '"}, f"failed expression: {ALLOWED_IMAGES}"),
    ],
    ids=["messageExpression", "message", "erroring messageExpression", "non-string", "multi-line", "blank"],
)
def test_failure_message(validation: dict[str, Any], message: str) -> None:
    policies = admission(policy(validations=[{"expression": ALLOWED_IMAGES, **validation}]), binding())
    error, _ = create(policies, job(BAD))
    assert error is not None
    assert error.message == denial("images", "images-binding", message)


@pytest.mark.parametrize(
    ("reason", "code"), [("Forbidden", 403), ("Unauthorized", 401), ("RequestEntityTooLarge", 413), ("Invalid", 422)]
)
def test_validation_reason_sets_status_reason_and_code(reason: str, code: int) -> None:
    policies = admission(policy(validations=[{"expression": ALLOWED_IMAGES, "reason": reason}]), binding())
    error, _ = create(policies, job(BAD))
    assert error is not None
    assert (error.reason, error.code) == (reason, code)


def test_first_failing_validation_refuses_each_one_warns() -> None:
    validations = [
        {"expression": "true", "message": "never"},
        {"expression": ALLOWED_IMAGES, "message": "first"},
        {"expression": "object.metadata.name.startsWith('x')", "message": "second"},
    ]
    policies = admission(policy(validations=validations), binding(actions=("Deny", "Warn")))
    error, warnings = create(policies, job(BAD))
    assert error is not None
    assert error.message.endswith("denied request: first")
    assert [w.rsplit(": ", 1)[1] for w in warnings] == ["first", "second"]


# ---------------------------------------------------------------------------------------------- failure policy
@pytest.mark.parametrize(
    ("expression", "detail"),
    [
        ("object.spec.missing.image == 'x'", "expression 'object.spec.missing.image == 'x'' resulted in error: no such key: missing"),
        ("object.spec.template.spec.containers[0].image / 2 == 1", "expression 'object.spec.template.spec.containers[0].image / 2 == 1' resulted in error: "),
        ("object.spec.(", "compilation error: ERROR: <input>:1:13: Syntax error\n | object.spec.(\n | ............^"),
    ],
    ids=["missing key", "type error", "syntax error"],
)  # fmt: skip
def test_failing_expression_refuses_under_fail_and_is_skipped_under_ignore(expression: str, detail: str) -> None:
    error, _ = create(admission(policy(validations=[{"expression": expression}]), binding()), job(GOOD))
    assert error is not None
    assert (error.code, error.reason) == (422, "Invalid")
    assert error.message.startswith(denial("images", "images-binding", detail))

    ignoring = policy(validations=[{"expression": expression}], failurePolicy="Ignore")
    assert create(admission(ignoring, binding()), job(GOOD)) == (None, [])


def test_failure_policy_defaults_to_fail() -> None:
    spec = policy(validations=[{"expression": "object.spec.nothing"}])
    del spec["spec"]["failurePolicy"]
    error, _ = create(admission(spec, binding()), job(GOOD))
    assert error is not None


def test_erroring_expression_under_warn_warns() -> None:
    error, warnings = create(
        admission(policy(validations=[{"expression": "object.x"}]), binding(actions=("Warn",))), job(GOOD)
    )
    assert error is None
    assert warnings == [
        "Validation failed for ValidatingAdmissionPolicy 'images' with binding 'images-binding': "
        "expression 'object.x' resulted in error: no such key: x"
    ]


# ---------------------------------------------------------------------------------------------- CEL variables
def test_request_old_object_and_namespace_object_are_available() -> None:
    validations = [
        {"expression": "request.operation == 'CREATE' && oldObject == null", "message": "operation"},
        {"expression": "request.userInfo.username == 'alice' && 'system:authenticated' in request.userInfo.groups"},
        {
            "expression": "request.kind.kind == 'Job' && request.resource.resource == 'jobs' && request.subResource == ''"
        },
        {"expression": "request.namespace == 'tenant-a' && request.name == 'train'"},
        {
            "expression": "namespaceObject.metadata.name == 'tenant-a' && namespaceObject.metadata.labels.tenant == 'true'"
        },
        {"expression": "params == null"},
    ]
    policies = admission(policy(validations=validations), binding())
    assert create(policies, job(GOOD)) == (None, [])
    error, _ = create(policies, job(GOOD), user=OPERATOR)
    assert error is not None
    assert error.message.endswith(
        "failed expression: request.userInfo.username == 'alice' && 'system:authenticated' in request.userInfo.groups"
    )

    update_check = [
        {
            "expression": "oldObject.spec.template.spec.containers[0].image == object.spec.template.spec.containers[0].image",
            "message": "image is immutable",
        }
    ]
    updates = admission(policy(validations=update_check), binding())
    error, _ = updates.validate(
        operation="UPDATE", rtype=JOBS, obj=job(GOOD), old=job(BAD), user=ALICE, namespace="tenant-a", name="train"
    )
    assert error is not None
    assert error.message.endswith("denied request: image is immutable")


def test_variables_are_lazy_and_may_use_earlier_ones() -> None:
    variables = [
        {"name": "images", "expression": "object.spec.template.spec.containers.map(c, c.image)"},
        {"name": "foreign", "expression": "variables.images.filter(i, !i.startsWith('registry.example.com/'))"},
        {"name": "broken", "expression": "object.spec.does.not.exist"},
    ]
    validations = [
        {
            "expression": "size(variables.foreign) == 0",
            "messageExpression": "'foreign images: ' + variables.foreign.join(', ')",
        }
    ]
    policies = admission(policy(variables=variables, validations=validations), binding())
    assert create(policies, job(GOOD)) == (None, []), "an unused broken variable is never evaluated"
    error, _ = create(policies, job(BAD))
    assert error is not None
    assert error.message.endswith(f"denied request: foreign images: {BAD}")

    using_broken = admission(policy(variables=variables, validations=[{"expression": "variables.broken"}]), binding())
    error, _ = create(using_broken, job(GOOD))
    assert error is not None
    assert 'composited variable "broken" fails to evaluate' in error.message


@pytest.mark.parametrize(
    ("expression", "expected"),
    [
        ("'AbC'.lowerAscii() == 'abc' && 'abc'.upperAscii() == 'ABC'", True),
        ("'  x '.trim() == 'x' && 'a-b'.replace('-', '+') == 'a+b'", True),
        ("'a/b/c'.split('/') == ['a', 'b', 'c'] && 'a/b/c'.split('/', 2) == ['a', 'b/c']", True),
        ("['a', 'b'].join('-') == 'a-b' && 'abcb'.indexOf('b') == 1 && 'abcb'.lastIndexOf('b') == 3", True),
        ("'x'.lowerAscii() == 'y'", False),
    ],
)
def test_kubernetes_string_functions(expression: str, expected: bool) -> None:
    error, _ = create(admission(policy(validations=[{"expression": expression}]), binding()), job(GOOD))
    assert (error is None) is expected, error and error.message


# ---------------------------------------------------------------------------------------------- matchConditions
def test_match_conditions_all_true_to_apply() -> None:
    not_operator = {
        "name": "not-operator",
        "expression": "request.userInfo.username != 'system:serviceaccount:kubetune-system:kubetune'",
    }
    policies = admission(policy(matchConditions=[not_operator]), binding())
    assert create(policies, job(BAD))[0] is not None
    assert create(policies, job(BAD), user=OPERATOR) == (None, [])


def test_match_condition_errors_follow_failure_policy_unless_another_is_false() -> None:
    erroring = {"name": "broken", "expression": "object.nope == 1"}
    false = {"name": "false", "expression": "false"}
    error, _ = create(admission(policy(matchConditions=[erroring]), binding()), job(GOOD))
    assert error is not None
    assert error.message == denial(
        "images", "images-binding", "expression 'object.nope == 1' resulted in error: no such key: nope"
    )
    assert create(admission(policy(matchConditions=[erroring, false]), binding()), job(GOOD)) == (None, [])
    assert create(admission(policy(matchConditions=[erroring], failurePolicy="Ignore"), binding()), job(BAD)) == (
        None,
        [],
    )


# ---------------------------------------------------------------------------------------------- matching
def resource_rule(resources: list[str], operations: list[str] | None = None, **extra: Any) -> dict[str, Any]:
    rule = {"apiGroups": ["*"], "apiVersions": ["*"], "operations": operations or ["*"], "resources": resources}
    return {**rule, **extra}


@pytest.mark.parametrize(
    ("rules", "subresource", "applies"),
    [
        ([resource_rule(["jobs"])], "", True),
        ([resource_rule(["jobs"])], "status", False),
        ([resource_rule(["jobs/status"])], "status", True),
        ([resource_rule(["jobs/status"])], "", False),
        ([resource_rule(["*"])], "", True),
        ([resource_rule(["*"])], "status", False),
        ([resource_rule(["*/*"])], "status", True),
        ([resource_rule(["jobs/*"])], "status", True),
        ([resource_rule(["*/status"])], "status", True),
        ([resource_rule(["cronjobs"])], "", False),
        ([resource_rule(["jobs"], ["DELETE"])], "", False),
        ([{**resource_rule(["jobs"]), "apiGroups": ["apps"]}], "", False),
        ([{**resource_rule(["jobs"]), "apiVersions": ["v2"]}], "", False),
        ([resource_rule(["jobs"], scope="Namespaced")], "", True),
        ([resource_rule(["jobs"], scope="Cluster")], "", False),
        ([resource_rule(["jobs"], resourceNames=["train"])], "", True),
        ([resource_rule(["jobs"], resourceNames=["other"])], "", False),
    ],
)
def test_resource_rules(rules: list[dict[str, Any]], subresource: str, applies: bool) -> None:
    spec = policy(matchConstraints={"resourceRules": rules}, validations=[{"expression": "false"}])
    policies = admission(spec, binding())
    operation = "CREATE" if not subresource else "UPDATE"
    error, _ = policies.validate(
        operation=operation, rtype=JOBS, obj=job(GOOD), old=None if operation == "CREATE" else job(GOOD),
        user=ALICE, namespace="tenant-a", name="train", subresource=subresource,
    )  # fmt: skip
    assert (error is not None) is applies


def test_exclude_resource_rules_and_binding_match_resources() -> None:
    excluding = policy(
        matchConstraints={"resourceRules": [resource_rule(["*"])], "excludeResourceRules": [resource_rule(["jobs"])]}
    )
    assert create(admission(excluding, binding()), job(BAD)) == (None, [])

    # A binding narrows where its policy applies: here to objects labelled team=ml.
    narrowed = binding(matchResources={"objectSelector": {"matchLabels": {"team": "ml"}}})
    policies = admission(policy(), narrowed)
    assert create(policies, job(BAD)) == (None, [])
    assert create(policies, job(BAD, labels={"team": "ml"}))[0] is not None


def test_object_selector_sees_the_old_object_on_delete() -> None:
    spec = policy(
        matchConstraints={
            "resourceRules": [resource_rule(["jobs"], ["DELETE"])],
            "objectSelector": {"matchLabels": {"protected": "true"}},
        },
        validations=[{"expression": "false", "message": "protected jobs cannot be deleted", "reason": "Forbidden"}],
    )
    policies = admission(spec, binding())

    def delete(labels: dict[str, str]) -> ApiError | None:
        old = job(GOOD, labels=labels)
        return policies.validate(
            operation="DELETE", rtype=JOBS, obj=None, old=old, user=ALICE, namespace="tenant-a", name="train"
        )[0]

    assert delete({}) is None
    error = delete({"protected": "true"})
    assert error is not None
    assert error.code == 403
    assert error.message == denial("images", "images-binding", "protected jobs cannot be deleted", name="Unknown")


def test_namespace_selector_on_the_namespace_itself_uses_its_own_labels() -> None:
    spec = policy(
        matchConstraints={
            "resourceRules": [resource_rule(["namespaces"])],
            "namespaceSelector": {"matchLabels": {"tenant": "true"}},
        },
        validations=[{"expression": "false", "message": "tenant namespaces are managed"}],
    )
    policies = admission(spec, binding())
    tenant = namespace("tenant-b", {"tenant": "true"})
    error, _ = create(policies, tenant, rtype=NAMESPACES)
    assert error is not None
    assert error.message.startswith('namespaces "tenant-b" is forbidden: ')
    assert create(policies, namespace("plain", {}), rtype=NAMESPACES) == (None, [])


def test_namespace_selector_never_exempts_cluster_scoped_resources() -> None:
    nodes = ResourceType("", "v1", "nodes", "Node", False)
    spec = policy(
        matchConstraints={
            "resourceRules": [resource_rule(["nodes"])],
            "namespaceSelector": {"matchLabels": {"tenant": "true"}},
        },
        validations=[{"expression": "false", "message": "no nodes"}],
    )
    error, _ = create(
        admission(spec, binding()), {"apiVersion": "v1", "kind": "Node", "metadata": {"name": "n1"}}, rtype=nodes
    )
    assert error is not None
    assert (
        error.message
        == "nodes \"n1\" is forbidden: ValidatingAdmissionPolicy 'images' with binding 'images-binding' denied request: no nodes"
    )


def test_missing_namespace_is_not_found() -> None:
    error, _ = create(admission(policy(), binding()), job(BAD, ns="nowhere"))
    assert error is not None
    assert (error.code, error.message) == (404, 'namespaces "nowhere" not found')


def test_admission_configuration_is_exempt() -> None:
    everything = policy(
        matchConstraints={"resourceRules": [resource_rule(["*"])]}, validations=[{"expression": "false"}]
    )
    policies = admission(everything, binding())
    assert create(policies, policy("another"), rtype=POLICIES) == (None, [])
    assert create(policies, job(GOOD))[0] is not None


def test_unbound_policies_and_policies_with_params_are_handled() -> None:
    assert create(admission(policy()), job(BAD)) == (None, []), "a policy applies only through a binding"
    with_params = policy(paramKind={"apiVersion": "v1", "kind": "ConfigMap"})
    error, _ = create(admission(with_params, binding()), job(GOOD))
    assert error is not None
    assert "failed to configure binding: params are not supported" in error.message
    ignoring = policy(paramKind={"apiVersion": "v1", "kind": "ConfigMap"}, failurePolicy="Ignore")
    assert create(admission(ignoring, binding()), job(GOOD)) == (None, [])


def test_policies_are_reread_after_invalidate() -> None:
    cluster = Cluster()
    policies = AdmissionPolicies(cluster)
    assert create(policies, job(BAD)) == (None, [])
    cluster.objects += [policy(), binding()]
    assert create(policies, job(BAD)) == (None, []), "cached until the server says policies changed"
    policies.invalidate()
    assert create(policies, job(BAD))[0] is not None
    cluster.objects[-1]["spec"]["validationActions"] = ["Warn"]
    policies.invalidate()
    error, warnings = create(policies, job(BAD))
    assert error is None
    assert len(warnings) == 1
