"""The operator's Prometheus metrics (served on KUBETUNE_METRICS_PORT at /metrics)."""

from __future__ import annotations

import threading
from wsgiref.simple_server import WSGIServer

from prometheus_client import Counter, Gauge, Histogram, Info, start_http_server

import kubetune

FINETUNEJOBS = Gauge("kubetune_finetunejobs", "FineTuneJobs by namespace and phase.", ("namespace", "phase"))
TRANSITIONS = Counter(
    "kubetune_phase_transitions", "FineTuneJob phase changes.", ("namespace", "from_phase", "to_phase")
)
RECONCILE_DURATION = Histogram(
    "kubetune_reconcile_duration_seconds",
    "Time to reconcile one FineTuneJob.",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
RECONCILE_ERRORS = Counter("kubetune_reconcile_errors", "Reconciles that raised, by exception type.", ("reason",))
BUILD = Info("kubetune_build", "kubetune operator build information.")
BUILD.info({"version": kubetune.__version__})

_phases: dict[tuple[str, str], str] = {}
_lock = threading.Lock()


def _refresh() -> None:
    counts: dict[tuple[str, str], int] = {}
    for (namespace, _), phase in _phases.items():
        counts[(namespace, phase)] = counts.get((namespace, phase), 0) + 1
    FINETUNEJOBS.clear()
    for (namespace, phase), count in counts.items():
        FINETUNEJOBS.labels(namespace=namespace, phase=phase).set(count)


def record_phase(namespace: str, name: str, phase: str) -> None:
    with _lock:
        _phases[(namespace, name)] = phase
        _refresh()


def record_transition(namespace: str, old: str | None, new: str) -> None:
    TRANSITIONS.labels(namespace=namespace, from_phase=old or "New", to_phase=new).inc()


def forget(namespace: str, name: str) -> None:
    with _lock:
        _phases.pop((namespace, name), None)
        _refresh()


def serve(port: int) -> WSGIServer:
    """Serve ``/metrics`` on ``port`` in a background thread; the caller shuts the server down."""
    server, _thread = start_http_server(port)
    return server
