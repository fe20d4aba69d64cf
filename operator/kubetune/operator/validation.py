"""Checks the CRD schema cannot make: that what the spec references exists, fits, and is something
the platform team lets FineTuneJobs use.

Each problem names the exact field, e.g. ``spec.s3.credentialsSecret.name: Secret 'x' not
found in namespace 'ns'``, so a user can fix the manifest without reading operator logs.
A missing Secret is caught here, never left as a pod in CreateContainerConfigError. Secrets are
read as metadata only (``Kube.read``): their keys are checked by the trainer, which is the only
one to see them (mounted as files; a missing or empty key fails the pre-flight at the field).

A pod created by the operator runs under the operator's identity as far as admission is concerned,
so what a tenant could not do in its own pod it must not do through a FineTuneJob: a
ServiceAccount or Secret of the namespace is usable only once someone allowed to label it (a
namespace admin) opted it in, and the operator's own namespace and the system namespaces take no
FineTuneJobs at all (so the operator's own ServiceAccount can never be named).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from kubetune.api.driftmonitor import DriftMonitorSpec
from kubetune.api.manifest import ManifestError, parse_monitor_spec, parse_spec
from kubetune.api.v1alpha1 import AzureSpec, FineTuneJobSpec, GcsSpec, HubSpec, S3Spec
from kubetune.operator.config import OperatorConfig

Reader = Callable[[str, str, str], dict[str, Any] | None]  # (kind, namespace, name) -> object or None

# Opt-in labels (value "true") a namespace admin puts on what FineTuneJobs of the namespace may use.
TRAINER_IDENTITY_LABEL = "kubetune.dev/trainer-identity"  # a ServiceAccount to run trainer pods as
S3_CREDENTIALS_LABEL = "kubetune.dev/s3-credentials"  # a Secret to mount as S3 credentials
HUB_TOKEN_LABEL = "kubetune.dev/hub-token"  # a Secret to mount as a job's Hugging Face Hub token
GCS_CREDENTIALS_LABEL = "kubetune.dev/gcs-credentials"  # a Secret to mount as a Cloud Storage service-account key
AZURE_CREDENTIALS_LABEL = "kubetune.dev/azure-credentials"  # a Secret to mount as an Azure storage account key
WANDB_CREDENTIALS_LABEL = "kubetune.dev/wandb-credentials"  # a Secret to mount as a job's W&B API key
OCI_CREDENTIALS_LABEL = "kubetune.dev/oci-credentials"  # a Secret to mount as a registry login (dockerconfigjson)
MLFLOW_CREDENTIALS_LABEL = "kubetune.dev/mlflow-credentials"  # a Secret to mount as a job's MLflow login
WEBHOOK_LABEL = "kubetune.dev/webhook"  # a Secret whose URL and key the operator may send notifications with
SYSTEM_NAMESPACE_PREFIX = "kube-"  # kube-system, kube-public, kube-node-lease and any future one


@dataclass(frozen=True)
class SpecProblem:
    reason: str  # CamelCase, for the condition's reason
    message: str


Parsed = TypeVar("Parsed", FineTuneJobSpec, DriftMonitorSpec)


def _parsed(parser: Callable[[Any], Parsed], spec: dict[str, Any]) -> Parsed | SpecProblem:
    try:
        return parser(spec)
    except ManifestError as err:
        details = "; ".join(f"{path}: {message}" for path, message in err.problems)
        return SpecProblem("InvalidSpec", details)


def parse(spec: dict[str, Any]) -> FineTuneJobSpec | SpecProblem:
    return _parsed(parse_spec, spec)


def parse_monitor(spec: dict[str, Any]) -> DriftMonitorSpec | SpecProblem:
    return _parsed(parse_monitor_spec, spec)


def namespace_problem(namespace: str, config: OperatorConfig, kinds: str = "FineTuneJobs") -> SpecProblem | None:
    if namespace.startswith(SYSTEM_NAMESPACE_PREFIX) or namespace == config.operator_namespace:
        whose = "the operator's own" if namespace == config.operator_namespace else "a system"
        return SpecProblem(
            "NamespaceNotAllowed",
            f"metadata.namespace: '{namespace}' is {whose} namespace; {kinds} run in tenant namespaces only",
        )
    return None


def check_policy(spec: FineTuneJobSpec, namespace: str, config: OperatorConfig) -> SpecProblem | None:
    """What the platform team's policy refuses from the manifest alone, before any pod exists."""
    if (problem := namespace_problem(namespace, config)) is not None:
        return problem
    if spec.image is not None and (why := config.image_policy.refusal(spec.image)) is not None:
        return SpecProblem("ImageNotAllowed", f"spec.image: {why}")
    if config.max_gpus_per_job is not None and spec.resources.total_gpus > config.max_gpus_per_job:
        res = spec.resources
        requested = f"{res.gpus}" if res.nodes == 1 else f"{res.nodes} nodes x {res.gpus} GPUs = {res.total_gpus}"
        field = "spec.resources.gpus" if res.nodes == 1 else "spec.resources.nodes"
        return SpecProblem(
            "GpuQuotaExceeded",
            f"{field}: {requested} is more GPUs than the platform allows one job ({config.max_gpus_per_job})",
        )
    if config.max_nodes_per_job is not None and spec.resources.nodes > config.max_nodes_per_job:
        return SpecProblem(
            "NodeQuotaExceeded",
            f"spec.resources.nodes: {spec.resources.nodes} is more nodes than the platform allows one job "
            f"({config.max_nodes_per_job})",
        )
    if (placement := config.placement.refusal(spec.resources)) is not None:
        field, why = placement
        return SpecProblem("PlacementNotAllowed", f"{field}: {why}")
    if (storage := config.storage.refusal(spec, namespace)) is not None:
        field, why = storage
        return SpecProblem("StorageNotAllowed", f"{field}: {why}")
    if (personal_data := config.personal_data.refusal(spec)) is not None:
        field, why = personal_data
        return SpecProblem("PersonalDataPolicyNotAllowed", f"{field}: {why}")
    if spec.output.oci is not None and (why := config.oci_registries.refusal(spec.output.oci.repository)) is not None:
        return SpecProblem("RegistryNotAllowed", f"spec.output.oci.repository: {why}")
    tracking = spec.tracking
    for field, asked, server, helm_value in (
        ("mlflow", tracking and tracking.mlflow, config.mlflow_uri, "tracking.mlflow.uri"),
        ("wandb", tracking and tracking.wandb, config.wandb_host, "tracking.wandb.host"),
    ):
        if asked is not None and server is None:
            what = "MLflow server" if field == "mlflow" else "Weights & Biases server"
            return SpecProblem(
                "TrackingNotAvailable",
                f"spec.tracking.{field}: this platform has no {what} (Helm value {helm_value}); "
                "leave the field out or ask the platform team",
            )
    return None


def _keys(obj: dict[str, Any]) -> set[str]:
    return set((obj.get("data") or {}).keys()) | set((obj.get("stringData") or {}).keys())


def _lookup(read: Reader, kind: str, namespace: str, name: str, label: str) -> str | None:
    """Why a referenced object cannot be used: "missing", "not opted in" (not labelled ``label=true``), or None."""
    found = read(kind, namespace, name)
    if found is None:
        return "missing"
    return None if ((found.get("metadata") or {}).get("labels") or {}).get(label) == "true" else "not opted in"


def _secret_problem(read: Reader, namespace: str, field: str, name: str, label: str, use: str) -> SpecProblem | None:
    """Why the Secret a field names cannot be used (missing, or not opted in by ``label``), or None."""
    why = _lookup(read, "Secret", namespace, name, label)
    if why == "missing":
        return SpecProblem("SecretNotFound", _not_found(field, "Secret", name, namespace))
    if why is not None:
        return SpecProblem("SecretNotAllowed", _not_opted_in(field, "Secret", name, label, use))
    return None


def _not_found(field: str, kind: str, name: str, namespace: str) -> str:
    return f"{field}: {kind} '{name}' not found in namespace '{namespace}'"


def _not_opted_in(field: str, kind: str, name: str, label: str, use: str) -> str:
    return f"{field}: {kind} '{name}' is not labelled {label}=true; a namespace admin labels the {kind}s {use}"


def check_monitor_policy(spec: DriftMonitorSpec, namespace: str, config: OperatorConfig) -> SpecProblem | None:
    """The platform's policy for a DriftMonitor: its own storage, and its retraining template as the
    FineTuneJob it would create (refused now, at the template's field, rather than at each retraining)."""
    if (problem := namespace_problem(namespace, config, "DriftMonitors")) is not None:
        return problem
    if (storage := config.storage.refusal(spec, namespace)) is not None:
        field, why = storage
        return SpecProblem("StorageNotAllowed", f"{field}: {why}")
    if spec.retraining is not None and (problem := check_policy(spec.retraining.template, namespace, config)):
        return SpecProblem(problem.reason, problem.message.replace("spec.", "spec.retraining.template.", 1))
    return None


def check_s3_references(s3: S3Spec, namespace: str, read: Reader) -> SpecProblem | None:
    """The Secret and ConfigMap an ``s3`` block names: present, opted in, with the key named."""
    if (secret := s3.credentials_secret) is not None:
        use = "kubetune's pods may use"
        field = "spec.s3.credentialsSecret.name"
        if (problem := _secret_problem(read, namespace, field, secret.name, S3_CREDENTIALS_LABEL, use)) is not None:
            return problem
    ca = s3.ca_bundle
    if ca is not None:
        config_map = read("ConfigMap", namespace, ca.name)
        if config_map is None:
            return SpecProblem(
                "ConfigMapNotFound", _not_found("spec.s3.caBundle.name", "ConfigMap", ca.name, namespace)
            )
        if ca.key not in _keys(config_map):
            return SpecProblem(
                "ConfigMapKeyMissing", f"spec.s3.caBundle.key: ConfigMap '{ca.name}' has no key '{ca.key}'"
            )
    return None


def check_hub_references(hub: HubSpec, namespace: str, read: Reader) -> SpecProblem | None:
    """The Secret a ``hub`` block names for its token: present and opted in."""
    if (token := hub.token_secret) is None:
        return None
    use = "kubetune's pods may use as a Hub token"
    return _secret_problem(read, namespace, "spec.hub.tokenSecret.name", token.name, HUB_TOKEN_LABEL, use)


def check_cloud_storage_references(gcs: GcsSpec, azure: AzureSpec, namespace: str, read: Reader) -> SpecProblem | None:
    """The Secrets a ``gcs`` and an ``azure`` block name for their keys: present and opted in."""
    for field, ref, label, use in (
        ("spec.gcs", gcs.credentials_secret, GCS_CREDENTIALS_LABEL, "a Cloud Storage key"),
        ("spec.azure", azure.credentials_secret, AZURE_CREDENTIALS_LABEL, "an Azure storage account key"),
    ):
        if ref is None:
            continue
        why = f"kubetune's pods may use as {use}"
        if (
            problem := _secret_problem(read, namespace, f"{field}.credentialsSecret.name", ref.name, label, why)
        ) is not None:
            return problem
    return None


def _training_logins(spec: FineTuneJobSpec) -> list[tuple[str, str, str, str]]:
    """(field, Secret name, opt-in label, what for) of each login only the training pod mounts."""
    logins = []
    mlflow = spec.tracking.mlflow if spec.tracking is not None else None
    for name, login in (
        [("credentialsSecret", mlflow.credentials_secret), ("tokenSecret", mlflow.token_secret)] if mlflow else []
    ):
        if login is not None:
            use = "kubetune's training pods may use as an MLflow login"
            logins.append((f"spec.tracking.mlflow.{name}.name", login.name, MLFLOW_CREDENTIALS_LABEL, use))
    wandb = spec.tracking.wandb if spec.tracking is not None else None
    if wandb is not None and wandb.api_key_secret is not None:
        use = "kubetune's training pods may use as a W&B API key"
        logins.append(
            ("spec.tracking.wandb.apiKeySecret.name", wandb.api_key_secret.name, WANDB_CREDENTIALS_LABEL, use)
        )
    if spec.output.oci is not None and (push := spec.output.oci.credentials_secret) is not None:
        use = "kubetune's training pods may push to a registry with"
        logins.append(("spec.output.oci.credentialsSecret.name", push.name, OCI_CREDENTIALS_LABEL, use))
    return logins


def check_references(spec: FineTuneJobSpec, namespace: str, read: Reader) -> SpecProblem | None:
    if (problem := check_s3_references(spec.s3, namespace, read)) is not None:
        return problem
    if (problem := check_cloud_storage_references(spec.gcs, spec.azure, namespace, read)) is not None:
        return problem
    if (pvc := spec.storage.pvc) is not None and read("PersistentVolumeClaim", namespace, pvc.claim_name) is None:
        return SpecProblem(
            "PersistentVolumeClaimNotFound",
            _not_found("spec.storage.pvc.claimName", "PersistentVolumeClaim", pvc.claim_name, namespace),
        )
    if (problem := check_hub_references(spec.hub, namespace, read)) is not None:
        return problem
    for field, secret, label, use in _training_logins(spec):
        if (problem := _secret_problem(read, namespace, field, secret, label, use)) is not None:
            return problem
    for index, webhook in enumerate(spec.notifications.webhooks if spec.notifications else []):
        use = "kubetune's operator may send notifications with"
        field = f"spec.notifications.webhooks[{index}].secretName"
        if (problem := _secret_problem(read, namespace, field, webhook.secret_name, WEBHOOK_LABEL, use)) is not None:
            return problem
    if (account := spec.service_account_name) is not None:
        field = "spec.serviceAccountName"
        why = _lookup(read, "ServiceAccount", namespace, account, TRAINER_IDENTITY_LABEL)
        if why == "missing":
            return SpecProblem("ServiceAccountNotFound", _not_found(field, "ServiceAccount", account, namespace))
        if why is not None:
            use = "trainer pods may run as (leave the field out for a per-job one)"
            return SpecProblem(
                "ServiceAccountNotAllowed", _not_opted_in(field, "ServiceAccount", account, TRAINER_IDENTITY_LABEL, use)
            )
    return None
