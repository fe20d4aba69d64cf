"""Trainer egress: with ``networkPolicy.trainerEgress`` on, every FineTuneJob gets a NetworkPolicy, made
before its Jobs and owned by it, that lets the job's pods reach only S3, the API server and the cluster
DNS, and never 169.254.0.0/16. Shown on (through the real operator, against the test API server, which
validates NetworkPolicies as kube-apiserver does) and off (none is created).

An endpoint the tenant chose that passed only as "any public endpoint" is marked for the trainer, which
re-checks the address each connection reaches (tests/trainer/test_egress.py).
"""

from __future__ import annotations

import ipaddress
import json
from typing import Any

import pytest
from kubernetes import client
from kubernetes.client.rest import ApiException

from kubetune.api.contract import ENV_S3_PUBLIC_ENDPOINT_ONLY
from kubetune.api.driftmonitor import KIND as MONITOR_KIND
from kubetune.api.driftmonitor import DriftMonitorSpec
from kubetune.api.v1alpha1 import GROUP, VERSION
from kubetune.operator.children import (
    Owner,
    build_preflight_job,
    build_trainer_network_policy,
    build_training_job,
)
from kubetune.operator.config import ConfigError, OperatorConfig
from kubetune.operator.driftjobs import build_check_job, build_compare_job
from kubetune.operator.networkpolicy import TrainerEgress
from tests import builders
from tests.kubeapi.cluster import TestCluster
from tests.kubeapi.validation.core import selector_matches
from tests.operator.cluster import Cluster, wait_for
from tests.operator.conftest import running_operator
from tests.operator.test_lifecycle import JOB

METADATA_SERVICE = ipaddress.ip_address("169.254.169.254")
EGRESS: dict[str, Any] = {
    "enabled": True,
    "s3Cidrs": ["0.0.0.0/0", "10.20.0.0/16", "::/0"],
    "s3Ports": [443, 9000],
    "apiServerCidrs": ["10.96.0.1/32", "172.18.0.2/32"],
    "apiServerPorts": [443, 6443],
    "dns": {"namespace": "kube-system", "podLabels": {"k8s-app": "kube-dns"}},
}


def egress(**changes: Any) -> TrainerEgress:
    parsed = TrainerEgress.parse(json.dumps({**EGRESS, **changes}))
    assert parsed is not None
    return parsed


def ip_blocks(spec: dict[str, Any]) -> list[dict[str, Any]]:
    return [peer["ipBlock"] for rule in spec["egress"] for peer in rule["to"] if "ipBlock" in peer]


def reaches_metadata_service(block: dict[str, Any]) -> bool:
    network = ipaddress.ip_network(block["cidr"])
    excepted = [ipaddress.ip_network(e) for e in block.get("except", [])]
    return METADATA_SERVICE in network and not any(METADATA_SERVICE in e for e in excepted)


# ------------------------------------------------------------------ the policy, as data
def test_egress_goes_to_s3_the_api_server_and_dns_and_never_to_link_local() -> None:
    assert egress().egress_rules() == [
        {
            "to": [
                {"ipBlock": {"cidr": "0.0.0.0/0", "except": ["169.254.0.0/16"]}},
                {"ipBlock": {"cidr": "10.20.0.0/16"}},
                {"ipBlock": {"cidr": "::/0", "except": ["fe80::/10"]}},
            ],
            "ports": [{"protocol": "TCP", "port": 443}, {"protocol": "TCP", "port": 9000}],
        },
        {
            "to": [{"ipBlock": {"cidr": "10.96.0.1/32"}}, {"ipBlock": {"cidr": "172.18.0.2/32"}}],
            "ports": [{"protocol": "TCP", "port": 443}, {"protocol": "TCP", "port": 6443}],
        },
        {
            "to": [
                {
                    "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "kube-system"}},
                    "podSelector": {"matchLabels": {"k8s-app": "kube-dns"}},
                }
            ],
            "ports": [{"protocol": "UDP", "port": 53}, {"protocol": "TCP", "port": 53}],
        },
    ]
    wide = egress(s3Cidrs=["128.0.0.0/1", "169.0.0.0/8"], apiServerCidrs=["0.0.0.0/0"])
    spec = {"egress": wide.egress_rules()}
    assert not [block for block in ip_blocks(spec) if reaches_metadata_service(block)]
    assert {"cidr": "169.0.0.0/8", "except": ["169.254.0.0/16"]} in ip_blocks(spec)
    assert egress(s3Cidrs=[]).egress_rules()[0]["to"][0]["ipBlock"]["cidr"] == "10.96.0.1/32", "no S3 rule at all"


def test_off_means_no_policy() -> None:
    assert OperatorConfig.from_env({}).trainer_egress is None
    assert (
        OperatorConfig.from_env({"KUBETUNE_TRAINER_EGRESS": json.dumps({**EGRESS, "enabled": False})}).trainer_egress
        is None
    )
    on = OperatorConfig.from_env({"KUBETUNE_TRAINER_EGRESS": json.dumps(EGRESS)}).trainer_egress
    assert on is not None and on.api_server_ports == (443, 6443)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"s3Cidrs": ["10.0.0.0/33"]}, "s3Cidrs[0]: '10.0.0.0/33' is not a CIDR"),
        ({"s3Cidrs": ["0.0.0.0/0", "s3.amazonaws.com"]}, "s3Cidrs[1]: 's3.amazonaws.com' is not a CIDR"),
        ({"s3Cidrs": ["10.0.0.1/8"]}, "s3Cidrs[0]: '10.0.0.1/8' has host bits set; did you mean 10.0.0.0/8?"),
        ({"apiServerCidrs": ["169.254.169.254/32"]}, "'169.254.169.254/32' lies inside 169.254.0.0/16"),
        ({"s3Cidrs": ["fe80::/64"]}, "s3Cidrs[0]: 'fe80::/64' lies inside fe80::/10"),
        ({"apiServerCidrs": []}, "apiServerCidrs is empty: trainers write their FineTuneJob's status"),
        ({"s3Ports": []}, "s3Ports: []: expected a list of at least one TCP port"),
        ({"apiServerPorts": [443, 70000]}, "apiServerPorts[1]: 70000 is not a TCP port number"),
        ({"dns": {"namespace": "Kube System"}}, "dns.namespace: 'Kube System' is not a namespace name"),
        ({"egress": []}, "unknown keys ['egress']"),
        # Checked when off too, so the mistake shows before the day it is switched on.
        ({"enabled": False, "s3Cidrs": ["10.0.0.0/33"]}, "s3Cidrs[0]: '10.0.0.0/33' is not a CIDR"),
    ],
)
def test_a_bad_value_stops_the_operator_naming_it(changes: dict[str, Any], message: str) -> None:
    env = {"KUBETUNE_TRAINER_EGRESS": json.dumps({**EGRESS, **changes})}
    with pytest.raises(ConfigError) as refused:
        OperatorConfig.from_env(env)
    assert "Helm value networkPolicy.trainerEgress" in str(refused.value)
    assert message in str(refused.value)


def test_the_policy_selects_the_jobs_pods_only_and_belongs_to_the_finetunejob() -> None:
    config = OperatorConfig.from_env({"KUBETUNE_TRAINER_EGRESS": json.dumps(EGRESS)})
    assert config.trainer_egress is not None
    owner, spec = Owner("tickets", "ml", "uid-1"), builders.spec()
    policy = build_trainer_network_policy(owner, config.trainer_egress)
    assert policy["metadata"]["name"] == "tickets-egress" and policy["metadata"]["namespace"] == "ml"
    assert policy["metadata"]["ownerReferences"] == [owner.reference()]
    assert policy["spec"]["policyTypes"] == ["Egress"], "ingress stays open: Prometheus scrapes the trainer"
    selector = policy["spec"]["podSelector"]
    for job in (build_preflight_job(owner, spec, config), build_training_job(owner, spec, config)):
        assert selector_matches(selector, job["spec"]["template"]["metadata"]["labels"])
    other = build_training_job(Owner("tickets-2", "ml", "uid-2"), spec, config)
    assert not selector_matches(selector, other["spec"]["template"]["metadata"]["labels"])


MONITOR = {
    "target": {"outputUri": "s3://team-models/tickets/", "channel": "prod"},
    "samples": {"uri": "s3://team-logs/tickets/"},
}


def test_a_drift_monitors_pods_get_their_own_policy_with_no_way_to_the_api_server() -> None:
    """Check and compare pods hold no API token: S3 and DNS only. The monitor's policy selects its own
    pods, not a FineTuneJob's of the same name, nor the other way round."""
    config = OperatorConfig.from_env({"KUBETUNE_TRAINER_EGRESS": json.dumps(EGRESS)})
    assert config.trainer_egress is not None
    monitor, spec = Owner("tickets", "ml", "uid-m", MONITOR_KIND), DriftMonitorSpec.model_validate(MONITOR)
    policy = build_trainer_network_policy(monitor, config.trainer_egress)
    assert policy["metadata"]["ownerReferences"] == [monitor.reference()]
    allowed = {block["cidr"] for block in ip_blocks(policy["spec"])}
    assert allowed == {"0.0.0.0/0", "10.20.0.0/16", "::/0"}, "the S3 ranges only: no API server addresses"
    assert not [block for block in ip_blocks(policy["spec"]) if reaches_metadata_service(block)]
    selector = policy["spec"]["podSelector"]
    pods = [
        build_check_job(monitor, spec, config, sequence=1, after=None),
        build_compare_job(monitor, spec, config, sequence=1, challenger_uri="s3://team-models/tickets/v2"),
    ]
    for job in pods:
        assert selector_matches(selector, job["spec"]["template"]["metadata"]["labels"])
    training = build_training_job(Owner("tickets", "ml", "uid-1"), builders.spec(), config)
    assert not selector_matches(selector, training["spec"]["template"]["metadata"]["labels"])
    finetunejob_policy = build_trainer_network_policy(Owner("tickets", "ml", "uid-1"), config.trainer_egress)
    for job in pods:
        assert not selector_matches(
            finetunejob_policy["spec"]["podSelector"], job["spec"]["template"]["metadata"]["labels"]
        )


@pytest.mark.parametrize(
    ("endpoint", "marked"),
    [
        ("https://s3.example.com", True),  # admitted by '*': a name that may resolve anywhere
        ("http://minio.storage.svc:9000", False),  # listed by the platform
        ("https://s3.eu-west-1.amazonaws.com", False),  # listed by the platform
        (None, False),  # the platform's own default endpoint
    ],
)
def test_an_endpoint_admitted_only_as_public_is_marked_for_the_trainer(endpoint: str | None, marked: bool) -> None:
    config = OperatorConfig.from_env(
        {
            "KUBETUNE_ALLOWED_S3_ENDPOINTS": "*,minio.storage.svc:9000,s3.eu-west-1.amazonaws.com",
            "KUBETUNE_DEFAULT_S3_ENDPOINT": "https://s3.platform.example.com",
        }
    )
    spec = builders.spec(s3={"endpoint": endpoint} if endpoint else {})
    owner = Owner("tickets", "ml", "uid-1")
    for job in (build_preflight_job(owner, spec, config), build_training_job(owner, spec, config)):
        (container,) = job["spec"]["template"]["spec"]["containers"]
        env = {e["name"]: e.get("value") for e in container["env"]}
        assert (env.get(ENV_S3_PUBLIC_ENDPOINT_ONLY) == "true") is marked


# ------------------------------------------------------------------ through the real operator
def network_policies(cluster: Cluster, namespace: str = "default") -> list[dict[str, Any]]:
    api = client.NetworkingV1Api(cluster.tenant.api_client)
    return list(cluster.tenant.plain(api.list_namespaced_network_policy(namespace)).get("items", []))


def network_policy(cluster: Cluster, name: str, namespace: str = "default") -> dict[str, Any] | None:
    api = client.NetworkingV1Api(cluster.tenant.api_client)
    try:
        return cluster.tenant.plain(api.read_namespaced_network_policy(name, namespace))
    except ApiException as err:
        if err.status == 404:
            return None
        raise


def test_with_trainer_egress_on_each_job_gets_its_policy_before_any_pod(
    cluster: Cluster, test_cluster: TestCluster
) -> None:
    with running_operator(test_cluster, KUBETUNE_TRAINER_EGRESS=json.dumps(EGRESS)):
        cluster.apply(JOB)
        preflight = wait_for(lambda: cluster.job("tickets-preflight"), what="the pre-flight Job")
        policy = network_policy(cluster, "tickets-egress")
        assert policy is not None, "the Job exists, so its NetworkPolicy must exist already"
        assert int(policy["metadata"]["resourceVersion"]) < int(preflight["metadata"]["resourceVersion"])
        assert policy["metadata"]["ownerReferences"][0]["uid"] == cluster.finetunejob("tickets")["metadata"]["uid"]
        spec = policy["spec"]
        owner = Owner.from_body(cluster.finetunejob("tickets"))
        assert spec == build_trainer_network_policy(owner, egress())["spec"], "as built: no patch on every reconcile"
        assert spec["policyTypes"] == ["Egress"]
        assert not [block for block in ip_blocks(spec) if reaches_metadata_service(block)]
        pod = cluster.start_job("tickets-preflight")  # the pod as the Job controller makes it
        assert selector_matches(spec["podSelector"], pod["metadata"]["labels"])

        # A tenant widens it (the built-in edit role may); the next reconcile puts it back.
        # The patch's answer is the stored object; reading it back afterwards would race with a reconcile
        # that the pod's start above may already have set off (and that restores it at once).
        opened = {"spec": {"egress": [{}]}}  # one rule with no peers and no ports: everything
        widened = client.NetworkingV1Api(cluster.tenant.api_client).patch_namespaced_network_policy(
            "tickets-egress", "default", opened
        )
        assert cluster.tenant.plain(widened)["spec"]["egress"] == [{}]
        cluster.trainer_reports("tickets", {"preflight": {"passed": True, "message": "fits: 3.1 GiB"}})
        wait_for(
            lambda: network_policy(cluster, "tickets-egress")["spec"] == spec,  # type: ignore[index]
            what="the policy put back",
        )

        restored = network_policy(cluster, "tickets-egress")["metadata"]["resourceVersion"]  # type: ignore[index]

        cluster.finish_job("tickets-preflight", succeeded=True)
        train = wait_for(lambda: cluster.job("tickets-train"), what="the training Job")
        assert selector_matches(spec["podSelector"], train["spec"]["template"]["metadata"]["labels"])
        unchanged = network_policy(cluster, "tickets-egress")["metadata"]["resourceVersion"]  # type: ignore[index]
        assert unchanged == restored, "the reconcile that made the training Job left the policy alone"
        assert [p["metadata"]["name"] for p in network_policies(cluster)] == ["tickets-egress"]

        cluster.delete_finetunejob("tickets")
        assert "networkpolicies/tickets-egress" in cluster.collect_garbage()
        assert network_policies(cluster) == []


def test_with_trainer_egress_on_a_drift_monitor_gets_its_policy_before_its_first_check(
    cluster: Cluster, test_cluster: TestCluster, tmp_path: Any
) -> None:
    monitor = {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": MONITOR_KIND,
        "metadata": {"name": "tickets", "namespace": "default"},
        "spec": {
            "target": {"outputUri": f"file://{tmp_path}/models/", "channel": "prod"},
            "samples": {"uri": f"file://{tmp_path}/logs/"},
        },
    }
    with running_operator(test_cluster, KUBETUNE_TRAINER_EGRESS=json.dumps(EGRESS)):
        cluster.custom.create_namespaced_custom_object(GROUP, VERSION, "default", "driftmonitors", monitor)
        check = wait_for(lambda: cluster.job("tickets-check-1"), what="the first check Job")
        policy = network_policy(cluster, "tickets-egress")
        assert policy is not None, "the check Job exists, so its NetworkPolicy must exist already"
        assert int(policy["metadata"]["resourceVersion"]) < int(check["metadata"]["resourceVersion"])
        assert policy["metadata"]["ownerReferences"][0]["kind"] == MONITOR_KIND
        pod = cluster.start_job("tickets-check-1")
        assert selector_matches(policy["spec"]["podSelector"], pod["metadata"]["labels"])
        assert {block["cidr"] for block in ip_blocks(policy["spec"])} == set(EGRESS["s3Cidrs"])


def test_with_trainer_egress_off_no_policy_is_made(cluster: Cluster, operator: Any) -> None:
    cluster.apply(JOB)
    wait_for(lambda: cluster.job("tickets-preflight"), what="the pre-flight Job")
    cluster.finish_job("tickets-preflight", succeeded=True)
    wait_for(lambda: cluster.job("tickets-train"), what="the training Job")
    assert network_policies(cluster) == []
