"""A real Prometheus (Debian's package) scrapes the real operator, a Pushgateway and the training
pod of a real tiny run that the operator drives; everything is asserted through Prometheus' HTTP
API, the way a dashboard or an alert would see it."""

from __future__ import annotations

import json
import re
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from kubetune.api.driftmonitor import DriftCheckReport, MethodScore
from kubetune.api.v1alpha1 import GROUP, PLURAL, VERSION
from tests.kubeapi.cluster import TestCluster
from tests.kubeapi.server import Outage
from tests.observability.prometheus import (
    Prometheus,
    alert_queries,
    as_prometheus_sees_it,
    chart_dashboard,
    chart_rules,
    dashboard_queries,
    family_of,
    metric_names,
    prometheus,
    promtool,
    pushgateway,
    write_chart_rules,
)
from tests.operator.cluster import Cluster, wait_for
from tests.operator.conftest import free_port, running_operator
from tests.operator.test_end_to_end import run_pod
from tests.scrape import get
from tests.trainer.jobs import write_dataset

DOCS = Path(__file__).resolve().parents[2] / "docs" / "metrics.md"
STANDARD_PREFIXES = ("process_", "python_", "push_", "pushgateway_", "go_")


def manifest(name: str, model_dir: Path, data: Path, out: Path) -> dict[str, Any]:
    return yaml.safe_load(
        f"""
apiVersion: kubetune.dev/v1alpha1
kind: FineTuneJob
metadata: {{name: {name}}}
spec:
  baseModel: {{uri: "file://{model_dir}"}}
  dataset: {{sources: [{{uri: "file://{data}"}}], split: {{validation: 0.15, test: 0.15}}}}
  method: {{type: lora, lora: {{r: 4}}}}
  hyperparameters: {{epochs: 1, batchSize: 2, gradientAccumulationSteps: 1, sequenceLength: 64, evalSteps: 4}}
  evaluation: {{metrics: [perplexity, exactMatch], maxNewTokens: 4}}
  output: {{uri: "file://{out}/", formats: [adapter]}}
  checkpoint: {{everySteps: 4}}
  resources: {{gpus: 0}}
"""
    )


def exposed_families(text: str) -> dict[str, str]:
    """Family -> type, named as users query them (counters with _total, info with _info)."""
    found = {}
    for family in text_string_to_metric_families(text):
        name = family.name + ("_total" if family.type == "counter" else "")
        found[name] = family.type
    return found


def documented_families() -> dict[str, str]:
    rows = re.findall(r"^\| `(kubetune_[a-z_]+)` \| (\w+) \|", DOCS.read_text(), flags=re.MULTILINE)
    return dict(rows)


def kubetune_only(text: str) -> str:
    """The kubetune families of an exposition (a Pushgateway's holds its own and Go's too)."""
    keep, lines = False, []
    for line in text.splitlines():
        if line.startswith("# HELP") or line.startswith("# TYPE"):
            keep = line.split()[2].startswith("kubetune_")
        elif line and not line.startswith("#"):
            keep = line.startswith("kubetune_")
        if keep:
            lines.append(line)
    return "\n".join(lines) + "\n"


def pushgateway_groups(url: str) -> list[dict[str, str]]:
    with urllib.request.urlopen(f"{url}/api/v1/metrics", timeout=5) as response:
        return [group["labels"] for group in json.loads(response.read())["data"]]


# Two trainer processes (pre-flight and training) importing torch, plus three servers: tens of seconds.
@pytest.mark.slow
def test_prometheus_sees_the_operator_and_a_trainer_run_and_the_dashboard_and_alerts_read_them(
    tmp_path: Path, tiny_model_dir: Path, test_cluster: TestCluster, cluster: Cluster
) -> None:
    data = write_dataset(tmp_path / "data.jsonl", 64)
    operator_port, trainer_port = free_port(), free_port()
    rules = write_chart_rules(tmp_path)
    with pushgateway(tmp_path) as gateway:
        settings = {
            "KUBETUNE_METRICS_PORT": str(operator_port),
            "KUBETUNE_TRAINER_METRICS_PORT": str(trainer_port),
            "KUBETUNE_PUSHGATEWAY_URL": gateway,
            "KUBETUNE_PUSH_INTERVAL_SECONDS": "1",
        }
        scrape_configs = [
            {"job_name": job, "honor_labels": True, "static_configs": [{"targets": [target]}]}
            for job, target in (
                ("kubetune-operator", f"127.0.0.1:{operator_port}"),
                ("pushgateway", gateway.removeprefix("http://")),
                ("kubetune-trainer-pods", f"127.0.0.1:{trainer_port}"),  # what the PodMonitor does
            )
        ]
        with running_operator(test_cluster, **settings), prometheus(tmp_path, scrape_configs, [rules]) as prom:
            # A job that stays Validating (an active job), after one refused API call (a reconcile error).
            cluster.outage(Outage(verb="create", plural="jobs", name="waiting-preflight"))
            cluster.apply(manifest("waiting", tiny_model_dir, data, tmp_path / "out"))
            # The job that really runs: the test plays the kubelet, running each pod's command and env.
            cluster.apply(manifest("e2e", tiny_model_dir, data, tmp_path / "out"))
            wait_for(lambda: cluster.job("e2e-preflight"), what="pre-flight Job")
            assert run_pod(cluster, "e2e-preflight", tmp_path) == 0
            wait_for(lambda: cluster.job("e2e-train"), what="training Job")
            scraped_live: list[str] = []
            watcher = threading.Thread(target=lambda: scraped_live.append(_scrape_while_running(trainer_port)))
            watcher.start()
            assert run_pod(cluster, "e2e-train", tmp_path) == 0
            watcher.join(10)
            status = wait_for(
                lambda: (s := cluster.finetunejob("e2e")["status"]).get("phase") == "Succeeded" and s,
                what="Succeeded",
            )
            _a_monitor_decides_one_check(cluster, tmp_path)
            wait_for(
                lambda: "kubetune_driftmonitor_p_value" in prom.names(), timeout=30, what="a scrape of the monitor"
            )
            operator_text = get(f"http://127.0.0.1:{operator_port}/metrics")
            trainer_text = kubetune_only(get(f"{gateway}/metrics"))

            _assert_operator_series(prom)
            _assert_trainer_series(prom, status)
            _assert_final_figures(prom, status)
            _assert_rules_loaded(prom)
            names = _assert_dashboard_queries_run(prom)
            exposed = {**exposed_families(operator_text), **exposed_families(trainer_text)}
            live = {family_of(name) for name in exposed} | set(exposed)
            missing = {name for name in names if name not in live and family_of(name) not in live}
            assert not missing, f"the dashboard or alerts query metrics that no scrape exports: {missing}"
            assert names <= {n for n in prom.names()} | {family_of(n) for n in prom.names()}

            kubetune_exposed = {k: v for k, v in exposed.items() if not k.startswith(STANDARD_PREFIXES)}
            assert documented_families() == kubetune_exposed, "docs/metrics.md lists exactly the exported metrics"
            for text in (operator_text, trainer_text, scraped_live[0] if scraped_live else ""):
                assert text, "the training pod was scraped while it ran"
                lint = promtool("check", "metrics", stdin=kubetune_only(text))
                assert lint.returncode == 0 and not lint.stdout.strip(), lint.stdout + lint.stderr

            # Deleting the FineTuneJob deletes its trainer's Pushgateway group (and nothing else).
            assert {"e2e", "waiting"} >= {g.get("finetunejob") for g in pushgateway_groups(gateway)} >= {"e2e"}
            cluster.custom.delete_namespaced_custom_object(GROUP, VERSION, "default", PLURAL, "e2e")
            wait_for(
                lambda: all(g.get("finetunejob") != "e2e" for g in pushgateway_groups(gateway)),
                what="the Pushgateway group deleted",
            )


def _a_monitor_decides_one_check(cluster: Cluster, tmp_path: Path) -> None:
    """A DriftMonitor whose first check Job ends with its report (the kubelet fixture writes the
    termination message the check pod would, in the contract's format), so the monitor's families
    have series for Prometheus, the dashboard and the alert to read."""
    monitor = {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "DriftMonitor",
        "metadata": {"name": "e2e-prod", "namespace": "default"},
        "spec": {
            "target": {"outputUri": f"file://{tmp_path}/out/", "channel": "prod"},
            "samples": {"uri": f"file://{tmp_path}/requests/"},
        },
    }
    cluster.custom.create_namespaced_custom_object(GROUP, VERSION, "default", "driftmonitors", monitor)
    wait_for(lambda: cluster.job("e2e-prod-check-1"), what="the monitor's check Job")
    cluster.start_job("e2e-prod-check-1")
    report = DriftCheckReport(
        version="v20261204-101500-0a1b2c",
        sample_size=300,
        labelled=0,
        newest=f"file://{tmp_path}/requests/0001.jsonl",
        training_sources=[],
        drifted=False,
        alpha=0.05,
        methods=[MethodScore(method="embeddings.mmd", statistic=0.001, p_value=0.4, adjusted_p_value=0.8)],
    )
    cluster.finish_job("e2e-prod-check-1", succeeded=True, termination_message=report.model_dump_json(by_alias=True))
    wait_for(
        lambda: (
            (
                cluster.custom.get_namespaced_custom_object(GROUP, VERSION, "default", "driftmonitors", "e2e-prod").get(
                    "status"
                )
                or {}
            ).get("checks")
            == 1
        ),
        what="the check decided",
    )


def _scrape_while_running(port: int) -> str:
    """What a PodMonitor would scrape from the training pod: its /metrics once it is training."""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            text = get(f"http://127.0.0.1:{port}/metrics", timeout=2)
            if "kubetune_trainer_step{" in text:
                return text
        except OSError:
            pass
        time.sleep(0.2)
    return ""


def _assert_operator_series(prom: Prometheus) -> None:
    job = 'job="kubetune-operator", namespace="default"'
    both = f'kubetune_finetunejobs{{{job}, phase=~"Succeeded|Validating"}} == 1'  # e2e, and waiting
    wait_for(lambda: len(prom.query(both)) == 2, what=both)
    assert prom.value(f'kubetune_finetunejobs{{{job}, phase="Running"}}') == 0
    waiting = prom.query(f'kubetune_finetunejob_phase_timestamp_seconds{{{job}, finetunejob="waiting"}}')
    assert [s["metric"]["phase"] for s in waiting] == ["Validating"]
    assert prom.query(f'kubetune_finetunejob_phase_timestamp_seconds{{{job}, finetunejob="e2e"}}') == []
    assert prom.value(f"kubetune_finetunejob_queue_seconds_count{{{job}}}") == 1
    assert prom.value(f"kubetune_finetunejob_job_creation_delay_seconds_count{{{job}}}") == 1
    assert prom.value(f'kubetune_finetunejob_duration_seconds_count{{{job}, outcome="Succeeded"}}') == 1
    assert prom.value(f'kubetune_finetunejob_failures_total{{{job}, reason="TrainingFailed"}}') == 0
    assert prom.value(f"kubetune_gpus_in_use{{{job}}}") == 0, "the job asked for no GPU"
    # The refused create: the Kubernetes client raises ServiceException for a 5xx answer.
    assert (prom.value('kubetune_reconcile_errors_total{reason="ServiceException"}') or 0) >= 1
    assert (prom.value("sum(kubetune_reconcile_duration_seconds_count)") or 0) >= 5
    transitions = {
        (s["metric"]["from_phase"], s["metric"]["to_phase"])
        for s in prom.query(f"kubetune_finetunejob_phase_transitions_total{{{job}}} > 0")
    }
    assert {("New", "Validating"), ("Queued", "Running"), ("Running", "Succeeded")} <= transitions


def _assert_trainer_series(prom: Prometheus, status: dict[str, Any]) -> None:
    """The pushed values outlive the pod and agree with what the trainer wrote into the status."""
    pushed = 'job="kubetune-trainer", namespace="default", finetunejob="e2e"'
    wait_for(lambda: prom.value(f"kubetune_trainer_exit_code{{{pushed}}}") == 0, what="the trainer's final push")
    progress, result = status["progress"], status["result"]
    assert prom.value(f"kubetune_trainer_step{{{pushed}}}") == progress["step"] == progress["totalSteps"] > 0
    assert prom.value(f"kubetune_trainer_total_steps{{{pushed}}}") == progress["totalSteps"]
    assert prom.value(f"kubetune_trainer_train_loss{{{pushed}}}") == pytest.approx(progress["trainLoss"])
    assert prom.value(f"kubetune_trainer_eval_loss{{{pushed}}}") == pytest.approx(progress["evalLoss"])
    for key, number in result["metrics"].items():
        model, metric = key.split(".")
        expr = f'kubetune_trainer_eval_metric{{{pushed}, model="{model}", metric="{metric}"}}'
        assert prom.value(expr) == pytest.approx(number), key
    assert prom.value(f"kubetune_trainer_quality_gate_passed{{{pushed}}}") == (1 if result["promoted"] else 0)
    trained = prom.value(f'kubetune_trainer_tokens_total{{{pushed}, kind="trained"}}') or 0
    assert (prom.value(f'kubetune_trainer_tokens_total{{{pushed}, kind="all"}}') or 0) > trained > 0
    assert (prom.value(f'kubetune_trainer_tokens_per_second{{{pushed}, kind="all"}}') or 0) > 0
    assert (prom.value(f"kubetune_trainer_learning_rate{{{pushed}}}") or 0) > 0
    assert 0 <= (prom.value(f"kubetune_trainer_padding_ratio{{{pushed}}}") or 0) < 1
    assert (prom.value(f'kubetune_trainer_memory_peak_bytes{{{pushed}, device="host"}}') or 0) > 100 * 2**20
    assert (prom.value(f"kubetune_trainer_checkpoints_total{{{pushed}}}") or 0) >= 1
    assert prom.value(f"sum(kubetune_trainer_stage{{{pushed}}})") == 0, "no stage after exit"
    assert {s["metric"]["stage"] for s in prom.query(f"kubetune_trainer_stage{{{pushed}}}")} >= {"train", "publish"}
    for series in prom.query('{__name__=~"kubetune_trainer_.+"}'):
        assert {series["metric"]["namespace"], series["metric"]["finetunejob"]} <= {"default", "e2e", "waiting"}
    # Scraped straight from the pod (the PodMonitor's way), the series were there while it ran and are gone.
    pod = 'job="kubetune-trainer-pods", finetunejob="e2e"'
    assert (prom.value(f"max_over_time(kubetune_trainer_step{{{pod}}}[10m])") or 0) > 0
    wait_for(lambda: prom.query(f"kubetune_trainer_step{{{pod}}}") == [], what="the pod's series going stale")


def _assert_final_figures(prom: Prometheus, status: dict[str, Any]) -> None:
    """The operator exports the trainer's final figures from the status, under the FineTuneJob's names,
    every evaluation key the trainer reported included (the operator knows each metric it names)."""
    ours = 'job="kubetune-operator", namespace="default", finetunejob="e2e"'
    evaluation = f"kubetune_finetunejob_eval_metric{{{ours}}}"
    wait_for(lambda: prom.query(evaluation), what="the operator's copy of the evaluation")
    progress, result = status["progress"], status["result"]
    exported = {f"{s['metric']['model']}.{s['metric']['metric']}": float(s["value"][1]) for s in prom.query(evaluation)}
    assert exported == pytest.approx(result["metrics"])
    assert prom.value(f"kubetune_finetunejob_train_loss{{{ours}}}") == pytest.approx(progress["trainLoss"])
    assert prom.value(f"kubetune_finetunejob_eval_loss{{{ours}}}") == pytest.approx(progress["evalLoss"])
    if progress.get("tokensPerSecond") is not None:
        rate = prom.value(f"kubetune_finetunejob_tokens_per_second{{{ours}}}")
        assert rate == pytest.approx(progress["tokensPerSecond"])
    gate = next(c for c in status["conditions"] if c["type"] == "QualityGatePassed")
    assert prom.value(f"kubetune_finetunejob_quality_gate_passed{{{ours}}}") == (1 if gate["status"] == "True" else 0)


def _assert_rules_loaded(prom: Prometheus) -> None:
    expected = {name for name, _ in alert_queries(chart_rules())}

    def evaluated() -> list[dict[str, Any]]:
        loaded = [r for g in prom.api("rules")["groups"] for r in g["rules"]]
        return (
            loaded if all(r.get("lastEvaluation", "").startswith("2") and r["health"] == "ok" for r in loaded) else []
        )

    loaded = wait_for(evaluated, what="the chart's rules evaluated")
    assert {r["name"] for r in loaded} == expected
    assert all(not r.get("lastError") for r in loaded), [r.get("lastError") for r in loaded]


def _assert_dashboard_queries_run(prom: Prometheus) -> set[str]:
    """Every dashboard query runs against the real data; returns the metric names it and the alerts use."""
    names: set[str] = set()
    empty: list[str] = []
    for title, expr in dashboard_queries(chart_dashboard()):
        result = prom.query(as_prometheus_sees_it(expr))  # an invalid expression fails the API call
        if not result:
            empty.append(title)
        names |= metric_names(expr)
    # Quantiles over a single observation and rates of counters that did not move may be empty or NaN;
    # everything that describes the jobs that ran must show data.
    for panel in ("FineTuneJobs by phase", "Training loss", "Tokens per second", "Evaluation delta (tuned - base)"):
        assert panel not in empty, f"dashboard panel {panel!r} shows no data"
    for _, expr in alert_queries(chart_rules()):
        names |= metric_names(expr)
    assert "kubetune_finetunejob_eval_metric" in names and "kubetune_finetunejobs" in names, names
    return names
