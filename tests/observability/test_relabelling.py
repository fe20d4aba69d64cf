"""A real Prometheus, configured as the chart's PodMonitor and ServiceMonitor configure it, scrapes a
training pod that claims to be another team's job, and the operator: the series carry the names from
Kubernetes metadata, whatever the pod put on them.

The Prometheus Operator turns a monitor endpoint into a scrape configuration with the same
``honor_labels``, ``relabel_configs`` and ``metric_relabel_configs``; here the targets are static, and
the ``__meta_kubernetes_*`` labels Kubernetes discovery would give them are set on the target, from the
training pod the operator really builds.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from prometheus_client import generate_latest

from kubetune.operator.children import Owner, build_training_job
from kubetune.operator.config import OperatorConfig
from kubetune.operator.metrics import OperatorMetrics
from kubetune.operator.status import FAILURE_REASONS
from tests.builders import spec
from tests.helm.chart import RELEASE_NAMESPACE, container_env, only, render
from tests.observability.prometheus import Prometheus, prometheus
from tests.operator.cluster import wait_for

MONITORING_APIS = ("monitoring.coreos.com/v1/PodMonitor", "monitoring.coreos.com/v1/ServiceMonitor")
TENANT, VICTIM = "team-a", "team-b"

# What a tenant's trainer serves: its series labelled with another team's namespace, job and pod.
SPOOFING_TRAINER = f"""\
# TYPE kubetune_trainer_step gauge
kubetune_trainer_step{{namespace="{VICTIM}",finetunejob="victim",pod="victim-train-0"}} 7
# TYPE kubetune_trainer_eval_metric gauge
kubetune_trainer_eval_metric{{namespace="{VICTIM}",finetunejob="victim",model="tuned",metric="accuracy"}} 1
# TYPE kubetune_trainer_train_loss gauge
kubetune_trainer_train_loss{{exported_namespace="{VICTIM}"}} 0.5
"""


@contextmanager
def serving(text: str) -> Iterator[str]:
    """``text`` at ``/metrics`` on loopback; yields host:port."""
    body = text.encode()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "text/plain; version=0.0.4")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *_: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def meta(prefix: str, mapping: dict[str, str]) -> dict[str, str]:
    """Labels or annotations as Kubernetes discovery names them (``__meta_kubernetes_pod_label_<name>``)."""
    return {prefix + re.sub(r"[^a-zA-Z0-9_]", "_", key): value for key, value in mapping.items()}


def relabel(configs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """A monitor's relabelings as Prometheus' relabel configs (what the Prometheus Operator writes)."""
    keys = {"sourceLabels": "source_labels", "targetLabel": "target_label"}
    return [{keys.get(key, key): value for key, value in config.items()} for config in configs]


def scrape_config(job: str, endpoint: dict[str, Any], target: str, labels: dict[str, str]) -> dict[str, Any]:
    return {
        "job_name": job,
        "honor_labels": endpoint["honorLabels"],
        "metrics_path": endpoint["path"],
        "static_configs": [{"targets": [target], "labels": labels}],
        "relabel_configs": relabel(endpoint.get("relabelings", [])),
        "metric_relabel_configs": relabel(endpoint.get("metricRelabelings", [])),
    }


def operator_exposition() -> str:
    """The real operator's /metrics with one job: per-job series (the job's namespace) and global ones."""
    metrics = OperatorMetrics(FAILURE_REASONS)
    metrics.trainer_results.update(
        {
            "metadata": {"namespace": TENANT, "name": "tickets"},
            "status": {"result": {"metrics": {"tuned.accuracy": 0.9}}},
        }
    )
    metrics.failures.labels(TENANT, "TrainingFailed")
    metrics.reconcile_errors.labels("ApiException")
    return generate_latest(metrics.registry).decode()


def labels_of(prom: Prometheus, expr: str) -> list[dict[str, str]]:
    return [series["metric"] for series in prom.query(expr)]


def test_series_are_named_by_kubernetes_metadata_not_by_the_pod(tmp_path: Path) -> None:
    docs = render(api_versions=MONITORING_APIS)
    (pod_endpoint,) = only(docs, "PodMonitor")["spec"]["podMetricsEndpoints"]
    (operator_endpoint,) = only(docs, "ServiceMonitor")["spec"]["endpoints"]
    config = OperatorConfig.from_env(container_env(docs))
    pod = build_training_job(Owner("tickets", TENANT, "uid-1"), spec(), config)["spec"]["template"]["metadata"]
    pod_meta = {
        "__meta_kubernetes_namespace": TENANT,
        "__meta_kubernetes_pod_name": "tickets-train-x7k2p",
        **meta("__meta_kubernetes_pod_label_", pod["labels"]),
        **meta("__meta_kubernetes_pod_annotation_", pod["annotations"]),
    }
    operator_meta = {"__meta_kubernetes_namespace": RELEASE_NAMESPACE, "__meta_kubernetes_pod_name": "kt-kubetune-0"}
    honoured = {"honorLabels": True, "path": "/metrics"}  # the chart before: what the pod said was kept
    with serving(SPOOFING_TRAINER) as trainer, serving(operator_exposition()) as operator:
        scrape_configs = [
            scrape_config("trainer-pods", pod_endpoint, trainer, pod_meta),
            scrape_config("operator", operator_endpoint, operator, operator_meta),
            scrape_config("honoured", honoured, trainer, pod_meta),
        ]
        with prometheus(tmp_path, scrape_configs, []) as prom:
            wait_for(lambda: prom.targets_up() == {"trainer-pods": 1, "operator": 1, "honoured": 1}, what="scrapes")
            wait_for(lambda: prom.query('kubetune_reconcile_errors_total{job="operator"}'), what="operator series")

            pod = 'job="trainer-pods"'
            (step,) = labels_of(prom, f"kubetune_trainer_step{{{pod}}}")
            assert (step["namespace"], step["finetunejob"], step["pod"]) == (TENANT, "tickets", "tickets-train-x7k2p")
            (evaluation,) = labels_of(prom, f"kubetune_trainer_eval_metric{{{pod}}}")
            assert (evaluation["namespace"], evaluation["finetunejob"]) == (TENANT, "tickets")
            assert (evaluation["model"], evaluation["metric"]) == ("tuned", "accuracy"), "the trainer's own labels stay"
            (loss,) = labels_of(prom, f"kubetune_trainer_train_loss{{{pod}}}")
            assert loss["namespace"] == TENANT
            for series in labels_of(prom, f'{{{pod}, __name__=~"kubetune_.+"}}'):
                assert not [name for name in series if name.startswith("exported_")], series
                assert VICTIM not in series.values() and "victim" not in series.values(), series

            # The operator's per-job series keep the FineTuneJob's namespace; its own ones the operator's.
            (result,) = labels_of(prom, 'kubetune_finetunejob_eval_metric{job="operator"}')
            assert (result["namespace"], result["finetunejob"], result["metric"]) == (TENANT, "tickets", "accuracy")
            assert "exported_namespace" not in result
            (failures,) = labels_of(prom, 'kubetune_finetunejob_failures_total{job="operator"}')
            assert failures["namespace"] == TENANT
            (errors,) = labels_of(prom, 'kubetune_reconcile_errors_total{job="operator"}')
            assert errors["namespace"] == RELEASE_NAMESPACE

            # Scraped as before (honorLabels, no relabelling), the spoof got through.
            (spoofed,) = labels_of(prom, 'kubetune_trainer_step{job="honoured"}')
            assert (spoofed["namespace"], spoofed["finetunejob"]) == (VICTIM, "victim")
