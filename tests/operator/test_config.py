"""The operator's configuration: KUBETUNE_* variables, checked once at startup."""

from __future__ import annotations

import pytest

from kubetune.api.v1alpha1 import DEFAULT_TRAINER_IMAGE
from kubetune.operator.config import ConfigError, OperatorConfig


def test_defaults_watch_the_whole_cluster() -> None:
    config = OperatorConfig.from_env({})
    assert config.clusterwide and config.namespaces == ()
    assert config.trainer_image == DEFAULT_TRAINER_IMAGE
    assert config.image_pull_policy == "IfNotPresent"
    assert (config.metrics_port, config.health_port) == (8080, 8081)
    assert config.default_s3_endpoint is None and config.default_s3_region is None
    assert config.pushgateway_url is None and config.trainer_metrics_port == 9090


def test_every_variable_is_read() -> None:
    config = OperatorConfig.from_env(
        {
            "KUBETUNE_NAMESPACES": " ml-team, research ,",
            "KUBETUNE_TRAINER_IMAGE": "registry.internal/trainer:2",
            "KUBETUNE_IMAGE_PULL_POLICY": "Always",
            "KUBETUNE_DEFAULT_S3_ENDPOINT": "https://minio.internal:9000",
            "KUBETUNE_DEFAULT_S3_REGION": "eu-west-1",
            "KUBETUNE_METRICS_PORT": "9090",
            "KUBETUNE_HEALTH_PORT": "9091",
            "KUBETUNE_TRAINER_METRICS_PORT": "9400",
            "KUBETUNE_PUSHGATEWAY_URL": "http://pushgateway.monitoring:9091/",
            "KUBETUNE_PUSH_INTERVAL_SECONDS": "30",
        }
    )
    assert config.namespaces == ("ml-team", "research") and not config.clusterwide
    assert config.trainer_image == "registry.internal/trainer:2"
    assert config.image_pull_policy == "Always"
    assert config.default_s3_endpoint == "https://minio.internal:9000"
    assert config.default_s3_region == "eu-west-1"
    assert (config.metrics_port, config.health_port) == (9090, 9091)
    assert config.trainer_metrics_port == 9400
    assert config.pushgateway_url == "http://pushgateway.monitoring:9091"
    assert config.push_interval_seconds == 30


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"KUBETUNE_HEALTH_PORT": "70000"}, "KUBETUNE_HEALTH_PORT='70000': expected a TCP port number"),
        ({"KUBETUNE_METRICS_PORT": "-1"}, "KUBETUNE_METRICS_PORT='-1': expected a TCP port number"),
        ({"KUBETUNE_IMAGE_PULL_POLICY": "sometimes"}, "KUBETUNE_IMAGE_PULL_POLICY='sometimes'"),
        (
            {"KUBETUNE_PUSHGATEWAY_URL": "pushgateway:9091"},
            "KUBETUNE_PUSHGATEWAY_URL='pushgateway:9091': expected http",
        ),
        (
            {"KUBETUNE_PUSHGATEWAY_URL": "http://pushgateway.{ns}.svc:9091"},
            "KUBETUNE_PUSHGATEWAY_URL='http://pushgateway.{ns}.svc:9091': expected http",
        ),
        ({"KUBETUNE_PUSH_INTERVAL_SECONDS": "0"}, "KUBETUNE_PUSH_INTERVAL_SECONDS='0': expected whole seconds"),
        ({"KUBETUNE_TRAINER_METRICS_PORT": "http"}, "KUBETUNE_TRAINER_METRICS_PORT='http': expected a TCP port"),
    ],
)
def test_bad_values_name_the_variable(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
        OperatorConfig.from_env(env)


def test_a_pushgateway_per_namespace() -> None:
    config = OperatorConfig.from_env(
        {"KUBETUNE_PUSHGATEWAY_URL": "http://prometheus-pushgateway.{namespace}.svc:9091/"}
    )
    assert config.pushgateway_url_for("ml-team") == "http://prometheus-pushgateway.ml-team.svc:9091"
    shared = OperatorConfig.from_env({"KUBETUNE_PUSHGATEWAY_URL": "http://pushgateway.monitoring:9091"})
    assert shared.pushgateway_url_for("ml-team") == "http://pushgateway.monitoring:9091"
    assert OperatorConfig.from_env({}).pushgateway_url_for("ml-team") is None
