"""spec.tracking.mlflow on the control plane: the platform's MLflow server (never the job's), set on
the training pod only; a job asking for it where the platform has none is refused before any pod; the
egress policy opens MLflow's ranges to tracked jobs only. The trainer's side, against a real MLflow
server: tests/trainer/test_mlflow_tracking.py."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from kubetune.api import contract
from kubetune.api.manifest import parse_spec
from kubetune.operator.children import Owner, build_preflight_job, build_trainer_network_policy, build_training_job
from kubetune.operator.config import ConfigError, OperatorConfig
from kubetune.operator.networkpolicy import TrainerEgress
from kubetune.operator.validation import check_policy, check_references
from kubetune_trainer.environment import TrainerEnvironment
from tests.kubeapi.cluster import TestCluster
from tests.operator.cluster import Cluster, wait_for
from tests.operator.conftest import running_operator
from tests.operator.test_lifecycle import JOB
from tests.operator.test_quota import pass_preflight
from tests.operator.test_validation import assert_rejected, with_spec

MLFLOW = "http://mlflow.mlflow.svc:5000"
TRACKED = {"tracking": {"mlflow": {"registeredModel": "tickets"}}}


def env_of(job: dict[str, Any]) -> dict[str, str]:
    (container,) = job["spec"]["template"]["spec"]["containers"]
    return {e["name"]: e.get("value", "") for e in container["env"]}


def test_only_a_tracked_jobs_training_pod_gets_the_platforms_mlflow_server() -> None:
    config = OperatorConfig.from_env({"KUBETUNE_MLFLOW_URI": MLFLOW + "/"})
    owner = Owner("tickets", "ml", "uid-1")
    tracked = parse_spec({**JOB["spec"], **TRACKED})
    training = env_of(build_training_job(owner, tracked, config))
    assert training[contract.ENV_MLFLOW_TRACKING_URI] == MLFLOW
    assert TrainerEnvironment.from_env(training).mlflow_tracking_uri == MLFLOW
    assert contract.ENV_MLFLOW_TRACKING_URI not in env_of(build_preflight_job(owner, tracked, config)), (
        "no run to record"
    )
    untracked = parse_spec(JOB["spec"])
    assert contract.ENV_MLFLOW_TRACKING_URI not in env_of(build_training_job(owner, untracked, config))


def test_the_mlflow_login_is_mounted_in_the_training_pod_only_as_the_contract_names_it() -> None:
    config = OperatorConfig.from_env({"KUBETUNE_MLFLOW_URI": MLFLOW})
    owner = Owner("tickets", "ml", "uid-1")
    login = {"name": "mlflow-login", "passwordKey": "token"}
    spec = parse_spec({**JOB["spec"], "tracking": {"mlflow": {"credentialsSecret": login}}})
    training = build_training_job(owner, spec, config)["spec"]["template"]["spec"]
    (volume,) = [v for v in training["volumes"] if v.get("secret", {}).get("secretName") == "mlflow-login"]
    assert volume["secret"]["items"] == [
        {"key": "username", "path": contract.MLFLOW_USERNAME_FILE},
        {"key": "token", "path": contract.MLFLOW_PASSWORD_FILE},
    ], "only the two keys named, nothing else of the Secret"
    (mount,) = [m for m in training["containers"][0]["volumeMounts"] if m["name"] == volume["name"]]
    assert mount == {"name": volume["name"], "mountPath": contract.MLFLOW_CREDENTIALS_DIR, "readOnly": True}
    env = env_of(build_training_job(owner, spec, config))
    assert TrainerEnvironment.from_env(env).mlflow_credentials_dir == Path(contract.MLFLOW_CREDENTIALS_DIR)
    preflight = build_preflight_job(owner, spec, config)
    assert "mlflow-login" not in json.dumps(preflight) and contract.ENV_MLFLOW_CREDENTIALS_DIR not in env_of(preflight)
    untracked = build_training_job(owner, parse_spec(JOB["spec"]), config)
    assert contract.ENV_MLFLOW_CREDENTIALS_DIR not in env_of(untracked) and "mlflow" not in json.dumps(
        untracked["spec"]["template"]["spec"]["volumes"]
    )


def test_an_mlflow_token_is_mounted_as_its_one_key_and_must_be_opted_in() -> None:
    config = OperatorConfig.from_env({"KUBETUNE_MLFLOW_URI": MLFLOW})
    owner = Owner("tickets", "ml", "uid-1")
    spec = parse_spec({**JOB["spec"], "tracking": {"mlflow": {"tokenSecret": {"name": "mlflow-token", "key": "pat"}}}})
    training = build_training_job(owner, spec, config)["spec"]["template"]["spec"]
    (volume,) = [v for v in training["volumes"] if v.get("secret", {}).get("secretName") == "mlflow-token"]
    assert volume["secret"]["items"] == [{"key": "pat", "path": contract.MLFLOW_TOKEN_FILE}]
    env = env_of(build_training_job(owner, spec, config))
    assert TrainerEnvironment.from_env(env).mlflow_credentials_dir == Path(contract.MLFLOW_CREDENTIALS_DIR)
    assert "mlflow-token" not in json.dumps(build_preflight_job(owner, spec, config))

    def read(kind: str, namespace: str, name: str) -> dict[str, object] | None:  # a Secret without the label
        return {"metadata": {"name": name, "labels": {}}} if kind == "Secret" else None

    problem = check_references(spec, "ml", read)
    assert problem is not None and problem.reason == "SecretNotAllowed"
    assert problem.message.startswith("spec.tracking.mlflow.tokenSecret.name: Secret 'mlflow-token' is not labelled")


def test_a_tracked_job_where_the_platform_has_no_mlflow_is_refused_at_its_field() -> None:
    problem = check_policy(parse_spec({**JOB["spec"], **TRACKED}), "ml", OperatorConfig.from_env({}))
    assert problem is not None and problem.reason == "TrackingNotAvailable"
    assert problem.message.startswith("spec.tracking.mlflow: this platform has no MLflow server")


@pytest.mark.parametrize("uri", ["mlflow.svc:5000", "http://user:pass@mlflow:5000", "http://mlflow:5000/?x=1"])
def test_a_bad_mlflow_uri_stops_the_operator_at_startup(uri: str) -> None:
    with pytest.raises(ConfigError, match=r"KUBETUNE_MLFLOW_URI=.*\(Helm value tracking\.mlflow\.uri\)"):
        OperatorConfig.from_env({"KUBETUNE_MLFLOW_URI": uri})


def test_the_egress_policy_opens_mlflow_to_tracked_jobs_only() -> None:
    egress = TrainerEgress.parse(
        json.dumps({"enabled": True, "apiServerCidrs": ["10.96.0.1/32"], "trackingCidrs": ["10.40.0.0/16"]})
    )
    assert egress is not None
    owner = Owner("tickets", "ml", "uid-1")
    rule = {
        "to": [{"ipBlock": {"cidr": "10.40.0.0/16"}}],
        "ports": [{"protocol": "TCP", "port": port} for port in (443, 80, 5000)],
    }
    assert rule in build_trainer_network_policy(owner, egress, tracked=True)["spec"]["egress"]
    assert rule not in build_trainer_network_policy(owner, egress)["spec"]["egress"]


def test_through_the_operator(cluster: Cluster, test_cluster: TestCluster, operator: Any) -> None:
    """Without a platform MLflow the job fails at its field; with one it trains, reporting there."""
    cluster.apply(with_spec(**TRACKED))
    assert_rejected(cluster, "TrackingNotAvailable", "spec.tracking.mlflow: this platform has no MLflow server")


def test_through_the_operator_with_a_platform_mlflow(cluster: Cluster, test_cluster: TestCluster) -> None:
    with running_operator(test_cluster, KUBETUNE_MLFLOW_URI=MLFLOW):
        cluster.apply(with_spec(**TRACKED))
        pass_preflight(cluster, "tickets")
        training = wait_for(lambda: cluster.job("tickets-train"), what="the training Job")
    assert env_of(training)[contract.ENV_MLFLOW_TRACKING_URI] == MLFLOW


WANDB = "https://wandb.ml-platform.example.com"
WANDB_TRACKED = {"tracking": {"wandb": {"project": "tickets", "apiKeySecret": {"name": "wandb-key"}}}}


def test_a_wandb_tracked_jobs_training_pod_alone_gets_the_platforms_server_and_the_key_as_a_file() -> None:
    config = OperatorConfig.from_env({"KUBETUNE_WANDB_HOST": WANDB})
    owner = Owner("tickets", "ml", "uid-1")
    spec = parse_spec({**JOB["spec"], **WANDB_TRACKED})
    training = build_training_job(owner, spec, config)
    read = TrainerEnvironment.from_env(env_of(training))
    assert read.wandb_base_url == WANDB
    assert read.wandb_key_file == Path(contract.WANDB_CREDENTIALS_DIR) / contract.WANDB_KEY_FILE
    (volume,) = [v for v in training["spec"]["template"]["spec"]["volumes"] if v["name"] == "wandb-credentials"]
    assert volume["secret"]["secretName"] == "wandb-key"
    assert volume["secret"]["items"] == [{"key": "apiKey", "path": contract.WANDB_KEY_FILE}]
    preflight = build_preflight_job(owner, spec, config)
    assert contract.ENV_WANDB_BASE_URL not in env_of(preflight) and "wandb-key" not in json.dumps(preflight)

    def read_secret(kind: str, namespace: str, name: str) -> dict[str, object] | None:  # without the label
        return {"metadata": {"name": name, "labels": {}}} if kind == "Secret" else None

    problem = check_references(spec, "ml", read_secret)
    assert problem is not None and problem.reason == "SecretNotAllowed"
    assert problem.message.startswith("spec.tracking.wandb.apiKeySecret.name: Secret 'wandb-key' is not labelled")
    refused = check_policy(spec, "ml", OperatorConfig.from_env({}))
    assert refused is not None and refused.reason == "TrackingNotAvailable"
    assert refused.message.startswith("spec.tracking.wandb: this platform has no Weights & Biases server")
