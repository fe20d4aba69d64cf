"""A job on more than one node (``resources.nodes``): an Indexed Job, one pod per node, whose pods find
each other through a headless Service and rendezvous under torchrun (c10d) at pod 0.

The builders as data first, then the real operator against the test API server, which validates the
Job (an Indexed Job's ``<job>-<index>`` hostnames are DNS labels), the Service and the pods the Job
controller fixture makes from the template, as kube-apiserver does.
"""

from __future__ import annotations

import copy
import json

import pytest

from kubetune.api.contract import RENDEZVOUS_PORT
from kubetune.operator.children import (
    DNS_LABEL_LIMIT,
    Owner,
    build_preflight_job,
    build_rendezvous_service,
    build_trainer_network_policy,
    build_training_job,
    rendezvous_service_name,
    training_command,
    training_job_name,
)
from kubetune.operator.config import OperatorConfig
from kubetune.operator.validation import check_policy
from tests import builders
from tests.kubeapi.cluster import TestCluster
from tests.kubeapi.validation import meta
from tests.kubeapi.validation.core import selector_matches
from tests.operator.cluster import COMPLETION_INDEX, Cluster, wait_for
from tests.operator.conftest import running_operator
from tests.operator.test_lifecycle import JOB, phase
from tests.operator.test_trainer_egress import EGRESS, egress

OWNER = Owner("tickets", "ml", "1234-uid")
CONFIG = OperatorConfig.from_env({"KUBETUNE_TRAINER_IMAGE": "registry/trainer:1"})


def command_options(command: list[str]) -> dict[str, str]:
    return dict(arg[2:].split("=", 1) for arg in command if arg.startswith("--") and "=" in arg)


# ------------------------------------------------------------------ the children, as data
def test_several_nodes_make_an_indexed_job_that_rendezvous_at_pod_0() -> None:
    job = build_training_job(OWNER, builders.spec(resources={"nodes": 3, "gpus": 2}, backoffLimit=4), CONFIG)
    spec, pod = job["spec"], job["spec"]["template"]["spec"]
    name, service = job["metadata"]["name"], rendezvous_service_name("tickets")
    assert spec["completionMode"] == "Indexed"
    assert spec["completions"] == spec["parallelism"] == 3
    # Each index retried on its own; one out of retries fails the group, which cannot train without it.
    assert (spec["backoffLimitPerIndex"], spec["maxFailedIndexes"]) == (4, 0)
    assert "backoffLimit" not in spec
    assert pod["subdomain"] == service
    command = pod["containers"][0]["command"]
    assert command[0] == "torchrun"
    assert command[-5:] == ["-m", "kubetune_trainer.cli", "train", "--job", "/etc/kubetune/job.yaml"]
    options = command_options(command)
    assert options["nnodes"] == "3" and options["nproc-per-node"] == "2"
    assert options["rdzv-backend"] == "c10d"
    assert options["rdzv-endpoint"] == f"{name}-0.{service}:{RENDEZVOUS_PORT}"
    assert options["rdzv-id"] == OWNER.uid, "one rendezvous per FineTuneJob, the same for every pod"
    assert int(options["max-restarts"]) > 0, "a failed process restarts the group"
    requests = pod["containers"][0]["resources"]["requests"]
    assert requests["nvidia.com/gpu"] == "2", "each pod asks for one node's GPUs"
    env = {variable["name"]: variable.get("value") for variable in pod["containers"][0]["env"]}
    # A fresh store for each round of restarts (contract.GROUP_ENV says why).
    assert env["TORCH_DISABLE_SHARE_RDZV_TCP_STORE"] == "1"


def test_one_node_is_the_job_it_always_was() -> None:
    one = builders.spec(resources={"gpus": 2})
    job = build_training_job(OWNER, one, CONFIG)
    assert job["metadata"]["name"] == training_job_name("tickets") == "tickets-train"
    assert "completionMode" not in job["spec"] and "subdomain" not in job["spec"]["template"]["spec"]
    assert job["spec"]["completions"] == 1
    assert training_command(one)[:3] == ["torchrun", "--standalone", "--nproc-per-node=2"]
    assert training_command(builders.spec(resources={"gpus": 1}))[0] == "kubetune"
    env = {variable["name"] for variable in job["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert "TORCH_DISABLE_SHARE_RDZV_TCP_STORE" not in env


def test_cpu_nodes_run_one_process_each() -> None:
    command = build_training_job(OWNER, builders.spec(resources={"nodes": 2, "gpus": 0}), CONFIG)["spec"]["template"]
    assert command_options(command["spec"]["containers"][0]["command"])["nproc-per-node"] == "1"


@pytest.mark.parametrize(
    "owner",
    ["a" * 200, "team.tickets.v2", "0-starts-with-a-digit", "x" * 58 + ".y"],
    ids=["long", "dotted", "digit", "dot-near-the-limit"],
)
def test_hostnames_and_the_service_name_are_dns_labels_whatever_the_finetunejob_is_called(owner: str) -> None:
    nodes = 64
    job_name = training_job_name(owner, nodes)
    assert len(job_name) <= DNS_LABEL_LIMIT
    for index in (0, nodes - 1):
        assert meta.is_dns1123_label(f"{job_name}-{index}") == []
    assert meta.is_dns1035_label(rendezvous_service_name(owner)) == []
    assert training_job_name(owner, nodes) == job_name, "stable: found again by every reconcile"


def test_the_service_is_headless_and_selects_only_this_jobs_training_pods() -> None:
    service = build_rendezvous_service(OWNER)
    job = build_training_job(OWNER, builders.spec(resources={"nodes": 2}), CONFIG)
    preflight = build_preflight_job(OWNER, builders.spec(resources={"nodes": 2}), CONFIG)
    preflight_labels = preflight["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["clusterIP"] == "None"
    assert service["spec"]["publishNotReadyAddresses"] is True, "the rendezvous runs before any pod is ready"
    selector = {"matchLabels": service["spec"]["selector"]}
    assert selector_matches(selector, job["spec"]["template"]["metadata"]["labels"])
    assert not selector_matches(selector, preflight_labels)
    other = build_training_job(Owner("other", "ml", "9"), builders.spec(resources={"nodes": 2}), CONFIG)
    assert not selector_matches(selector, other["spec"]["template"]["metadata"]["labels"])
    assert service["metadata"]["ownerReferences"][0]["uid"] == OWNER.uid


def test_a_groups_egress_policy_lets_its_pods_reach_each_other() -> None:
    job = build_training_job(OWNER, builders.spec(resources={"nodes": 2}), CONFIG)
    alone = build_trainer_network_policy(OWNER, egress())
    group = build_trainer_network_policy(OWNER, egress(), group=True)
    (added,) = [rule for rule in group["spec"]["egress"] if rule not in alone["spec"]["egress"]]
    (peer,) = added["to"]
    assert "ports" not in added, "the collectives pick their own ports"
    assert selector_matches(peer["podSelector"], job["spec"]["template"]["metadata"]["labels"])


def test_the_gpu_cap_counts_every_nodes_gpus() -> None:
    capped = OperatorConfig.from_env({"KUBETUNE_TRAINER_IMAGE": "t:1", "KUBETUNE_MAX_GPUS_PER_JOB": "8"})
    assert check_policy(builders.spec(resources={"nodes": 2, "gpus": 4}), "ml", capped) is None
    problem = check_policy(builders.spec(resources={"nodes": 3, "gpus": 4}), "ml", capped)
    assert problem is not None and problem.reason == "GpuQuotaExceeded"
    assert problem.message.startswith("spec.resources.nodes: 3 nodes x 4 GPUs = 12 ")


def test_the_platform_caps_the_nodes_a_job_may_train_on() -> None:
    capped = OperatorConfig.from_env({"KUBETUNE_TRAINER_IMAGE": "t:1", "KUBETUNE_MAX_NODES_PER_JOB": "2"})
    assert check_policy(builders.spec(resources={"nodes": 2, "gpus": 0}), "ml", capped) is None
    problem = check_policy(builders.spec(resources={"nodes": 3, "gpus": 0}), "ml", capped)
    assert problem is not None and problem.reason == "NodeQuotaExceeded"
    assert problem.message == "spec.resources.nodes: 3 is more nodes than the platform allows one job (2)"
    assert OperatorConfig.from_env({"KUBETUNE_TRAINER_IMAGE": "t:1"}).max_nodes_per_job is None


# ------------------------------------------------------------------ through the operator
def test_a_two_node_job_runs_as_one_kueue_workload_of_two_indexed_pods(
    test_cluster: TestCluster, cluster: Cluster
) -> None:
    manifest = copy.deepcopy(JOB)
    manifest["spec"]["resources"] = {"gpus": 1, "nodes": 2}
    manifest["spec"]["queueName"] = "gpu-queue"
    with running_operator(test_cluster, KUBETUNE_TRAINER_EGRESS=json.dumps(EGRESS)):
        cluster.apply(manifest)
        wait_for(lambda: cluster.job("tickets-preflight"), what="pre-flight Job")
        assert cluster.job("tickets-train") is None
        cluster.finish_job("tickets-preflight", succeeded=True)
        job = wait_for(lambda: cluster.job("tickets-train"), what="training Job")
        uid = cluster.finetunejob("tickets")["metadata"]["uid"]

        # Kueue admits the Job as one workload: its parallelism is the group, unsuspended at once.
        assert job["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "gpu-queue"
        assert job["spec"]["suspend"] is True and job["spec"]["parallelism"] == 2
        reader = test_cluster.garbage_collector  # reads every kind
        service = reader.call("GET", "/api/v1/namespaces/default/services/tickets-ranks")
        assert service["spec"]["clusterIP"] == "None"
        assert service["metadata"]["ownerReferences"][0]["uid"] == uid
        policy = reader.call("GET", "/apis/networking.k8s.io/v1/namespaces/default/networkpolicies/tickets-egress")
        peers = [peer for rule in policy["spec"]["egress"] for peer in rule["to"]]
        assert any("podSelector" in peer for peer in peers), "the group's pods reach each other"
        wait_for(lambda: phase(cluster) == "Queued", what="Queued")
        test_cluster.kueue.batch.patch_namespaced_job("tickets-train", "default", {"spec": {"suspend": False}})

        first = cluster.start_job("tickets-train")
        pods = cluster._pods_of(job)
        assert sorted(p["spec"]["hostname"] for p in pods) == ["tickets-train-0", "tickets-train-1"]
        assert {p["spec"]["subdomain"] for p in pods} == {"tickets-ranks"}
        assert first["metadata"]["annotations"][COMPLETION_INDEX] == "0"
        endpoint = command_options(first["spec"]["containers"][0]["command"])["rdzv-endpoint"]
        assert endpoint == f"tickets-train-0.tickets-ranks:{RENDEZVOUS_PORT}", "pod 0's DNS name, by the Service"
        wait_for(lambda: phase(cluster) == "Running", what="Running")

        cluster.delete_finetunejob("tickets")
        removed = cluster.collect_garbage()
        assert "services/tickets-ranks" in removed, "the Service goes with its FineTuneJob"
        assert cluster.job("tickets-train") is None
