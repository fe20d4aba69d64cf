"""gs:// on the control plane: the platform's Cloud Storage endpoint (never the job's), the job's
service-account key by opted-in Secret, and the storage prefixes bounding buckets of every scheme.
Pure parts as data; then through the real operator against the test API server. The trainer's side,
against Cloud Storage on loopback, is tests/trainer/test_gcs_storage.py."""

from __future__ import annotations

import json
import re
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

ENDPOINT = "https://storage-kubetune.p.googleapis.com"
KEY = {"gcs": {"credentialsSecret": {"name": "gcs-key", "key": "sa.json"}}}
ON_GCS = {
    "dataset": {"sources": [{"uri": "gs://ml-team-a/data/tickets.jsonl"}]},
    "output": {"uri": "gs://ml-team-a/models/"},
}


def spec(**changes: Any) -> Any:
    return parse_spec({**JOB["spec"], **changes})


def test_buckets_of_every_scheme_stay_under_the_namespaces_prefixes() -> None:
    policy = StoragePolicy.parse(["*"], ["gs://ml-{namespace}/", "s3://models/"], platform_endpoint=None)
    inside = spec(**ON_GCS)
    assert policy.refusal(inside, "team-a") is None
    assert policy.refusal(inside, "team-b") == (
        "spec.dataset.sources[0].uri",
        "gs://ml-team-a/data/tickets.jsonl is outside the storage this namespace may use (gs://ml-team-b/, s3://models/)",
    )
    # A list naming only S3 buckets admits no Cloud Storage bucket, whatever its name.
    s3_only = StoragePolicy.parse(["*"], ["s3://ml-{namespace}/"], platform_endpoint=None)
    refused = s3_only.refusal(spec(**ON_GCS), "team-a")
    assert refused is not None and refused[0] == "spec.dataset.sources[0].uri"


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"KUBETUNE_ALLOWED_STORAGE_PREFIXES": "gs://"}, "expected s3://bucket/, gs://bucket/"),
        ({"KUBETUNE_ALLOWED_STORAGE_PREFIXES": "gcs://ml/"}, "expected s3://bucket/, gs://bucket/"),
        ({"KUBETUNE_GCS_ENDPOINT": "https://user:pass@storage.example.com"}, "gcs.endpoint"),
    ],
)
def test_a_bad_cloud_storage_setting_stops_the_operator_at_startup(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        OperatorConfig.from_env(env)


def test_every_pod_of_a_job_reaches_the_platforms_endpoint_with_the_jobs_key_as_a_file() -> None:
    config = OperatorConfig.from_env({"KUBETUNE_GCS_ENDPOINT": ENDPOINT + "/"})
    owner = Owner("tickets", "ml", "uid-1")
    for job in (
        build_preflight_job(owner, spec(**ON_GCS, **KEY), config),
        build_training_job(owner, spec(**ON_GCS, **KEY), config),
    ):
        read = TrainerEnvironment.from_env(env_of(job))
        assert read.gcs_endpoint == ENDPOINT
        mounts = {m["name"]: m for m in container_of(job)["volumeMounts"]}
        volumes = {v["name"]: v for v in job["spec"]["template"]["spec"]["volumes"]}
        assert read.gcs_key_file is not None and str(read.gcs_key_file.parent) == mounts["gcs-credentials"]["mountPath"]
        assert mounts["gcs-credentials"]["readOnly"] is True
        secret = volumes["gcs-credentials"]["secret"]
        assert secret["secretName"] == "gcs-key" and secret["items"] == [
            {"key": "sa.json", "path": read.gcs_key_file.name}
        ]
    # No key named: nothing mounted, the pod's own identity (Workload Identity); the endpoint stays the platform's.
    plain = env_of(build_training_job(owner, spec(**ON_GCS), config))
    assert contract.ENV_GCS_KEY_FILE not in plain and plain[contract.ENV_GCS_ENDPOINT] == ENDPOINT
    assert TrainerEnvironment.from_env(plain).gcs_key_file is None
    # No endpoint set by the platform: Google's (the client's default), whatever the job says.
    assert contract.ENV_GCS_ENDPOINT not in env_of(
        build_training_job(owner, spec(**ON_GCS), OperatorConfig.from_env({}))
    )


def test_through_the_operator_a_key_must_be_opted_in_and_stays_in_its_secret(
    cluster: Cluster, test_cluster: TestCluster
) -> None:
    cluster.create_secret(
        "gcs-key", {"sa.json": '{"private_key": "-----BEGIN PRIVATE KEY-----secret"}'}
    )  # S3's label only
    with running_operator(test_cluster, KUBETUNE_GCS_ENDPOINT=ENDPOINT):
        cluster.apply(with_spec(**ON_GCS, **KEY))
        assert_rejected(
            cluster,
            "SecretNotAllowed",
            "spec.gcs.credentialsSecret.name: Secret 'gcs-key' is not labelled kubetune.dev/gcs-credentials=true",
        )
        cluster.create_secret(
            "gcs-key-2", {"sa.json": '{"private_key": "-----BEGIN PRIVATE KEY-----secret"}'}, gcs_key=True
        )
        allowed = with_spec(**ON_GCS, gcs={"credentialsSecret": {"name": "gcs-key-2", "key": "sa.json"}})
        cluster.apply({**allowed, "metadata": {"name": "tickets-gcs"}})
        preflight = wait_for(lambda: cluster.job("tickets-gcs-preflight"), what="the pre-flight Job")
    env = env_of(preflight)
    assert env[contract.ENV_GCS_ENDPOINT] == ENDPOINT
    assert TrainerEnvironment.from_env(env).gcs_key_file == Path(contract.GCS_CREDENTIALS_DIR) / contract.GCS_KEY_FILE
    assert "PRIVATE KEY" not in json.dumps(cluster.finetunejob("tickets-gcs")) + json.dumps(preflight)
