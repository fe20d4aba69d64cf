"""The chart's NetworkPolicy for the operator pod: its metrics port open only to monitoring, its
health port to the kubelet's probes, nothing else (the operator serves no webhooks)."""

from __future__ import annotations

from typing import Any

from tests.helm.chart import of_kind, only, render

MONITORING = [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}]


def rules_by_port(policy: dict[str, Any]) -> dict[int, list[Any]]:
    """{port: the peers allowed to reach it}; [] for "from anywhere"."""
    found: dict[int, list[Any]] = {}
    for rule in policy["spec"]["ingress"]:
        for port in rule["ports"]:
            found.setdefault(port["port"], []).extend(rule.get("from", []))
    return found


def test_the_operator_pod_takes_metrics_only_from_monitoring_and_probes_on_its_health_port() -> None:
    docs = render()
    policy = only(docs, "NetworkPolicy")
    pod = only(docs, "Deployment")["spec"]["template"]
    selector = policy["spec"]["podSelector"]["matchLabels"]
    assert selector.items() <= pod["metadata"]["labels"].items(), "the policy must select the operator pod"
    assert policy["spec"]["policyTypes"] == ["Ingress"]
    ports = {p["name"]: p["containerPort"] for c in pod["spec"]["containers"] for p in c.get("ports", [])}
    allowed = rules_by_port(policy)
    assert set(allowed) == set(ports.values()), "every port the pod opens is named, and no other"
    assert allowed[ports["metrics"]] == MONITORING
    assert allowed[ports["health"]] == []  # kubelet probes come from the node


def test_metrics_can_be_closed_to_everyone_or_the_policy_left_out() -> None:
    closed = only(render("networkPolicy.operator.metricsFrom=null"), "NetworkPolicy")
    assert list(rules_by_port(closed)) == [8081]
    assert of_kind(render("networkPolicy.operator.enabled=false"), "NetworkPolicy") == []
