"""A DriftMonitor end to end: the real operator against the test API server, its check Jobs run by the
kubelet fixture with the real ``kubetune drift check`` on a version a real ``kubetune run`` published
(tiny model) and put on the ``prod`` channel; request logs arrive as files, as a serving stack would
leave them.

In-distribution requests: no drift. French requests: drifted, then confirmed on the second window in a
row, and a retraining FineTuneJob starts, owned by the monitor, with the champion's data replayed;
more drift inside the cooldown starts no second one. A window below minSamples decides nothing; a check
that fails says why. Time passing between checks is played by moving ``status.lastCheckTime`` back, as
the cluster admin can (the operator schedules from it).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from kubetune.api.contract import TERMINATION_LOG_PATH, VERSION_PATTERN
from kubetune.api.v1alpha1 import GROUP, VERSION, S3Spec
from kubetune_trainer.cli import main as kubetune
from kubetune_trainer.storage import ObjectStore
from tests.kubeapi.cluster import CLUSTERWIDE, NAMESPACED, TestCluster
from tests.operator.cluster import Cluster, wait_for
from tests.operator.conftest import running_operator
from tests.trainer.jobs import publish_champion, publish_on_channel

MONITORS = "driftmonitors"


@pytest.fixture(scope="module")
def published(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> tuple[Path, Path]:
    return publish_on_channel(tmp_path_factory.mktemp("monitored"), tiny_model_dir)


def monitor_manifest(name: str, version: Path | str, logs: Path | str, **spec: Any) -> dict[str, Any]:
    """A monitor of ``prod``: ``version`` a published version's folder (its output is the parent) or the
    output prefix's URI, ``logs`` a folder or the request logs' URI."""
    output = f"file://{version.parent}/" if isinstance(version, Path) else version
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "DriftMonitor",
        "metadata": {"name": name},
        "spec": {
            "target": {"outputUri": output, "channel": "prod"},
            "samples": {"uri": f"file://{logs}/" if isinstance(logs, Path) else logs},
            "detection": {"minSamples": 20, "maxSamples": 64, "persistence": 2, "permutations": 199},
            "cooldownMinutes": 1440,
            **spec,
        },
    }


def apply_monitor(cluster: Cluster, manifest: dict[str, Any]) -> None:
    manifest["metadata"]["namespace"] = "default"
    cluster.custom.create_namespaced_custom_object(GROUP, VERSION, "default", MONITORS, manifest)


def monitor(cluster: Cluster, name: str) -> dict[str, Any]:
    return dict(cluster.custom.get_namespaced_custom_object(GROUP, VERSION, "default", MONITORS, name))


def log_requests(logs: Path, name: str, prompts: list[str], labels: list[str] | None = None) -> None:
    """Requests as a serving stack logs them, each with the answer a person confirmed (``label``)."""
    logs.mkdir(exist_ok=True)
    rows = [
        {"messages": [{"role": "user", "content": p}], "label": label}
        for p, label in zip(prompts, labels or ["shipping"] * len(prompts), strict=True)
    ]
    (logs / name).write_text("".join(json.dumps(r) + "\n" for r in rows))


def run_check(cluster: Cluster, job_name: str, tmp_path: Path) -> dict[str, Any]:
    """What the kubelet does with a monitor's Job's pod (a check or a comparison): run its command with its env (its termination
    message file where the pod has it), then record the exit and the message; the Job controller
    finishes the Job. Returns the Job as the operator made it."""
    job = wait_for(lambda: cluster.job(job_name), what=f"check Job {job_name}")
    container = job["spec"]["template"]["spec"]["containers"][0]
    termination = tmp_path / f"{job_name}.termination-log"
    command = [str(termination) if arg == TERMINATION_LOG_PATH else arg for arg in container["command"]]
    assert command[0] == "kubetune"
    env = {e["name"]: e["value"] for e in container["env"] if "value" in e}
    env.update({"KUBETUNE_SCRATCH": str(tmp_path / "scratch"), "HOME": str(tmp_path), "HF_HOME": str(tmp_path / "hf")})
    machine = {k: v for k, v in os.environ.items() if not k.startswith("KUBETUNE_") and k != "KUBECONFIG"}
    cluster.start_job(job_name)
    result = subprocess.run(
        [str(Path(sys.executable).parent / "kubetune"), *command[1:]],
        env={**machine, **env, "OMP_NUM_THREADS": "1"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    said = termination.read_text() if termination.exists() else ""
    cluster.finish_job(
        job_name, succeeded=result.returncode == 0, exit_code=result.returncode, termination_message=said
    )
    return dict(job)


def an_interval_passes(test_cluster: TestCluster, name: str) -> None:
    """The check interval elapses: the last check is moved two hours back (as the cluster admin)."""
    earlier = (datetime.now(UTC) - timedelta(hours=2)).strftime("%Y-%m-%dT%H:%M:%SZ")
    test_cluster.installer.call(
        "PATCH",
        f"/apis/{GROUP}/{VERSION}/namespaces/default/{MONITORS}/{name}/status",
        {"status": {"lastCheckTime": earlier}},
        "application/merge-patch+json",
    )


def decided(cluster: Cluster, name: str, checks: int) -> dict[str, Any]:
    return dict(
        wait_for(
            lambda: (s := monitor(cluster, name).get("status") or {}).get("checks") == checks and s,
            what=f"check {checks} of {name} decided",
        )
    )


def scrape(port: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    import urllib.request

    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name.startswith("kubetune_driftmonitor")
    }


@pytest.mark.parametrize("rbac_mode", [NAMESPACED], ids=["namespaced"])  # checks run in both: see below
def test_drift_is_checked_confirmed_by_persistence_and_retrained_once_within_the_cooldown(
    test_cluster: TestCluster, cluster: Cluster, operator: Any, published: tuple[Path, Path], tmp_path: Path
) -> None:
    version, data = published
    logs = tmp_path / "logs"
    rows = [json.loads(line)["messages"] for line in data.read_text().splitlines()]
    french = [f"Bonjour, ma commande {i} n'est toujours pas arrivée, pouvez-vous m'aider ?" for i in range(40)]
    log_requests(logs, "0001.jsonl", [m[0]["content"] for m in rows], [m[1]["content"] for m in rows])
    template = {
        "dataset": {"sources": [{"uri": f"file://{logs}/"}]},
        "output": {"uri": f"file://{version.parent}/", "channel": "prod"},
        "resources": {"gpus": 0},
    }
    apply_monitor(cluster, monitor_manifest("tickets", version, logs, retraining={"template": template}))

    # 1: the training population, no drift.
    job = run_check(cluster, "tickets-check-1", tmp_path)
    pod = job["spec"]["template"]["spec"]
    assert pod["automountServiceAccountToken"] is False and pod["containers"][0]["image"] == "trainer:test"
    status = decided(cluster, "tickets", 1)
    assert status["decision"]["verdict"] == "NoDrift" and status["champion"] == version.name, status["decision"]
    assert status["newestSample"] == f"file://{logs}/0001.jsonl" and status["sampleSize"] == 64
    assert cluster.job("tickets-check-2") is None, "the next check waits for the interval"

    # 2 and 3: French requests, in two new windows: drifted, then confirmed, and one retraining.
    log_requests(logs, "0002.jsonl", french)
    an_interval_passes(test_cluster, "tickets")
    job = run_check(cluster, "tickets-check-2", tmp_path)
    assert job["spec"]["template"]["spec"]["containers"][0]["command"][-2:] == ["--after", f"file://{logs}/0001.jsonl"]
    status = decided(cluster, "tickets", 2)
    assert status["decision"]["verdict"] == "Drifted" and status["consecutiveDrifted"] == 1, status["decision"]
    assert status["sampleSize"] == 40, "only the requests after the last decided window"
    log_requests(logs, "0003.jsonl", french)
    an_interval_passes(test_cluster, "tickets")
    run_check(cluster, "tickets-check-3", tmp_path)
    status = decided(cluster, "tickets", 3)
    assert status["decision"] == {
        "verdict": "DriftConfirmed",
        "action": "RetrainingStarted",
        "message": status["decision"]["message"],
    }
    (retraining,) = status["retrainings"]
    assert retraining["jobName"] == "tickets-retrain-1" and retraining["outcome"] == "Running"
    drift = next(c for c in status["conditions"] if c["type"] == "DriftDetected")
    assert drift["status"] == "True" and drift["reason"] == "RetrainingStarted"
    challenger = cluster.finetunejob("tickets-retrain-1")
    owner = challenger["metadata"]["ownerReferences"][0]
    assert owner["kind"] == "DriftMonitor" and owner["name"] == "tickets" and owner["controller"]
    sources = challenger["spec"]["dataset"]["sources"]
    assert sources[0]["uri"] == f"file://{logs}/"
    (replayed,) = sources[1:]
    # Through the same split as the new data: the champion's test rows stay test rows.
    assert replayed == {**replayed, "uri": f"file://{data}", "weight": 0.5, "trainOnly": False}
    assert "channel" not in challenger["spec"]["output"], "only the champion/challenger comparison moves prod"

    # 4 and 5: still French, within the cooldown: confirmed again, and no second retraining.
    for sequence, name in ((4, "0004.jsonl"), (5, "0005.jsonl")):
        log_requests(logs, name, french)
        an_interval_passes(test_cluster, "tickets")
        run_check(cluster, f"tickets-check-{sequence}", tmp_path)
        status = decided(cluster, "tickets", sequence)
    assert status["decision"]["verdict"] == "DriftConfirmed" and status["decision"]["action"] == "Cooldown"
    assert len(status["retrainings"]) == 1
    assert [
        f["metadata"]["name"]
        for f in cluster.custom.list_namespaced_custom_object(GROUP, VERSION, "default", "finetunejobs")["items"]
    ] == ["tickets-retrain-1"]

    # 6: too few new requests decide nothing, and are read again next time.
    log_requests(logs, "0006.jsonl", french[:5])
    an_interval_passes(test_cluster, "tickets")
    run_check(cluster, "tickets-check-6", tmp_path)
    status = decided(cluster, "tickets", 6)
    assert status["decision"]["verdict"] == "TooFewSamples" and status["newestSample"] == f"file://{logs}/0005.jsonl"

    # 7: a check that cannot be made (the small file withdrawn: no new logs at all) says why, and
    # changes no verdict.
    (logs / "0006.jsonl").unlink()
    an_interval_passes(test_cluster, "tickets")
    job = run_check(cluster, "tickets-check-7", tmp_path)
    assert job["spec"]["template"]["spec"]["containers"][0]["command"][-1] == f"file://{logs}/0005.jsonl"
    status = decided(cluster, "tickets", 7)
    assert status["decision"]["verdict"] == "CheckFailed" and "no request logs" in status["decision"]["message"]
    assert next(c for c in status["conditions"] if c["type"] == "DriftDetected")["status"] == "True"

    reasons = [e["reason"] for e in cluster.events_for("tickets")]
    for reason in ("NoDrift", "Drifted", "DriftConfirmed", "RetrainingStarted", "TooFewSamples", "CheckFailed"):
        assert reason in reasons, reasons
    assert reasons.count("RetrainingStarted") == 1

    port = os.environ["KUBETUNE_METRICS_PORT"]
    key = (("driftmonitor", "tickets"), ("namespace", "default"))
    figures = wait_for(lambda: (f := scrape(port)).get(("kubetune_driftmonitor_checks_total", key)) == 7 and f)
    assert figures[("kubetune_driftmonitor_retrainings_total", key)] == 1
    assert figures[("kubetune_driftmonitor_drift_detected", key)] == 1


def test_a_monitor_whose_retraining_the_policy_refuses_runs_nothing_and_says_where(
    cluster: Cluster, operator: Any, tmp_path: Path
) -> None:
    template = {
        "image": "registry.example.com/someone-else/trainer:1",
        "dataset": {"sources": [{"uri": f"file://{tmp_path}/new/"}]},
        "output": {"uri": f"file://{tmp_path}/out/"},
    }
    apply_monitor(
        cluster,
        monitor_manifest("refused", tmp_path / "out" / "v", tmp_path / "logs", retraining={"template": template}),
    )
    status = wait_for(lambda: monitor(cluster, "refused").get("status"), what="the monitor's status")
    (valid,) = [c for c in status["conditions"] if c["type"] == "Valid"]
    assert valid["status"] == "False" and valid["reason"] == "ImageNotAllowed"
    assert valid["message"].startswith("spec.retraining.template.image: "), valid
    assert cluster.job("refused-check-1") is None


@dataclass(frozen=True)
class Champion:
    """A version on ``prod`` as its monitor sees it: where it was published (file:// or s3://), the job
    spec it was trained with, and the store that reads both."""

    output: str  # the output prefix, ending in '/'
    version: str
    spec: dict[str, Any]
    store: ObjectStore

    def manifest(self, version: str | None = None) -> dict[str, Any]:
        return dict(json.loads(self.store.read_bytes(f"{self.output}{version or self.version}/manifest.json")))

    def versions(self) -> set[str]:
        names = {uri[len(self.output) :].split("/")[0] for uri in self.store.list(self.output)}
        return {name for name in names if re.fullmatch(VERSION_PATTERN, name)}

    def channel_history(self, channel: str = "prod") -> list[str]:
        """The versions the channel named, oldest first (its create-only numbered entries)."""
        entries = [uri for uri in self.store.list(f"{self.output}channels/{channel}/") if uri.endswith(".json")]
        return [json.loads(self.store.read_bytes(uri))["version"] for uri in sorted(entries)]


def on_files(version: Path) -> Champion:
    """The champion ``publish_on_channel`` put on prod under a local folder."""
    spec = yaml.safe_load((version.parent.parent.parent / "job.yaml").read_text())["spec"]
    return Champion(f"file://{version.parent}/", version.name, spec, ObjectStore())


def reported_result(champion: Champion, version: str) -> dict[str, Any]:
    """``status.result`` as the trainer writes it for the version it published, from its manifest."""
    manifest = champion.manifest(version)
    gate = manifest["evaluation"]["gate"]
    return {
        "version": version,
        "manifestUri": f"{champion.output}{version}/manifest.json",
        "promoted": manifest["promoted"],
        "qualityGateMessage": gate["message"],
        "gateChecks": [{key: check[key] for key in ("name", "passed", "detail")} for check in gate["checks"]],
    }


def retrain_from_logs(
    cluster: Cluster, champion: Champion, logs: str, tmp_path: Path, *, name: str, **template: Any
) -> dict[str, Any]:
    """A monitor guarding ``champion``'s channel, reading request logs under ``logs``, acting on the
    first drifted window (persistence 1), whose retraining learns from the logs' confirmed answers
    (``format: request-log``): the champion's own job spec with that data and ``template``'s changes.
    Its first check is run and decided; the monitor's status is returned."""
    logged = {"uri": logs, "format": "request-log"}
    spec = {**champion.spec, "dataset": {**champion.spec["dataset"], "sources": [logged]}}
    spec["output"] = {"uri": champion.output, "formats": ["adapter"]}
    for key, value in template.items():
        spec[key] = {**spec.get(key, {}), **value}
    manifest = monitor_manifest(name, champion.output, logs, retraining={"template": spec})
    if "s3" in champion.spec:
        manifest["spec"]["s3"] = champion.spec["s3"]
    manifest["spec"]["detection"]["persistence"] = 1
    apply_monitor(cluster, manifest)
    run_check(cluster, f"{name}-check-1", tmp_path)
    status = decided(cluster, name, 1)
    assert status["decision"]["action"] == "RetrainingStarted", status["decision"]
    return status


def run_retraining(cluster: Cluster, name: str, champion: Champion, tmp_path: Path, *, max_steps: int) -> str:
    """The retraining FineTuneJob ``name`` as the cluster runs it: its pods played, the training itself
    a real local run of the spec the operator made (``max_steps`` steps), publishing beside the
    champion, its result reported as the trainer reports it (and a reported promotion verified by the
    real ``kubetune verify``). Returns the version it published."""
    spec = cluster.finetunejob(name)["spec"]
    wait_for(lambda: cluster.job(f"{name}-preflight"), what="the retraining's pre-flight Job")
    cluster.trainer_reports(name, {"preflight": {"passed": True}})
    cluster.finish_job(f"{name}-preflight", succeeded=True)
    wait_for(lambda: cluster.job(f"{name}-train"), what="the retraining's training Job")
    cluster.start_job(f"{name}-train")
    job_file = tmp_path / f"{name}.yaml"
    job_file.write_text(
        yaml.safe_dump(
            {"apiVersion": f"{GROUP}/{VERSION}", "kind": "FineTuneJob", "metadata": {"name": name}, "spec": spec}
        )
    )
    before = champion.versions()
    code = kubetune(["run", str(job_file), "--workdir", str(tmp_path / "work"), "--max-steps", str(max_steps)])
    assert code == 0
    (challenger,) = champion.versions() - before
    result = reported_result(champion, challenger)
    cluster.trainer_reports(name, {"result": result})
    cluster.finish_job(f"{name}-train", succeeded=True)
    if result["promoted"]:
        run_check(cluster, f"{name}-verify", tmp_path)
    return challenger


def compared_status(
    cluster: Cluster, monitor_name: str, tmp_path: Path, challenger: str, output: str
) -> dict[str, Any]:
    """The comparison Job, run for real (``kubetune challenge``), and the monitor's status once recorded."""
    job = wait_for(lambda: cluster.job(f"{monitor_name}-compare-1"), what="the comparison Job")
    assert job["spec"]["template"]["spec"]["containers"][0]["command"][:3] == [
        "kubetune",
        "challenge",
        f"{output}{challenger}",
    ]
    run_check(cluster, f"{monitor_name}-compare-1", tmp_path)
    return dict(
        wait_for(
            lambda: (
                (s := monitor(cluster, monitor_name)["status"])["retrainings"][0]["outcome"]
                in ("Promoted", "NotPromoted")
                and s
            ),
            what="the challenger's comparison recorded",
        )
    )


# Each comparison runs real training: the losing one in the chart's default (namespaced) mode, the
# winning one cluster-wide, so both modes' grants carry a comparison.
@pytest.mark.parametrize("rbac_mode", [NAMESPACED], ids=["namespaced"])
def test_a_challenger_that_does_not_win_is_not_promoted_and_the_channel_keeps_the_champion(
    test_cluster: TestCluster, cluster: Cluster, operator: Any, published: tuple[Path, Path], tmp_path: Path
) -> None:
    """Drift confirmed at once starts a retraining that learns from the request logs' confirmed answers;
    the operator then compares the challenger with the champion in a Job running the real
    ``kubetune challenge``: two training steps win nothing, so prod still names the champion."""
    champion = on_files(published[0])
    logs = tmp_path / "logs"
    log_requests(logs, "0001.jsonl", [f"Bonjour, ma commande {i} n'est pas arrivée." for i in range(40)])
    served = champion.channel_history()
    retrain_from_logs(cluster, champion, f"file://{logs}/", tmp_path, name="fast")
    challenger = run_retraining(cluster, "fast-retrain-1", champion, tmp_path, max_steps=2)

    status = compared_status(cluster, "fast", tmp_path, challenger, champion.output)
    (record,) = status["retrainings"]
    assert record["outcome"] == "NotPromoted" and record["version"] == challenger and record["message"], record
    assert "promotedVersion" not in status or status["promotedVersion"] is None
    assert champion.channel_history() == served and served[-1] == champion.version
    assert "ChallengerNotPromoted" in [e["reason"] for e in cluster.events_for("fast")]
    # The retraining FineTuneJob's own status and Events say the same.
    challenge = cluster.finetunejob("fast-retrain-1")["status"]["challenge"]
    assert (challenge["monitor"], challenge["champion"], challenge["promoted"]) == ("fast", champion.version, False)
    assert challenge["message"] == record["message"]
    assert "NotPromoted" in [e["reason"] for e in cluster.events_for("fast-retrain-1")]
    key = (("driftmonitor", "fast"), ("namespace", "default"), ("outcome", "NotPromoted"))
    port = os.environ["KUBETUNE_METRICS_PORT"]
    wait_for(lambda: scrape(port).get(("kubetune_driftmonitor_promotions_total", key)) == 1, what="the metric")


@pytest.fixture(scope="module")
def s3_champion(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path, s3_endpoint: str) -> Champion:
    """A champion published to S3 (the test's moto server) and put on prod, that measured its
    forgetting: a challenger can only win against one that did."""
    import boto3

    bucket = f"models-{uuid.uuid4().hex[:12]}"
    boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1").create_bucket(Bucket=bucket)
    root, output = tmp_path_factory.mktemp("s3-champion"), f"s3://{bucket}/tickets/"
    publish_champion(root, tiny_model_dir, output=output, s3_endpoint=s3_endpoint, measure_forgetting=True)
    spec = yaml.safe_load((root / "job.yaml").read_text())["spec"]
    store = ObjectStore(S3Spec(endpoint=s3_endpoint, region="us-east-1"))
    placed = Champion(output, "", spec, store)
    return Champion(output, placed.channel_history()[-1], spec, store)


@pytest.mark.parametrize("rbac_mode", [CLUSTERWIDE], ids=["clusterwide"])
def test_a_challenger_that_wins_on_the_new_data_is_promoted_and_the_champion_stays_one_rollback_away(
    test_cluster: TestCluster, cluster: Cluster, s3_champion: Champion, s3_endpoint: str, tmp_path: Path
) -> None:
    """The loop on S3 (versions, channel and request logs in the test's S3 server, listed by the
    platform as an allowed endpoint) with a challenger that learns the new requests' confirmed answer
    (every French request is ``delivery``, an answer the champion never gave): a win on the new data
    with the 95% interval above 0, nothing lost on the champion's test rows or the general prompts, its
    own gate passed and verified. The channel moves to it; the champion is still published and still in
    the channel's history."""
    champion = s3_champion
    served = champion.channel_history()
    assert served[-1] == champion.version
    bucket = champion.output.split("/")[2]
    french = [f"Bonjour, ma commande {i} n'est pas arrivée." for i in range(60)]
    rows = [{"messages": [{"role": "user", "content": text}], "label": "delivery"} for text in french]
    logs = f"s3://{bucket}/request-logs/"  # a new answer, one token long
    champion.store.write_bytes(f"{logs}0001.jsonl", "".join(json.dumps(r) + "\n" for r in rows).encode())
    endpoint = s3_endpoint.removeprefix("http://")
    with running_operator(test_cluster, KUBETUNE_ALLOWED_S3_ENDPOINTS=endpoint):
        # Full fine-tuning at a high rate: the tiny model's random weights learn an answer in 40 steps.
        retrain_from_logs(
            cluster,
            champion,
            logs,
            tmp_path,
            name="win",
            method={"type": "full"},
            output={"formats": ["merged"]},
            hyperparameters={"learningRate": 0.01, "epochs": 20},
        )
        challenger = run_retraining(cluster, "win-retrain-1", champion, tmp_path, max_steps=40)
        mix = champion.manifest(challenger)["dataset"]["mix"]
        weights = {source["uri"]: (source["format"], source["weight"]) for source in mix}
        old = {uri: ("auto: chat", 0.5) for uri in champion.manifest()["dataset"]["sources"]}
        assert weights == {logs: ("request-log", 1.0), **old}, "the replay mix in the challenger's lineage"

        status = compared_status(cluster, "win", tmp_path, challenger, champion.output)
        (record,) = status["retrainings"]
        assert record["outcome"] == "Promoted" and record["version"] == challenger, record["message"]
        assert status["promotedVersion"] == challenger
        assert champion.channel_history() == [*served, challenger]
        assert champion.manifest()["promoted"], "the champion is never lost: only the pointer moved"
        assert "ChallengerPromoted" in [e["reason"] for e in cluster.events_for("win")]
        challenge = cluster.finetunejob("win-retrain-1")["status"]["challenge"]
        assert (challenge["champion"], challenge["promoted"]) == (champion.version, True)
        assert "Promoted" in [e["reason"] for e in cluster.events_for("win-retrain-1")]
        key = (("driftmonitor", "win"), ("namespace", "default"), ("outcome", "Promoted"))
        port = os.environ["KUBETUNE_METRICS_PORT"]
        wait_for(lambda: scrape(port).get(("kubetune_driftmonitor_promotions_total", key)) == 1, what="the metric")
    # One rollback away: the champion is served again.
    assert kubetune(["rollback", champion.output, "--channel", "prod", "--endpoint", s3_endpoint]) == 0
    assert champion.channel_history() == [*served, challenger, champion.version]
