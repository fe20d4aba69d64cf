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
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from kubetune.api.contract import TERMINATION_LOG_PATH
from kubetune.api.v1alpha1 import GROUP, VERSION
from kubetune_trainer.cli import main as kubetune
from tests.kubeapi.cluster import CLUSTERWIDE, NAMESPACED, TestCluster
from tests.operator.cluster import Cluster, wait_for
from tests.trainer.jobs import publish_on_channel

MONITORS = "driftmonitors"


@pytest.fixture(scope="module")
def published(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> tuple[Path, Path]:
    return publish_on_channel(tmp_path_factory.mktemp("monitored"), tiny_model_dir)


def monitor_manifest(name: str, version: Path, logs: Path, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "DriftMonitor",
        "metadata": {"name": name},
        "spec": {
            "target": {"outputUri": f"file://{version.parent}/", "channel": "prod"},
            "samples": {"uri": f"file://{logs}/"},
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


@pytest.mark.parametrize("rbac_mode", [CLUSTERWIDE], ids=["clusterwide"])
def reported_result(version: Path, output: str) -> dict[str, Any]:
    """``status.result`` as the trainer writes it for the version it published, from its manifest."""
    manifest = json.loads((version / "manifest.json").read_text())
    gate = manifest["evaluation"]["gate"]
    return {
        "version": version.name,
        "manifestUri": f"{output}{version.name}/manifest.json",
        "promoted": manifest["promoted"],
        "qualityGateMessage": gate["message"],
        "gateChecks": [{key: check[key] for key in ("name", "passed", "detail")} for check in gate["checks"]],
    }


def retrain_from_logs(
    cluster: Cluster, champion: Path, logs: Path, tmp_path: Path, *, name: str, **template: Any
) -> dict[str, Any]:
    """A monitor guarding ``champion``'s channel, acting on the first drifted window (persistence 1),
    whose retraining learns from the request logs' confirmed answers (``format: request-log``): the
    champion's own job spec with that data and ``template``'s changes. Its first check is run and
    decided; the monitor's status is returned."""
    output = f"file://{champion.parent}/"
    tiny = yaml.safe_load((champion.parent.parent.parent / "job.yaml").read_text())["spec"]
    logged = {"uri": f"file://{logs}/", "format": "request-log"}
    spec = {**tiny, "dataset": {**tiny["dataset"], "sources": [logged]}}
    spec["output"] = {"uri": output, "formats": ["adapter"]}
    for key, value in template.items():
        spec[key] = {**spec.get(key, {}), **value}
    manifest = monitor_manifest(name, champion, logs, retraining={"template": spec})
    manifest["spec"]["detection"]["persistence"] = 1
    apply_monitor(cluster, manifest)
    run_check(cluster, f"{name}-check-1", tmp_path)
    status = decided(cluster, name, 1)
    assert status["decision"]["action"] == "RetrainingStarted", status["decision"]
    return status


def run_retraining(cluster: Cluster, name: str, champion: Path, tmp_path: Path, *, max_steps: int) -> str:
    """The retraining FineTuneJob ``name`` as the cluster runs it: its pods played, the training itself
    a real local run of the spec the operator made (``max_steps`` steps), publishing beside the
    champion, its result reported as the trainer reports it (and a reported promotion verified by the
    real ``kubetune verify``). Returns the version it published."""
    output = f"file://{champion.parent}/"
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
    before = {v.name for v in champion.parent.glob("v*")}
    code = kubetune(["run", str(job_file), "--workdir", str(tmp_path / "work"), "--max-steps", str(max_steps)])
    assert code == 0
    (challenger,) = {v.name for v in champion.parent.glob("v*")} - before
    result = reported_result(champion.parent / challenger, output)
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
    version, _ = published
    output = f"file://{version.parent}/"
    logs = tmp_path / "logs"
    log_requests(logs, "0001.jsonl", [f"Bonjour, ma commande {i} n'est pas arrivée." for i in range(40)])
    retrain_from_logs(cluster, version, logs, tmp_path, name="fast")
    challenger = run_retraining(cluster, "fast-retrain-1", version, tmp_path, max_steps=2)

    status = compared_status(cluster, "fast", tmp_path, challenger, output)
    (record,) = status["retrainings"]
    assert record["outcome"] == "NotPromoted" and record["version"] == challenger and record["message"], record
    assert "promotedVersion" not in status or status["promotedVersion"] is None
    entries = sorted((version.parent / "channels" / "prod").glob("*.json"))
    assert [json.loads(e.read_text())["version"] for e in entries] == [version.name]
    assert "ChallengerNotPromoted" in [e["reason"] for e in cluster.events_for("fast")]
    # The retraining FineTuneJob's own status and Events say the same.
    challenge = cluster.finetunejob("fast-retrain-1")["status"]["challenge"]
    assert (challenge["monitor"], challenge["champion"], challenge["promoted"]) == ("fast", version.name, False)
    assert challenge["message"] == record["message"]
    assert "NotPromoted" in [e["reason"] for e in cluster.events_for("fast-retrain-1")]
    key = (("driftmonitor", "fast"), ("namespace", "default"), ("outcome", "NotPromoted"))
    port = os.environ["KUBETUNE_METRICS_PORT"]
    wait_for(lambda: scrape(port).get(("kubetune_driftmonitor_promotions_total", key)) == 1, what="the metric")


def channel_history(version: Path, channel: str = "prod") -> list[str]:
    """The versions a channel named, oldest first (its create-only numbered entries)."""
    entries = sorted((version.parent / "channels" / channel).glob("*.json"))
    return [json.loads(entry.read_text())["version"] for entry in entries]


@pytest.fixture(scope="module")
def measured_champion(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> Path:
    """A champion on prod that measured its forgetting: a challenger can only win against one that did."""
    version, _ = publish_on_channel(tmp_path_factory.mktemp("measured"), tiny_model_dir, measure_forgetting=True)
    return version


@pytest.mark.parametrize("rbac_mode", [CLUSTERWIDE], ids=["clusterwide"])
def test_a_challenger_that_wins_on_the_new_data_is_promoted_and_the_champion_stays_one_rollback_away(
    test_cluster: TestCluster, cluster: Cluster, operator: Any, measured_champion: Path, tmp_path: Path
) -> None:
    """The same loop with a challenger that learns the new requests' confirmed answer (every French
    request is ``delivery``, an answer the champion never gave): a win on the new data
    with the 95% interval above 0, nothing lost on the champion's test rows or the general prompts, its
    own gate passed and verified. The channel moves to it; the champion is still published and still in
    the channel's history."""
    champion = measured_champion
    output = f"file://{champion.parent}/"
    served = channel_history(champion)
    assert served[-1] == champion.name
    logs = tmp_path / "logs"
    french = [f"Bonjour, ma commande {i} n'est pas arrivée." for i in range(60)]
    log_requests(logs, "0001.jsonl", french, ["delivery"] * len(french))  # a new answer, one token long
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

    mix = json.loads((champion.parent / challenger / "manifest.json").read_text())["dataset"]["mix"]
    champion_data = json.loads((champion / "manifest.json").read_text())["dataset"]["sources"]
    weights = {source["uri"]: (source["format"], source["weight"]) for source in mix}
    assert weights == {f"file://{logs}/": ("request-log", 1.0), **{uri: ("auto: chat", 0.5) for uri in champion_data}}

    status = compared_status(cluster, "win", tmp_path, challenger, output)
    (record,) = status["retrainings"]
    assert record["outcome"] == "Promoted" and record["version"] == challenger, record["message"]
    assert status["promotedVersion"] == challenger
    assert channel_history(champion) == [*served, challenger]
    assert (champion / "manifest.json").exists(), "the champion is never lost: only the pointer moved"
    assert "ChallengerPromoted" in [e["reason"] for e in cluster.events_for("win")]
    challenge = cluster.finetunejob("win-retrain-1")["status"]["challenge"]
    assert (challenge["champion"], challenge["promoted"]) == (champion.name, True)
    assert "Promoted" in [e["reason"] for e in cluster.events_for("win-retrain-1")]
    key = (("driftmonitor", "win"), ("namespace", "default"), ("outcome", "Promoted"))
    port = os.environ["KUBETUNE_METRICS_PORT"]
    wait_for(lambda: scrape(port).get(("kubetune_driftmonitor_promotions_total", key)) == 1, what="the metric")
    # One rollback away: the champion is served again.
    assert kubetune(["rollback", output, "--channel", "prod"]) == 0
    assert channel_history(champion) == [*served, challenger, champion.name]
