"""The chart's ValidatingAdmissionPolicies as `helm template` renders them, evaluated request by request
by the test API server's admission plugin (tests/kubeapi/admission.py, cel-python).

The same policies installed in the test API server and met by the running operator and a trainer's
own token: tests/operator/test_admission_policy.py. Schema validation of the rendered objects
(kubernetes-validate): tests/helm/test_manifests.py."""

from __future__ import annotations

import copy
from functools import cache
from typing import Any

import celpy
import pytest

from kubetune.api.driftmonitor import DriftMonitorSpec
from kubetune.api.v1alpha1 import GROUP, KIND, PLURAL, VERSION
from kubetune.operator import children, driftjobs
from kubetune.operator.config import OperatorConfig
from kubetune.operator.imagepolicy import ImagePolicy
from tests.builders import spec
from tests.helm.chart import RELEASE_NAMESPACE, Manifest, of_kind, render
from tests.kubeapi.admission import AdmissionPolicies
from tests.kubeapi.model import ApiError, ResourceType, UserInfo

POLICY_KINDS = ("ValidatingAdmissionPolicy", "ValidatingAdmissionPolicyBinding")
OPERATOR = UserInfo.service_account(RELEASE_NAMESPACE, "kt-kubetune")  # the chart's for release "kt"
TRAINER = UserInfo.service_account("ml", children.trainer_account_name("tickets"))
ADMIN = UserInfo.user("platform-admin", "system:masters")
JOBS = ResourceType("batch", "v1", "jobs", "Job", True, frozenset({"status"}))
FINETUNEJOBS = ResourceType(GROUP, VERSION, PLURAL, KIND, True, frozenset({"status"}), crd_name=f"{PLURAL}.{GROUP}")
NAMESPACES = ("default", "ml", "research", "shared", "kube-system", "kube-public", RELEASE_NAMESPACE)
DIGEST = "sha256:" + "a" * 64
TRAINER_IMAGE = "ghcr.io/kubetune/trainer:0.1.0"  # the chart's default trainerImage at its appVersion


@cache
def rendered_policies(sets: tuple[str, ...]) -> tuple[Manifest, ...]:
    return tuple(doc for doc in render(*sets) if doc["kind"] in POLICY_KINDS)


def admission(*sets: str) -> AdmissionPolicies:
    """The admission plugin holding what the chart rendered with ``sets`` (and the namespaces)."""
    objects = [*rendered_policies(sets)]
    objects += [{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}} for name in NAMESPACES]
    return AdmissionPolicies(lambda kind: [obj for obj in objects if obj["kind"] == kind])


def operator_job(image: str = TRAINER_IMAGE, namespace: str = "default") -> Manifest:
    """The pre-flight Job exactly as the operator builds it (in `default`, the namespace the defaults watch)."""
    owner = children.Owner("tickets", namespace, "6f1c2a9e-0000-4000-8000-000000000001")
    config = OperatorConfig.from_env({"KUBETUNE_TRAINER_IMAGE": image})
    return children.build_preflight_job(owner, spec(), config)


def create_job(policies: AdmissionPolicies, job: Manifest, user: UserInfo = OPERATOR) -> ApiError | None:
    meta = job["metadata"]
    error, _ = policies.validate(
        operation="CREATE", rtype=JOBS, obj=job, old=None, user=user, namespace=meta["namespace"], name=meta["name"]
    )
    return error


def finetunejob(status: dict[str, Any]) -> Manifest:
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": KIND,
        "metadata": {"name": "tickets", "namespace": "ml"},
        "spec": {"dataset": {"sources": [{"uri": "s3://data/x.jsonl"}]}},
        "status": status,
    }


def write_status(
    policies: AdmissionPolicies, old: dict[str, Any], new: dict[str, Any], user: UserInfo = TRAINER
) -> ApiError | None:
    error, _ = policies.validate(
        operation="UPDATE",
        rtype=FINETUNEJOBS,
        obj=finetunejob(new),
        old=finetunejob(old),
        user=user,
        namespace="ml",
        name="tickets",
        subresource="status",
    )
    return error


# ---------------------------------------------------------------------------------------------- rendering
def test_default_values_render_both_policies_each_bound_to_deny() -> None:
    docs = render()
    policies = {doc["metadata"]["name"]: doc for doc in of_kind(docs, "ValidatingAdmissionPolicy")}
    assert sorted(policies) == ["kt-kubetune-operator-jobs", "kt-kubetune-trainer-status"]
    bindings = of_kind(docs, "ValidatingAdmissionPolicyBinding")
    assert sorted((b["spec"]["policyName"], tuple(b["spec"]["validationActions"])) for b in bindings) == [
        (name, ("Deny",)) for name in sorted(policies)
    ]
    for policy in policies.values():
        assert policy["apiVersion"] == "admissionregistration.k8s.io/v1"
        assert policy["spec"]["failurePolicy"] == "Fail"
        conditions = " ".join(c["expression"] for c in policy["spec"]["matchConditions"])
        assert f"'{OPERATOR.name}'" in conditions, "scoped by the operator's own ServiceAccount name"
    assert rendered_policies(("admissionPolicy.enabled=false",)) == ()


@pytest.mark.parametrize(
    "sets",
    [
        (),
        ("watchNamespaces={ml,research}",),
        ("policy.allowedImages={ghcr.io/x/*,python}",),
        ("release.requireDigests=true", f"image.digest={DIGEST}", f"trainerImage.digest={DIGEST}"),
    ],
)
def test_every_cel_expression_compiles(sets: tuple[str, ...]) -> None:
    environment = celpy.Environment()
    expressions = []
    for policy in of_kind(render(*sets), "ValidatingAdmissionPolicy"):
        body = policy["spec"]
        expressions += [item["expression"] for item in body["matchConditions"] + body["variables"]]
        expressions += [v[key] for v in body["validations"] for key in ("expression", "messageExpression") if key in v]
    assert len(expressions) > 10
    for expression in expressions:
        environment.compile(expression)  # raises CELParseError


# ---------------------------------------------------------------------------------------------- operator Jobs
def test_the_operators_own_jobs_are_admitted() -> None:
    policies = admission()
    assert create_job(policies, operator_job()) is None
    training = children.build_training_job(
        children.Owner("tickets", "default", "6f1c2a9e-0000-4000-8000-000000000001"),
        spec(),
        OperatorConfig.from_env({"KUBETUNE_TRAINER_IMAGE": TRAINER_IMAGE}),
    )
    assert create_job(policies, training) is None


def drift_check_job() -> Manifest:
    """A DriftMonitor's check Job exactly as the operator builds it."""
    owner = children.Owner("tickets-prod", "default", "6f1c2a9e-0000-4000-8000-000000000002", "DriftMonitor")
    monitor = DriftMonitorSpec.model_validate(
        {"target": {"outputUri": "s3://models/t/", "channel": "prod"}, "samples": {"uri": "s3://logs/t/"}}
    )
    config = OperatorConfig.from_env({"KUBETUNE_TRAINER_IMAGE": TRAINER_IMAGE})
    return driftjobs.build_check_job(owner, monitor, config, sequence=1, after=None)


def test_a_drift_check_is_admitted_as_a_monitors_job_only() -> None:
    """A drift check carries the monitor's label and is controlled by its DriftMonitor; a Job that claims
    the drift-check component under a FineTuneJob, or without its monitor, is refused."""
    policies = admission()
    assert create_job(policies, drift_check_job()) is None
    disguised = drift_check_job()
    disguised["metadata"]["ownerReferences"][0]["kind"] = "FineTuneJob"
    error = create_job(policies, disguised)
    assert error is not None and "or for a drift check or comparison by a DriftMonitor" in error.message
    unlabelled = drift_check_job()
    for labels in (unlabelled["metadata"]["labels"], unlabelled["spec"]["template"]["metadata"]["labels"]):
        labels.pop("kubetune.dev/drift-monitor")
        labels["kubetune.dev/job"] = "tickets-prod"
    error = create_job(policies, unlabelled)
    assert error is not None and LABELS in error.message


def _without_labels(job: Manifest) -> None:
    job["metadata"]["labels"] = {}
    job["spec"]["template"]["metadata"]["labels"] = {}


def _pod_labels_of_another_job(job: Manifest) -> None:
    job["spec"]["template"]["metadata"]["labels"]["kubetune.dev/job"] = "other"


def _foreign_image(job: Manifest) -> None:
    job["spec"]["template"]["spec"]["containers"][0]["image"] = "docker.io/evil/miner:latest"


def _foreign_init_container(job: Manifest) -> None:
    job["spec"]["template"]["spec"]["initContainers"] = [{"name": "setup", "image": "busybox"}]


def _no_owner(job: Manifest) -> None:
    job["metadata"].pop("ownerReferences")


def _in(namespace: str) -> Any:
    def move(job: Manifest) -> None:
        job["metadata"]["namespace"] = namespace

    return move


LABELS = "carries kubetune's labels"
IMAGE = "is not in the platform's allowed images"
WHERE = "runs no Job in its own namespace (kubetune-system) or a kube-* namespace"


@pytest.mark.parametrize(
    ("change", "refusal"),
    [
        (_without_labels, LABELS),
        (_pod_labels_of_another_job, LABELS),
        (_foreign_image, "image docker.io/evil/miner:latest " + IMAGE),
        (_foreign_init_container, "image busybox " + IMAGE),
        (_no_owner, "is controlled by a FineTuneJob"),
        (_in("kube-system"), WHERE),
        (_in("kube-public"), WHERE),
        (_in(RELEASE_NAMESPACE), WHERE),
    ],
    ids=["no labels", "pod labels", "image", "init container", "no owner", "kube-system", "kube-public", "own ns"],
)
def test_the_operator_identity_is_refused_a_job_outside_the_guardrails(change: Any, refusal: str) -> None:
    job = operator_job()
    change(job)
    error = create_job(admission(), job)
    assert error is not None
    assert (error.code, error.reason) == (403, "Forbidden")
    assert (
        "ValidatingAdmissionPolicy 'kt-kubetune-operator-jobs' with binding 'kt-kubetune-operator-jobs'"
        in error.message
    )
    assert refusal in error.message
    # Only the operator is held to it: the same Job from anyone else is none of this policy's business.
    assert create_job(admission(), job, user=ADMIN) is None
    assert create_job(admission("admissionPolicy.enabled=false"), job) is None


def test_updates_are_held_to_the_same_rules() -> None:
    policies, job = admission(), operator_job()
    changed = copy.deepcopy(job)
    _without_labels(changed)
    meta = job["metadata"]
    refused, _ = policies.validate(
        operation="UPDATE", rtype=JOBS, obj=changed, old=job, user=OPERATOR, namespace="default", name=meta["name"]
    )
    assert refused is not None and LABELS in refused.message
    allowed, _ = policies.validate(
        operation="UPDATE", rtype=JOBS, obj=job, old=job, user=OPERATOR, namespace="default", name=meta["name"]
    )
    assert allowed is None


def test_with_watch_namespaces_jobs_stay_in_them() -> None:
    policies = admission("watchNamespaces={ml,research}")
    assert create_job(policies, operator_job(namespace="research")) is None
    error = create_job(policies, operator_job(namespace="shared"))
    assert error is not None
    assert "runs Jobs only in the namespaces it watches (ml, research)" in error.message
    assert "watches (default)" in str(create_job(admission(), operator_job(namespace="shared"))), "the defaults"
    clusterwide = admission("clusterWide=true", "watchNamespaces=null")
    assert create_job(clusterwide, operator_job(namespace="shared")) is None


# Allow-lists, and images written every way, including look-alike hosts and repository prefixes: the
# policy's patterns must admit exactly what the operator's parsed-reference matching admits.
ALLOW_LISTS = [
    [
        "ghcr.io/kubetune/trainer",
        "registry.example.com:5000/ml/*",
        "nvcr.io/nvidia/pytorch:24.01-py3",
        f"quay.io/x/y@{DIGEST}",
    ],
    ["python"],
    ["docker.io/library/*"],
    ["kubetune/trainer"],
    ["docker.io/kubetune/*"],
    ["index.docker.io/library/python:3.12"],
    ["localhost:5000/a/b"],
    ["trainer:test"],
    ["GHCR.io/kubetune/trainer"],
    [],  # the trainer image alone
]
IMAGES = [
    "ghcr.io/kubetune/trainer:0.2.0",
    "ghcr.io/kubetune/trainer",
    f"ghcr.io/kubetune/trainer@{DIGEST}",
    "GHCR.IO/kubetune/trainer:1",
    "ghcr.io/kubetune/trainer-evil:1",
    "ghcr.io/kubetune/trainer/sub:1",
    "ghcr.io.evil.example/kubetune/trainer:1",
    "evil.example/ghcr.io/kubetune/trainer:1",
    "ghcr.io:443/kubetune/trainer:1",
    TRAINER_IMAGE,
    "ghcr.io/kubetune/trainer:0.1.0-evil",
    "registry.example.com:5000/ml/team-a/trainer:3",
    "registry.example.com:5000/ml2/trainer:3",
    "registry.example.com:5000/ml:3",
    "registry.example.com/ml/trainer:3",
    "nvcr.io/nvidia/pytorch:24.01-py3",
    "nvcr.io/nvidia/pytorch:24.02-py3",
    f"nvcr.io/nvidia/pytorch:24.01-py3@{DIGEST}",
    f"quay.io/x/y@{DIGEST}",
    f"quay.io/x/y:1@{DIGEST}",
    "quay.io/x/y:latest",
    "trainer",
    "trainer:test",
    "trainer:test2",
    f"trainer:test@{DIGEST}",
    "docker.io/library/trainer:test",
    "kubetune/trainer:1",
    "kubetune/trainer/x:1",
    "docker.io/kubetune/sub/y:2",
    "python",
    "python:3.12",
    "pythonx",
    "python/x",
    "library/python:3",
    "docker.io/python",
    "docker.io/library/python:3.12",
    "index.docker.io/library/python:3.12",
    "registry-1.docker.io/python",
    "localhost:5000/a/b:1",
    "localhost/a/b",
]


@pytest.mark.parametrize("allowed", ALLOW_LISTS, ids=lambda entries: ",".join(entries) or "default")
def test_image_patterns_admit_exactly_what_the_operators_allow_list_admits(allowed: list[str]) -> None:
    sets = (f"policy.allowedImages={{{','.join(allowed)}}}",) if allowed else ()
    policies = admission(*sets)
    operator_policy = ImagePolicy.parse(allowed or [TRAINER_IMAGE])
    disagreements = []
    for image in IMAGES:
        error = create_job(policies, operator_job(image))
        assert error is None or IMAGE in error.message, error.message
        if (error is None) != (operator_policy.refusal(image) is None):
            disagreements.append(f"{image}: policy {'admits' if error is None else 'refuses'}")
    assert disagreements == []


def test_a_trainer_image_pinned_by_digest_is_admitted_by_that_digest_alone() -> None:
    policies = admission(f"trainerImage.digest={DIGEST}")
    assert create_job(policies, operator_job(f"{TRAINER_IMAGE}@{DIGEST}")) is None
    assert create_job(policies, operator_job(f"ghcr.io/kubetune/trainer@{DIGEST}")) is None
    for image in (TRAINER_IMAGE, f"ghcr.io/kubetune/trainer:0.1.0@sha256:{'b' * 64}"):
        error = create_job(policies, operator_job(image))
        assert error is not None and IMAGE in error.message


def test_the_release_profile_admits_images_by_digest_only() -> None:
    policies = admission(
        "release.requireDigests=true",
        f"image.digest={DIGEST}",
        f"trainerImage.digest={DIGEST}",
        "policy.allowedImages={ghcr.io/kubetune/trainer}",
    )
    assert create_job(policies, operator_job(f"{TRAINER_IMAGE}@{DIGEST}")) is None
    error = create_job(policies, operator_job(TRAINER_IMAGE))
    assert error is not None and f"image {TRAINER_IMAGE} names no digest" in error.message
    assert create_job(admission("policy.allowedImages={ghcr.io/kubetune/trainer}"), operator_job(TRAINER_IMAGE)) is None


# ---------------------------------------------------------------------------------------------- trainer status
RUNNING = {
    "phase": "Running",
    "conditions": [{"type": "Running", "status": "True", "reason": "Training"}],
    "jobName": "tickets-train",
    "progress": {"step": 3, "totalSteps": 9},
}


@pytest.mark.parametrize(
    "change",
    [
        {"progress": {"step": 4, "totalSteps": 9}},
        {"preflight": {"passed": True, "message": "fits"}},
        {"resolved": {"method": "lora"}},
        {"result": {"version": "v1", "promoted": True}},
        {},
    ],
    ids=["progress", "preflight", "resolved", "result", "nothing"],
)
def test_a_trainer_may_change_its_part_of_the_status(change: dict[str, Any]) -> None:
    assert write_status(admission(), RUNNING, {**RUNNING, **change}) is None


@pytest.mark.parametrize(
    ("new", "key"),
    [
        ({**RUNNING, "phase": "Succeeded"}, "phase"),
        ({**RUNNING, "conditions": [{"type": "Succeeded", "status": "True", "reason": "Done"}]}, "conditions"),
        ({**RUNNING, "promoted": True}, "promoted"),
        ({**RUNNING, "jobName": "elsewhere"}, "jobName"),
        ({k: v for k, v in RUNNING.items() if k != "phase"}, "phase"),
        ({**RUNNING, "phaseHistory": [{"id": 9, "phase": "Succeeded", "reason": "x", "time": "T"}]}, "phaseHistory"),
    ],
    ids=["phase", "conditions", "promoted", "jobName", "phase removed", "phaseHistory"],
)
def test_a_trainer_is_refused_the_operators_part_of_the_status(new: dict[str, Any], key: str) -> None:
    error = write_status(admission(), RUNNING, new)
    assert error is not None
    assert (error.code, error.reason) == (403, "Forbidden")
    assert "ValidatingAdmissionPolicy 'kt-kubetune-trainer-status'" in error.message
    assert (
        f"a trainer may change only status.progress, status.preflight, status.resolved and status.result, not status.{key} (the kubetune operator's)"
        in error.message
    )
    # Any other ServiceAccount is held to it too; the operator and people (a cluster admin) are not.
    other = UserInfo.service_account("ml", "deployer")
    assert write_status(admission(), RUNNING, new, user=other) is not None
    assert write_status(admission(), RUNNING, new, user=OPERATOR) is None
    assert write_status(admission(), RUNNING, new, user=ADMIN) is None
    assert write_status(admission("admissionPolicy.enabled=false"), RUNNING, new) is None


def test_the_first_status_write_may_add_the_trainers_part_only() -> None:
    assert write_status(admission(), {}, {"progress": {"step": 1}}) is None
    error = write_status(admission(), {}, {"progress": {"step": 1}, "phase": "Succeeded"})
    assert error is not None and "not status.phase" in error.message
