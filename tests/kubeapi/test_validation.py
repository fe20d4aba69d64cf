"""The test API server refuses what kube-apiserver 1.33 refuses, at the same fields, for the same reasons.

Each table has cases that pass (expected ``None``) and cases that fail, naming the field path and the
reason (``details.causes``) kube-apiserver reports; a few pin whole messages where their wording is
what a client or a person reads.
"""

from __future__ import annotations

import copy
import dataclasses
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.builders import minimal_spec
from tests.kubeapi.model import ApiError, ResourceType
from tests.kubeapi.validation import admit, custom

ROOT = Path(__file__).resolve().parents[2]
Obj = dict[str, Any]
Cause = tuple[str, str] | None  # (field, reason) the write is refused with, or None: accepted


def _builtin(group: str, plural: str, kind: str, namespaced: bool = True, status: bool = False) -> ResourceType:
    return ResourceType(group, "v1", plural, kind, namespaced, frozenset({"status"}) if status else frozenset())


JOB = _builtin("batch", "jobs", "Job", status=True)
POD = _builtin("", "pods", "Pod", status=True)
CONFIG_MAP = _builtin("", "configmaps", "ConfigMap")
SECRET = _builtin("", "secrets", "Secret")
PVC = _builtin("", "persistentvolumeclaims", "PersistentVolumeClaim", status=True)
NAMESPACE = _builtin("", "namespaces", "Namespace", namespaced=False, status=True)
SERVICE = _builtin("", "services", "Service", status=True)
SERVICE_ACCOUNT = _builtin("", "serviceaccounts", "ServiceAccount")
EVENT = _builtin("", "events", "Event")
RBAC = "rbac.authorization.k8s.io"
ROLE = _builtin(RBAC, "roles", "Role")
CLUSTER_ROLE = _builtin(RBAC, "clusterroles", "ClusterRole", namespaced=False)
ROLE_BINDING = _builtin(RBAC, "rolebindings", "RoleBinding")
CLUSTER_ROLE_BINDING = _builtin(RBAC, "clusterrolebindings", "ClusterRoleBinding", namespaced=False)
CRD_TYPE = _builtin("apiextensions.k8s.io", "customresourcedefinitions", "CustomResourceDefinition", False, True)
POLICY = _builtin("admissionregistration.k8s.io", "validatingadmissionpolicies", "ValidatingAdmissionPolicy", False)


def _crd_document() -> Obj:
    return dict(yaml.safe_load((ROOT / "crds" / "kubetune.dev_finetunejobs.yaml").read_text()))


FINETUNEJOB = ResourceType(
    "kubetune.dev",
    "v1alpha1",
    "finetunejobs",
    "FineTuneJob",
    True,
    frozenset({"status"}),
    schema=_crd_document()["spec"]["versions"][0]["schema"]["openAPIV3Schema"],
    crd_name="finetunejobs.kubetune.dev",
)


# ------------------------------------------------------------------------------------------ helpers
def stamped(rtype: ResourceType, obj: Obj) -> Obj:
    """The object as the server core hands it over on create: system metadata filled in."""
    obj = copy.deepcopy(obj)
    obj.setdefault("apiVersion", rtype.api_version)
    obj.setdefault("kind", rtype.kind)
    metadata = obj.setdefault("metadata", {})
    metadata.setdefault("uid", "0b9c7c2e-1111-4222-8333-444455556666")
    metadata.setdefault("creationTimestamp", "2025-01-01T00:00:00Z")
    metadata.setdefault("generation", 1)
    if rtype.namespaced:
        metadata.setdefault("namespace", "team-a")
    return obj


def create(rtype: ResourceType, obj: Obj, **options: Any) -> tuple[Obj, list[str]]:
    return admit(rtype, "CREATE", stamped(rtype, obj), None, **options)


def update(rtype: ResourceType, new: Obj, old: Obj, **options: Any) -> tuple[Obj, list[str]]:
    return admit(rtype, "UPDATE", copy.deepcopy(new), old, **options)


def refusal(write: Any, *args: Any, **options: Any) -> ApiError:
    with pytest.raises(ApiError) as caught:
        write(*args, **options)
    return caught.value


def causes(error: ApiError) -> list[tuple[str, str]]:
    assert error.code == 422, error.message
    assert error.details is not None
    return [(cause["field"], cause["reason"]) for cause in error.details["causes"]]


def outcome(rtype: ResourceType, obj: Obj, old: Obj | None = None) -> list[tuple[str, str]]:
    """The (field, reason) causes of the refusal, or [] when the write is accepted."""
    try:
        if old is None:
            create(rtype, obj)
        else:
            update(rtype, obj, old)
    except ApiError as error:
        return causes(error)
    return []


def assert_outcome(rtype: ResourceType, obj: Obj, expected: Cause, old: Obj | None = None) -> None:
    found = outcome(rtype, obj, old)
    if expected is None:
        assert found == [], found
    else:
        assert expected in found, found


def named(name: str, **fields: Any) -> Obj:
    return {"metadata": {"name": name}, **fields}


# ============================================================================================ names
@pytest.mark.parametrize(
    ("rtype", "name", "expected"),
    [
        (CONFIG_MAP, "trainer.config-1", None),
        (CONFIG_MAP, "Trainer", ("metadata.name", "FieldValueInvalid")),
        (CONFIG_MAP, "a" * 254, ("metadata.name", "FieldValueInvalid")),
        (SECRET, "s3-credentials", None),
        (SERVICE_ACCOUNT, "ftj_runner", ("metadata.name", "FieldValueInvalid")),
        (PVC, "scratch.ftj-1", None),
        (JOB, "ftj-1.train", None),  # Jobs take DNS subdomains (their pods' labels then limit them)
        (NAMESPACE, "team-a", None),
        (NAMESPACE, "team.a", ("metadata.name", "FieldValueInvalid")),
        (SERVICE, "1metrics", ("metadata.name", "FieldValueInvalid")),  # DNS-1035: starts with a letter
        (SERVICE, "metrics", None),
        (ROLE, "system:kubetune:trainer", None),  # RBAC names are path segments
        (ROLE, "a/b", ("metadata.name", "FieldValueInvalid")),
        (CLUSTER_ROLE, "..", ("metadata.name", "FieldValueInvalid")),
        (EVENT, "a%b", ("metadata.name", "FieldValueInvalid")),
        (FINETUNEJOB, "Support", ("metadata.name", "FieldValueInvalid")),
    ],
)
def test_names_follow_each_kinds_rule(rtype: ResourceType, name: str, expected: Cause) -> None:
    assert_outcome(rtype, {**_minimal(rtype), "metadata": {"name": name}}, expected)


def test_name_messages_are_the_validation_packages() -> None:
    error = refusal(create, CONFIG_MAP, named("Trainer"))
    assert error.message == (
        'ConfigMap "Trainer" is invalid: metadata.name: Invalid value: "Trainer": a lowercase RFC 1123 subdomain '
        "must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an "
        "alphanumeric character (e.g. 'example.com', regex used for validation is "
        "'[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')"
    )
    assert "must not contain dots" in refusal(create, NAMESPACE, named("team.a")).message


@pytest.mark.parametrize(
    ("metadata", "expected"),
    [
        ({"generateName": "ftj-", "name": "ftj-x7k2p"}, None),
        ({"generateName": "Ftj-", "name": "ftj-x7k2p"}, ("metadata.generateName", "FieldValueInvalid")),
        ({}, ("metadata.name", "FieldValueRequired")),
    ],
)
def test_name_or_generate_name(metadata: Obj, expected: Cause) -> None:
    assert_outcome(CONFIG_MAP, {"metadata": metadata}, expected)


# ============================================================================ labels and annotations
@pytest.mark.parametrize(
    ("metadata", "expected"),
    [
        ({"labels": {"app.kubernetes.io/name": "kubetune", "tier": ""}}, None),
        ({"labels": {"tier": "v" * 63}}, None),
        ({"labels": {"tier": "v" * 64}}, ("metadata.labels", "FieldValueInvalid")),
        ({"labels": {"tier": "-x"}}, ("metadata.labels", "FieldValueInvalid")),
        ({"labels": {"Kubetune.Dev/x": "y"}}, ("metadata.labels", "FieldValueInvalid")),  # prefix is a DNS name
        ({"labels": {"a/b/c": "y"}}, ("metadata.labels", "FieldValueInvalid")),
        ({"annotations": {"kubetune.dev/Spec-Hash": "x" * 1000}}, None),  # annotation keys ignore case
        ({"annotations": {"kubetune.dev/": "x"}}, ("metadata.annotations", "FieldValueInvalid")),
        ({"annotations": {"big": "x" * (256 * 1024)}}, ("metadata.annotations", "FieldValueTooLong")),
        ({"annotations": {"big": "x" * (256 * 1024 - 3)}}, None),
    ],
)
def test_labels_and_annotations(metadata: Obj, expected: Cause) -> None:
    assert_outcome(CONFIG_MAP, {"metadata": {"name": "cfg", **metadata}}, expected)


def test_label_and_annotation_messages() -> None:
    value = "v" * 64
    error = refusal(create, CONFIG_MAP, named("cfg") | {"metadata": {"name": "cfg", "labels": {"tier": value}}})
    assert (
        error.message
        == f'ConfigMap "cfg" is invalid: metadata.labels: Invalid value: "{value}": must be no more than 63 characters'
    )
    error = refusal(create, CONFIG_MAP, {"metadata": {"name": "cfg", "annotations": {"big": "x" * 262144}}})
    assert error.message.endswith("metadata.annotations: Too long: must have at most 262144 bytes")


# ================================================================================= ownerReferences
def _owner(name: str, uid: str = "u-1", **extra: Any) -> Obj:
    return {"apiVersion": "kubetune.dev/v1alpha1", "kind": "FineTuneJob", "name": name, "uid": uid, **extra}


@pytest.mark.parametrize(
    ("references", "expected"),
    [
        ([_owner("a", controller=True, blockOwnerDeletion=True), _owner("b", "u-2")], None),
        (
            [_owner("a", controller=True), _owner("b", "u-2", controller=True)],
            ("metadata.ownerReferences", "FieldValueInvalid"),
        ),
        ([_owner("a", uid="")], ("metadata.ownerReferences.uid", "FieldValueInvalid")),
        ([{**_owner("a"), "apiVersion": ""}], ("metadata.ownerReferences.apiVersion", "FieldValueInvalid")),
        ([{**_owner("a"), "kind": ""}], ("metadata.ownerReferences.kind", "FieldValueInvalid")),
        ([{**_owner("a"), "apiVersion": "v1", "kind": "Event"}], ("metadata.ownerReferences", "FieldValueInvalid")),
    ],
)
def test_owner_references(references: list[Obj], expected: Cause) -> None:
    assert_outcome(CONFIG_MAP, {"metadata": {"name": "cfg", "ownerReferences": references}}, expected)


def test_two_controllers_are_named_in_the_message() -> None:
    references = [_owner("a", controller=True), _owner("b", "u-2", controller=True)]
    error = refusal(create, CONFIG_MAP, {"metadata": {"name": "cfg", "ownerReferences": references}})
    assert (
        'Only one reference can have Controller set to true. Found "true" in references for FineTuneJob/a and '
        "FineTuneJob/b" in error.message
    )


def test_owner_reference_without_uid_is_refused_as_the_server_words_it() -> None:
    error = refusal(create, CONFIG_MAP, {"metadata": {"name": "cfg", "ownerReferences": [_owner("a", uid="")]}})
    assert (
        error.message
        == 'ConfigMap "cfg" is invalid: metadata.ownerReferences.uid: Invalid value: "": must not be empty'
    )


# ===================================================================================== finalizers
@pytest.mark.parametrize(
    ("finalizers", "expected"),
    [
        (["kubetune.dev/cleanup", "kopf.zalando.org/KopfFinalizerMarker"], None),
        (["kubetune.dev/clean up"], ("metadata.finalizers", "FieldValueInvalid")),
        (["orphan", "foregroundDeletion"], ("metadata.finalizers", "FieldValueInvalid")),
    ],
)
def test_finalizers_are_qualified_names(finalizers: list[str], expected: Cause) -> None:
    assert_outcome(CONFIG_MAP, {"metadata": {"name": "cfg", "finalizers": finalizers}}, expected)


def test_a_finalizer_without_a_domain_draws_a_warning() -> None:
    _, warnings = create(CONFIG_MAP, {"metadata": {"name": "cfg", "finalizers": ["cleanup"]}})
    assert warnings == [
        'metadata.finalizers: "cleanup": prefer a domain-qualified finalizer name including a path (/) to avoid '
        "accidental conflicts with other finalizer writers"
    ]
    stored, _ = create(CONFIG_MAP, {"metadata": {"name": "cfg", "finalizers": ["cleanup"]}})
    assert update(CONFIG_MAP, stored, stored)[1] == [], "only a finalizer being added is warned about"


# ============================================================================= metadata on update
@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"labels": {"tier": "gpu"}}, None),
        ({"name": "other"}, ("metadata.name", "FieldValueInvalid")),
        ({"namespace": "team-b"}, ("metadata.namespace", "FieldValueInvalid")),
        ({"uid": "another"}, ("metadata.uid", "FieldValueInvalid")),
        ({"labels": {"tier": "-"}}, ("metadata.labels", "FieldValueInvalid")),
    ],
)
def test_identity_is_immutable_on_update(change: Obj, expected: Cause) -> None:
    stored, _ = create(CONFIG_MAP, named("cfg", data={"a": "b"}))
    new = copy.deepcopy(stored)
    new["metadata"].update(change)
    assert_outcome(CONFIG_MAP, new, expected, old=stored)
    if expected is not None:
        assert (
            "field is immutable" in refusal(update, CONFIG_MAP, new, stored).message or expected[0] == "metadata.labels"
        )


# ======================================================================================== decoding
def _job(name: str = "ftj-1-train", **spec: Any) -> Obj:
    template_spec = {"restartPolicy": "Never", "containers": [{"name": "trainer", "image": "kubetune/trainer:1.0"}]}
    template_spec.update(spec.pop("pod", {}))
    return {"metadata": {"name": name}, "spec": {"template": {"spec": template_spec}, **spec}}


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        (
            {"backoffLimit": "3"},
            "json: cannot unmarshal string into Go struct field JobSpec.spec.backoffLimit of type int32",
        ),
        (
            {"backoffLimit": 1.5},
            "json: cannot unmarshal number 1.5 into Go struct field JobSpec.spec.backoffLimit of type int32",
        ),
        ({"suspend": "yes"}, "json: cannot unmarshal string into Go struct field JobSpec.spec.suspend of type bool"),
        (
            {"pod": {"containers": [{"name": "trainer", "image": 7}]}},
            "json: cannot unmarshal number into Go struct field Container.spec.template.spec.containers.image of type string",
        ),
        (
            {"pod": {"tolerations": {"key": "gpu"}}},
            "json: cannot unmarshal object into Go struct field PodSpec.spec.template.spec.tolerations of type []v1.Toleration",
        ),
        (
            {"pod": {"containers": [{"name": "t", "image": "i", "resources": {"limits": {"memory": "lots"}}}]}},
            "quantities must match the regular expression '^([+-]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)$'",
        ),
    ],
)
def test_a_wrong_json_type_in_a_builtin_kind_is_a_bad_request(spec: Obj, message: str) -> None:
    error = refusal(create, JOB, _job(**spec))
    assert (error.code, error.reason) == (400, "BadRequest")
    assert error.message == f'Job in version "v1" cannot be handled as a Job: {message}'


def test_unknown_fields_of_a_builtin_kind_follow_field_validation() -> None:
    job = _job(parallelizm=2)
    stored, warnings = create(JOB, job)
    assert warnings == ['unknown field "spec.parallelizm"'] and "parallelizm" not in stored["spec"]
    stored, warnings = create(JOB, job, field_validation="Ignore")
    assert warnings == [] and "parallelizm" not in stored["spec"]
    error = refusal(create, JOB, job, field_validation="Strict")
    assert (error.code, error.message) == (
        400,
        'Job in version "v1" cannot be handled as a Job: strict decoding error: unknown field "spec.parallelizm"',
    )


def test_unknown_fields_are_reported_with_their_list_index() -> None:
    job = _job(pod={"containers": [{"name": "trainer", "image": "i", "imagePulPolicy": "Always"}]})
    assert create(JOB, job)[1] == ['unknown field "spec.template.spec.containers[0].imagePulPolicy"']


def test_an_unknown_field_validation_directive_is_refused() -> None:
    error = refusal(create, CONFIG_MAP, named("cfg"), field_validation="Loud")
    assert error.code == 422 and 'fieldValidation: Unsupported value: "Loud"' in error.message


@pytest.mark.parametrize(
    ("written", "stored"),
    [
        ("0.5", "500m"),
        ("1024Mi", "1Gi"),
        ("1536Mi", "1536Mi"),
        ("16", "16"),
        (2, "2"),
        ("1e3", "1e3"),
        ("0.5Gi", "512Mi"),
    ],
)
def test_quantities_are_stored_in_canonical_form(written: Any, stored: str) -> None:
    job = _job(pod={"containers": [{"name": "t", "image": "i", "resources": {"requests": {"memory": written}}}]})
    requests = create(JOB, job)[0]["spec"]["template"]["spec"]["containers"][0]["resources"]["requests"]
    assert requests == {"memory": stored}


def test_timestamps_are_stored_in_utc() -> None:
    event = _event(firstTimestamp="2025-01-01T01:00:00+01:00")
    assert create(EVENT, event)[0]["firstTimestamp"] == "2025-01-01T00:00:00Z"
    error = refusal(create, EVENT, _event(firstTimestamp="yesterday"))
    assert error.code == 400 and 'parsing time "yesterday"' in error.message


# ============================================================================================= Job
def test_job_defaults_and_generated_selector() -> None:
    stored, warnings = create(JOB, _job())
    uid = stored["metadata"]["uid"]
    spec = stored["spec"]
    assert warnings == []
    assert spec["selector"] == {"matchLabels": {"batch.kubernetes.io/controller-uid": uid}}
    assert spec["template"]["metadata"]["labels"] == {
        "batch.kubernetes.io/controller-uid": uid,
        "batch.kubernetes.io/job-name": "ftj-1-train",
        "controller-uid": uid,
        "job-name": "ftj-1-train",
    }
    assert stored["metadata"]["labels"] == spec["template"]["metadata"]["labels"], "a Job reads back its pod labels"
    assert (spec["backoffLimit"], spec["completions"], spec["parallelism"]) == (6, 1, 1)
    assert (spec["completionMode"], spec["suspend"], spec["podReplacementPolicy"]) == (
        "NonIndexed",
        False,
        "TerminatingOrFailed",
    )
    pod = spec["template"]["spec"]
    assert pod["restartPolicy"] == "Never" and pod["dnsPolicy"] == "ClusterFirst"
    container = pod["containers"][0]
    assert (container["imagePullPolicy"], container["terminationMessagePolicy"]) == ("IfNotPresent", "File")


def test_manual_selector_is_left_alone() -> None:
    job = _job(manualSelector=True, selector={"matchLabels": {"app": "x"}})
    job["spec"]["template"]["metadata"] = {"labels": {"app": "x"}}
    stored, _ = create(JOB, job)
    assert stored["spec"]["selector"] == {"matchLabels": {"app": "x"}}
    assert stored["spec"]["template"]["metadata"]["labels"] == {"app": "x"}


def test_a_job_name_of_64_characters_fails_at_the_pod_template_labels() -> None:
    name = "f" * 64
    error = refusal(create, JOB, _job(name))
    assert causes(error) == [("spec.template.labels", "FieldValueInvalid")]  # job-name and its twin, reported once
    assert (
        error.message
        == f'Job.batch "{name}" is invalid: spec.template.labels: Invalid value: "{name}": must be no more than 63 characters'
    )
    assert create(JOB, _job("f" * 63))[0]["metadata"]["name"] == "f" * 63


_EXIT_CODES = {"action": "FailJob", "onExitCodes": {"operator": "In", "values": [42]}}


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ({}, None),
        ({"pod": {"restartPolicy": "OnFailure"}}, None),
        ({"pod": {"restartPolicy": None}}, ("spec.template.spec.restartPolicy", "FieldValueRequired")),
        ({"pod": {"restartPolicy": "Always"}}, ("spec.template.spec.restartPolicy", "FieldValueRequired")),
        ({"pod": {"restartPolicy": "Sometimes"}}, ("spec.template.spec.restartPolicy", "FieldValueNotSupported")),
        ({"backoffLimit": -1}, ("spec.backoffLimit", "FieldValueInvalid")),
        ({"activeDeadlineSeconds": -1}, ("spec.activeDeadlineSeconds", "FieldValueInvalid")),
        ({"ttlSecondsAfterFinished": -5}, ("spec.ttlSecondsAfterFinished", "FieldValueInvalid")),
        ({"completionMode": "Ordered"}, ("spec.completionMode", "FieldValueNotSupported")),
        ({"podFailurePolicy": {"rules": [_EXIT_CODES]}}, None),
        (
            {"podFailurePolicy": {"rules": [_EXIT_CODES]}, "pod": {"restartPolicy": "OnFailure"}},
            ("spec.template.spec.restartPolicy", "FieldValueInvalid"),
        ),
        (
            {"podFailurePolicy": {"rules": [{"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget"}]}]}},
            None,
        ),
        (
            {"podFailurePolicy": {"rules": [{**_EXIT_CODES, "onPodConditions": [{"type": "DisruptionTarget"}]}]}},
            ("spec.podFailurePolicy.rules[0]", "FieldValueInvalid"),
        ),
        (
            {"podFailurePolicy": {"rules": [{"action": "FailJob"}]}},
            ("spec.podFailurePolicy.rules[0]", "FieldValueInvalid"),
        ),
        (
            {"podFailurePolicy": {"rules": [{**_EXIT_CODES, "action": "Retry"}]}},
            ("spec.podFailurePolicy.rules[0].action", "FieldValueNotSupported"),
        ),
        (
            {"podFailurePolicy": {"rules": [{"action": "FailJob", "onExitCodes": {"operator": "In", "values": []}}]}},
            ("spec.podFailurePolicy.rules[0].onExitCodes.values", "FieldValueInvalid"),
        ),
        (
            {
                "podFailurePolicy": {
                    "rules": [{"action": "FailJob", "onExitCodes": {"operator": "In", "values": [0, 3]}}]
                }
            },
            ("spec.podFailurePolicy.rules[0].onExitCodes.values[0]", "FieldValueInvalid"),
        ),
        (
            {
                "podFailurePolicy": {
                    "rules": [{"action": "FailJob", "onExitCodes": {"operator": "NotIn", "values": [3, 3]}}]
                }
            },
            ("spec.podFailurePolicy.rules[0].onExitCodes.values[1]", "FieldValueDuplicate"),
        ),
        (
            {
                "podFailurePolicy": {
                    "rules": [
                        {**_EXIT_CODES, "onExitCodes": {"operator": "In", "values": [1], "containerName": "sidecar"}}
                    ]
                }
            },
            ("spec.podFailurePolicy.rules[0].onExitCodes.containerName", "FieldValueInvalid"),
        ),
    ],
)
def test_job_spec_rules(spec: Obj, expected: Cause) -> None:
    job = _job(**copy.deepcopy(spec))
    if job["spec"]["template"]["spec"].get("restartPolicy", "") is None:
        del job["spec"]["template"]["spec"]["restartPolicy"]
    assert_outcome(JOB, job, expected)


def _stored_job(**spec: Any) -> Obj:
    return create(JOB, _job(**spec))[0]


def _changed(stored: Obj, change: Any) -> Obj:
    new = copy.deepcopy(stored)
    change(new)
    return new


def _pod_spec(job: Obj) -> Obj:
    return dict(job["spec"]["template"]["spec"])


@pytest.mark.parametrize(
    ("suspended", "started", "change", "expected"),
    [
        (False, False, lambda j: j["spec"].update(suspend=True), None),
        (False, False, lambda j: j["spec"].update(backoffLimit=1), None),
        (
            False,
            False,
            lambda j: _pod_spec(j)["containers"][0].update(image="other"),
            ("spec.template", "FieldValueInvalid"),
        ),
        (
            False,
            False,
            lambda j: j["spec"]["template"]["spec"].update(nodeSelector={"gpu": "l4"}),
            ("spec.template", "FieldValueInvalid"),
        ),
        (True, False, lambda j: j["spec"]["template"]["spec"].update(nodeSelector={"gpu": "l4"}), None),
        (
            True,
            False,
            lambda j: j["spec"]["template"]["spec"].update(tolerations=[{"key": "gpu", "operator": "Exists"}]),
            None,
        ),
        (True, False, lambda j: j["spec"]["template"]["metadata"]["labels"].update(queue="a"), None),
        (
            True,
            False,
            lambda j: j["spec"]["template"]["spec"].update(schedulingGates=[{"name": "kueue.x-k8s.io/admission"}]),
            None,
        ),
        (
            True,
            False,
            lambda j: _pod_spec(j)["containers"][0].update(image="other"),
            ("spec.template", "FieldValueInvalid"),
        ),
        (
            True,
            True,
            lambda j: j["spec"]["template"]["spec"].update(nodeSelector={"gpu": "l4"}),
            ("spec.template", "FieldValueInvalid"),
        ),
        (
            False,
            False,
            lambda j: j["spec"]["selector"]["matchLabels"].update(x="y"),
            ("spec.selector", "FieldValueInvalid"),
        ),
        (False, False, lambda j: j["spec"].update(completions=2), ("spec.completions", "FieldValueInvalid")),
        (
            False,
            False,
            lambda j: j["spec"].update(completionMode="Indexed"),
            ("spec.completionMode", "FieldValueInvalid"),
        ),
        (
            False,
            False,
            lambda j: j["spec"].update(podFailurePolicy={"rules": [_EXIT_CODES]}),
            ("spec.podFailurePolicy", "FieldValueInvalid"),
        ),
    ],
)
def test_job_update_rules(suspended: bool, started: bool, change: Any, expected: Cause) -> None:
    stored = _stored_job(suspend=suspended)
    if started:
        stored["status"] = {"startTime": "2025-01-01T00:00:01Z"}
    new = _changed(stored, change)
    assert_outcome(JOB, new, expected, old=stored)


def test_a_changed_template_is_reported_immutable() -> None:
    stored = _stored_job()
    new = _changed(stored, lambda j: j["spec"]["template"]["spec"]["containers"][0].update(image="other"))
    message = refusal(update, JOB, new, stored).message
    assert message.startswith(
        'Job.batch "ftj-1-train" is invalid: spec.template: Invalid value: '
    ) and message.endswith(": field is immutable")


def test_job_status_counts_are_not_negative() -> None:
    stored = _stored_job()
    assert update(JOB, _changed(stored, lambda j: j.update(status={"active": 1})), stored, subresource="status")
    new = _changed(stored, lambda j: j.update(status={"failed": -1}))
    assert causes(refusal(update, JOB, new, stored, subresource="status")) == [("status.failed", "FieldValueInvalid")]


# ===================================================================================== pod template
def _container(**fields: Any) -> Obj:
    return {"name": "trainer", "image": "kubetune/trainer:1.0", **fields}


_POD = "spec.template.spec"
_CONTAINER = f"{_POD}.containers[0]"


@pytest.mark.parametrize(
    ("pod", "expected"),
    [
        ({"containers": [_container(), _container(name="sidecar")]}, None),
        ({"containers": [_container(), _container()]}, (f"{_POD}.containers[1].name", "FieldValueDuplicate")),
        ({"initContainers": [_container()]}, (f"{_POD}.initContainers[0].name", "FieldValueDuplicate")),
        ({"containers": [_container(name="Trainer")]}, (f"{_CONTAINER}.name", "FieldValueInvalid")),
        ({"containers": []}, (f"{_POD}.containers", "FieldValueRequired")),
        ({"containers": [_container(image="")]}, (f"{_CONTAINER}.image", "FieldValueRequired")),
        (
            {"containers": [_container(imagePullPolicy="Sometimes")]},
            (f"{_CONTAINER}.imagePullPolicy", "FieldValueNotSupported"),
        ),
        # volumes and mounts
        (
            {
                "volumes": [{"name": "scratch", "emptyDir": {"sizeLimit": "50Gi"}}],
                "containers": [
                    _container(volumeMounts=[{"name": "scratch", "mountPath": "/scratch", "subPath": "run/1"}])
                ],
            },
            None,
        ),
        ({"volumes": [{"name": "Scratch", "emptyDir": {}}]}, (f"{_POD}.volumes[0].name", "FieldValueInvalid")),
        (
            {"volumes": [{"name": "a", "emptyDir": {}}, {"name": "a", "emptyDir": {}}]},
            (f"{_POD}.volumes[1].name", "FieldValueDuplicate"),
        ),
        ({"volumes": [{"name": "a"}]}, (f"{_POD}.volumes[0]", "FieldValueRequired")),
        ({"volumes": [{"name": "a", "secret": {}}]}, (f"{_POD}.volumes[0].secret.secretName", "FieldValueRequired")),
        (
            {"containers": [_container(volumeMounts=[{"name": "nope", "mountPath": "/x"}])]},
            (f"{_CONTAINER}.volumeMounts[0].name", "FieldValueNotFound"),
        ),
        (
            {
                "volumes": [{"name": "a", "emptyDir": {}}],
                "containers": [
                    _container(volumeMounts=[{"name": "a", "mountPath": "/x"}, {"name": "a", "mountPath": "/x"}])
                ],
            },
            (f"{_CONTAINER}.volumeMounts[1].mountPath", "FieldValueInvalid"),
        ),
        (
            {
                "volumes": [{"name": "a", "emptyDir": {}}],
                "containers": [_container(volumeMounts=[{"name": "a", "mountPath": "/x", "subPath": "../etc"}])],
            },
            (f"{_CONTAINER}.volumeMounts.subPath", "FieldValueInvalid"),
        ),
        # environment
        ({"containers": [_container(env=[{"name": "HF_HOME", "value": "/cache"}, {"name": "1.weird-but-ok"}])]}, None),
        ({"containers": [_container(env=[{"name": "A=B"}])]}, (f"{_CONTAINER}.env[0].name", "FieldValueInvalid")),
        ({"containers": [_container(env=[{"name": ""}])]}, (f"{_CONTAINER}.env[0].name", "FieldValueRequired")),
        (
            {
                "containers": [
                    _container(
                        env=[{"name": "K", "valueFrom": {"secretKeyRef": {"name": "s3", "key": "AWS_ACCESS_KEY_ID"}}}]
                    )
                ]
            },
            None,
        ),
        (
            {
                "containers": [
                    _container(env=[{"name": "K", "valueFrom": {"secretKeyRef": {"name": "s3", "key": "a/b"}}}])
                ]
            },
            (f"{_CONTAINER}.env[0].valueFrom.secretKeyRef.key", "FieldValueInvalid"),
        ),
        (
            {
                "containers": [
                    _container(
                        env=[
                            {
                                "name": "K",
                                "valueFrom": {
                                    "secretKeyRef": {"name": "s", "key": "k"},
                                    "configMapKeyRef": {"name": "c", "key": "k"},
                                },
                            }
                        ]
                    )
                ]
            },
            (f"{_CONTAINER}.env[0].valueFrom", "FieldValueInvalid"),
        ),
        (
            {
                "containers": [
                    _container(
                        env=[{"name": "K", "value": "v", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}]
                    )
                ]
            },
            (f"{_CONTAINER}.env[0].valueFrom", "FieldValueInvalid"),
        ),
        (
            {"containers": [_container(env=[{"name": "K", "valueFrom": {}}])]},
            (f"{_CONTAINER}.env[0].valueFrom", "FieldValueInvalid"),
        ),
        (
            {
                "containers": [
                    _container(env=[{"name": "K", "valueFrom": {"fieldRef": {"fieldPath": "spec.hostname"}}}])
                ]
            },
            (f"{_CONTAINER}.env[0].valueFrom.fieldRef.fieldPath", "FieldValueNotSupported"),
        ),
        # resources
        (
            {
                "containers": [
                    _container(
                        resources={
                            "requests": {"cpu": "4", "memory": "32Gi"},
                            "limits": {"nvidia.com/gpu": 2, "memory": "32Gi"},
                        }
                    )
                ]
            },
            None,
        ),
        (
            {"containers": [_container(resources={"requests": {"cpu": "2"}, "limits": {"cpu": "1"}})]},
            (f"{_CONTAINER}.resources.requests", "FieldValueInvalid"),
        ),
        (
            {"containers": [_container(resources={"limits": {"nvidia.com/gpu": "0.5"}})]},
            (f"{_CONTAINER}.resources.limits[nvidia.com/gpu]", "FieldValueInvalid"),
        ),
        (
            {"containers": [_container(resources={"requests": {"nvidia.com/gpu": 1}})]},
            (f"{_CONTAINER}.resources.limits", "FieldValueRequired"),
        ),
        (
            {
                "containers": [
                    _container(resources={"requests": {"nvidia.com/gpu": 1}, "limits": {"nvidia.com/gpu": 2}})
                ]
            },
            (f"{_CONTAINER}.resources.requests", "FieldValueInvalid"),
        ),
        (
            {"containers": [_container(resources={"limits": {"gpu": 1}})]},
            (f"{_CONTAINER}.resources.limits[gpu]", "FieldValueInvalid"),
        ),
        (
            {"containers": [_container(resources={"requests": {"memory": "-1Gi"}})]},
            (f"{_CONTAINER}.resources.requests[memory]", "FieldValueInvalid"),
        ),
        # ports
        ({"containers": [_container(ports=[{"name": "metrics", "containerPort": 9090}])]}, None),
        (
            {"containers": [_container(ports=[{"containerPort": 70000}])]},
            (f"{_CONTAINER}.ports[0].containerPort", "FieldValueInvalid"),
        ),
        (
            {"containers": [_container(ports=[{"containerPort": 0}])]},
            (f"{_CONTAINER}.ports[0].containerPort", "FieldValueRequired"),
        ),
        (
            {"containers": [_container(ports=[{"name": "Metrics", "containerPort": 1}])]},
            (f"{_CONTAINER}.ports[0].name", "FieldValueInvalid"),
        ),
        (
            {"containers": [_container(ports=[{"name": "prometheus-metrics", "containerPort": 1}])]},
            (f"{_CONTAINER}.ports[0].name", "FieldValueInvalid"),
        ),
        (
            {"containers": [_container(ports=[{"name": "m", "containerPort": 1}, {"name": "m", "containerPort": 2}])]},
            (f"{_CONTAINER}.ports[1].name", "FieldValueDuplicate"),
        ),
        (
            {"containers": [_container(ports=[{"containerPort": 1, "protocol": "HTTP"}])]},
            (f"{_CONTAINER}.ports[0].protocol", "FieldValueNotSupported"),
        ),
        # scheduling
        ({"tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]}, None),
        (
            {"tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "value": "true"}]},
            (f"{_POD}.tolerations[0].operator", "FieldValueInvalid"),
        ),
        (
            {"tolerations": [{"operator": "Equal", "value": "x"}]},
            (f"{_POD}.tolerations[0].operator", "FieldValueInvalid"),
        ),
        ({"tolerations": [{"operator": "Exists"}]}, None),  # tolerates every taint
        (
            {"tolerations": [{"key": "k", "operator": "In"}]},
            (f"{_POD}.tolerations[0].operator", "FieldValueNotSupported"),
        ),
        (
            {"tolerations": [{"key": "k", "effect": "Sometimes"}]},
            (f"{_POD}.tolerations[0].effect", "FieldValueNotSupported"),
        ),
        (
            {"tolerations": [{"key": "k", "effect": "NoSchedule", "tolerationSeconds": 30}]},
            (f"{_POD}.tolerations[0].effect", "FieldValueInvalid"),
        ),
        ({"nodeSelector": {"node.kubernetes.io/instance-type": "g6e.12xlarge"}}, None),
        ({"nodeSelector": {"gpu": "NVIDIA L4"}}, (f"{_POD}.nodeSelector", "FieldValueInvalid")),
        ({"priorityClassName": "Batch_Training"}, (f"{_POD}.priorityClassName", "FieldValueInvalid")),
        ({"serviceAccountName": "ftj-runner"}, None),
        ({"serviceAccountName": "FTJ"}, (f"{_POD}.serviceAccountName", "FieldValueInvalid")),
        ({"activeDeadlineSeconds": 0}, (f"{_POD}.activeDeadlineSeconds", "FieldValueInvalid")),
    ],
)
def test_pod_template_rules(pod: Obj, expected: Cause) -> None:
    assert_outcome(JOB, _job(pod=copy.deepcopy(pod)), expected)


def test_an_exists_toleration_with_a_value_is_refused_as_the_server_words_it() -> None:
    toleration = {"key": "nvidia.com/gpu", "operator": "Exists", "value": "true", "effect": "NoSchedule"}
    message = refusal(create, JOB, _job(pod={"tolerations": [toleration]})).message
    assert message == (
        'Job.batch "ftj-1-train" is invalid: spec.template.spec.tolerations[0].operator: Invalid value: '
        'core.Toleration{Key:"nvidia.com/gpu", Operator:"Exists", Value:"true", Effect:"NoSchedule", '
        "TolerationSeconds:(*int64)(nil)}: value must be empty when `operator` is 'Exists'"
    )


def test_every_error_is_reported_not_only_the_first() -> None:
    job = _job("f" * 70, backoffLimit=-1, pod={"containers": [_container(), _container()]})
    found = set(causes(refusal(create, JOB, job)))
    assert {
        ("spec.template.labels", "FieldValueInvalid"),
        ("spec.backoffLimit", "FieldValueInvalid"),
        (f"{_POD}.containers[1].name", "FieldValueDuplicate"),
    } <= found


def test_a_pod_gets_its_defaults_and_the_same_spec_rules() -> None:
    pod: Obj = {
        "metadata": {"name": "p"},
        "spec": {"containers": [_container(resources={"limits": {"cpu": "1", "memory": "1Gi"}})]},
    }
    stored, _ = create(POD, pod)
    assert stored["spec"]["restartPolicy"] == "Always"  # a Pod's default, which a Job's template does not get
    assert stored["spec"]["containers"][0]["resources"]["requests"] == {"cpu": "1", "memory": "1Gi"}
    assert stored["status"] == {"phase": "Pending", "qosClass": "Guaranteed"}
    bad: Obj = copy.deepcopy(pod)
    bad["spec"]["containers"][0]["name"] = "Bad"
    assert causes(refusal(create, POD, bad)) == [("spec.containers[0].name", "FieldValueInvalid")]
    moved = _changed(stored, lambda p: p["spec"].update(nodeName="elsewhere"))
    assert ("spec", "FieldValueForbidden") in outcome(POD, moved, stored)


# ====================================================================================== ConfigMap
MIB = 1024 * 1024


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ({"data": {"config.yaml": "a: 1", "KEY_NAME": "x"}, "binaryData": {"blob.bin": "AAEC"}}, None),
        ({"data": {"a/b": "x"}}, ("data[a/b]", "FieldValueInvalid")),
        ({"data": {"..": "x"}}, ("data[..]", "FieldValueInvalid")),
        ({"data": {"k": "x"}, "binaryData": {"k": "AAEC"}}, ("data[k]", "FieldValueInvalid")),
        ({"data": {"k": "x" * MIB}}, None),
        ({"data": {"k": "x" * MIB, "l": "y"}}, ("[]", "FieldValueTooLong")),
    ],
)
def test_config_map_rules(fields: Obj, expected: Cause) -> None:
    assert_outcome(CONFIG_MAP, named("cfg", **fields), expected)


def test_a_config_map_over_one_mebibyte_is_refused_as_the_server_words_it() -> None:
    error = refusal(create, CONFIG_MAP, named("cfg", data={"k": "x" * (MIB + 1)}))
    assert error.message == 'ConfigMap "cfg" is invalid: []: Too long: must have at most 1048576 bytes'


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (lambda c: c["metadata"].update(labels={"a": "b"}), None),
        (lambda c: c["data"].update(k="changed"), ("data", "FieldValueForbidden")),
        (lambda c: c.update(binaryData={"b": "AAEC"}), ("binaryData", "FieldValueForbidden")),
        (lambda c: c.update(immutable=False), ("immutable", "FieldValueForbidden")),
    ],
)
def test_an_immutable_config_map_keeps_its_data(change: Any, expected: Cause) -> None:
    stored, _ = create(CONFIG_MAP, named("cfg", data={"k": "v"}, immutable=True))
    assert_outcome(CONFIG_MAP, _changed(stored, change), expected, old=stored)


def test_a_mutable_config_map_may_change_and_become_immutable() -> None:
    stored, _ = create(CONFIG_MAP, named("cfg", data={"k": "v"}))
    assert update(CONFIG_MAP, _changed(stored, lambda c: c.update(data={"k": "w"}, immutable=True)), stored)
    frozen = {**stored, "immutable": True}
    error = refusal(update, CONFIG_MAP, _changed(frozen, lambda c: c["data"].update(k="w")), frozen)
    assert error.message == 'ConfigMap "cfg" is invalid: data: Forbidden: field is immutable when `immutable` is set'


# ========================================================================================= Secret
@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ({"data": {"AWS_ACCESS_KEY_ID": "QUtJQQ=="}}, None),
        ({"stringData": {"AWS_SECRET_ACCESS_KEY": "s3cr3t"}}, None),
        ({"data": {"a b": "QQ=="}}, ("data[a b]", "FieldValueInvalid")),
        ({"data": {"k": "QQ=="}, "stringData": {"l": "x" * MIB}}, ("data", "FieldValueTooLong")),
        ({"type": "kubernetes.io/tls", "data": {"tls.crt": "QQ=="}}, ("data[tls.key]", "FieldValueRequired")),
        ({"type": "kubernetes.io/basic-auth"}, ("data[username]", "FieldValueRequired")),
    ],
)
def test_secret_rules(fields: Obj, expected: Cause) -> None:
    assert_outcome(SECRET, named("s3", **fields), expected)


def test_secret_string_data_is_stored_as_data() -> None:
    stored, _ = create(SECRET, named("s3", stringData={"token": "abc"}))
    assert stored["data"] == {"token": "YWJj"} and "stringData" not in stored and stored["type"] == "Opaque"
    assert refusal(create, SECRET, named("s3", data={"token": "not base64!"})).code == 400


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (lambda s: s["metadata"].update(annotations={"a": "b"}), None),
        (lambda s: s.update(type="kubernetes.io/basic-auth"), ("type", "FieldValueInvalid")),
        (lambda s: s["data"].update(token="YWJk"), ("data", "FieldValueForbidden")),
    ],
)
def test_secret_update_rules(change: Any, expected: Cause) -> None:
    stored, _ = create(SECRET, named("s3", data={"token": "YWJj", "username": "dQ=="}, immutable=True))
    assert_outcome(SECRET, _changed(stored, change), expected, old=stored)


# ================================================================================ PVC, Namespace
_CLAIM = {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "200Gi"}}}


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        (_CLAIM, None),
        ({**_CLAIM, "accessModes": []}, ("spec.accessModes", "FieldValueRequired")),
        ({**_CLAIM, "accessModes": ["ReadWriteAlways"]}, ("spec.accessModes", "FieldValueNotSupported")),
        ({**_CLAIM, "accessModes": ["ReadWriteOncePod", "ReadOnlyMany"]}, ("spec.accessModes", "FieldValueForbidden")),
        ({**_CLAIM, "resources": {}}, ("spec.resources[storage]", "FieldValueRequired")),
        ({**_CLAIM, "resources": {"requests": {"storage": "0"}}}, ("spec.resources[storage]", "FieldValueInvalid")),
        ({**_CLAIM, "storageClassName": "Fast_SSD"}, ("spec.storageClassName", "FieldValueInvalid")),
    ],
)
def test_persistent_volume_claim_rules(spec: Obj, expected: Cause) -> None:
    assert_outcome(PVC, named("scratch", spec=copy.deepcopy(spec)), expected)


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (lambda c: c["spec"]["resources"]["requests"].update(storage="300Gi"), None),
        (
            lambda c: c["spec"]["resources"]["requests"].update(storage="100Gi"),
            ("spec.resources.requests.storage", "FieldValueForbidden"),
        ),
        (lambda c: c["spec"].update(accessModes=["ReadWriteMany"]), ("spec", "FieldValueForbidden")),
    ],
)
def test_persistent_volume_claim_update_rules(change: Any, expected: Cause) -> None:
    stored, _ = create(PVC, named("scratch", spec=copy.deepcopy(_CLAIM)))
    assert stored["spec"]["volumeMode"] == "Filesystem"
    assert_outcome(PVC, _changed(stored, change), expected, old=stored)


def test_a_namespace_gets_its_name_label_finalizer_and_phase() -> None:
    stored, _ = create(NAMESPACE, named("team-a"))
    assert stored["metadata"]["labels"] == {"kubernetes.io/metadata.name": "team-a"}
    assert stored["spec"] == {"finalizers": ["kubernetes"]} and stored["status"] == {"phase": "Active"}
    assert causes(refusal(create, NAMESPACE, {"metadata": {"name": "x", "namespace": "y"}})) == [
        ("metadata.namespace", "FieldValueForbidden")
    ]


# ========================================================================================== Event
def _event(**fields: Any) -> Obj:
    involved = {"kind": "FineTuneJob", "namespace": "team-a", "name": "ftj-1", "apiVersion": "kubetune.dev/v1alpha1"}
    return {
        "metadata": {"name": "ftj-1.17a2b"},
        "involvedObject": involved,
        "reason": "Started",
        "type": "Normal",
        **fields,
    }


@pytest.mark.parametrize(
    ("event", "expected"),
    [
        (_event(), None),
        (
            _event(involvedObject={"kind": "Pod", "name": "p", "namespace": "team-b"}),
            ("involvedObject.namespace", "FieldValueInvalid"),
        ),
        (
            _event(
                eventTime="2025-01-01T00:00:00.000000Z",
                reportingComponent="kubetune",
                reportingInstance="op-1",
                action="Create",
            ),
            None,
        ),
        (
            _event(eventTime="2025-01-01T00:00:00.000000Z", reportingInstance="op-1", action="Create"),
            ("source", "FieldValueRequired"),
        ),
        ({**_event(), "metadata": {"name": "e", "labels": {"x": "-"}}}, ("metadata.labels", "FieldValueInvalid")),
    ],
)
def test_event_rules(event: Obj, expected: Cause) -> None:
    assert_outcome(EVENT, event, expected)


# =========================================================================================== RBAC
_RULE = {"apiGroups": ["kubetune.dev"], "resources": ["finetunejobs/status"], "verbs": ["get", "patch"]}


@pytest.mark.parametrize(
    ("rtype", "rule", "expected"),
    [
        (ROLE, _RULE, None),
        (ROLE, {**_RULE, "verbs": []}, ("rules[0].verbs", "FieldValueRequired")),
        (ROLE, {**_RULE, "apiGroups": []}, ("rules[0].apiGroups", "FieldValueRequired")),
        (ROLE, {"resources": ["pods"], "verbs": ["get"]}, ("rules[0].apiGroups", "FieldValueRequired")),
        (ROLE, {"nonResourceURLs": ["/metrics"], "verbs": ["get"]}, ("rules[0].nonResourceURLs", "FieldValueInvalid")),
        (CLUSTER_ROLE, {"nonResourceURLs": ["/metrics"], "verbs": ["get"]}, None),
        (CLUSTER_ROLE, {**_RULE, "nonResourceURLs": ["/metrics"]}, ("rules[0].nonResourceURLs", "FieldValueInvalid")),
    ],
)
def test_role_rules(rtype: ResourceType, rule: Obj, expected: Cause) -> None:
    assert_outcome(rtype, named("trainer", rules=[rule]), expected)


def _binding(role_kind: str = "Role", **subject: Any) -> Obj:
    subjects = [{"kind": "ServiceAccount", "name": "ftj-runner", "namespace": "team-a", **subject}]
    return named("trainer", roleRef={"apiGroup": RBAC, "kind": role_kind, "name": "trainer"}, subjects=subjects)


@pytest.mark.parametrize(
    ("rtype", "binding", "expected"),
    [
        (ROLE_BINDING, _binding(), None),
        (ROLE_BINDING, _binding("ClusterRole"), None),
        (ROLE_BINDING, _binding("Pod"), ("roleRef.kind", "FieldValueNotSupported")),
        (
            ROLE_BINDING,
            {**_binding(), "roleRef": {"apiGroup": "rbac", "kind": "Role", "name": "x"}},
            ("roleRef.apiGroup", "FieldValueNotSupported"),
        ),
        (ROLE_BINDING, _binding(kind="Robot"), ("subjects[0].kind", "FieldValueNotSupported")),
        (ROLE_BINDING, _binding(apiGroup="v1"), ("subjects[0].apiGroup", "FieldValueNotSupported")),
        (ROLE_BINDING, _binding(namespace=None), None),
        (
            ROLE_BINDING,
            named("b", roleRef={"kind": "Role", "name": "x"}, subjects=[{"kind": "User", "name": "alice"}]),
            None,
        ),
        (CLUSTER_ROLE_BINDING, _binding("ClusterRole"), None),
        (CLUSTER_ROLE_BINDING, _binding("Role"), ("roleRef.kind", "FieldValueNotSupported")),
        (
            CLUSTER_ROLE_BINDING,
            _binding("ClusterRole", namespace=None),
            ("subjects[0].namespace", "FieldValueRequired"),
        ),
    ],
)
def test_binding_rules(rtype: ResourceType, binding: Obj, expected: Cause) -> None:
    binding = copy.deepcopy(binding)
    for subject in binding.get("subjects") or ():
        if subject.get("namespace", "") is None:
            del subject["namespace"]
    assert_outcome(rtype, binding, expected)


def test_subjects_and_role_refs_get_their_api_group_and_role_ref_is_immutable() -> None:
    stored, _ = create(
        ROLE_BINDING, named("b", roleRef={"kind": "Role", "name": "x"}, subjects=[{"kind": "Group", "name": "ml"}])
    )
    assert stored["roleRef"]["apiGroup"] == RBAC and stored["subjects"][0]["apiGroup"] == RBAC
    changed = _changed(stored, lambda b: b["roleRef"].update(name="y"))
    assert refusal(update, ROLE_BINDING, changed, stored).message == (
        'RoleBinding.rbac.authorization.k8s.io "b" is invalid: roleRef: Invalid value: '
        'rbac.RoleRef{APIGroup:"rbac.authorization.k8s.io", Kind:"Role", Name:"y"}: cannot change roleRef'
    )
    assert update(
        ROLE_BINDING, _changed(stored, lambda b: b["subjects"].append({"kind": "User", "name": "bob"})), stored
    )


# =========================================================================== schema-only kinds
def test_the_projects_crd_is_a_valid_custom_resource_definition() -> None:
    stored, warnings = create(CRD_TYPE, _crd_document())
    assert warnings == []
    assert stored["spec"]["names"]["kind"] == "FineTuneJob"


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (lambda c: c["metadata"].update(name="finetunejobs.example.com"), ("metadata.name", "FieldValueInvalid")),
        (lambda c: c["spec"].pop("group"), ("spec.group", "FieldValueRequired")),
        (lambda c: c["spec"]["versions"][0].pop("served"), ("spec.versions[0].served", "FieldValueRequired")),
    ],
)
def test_crd_schema_rules(change: Any, expected: Cause) -> None:
    assert_outcome(CRD_TYPE, _changed(_crd_document(), change), expected)


def test_a_policy_is_checked_against_its_schema() -> None:
    policy = named("p", spec={"validations": [{"expression": "true"}], "failurePolicy": "Fail"})
    assert create(POLICY, policy)[1] == []
    assert create(POLICY, named("p", spec={"validatons": []}))[1] == ['unknown field "spec.validatons"']
    assert ("spec.validations[0].expression", "FieldValueRequired") in outcome(
        POLICY, named("p", spec={"validations": [{}]})
    )


# ================================================================================== FineTuneJob
def _example(name: str) -> Obj:
    documents = [doc for doc in yaml.safe_load_all((ROOT / "examples" / name).read_text()) if doc]
    (job,) = [doc for doc in documents if doc.get("kind") == "FineTuneJob"]
    return dict(job)


EXAMPLES = sorted(path.name for path in (ROOT / "examples").glob("*.yaml"))
MINIMAL_SPEC = minimal_spec()


def _finetunejob(**spec: Any) -> Obj:
    return {"metadata": {"name": "ftj-1"}, "spec": {**copy.deepcopy(MINIMAL_SPEC), **spec}}


@pytest.mark.parametrize("name", EXAMPLES)
def test_the_examples_are_accepted(name: str) -> None:
    stored, warnings = create(FINETUNEJOB, _example(name))
    assert warnings == []
    assert stored["spec"]["backoffLimit"] == _example(name)["spec"].get("backoffLimit", 3)


def test_defaults_come_from_the_crd() -> None:
    schema = _crd_document()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]
    stored, _ = create(FINETUNEJOB, _finetunejob())
    spec = stored["spec"]
    assert spec["backoffLimit"] == schema["backoffLimit"]["default"] == 3
    assert spec["suspend"] is False
    assert spec["dataset"]["split"] == {"validation": 0.1, "test": 0.1, "seed": "kubetune"}
    assert spec["dataset"]["sources"][0] == {
        "uri": "s3://data/x.jsonl",
        "format": "auto",
        "weight": 1.0,
        "trainOnly": False,
        "evalOnly": False,
    }
    # Unset formats stay unset: the trainer's plan picks them by the adapter (a prefix cannot be merged).
    assert "formats" not in spec["output"] and "default" not in schema["output"]["properties"]["formats"]
    assert spec["resources"]["gpus"] == 1 and spec["storage"]["shmSize"] == "2Gi"
    assert "gate" not in spec["evaluation"], "an optional object without a default stays absent"


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ({"hyperparameters": {"learningRate": 0.0002, "epochs": 2}}, None),
        ({"hyperparameters": {"learningRate": "fast"}}, ("spec.hyperparameters.learningRate", "FieldValueTypeInvalid")),
        ({"suspend": "yes"}, ("spec.suspend", "FieldValueTypeInvalid")),
        ({"backoffLimit": 2.0}, None),  # a JSON float that is a whole number is an integer to the schema
        ({"method": {"type": "ppo"}}, ("spec.method.type", "FieldValueNotSupported")),
        ({"hyperparameters": {"learningRate": 0}}, ("spec.hyperparameters.learningRate", "FieldValueInvalid")),
        ({"backoffLimit": 21}, ("spec.backoffLimit", "FieldValueInvalid")),
        ({"dataset": {"sources": []}}, ("spec.dataset.sources", "FieldValueInvalid")),
        ({"dataset": {"sources": [{"uri": "s3://d/x"}] * 33}}, ("spec.dataset.sources", "FieldValueTooMany")),
        ({"dataset": {"sources": [{"uri": "ftp://d/x"}]}}, ("spec.dataset.sources[0].uri", "FieldValueInvalid")),
        ({"dataset": {"sources": [{"format": "chat"}]}}, ("spec.dataset.sources[0].uri", "FieldValueRequired")),
        ({"output": None}, ("spec.output", "FieldValueRequired")),
        ({"queueName": "q" * 254}, ("spec.queueName", "FieldValueTooLong")),
        ({"method": {"type": "qlora"}, "resources": {"gpus": 0}}, ("spec.method.type", "FieldValueInvalid")),
        ({"method": {"type": "qlora", "allowCpuQlora": True}, "resources": {"gpus": 0}}, None),
        (
            {"dataset": {"sources": [{"uri": "s3://d/x"}], "split": {"validation": 0.5, "test": 0.45}}},
            ("spec.dataset.split", "FieldValueInvalid"),
        ),
    ],
)
def test_finetunejob_schema_and_cel_rules(spec: Obj, expected: Cause) -> None:
    job = _finetunejob(**copy.deepcopy(spec))
    job["spec"] = {k: v for k, v in job["spec"].items() if v is not None}
    assert_outcome(FINETUNEJOB, job, expected)


def test_schema_messages_are_the_api_servers() -> None:
    error = refusal(create, FINETUNEJOB, _finetunejob(hyperparameters={"learningRate": "string"}))
    assert error.message == (
        'FineTuneJob.kubetune.dev "ftj-1" is invalid: [spec.hyperparameters.learningRate: Invalid value: "string": '
        'spec.hyperparameters.learningRate in body must be of type number: "string", <nil>: Invalid value: "null": '
        "some validation rules were not checked because the object was invalid; correct the existing errors to "
        "complete validation]"
    )
    error = refusal(create, FINETUNEJOB, _finetunejob(method={"type": "ppo"}))
    assert (
        'spec.method.type: Unsupported value: "ppo": supported values: "auto", "qlora", "lora", "full"' in error.message
    )
    error = refusal(create, FINETUNEJOB, _finetunejob(hyperparameters={"learningRate": 0}))
    assert error.message == (
        'FineTuneJob.kubetune.dev "ftj-1" is invalid: spec.hyperparameters.learningRate: Invalid value: 0: '
        "spec.hyperparameters.learningRate in body should be greater than 0"
    )


def test_a_cross_field_rule_is_reported_at_its_field_path() -> None:
    error = refusal(create, FINETUNEJOB, _finetunejob(method={"type": "qlora"}, resources={"gpus": 0}))
    assert error.message == (
        'FineTuneJob.kubetune.dev "ftj-1" is invalid: spec.method.type: Invalid value: "object": '
        "method.type qlora needs resources.gpus > 0 (or method.allowCpuQlora: true)"
    )


def test_a_blocking_schema_error_skips_the_cel_rules() -> None:
    job = _finetunejob(method={"type": "qlora"}, resources={"gpus": 0}, suspend="no")
    assert causes(refusal(create, FINETUNEJOB, job)) == [
        ("spec.suspend", "FieldValueTypeInvalid"),
        ("<nil>", "FieldValueInvalid"),
    ]


def test_only_suspend_may_change_after_creation() -> None:
    stored, _ = create(FINETUNEJOB, _finetunejob())
    for suspend in (True, False):
        stored, _ = update(FINETUNEJOB, _changed(stored, lambda j, s=suspend: j["spec"].update(suspend=s)), stored)
    changed = _changed(stored, lambda j: j["spec"]["hyperparameters"].update(epochs=5))
    error = refusal(update, FINETUNEJOB, changed, stored)
    assert error.message == (
        'FineTuneJob.kubetune.dev "ftj-1" is invalid: spec.hyperparameters: Invalid value: "object": '
        "spec.hyperparameters is immutable; only spec.suspend may change"
    )
    added = _changed(stored, lambda j: j["spec"].update(queueName="gpu-queue"))
    assert causes(refusal(update, FINETUNEJOB, added, stored)) == [("spec", "FieldValueInvalid")]


def test_unknown_fields_of_a_custom_resource_are_pruned() -> None:
    job = _finetunejob(hyperparameters={"learningRat": 0.1}, extra=1)
    job["metadata"]["labelz"] = {"a": "b"}
    stored, warnings = create(FINETUNEJOB, job)
    assert sorted(warnings) == [
        'unknown field "metadata.labelz"',
        'unknown field "spec.extra"',
        'unknown field "spec.hyperparameters.learningRat"',
    ]
    assert "extra" not in stored["spec"] and stored["spec"]["hyperparameters"] == {}
    assert create(FINETUNEJOB, job, field_validation="Ignore")[1] == []
    error = refusal(create, FINETUNEJOB, job, field_validation="Strict")
    assert error.code == 400 and 'strict decoding error: unknown field "' in error.message
    assert error.message.startswith('FineTuneJob in version "v1alpha1" cannot be handled as a FineTuneJob: ')


def test_status_writes_are_validated_against_the_schema() -> None:
    stored, _ = create(FINETUNEJOB, _finetunejob())
    condition = {"type": "Ready", "status": "True", "reason": "Trained", "lastTransitionTime": "2025-01-01T00:00:00Z"}
    written, _ = update(
        FINETUNEJOB, {**stored, "status": {"phase": "Running", "conditions": [condition]}}, stored, subresource="status"
    )
    assert written["status"]["conditions"][0]["message"] == "", "defaults apply to status too"
    cases = [
        ({"phase": "Training"}, ("status.phase", "FieldValueNotSupported")),
        (
            {"conditions": [condition, {**condition, "reason": "Again"}]},
            ("status.conditions[1]", "FieldValueDuplicate"),
        ),
        ({"conditions": [{"type": "Ready", "status": "True"}]}, ("status.conditions[0].reason", "FieldValueRequired")),
        ({"progress": {"step": "ten"}}, ("status.progress.step", "FieldValueTypeInvalid")),
    ]
    for status, expected in cases:
        assert expected in outcome(FINETUNEJOB, {**stored, "status": status}, stored), status


@pytest.mark.parametrize("adapter", ["lora", "dora", "adalora", "ia3", "prefix", "bottleneck", "osf", "full"])
def test_every_adapters_resolved_plan_is_a_valid_status(adapter: str) -> None:
    """The training pod writes its plan into status.resolved; the CRD's status schema (generated from
    the same union) admits each adapter's block and keeps every field of it."""
    from tests.trainer.plans import tiny_plan

    plan = tiny_plan("full") if adapter == "full" else tiny_plan("lora", adapter=adapter)
    resolved = plan.to_manifest()
    stored, _ = create(FINETUNEJOB, _finetunejob())
    written, _ = update(FINETUNEJOB, {**stored, "status": {"resolved": resolved}}, stored, subresource="status")
    assert written["status"]["resolved"] == resolved


def test_validation_ratchets_values_left_unchanged() -> None:
    """An object stored under a laxer schema may still be updated, as long as the bad value is left alone."""
    stored, _ = create(FINETUNEJOB, _finetunejob())
    stored["spec"]["backoffLimit"] = 99  # over the maximum of 20, as if the CRD had tightened since
    relabelled = _changed(stored, lambda j: j["metadata"].update(labels={"team": "ml"}))
    assert update(FINETUNEJOB, relabelled, stored)
    status = {**stored, "status": {"phase": "Running"}}
    assert update(FINETUNEJOB, status, stored, subresource="status")
    worse = _changed(stored, lambda j: j["spec"].update(backoffLimit=98))
    assert ("spec.backoffLimit", "FieldValueInvalid") in outcome(FINETUNEJOB, worse, stored)


def test_a_custom_resource_without_a_known_schema_keeps_everything() -> None:
    workload = ResourceType(
        "kueue.x-k8s.io",
        "v1beta1",
        "workloads",
        "Workload",
        True,
        frozenset({"status"}),
        crd_name="workloads.kueue.x-k8s.io",
    )
    obj = {"metadata": {"name": "job-ftj-1"}, "spec": {"podSets": [{"count": 1, "anything": {"goes": True}}]}}
    stored, warnings = create(workload, obj)
    assert stored["spec"] == obj["spec"] and warnings == []
    assert causes(refusal(create, workload, {"metadata": {"name": "W"}, "spec": {}})) == [
        ("metadata.name", "FieldValueInvalid")
    ]


# ============================================================= custom resource schema features
_WIDGET_SCHEMA: Obj = {
    "type": "object",
    "properties": {
        "apiVersion": {"type": "string"},
        "kind": {"type": "string"},
        "metadata": {"type": "object"},
        "spec": {
            "type": "object",
            "required": ["replicas"],
            "properties": {
                "replicas": {"x-kubernetes-int-or-string": True},
                "name": {"type": "string", "maxLength": 8, "pattern": "^[a-z]+$"},
                "note": {"type": "string", "nullable": True},
                "mode": {"type": "string", "default": "fast", "enum": ["fast", "slow"]},
                "at": {"type": "string", "format": "date-time"},
                "count": {"type": "integer", "maximum": 10},
                "share": {"type": "number", "minimum": 0, "maximum": 1, "exclusiveMaximum": True},
                "annotations": {"type": "object", "maxProperties": 2, "additionalProperties": {"type": "string"}},
                "big": {"type": "integer", "format": "int32"},
                "tags": {"type": "array", "maxItems": 3, "items": {"type": "string"}, "x-kubernetes-list-type": "set"},
                "ports": {
                    "type": "array",
                    "x-kubernetes-list-type": "map",
                    "x-kubernetes-list-map-keys": ["name"],
                    "items": {
                        "type": "object",
                        "required": ["name"],
                        "properties": {"name": {"type": "string"}, "port": {"type": "integer", "default": 80}},
                        "x-kubernetes-validations": [
                            {"rule": "self.port == oldSelf.port", "message": "port is immutable"}
                        ],
                    },
                },
                "limits": {
                    "type": "object",
                    "additionalProperties": {
                        "type": "object",
                        "properties": {"max": {"type": "integer", "default": 1}},
                    },
                },
                "extra": {"type": "object", "x-kubernetes-preserve-unknown-fields": True},
                "template": {
                    "type": "object",
                    "x-kubernetes-embedded-resource": True,
                    "x-kubernetes-preserve-unknown-fields": True,
                },
                "low": {"type": "integer"},
                "high": {"type": "integer"},
                "owner": {"type": "string"},
                "ratio": {
                    "type": "object",
                    "properties": {"num": {"type": "integer"}, "den": {"type": "integer"}},
                    "x-kubernetes-validations": [{"rule": "self.num / self.den >= 0", "message": "bad ratio"}],
                },
            },
            "x-kubernetes-validations": [
                {
                    "rule": "!has(self.low) || !has(self.high) || self.low <= self.high",
                    "messageExpression": "'low ' + string(self.low) + ' exceeds high ' + string(self.high)",
                    "fieldPath": ".low",
                },
                {
                    "rule": "!has(self.owner) || self.owner != 'root'",
                    "message": "root may not own a widget",
                    "reason": "FieldValueForbidden",
                },
                {
                    "rule": "!has(self.owner) || self.owner != 'nobody'",
                    "messageExpression": "'owner ' + self.missing",
                    "message": "nobody may not own a widget",
                },
                {
                    "rule": "!oldSelf.hasValue() || self.replicas == oldSelf.value().replicas",
                    "optionalOldSelf": True,
                    "message": "replicas are fixed",
                },
            ],
        },
    },
}
WIDGET = ResourceType(
    "example.dev",
    "v1",
    "widgets",
    "Widget",
    True,
    frozenset({"status"}),
    schema=_WIDGET_SCHEMA,
    crd_name="widgets.example.dev",
)


def _widget(**spec: Any) -> Obj:
    return {"metadata": {"name": "w"}, "spec": {"replicas": 1, **spec}}


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ({"replicas": "50%"}, None),  # int-or-string
        ({"replicas": True}, ("spec.replicas", "FieldValueTypeInvalid")),
        ({"replicas": None}, ("spec.replicas", "FieldValueRequired")),  # a null without default is dropped
        ({"name": "abcdefgh"}, None),
        ({"name": "abcdefghi"}, ("spec.name", "FieldValueTooLong")),
        ({"name": "ABC"}, ("spec.name", "FieldValueInvalid")),
        ({"note": None}, None),  # nullable
        ({"at": "2025-01-01T00:00:00Z"}, None),
        ({"at": "soon"}, ("spec.at", "FieldValueTypeInvalid")),
        ({"count": 11}, ("spec.count", "FieldValueInvalid")),
        ({"share": 0.5}, None),
        ({"share": 1}, ("spec.share", "FieldValueInvalid")),
        ({"mode": "medium"}, ("spec.mode", "FieldValueNotSupported")),
        ({"annotations": {"a": "1", "b": "2", "c": "3"}}, ("spec.annotations", "FieldValueTooMany")),
        ({"big": 3_000_000_000}, None),  # int32 is not among the formats the server checks
        ({"tags": ["a", "b", "a"]}, ("spec.tags[2]", "FieldValueDuplicate")),
        ({"tags": ["a", "b", "c", "d"]}, ("spec.tags", "FieldValueTooMany")),
        ({"ports": [{"name": "http"}, {"name": "http", "port": 81}]}, ("spec.ports[1]", "FieldValueDuplicate")),
        ({"ports": [{"port": 81}]}, ("spec.ports[0].name", "FieldValueRequired")),
        ({"template": {"apiVersion": "v1", "kind": "Pod", "spec": {}}}, None),
        ({"template": {"apiVersion": "v1"}}, ("spec.template.kind", "FieldValueRequired")),
        ({"low": 1, "high": 2}, None),
        ({"low": 3, "high": 2}, ("spec.low", "FieldValueInvalid")),
        ({"owner": "root"}, ("spec", "FieldValueForbidden")),
        ({"ratio": {"num": 1, "den": 0}}, ("spec.ratio", "FieldValueInvalid")),
    ],
)
def test_custom_resource_schema_features(spec: Obj, expected: Cause) -> None:
    assert_outcome(WIDGET, _widget(**copy.deepcopy(spec)), expected)


def test_custom_resource_rule_messages() -> None:
    assert refusal(create, WIDGET, _widget(low=3, high=2)).message == (
        'Widget.example.dev "w" is invalid: spec.low: Invalid value: "object": low 3 exceeds high 2'
    )
    assert refusal(create, WIDGET, _widget(owner="root")).message == (
        'Widget.example.dev "w" is invalid: spec: Forbidden: root may not own a widget'
    )
    assert refusal(create, WIDGET, _widget(owner="nobody")).message.endswith(
        'spec: Invalid value: "object": nobody may not own a widget'
    ), "a messageExpression that fails gives way to the message"
    assert refusal(create, WIDGET, _widget(share=1)).message.endswith(
        "spec.share: Invalid value: 1: spec.share in body should be less than 1"
    )
    assert refusal(create, WIDGET, _widget(ratio={"num": 1, "den": 0})).message == (
        'Widget.example.dev "w" is invalid: spec.ratio: Invalid value: "object": division by zero evaluating rule: bad ratio'
    )
    assert refusal(create, WIDGET, _widget(name="abcdefghi")).message == (
        'Widget.example.dev "w" is invalid: [spec.name: Too long: may not be longer than 8, <nil>: Invalid value: '
        '"null": some validation rules were not checked because the object was invalid; correct the existing errors '
        "to complete validation]"
    )


def test_custom_resource_defaults_reach_into_maps_and_lists() -> None:
    stored, _ = create(WIDGET, _widget(ports=[{"name": "http"}], limits={"gpu": {}}, mode=None))
    assert stored["spec"]["mode"] == "fast", "a null where the schema has a default takes the default"
    assert stored["spec"]["ports"] == [{"name": "http", "port": 80}]
    assert stored["spec"]["limits"] == {"gpu": {"max": 1}}


def test_preserved_and_embedded_fields_survive_pruning() -> None:
    template = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p", "bogus": 1}, "spec": {"x": 1}}
    stored, warnings = create(WIDGET, _widget(extra={"any": {"thing": 1}}, template=template))
    assert stored["spec"]["extra"] == {"any": {"thing": 1}}
    assert stored["spec"]["template"] == {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "p"},
        "spec": {"x": 1},
    }
    assert warnings == ['unknown field "spec.template.metadata.bogus"']


def test_transition_rules_correlate_map_list_items_by_key() -> None:
    stored, _ = create(WIDGET, _widget(ports=[{"name": "http", "port": 80}, {"name": "grpc", "port": 90}]))
    reordered = _changed(stored, lambda w: w["spec"]["ports"].reverse())
    assert update(WIDGET, reordered, stored)
    changed = _changed(stored, lambda w: w["spec"]["ports"][1].update(port=91))
    assert causes(refusal(update, WIDGET, changed, stored)) == [("spec.ports[1]", "FieldValueInvalid")]
    added = _changed(stored, lambda w: w["spec"]["ports"].append({"name": "new", "port": 1}))
    assert update(WIDGET, added, stored), "a new item has no old value: its transition rule is not evaluated"


def test_optional_old_self_rules_run_on_create_and_update() -> None:
    stored, _ = create(WIDGET, _widget(replicas=2))
    changed = _changed(stored, lambda w: w["spec"].update(replicas=3))
    assert causes(refusal(update, WIDGET, changed, stored)) == [("spec", "FieldValueInvalid")]


def test_failing_rules_on_unchanged_values_are_ratcheted_to_warnings() -> None:
    stored, _ = create(WIDGET, _widget())
    stored["spec"]["owner"] = "root"  # stored before the rule existed
    _, warnings = update(WIDGET, _changed(stored, lambda w: w["metadata"].update(labels={"a": "b"})), stored)
    assert warnings == ["spec: Forbidden: root may not own a widget"]


def test_a_kept_outcome_answers_only_the_same_schema_value_and_old_value() -> None:
    stored, _ = create(WIDGET, _widget())
    stored["spec"]["owner"] = "root"  # stored before the rule existed
    relabelled = _changed(stored, lambda w: w["metadata"].update(labels={"a": "b"}))
    expected = ["spec: Forbidden: root may not own a widget"]
    assert update(WIDGET, relabelled, stored)[1] == expected
    assert update(WIDGET, relabelled, stored)[1] == expected, "the same write, the same verdict again"
    assert causes(refusal(update, WIDGET, _changed(relabelled, lambda w: w["spec"].update(owner="nobody")), stored))

    schema = copy.deepcopy(_WIDGET_SCHEMA)  # the CRD updated: the rule's message is another
    (root_rule,) = [r for r in schema["properties"]["spec"]["x-kubernetes-validations"] if "root" in r["rule"]]
    root_rule["message"] = "root owns nothing"
    updated = dataclasses.replace(WIDGET, schema=schema)
    assert update(updated, relabelled, stored)[1] == ["spec: Forbidden: root owns nothing"]


@pytest.mark.parametrize(
    ("rule", "paths"),
    [
        ("self.a.b > 0 && has(self.c)", (("a", "b"), ("c",))),
        ("self.items.all(x, x > 0) && self.items[0] == 1", (("items",),)),
        ("self.name.startsWith('x') || self.tags.exists(t, t == 'y')", (("name",), ("tags",))),
        ("self.all(k, k != '')", None),  # a macro on self: all of it
        ("self == oldSelf", None),
        ("size(self) < 3", None),
        ("'self' != self.kind", None),  # self in a string literal: the rule is kept by all of self
    ],
)
def test_rules_are_kept_by_the_fields_of_self_they_read(rule: str, paths: object) -> None:
    assert custom.paths_read_from_self(rule) == paths


def test_a_rule_kept_by_its_fields_answers_objects_that_differ_elsewhere() -> None:
    assert create(WIDGET, _widget(low=1, high=2, name="a"))
    assert create(WIDGET, _widget(low=1, high=2, name="b")), "the same fields read, another object"
    assert causes(refusal(create, WIDGET, _widget(low=3, high=2, name="a"))) == [("spec.low", "FieldValueInvalid")]
    assert create(WIDGET, _widget(low=3, name="a")), "a field now absent is not answered by a kept outcome"
    assert causes(refusal(create, WIDGET, _widget(low=3, high=2, name="b", owner="root"))) == [
        ("spec.low", "FieldValueInvalid"),
        ("spec", "FieldValueForbidden"),
    ]


# ================================================================================== NetworkPolicy
NETWORK_POLICY = _builtin("networking.k8s.io", "networkpolicies", "NetworkPolicy")
_TO = "spec.egress[0].to[0]"


def _egress(*peers: Obj, ports: list[Obj] | None = None, **spec: Any) -> Obj:
    rule: Obj = {"to": list(peers)} if peers else {}
    if ports is not None:
        rule["ports"] = ports
    selector = {"matchLabels": {"kubetune.dev/job": "tickets"}}
    return named("tickets-egress", spec={"podSelector": selector, "policyTypes": ["Egress"], "egress": [rule], **spec})


def _block(cidr: str, *excepted: str) -> Obj:
    return {"ipBlock": {"cidr": cidr, "except": list(excepted)} if excepted else {"cidr": cidr}}


_DNS = {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "kube-system"}}, "podSelector": {}}
_HTTPS = [{"protocol": "TCP", "port": 443}]


@pytest.mark.parametrize(
    ("policy", "expected"),
    [
        (_egress(_block("0.0.0.0/0", "169.254.0.0/16"), _block("::/0", "fe80::/10"), ports=_HTTPS), None),
        (_egress(_block("10.0.0.1/8")), None),  # host bits set: accepted, as ParseCIDRSloppy reads it
        (_egress(_block("010.0.0.0/8")), None),  # leading zeros too
        (_egress(_DNS, ports=[{"protocol": "UDP", "port": 53}, {"protocol": "TCP", "port": "dns-tcp"}]), None),
        (_egress(ports=[{"port": 8000, "endPort": 9000}]), None),  # no peers: anywhere, those ports
        (_egress(_block("10.0.0.0/33")), (f"{_TO}.ipBlock.cidr", "FieldValueInvalid")),
        (_egress(_block("169.254.169.254")), (f"{_TO}.ipBlock.cidr", "FieldValueInvalid")),  # no prefix length
        (_egress({"ipBlock": {"cidr": ""}}), (f"{_TO}.ipBlock.cidr", "FieldValueRequired")),
        (_egress(_block("10.0.0.0/8", "169.254.0.0/16")), (f"{_TO}.ipBlock.except[0]", "FieldValueInvalid")),
        (_egress(_block("10.0.0.0/8", "10.0.0.0/8")), (f"{_TO}.ipBlock.except[0]", "FieldValueInvalid")),  # not strict
        (_egress(_block("0.0.0.0/0", "fe80::/10")), (f"{_TO}.ipBlock.except[0]", "FieldValueInvalid")),
        (_egress(_block("0.0.0.0/0", "10.0.0.0/8", "x")), (f"{_TO}.ipBlock.except[1]", "FieldValueInvalid")),
        (_egress({}), (_TO, "FieldValueRequired")),
        (_egress({**_block("0.0.0.0/0"), "podSelector": {}}), (_TO, "FieldValueForbidden")),
        (
            _egress({"podSelector": {"matchLabels": {"k8s-app": "kube dns"}}}),
            (f"{_TO}.podSelector.matchLabels", "FieldValueInvalid"),
        ),
        (
            _egress(ports=[{"protocol": "ICMP", "port": 1}]),
            ("spec.egress[0].ports[0].protocol", "FieldValueNotSupported"),
        ),
        (_egress(ports=[{"port": 70000}]), ("spec.egress[0].ports[0].port", "FieldValueInvalid")),
        (_egress(ports=[{"port": 9000, "endPort": 8000}]), ("spec.egress[0].ports[0].endPort", "FieldValueInvalid")),
        (_egress(ports=[{"port": "https", "endPort": 500}]), ("spec.egress[0].ports[0].endPort", "FieldValueInvalid")),
        (_egress(ports=[{"port": "HTTPS"}]), ("spec.egress[0].ports[0].port", "FieldValueInvalid")),
        (_egress(ports=[{"endPort": 500}]), ("spec.egress[0].ports[0].endPort", "FieldValueInvalid")),
        (_egress(policyTypes=["Outbound"]), ("spec.policyTypes[0]", "FieldValueNotSupported")),
        (_egress(policyTypes=["Ingress", "Egress", "Egress"]), ("spec.policyTypes", "FieldValueInvalid")),
        (named("Tickets", spec={"podSelector": {}}), ("metadata.name", "FieldValueInvalid")),
    ],
)
def test_network_policy_rules(policy: Obj, expected: Cause) -> None:
    assert_outcome(NETWORK_POLICY, policy, expected)


def test_a_network_policy_is_refused_as_the_server_words_it() -> None:
    error = refusal(create, NETWORK_POLICY, _egress(_block("10.0.0.0/8", "169.254.0.0/16")))
    assert error.message == (
        'NetworkPolicy.networking.k8s.io "tickets-egress" is invalid: spec.egress[0].to[0].ipBlock.except[0]: '
        'Invalid value: "169.254.0.0/16": must be a strict subset of `cidr`'
    )


def test_a_network_policy_gets_its_defaults_and_may_change() -> None:
    stored, _ = create(NETWORK_POLICY, named("p", spec={"egress": [{"ports": [{"port": 443}]}]}))
    assert stored["spec"] == {
        "podSelector": {},
        "egress": [{"ports": [{"protocol": "TCP", "port": 443}]}],
        "policyTypes": ["Ingress", "Egress"],
    }
    assert create(NETWORK_POLICY, named("q", spec={}))[0]["spec"] == {"podSelector": {}, "policyTypes": ["Ingress"]}
    widened = copy.deepcopy(stored)
    widened["spec"]["egress"] = [{}]
    assert update(NETWORK_POLICY, widened, stored)[0]["spec"]["egress"] == [{}]
    broken = copy.deepcopy(stored)
    broken["spec"]["egress"] = [{"to": [_block("10.0.0.0/8", "11.0.0.0/8")]}]
    assert causes(refusal(update, NETWORK_POLICY, broken, stored)) == [
        (f"{_TO}.ipBlock.except[0]", "FieldValueInvalid")
    ]


# ======================================================================================= helpers
def _minimal(rtype: ResourceType) -> Obj:
    """A valid object of the kind, but for its metadata."""
    if rtype is JOB:
        return _job()
    if rtype is PVC:
        return {"spec": copy.deepcopy(_CLAIM)}
    if rtype is EVENT:
        return _event()
    if rtype is FINETUNEJOB:
        return _finetunejob()
    if rtype is SERVICE:
        return {"spec": {"selector": {"app": "trainer"}, "ports": [{"port": 9090}]}}
    return {}


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ({"clusterIP": "None", "selector": {"job": "a"}}, None),  # headless: DNS records only, no port needed
        ({"selector": {"job": "a"}}, ("spec.ports", "FieldValueRequired")),
        ({"ports": [{"port": 0}]}, ("spec.ports[0].port", "FieldValueInvalid")),
        ({"ports": [{"port": 1}, {"port": 2}]}, ("spec.ports[0].name", "FieldValueRequired")),
        (
            {"ports": [{"name": "a", "port": 1}, {"name": "a", "port": 2}]},
            ("spec.ports[1].name", "FieldValueDuplicate"),
        ),
        ({"ports": [{"port": 1, "protocol": "HTTP"}]}, ("spec.ports[0].protocol", "FieldValueNotSupported")),
        ({"ports": [{"port": 1, "targetPort": 70000}]}, ("spec.ports[0].targetPort", "FieldValueInvalid")),
        ({"clusterIP": "None", "selector": {"bad key!": "a"}}, ("spec.selector", "FieldValueInvalid")),
        ({"type": "Headless", "clusterIP": "None"}, ("spec.type", "FieldValueNotSupported")),
    ],
)
def test_services_are_validated_as_validate_service_does(spec: Obj, expected: Cause) -> None:
    assert_outcome(SERVICE, named("ranks", spec=spec), expected)


def test_a_services_ports_are_defaulted_as_kube_apiserver_does() -> None:
    created, _ = create(SERVICE, named("ranks", spec={"clusterIP": "None", "ports": [{"port": 29400}]}))
    (port,) = created["spec"]["ports"]
    assert (port["protocol"], port["targetPort"], created["spec"]["type"]) == ("TCP", 29400, "ClusterIP")


def test_admit_returns_a_new_object_and_leaves_the_callers_alone() -> None:
    for rtype, obj in ((JOB, _job()), (FINETUNEJOB, _finetunejob()), (SECRET, named("s", stringData={"a": "b"}))):
        sent = stamped(rtype, obj)
        before = copy.deepcopy(sent)
        admit(rtype, "CREATE", sent, None)
        assert sent == before, rtype.kind
