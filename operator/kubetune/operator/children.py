"""Pure builders of a FineTuneJob's children: spec ConfigMap, trainer RBAC, pre-flight, training and
verification Jobs, and the trainer egress NetworkPolicy.

Nothing here talks to the API server, so every manifest can be unit-tested as data.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from typing import Any

import yaml

from kubetune.api.contract import (
    AZURE_CREDENTIALS_DIR,
    AZURE_KEY_FILE,
    CACHE,
    COMPONENT_LABEL,
    ENV_AZURE_ENDPOINT,
    ENV_AZURE_KEY_FILE,
    ENV_CACHE,
    ENV_GCS_ENDPOINT,
    ENV_GCS_KEY_FILE,
    ENV_HUB_ENDPOINT,
    ENV_HUB_OFFLINE,
    ENV_HUB_TOKEN_FILE,
    ENV_JOB_NAME,
    ENV_JOB_NAMESPACE,
    ENV_METRICS_PORT,
    ENV_MLFLOW_CREDENTIALS_DIR,
    ENV_MLFLOW_TRACKING_URI,
    ENV_OCI_AUTH_FILE,
    ENV_OCI_REGISTRY,
    ENV_PUSH_INTERVAL,
    ENV_PUSHGATEWAY_URL,
    ENV_REPORT_STATUS,
    ENV_S3_CA_BUNDLE,
    ENV_S3_CREDENTIALS_DIR,
    ENV_S3_PUBLIC_ENDPOINT_ONLY,
    ENV_SCRATCH,
    ENV_STORAGE_PREFIXES,
    ENV_TERMINATION_LOG,
    ENV_WANDB_BASE_URL,
    ENV_WANDB_KEY_FILE,
    FAIL_JOB_EXIT_CODES,
    FINETUNEJOB_ANNOTATION,
    GCS_CREDENTIALS_DIR,
    GCS_KEY_FILE,
    GROUP_ENV,
    HUB_TOKEN_DIR,
    HUB_TOKEN_FILE,
    JOB_FILE,
    JOB_FILE_KEY,
    JOB_LABEL,
    MANAGED_BY,
    MANAGED_BY_LABEL,
    MLFLOW_CREDENTIALS_DIR,
    MLFLOW_PASSWORD_FILE,
    MLFLOW_TOKEN_FILE,
    MLFLOW_USERNAME_FILE,
    MONITOR_LABEL,
    OCI_AUTH_FILE,
    OCI_CREDENTIALS_DIR,
    OCI_SECRET_KEY,
    RENDEZVOUS_PORT,
    S3_ACCESS_KEY_ID_FILE,
    S3_CREDENTIALS_DIR,
    S3_SECRET_ACCESS_KEY_FILE,
    S3_SESSION_TOKEN_FILE,
    SCRATCH,
    TERMINATION_LOG_PATH,
    TRAINER_CONTAINER,
    VERIFICATION_FAIL_JOB_EXIT_CODES,
    WANDB_CREDENTIALS_DIR,
    WANDB_KEY_FILE,
    group_launch,
)
from kubetune.api.quantity import parse_quantity
from kubetune.api.v1alpha1 import API_VERSION, GROUP, KIND, PLURAL, AzureSpec, FineTuneJobSpec, GcsSpec, HubSpec, S3Spec
from kubetune.operator.config import OperatorConfig
from kubetune.operator.networkpolicy import TrainerEgress
from kubetune.operator.storagepolicy import reads_hub

KUEUE_QUEUE_LABEL = "kueue.x-k8s.io/queue-name"
CA_DIR = "/etc/kubetune/ca"
TRAINER_UID = 1000
# /tmp of a trainer pod (the root filesystem is read-only): libraries' temporary files; the large
# work goes to scratch.
TMP_SIZE = "1Gi"
# The container's logs count against the pod's ephemeral storage too.
LOG_ALLOWANCE = "512Mi"
# A label value is at most 63 characters (a FineTuneJob name may have 253); the full name stays
# in the FINETUNEJOB_ANNOTATION, and ownerReferences carry the uid.
LABEL_VALUE_LIMIT = 63
DNS_LABEL_LIMIT = 63


@dataclass(frozen=True)
class Owner:
    """The FineTuneJob (or, with ``kind``, the other kubetune object) as its children see it."""

    name: str
    namespace: str
    uid: str
    kind: str = KIND

    @classmethod
    def from_body(cls, body: Any) -> Owner:
        meta = body["metadata"]
        return cls(meta["name"], meta["namespace"], meta["uid"], body.get("kind") or KIND)

    def reference(self) -> dict[str, Any]:
        return {
            "apiVersion": API_VERSION,
            "kind": self.kind,
            "name": self.name,
            "uid": self.uid,
            "controller": True,
            "blockOwnerDeletion": True,
        }


def child_name(owner: str, suffix: str, limit: int = 63) -> str:
    """``<owner>-<suffix>``, shortened with a stable hash when longer than a DNS label allows."""
    name = f"{owner}-{suffix}"
    if len(name) <= limit:
        return name
    digest = hashlib.sha256(owner.encode()).hexdigest()[:8]
    keep = limit - len(suffix) - len(digest) - 2
    return f"{owner[:keep].rstrip('-.')}-{digest}-{suffix}"


def label_value(name: str) -> str:
    """``name`` as a label value: itself when it fits in 63 characters, else a stable hash-shortened form."""
    if len(name) <= LABEL_VALUE_LIMIT:
        return name
    digest = hashlib.sha256(name.encode()).hexdigest()[:8]
    return f"{name[: LABEL_VALUE_LIMIT - len(digest) - 1].rstrip('-.')}-{digest}"


def spec_configmap_name(owner: str) -> str:
    return child_name(owner, "spec")


def trainer_account_name(owner: str) -> str:
    return child_name(owner, "trainer")


def preflight_job_name(owner: str) -> str:
    return child_name(owner, "preflight")


def training_job_name(owner: str, nodes: int = 1) -> str:
    """On more than one node, an Indexed Job: its pods' hostnames, ``<job>-<index>``, are DNS labels (no
    dots, 63 characters), which the API server checks when the Job is created."""
    if nodes == 1:
        return child_name(owner, "train")
    return child_name(owner.replace(".", "-"), "train", limit=DNS_LABEL_LIMIT - len(f"-{nodes - 1}"))


def rendezvous_service_name(owner: str) -> str:
    """The headless Service that gives a multi-node job's pods their DNS names: a DNS-1035 label, so
    dots become dashes and a name starting with a digit gets a letter in front."""
    label = owner.replace(".", "-")
    return child_name(label if label[0].isalpha() else f"j{label}", "ranks")


def verification_job_name(owner: str) -> str:
    return child_name(owner, "verify")


def trainer_network_policy_name(owner: str) -> str:
    return child_name(owner, "egress")


def labels(owner: Owner, component: str) -> dict[str, str]:
    """kubetune's labels on a child; its owner by name under ``JOB_LABEL`` for a FineTuneJob and
    ``MONITOR_LABEL`` for a DriftMonitor (a FineTuneJob's policies must not select a monitor's pods)."""
    return {
        "app.kubernetes.io/name": "kubetune",
        "app.kubernetes.io/instance": label_value(owner.name),
        MANAGED_BY_LABEL: MANAGED_BY,
        COMPONENT_LABEL: component,
        (JOB_LABEL if owner.kind == KIND else MONITOR_LABEL): label_value(owner.name),
    }


def _metadata(owner: Owner, name: str, component: str) -> dict[str, Any]:
    return {
        "name": name,
        "namespace": owner.namespace,
        "labels": labels(owner, component),
        "annotations": {FINETUNEJOB_ANNOTATION: owner.name} if owner.kind == KIND else {},
        "ownerReferences": [owner.reference()],
    }


def effective_spec(spec: FineTuneJobSpec, config: OperatorConfig) -> FineTuneJobSpec:
    """The spec the trainer gets: operator-wide S3 defaults filled where the job leaves them unset."""
    s3 = spec.s3.model_copy(
        update={
            "endpoint": spec.s3.endpoint or config.default_s3_endpoint,
            "region": spec.s3.region or config.default_s3_region,
        }
    )
    return spec.model_copy(update={"s3": s3})


# libyaml's emitter when PyYAML was built with it (its wheels are): the same text as the pure-Python
# SafeDumper on every manifest under examples/ and tests/, six times faster, and this YAML was the
# costliest part of a FineTuneJob's first reconcile (bench/operator.py).
_SPEC_DUMPER: type = getattr(yaml, "CSafeDumper", yaml.SafeDumper)


def build_spec_configmap(owner: Owner, spec: FineTuneJobSpec, config: OperatorConfig) -> dict[str, Any]:
    document = {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "metadata": {"name": owner.name, "namespace": owner.namespace, "uid": owner.uid},
        "spec": effective_spec(spec, config).to_manifest(),
    }
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": _metadata(owner, spec_configmap_name(owner.name), "spec"),
        "data": {JOB_FILE_KEY: yaml.dump(document, Dumper=_SPEC_DUMPER, sort_keys=False)},
        "immutable": True,
    }


def build_trainer_rbac(owner: Owner, spec: FineTuneJobSpec) -> list[dict[str, Any]]:
    """ServiceAccount (unless the user brings one), Role and RoleBinding for the trainer.

    The Role lets the trainer patch the status of its own FineTuneJob and nothing else (it never reads).
    """
    name = trainer_account_name(owner.name)
    account = spec.service_account_name or name
    objects: list[dict[str, Any]] = []
    if spec.service_account_name is None:
        objects.append(
            {
                "apiVersion": "v1",
                "kind": "ServiceAccount",
                "metadata": _metadata(owner, name, "trainer"),
                "automountServiceAccountToken": True,
            }
        )
    objects.append(
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "Role",
            "metadata": _metadata(owner, name, "trainer"),
            "rules": [
                {
                    "apiGroups": [GROUP],
                    "resources": [f"{PLURAL}/status"],
                    "resourceNames": [owner.name],
                    "verbs": ["patch"],
                }
            ],
        }
    )
    objects.append(
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "RoleBinding",
            "metadata": _metadata(owner, name, "trainer"),
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": name},
            "subjects": [{"kind": "ServiceAccount", "name": account, "namespace": owner.namespace}],
        }
    )
    return objects


def _ephemeral_storage(spec: FineTuneJobSpec, *, scratch_volume: bool) -> str:
    """What the pod may write outside memory and volumes it was given: the scratch emptyDir (unless
    scratch is a PVC), /tmp and the container's logs. Requested and limited alike, so the scheduler
    places the pod where the disk is, and a runaway writer is evicted instead of filling the node."""
    scratch = parse_quantity(spec.storage.scratch_size) if scratch_volume and spec.storage.pvc is None else 0
    total = scratch + parse_quantity(TMP_SIZE) + parse_quantity(LOG_ALLOWANCE)
    return f"{math.ceil(total / 2**20)}Mi"


def hardening_env(config: OperatorConfig, *, gpus: int) -> list[dict[str, Any]]:
    env: list[dict[str, Any]] = []
    if gpus == 0:
        # The CUDA base image sets NVIDIA_VISIBLE_DEVICES=all: on a GPU node, the NVIDIA container
        # runtime would then hand every GPU of the node to a pod that was granted none.
        env.append({"name": "NVIDIA_VISIBLE_DEVICES", "value": "void"})
    if not config.allow_instance_metadata:
        # The AWS SDK would otherwise fall back to the node's instance role (IMDS) when the job names
        # no credentials: a tenant would act as the node.
        env.append({"name": "AWS_EC2_METADATA_DISABLED", "value": "true"})
    return env


def storage_env(s3: S3Spec, config: OperatorConfig, namespace: str) -> list[dict[str, Any]]:
    """The storage policy as far as the trainer must apply it: an endpoint the tenant chose that passed
    only as "any public endpoint" (its name was checked, not what it resolves to, so the trainer checks
    the address each connection reaches: DNS rebinding), and the prefixes the URIs it finds at run time
    must stay under."""
    env: list[dict[str, Any]] = []
    if s3.endpoint is not None and config.storage.admitted_as_public(s3.endpoint):
        env.append({"name": ENV_S3_PUBLIC_ENDPOINT_ONLY, "value": "true"})
    if prefixes := config.storage.prefixes_for(namespace):
        env.append({"name": ENV_STORAGE_PREFIXES, "value": ",".join(prefixes)})
    return env


def s3_env(s3: S3Spec) -> list[dict[str, Any]]:
    """Where the trainer finds the S3 credentials and CA bundle mounted by :func:`s3_volumes`."""
    env: list[dict[str, Any]] = []
    if s3.credentials_secret is not None:
        env.append({"name": ENV_S3_CREDENTIALS_DIR, "value": S3_CREDENTIALS_DIR})
    if s3.ca_bundle is not None:
        env.append({"name": ENV_S3_CA_BUNDLE, "value": f"{CA_DIR}/{s3.ca_bundle.key}"})
    return env


def _env(owner: Owner, spec: FineTuneJobSpec) -> list[dict[str, Any]]:
    env: list[dict[str, Any]] = [
        {"name": ENV_JOB_NAME, "value": owner.name},
        {"name": ENV_JOB_NAMESPACE, "value": owner.namespace},
        {"name": ENV_REPORT_STATUS, "value": "true"},
        {"name": ENV_SCRATCH, "value": SCRATCH},
        {"name": ENV_CACHE, "value": CACHE},
        {"name": "HOME", "value": f"{SCRATCH}/home"},
        {"name": "HF_HOME", "value": f"{SCRATCH}/hf"},
        {"name": "PYTHONUNBUFFERED", "value": "1"},
        {"name": ENV_TERMINATION_LOG, "value": TERMINATION_LOG_PATH},  # where the trainer says why it stopped
    ]
    return env + group_env(spec) + s3_env(spec.s3)


def group_env(spec: FineTuneJobSpec) -> list[dict[str, Any]]:
    """What torchrun's agents on several nodes need besides their command (contract.GROUP_ENV says why)."""
    if spec.resources.nodes == 1:
        return []
    return [{"name": name, "value": value} for name, value in GROUP_ENV.items()]


def hub_env(hub: HubSpec, config: OperatorConfig, *, reads: bool) -> list[dict[str, Any]]:
    """huggingface_hub offline unless the pod ``reads`` the Hub; then the platform's endpoint and where
    the token ``hub`` names is mounted (:func:`hub_volumes`)."""
    if not reads:
        return [{"name": ENV_HUB_OFFLINE, "value": "1"}]
    env: list[dict[str, Any]] = [{"name": ENV_HUB_OFFLINE, "value": "0"}]
    if config.hub_endpoint is not None:
        env.append({"name": ENV_HUB_ENDPOINT, "value": config.hub_endpoint})
    if hub.token_secret is not None:
        env.append({"name": ENV_HUB_TOKEN_FILE, "value": f"{HUB_TOKEN_DIR}/{HUB_TOKEN_FILE}"})
    return env


def hub_volumes(hub: HubSpec, *, reads: bool) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The Hub token Secret's key as a file, for a pod that ``reads`` the Hub with one: (volumes, mounts)."""
    secret = hub.token_secret
    if secret is None or not reads:
        return [], []
    return _secret_key_file("hub-token", secret.name, secret.key, HUB_TOKEN_DIR, HUB_TOKEN_FILE)


def cloud_storage_env(gcs: GcsSpec, azure: AzureSpec, config: OperatorConfig) -> list[dict[str, Any]]:
    """The platform's Cloud Storage and Azure Blob Storage endpoints, and where the keys the job names
    are mounted (:func:`cloud_storage_volumes`)."""
    env = [
        {"name": name, "value": value}
        for name, value in ((ENV_GCS_ENDPOINT, config.gcs_endpoint), (ENV_AZURE_ENDPOINT, config.azure_endpoint))
        if value is not None
    ]
    if gcs.credentials_secret is not None:
        env.append({"name": ENV_GCS_KEY_FILE, "value": f"{GCS_CREDENTIALS_DIR}/{GCS_KEY_FILE}"})
    if azure.credentials_secret is not None:
        env.append({"name": ENV_AZURE_KEY_FILE, "value": f"{AZURE_CREDENTIALS_DIR}/{AZURE_KEY_FILE}"})
    return env


def cloud_storage_volumes(gcs: GcsSpec, azure: AzureSpec) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The Cloud Storage and Azure key Secrets' keys as files: (volumes, mounts)."""
    volumes: list[dict[str, Any]] = []
    mounts: list[dict[str, Any]] = []
    for volume, secret, folder, file in (
        ("gcs-credentials", gcs.credentials_secret, GCS_CREDENTIALS_DIR, GCS_KEY_FILE),
        ("azure-credentials", azure.credentials_secret, AZURE_CREDENTIALS_DIR, AZURE_KEY_FILE),
    ):
        if secret is not None:
            more, more_mounts = _secret_key_file(volume, secret.name, secret.key, folder, file)
            volumes += more
            mounts += more_mounts
    return volumes, mounts


def _secret_key_file(
    volume: str, secret: str, key: str, folder: str, file: str
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """One key of a Secret as ``folder/file``, read-only: (volumes, mounts)."""
    source = {
        "secretName": secret,
        "items": [{"key": key, "path": file}],
        "optional": True,  # a missing key is the trainer's clear error, as for S3 credentials
        "defaultMode": 0o440,
    }
    return [{"name": volume, "secret": source}], [{"name": volume, "mountPath": folder, "readOnly": True}]


def _metrics_env(config: OperatorConfig, namespace: str) -> list[dict[str, Any]]:
    """The trainer serves /metrics (for a PodMonitor) and, with a Pushgateway, pushes there too
    (its namespace's own, when the URL names ``{namespace}``)."""
    env: list[dict[str, Any]] = [{"name": ENV_METRICS_PORT, "value": str(config.trainer_metrics_port)}]
    url = config.pushgateway_url_for(namespace)
    if url:
        env += [
            {"name": ENV_PUSHGATEWAY_URL, "value": url},
            {"name": ENV_PUSH_INTERVAL, "value": str(config.push_interval_seconds)},
        ]
    return env


def tracking_env(spec: FineTuneJobSpec, config: OperatorConfig) -> list[dict[str, Any]]:
    """The platform's MLflow server, for the training pod of a job that asks to be tracked (the pre-flight
    is no run to record), and where its login is mounted (:func:`tracking_volumes`). check_policy refused
    such a job when the platform has none."""
    if spec.tracking is None or spec.tracking.mlflow is None or config.mlflow_uri is None:
        return []
    env = [{"name": ENV_MLFLOW_TRACKING_URI, "value": config.mlflow_uri}]
    mlflow = spec.tracking.mlflow
    if mlflow.credentials_secret is not None or mlflow.token_secret is not None:
        env.append({"name": ENV_MLFLOW_CREDENTIALS_DIR, "value": MLFLOW_CREDENTIALS_DIR})
    return env


def wandb_env(spec: FineTuneJobSpec, config: OperatorConfig) -> list[dict[str, Any]]:
    """The platform's W&B server, for the training pod of a job that asks to be tracked there, and where
    its API key is mounted (:func:`wandb_volumes`). check_policy refused such a job when the platform has none."""
    wandb = spec.tracking.wandb if spec.tracking is not None else None
    if wandb is None or config.wandb_host is None:
        return []
    env = [{"name": ENV_WANDB_BASE_URL, "value": config.wandb_host}]
    if wandb.api_key_secret is not None:
        env.append({"name": ENV_WANDB_KEY_FILE, "value": f"{WANDB_CREDENTIALS_DIR}/{WANDB_KEY_FILE}"})
    return env


def wandb_volumes(spec: FineTuneJobSpec, config: OperatorConfig) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The W&B API key Secret's key as a file: (volumes, mounts)."""
    wandb = spec.tracking.wandb if spec.tracking is not None else None
    if wandb is None or config.wandb_host is None or (secret := wandb.api_key_secret) is None:
        return [], []
    return _secret_key_file("wandb-credentials", secret.name, secret.key, WANDB_CREDENTIALS_DIR, WANDB_KEY_FILE)


def oci_env(spec: FineTuneJobSpec, config: OperatorConfig) -> list[dict[str, Any]]:
    """For the training pod of a job with ``spec.output.oci``: the listed URL of its registry (check_policy
    refused a registry the platform does not list) and where its login is mounted (:func:`oci_volumes`)."""
    oci = spec.output.oci
    if oci is None or (url := config.oci_registries.url_for(oci.repository)) is None:
        return []
    env = [{"name": ENV_OCI_REGISTRY, "value": url}]
    if oci.credentials_secret is not None:
        env.append({"name": ENV_OCI_AUTH_FILE, "value": f"{OCI_CREDENTIALS_DIR}/{OCI_AUTH_FILE}"})
    return env


def oci_volumes(spec: FineTuneJobSpec) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The registry login Secret's ``.dockerconfigjson`` as a file: (volumes, mounts)."""
    if spec.output.oci is None or (secret := spec.output.oci.credentials_secret) is None:
        return [], []
    return _secret_key_file("oci-credentials", secret.name, OCI_SECRET_KEY, OCI_CREDENTIALS_DIR, OCI_AUTH_FILE)


def tracking_volumes(
    spec: FineTuneJobSpec, config: OperatorConfig
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The MLflow login Secret's two keys (or its token's one) as files, for the training pod of a tracked
    job (as :func:`tracking_env` points at them): (volumes, mounts)."""
    mlflow = spec.tracking.mlflow if spec.tracking else None
    if mlflow is None or config.mlflow_uri is None:
        return [], []
    if (login := mlflow.credentials_secret) is not None:
        name = login.name
        items = [
            {"key": login.username_key, "path": MLFLOW_USERNAME_FILE},
            {"key": login.password_key, "path": MLFLOW_PASSWORD_FILE},
        ]
    elif (token := mlflow.token_secret) is not None:
        name, items = token.name, [{"key": token.key, "path": MLFLOW_TOKEN_FILE}]
    else:
        return [], []
    volume = {
        "name": "mlflow-credentials",
        "secret": {
            "secretName": name,
            "items": items,
            "optional": True,  # a missing key is the trainer's clear error, as for S3 credentials
            "defaultMode": 0o440,
        },
    }
    return [volume], [{"name": "mlflow-credentials", "mountPath": MLFLOW_CREDENTIALS_DIR, "readOnly": True}]


def s3_volumes(s3: S3Spec) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The S3 credentials Secret (as files) and CA bundle an ``s3`` block names: (volumes, mounts)."""
    volumes: list[dict[str, Any]] = []
    mounts: list[dict[str, Any]] = []
    if (secret := s3.credentials_secret) is not None:
        files = [
            (secret.access_key_id_key, S3_ACCESS_KEY_ID_FILE),
            (secret.secret_access_key_key, S3_SECRET_ACCESS_KEY_FILE),
        ]
        if secret.session_token_key:
            files.append((secret.session_token_key, S3_SESSION_TOKEN_FILE))
        volumes.append(
            {
                "name": "s3-credentials",
                "secret": {
                    "secretName": secret.name,
                    "items": [{"key": key, "path": path} for key, path in files],
                    # A key the Secret lacks is left out, and the trainer names the field that lists
                    # it (the operator reads only the Secret's metadata, never its keys).
                    "optional": True,
                    "defaultMode": 0o440,  # owner and the pod's fsGroup (the trainer) only
                },
            }
        )
        mounts.append({"name": "s3-credentials", "mountPath": S3_CREDENTIALS_DIR, "readOnly": True})
    if s3.ca_bundle is not None:
        volumes.append({"name": "s3-ca", "configMap": {"name": s3.ca_bundle.name}})
        mounts.append({"name": "s3-ca", "mountPath": CA_DIR, "readOnly": True})
    return volumes, mounts


def _volumes(
    owner: Owner, spec: FineTuneJobSpec, *, scratch_volume: bool
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    volumes: list[dict[str, Any]] = [
        {"name": "job-spec", "configMap": {"name": spec_configmap_name(owner.name)}},
        {"name": "tmp", "emptyDir": {"sizeLimit": TMP_SIZE}},
    ]
    mounts: list[dict[str, Any]] = [
        {"name": "job-spec", "mountPath": JOB_FILE, "subPath": JOB_FILE_KEY, "readOnly": True},
        {"name": "tmp", "mountPath": "/tmp"},
    ]
    if scratch_volume:  # what training and the pre-flight write; the verification Job only reads
        volumes += [
            {"name": "scratch", "persistentVolumeClaim": {"claimName": spec.storage.pvc.claim_name}}
            if spec.storage.pvc is not None
            else {"name": "scratch", "emptyDir": {"sizeLimit": spec.storage.scratch_size}},
            {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": spec.storage.shm_size}},
        ]
        mounts += [{"name": "scratch", "mountPath": SCRATCH}, {"name": "dshm", "mountPath": "/dev/shm"}]
    credentials, credential_mounts = s3_volumes(spec.s3)
    token, token_mounts = hub_volumes(spec.hub, reads=reads_hub(spec))
    key, key_mounts = cloud_storage_volumes(spec.gcs, spec.azure)
    return volumes + credentials + token + key, mounts + credential_mounts + token_mounts + key_mounts


def container_security() -> dict[str, Any]:
    """The Kubernetes restricted Pod Security Standard, container part."""
    return {
        "runAsNonRoot": True,
        "runAsUser": TRAINER_UID,
        "runAsGroup": TRAINER_UID,
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "capabilities": {"drop": ["ALL"]},
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def _pod_spec(
    owner: Owner,
    spec: FineTuneJobSpec,
    config: OperatorConfig,
    *,
    command: list[str],
    resources: dict[str, Any],
    scheduling: bool,
    gpus: int,
    image: str | None = None,
    scratch_volume: bool = True,
) -> dict[str, Any]:
    volumes, mounts = _volumes(owner, spec, scratch_volume=scratch_volume)
    storage = _ephemeral_storage(spec, scratch_volume=scratch_volume)
    resources = {
        "requests": {**resources["requests"], "ephemeral-storage": storage},
        "limits": {**resources["limits"], "ephemeral-storage": storage},
    }
    pod: dict[str, Any] = {
        "restartPolicy": "Never",
        "serviceAccountName": spec.service_account_name or trainer_account_name(owner.name),
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": TRAINER_UID,
            "runAsGroup": TRAINER_UID,
            "fsGroup": TRAINER_UID,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "terminationGracePeriodSeconds": spec.checkpoint.termination_grace_period_seconds,
        "containers": [
            {
                "name": TRAINER_CONTAINER,
                "image": image or spec.image or config.trainer_image,
                "imagePullPolicy": config.image_pull_policy,
                "command": command,
                "env": _env(owner, spec)
                + hub_env(spec.hub, config, reads=reads_hub(spec))
                + cloud_storage_env(spec.gcs, spec.azure, config)
                + hardening_env(config, gpus=gpus)
                + storage_env(spec.s3, config, owner.namespace),
                "resources": resources,
                "volumeMounts": mounts,
                "securityContext": container_security(),
                "terminationMessagePath": TERMINATION_LOG_PATH,
                "terminationMessagePolicy": "FallbackToLogsOnError",
            }
        ],
        "volumes": volumes,
    }
    if scheduling:
        pod.update(config.placement.scheduling(spec.resources))
    return pod


def _job(
    owner: Owner,
    name: str,
    component: str,
    pod: dict[str, Any],
    *,
    backoff_limit: int,
    extra: dict[str, Any],
    fail_on: tuple[int, ...] = FAIL_JOB_EXIT_CODES,
) -> dict[str, Any]:
    meta = _metadata(owner, name, component)
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": meta,
        "spec": {
            "backoffLimit": backoff_limit,
            "completions": 1,
            "parallelism": 1,
            # Exits a retry cannot fix (bad input, status not writable, result not written: a retried
            # training would run for hours again) fail fast; drains and preemptions are no failures.
            "podFailurePolicy": {
                "rules": [
                    {
                        "action": "FailJob",
                        "onExitCodes": {
                            "containerName": TRAINER_CONTAINER,
                            "operator": "In",
                            "values": sorted(fail_on),  # the API requires ascending order
                        },
                    },
                    {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget"}]},
                ]
            },
            "template": {
                "metadata": {"labels": dict(meta["labels"]), "annotations": dict(meta["annotations"])},
                "spec": pod,
            },
            **extra,
        },
    }


def build_preflight_job(owner: Owner, spec: FineTuneJobSpec, config: OperatorConfig) -> dict[str, Any]:
    """CPU-only check of dataset, tokens and memory before any GPU is requested."""
    resources = {"requests": {"cpu": "1", "memory": "4Gi"}, "limits": {"memory": "8Gi"}}
    pod = _pod_spec(
        owner,
        spec,
        config,
        command=["kubetune", "preflight", "--job", JOB_FILE],
        resources=resources,
        scheduling=False,
        gpus=0,
    )
    extra: dict[str, Any] = {"activeDeadlineSeconds": 1800}
    return _job(owner, preflight_job_name(owner.name), "preflight", pod, backoff_limit=1, extra=extra)


def training_command(spec: FineTuneJobSpec, *, job_name: str = "", service: str = "", run_id: str = "") -> list[str]:
    """``kubetune train`` in one process; under torchrun with more: on one node a standalone rendezvous,
    on several c10d rendezvous at pod 0 (``<job>-0.<service>``, the Indexed Job's first pod), a fixed
    node count, and the elastic agent restarting the whole group when a process fails."""
    res = spec.resources
    train = ["-m", "kubetune_trainer.cli", "train", "--job", JOB_FILE]
    if res.nodes > 1:
        endpoint = f"{job_name}-0.{service}:{RENDEZVOUS_PORT}"
        return ["torchrun", *group_launch(res.nodes, max(1, res.gpus), endpoint=endpoint, run_id=run_id), *train]
    if res.gpus > 1:
        return ["torchrun", "--standalone", f"--nproc-per-node={res.gpus}", *train]
    return ["kubetune", "train", "--job", JOB_FILE]


def build_rendezvous_service(owner: Owner) -> dict[str, Any]:
    """Headless (no virtual IP, no load balancing): a DNS record per pod of the multi-node training Job,
    ``<job>-<index>.<service>``, published before the pod is ready, since the rendezvous comes first."""
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _metadata(owner, rendezvous_service_name(owner.name), "rendezvous"),
        "spec": {
            "clusterIP": "None",
            "publishNotReadyAddresses": True,
            "selector": _group_selector(owner),
            "ports": [
                {"name": "rendezvous", "port": RENDEZVOUS_PORT, "targetPort": RENDEZVOUS_PORT, "protocol": "TCP"}
            ],
        },
    }


def _group_selector(owner: Owner) -> dict[str, str]:
    """The training pods of one FineTuneJob."""
    return {MANAGED_BY_LABEL: MANAGED_BY, JOB_LABEL: label_value(owner.name), COMPONENT_LABEL: "trainer"}


def build_training_job(owner: Owner, spec: FineTuneJobSpec, config: OperatorConfig) -> dict[str, Any]:
    res = spec.resources
    name = training_job_name(owner.name, res.nodes)
    service = rendezvous_service_name(owner.name)
    requests: dict[str, Any] = {"cpu": res.cpu, "memory": res.memory}
    limits: dict[str, Any] = {"memory": res.memory}
    if res.gpus > 0:
        requests[res.gpu_resource_name] = str(res.gpus)
        limits[res.gpu_resource_name] = str(res.gpus)
    pod = _pod_spec(
        owner,
        spec,
        config,
        command=training_command(spec, job_name=name, service=service, run_id=owner.uid),
        resources={"requests": requests, "limits": limits},
        scheduling=True,
        gpus=res.gpus,
    )
    trainer = pod["containers"][0]
    trainer["env"] += (
        _metrics_env(config, owner.namespace)
        + tracking_env(spec, config)
        + wandb_env(spec, config)
        + oci_env(spec, config)
    )
    login, login_mounts = tracking_volumes(spec, config)
    key, key_mounts = wandb_volumes(spec, config)
    push, push_mounts = oci_volumes(spec)
    pod["volumes"] += login + key + push
    trainer["volumeMounts"] += login_mounts + key_mounts + push_mounts
    trainer["ports"] = [{"name": "metrics", "containerPort": config.trainer_metrics_port, "protocol": "TCP"}]
    extra: dict[str, Any] = {}
    if spec.active_deadline_seconds is not None:
        extra["activeDeadlineSeconds"] = spec.active_deadline_seconds
    if spec.ttl_seconds_after_finished is not None:
        extra["ttlSecondsAfterFinished"] = spec.ttl_seconds_after_finished
    if res.nodes > 1:
        # One pod per node, each a fixed index (its hostname). A failed pod is replaced for its index
        # alone, up to backoffLimit times each, and any index out of retries fails the Job: the group
        # cannot train without one of its nodes.
        pod["subdomain"] = service
        trainer["ports"].append({"name": "rendezvous", "containerPort": RENDEZVOUS_PORT, "protocol": "TCP"})
        extra |= {
            "completionMode": "Indexed",
            "completions": res.nodes,
            "parallelism": res.nodes,
            "backoffLimitPerIndex": spec.backoff_limit,
            "maxFailedIndexes": 0,
        }
    job = _job(owner, name, "trainer", pod, backoff_limit=spec.backoff_limit, extra=extra)
    if res.nodes > 1:
        del job["spec"]["backoffLimit"]  # with backoffLimitPerIndex, each index counts its own failures
    if spec.queue_name:
        # Kueue admits suspended Jobs by unsuspending them; it owns the field from here on.
        job["metadata"]["labels"][KUEUE_QUEUE_LABEL] = spec.queue_name
        job["spec"]["suspend"] = True
    else:
        job["spec"]["suspend"] = spec.suspend
    return job


def build_verification_job(
    owner: Owner, spec: FineTuneJobSpec, config: OperatorConfig, *, version: str, claimed_checks: dict[str, bool | None]
) -> dict[str, Any]:
    """Check a version the trainer reported promoted against its published manifest, before the
    operator says so (``kubetune verify --job ... --version ... --claimed-gate ...``), then put it on
    ``spec.output.channel`` when one is named (``--promote-to``).

    The operator has no storage access (the job's S3 credentials are the tenant's), so a short CPU
    pod in the job's namespace reads the version with them. It runs the platform's own trainer image,
    never ``spec.image``, with a command the operator wrote and no API token: its verdict is the Job's
    Complete or Failed condition, which only the Job controller writes, so a trainer that claims a
    promotion its manifest does not record cannot also vouch for it.
    """
    command = [
        "kubetune",
        "verify",
        "--job",
        JOB_FILE,
        "--version",
        version,
        "--claimed-gate",
        json.dumps(claimed_checks, sort_keys=True),
    ]
    if spec.output.channel:  # the channel moves only once the version is verified
        command += ["--promote-to", spec.output.channel]
    resources = {"requests": {"cpu": "250m", "memory": "512Mi"}, "limits": {"memory": "1Gi"}}
    pod = _pod_spec(
        owner,
        spec,
        config,
        command=command,
        resources=resources,
        scheduling=False,
        gpus=0,
        image=config.trainer_image,
        scratch_volume=False,
    )
    pod["automountServiceAccountToken"] = False
    # Hashing every artifact (a merged 7B model is 14 GB) at S3 speed takes minutes, not hours.
    extra: dict[str, Any] = {"activeDeadlineSeconds": 3600}
    if spec.ttl_seconds_after_finished is not None:
        extra["ttlSecondsAfterFinished"] = spec.ttl_seconds_after_finished
    return _job(
        owner,
        verification_job_name(owner.name),
        "verify",
        pod,
        backoff_limit=1,
        extra=extra,
        fail_on=VERIFICATION_FAIL_JOB_EXIT_CODES,
    )


def runs_as_built(existing: dict[str, Any], built: dict[str, Any]) -> bool:
    """Whether an existing Job's pods run what the operator builds: the same containers (name, image,
    command, arguments) and no init containers. An ownerReference can be written by anyone who can
    create a Job in the namespace; what its pods run cannot change after creation."""

    def workload(job: dict[str, Any]) -> tuple[Any, ...]:
        pod = job.get("spec", {}).get("template", {}).get("spec", {})
        containers = tuple(
            (c.get("name"), c.get("image"), tuple(c.get("command") or ()), tuple(c.get("args") or ()))
            for c in pod.get("containers") or []
        )
        return containers, bool(pod.get("initContainers"))

    return workload(existing) == workload(built)


def build_trainer_network_policy(
    owner: Owner, egress: TrainerEgress, *, reads_hub: bool = False, tracked: bool = False, group: bool = False
) -> dict[str, Any]:
    """The owner's pods may open connections only to S3, the API server and the cluster DNS (and the
    Hub for a job that ``reads_hub``, MLflow for one ``tracked``), never to 169.254.0.0/16 (``networkpolicy``): a FineTuneJob's
    pre-flight and training pods (both carry the job's label), or a DriftMonitor's check and compare
    pods (its label), which have no API token and so get no way to the API server either.

    Ingress is left alone (policyTypes Egress only), so Prometheus still scrapes the trainer. Owned by
    its owner, so it is garbage-collected with it. A ``group`` (a job on several nodes) also reaches its
    own training pods, on any port: the rendezvous, then the collectives' connections (gloo, NCCL).
    """
    finetunejob = owner.kind == KIND
    selected = {MANAGED_BY_LABEL: MANAGED_BY, (JOB_LABEL if finetunejob else MONITOR_LABEL): label_value(owner.name)}
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": _metadata(owner, trainer_network_policy_name(owner.name), "egress"),
        "spec": {
            "podSelector": {"matchLabels": selected},
            "policyTypes": ["Egress"],
            "egress": egress.egress_rules(api_server=finetunejob, hub=reads_hub, tracking=tracked)
            + ([{"to": [{"podSelector": {"matchLabels": _group_selector(owner)}}]}] if group else []),
        },
    }
