"""Placement: tenants pick a profile the platform team defined; raw scheduling fields only where the
platform allows them. Shown on (refused before any pod) and off (accepted)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from kubetune.api.manifest import parse_spec
from kubetune.operator.config import ConfigError, OperatorConfig
from kubetune.operator.placement import PlacementPolicy
from tests.kubeapi.cluster import TestCluster
from tests.operator.cluster import Cluster, wait_for
from tests.operator.conftest import running_operator
from tests.operator.test_lifecycle import JOB
from tests.operator.test_validation import assert_rejected, with_spec

A100 = {
    "nodeSelector": {"gpu": "a100"},
    "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
    "priorityClassName": "batch-training",
}
PROFILES = {"default": {"nodeSelector": {"pool": "shared"}}, "gpu-a100": A100}
EVERY_TAINT = [{"operator": "Exists"}]


def resources(**fields: Any) -> Any:
    return parse_spec({**JOB["spec"], "resources": {"gpus": 1, **fields}}).resources


def test_the_profile_named_and_the_default_one_become_the_pods_scheduling() -> None:
    policy = PlacementPolicy.parse(json.dumps(PROFILES), allow_raw=False)
    assert policy.scheduling(resources(placement="gpu-a100")) == A100
    assert policy.scheduling(resources()) == {"nodeSelector": {"pool": "shared"}}
    assert PlacementPolicy.parse("", allow_raw=False).scheduling(resources()) == {}


@pytest.mark.parametrize(
    ("fields", "where", "why"),
    [
        ({"tolerations": EVERY_TAINT}, "spec.resources.tolerations", "does not allow raw scheduling fields"),
        ({"nodeSelector": {"gpu": "h100"}}, "spec.resources.nodeSelector", "does not allow raw scheduling fields"),
        ({"priorityClassName": "system-node-critical"}, "spec.resources.priorityClassName", "raw scheduling"),
        ({"placement": "gpu-h100"}, "spec.resources.placement", "no placement profile 'gpu-h100'"),
    ],
)
def test_raw_fields_and_unknown_profiles_are_refused_at_the_field(fields: dict[str, Any], where: str, why: str) -> None:
    refusal = PlacementPolicy.parse(json.dumps(PROFILES), allow_raw=False).refusal(resources(**fields))
    assert refusal is not None and refusal[0] == where and why in refusal[1]
    assert "the platform offers: default, gpu-a100" in refusal[1]


def test_raw_fields_where_the_platform_allows_them_add_to_the_profile() -> None:
    policy = PlacementPolicy.parse(json.dumps(PROFILES), allow_raw=True)
    raw = resources(placement="gpu-a100", nodeSelector={"zone": "b"}, priorityClassName="urgent")
    assert policy.refusal(raw) is None
    assert policy.scheduling(raw) == {
        **A100,
        "nodeSelector": {"gpu": "a100", "zone": "b"},
        "priorityClassName": "urgent",
    }


@pytest.mark.parametrize(
    ("profiles", "fragment"),
    [
        ("[1]", "expected an object of profiles by name"),
        ("{not json", "not JSON"),
        (json.dumps({"GPU": A100}), "profile 'GPU': a name is a DNS label"),
        (
            json.dumps({"gpu": {"tolerations": [{"operator": "Exists", "value": "x"}]}}),
            "profile 'gpu': tolerations[0].value: value must be empty",
        ),
        (json.dumps({"gpu": {"nodeSelector": {"gpu": "a" * 64}}}), "profile 'gpu': nodeSelector.gpu"),
        (json.dumps({"gpu": {"affinity": {}}}), "profile 'gpu': affinity"),
    ],
)
def test_an_invalid_profile_stops_the_operator_at_startup(profiles: str, fragment: str) -> None:
    with pytest.raises(ConfigError, match=r"policy\.placementProfiles") as refused:
        OperatorConfig.from_env({"KUBETUNE_PLACEMENT_PROFILES": profiles})
    assert fragment in str(refused.value)


def test_by_default_a_tenant_cannot_tolerate_every_taint(cluster: Cluster, operator: Any) -> None:
    cluster.apply(with_spec(resources={"gpus": 1, "tolerations": EVERY_TAINT}))
    assert_rejected(
        cluster,
        "PlacementNotAllowed",
        "spec.resources.tolerations: the platform does not allow raw scheduling fields; pick a placement profile",
    )


def test_raw_scheduling_fields_run_where_the_platform_allows_them(cluster: Cluster, test_cluster: TestCluster) -> None:
    with running_operator(test_cluster, KUBETUNE_ALLOW_RAW_SCHEDULING="true"):
        cluster.apply(with_spec(resources={"gpus": 1, "tolerations": EVERY_TAINT}))
        wait_for(lambda: cluster.job("tickets-preflight"), what="the pre-flight Job")


def test_a_named_profile_places_the_training_pod(cluster: Cluster, test_cluster: TestCluster) -> None:
    with running_operator(test_cluster, KUBETUNE_PLACEMENT_PROFILES=json.dumps(PROFILES)):
        cluster.apply(with_spec(resources={"gpus": 1, "placement": "gpu-a100"}))
        wait_for(lambda: cluster.job("tickets-preflight"), what="the pre-flight Job")
        cluster.trainer_reports("tickets", {"preflight": {"passed": True, "message": "fits"}})
        cluster.finish_job("tickets-preflight", succeeded=True)
        train = wait_for(lambda: cluster.job("tickets-train"), what="the training Job")
    pod = train["spec"]["template"]["spec"]
    assert {key: pod[key] for key in A100} == A100
