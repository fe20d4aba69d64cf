"""kopf handlers: thin triggers for ``reconcile``, the operator's one verb.

Every trigger (creation, resume after a restart, a spec change, the trainer writing status,
a child Job changing) runs the same level-based reconcile, so handler order and duplicate
events do not matter.
"""

from __future__ import annotations

import logging
import os
import time
from typing import Any

import kopf
from kubernetes.client.rest import ApiException
from urllib3.exceptions import HTTPError

from kubetune.api.v1alpha1 import GROUP, KIND, PLURAL, VERSION
from kubetune.operator import children, pushgateway
from kubetune.operator.config import OperatorConfig
from kubetune.operator.kube import Kube
from kubetune.operator.metrics import OperatorMetrics
from kubetune.operator.reconcile import forget, reconcile
from kubetune.operator.status import FAILURE_REASONS

log = logging.getLogger("kubetune.operator")
FINETUNEJOBS = (GROUP, VERSION, PLURAL)
RETRY_DELAY = 15
EVENT_RETRY_DELAYS: tuple[float, ...] = (1.0, 3.0, 10.0)


@kopf.on.login()
def login(**kwargs: Any) -> kopf.ConnectionInfo | None:
    """In-cluster credentials normally; ``KUBETUNE_KUBE_API`` points at a test API server."""
    host = os.environ.get("KUBETUNE_KUBE_API")
    if host:
        return kopf.ConnectionInfo(server=host, insecure=True)
    return kopf.login_with_service_account(**kwargs) or kopf.login_with_kubeconfig(**kwargs)


@kopf.on.startup()
def startup(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
    config = memo.get("config") or OperatorConfig.from_env()  # the CLI validated it already
    memo["config"] = config
    memo["kube"] = Kube.from_host(os.environ.get("KUBETUNE_KUBE_API"))
    # Keep kopf's bookkeeping out of status: the status schema belongs to the API.
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix="kubetune.dev")
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix="kubetune.dev", key="last-handled-configuration"
    )
    settings.posting.level = logging.WARNING
    settings.watching.server_timeout = 300
    settings.execution.max_workers = 8
    memo["metrics"] = OperatorMetrics(FAILURE_REASONS)
    memo["metrics_server"] = memo["metrics"].serve(config.metrics_port)
    if config.pushgateway_url:
        kube: Kube = memo["kube"]
        memo["sweeper"] = pushgateway.Sweeper(
            config.pushgateway_url, lambda: kube.finetunejob_keys(config.namespaces), config.namespaces
        ).start()
    log.info("kubetune operator started (namespaces: %s)", ", ".join(config.namespaces) or "all")


@kopf.on.cleanup()
def cleanup(memo: kopf.Memo, **_: Any) -> None:
    sweeper = memo.get("sweeper")
    if sweeper is not None:
        sweeper.stop()
    server = memo.get("metrics_server")
    if server is not None:
        server.shutdown()
        server.server_close()


def _emit(body: dict[str, Any], kind: str, reason: str, message: str) -> None:
    kopf.event(body, type=kind, reason=reason, message=message[:1000])


def _run(namespace: str, name: str, memo: kopf.Memo) -> None:
    try:
        outcome = reconcile(namespace, name, memo["kube"], memo["config"], _emit, memo["metrics"])
    except (ApiException, HTTPError) as err:
        status = getattr(err, "status", None)
        if status is not None and 400 <= status < 500 and status not in (404, 409, 429):
            raise kopf.PermanentError(f"API rejected a request: {err}") from err
        raise kopf.TemporaryError(f"API server unavailable, retrying: {err}", delay=RETRY_DELAY) from err
    if outcome is not None and outcome.permanent_failure:
        raise kopf.PermanentError(outcome.verdict.message)


def _run_from_event(namespace: str, name: str, memo: kopf.Memo) -> None:
    """Reconcile for a watch event. kopf never retries event handlers, so transient API errors are
    retried here: a lost retry could leave a finished pre-flight without its training Job."""
    for delay in (*EVENT_RETRY_DELAYS, None):
        try:
            _run(namespace, name, memo)
            return
        except kopf.PermanentError as err:
            log.info("%s/%s: %s", namespace, name, err)
            return
        except kopf.TemporaryError as err:
            if delay is None:
                log.warning("%s/%s: giving up until the next event: %s", namespace, name, err)
                return
            log.info("%s/%s: retrying in %ss: %s", namespace, name, delay, err)
            time.sleep(delay)


@kopf.on.resume(*FINETUNEJOBS)
@kopf.on.create(*FINETUNEJOBS)
@kopf.on.update(*FINETUNEJOBS)
def on_finetunejob(namespace: str, name: str, memo: kopf.Memo, **_: Any) -> None:
    _run(namespace, name, memo)


@kopf.on.event(*FINETUNEJOBS)
def on_finetunejob_event(event: dict[str, Any], namespace: str, name: str, memo: kopf.Memo, **_: Any) -> None:
    """Status written by the trainer (progress, pre-flight, result) is not a spec change."""
    if event.get("type") == "DELETED":
        forget(namespace, name, memo["metrics"])
        config: OperatorConfig = memo["config"]
        if config.pushgateway_url:
            pushgateway.delete_trainer_group(config.pushgateway_url, namespace, name)
    elif event.get("type") == "MODIFIED":
        _run_from_event(namespace, name, memo)


@kopf.on.event("batch", "v1", "jobs", labels={"app.kubernetes.io/managed-by": children.MANAGED_BY})
def on_child_job(body: dict[str, Any], memo: kopf.Memo, **_: Any) -> None:
    meta = body.get("metadata", {})
    for ref in meta.get("ownerReferences") or []:
        if ref.get("kind") == KIND and ref.get("controller"):
            _run_from_event(meta["namespace"], ref["name"], memo)


@kopf.on.probe(id="api")
def api_reachable(memo: kopf.Memo, **_: Any) -> bool:
    return "kube" in memo
