"""Unit tests of the pure builders: spec -> child manifests."""

from __future__ import annotations

from typing import Any

import yaml

from kubetune.api.contract import (
    EXIT_CANNOT_REPORT,
    EXIT_CONFIG,
    EXIT_DAMAGED,
    EXIT_PREEMPTED,
    EXIT_RESULT_NOT_REPORTED,
    EXIT_RETRYABLE,
)
from kubetune.api.manifest import parse_spec
from kubetune.api.v1alpha1 import FineTuneJobSpec
from kubetune.operator.children import (
    Owner,
    build_preflight_job,
    build_spec_configmap,
    build_trainer_rbac,
    build_training_job,
    build_verification_job,
    child_name,
    runs_as_built,
)
from kubetune.operator.config import OperatorConfig
from tests import builders

OWNER = Owner("tickets", "ml", "1234-uid")
CONFIG = OperatorConfig.from_env(
    {"KUBETUNE_TRAINER_IMAGE": "registry/trainer:1", "KUBETUNE_DEFAULT_S3_ENDPOINT": "https://s3.internal"}
)


def spec(**extra: Any) -> FineTuneJobSpec:
    return builders.spec(**extra)


def container(job: dict[str, Any]) -> dict[str, Any]:
    return job["spec"]["template"]["spec"]["containers"][0]


def test_training_job_requests_gpus_and_schedules_where_asked() -> None:
    job = build_training_job(
        OWNER,
        spec(
            resources={
                "gpus": 4,
                "memory": "64Gi",
                "nodeSelector": {"gpu": "a100"},
                "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
                "priorityClassName": "training",
            },
            activeDeadlineSeconds=3600,
            backoffLimit=5,
            ttlSecondsAfterFinished=600,
        ),
        CONFIG,
    )
    c = container(job)
    assert c["resources"]["requests"]["nvidia.com/gpu"] == "4"
    assert c["resources"]["limits"]["nvidia.com/gpu"] == "4"
    assert c["resources"]["limits"]["memory"] == "64Gi"
    assert c["command"][:3] == ["torchrun", "--standalone", "--nproc-per-node=4"]
    pod = job["spec"]["template"]["spec"]
    assert pod["nodeSelector"] == {"gpu": "a100"}
    assert pod["tolerations"] == [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
    assert pod["priorityClassName"] == "training"
    assert job["spec"]["activeDeadlineSeconds"] == 3600
    assert job["spec"]["backoffLimit"] == 5
    assert job["spec"]["ttlSecondsAfterFinished"] == 600
    assert job["metadata"]["ownerReferences"] == [OWNER.reference()]
    assert OWNER.reference()["controller"] is True


def test_pods_meet_the_restricted_pod_security_standard() -> None:
    for job in (build_training_job(OWNER, spec(), CONFIG), build_preflight_job(OWNER, spec(), CONFIG)):
        pod = job["spec"]["template"]["spec"]
        sc = container(job)["securityContext"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
        assert sc["allowPrivilegeEscalation"] is False
        assert sc["capabilities"] == {"drop": ["ALL"]}
        assert sc["readOnlyRootFilesystem"] is True
        mounts = {m["mountPath"] for m in container(job)["volumeMounts"]}
        assert {"/scratch", "/tmp", "/dev/shm"} <= mounts
        shm = next(v for v in pod["volumes"] if v["name"] == "dshm")
        assert shm["emptyDir"] == {"medium": "Memory", "sizeLimit": "2Gi"}


def test_preflight_job_requests_no_gpu() -> None:
    job = build_preflight_job(OWNER, spec(resources={"gpus": 8}), CONFIG)
    resources = container(job)["resources"]
    assert not any("gpu" in key for key in {**resources["requests"], **resources["limits"]})
    assert container(job)["command"] == ["kubetune", "preflight", "--job", "/etc/kubetune/job.yaml"]
    assert "nodeSelector" not in job["spec"]["template"]["spec"]


def test_pod_failure_policy_fails_fast_on_exits_a_retry_cannot_fix_and_ignores_disruptions() -> None:
    for job in (build_training_job(OWNER, spec(), CONFIG), build_preflight_job(OWNER, spec(), CONFIG)):
        rules = job["spec"]["podFailurePolicy"]["rules"]
        # 2 bad input, 3 the status cannot be written, 4 the result was not written (kubetune.api.contract).
        fail_now = {"containerName": "trainer", "operator": "In", "values": [2, 3, 4]}
        assert {"action": "FailJob", "onExitCodes": fail_now} in rules
        assert {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget"}]} in rules
        assert fail_now["values"] == [EXIT_CONFIG, EXIT_CANNOT_REPORT, EXIT_RESULT_NOT_REPORTED]
        assert EXIT_RETRYABLE not in fail_now["values"] and EXIT_PREEMPTED not in fail_now["values"]


def test_the_trainer_is_told_where_to_say_why_it_stopped() -> None:
    for job in (build_training_job(OWNER, spec(), CONFIG), build_preflight_job(OWNER, spec(), CONFIG)):
        trainer = container(job)
        assert trainer["terminationMessagePath"] == "/dev/termination-log"
        assert trainer["terminationMessagePolicy"] == "FallbackToLogsOnError", "logs when it could not say"
        env = {e["name"]: e.get("value") for e in trainer["env"]}
        assert env["KUBETUNE_TERMINATION_LOG"] == trainer["terminationMessagePath"]


def test_kueue_queue_label_and_created_suspended() -> None:
    job = build_training_job(OWNER, spec(queueName="gpu-queue"), CONFIG)
    assert job["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "gpu-queue"
    assert job["spec"]["suspend"] is True
    assert build_training_job(OWNER, spec(), CONFIG)["spec"]["suspend"] is False


def test_credentials_by_reference_and_ca_bundle_mounted() -> None:
    job = build_training_job(
        OWNER,
        spec(
            s3={
                "credentialsSecret": {"name": "creds", "sessionTokenKey": "token"},
                "caBundle": {"name": "ca", "key": "bundle.pem"},
            }
        ),
        CONFIG,
    )
    env = {e["name"]: e for e in container(job)["env"]}
    assert not [name for name in env if name.startswith("AWS_") and name != "AWS_EC2_METADATA_DISABLED"]
    assert env["KUBETUNE_S3_CREDENTIALS_DIR"]["value"] == "/var/run/secrets/kubetune/s3"
    volumes = {v["name"]: v for v in job["spec"]["template"]["spec"]["volumes"]}
    assert volumes["s3-credentials"]["secret"]["items"] == [
        {"key": "AWS_ACCESS_KEY_ID", "path": "access-key-id"},
        {"key": "AWS_SECRET_ACCESS_KEY", "path": "secret-access-key"},
        {"key": "token", "path": "session-token"},
    ]
    assert env["KUBETUNE_S3_CA_BUNDLE"]["value"] == "/etc/kubetune/ca/bundle.pem"
    assert volumes["s3-ca"]["configMap"]["name"] == "ca"


def test_pods_are_hardened_against_the_node() -> None:
    """No GPU granted: no GPU visible (the CUDA base sets NVIDIA_VISIBLE_DEVICES=all); no instance
    metadata unless the platform allows it; every emptyDir and the container's disk use bounded."""
    preflight = build_preflight_job(OWNER, spec(resources={"gpus": 2}), CONFIG)
    training = build_training_job(OWNER, spec(resources={"gpus": 2}), CONFIG)
    cpu_training = build_training_job(OWNER, spec(resources={"gpus": 0}), CONFIG)

    def env(job: dict[str, Any]) -> dict[str, str]:
        return {e["name"]: e.get("value", "") for e in container(job)["env"]}

    assert env(preflight)["NVIDIA_VISIBLE_DEVICES"] == env(cpu_training)["NVIDIA_VISIBLE_DEVICES"] == "void"
    assert "NVIDIA_VISIBLE_DEVICES" not in env(training)
    assert all(env(job)["AWS_EC2_METADATA_DISABLED"] == "true" for job in (preflight, training, cpu_training))
    node_identity = OperatorConfig.from_env({"KUBETUNE_ALLOW_INSTANCE_METADATA": "true"})
    assert "AWS_EC2_METADATA_DISABLED" not in env(build_training_job(OWNER, spec(), node_identity))
    for job in (preflight, training):
        pod = job["spec"]["template"]["spec"]
        assert all(v["emptyDir"].get("sizeLimit") for v in pod["volumes"] if "emptyDir" in v), pod["volumes"]
        resources = container(job)["resources"]
        # scratch 50Gi (the default) + /tmp 1Gi + logs 512Mi
        assert resources["requests"]["ephemeral-storage"] == resources["limits"]["ephemeral-storage"] == "52736Mi"
    on_a_claim = build_training_job(OWNER, spec(storage={"pvc": {"claimName": "scratch"}}), CONFIG)
    assert container(on_a_claim)["resources"]["limits"]["ephemeral-storage"] == "1536Mi"


def test_irsa_means_no_secret_env_and_the_users_service_account() -> None:
    job = build_training_job(OWNER, spec(serviceAccountName="s3-reader"), CONFIG)
    names = {e["name"] for e in container(job)["env"]}
    assert "KUBETUNE_S3_CREDENTIALS_DIR" not in names
    assert job["spec"]["template"]["spec"]["serviceAccountName"] == "s3-reader"
    rbac = build_trainer_rbac(OWNER, spec(serviceAccountName="s3-reader"))
    assert [o["kind"] for o in rbac] == ["Role", "RoleBinding"], "the user's account is bound, not replaced"
    assert rbac[1]["subjects"][0]["name"] == "s3-reader"


def test_trainer_role_is_limited_to_its_own_status() -> None:
    role = next(o for o in build_trainer_rbac(OWNER, spec()) if o["kind"] == "Role")
    assert role["rules"] == [
        {
            "apiGroups": ["kubetune.dev"],
            "resources": ["finetunejobs/status"],
            "resourceNames": ["tickets"],
            "verbs": ["patch"],
        }
    ]


def test_pvc_scratch_and_spec_configmap_with_operator_defaults() -> None:
    job = build_training_job(OWNER, spec(storage={"pvc": {"claimName": "scratch-pvc"}}), CONFIG)
    scratch = next(v for v in job["spec"]["template"]["spec"]["volumes"] if v["name"] == "scratch")
    assert scratch == {"name": "scratch", "persistentVolumeClaim": {"claimName": "scratch-pvc"}}
    cm = build_spec_configmap(OWNER, spec(), CONFIG)
    assert "endpoint: https://s3.internal" in cm["data"]["job.yaml"]
    assert "uid: 1234-uid" in cm["data"]["job.yaml"]


def test_child_names_are_deterministic_and_fit_a_dns_label() -> None:
    long = "a" * 70
    name = child_name(long, "preflight")
    assert len(name) <= 63
    assert name == child_name(long, "preflight")
    assert child_name("short", "train") == "short-train"


def test_preflight_learns_the_declared_gpu_memory_from_the_job_file_only() -> None:
    job_spec = spec(resources={"gpus": 1, "gpuMemory": "24Gi"})
    configmap = build_spec_configmap(OWNER, job_spec, CONFIG)
    mounted = yaml.safe_load(configmap["data"]["job.yaml"])
    assert mounted["spec"]["resources"]["gpuMemory"] == "24Gi"
    env = {e["name"] for e in container(build_preflight_job(OWNER, job_spec, CONFIG))["env"]}
    assert not any("GPU_MEMORY" in name for name in env), "the value reaches the pod once: in the job file"


def test_every_child_is_labelled_and_owned_by_its_finetunejob() -> None:
    job_spec = spec()
    everything = [
        build_spec_configmap(OWNER, job_spec, CONFIG),
        *build_trainer_rbac(OWNER, job_spec),
        build_preflight_job(OWNER, job_spec, CONFIG),
        build_training_job(OWNER, job_spec, CONFIG),
        build_verification_job(OWNER, job_spec, CONFIG, version=builders.VERSION, claimed_checks={"task": True}),
    ]
    kinds = ["ConfigMap", "ServiceAccount", "Role", "RoleBinding", "Job", "Job", "Job"]
    assert [o["kind"] for o in everything] == kinds
    for obj in everything:
        meta = obj["metadata"]
        assert meta["namespace"] == "ml"
        assert meta["ownerReferences"] == [
            {
                "apiVersion": "kubetune.dev/v1alpha1",
                "kind": "FineTuneJob",
                "name": "tickets",
                "uid": "1234-uid",
                "controller": True,
                "blockOwnerDeletion": True,
            }
        ]
        labels = meta["labels"]
        assert labels["app.kubernetes.io/name"] == "kubetune"
        assert labels["app.kubernetes.io/managed-by"] == "kubetune-operator"
        assert labels["app.kubernetes.io/instance"] == labels["kubetune.dev/job"] == "tickets"
    components = {o["metadata"]["name"]: o["metadata"]["labels"]["app.kubernetes.io/component"] for o in everything}
    assert components["tickets-preflight"] == "preflight"
    assert components["tickets-train"] == "trainer"
    assert components["tickets-verify"] == "verify"


def test_pods_get_the_job_spec_and_the_trainer_environment() -> None:
    job = build_training_job(OWNER, spec(storage={"scratchSize": "80Gi", "shmSize": "8Gi"}), CONFIG)
    pod = job["spec"]["template"]["spec"]
    env = {e["name"]: e.get("value") for e in container(job)["env"]}
    assert env["KUBETUNE_JOB_NAME"] == "tickets" and env["KUBETUNE_JOB_NAMESPACE"] == "ml"
    assert env["KUBETUNE_REPORT_STATUS"] == "true"
    assert (env["KUBETUNE_SCRATCH"], env["KUBETUNE_CACHE"]) == ("/scratch", "/scratch/cache")
    assert (env["HOME"], env["HF_HOME"]) == ("/scratch/home", "/scratch/hf")
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["job-spec"]["configMap"] == {"name": "tickets-spec"}
    assert volumes["scratch"]["emptyDir"] == {"sizeLimit": "80Gi"}
    assert volumes["dshm"]["emptyDir"] == {"medium": "Memory", "sizeLimit": "8Gi"}
    mount = next(m for m in container(job)["volumeMounts"] if m["name"] == "job-spec")
    assert (mount["mountPath"], mount["readOnly"]) == ("/etc/kubetune/job.yaml", True)
    assert container(job)["command"] == ["kubetune", "train", "--job", "/etc/kubetune/job.yaml"]
    assert pod["restartPolicy"] == "Never"
    assert pod["serviceAccountName"] == "tickets-trainer"
    assert pod["terminationGracePeriodSeconds"] == 120
    assert container(job)["image"] == "registry/trainer:1"


def test_spec_configmap_carries_the_whole_finetunejob() -> None:
    job_spec = spec(s3={"region": "eu-central-1"})
    document = yaml.safe_load(build_spec_configmap(OWNER, job_spec, CONFIG)["data"]["job.yaml"])
    assert document["apiVersion"] == "kubetune.dev/v1alpha1" and document["kind"] == "FineTuneJob"
    assert document["metadata"] == {"name": "tickets", "namespace": "ml", "uid": "1234-uid"}
    assert document["spec"]["s3"]["endpoint"] == "https://s3.internal", "the operator default fills the gap"
    assert document["spec"]["s3"]["region"] == "eu-central-1", "the job's own value wins"
    assert parse_spec(document["spec"]).dataset == job_spec.dataset


def test_the_verification_job_runs_the_platforms_check_with_nothing_of_the_tenants_choosing() -> None:
    """The tenant's image, scheduling and GPUs stay with training: the check runs the chart's trainer
    image with the operator's command, no API token, no scratch, and fails at once on a mismatch."""
    tenant = spec(
        image="registry/trainer:1-tenant",
        resources={"gpus": 4, "nodeSelector": {"gpu": "a100"}},
        storage={"scratchSize": "500Gi"},
        s3={"credentialsSecret": {"name": "team-s3"}},
        ttlSecondsAfterFinished=600,
    )
    claimed = {"task": True, "forgetting.knownAnswers": True, "labelCollapse": None}
    job = build_verification_job(OWNER, tenant, CONFIG, version=builders.VERSION, claimed_checks=claimed)
    pod, c = job["spec"]["template"]["spec"], container(job)
    assert job["metadata"]["name"] == "tickets-verify"
    assert c["image"] == "registry/trainer:1", "the platform's image, not spec.image"
    assert c["command"] == [
        "kubetune",
        "verify",
        "--job",
        "/etc/kubetune/job.yaml",
        "--version",
        builders.VERSION,
        "--claimed-gate",
        '{"forgetting.knownAnswers": true, "labelCollapse": null, "task": true}',
    ]
    assert pod["automountServiceAccountToken"] is False
    assert "nodeSelector" not in pod and not any("gpu" in k for k in c["resources"]["requests"])
    assert {"name": "NVIDIA_VISIBLE_DEVICES", "value": "void"} in c["env"]
    assert {v["name"] for v in pod["volumes"]} == {"job-spec", "tmp", "s3-credentials"}
    assert c["resources"]["limits"]["ephemeral-storage"] == "1536Mi", "no scratch volume to account for"
    rules = job["spec"]["podFailurePolicy"]["rules"]
    assert {
        "action": "FailJob",
        "onExitCodes": {"containerName": "trainer", "operator": "In", "values": [1, 2]},
    } in rules
    assert [EXIT_DAMAGED, EXIT_CONFIG] == [1, 2]
    assert job["spec"]["ttlSecondsAfterFinished"] == 600 and job["spec"]["activeDeadlineSeconds"] == 3600
    channel = spec(output={"uri": "s3://models/x/", "channel": "prod"})
    promoting = build_verification_job(OWNER, channel, CONFIG, version=builders.VERSION, claimed_checks=claimed)
    assert container(promoting)["command"][-2:] == ["--promote-to", "prod"], "the channel moves once verified"


def test_an_existing_job_counts_as_the_check_only_when_it_runs_what_the_operator_builds() -> None:
    built = build_verification_job(OWNER, spec(), CONFIG, version=builders.VERSION, claimed_checks={"task": True})
    assert runs_as_built(yaml.safe_load(yaml.safe_dump(built)), built)
    forged = yaml.safe_load(yaml.safe_dump(built))
    container(forged)["command"] = ["true"]
    assert not runs_as_built(forged, built)
    other_version = build_verification_job(
        OWNER, spec(), CONFIG, version="v20250101-000000-ffffff", claimed_checks={"task": True}
    )
    assert not runs_as_built(other_version, built)
    with_init = yaml.safe_load(yaml.safe_dump(built))
    with_init["spec"]["template"]["spec"]["initContainers"] = [{"name": "x", "image": "registry/trainer:1"}]
    assert not runs_as_built(with_init, built)
