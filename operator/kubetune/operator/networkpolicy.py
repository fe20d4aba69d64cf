"""Trainer egress: where a FineTuneJob's pods may open connections, when the platform team turns it on
(Helm values ``networkPolicy.trainerEgress``).

The operator then creates, with each FineTuneJob and before its Jobs, a NetworkPolicy in the job's
namespace that selects the job's pods (pre-flight and training) and allows egress only to the
destinations below (likewise for each DriftMonitor's check and compare pods, without the API server:
they hold no API token):

- the S3 ranges (``s3Cidrs``) on the S3 ports (``s3Ports``);
- the Hugging Face Hub or the platform's mirror of it (``hubCidrs`` on ``hubPorts``), for the pods of
  a job that may read it only (``storagepolicy.reads_hub``);
- the tracking servers, MLflow and W&B (``trackingCidrs`` on ``trackingPorts``), for the pods of a job with
  ``spec.tracking.mlflow`` or ``spec.tracking.wandb`` only (a W&B Server in the cluster, or W&B's cloud);
- the Kubernetes API server (``apiServerCidrs`` on ``apiServerPorts``): the trainer writes its
  FineTuneJob's status there. Most network plugins apply policies after the Service's address
  translation, so list the API server's own addresses (its EndpointSlice), not only the Service's;
- the cluster DNS (pods labelled ``dns.podLabels`` in namespace ``dns.namespace``, UDP and TCP 53).

169.254.0.0/16 (link-local: the instance metadata service, and what else the node serves there) is
never allowed: every listed range that contains it carries it as an ``except``, and a range inside it
is refused at startup; likewise fe80::/10 for IPv6 ranges. Everything here is checked once, when the
operator starts, and a bad value stops it with a message naming the value.
"""

from __future__ import annotations

import ipaddress
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

HELM_VALUE = "networkPolicy.trainerEgress"
# Never reachable from a trainer, whatever the values say: IPv4 link-local, where the node's metadata
# service answers (169.254.169.254 on every major cloud), and IPv6 link-local.
ALWAYS_DENIED = (ipaddress.ip_network("169.254.0.0/16"), ipaddress.ip_network("fe80::/10"))
DEFAULT_S3_PORTS = (443, 80)
DEFAULT_HUB_PORTS = (443,)
DEFAULT_TRACKING_PORTS = (443, 80, 5000)  # https, http, and MLflow's own default port
DEFAULT_API_SERVER_PORTS = (443, 6443)  # the Service's port, and the API server's own on most clusters
DEFAULT_DNS_NAMESPACE = "kube-system"
DEFAULT_DNS_POD_LABELS = {"k8s-app": "kube-dns"}  # CoreDNS keeps kube-dns's label
DNS_PORT = 53
NAMESPACE_NAME_LABEL = "kubernetes.io/metadata.name"  # set on every Namespace by the API server
_DNS_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")
_KEYS = {
    "enabled",
    "s3Cidrs",
    "s3Ports",
    "hubCidrs",
    "hubPorts",
    "trackingCidrs",
    "trackingPorts",
    "apiServerCidrs",
    "apiServerPorts",
    "dns",
}

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True)
class TrainerEgress:
    s3_cidrs: tuple[Network, ...]
    s3_ports: tuple[int, ...]
    api_server_cidrs: tuple[Network, ...]
    api_server_ports: tuple[int, ...]
    dns_namespace: str = DEFAULT_DNS_NAMESPACE
    dns_pod_labels: tuple[tuple[str, str], ...] = tuple(DEFAULT_DNS_POD_LABELS.items())
    hub_cidrs: tuple[Network, ...] = ()
    hub_ports: tuple[int, ...] = DEFAULT_HUB_PORTS
    tracking_cidrs: tuple[Network, ...] = ()
    tracking_ports: tuple[int, ...] = DEFAULT_TRACKING_PORTS

    @classmethod
    def parse(cls, raw: str) -> TrainerEgress | None:
        """From the Helm value as JSON (``{"enabled": true, "s3Cidrs": [...], ...}``); None when it is
        off or empty. ValueError naming the key and the value that is wrong."""
        if not raw.strip():
            return None
        try:
            values = json.loads(raw)
        except ValueError as err:
            raise ValueError(f"not JSON ({err})") from None
        if not isinstance(values, dict):
            raise ValueError(f"expected an object, got {raw!r}")
        if unknown := sorted(set(values) - _KEYS):
            raise ValueError(f"unknown keys {unknown}; expected some of {sorted(_KEYS)}")
        enabled = values.get("enabled", False)
        if not isinstance(enabled, bool):
            raise ValueError(f"enabled: {enabled!r} is not true or false")
        # Every value is checked even when off, so a mistake shows before the day it is switched on.
        s3_cidrs, api_server_cidrs = _cidrs(values, "s3Cidrs"), _cidrs(values, "apiServerCidrs")
        s3_ports = _ports(values, "s3Ports", DEFAULT_S3_PORTS)
        hub_cidrs, hub_ports = _cidrs(values, "hubCidrs"), _ports(values, "hubPorts", DEFAULT_HUB_PORTS)
        tracking_cidrs = _cidrs(values, "trackingCidrs")
        tracking_ports = _ports(values, "trackingPorts", DEFAULT_TRACKING_PORTS)
        api_server_ports = _ports(values, "apiServerPorts", DEFAULT_API_SERVER_PORTS)
        if enabled and not api_server_cidrs:
            raise ValueError(
                "apiServerCidrs is empty: trainers write their FineTuneJob's status through the API server, "
                "so list its addresses (kubectl get endpointslices -l kubernetes.io/service-name=kubernetes)"
            )
        dns = values.get("dns") or {}
        if not isinstance(dns, dict) or set(dns) - {"namespace", "podLabels"}:
            raise ValueError(f"dns: {dns!r}: expected {{namespace: ..., podLabels: {{...}}}}")
        namespace = dns.get("namespace", DEFAULT_DNS_NAMESPACE)
        labels = dns.get("podLabels", DEFAULT_DNS_POD_LABELS)
        if not isinstance(namespace, str) or not _DNS_LABEL.fullmatch(namespace) or len(namespace) > 63:
            raise ValueError(f"dns.namespace: {namespace!r} is not a namespace name")
        if (
            not isinstance(labels, dict)
            or not labels
            or not all(isinstance(k, str) and isinstance(v, str) for k, v in labels.items())
        ):
            raise ValueError(f"dns.podLabels: {labels!r}: expected labels of the DNS pods, e.g. {{k8s-app: kube-dns}}")
        if not enabled:
            return None
        return cls(
            s3_cidrs=s3_cidrs,
            s3_ports=s3_ports,
            api_server_cidrs=api_server_cidrs,
            api_server_ports=api_server_ports,
            dns_namespace=namespace,
            dns_pod_labels=tuple(sorted(labels.items())),
            hub_cidrs=hub_cidrs,
            hub_ports=hub_ports,
            tracking_cidrs=tracking_cidrs,
            tracking_ports=tracking_ports,
        )

    def egress_rules(
        self, *, api_server: bool = True, hub: bool = False, tracking: bool = False
    ) -> list[dict[str, Any]]:
        """The NetworkPolicy's ``spec.egress``: S3, the Hub (only with ``hub``: pods that may read it),
        MLflow (only with ``tracking``), the API server (unless ``api_server`` is false), DNS; nothing else."""
        rules = []
        if self.s3_cidrs:
            rules.append(_rule(self.s3_cidrs, self.s3_ports))
        if hub and self.hub_cidrs:
            rules.append(_rule(self.hub_cidrs, self.hub_ports))
        if tracking and self.tracking_cidrs:
            rules.append(_rule(self.tracking_cidrs, self.tracking_ports))
        if api_server:
            rules.append(_rule(self.api_server_cidrs, self.api_server_ports))
        dns_peer = {
            "namespaceSelector": {"matchLabels": {NAMESPACE_NAME_LABEL: self.dns_namespace}},
            "podSelector": {"matchLabels": dict(self.dns_pod_labels)},
        }
        rules.append(
            {
                "to": [dns_peer],
                "ports": [{"protocol": "UDP", "port": DNS_PORT}, {"protocol": "TCP", "port": DNS_PORT}],
            }
        )
        return rules


def ip_block(network: Network) -> dict[str, Any]:
    """An ``ipBlock`` for ``network``, with every always-denied range inside it as an ``except``."""
    block: dict[str, Any] = {"cidr": network.with_prefixlen}
    denied = [str(d) for d in ALWAYS_DENIED if d != network and _within(d, network)]
    if denied:
        block["except"] = denied
    return block


def _within(inner: Network, outer: Network) -> bool:
    if isinstance(inner, ipaddress.IPv4Network) and isinstance(outer, ipaddress.IPv4Network):
        return inner.subnet_of(outer)
    if isinstance(inner, ipaddress.IPv6Network) and isinstance(outer, ipaddress.IPv6Network):
        return inner.subnet_of(outer)
    return False  # an IPv4 range never holds IPv6 addresses, nor the other way round


def _rule(networks: tuple[Network, ...], ports: tuple[int, ...]) -> dict[str, Any]:
    return {
        "to": [{"ipBlock": ip_block(network)} for network in networks],
        "ports": [{"protocol": "TCP", "port": port} for port in ports],
    }


def _cidrs(values: Mapping[str, Any], key: str) -> tuple[Network, ...]:
    entries = values.get(key) or []
    if not isinstance(entries, list):
        raise ValueError(f"{key}: {entries!r}: expected a list of CIDRs")
    found: list[Network] = []
    for position, entry in enumerate(entries):
        where = f"{key}[{position}]: {entry!r}"
        if not isinstance(entry, str):
            raise ValueError(f"{where} is not a CIDR (e.g. 10.0.0.0/8 or 2001:db8::/32)")
        try:
            network = ipaddress.ip_network(entry.strip())
        except ValueError as err:
            if "has host bits set" in str(err):
                loose = ipaddress.ip_network(entry.strip(), strict=False)
                raise ValueError(f"{where} has host bits set; did you mean {loose}?") from None
            raise ValueError(f"{where} is not a CIDR (e.g. 10.0.0.0/8 or 2001:db8::/32)") from None
        for denied in ALWAYS_DENIED:
            if _within(network, denied):
                raise ValueError(f"{where} lies inside {denied}, which trainers may never reach")
        found.append(network)
    return tuple(found)


def _ports(values: Mapping[str, Any], key: str, default: tuple[int, ...]) -> tuple[int, ...]:
    entries = values.get(key, list(default))
    if not isinstance(entries, list) or not entries:
        raise ValueError(
            f"{key}: {entries!r}: expected a list of at least one TCP port (an empty list would allow all)"
        )
    for position, port in enumerate(entries):
        if isinstance(port, bool) or not isinstance(port, int) or not 0 < port < 65536:
            raise ValueError(f"{key}[{position}]: {port!r} is not a TCP port number")
    return tuple(entries)
