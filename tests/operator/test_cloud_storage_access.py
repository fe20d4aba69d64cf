"""gs:// and az:// on the control plane: the platform's endpoint (never the job's), the job's key by
opted-in Secret, and the storage prefixes bounding buckets of every scheme. Pure parts as data; then
through the real operator against the test API server. The trainer's side, against each service on
loopback, is tests/trainer/test_gcs_storage.py and tests/trainer/test_azure_storage.py."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from kubetune.api import contract
from kubetune.api.manifest import parse_spec
from kubetune.operator.children import Owner, build_preflight_job, build_training_job
from kubetune.operator.config import ConfigError, OperatorConfig
from kubetune.operator.storagepolicy import StoragePolicy
from kubetune_trainer.environment import TrainerEnvironment
from tests.kubeapi.cluster import TestCluster
from tests.operator.cluster import Cluster, wait_for
from tests.operator.conftest import running_operator
from tests.operator.test_hub_access import container_of, env_of
from tests.operator.test_lifecycle import JOB
from tests.operator.test_validation import assert_rejected, with_spec


@dataclass(frozen=True)
class Cloud:
    field: str  # the spec's block: gcs, azure
    label: str  # the Secret label a namespace admin sets
    endpoint_env: str
    endpoint: str  # as the platform sets it (Helm value <field>.endpoint)
    key_env: str
    key_dir: str
    key_file: str
    secret_key: str  # the Secret's key the job names
    bucket: str  # "gs://ml-team-a", "az://mlstore/team-a"
    secret_kind: str  # create_secret's keyword opting a Secret in

    def key(self, name: str) -> dict[str, Any]:
        return {self.field: {"credentialsSecret": {"name": name, "key": self.secret_key}}}

    def on_it(self) -> dict[str, Any]:
        return {
            "dataset": {"sources": [{"uri": f"{self.bucket}/data/tickets.jsonl"}]},
            "output": {"uri": f"{self.bucket}/models/"},
        }


GCS = Cloud(
    "gcs",
    "kubetune.dev/gcs-credentials",
    contract.ENV_GCS_ENDPOINT,
    "https://storage-kubetune.p.googleapis.com",
    contract.ENV_GCS_KEY_FILE,
    contract.GCS_CREDENTIALS_DIR,
    contract.GCS_KEY_FILE,
    "sa.json",
    "gs://ml-team-a",
    "gcs_key",
)
AZURE = Cloud(
    "azure",
    "kubetune.dev/azure-credentials",
    contract.ENV_AZURE_ENDPOINT,
    "https://{account}.privatelink.blob.core.windows.net",
    contract.ENV_AZURE_KEY_FILE,
    contract.AZURE_CREDENTIALS_DIR,
    contract.AZURE_KEY_FILE,
    "key1",
    "az://mlstore/team-a",
    "azure_key",
)
CLOUDS = pytest.mark.parametrize("cloud", [GCS, AZURE], ids=["gcs", "azure"])


def spec(**changes: Any) -> Any:
    return parse_spec({**JOB["spec"], **changes})


def test_buckets_of_every_scheme_stay_under_the_namespaces_prefixes() -> None:
    policy = StoragePolicy.parse(
        ["*"], ["gs://ml-{namespace}/", "az://mlstore/{namespace}/", "s3://models/"], platform_endpoint=None
    )
    for cloud in (GCS, AZURE):
        inside = spec(**cloud.on_it())
        assert policy.refusal(inside, "team-a") is None
        refused = policy.refusal(inside, "team-b")
        assert refused == (
            "spec.dataset.sources[0].uri",
            f"{cloud.bucket}/data/tickets.jsonl is outside the storage this namespace may use "
            "(gs://ml-team-b/, az://mlstore/team-b/, s3://models/)",
        )
    # An Azure entry is an account and a container: the same container name in another account is
    # another place.
    elsewhere = spec(output={"uri": "az://otherstore/team-a/models/"}, dataset=AZURE.on_it()["dataset"])
    assert policy.refusal(elsewhere, "team-a") == (
        "spec.output.uri",
        "az://otherstore/team-a/models/ is outside the storage this namespace may use "
        "(gs://ml-team-a/, az://mlstore/team-a/, s3://models/)",
    )
    # A list naming only S3 buckets admits no bucket of another scheme, whatever its name.
    s3_only = StoragePolicy.parse(["*"], ["s3://ml-{namespace}/"], platform_endpoint=None)
    for cloud in (GCS, AZURE):
        refused = s3_only.refusal(spec(**cloud.on_it()), "team-a")
        assert refused is not None and refused[0] == "spec.dataset.sources[0].uri"


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"KUBETUNE_ALLOWED_STORAGE_PREFIXES": "gs://"}, "expected s3://bucket/, gs://bucket/"),
        ({"KUBETUNE_ALLOWED_STORAGE_PREFIXES": "gcs://ml/"}, "expected s3://bucket/, gs://bucket/"),
        ({"KUBETUNE_ALLOWED_STORAGE_PREFIXES": "az://mlstore/"}, "az://account/container/"),
        ({"KUBETUNE_GCS_ENDPOINT": "https://user:pass@storage.example.com"}, "gcs.endpoint"),
        ({"KUBETUNE_AZURE_ENDPOINT": "https://mlstore.blob.core.windows.net"}, "must hold {account}"),
        ({"KUBETUNE_AZURE_ENDPOINT": "https://{account}.blob.core.windows.net?sv=1"}, "azure.endpoint"),
    ],
)
def test_a_bad_cloud_storage_setting_stops_the_operator_at_startup(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        OperatorConfig.from_env(env)


@CLOUDS
def test_every_pod_of_a_job_reaches_the_platforms_endpoint_with_the_jobs_key_as_a_file(cloud: Cloud) -> None:
    config = OperatorConfig.from_env({cloud.endpoint_env: cloud.endpoint + "/"})
    owner = Owner("tickets", "ml", "uid-1")
    for job in (
        build_preflight_job(owner, spec(**cloud.on_it(), **cloud.key("cloud-key")), config),
        build_training_job(owner, spec(**cloud.on_it(), **cloud.key("cloud-key")), config),
    ):
        env = env_of(job)
        assert env[cloud.endpoint_env] == cloud.endpoint
        key_file = Path(env[cloud.key_env])
        mounts = {m["name"]: m for m in container_of(job)["volumeMounts"]}
        volumes = {v["name"]: v for v in job["spec"]["template"]["spec"]["volumes"]}
        volume = f"{cloud.field}-credentials"
        assert str(key_file.parent) == mounts[volume]["mountPath"] and mounts[volume]["readOnly"] is True
        secret = volumes[volume]["secret"]
        assert secret["secretName"] == "cloud-key" and secret["items"] == [
            {"key": cloud.secret_key, "path": key_file.name}
        ]
    # The trainer reads both settings from what the operator set.
    read = TrainerEnvironment.from_env(env)
    assert getattr(read, f"{cloud.field}_endpoint") == cloud.endpoint
    assert getattr(read, f"{cloud.field}_key_file") == Path(cloud.key_dir) / cloud.key_file
    # No key named: nothing mounted, the pod's own identity (Workload Identity); the endpoint stays the platform's.
    plain = env_of(build_training_job(owner, spec(**cloud.on_it()), config))
    assert cloud.key_env not in plain and plain[cloud.endpoint_env] == cloud.endpoint
    assert getattr(TrainerEnvironment.from_env(plain), f"{cloud.field}_key_file") is None
    # No endpoint set by the platform: the cloud's public one (the client's default), whatever the job says.
    assert cloud.endpoint_env not in env_of(
        build_training_job(owner, spec(**cloud.on_it()), OperatorConfig.from_env({}))
    )


@CLOUDS
def test_through_the_operator_a_key_must_be_opted_in_and_stays_in_its_secret(
    cloud: Cloud, cluster: Cluster, test_cluster: TestCluster
) -> None:
    secret_value = {cloud.secret_key: "-----BEGIN PRIVATE KEY-----secret"}
    cluster.create_secret("cloud-key", secret_value)  # S3's label only
    with running_operator(test_cluster, **{cloud.endpoint_env: cloud.endpoint}):
        cluster.apply(with_spec(**cloud.on_it(), **cloud.key("cloud-key")))
        assert_rejected(
            cluster,
            "SecretNotAllowed",
            f"spec.{cloud.field}.credentialsSecret.name: Secret 'cloud-key' is not labelled {cloud.label}=true",
        )
        cluster.create_secret("cloud-key-2", secret_value, **{cloud.secret_kind: True})
        allowed = with_spec(**cloud.on_it(), **cloud.key("cloud-key-2"))
        cluster.apply({**allowed, "metadata": {"name": "tickets-cloud"}})
        preflight = wait_for(lambda: cluster.job("tickets-cloud-preflight"), what="the pre-flight Job")
    env = env_of(preflight)
    assert env[cloud.endpoint_env] == cloud.endpoint
    assert env[cloud.key_env] == f"{cloud.key_dir}/{cloud.key_file}"
    assert "PRIVATE KEY" not in json.dumps(cluster.finetunejob("tickets-cloud")) + json.dumps(preflight)
