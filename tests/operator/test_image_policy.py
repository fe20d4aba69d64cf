"""The platform team's image allow-list: a FineTuneJob runs only an image the policy admits, matched
on parsed references (registry host, repository path boundary, tag or digest)."""

from __future__ import annotations

from typing import Any

import pytest

from kubetune.operator.config import ConfigError, OperatorConfig
from kubetune.operator.imagepolicy import ImagePolicy
from tests.kubeapi.cluster import TestCluster
from tests.operator.cluster import Cluster, wait_for
from tests.operator.conftest import running_operator
from tests.operator.test_validation import assert_rejected, with_spec

DIGEST = "sha256:" + "a" * 64
POLICY = ImagePolicy.parse(
    [
        "ghcr.io/kubetune/trainer",
        "registry.example.com:5000/ml/*",
        "nvcr.io/nvidia/pytorch:24.01-py3",
        f"quay.io/x/y@{DIGEST}",
    ]
)


@pytest.mark.parametrize(
    ("image", "allowed"),
    [
        ("ghcr.io/kubetune/trainer:0.2.0", True),
        ("ghcr.io/kubetune/trainer", True),
        (f"ghcr.io/kubetune/trainer@{DIGEST}", True),
        ("GHCR.IO/kubetune/trainer:1", True),  # host names are case-insensitive
        ("ghcr.io/kubetune/trainer-evil:1", False),  # a repository prefix is not the repository
        ("ghcr.io/kubetune/trainer/sub:1", False),
        ("ghcr.io.evil.example/kubetune/trainer:1", False),  # a look-alike host
        ("evil.example/ghcr.io/kubetune/trainer:1", False),
        ("ghcr.io:443/kubetune/trainer:1", False),  # another host:port
        ("registry.example.com:5000/ml/team-a/trainer:3", True),
        ("registry.example.com:5000/ml2/trainer:3", False),  # a path boundary, not a string prefix
        ("registry.example.com:5000/ml:3", False),
        ("registry.example.com/ml/trainer:3", False),  # same host, other port
        ("nvcr.io/nvidia/pytorch:24.01-py3", True),
        ("nvcr.io/nvidia/pytorch:24.02-py3", False),
        (f"nvcr.io/nvidia/pytorch:24.01-py3@{DIGEST}", False),  # pinned to the tag: a digest names other bytes
        (f"quay.io/x/y@{DIGEST}", True),
        (f"quay.io/x/y:{'latest'}", False),
        ("trainer", False),  # docker.io/library/trainer
        ("kubetune/trainer:1", False),  # docker.io/kubetune/trainer
    ],
)
def test_images_are_matched_on_parsed_references(image: str, allowed: bool) -> None:
    assert (POLICY.refusal(image) is None) is allowed, POLICY.refusal(image)


def test_by_default_only_the_configured_trainer_image_is_allowed() -> None:
    config = OperatorConfig.from_env({"KUBETUNE_TRAINER_IMAGE": "ghcr.io/kubetune/trainer:0.1.0"})
    assert config.image_policy.refusal("ghcr.io/kubetune/trainer:0.1.0") is None
    assert config.image_policy.refusal("ghcr.io/kubetune/trainer:0.0.9") is not None
    assert config.image_policy.refusal("docker.io/library/python:3.11") is not None


@pytest.mark.parametrize("entry", ["not an image", "ghcr.io/a:tag/*", "ghcr.io/a@sha256:abc"])
def test_an_invalid_allow_list_stops_the_operator_at_startup(entry: str) -> None:
    with pytest.raises(ConfigError, match=r"policy\.allowedImages"):
        OperatorConfig.from_env({"KUBETUNE_ALLOWED_IMAGES": f"ghcr.io/kubetune/trainer,{entry}"})


def test_a_foreign_image_is_refused_before_any_pod(cluster: Cluster, operator: Any) -> None:
    """The chart's default policy (the operator in the tests runs trainer image trainer:test)."""
    cluster.apply(with_spec(image="docker.io/attacker/miner:latest"))
    assert_rejected(cluster, "ImageNotAllowed", "spec.image: docker.io/attacker/miner:latest is not in the platform's")


def test_the_trainer_image_itself_may_be_named(cluster: Cluster, operator: Any) -> None:
    cluster.apply(with_spec(image="trainer:test"))
    wait_for(lambda: cluster.job("tickets-preflight"), what="the pre-flight Job")


def test_an_image_the_policy_lists_runs(cluster: Cluster, test_cluster: TestCluster) -> None:
    """The same guardrail switched by the platform team: a listed path admits the image, and the pod runs it."""
    with running_operator(test_cluster, KUBETUNE_ALLOWED_IMAGES="registry.example.com/ml/*"):
        cluster.apply(with_spec(image="registry.example.com/ml/custom-trainer:2"))
        job = wait_for(lambda: cluster.job("tickets-preflight"), what="the pre-flight Job")
    containers = job["spec"]["template"]["spec"]["containers"]
    assert {c["image"] for c in containers} == {"registry.example.com/ml/custom-trainer:2"}


def test_the_release_profile_runs_images_by_digest_only(cluster: Cluster, test_cluster: TestCluster) -> None:
    """release.requireDigests: a tenant's spec.image by tag is refused even where the allow-list lists
    its repository, the same image by digest runs, and a trainer image by tag stops the operator."""
    pinned = f"registry.example.com/ml/custom-trainer@{DIGEST}"
    release = {
        "KUBETUNE_REQUIRE_IMAGE_DIGESTS": "true",
        "KUBETUNE_TRAINER_IMAGE": f"trainer:test@{DIGEST}",
        "KUBETUNE_ALLOWED_IMAGES": "registry.example.com/ml/*",
    }
    with pytest.raises(ConfigError, match=r"trainerImage\.digest.*names no digest"):
        OperatorConfig.from_env({**release, "KUBETUNE_TRAINER_IMAGE": "trainer:test"})
    with running_operator(test_cluster, **release):
        cluster.apply(with_spec(image="registry.example.com/ml/custom-trainer:2"))
        assert_rejected(
            cluster,
            "ImageNotAllowed",
            "spec.image: registry.example.com/ml/custom-trainer:2 names no digest; the release profile "
            "(Helm value release.requireDigests)",
        )
        by_digest = with_spec(image=pinned)
        by_digest["metadata"]["name"] = "pinned"
        cluster.apply(by_digest)
        job = wait_for(lambda: cluster.job("pinned-preflight"), what="the pre-flight Job")
    assert {c["image"] for c in job["spec"]["template"]["spec"]["containers"]} == {pinned}
