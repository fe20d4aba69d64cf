"""Storage policy: S3 endpoints aimed inside the cluster or the node are refused unless the platform
lists them; every s3:// URI stays under the prefixes the platform allows the namespace. Shown on
(refused before any pod) and off (accepted)."""

from __future__ import annotations

from typing import Any

import pytest

from kubetune.api.manifest import parse_spec
from kubetune.operator.config import ConfigError, OperatorConfig
from kubetune.operator.storagepolicy import StoragePolicy
from kubetune_trainer.environment import TrainerEnvironment
from tests.kubeapi.cluster import TestCluster
from tests.operator.cluster import Cluster, wait_for
from tests.operator.conftest import running_operator
from tests.operator.test_lifecycle import JOB
from tests.operator.test_validation import assert_rejected, with_spec

DEFAULT = StoragePolicy.parse(["*"], [], platform_endpoint=None)


def spec(**changes: Any) -> Any:
    return parse_spec({**JOB["spec"], **changes})


@pytest.mark.parametrize(
    ("endpoint", "why"),
    [
        ("http://169.254.169.254", "a link-local address (the instance metadata service lives there)"),
        ("http://[::ffff:169.254.169.254]", "a link-local address"),
        ("http://[fe80::1]:9000", "a link-local address"),
        ("http://127.0.0.1:9000", "a loopback address"),
        ("http://[::1]", "a loopback address"),
        ("http://10.96.0.1", "a private or reserved address"),
        ("http://192.168.1.10:9000", "a private or reserved address"),
        ("http://0.0.0.0", "a private or reserved address"),
        ("http://localhost:9000", "a cluster-internal name"),
        ("http://minio:9000", "a cluster-internal name"),
        ("http://minio.storage.svc:9000", "a cluster-internal name"),
        ("http://minio.storage.svc.cluster.local:9000", "a cluster-internal name"),
        ("http://metadata.google.internal", "a cluster-internal name"),
        ("http://2852039166", "a cluster-internal name"),  # 169.254.169.254 as one decimal number
        ("http://kubernetes.default", None),  # a public-looking name: resolved, and re-checked, by the trainer
        ("https://s3.eu-west-1.amazonaws.com", None),
        ("https://storage.example.com:9000", None),
    ],
)
def test_endpoints_inside_the_cluster_or_the_node_are_refused(endpoint: str, why: str | None) -> None:
    refusal = DEFAULT.refusal(spec(s3={"endpoint": endpoint}), "ml-team")
    if why is None:
        assert refusal is None
    else:
        assert refusal is not None and refusal[0] == "spec.s3.endpoint" and why in refusal[1], refusal


def test_a_listed_internal_endpoint_and_the_platforms_default_are_allowed() -> None:
    policy = StoragePolicy.parse(
        ["minio.storage.svc:9000"], [], platform_endpoint="http://ceph-rgw.storage.svc.cluster.local:7480"
    )
    assert policy.refusal(spec(s3={"endpoint": "http://minio.storage.svc:9000"}), "ml") is None
    assert policy.refusal(spec(s3={"endpoint": "http://ceph-rgw.storage.svc.cluster.local:7480"}), "ml") is None
    other_port = policy.refusal(spec(s3={"endpoint": "http://minio.storage.svc:9001"}), "ml")
    assert other_port is not None and "a cluster-internal name" in other_port[1]
    public = policy.refusal(spec(s3={"endpoint": "https://s3.amazonaws.com"}), "ml")
    assert public is not None and "not in the platform's allowed S3 endpoints" in public[1], "no '*': only those listed"


def test_every_s3_uri_stays_under_the_namespaces_prefixes() -> None:
    policy = StoragePolicy.parse(["*"], ["s3://ml-{namespace}/", "s3://shared/base-models"], platform_endpoint=None)
    inside = spec(
        baseModel={"uri": "s3://shared/base-models/llama/"},
        dataset={"sources": [{"uri": "s3://ml-team-a/data/a.jsonl"}]},
        output={"uri": "s3://ml-team-a/out/"},
    )
    assert policy.refusal(inside, "team-a") is None
    assert policy.refusal(inside, "team-b") == (
        "spec.dataset.sources[0].uri",
        "s3://ml-team-a/data/a.jsonl is outside the storage this namespace may use (s3://ml-team-b/, s3://shared/base-models/)",
    )
    sibling = spec(baseModel={"uri": "s3://shared/base-models-private/x/"})  # a prefix ends at a '/'
    assert policy.refusal(sibling, "team-a") is not None
    output = spec(
        baseModel={"uri": "s3://shared/base-models/llama/"},
        dataset={"sources": [{"uri": "s3://ml-team-a/data/a.jsonl"}]},
        output={"uri": "s3://ml-team-a-evil/out/"},
    )
    assert policy.refusal(output, "team-a") is not None
    assert policy.refusal(output, "team-a")[0] == "spec.output.uri"  # type: ignore[index]
    # Continuing another team's published version would read its model: the version is storage too.
    other_teams_version = spec(
        baseModel={"uri": "s3://shared/base-models/llama/"},
        continual={"from": "s3://ml-team-b/out/v20261201-000000-abcdef"},
        dataset={"sources": [{"uri": "s3://ml-team-a/data/a.jsonl"}]},
        output={"uri": "s3://ml-team-a/out/"},
    )
    assert policy.refusal(other_teams_version, "team-a") == (
        "spec.continual.from",
        "s3://ml-team-b/out/v20261201-000000-abcdef is outside the storage this namespace may use "
        "(s3://ml-team-a/, s3://shared/base-models/)",
    )


@pytest.mark.parametrize(
    "env",
    [
        {"KUBETUNE_ALLOWED_S3_ENDPOINTS": "http://minio:9000"},
        {"KUBETUNE_ALLOWED_STORAGE_PREFIXES": "az://container/"},  # a scheme kubetune does not read
        {"KUBETUNE_ALLOWED_STORAGE_PREFIXES": "s3://bucket/../other/"},
    ],
)
def test_an_invalid_storage_policy_stops_the_operator_at_startup(env: dict[str, str]) -> None:
    with pytest.raises(ConfigError, match=r"policy\.allowedS3Endpoints / policy\.allowedStoragePrefixes"):
        OperatorConfig.from_env(env)


def test_by_default_the_metadata_service_is_not_an_endpoint(cluster: Cluster, operator: Any) -> None:
    cluster.apply(with_spec(s3={"endpoint": "http://169.254.169.254"}))
    assert_rejected(cluster, "StorageNotAllowed", "spec.s3.endpoint: http://169.254.169.254 is a link-local address")


def test_an_internal_endpoint_the_platform_lists_runs(cluster: Cluster, test_cluster: TestCluster) -> None:
    with running_operator(test_cluster, KUBETUNE_ALLOWED_S3_ENDPOINTS="*,minio.storage.svc:9000"):
        cluster.apply(with_spec(s3={"endpoint": "http://minio.storage.svc:9000"}))
        wait_for(lambda: cluster.job("tickets-preflight"), what="the pre-flight Job")


def test_an_output_outside_the_namespaces_prefix_is_refused(cluster: Cluster, test_cluster: TestCluster) -> None:
    with running_operator(test_cluster, KUBETUNE_ALLOWED_STORAGE_PREFIXES="s3://models/{namespace}/,s3://datasets/"):
        cluster.apply(with_spec(output={"uri": "s3://models/other-team/tickets/"}))
        assert_rejected(cluster, "StorageNotAllowed", "spec.output.uri: s3://models/other-team/tickets/ is outside")
        inside = with_spec(output={"uri": "s3://models/default/tickets/"})
        cluster.apply({**inside, "metadata": {"name": "tickets-inside"}})
        preflight = wait_for(
            lambda: cluster.job("tickets-inside-preflight"), what="the pre-flight Job of the job inside"
        )
    # URIs the trainer finds only at run time (a continued version's data) are held to the same prefixes.
    env = {e["name"]: e.get("value", "") for e in preflight["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["KUBETUNE_STORAGE_PREFIXES"] == "s3://models/default/,s3://datasets/"
    assert TrainerEnvironment.from_env(env).storage_prefixes == ("s3://models/default/", "s3://datasets/")
