"""kopf handlers: thin triggers for ``reconcile``, the operator's one verb.

Every trigger (creation, the listing after a restart, a spec change, the trainer writing status,
a child Job changing) queues the same level-based reconcile, so handler order and duplicate
events do not matter. The handlers only queue: the reconcile runs on the queue's workers and is
retried there with backoff (queue.py), so no kopf handler ever waits for the API server.

Only event handlers, no change handlers (``on.create``/``on.update``/``on.resume``): a change handler
makes kopf write its bookkeeping (the last handled spec, handler progress) into the object's
annotations, one more PATCH per FineTuneJob for nothing the reconcile uses, and a level-based
reconcile needs no diff. Listed objects (startup, a relist) come as events too.
"""

from __future__ import annotations

import logging
from typing import Any

import kopf

from kubetune.api import contract
from kubetune.api import driftmonitor as monitor
from kubetune.api.v1alpha1 import GROUP, KIND, PLURAL, VERSION
from kubetune.kubeclient import Credentials, load_configuration
from kubetune.operator import pushgateway
from kubetune.operator.cache import ObjectCache
from kubetune.operator.config import OperatorConfig
from kubetune.operator.driftreconcile import reconcile_monitor
from kubetune.operator.events import PhaseEvents
from kubetune.operator.kube import Kube
from kubetune.operator.metrics import OperatorMetrics
from kubetune.operator.queue import ReconcileQueue
from kubetune.operator.reconcile import forget, reconcile
from kubetune.operator.status import FAILURE_REASONS
from kubetune.operator.webhooks import WebhookSender

log = logging.getLogger("kubetune.operator")
FINETUNEJOBS = (GROUP, VERSION, PLURAL)
DRIFTMONITORS = (GROUP, VERSION, monitor.PLURAL)


@kopf.on.login()
def login(**_: Any) -> kopf.ConnectionInfo:
    """kopf's watches use the very credentials of the operator's own client (kubetune.kubeclient).

    Read afresh at every login: when the API server answers 401 (a rotated ServiceAccount token),
    kopf logs in again and picks up the new token.
    """
    credentials = Credentials.of(load_configuration())
    return kopf.ConnectionInfo(
        server=credentials.server,
        token=credentials.token,
        ca_path=credentials.ca_path,
        insecure=credentials.insecure,
        certificate_path=credentials.certificate_path,
        private_key_path=credentials.private_key_path,
    )


class NoDiffBase(kopf.DiffBaseStorage):
    """No change handlers, so nothing needs the last handled spec; kopf's default builds it anyway, a
    deep copy of every body of every event (a third of the operator's event-loop CPU at 200 jobs)."""

    def build(self, *, body: kopf.Body, extra_fields: Any = None) -> kopf.BodyEssence:
        return kopf.BodyEssence()

    def fetch(self, *, body: kopf.Body) -> kopf.BodyEssence | None:
        return None

    def store(self, *, body: kopf.Body, patch: kopf.Patch, essence: kopf.BodyEssence) -> None:
        return None


@kopf.on.startup()
def startup(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
    config = memo.get("config") or OperatorConfig.from_env()  # the CLI validated it already
    memo["config"] = config
    cache = memo["cache"] = ObjectCache({KIND, "Job"}) if config.read_cache else None
    kube = memo["kube"] = Kube.from_environment(cache=cache)
    kube.load_api_classes()
    settings.persistence.diffbase_storage = NoDiffBase()
    # Every Event the operator posts is a phase Event with a deterministic name (events.py).
    settings.posting.enabled = False
    settings.watching.server_timeout = 300
    metrics = memo["metrics"] = OperatorMetrics(FAILURE_REASONS)
    memo["metrics_server"] = metrics.serve(config.metrics_port)
    events = memo["events"] = PhaseEvents()
    webhooks = memo["webhooks"] = WebhookSender(
        kube, config.webhooks, platform=config.platform_webhooks, platform_namespace=config.operator_namespace
    ).start()
    memo["queue"] = ReconcileQueue(
        lambda namespace, name: reconcile(namespace, name, kube, config, events, metrics, webhooks)
    )
    memo["monitor_queue"] = ReconcileQueue(lambda namespace, name: reconcile_monitor(namespace, name, kube, config))
    if config.pushgateway_url:
        memo["sweeper"] = pushgateway.Sweeper(
            config.pushgateway_url, lambda: kube.finetunejob_keys(config.namespaces), config.namespaces
        ).start()
    log.info("kubetune operator started (namespaces: %s)", ", ".join(config.namespaces) or "all")


@kopf.on.cleanup()
async def cleanup(memo: kopf.Memo, **_: Any) -> None:
    for key in ("queue", "monitor_queue"):
        queue = memo.get(key)
        if queue is not None:
            await queue.stop()
    for key in ("sweeper", "webhooks"):
        stoppable = memo.get(key)
        if stoppable is not None:
            stoppable.stop()
    server = memo.get("metrics_server")
    if server is not None:
        server.shutdown()
        server.server_close()


@kopf.index(*FINETUNEJOBS)
def finetunejobs_cache(body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    """Feeds the read cache (cache.py). An index function because kopf runs every one over the initial
    listing before any handler runs: no reconcile ever reads a cache that is still filling."""
    _observe(memo, KIND, body)


@kopf.index("batch", "v1", "jobs", labels={contract.MANAGED_BY_LABEL: contract.MANAGED_BY})
def jobs_cache(body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    _observe(memo, "Job", body)


def _observe(memo: kopf.Memo, kind: str, body: kopf.Body) -> None:
    cache: ObjectCache | None = memo.get("cache")
    if cache is not None:
        cache.observe(kind, dict(body))


def _forget(memo: kopf.Memo, kind: str, body: dict[str, Any]) -> None:
    cache: ObjectCache | None = memo.get("cache")
    if cache is not None:
        cache.forget(kind, body)


@kopf.on.event(*FINETUNEJOBS)
async def on_finetunejob_event(event: dict[str, Any], namespace: str, name: str, memo: kopf.Memo, **_: Any) -> None:
    """Every event but a deletion and the echo of the operator's own status write reconciles: a new or
    listed FineTuneJob, a spec change, and status written by the trainer (progress, pre-flight, result).

    Every event but a deletion (the initial listing's too, so a restarted operator exports them
    again) also refreshes the trainer's figures the operator exports from the status, labelled with
    the object's own metadata.
    """
    if event.get("type") == "DELETED":
        memo["queue"].forget(namespace, name)
        forget(namespace, name, memo["metrics"])
        uid = event["object"]["metadata"].get("uid", "")
        memo["events"].forget(uid)
        memo["webhooks"].forget(uid)
        _forget(memo, KIND, event["object"])
        memo["kube"].forget_owner(uid)
        memo["kube"].forget_written(KIND, event["object"])
        config: OperatorConfig = memo["config"]
        url = config.pushgateway_url_for(namespace)
        if url:
            pushgateway.delete_trainer_group(url, namespace, name)
        return
    body = event.get("object") or {}
    memo["metrics"].trainer_results.update(body)
    # The echo of this process's own write (its status patch) tells a reconcile nothing the writer had
    # not acted on: skipped. controller-runtime's GenerationChangedPredicate skips every status-only
    # change; here the trainer reports through status, so only our own write's exact resourceVersion is.
    if not memo["kube"].wrote_this(KIND, body):
        # No status yet: never reconciled (the first reconcile always writes one): the new lane.
        memo["queue"].trigger(namespace, name, new=not body.get("status"))
    if event.get("type") == "MODIFIED":
        _trigger_owner(body, memo)  # a monitor's retraining: the monitor follows its outcome


@kopf.on.event(*DRIFTMONITORS)
async def on_driftmonitor_event(event: dict[str, Any], namespace: str, name: str, memo: kopf.Memo, **_: Any) -> None:
    """The monitor's figures follow its status; every event but a deletion reconciles (the schedule counts
    from ``status.lastCheckTime``); a deletion forgets it."""
    if event.get("type") == "DELETED":
        memo["monitor_queue"].forget(namespace, name)
        memo["metrics"].monitors.forget(namespace, name)
        return
    memo["metrics"].monitors.update(event.get("object") or {})
    memo["monitor_queue"].trigger(namespace, name)


def _trigger_owner(body: dict[str, Any], memo: kopf.Memo) -> None:
    meta = body.get("metadata", {})
    queues = {KIND: memo["queue"], monitor.KIND: memo["monitor_queue"]}
    for ref in meta.get("ownerReferences") or []:
        if ref.get("controller") and ref.get("kind") in queues:
            queues[ref["kind"]].trigger(meta["namespace"], ref["name"])


@kopf.on.event("batch", "v1", "jobs", labels={contract.MANAGED_BY_LABEL: contract.MANAGED_BY})
async def on_child_job(event: dict[str, Any], body: dict[str, Any], memo: kopf.Memo, **_: Any) -> None:
    if event.get("type") == "DELETED":
        _forget(memo, "Job", event["object"])
        memo["kube"].forget_written("Job", event["object"])
    elif memo["kube"].wrote_this("Job", body):
        return  # the echo of our own create or patch: see on_finetunejob_event
    _trigger_owner(body, memo)


@kopf.on.probe(id="api")
def api_reachable(memo: kopf.Memo, **_: Any) -> bool:
    return "kube" in memo
