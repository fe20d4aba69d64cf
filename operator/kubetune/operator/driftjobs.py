"""What a DriftMonitor makes: a short CPU Job per check, and a FineTuneJob per retraining.

Pure builders, like ``children``: the reconcile (``driftreconcile``) decides when, these say what.
A check Job runs the platform's trainer image (never a tenant's) with ``kubetune drift check`` on the
channel's current version and writes its :class:`~kubetune.api.driftmonitor.DriftCheckReport` to the
termination message, the one thing the operator reads back. It has no API token: it reads storage
with the monitor's own S3 credentials, as the FineTuneJob's pods do.
"""

from __future__ import annotations

from typing import Any

from kubetune.api.contract import (
    CACHE,
    DRIFT_CHECK_COMPONENT,
    DRIFT_COMPARE_COMPONENT,
    ENV_CACHE,
    ENV_SCRATCH,
    EXIT_CONFIG,
    RETRAINING_COMPONENT,
    SCRATCH,
    TERMINATION_LOG_PATH,
    TRAINER_CONTAINER,
)
from kubetune.api.driftmonitor import KIND, DriftMonitorSpec, RetrainingSpec
from kubetune.api.v1alpha1 import API_VERSION, DatasetSource, FineTuneJobSpec
from kubetune.api.v1alpha1 import KIND as FINETUNEJOB_KIND
from kubetune.operator.children import (
    TMP_SIZE,
    TRAINER_UID,
    Owner,
    child_name,
    cloud_storage_env,
    cloud_storage_volumes,
    container_security,
    hardening_env,
    hub_env,
    hub_volumes,
    labels,
    s3_env,
    s3_volumes,
    storage_env,
)
from kubetune.operator.config import OperatorConfig

# A check embeds at most a few hundred prompts with the base model, a comparison answers a test split
# with two models: minutes on a CPU, not hours.
CHECK_DEADLINE_SECONDS = 1800
# A finished check Job is read within seconds of its end; its record then lives in the monitor's
# status, and the Job is left to the TTL controller.
CHECK_TTL_SECONDS = 3600


def monitor_owner(body: Any) -> Owner:
    """The DriftMonitor as its children see it."""
    meta = body["metadata"]
    return Owner(meta["name"], meta["namespace"], meta["uid"], KIND)


def check_job_name(monitor: str, sequence: int) -> str:
    return child_name(monitor, f"check-{sequence}")


def retraining_name(monitor: str, sequence: int) -> str:
    return child_name(monitor, f"retrain-{sequence}")


def _storage_arguments(spec: DriftMonitorSpec, config: OperatorConfig) -> list[str]:
    """The monitor's S3 endpoint and region, the operator's defaults where it names none."""
    arguments = []
    if endpoint := spec.s3.endpoint or config.default_s3_endpoint:
        arguments += ["--endpoint", endpoint]
    if region := spec.s3.region or config.default_s3_region:
        arguments += ["--region", region]
    return arguments


def check_command(spec: DriftMonitorSpec, config: OperatorConfig, after: str | None) -> list[str]:
    detection = spec.detection
    command = [
        "kubetune",
        "drift",
        "check",
        "--reference",
        spec.target.output_uri,
        "--channel",
        spec.target.channel,
        "--samples",
        spec.samples.uri,
        "--window",
        str(detection.max_samples),
        "--alpha",
        str(detection.alpha),
        "--permutations",
        str(detection.permutations),
        "--methods",
        ",".join(detection.methods),
        "--report",
        TERMINATION_LOG_PATH,
    ]
    command += _storage_arguments(spec, config)
    if after is not None:
        command += ["--after", after]
    return command


def build_check_job(
    owner: Owner, spec: DriftMonitorSpec, config: OperatorConfig, *, sequence: int, after: str | None
) -> dict[str, Any]:
    """Check number ``sequence``: the requests logged after ``after`` against the channel's version."""
    command = check_command(spec, config, after)
    return _monitor_job(owner, spec, config, check_job_name(owner.name, sequence), DRIFT_CHECK_COMPONENT, command)


def compare_job_name(monitor: str, sequence: int) -> str:
    return child_name(monitor, f"compare-{sequence}")


def build_compare_job(
    owner: Owner, spec: DriftMonitorSpec, config: OperatorConfig, *, sequence: int, challenger_uri: str
) -> dict[str, Any]:
    """Retraining number ``sequence``'s challenger against the channel's champion (``kubetune challenge``),
    moving the channel when it wins. The monitor's S3 credentials must be able to write the channel's
    entries under ``target.outputUri``."""
    command = [
        "kubetune",
        "challenge",
        challenger_uri,
        "--channel",
        spec.target.channel,
        "--tolerance",
        str(spec.promotion.tolerance),
        "--promote",
        "--report",
        TERMINATION_LOG_PATH,
    ]
    command += _storage_arguments(spec, config)
    name = compare_job_name(owner.name, sequence)
    return _monitor_job(owner, spec, config, name, DRIFT_COMPARE_COMPONENT, command)


def _monitor_job(
    owner: Owner, spec: DriftMonitorSpec, config: OperatorConfig, name: str, component: str, command: list[str]
) -> dict[str, Any]:
    job_labels = labels(owner, component)
    credentials, credential_mounts = s3_volumes(spec.s3)
    # The versions a monitor checks may stand on a Hub model, known only from their manifests: online.
    token, token_mounts = hub_volumes(spec.hub, reads=True)
    key, key_mounts = cloud_storage_volumes(spec.gcs, spec.azure)
    scratch = spec.resources.scratch_size
    env = [
        {"name": ENV_SCRATCH, "value": SCRATCH},
        {"name": ENV_CACHE, "value": CACHE},
        {"name": "HOME", "value": f"{SCRATCH}/home"},
        {"name": "HF_HOME", "value": f"{SCRATCH}/hf"},
        {"name": "PYTHONUNBUFFERED", "value": "1"},
        *hub_env(spec.hub, config, reads=True),
        *cloud_storage_env(spec.gcs, spec.azure, config),
        *s3_env(spec.s3),
        *hardening_env(config, gpus=0),
        *storage_env(spec.s3, config, owner.namespace),
    ]
    pod = {
        "restartPolicy": "Never",
        "automountServiceAccountToken": False,
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": TRAINER_UID,
            "runAsGroup": TRAINER_UID,
            "fsGroup": TRAINER_UID,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "containers": [
            {
                "name": TRAINER_CONTAINER,
                "image": config.trainer_image,
                "imagePullPolicy": config.image_pull_policy,
                "command": command,
                "env": env,
                "resources": {
                    "requests": {
                        "cpu": spec.resources.cpu,
                        "memory": spec.resources.memory,
                        "ephemeral-storage": scratch,
                    },
                    "limits": {"memory": spec.resources.memory, "ephemeral-storage": scratch},
                },
                "volumeMounts": [
                    {"name": "tmp", "mountPath": "/tmp"},
                    {"name": "scratch", "mountPath": SCRATCH},
                    *credential_mounts,
                    *token_mounts,
                    *key_mounts,
                ],
                "securityContext": container_security(),
                "terminationMessagePath": TERMINATION_LOG_PATH,
                "terminationMessagePolicy": "File",
            }
        ],
        "volumes": [
            {"name": "tmp", "emptyDir": {"sizeLimit": TMP_SIZE}},
            {"name": "scratch", "emptyDir": {"sizeLimit": scratch}},
            *credentials,
            *token,
            *key,
        ],
    }
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {
            "name": name,
            "namespace": owner.namespace,
            "labels": job_labels,
            "ownerReferences": [owner.reference()],
        },
        "spec": {
            "backoffLimit": 1,
            "completions": 1,
            "parallelism": 1,
            "activeDeadlineSeconds": CHECK_DEADLINE_SECONDS,
            "ttlSecondsAfterFinished": CHECK_TTL_SECONDS,
            # What could not be checked or compared (no new requests, no version on the channel) would
            # not be by a retry either: the next scheduled run is the retry.
            "podFailurePolicy": {
                "rules": [
                    {
                        "action": "FailJob",
                        "onExitCodes": {"containerName": TRAINER_CONTAINER, "operator": "In", "values": [EXIT_CONFIG]},
                    },
                    {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget"}]},
                ]
            },
            "template": {"metadata": {"labels": dict(job_labels)}, "spec": pod},
        },
    }


def retraining_spec(retraining: RetrainingSpec, training_sources: list[str]) -> FineTuneJobSpec:
    """The challenger's spec: the template's, with the champion's training data replayed (its sources
    at weight ``replayFraction``) and no channel of its own, since only the champion/challenger
    comparison may move the guarded channel.

    The replayed sources go through the same hash split as the new data, not ``trainOnly``: with the
    champion's ``dataset.split`` (the defaults, unless both set it alike) every row lands in the split
    it had in the champion's run, so the champion's test rows stay out of the challenger's training and
    both models can be compared on them. Weights apply to the training split only."""
    template = retraining.template
    fraction = retraining.replay_fraction
    replay = [
        DatasetSource(uri=uri, weight=fraction)
        for uri in training_sources
        if fraction > 0 and all(uri != source.uri for source in template.dataset.sources)
    ]
    dataset = template.dataset.model_copy(update={"sources": [*template.dataset.sources, *replay]})
    output = template.output.model_copy(update={"channel": None})
    return template.model_copy(update={"dataset": dataset, "output": output})


def build_retraining(
    owner: Owner, retraining: RetrainingSpec, *, sequence: int, training_sources: list[str], reason: str
) -> dict[str, Any]:
    """Retraining number ``sequence`` as a FineTuneJob owned by the monitor: the operator reconciles it
    like any other, with the same validation and tenant policy."""
    return {
        "apiVersion": API_VERSION,
        "kind": FINETUNEJOB_KIND,
        "metadata": {
            "name": retraining_name(owner.name, sequence),
            "namespace": owner.namespace,
            "labels": labels(owner, RETRAINING_COMPONENT),
            "annotations": {"kubetune.dev/retraining-reason": reason[:1024]},
            "ownerReferences": [owner.reference()],
        },
        "spec": retraining_spec(retraining, training_sources).to_manifest(),
    }
