"""hf:// on the control plane: the platform's Hub endpoint (never the job's), the job's token by opted-in
Secret, the storage prefixes bounding Hub repositories as they bound buckets, and the egress policy
opening the Hub's ranges only to jobs that read it. Pure parts as data; then through the real operator
against the test API server."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from kubetune.api import contract
from kubetune.api.manifest import parse_spec
from kubetune.api.prefixes import within
from kubetune.operator.children import Owner, build_preflight_job, build_trainer_network_policy, build_training_job
from kubetune.operator.config import ConfigError, OperatorConfig
from kubetune.operator.networkpolicy import TrainerEgress
from kubetune.operator.storagepolicy import StoragePolicy
from kubetune_trainer.environment import TrainerEnvironment
from tests.kubeapi.cluster import TestCluster
from tests.operator.cluster import Cluster, wait_for
from tests.operator.conftest import running_operator
from tests.operator.test_lifecycle import JOB
from tests.operator.test_validation import assert_rejected, with_spec

HUB_MODEL = "hf://HuggingFaceTB/SmolLM2-135M-Instruct@main"
MIRROR = "https://hf-mirror.example.com/hub"
TOKEN = {"hub": {"tokenSecret": {"name": "hub-token", "key": "HF_TOKEN"}}}


def spec(**changes: Any) -> Any:
    return parse_spec({**JOB["spec"], **changes})


def container_of(job: dict[str, Any]) -> dict[str, Any]:
    (container,) = job["spec"]["template"]["spec"]["containers"]
    return dict(container)


def env_of(job: dict[str, Any]) -> dict[str, str]:
    return {e["name"]: e.get("value", "") for e in container_of(job)["env"]}


def test_hub_repositories_stay_under_the_namespaces_prefixes() -> None:
    policy = StoragePolicy.parse(
        ["*"], ["s3://ml-{namespace}/", "hf://HuggingFaceTB/", "hf://datasets/{namespace}/"], platform_endpoint=None
    )
    inside = spec(
        baseModel={"uri": HUB_MODEL},
        dataset={"sources": [{"uri": "hf://datasets/team-a/tickets@v2/train/"}]},
        output={"uri": "s3://ml-team-a/out/"},
    )
    assert policy.refusal(inside, "team-a") is None
    assert policy.refusal(inside, "team-b") == (
        "spec.dataset.sources[0].uri",
        "hf://datasets/team-a/tickets@v2/train/ is outside the storage this namespace may use "
        "(s3://ml-team-b/, hf://HuggingFaceTB/, hf://datasets/team-b/)",
    )
    other_owner = spec(baseModel={"uri": "hf://HuggingFaceTB-evil/model"}, output={"uri": "s3://ml-team-a/out/"})
    assert policy.refusal(other_owner, "team-a") == (
        "spec.baseModel.uri",
        "hf://HuggingFaceTB-evil/model is outside the storage this namespace may use "
        "(s3://ml-team-a/, hf://HuggingFaceTB/, hf://datasets/team-a/)",
    )
    # A list naming only buckets admits no Hub repository; an empty list admits any.
    buckets_only = StoragePolicy.parse(["*"], ["s3://ml-{namespace}/"], platform_endpoint=None)
    refused = buckets_only.refusal(spec(baseModel={"uri": HUB_MODEL}, output={"uri": "s3://ml-a/x/"}), "a")
    assert refused is not None and refused[0] == "spec.baseModel.uri"
    assert (
        StoragePolicy.parse(["*"], [], platform_endpoint=None).refusal(spec(baseModel={"uri": HUB_MODEL}), "a") is None
    )
    # A repository prefix admits the repository at any revision, and never a longer name.
    assert within("hf://org/model@v2", ["hf://org/model/"]) and within("hf://org/model", ["hf://org/model/"])
    assert not within("hf://org/model-v2@main", ["hf://org/model/"])


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"KUBETUNE_ALLOWED_STORAGE_PREFIXES": "hf://org/model@main/"}, "no @revision"),
        ({"KUBETUNE_ALLOWED_STORAGE_PREFIXES": "hf://datasets/"}, "hf://datasets/owner/"),
        ({"KUBETUNE_HUB_ENDPOINT": "https://user:pass@mirror.example.com"}, "hub.endpoint"),
        ({"KUBETUNE_HUB_ENDPOINT": "ftp://mirror.example.com"}, "hub.endpoint"),
    ],
)
def test_a_bad_hub_setting_stops_the_operator_at_startup(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        OperatorConfig.from_env(env)


def test_only_a_job_that_reads_the_hub_reaches_it_with_the_platforms_endpoint_and_its_token() -> None:
    config = OperatorConfig.from_env({"KUBETUNE_HUB_ENDPOINT": MIRROR + "/"})
    owner = Owner("tickets", "ml", "uid-1")
    reads = spec(baseModel={"uri": HUB_MODEL}, **TOKEN)
    for job in (build_preflight_job(owner, reads, config), build_training_job(owner, reads, config)):
        env = env_of(job)
        assert env[contract.ENV_HUB_OFFLINE] == "0" and env[contract.ENV_HUB_ENDPOINT] == MIRROR
        read = TrainerEnvironment.from_env(env)
        assert read.hub_endpoint == MIRROR
        mounts = {m["name"]: m for m in container_of(job)["volumeMounts"]}
        volumes = {v["name"]: v for v in job["spec"]["template"]["spec"]["volumes"]}
        assert read.hub_token_file is not None
        assert str(read.hub_token_file.parent) == mounts["hub-token"]["mountPath"]
        assert volumes["hub-token"]["secret"]["secretName"] == "hub-token"
        assert volumes["hub-token"]["secret"]["items"] == [{"key": "HF_TOKEN", "path": read.hub_token_file.name}]
    # The same token named by a job that reads no hf:// URI is neither mounted nor the pod online.
    offline = build_training_job(owner, spec(**TOKEN), config)
    assert env_of(offline)[contract.ENV_HUB_OFFLINE] == "1"
    assert contract.ENV_HUB_ENDPOINT not in env_of(offline) and contract.ENV_HUB_TOKEN_FILE not in env_of(offline)
    assert "hub-token" not in {v["name"] for v in offline["spec"]["template"]["spec"]["volumes"]}


def test_the_egress_policy_opens_the_hubs_ranges_only_to_a_job_that_reads_it() -> None:
    egress = TrainerEgress.parse(
        json.dumps({"enabled": True, "apiServerCidrs": ["10.96.0.1/32"], "hubCidrs": ["0.0.0.0/0"], "hubPorts": [443]})
    )
    assert egress is not None
    owner = Owner("tickets", "ml", "uid-1")
    reading = build_trainer_network_policy(owner, egress, reads_hub=True)["spec"]["egress"]
    hub_rule = {
        "to": [{"ipBlock": {"cidr": "0.0.0.0/0", "except": ["169.254.0.0/16"]}}],
        "ports": [{"protocol": "TCP", "port": 443}],
    }
    assert hub_rule in reading
    assert hub_rule not in build_trainer_network_policy(owner, egress)["spec"]["egress"]


def test_through_the_operator_a_hub_job_runs_online_and_one_outside_its_prefixes_is_refused(
    cluster: Cluster, test_cluster: TestCluster
) -> None:
    cluster.create_secret("hub-token", {"HF_TOKEN": "hf_secret"}, hub_token=True)
    settings = {
        "KUBETUNE_HUB_ENDPOINT": MIRROR,
        "KUBETUNE_ALLOWED_STORAGE_PREFIXES": "s3://models/,s3://datasets/,hf://HuggingFaceTB/",
    }
    with running_operator(test_cluster, **settings):
        cluster.apply(with_spec(baseModel={"uri": "hf://some-one-else/model"}))
        assert_rejected(cluster, "StorageNotAllowed", "spec.baseModel.uri: hf://some-one-else/model is outside")
        allowed = with_spec(baseModel={"uri": HUB_MODEL}, **TOKEN)
        cluster.apply({**allowed, "metadata": {"name": "tickets-hub"}})
        preflight = wait_for(lambda: cluster.job("tickets-hub-preflight"), what="the pre-flight Job")
    env = env_of(preflight)
    assert env[contract.ENV_HUB_OFFLINE] == "0" and env[contract.ENV_HUB_ENDPOINT] == MIRROR
    assert env[contract.ENV_HUB_TOKEN_FILE] == f"{contract.HUB_TOKEN_DIR}/{contract.HUB_TOKEN_FILE}"
    finetunejob = json.dumps(cluster.finetunejob("tickets-hub"))
    assert "hf_secret" not in finetunejob and "hf_secret" not in json.dumps(preflight), "the token stays in its Secret"


def test_a_job_from_a_published_version_and_a_drift_monitors_pods_may_read_the_hub() -> None:
    """A version's base model is known only from its manifest: a job continuing one, or learning from
    one, and a monitor checking one, reach the platform's Hub with their own token."""
    from kubetune.api.driftmonitor import KIND as MONITOR_KIND
    from kubetune.api.driftmonitor import DriftMonitorSpec
    from kubetune.operator.driftjobs import build_check_job
    from tests.operator.test_trainer_egress import MONITOR

    config = OperatorConfig.from_env({"KUBETUNE_HUB_ENDPOINT": MIRROR})
    owner = Owner("tickets", "ml", "uid-1")
    continuing = spec(continual={"from": "s3://models/tickets/v20261201-000000-abcdef"})
    assert env_of(build_training_job(owner, continuing, config))[contract.ENV_HUB_OFFLINE] == "0"
    monitor = DriftMonitorSpec.model_validate({**MONITOR, **TOKEN})
    check = build_check_job(Owner("tickets", "ml", "uid-m", MONITOR_KIND), monitor, config, sequence=1, after=None)
    env = env_of(check)
    assert env[contract.ENV_HUB_OFFLINE] == "0" and env[contract.ENV_HUB_ENDPOINT] == MIRROR
    assert TrainerEnvironment.from_env(env).hub_token_file == Path(contract.HUB_TOKEN_DIR) / contract.HUB_TOKEN_FILE
    assert "hub-token" in {v["name"] for v in check["spec"]["template"]["spec"]["volumes"]}
