"""The chart's monitoring objects: ServiceMonitor, PodMonitor, PrometheusRule, Grafana dashboard.

The Prometheus Operator kinds are checked against what they must select (the operator's
Service, the training pods the operator really builds); the alert rules themselves are run by
promtool and a real Prometheus in tests/observability.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from typing import Any

import pytest

from kubetune.api.contract import FINETUNEJOB_ANNOTATION, FINETUNEJOB_LABEL, JOB_LABEL, NAMESPACE_LABEL
from kubetune.operator.children import Owner, build_preflight_job, build_training_job
from kubetune.operator.config import OperatorConfig
from tests.builders import spec
from tests.helm.chart import (
    ALL_FEATURES_VALUES,
    CLUSTER_WIDE,
    ROOT,
    Manifest,
    container_env,
    dashboard_configmap,
    of_kind,
    only,
    render,
)

MONITOR_KINDS = ("ServiceMonitor", "PodMonitor", "PrometheusRule")
MONITORING_APIS = tuple(f"monitoring.coreos.com/v1/{kind}" for kind in MONITOR_KINDS)


def kinds(docs: list[Manifest]) -> set[str]:
    return {doc["kind"] for doc in docs if doc["kind"] in MONITOR_KINDS}


def test_prometheus_operator_objects_follow_the_cluster_by_default() -> None:
    assert kinds(render()) == set(), "no Prometheus Operator CRDs in the cluster: nothing that would fail to apply"
    assert kinds(render(api_versions=MONITORING_APIS)) == set(MONITOR_KINDS)
    with_pushgateway = render("metrics.trainer.pushgatewayUrl=http://pgw.monitoring:9091", api_versions=MONITORING_APIS)
    assert kinds(with_pushgateway) == {"ServiceMonitor", "PrometheusRule"}, "pushed metrics are not scraped twice"
    off = render(
        "metrics.serviceMonitor.enabled=false",
        "metrics.trainer.podMonitor.enabled=false",
        "metrics.prometheusRule.enabled=false",
        api_versions=MONITORING_APIS,
    )
    assert kinds(off) == set()
    forced = render(
        "metrics.serviceMonitor.enabled=true",
        "metrics.trainer.podMonitor.enabled=true",
        "metrics.prometheusRule.enabled=true",
    )
    assert kinds(forced) == set(MONITOR_KINDS)


def test_service_monitor_scrapes_the_metrics_service_keeping_the_operators_labels() -> None:
    docs = render(values_file=ALL_FEATURES_VALUES)
    monitor = only(docs, "ServiceMonitor")
    service = only(docs, "Service")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert monitor["metadata"]["labels"]["release"] == "prometheus"
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    assert monitor["spec"]["namespaceSelector"] == {"matchNames": [service["metadata"]["namespace"]]}
    (endpoint,) = monitor["spec"]["endpoints"]
    assert {k: endpoint[k] for k in ("port", "path", "interval")} == {
        "port": "metrics",
        "path": "/metrics",
        "interval": "15s",
    }
    assert endpoint["honorLabels"] is False, "target labels come from Kubernetes metadata"
    assert relabelled(endpoint["relabelings"]) == {
        "namespace": "__meta_kubernetes_namespace",
        "pod": "__meta_kubernetes_pod_name",
    }
    # kubetune_finetunejobs{namespace=...} names the job's namespace (the operator read it from the
    # FineTuneJob's metadata): Prometheus renames it exported_namespace, the relabelling moves it back.
    moved, dropped = endpoint["metricRelabelings"]
    assert moved == {
        "sourceLabels": ["exported_namespace"],
        "regex": "(.+)",
        "targetLabel": "namespace",
        "replacement": "$1",
        "action": "replace",
    }
    assert dropped == {"regex": "exported_.+", "action": "labeldrop"}
    assert [p["name"] for p in service["spec"]["ports"]] == ["metrics"]


def relabelled(relabelings: list[dict[str, Any]]) -> dict[str, str]:
    """Target label -> the metadata it is set from, for every (replace) relabelling; each one once."""
    targets = [r["targetLabel"] for r in relabelings if r.get("regex") != "(.+)"]
    assert len(targets) == len(set(targets)), relabelings
    assert all(r["action"] == "replace" and len(r["sourceLabels"]) == 1 for r in relabelings)
    return {r["targetLabel"]: r["sourceLabels"][0] for r in relabelings if r.get("regex") != "(.+)"}


def meta_label(prefix: str, key: str) -> str:
    """The label Prometheus' Kubernetes discovery gives a pod's label or annotation ``key``."""
    return prefix + re.sub(r"[^a-zA-Z0-9_]", "_", key)


SPEC = spec()


def operator_config(docs: list[Manifest]) -> OperatorConfig:
    return OperatorConfig.from_env(container_env(docs))


def pod_template(job: Manifest) -> dict[str, Any]:
    return dict(job["spec"]["template"])


def trainer_env(docs: list[Manifest]) -> dict[str, str | None]:
    """The environment of the training container the operator configured by ``docs`` would build."""
    pod = pod_template(build_training_job(Owner("tickets", "ml", "uid-1"), SPEC, operator_config(docs)))
    return {e["name"]: e.get("value") for e in pod["spec"]["containers"][0]["env"]}


def test_pod_monitor_selects_the_training_pods_the_operator_builds_and_no_others() -> None:
    for sets, namespaces in (
        ((), {"matchNames": ["default"]}),
        (CLUSTER_WIDE, {"any": True}),
        (("watchNamespaces={ml,research}",), {"matchNames": ["ml", "research"]}),
    ):
        docs = render(*sets, "metrics.trainer.podMonitor.enabled=true", "metrics.trainer.port=9400")
        monitor = only(docs, "PodMonitor")
        config = operator_config(docs)
        owner = Owner("tickets", "ml", "uid-1")
        training = pod_template(build_training_job(owner, SPEC, config))
        preflight = pod_template(build_preflight_job(owner, SPEC, config))
        selector = monitor["spec"]["selector"]["matchLabels"]
        assert selector.items() <= training["metadata"]["labels"].items()
        assert not selector.items() <= preflight["metadata"]["labels"].items(), "pre-flight pods export nothing"
        (endpoint,) = monitor["spec"]["podMetricsEndpoints"]
        ports = {p["name"]: p["containerPort"] for p in training["spec"]["containers"][0]["ports"]}
        assert ports == {endpoint["port"]: 9400}
        assert trainer_env(docs)["KUBETUNE_METRICS_PORT"] == "9400"
        assert endpoint["path"] == "/metrics"
        assert monitor["spec"]["namespaceSelector"] == namespaces


def test_pod_monitor_labels_trainer_series_from_the_pods_metadata_not_from_the_pod() -> None:
    """A training pod runs the tenant's code: its own namespace/finetunejob labels are never honoured."""
    docs = render("metrics.trainer.podMonitor.enabled=true")
    (endpoint,) = only(docs, "PodMonitor")["spec"]["podMetricsEndpoints"]
    assert endpoint["honorLabels"] is False
    # What the operator puts on the training pod is what the relabellings read.
    training = pod_template(build_training_job(Owner("tickets", "ml", "uid-1"), SPEC, operator_config(docs)))
    label = meta_label("__meta_kubernetes_pod_label_", JOB_LABEL)
    annotation = meta_label("__meta_kubernetes_pod_annotation_", FINETUNEJOB_ANNOTATION)
    assert training["metadata"]["labels"][JOB_LABEL] == training["metadata"]["annotations"][FINETUNEJOB_ANNOTATION]
    assert relabelled(endpoint["relabelings"]) == {
        NAMESPACE_LABEL: "__meta_kubernetes_namespace",
        "pod": "__meta_kubernetes_pod_name",
        FINETUNEJOB_LABEL: label,
    }
    # The annotation (the full name, past 63 characters too) wins when the pod has it.
    assert endpoint["relabelings"][-1] == {
        "sourceLabels": [annotation],
        "regex": "(.+)",
        "targetLabel": FINETUNEJOB_LABEL,
        "action": "replace",
    }
    # Whatever the pod labelled its series with that collides (renamed exported_*) is dropped.
    assert endpoint["metricRelabelings"] == [{"regex": "exported_.+", "action": "labeldrop"}]


def test_the_pushgateway_setting_reaches_the_training_pods_through_the_operator() -> None:
    docs = render(values_file=ALL_FEATURES_VALUES)
    config = operator_config(docs)
    assert config.pushgateway_url == "http://prometheus-pushgateway.{namespace}.svc:9091"
    assert (config.trainer_metrics_port, config.push_interval_seconds) == (9400, 30)
    env = trainer_env(docs)
    assert env["KUBETUNE_PUSHGATEWAY_URL"] == "http://prometheus-pushgateway.ml.svc:9091", "its namespace's own"
    assert env["KUBETUNE_PUSH_INTERVAL_SECONDS"] == "30"
    assert "KUBETUNE_PUSHGATEWAY_URL" not in trainer_env(render()), "no Pushgateway configured, none pushed to"


def test_one_pushgateway_per_namespace_each_trainer_pushes_to_its_own() -> None:
    config = operator_config(
        render("metrics.trainer.pushgatewayUrl=http://prometheus-pushgateway.{namespace}.svc:9091")
    )

    def pushes_to(namespace: str) -> str | None:
        pod = pod_template(build_training_job(Owner("tickets", namespace, "uid-1"), SPEC, config))
        return {e["name"]: e.get("value") for e in pod["spec"]["containers"][0]["env"]}["KUBETUNE_PUSHGATEWAY_URL"]

    assert pushes_to("team-a") == "http://prometheus-pushgateway.team-a.svc:9091"
    assert pushes_to("team-b") == "http://prometheus-pushgateway.team-b.svc:9091"


def rules(docs: list[Manifest]) -> list[dict[str, Any]]:
    (group,) = only(docs, "PrometheusRule")["spec"]["groups"]
    return list(group["rules"])


def test_alert_thresholds_and_labels_come_from_values() -> None:
    custom = {rule["alert"]: rule for rule in rules(render(values_file=ALL_FEATURES_VALUES))}
    assert set(custom) == {
        "KubetuneFineTuneJobFailed",
        "KubetuneFineTuneJobStuck",
        "KubetuneTrainingStalled",
        "KubetuneTrainerThroughputCollapsed",
        "KubetuneReconcileErrors",
        "KubetuneDriftDetected",
    }
    assert "> 2700" in custom["KubetuneFineTuneJobStuck"]["expr"], "45 minutes"
    assert "> 1200" in custom["KubetuneTrainingStalled"]["expr"], "20 minutes"
    assert "< 0.4 *" in custom["KubetuneTrainerThroughputCollapsed"]["expr"]
    assert "under 40%" in custom["KubetuneTrainerThroughputCollapsed"]["annotations"]["description"]
    assert all(rule["labels"] == {"severity": "warning", "team": "ml-platform"} for rule in custom.values())
    assert (
        only(render(values_file=ALL_FEATURES_VALUES), "PrometheusRule")["metadata"]["labels"]["release"] == "prometheus"
    )
    defaults = {rule["alert"]: rule for rule in rules(render("metrics.prometheusRule.enabled=true"))}
    assert "> 1800" in defaults["KubetuneFineTuneJobStuck"]["expr"]
    for rule in defaults.values():
        for text in rule["annotations"].values():
            assert "{{ $labels." in text or "{{ $value" in text, "Prometheus templates survive Helm's"


def test_the_dashboard_ships_in_a_configmap_for_grafanas_sidecar() -> None:
    configmap = dashboard_configmap(render())
    assert configmap["metadata"]["labels"]["grafana_dashboard"] == "1"
    shipped = (ROOT / "helm" / "kubetune" / "dashboards" / "kubetune.json").read_text()
    assert json.loads(configmap["data"]["kubetune.json"]) == json.loads(shipped)
    custom = dashboard_configmap(render(values_file=ALL_FEATURES_VALUES))
    assert custom["metadata"]["namespace"] == "monitoring"
    assert custom["metadata"]["annotations"] == {"grafana_folder": "ML"}
    assert not [
        d
        for d in of_kind(render("metrics.grafanaDashboard.enabled=false"), "ConfigMap")
        if d["metadata"]["name"].endswith("-dashboard")
    ]


def test_the_committed_dashboard_is_the_generated_one() -> None:
    result = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "dashboard.py"), "--check"], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr


def test_dashboard_panels_are_well_formed() -> None:
    board = json.loads(dashboard_configmap(render())["data"]["kubetune.json"])
    panels = board["panels"]
    assert len({p["id"] for p in panels}) == len(panels), "panel ids are unique"
    variables = {v["name"] for v in board["templating"]["list"]}
    assert variables == {"datasource", "namespace", "finetunejob"}
    cells: set[tuple[int, int]] = set()
    for panel in panels:
        grid = panel["gridPos"]
        assert grid["x"] >= 0 and grid["x"] + grid["w"] <= 24, panel["title"]
        area = {
            (x, y) for x in range(grid["x"], grid["x"] + grid["w"]) for y in range(grid["y"], grid["y"] + grid["h"])
        }
        assert not area & cells, f"{panel['title']} overlaps another panel"
        cells |= area
        if panel["type"] == "row":
            continue
        assert panel["targets"] and panel["description"], panel["title"]
        for target in panel["targets"]:
            assert target["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
            assert target["expr"].strip(), panel["title"]
    titles = " ".join(p["title"].lower() for p in panels)
    for subject in ("phase", "queue", "loss", "tokens per second", "memory", "evaluation delta", "gpu"):
        assert subject in titles, f"the dashboard shows {subject}"


@pytest.mark.parametrize(
    "assignment", ["metrics.serviceMonitor.enabled=maybe", "metrics.prometheusRule.stuckMinutes=0"]
)
def test_monitoring_values_are_checked_by_the_schema(assignment: str) -> None:
    from tests.helm.chart import render_error

    assert "values don't meet the specifications of the schema" in render_error(assignment)
