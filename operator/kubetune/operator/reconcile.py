"""The one verb: bring a FineTuneJob's children and status in line with its spec.

Level-based and idempotent: it reads what exists, creates only what is missing (adopting
only children whose controller uid is this FineTuneJob's), and derives status from what it
observed. Any trigger (create, resume after a restart, a child Job changing, the trainer
reporting) runs the same function, so a restart at any point converges to the same state.
"""

from __future__ import annotations

import threading
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from kubetune.api.v1alpha1 import FineTuneJobSpec, Phase
from kubetune.operator import children, metrics, validation
from kubetune.operator.config import OperatorConfig
from kubetune.operator.kube import Kube, NotOwned
from kubetune.operator.status import Observed, Verdict, decide, job_condition, render_status

EmitEvent = Callable[[dict[str, Any], str, str, str], None]  # (body, type, reason, message)
TRAINER_FIELDS = ("preflight", "progress", "resolved", "result")
_locks: defaultdict[tuple[str, str], threading.Lock] = defaultdict(threading.Lock)


@dataclass(frozen=True)
class Outcome:
    phase: Phase
    verdict: Verdict
    permanent_failure: bool


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _owned_or_none(job: dict[str, Any] | None, uid: str) -> tuple[dict[str, Any] | None, str | None]:
    if job is None:
        return None, None
    refs = job.get("metadata", {}).get("ownerReferences") or []
    if any(r.get("uid") == uid and r.get("controller") for r in refs):
        return job, None
    name = job["metadata"]["name"]
    return None, f"Job {job['metadata'].get('namespace')}/{name} already exists and is not owned by this FineTuneJob"


def _ensure_children(
    kube: Kube, owner: children.Owner, spec: FineTuneJobSpec, config: OperatorConfig
) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
    """Create what is missing; returns (pre-flight Job, training Job) as observed."""
    training, conflict = _owned_or_none(
        kube.read("Job", owner.namespace, children.training_job_name(owner.name)), owner.uid
    )
    if conflict:
        raise NotOwned(conflict)
    kube.ensure(children.build_spec_configmap(owner, spec, config), owner.uid)
    for manifest in children.build_trainer_rbac(owner, spec):
        kube.ensure(manifest, owner.uid)
    preflight = kube.read("Job", owner.namespace, children.preflight_job_name(owner.name))
    if training is None:
        if preflight is None:
            preflight = kube.ensure(children.build_preflight_job(owner, spec, config), owner.uid)
        else:
            preflight, conflict = _owned_or_none(preflight, owner.uid)
            if conflict:
                raise NotOwned(conflict)
        if job_condition(preflight, "Complete"):
            training = kube.ensure(children.build_training_job(owner, spec, config), owner.uid)
    return preflight, training


def _apply_suspend(kube: Kube, spec: FineTuneJobSpec, job: dict[str, Any]) -> tuple[dict[str, Any], bool | None]:
    """Make the training Job follow spec.suspend; with Kueue, through the Workload's spec.active."""
    meta = job["metadata"]
    if spec.queue_name:
        workload = kube.workload_for_job(meta["namespace"], meta.get("uid", ""))
        if workload is None:
            return job, None
        active = workload.get("spec", {}).get("active", True)
        if active == spec.suspend:
            kube.patch_workload_active(meta["namespace"], workload["metadata"]["name"], not spec.suspend)
        return job, not spec.suspend
    if bool(job.get("spec", {}).get("suspend")) != spec.suspend:
        kube.patch_job_suspend(meta["namespace"], meta["name"], spec.suspend)
        job = {**job, "spec": {**job.get("spec", {}), "suspend": spec.suspend}}
    return job, None


def _status_changed(previous: dict[str, Any], new: dict[str, Any]) -> bool:
    return any(previous.get(key) != value for key, value in new.items())


def reconcile(namespace: str, name: str, kube: Kube, config: OperatorConfig, emit: EmitEvent) -> Outcome | None:
    """Reconcile one FineTuneJob; ``None`` when it no longer exists.

    Triggers can race (a Job event and the FineTuneJob's own event); a per-job lock
    serialises them and each run reads the object fresh, so no run acts on a stale status.
    """
    started = time.perf_counter()
    with _locks[(namespace, name)]:
        try:
            body = kube.read_finetunejob(namespace, name)
            if body is None or body.get("metadata", {}).get("deletionTimestamp"):
                forget(namespace, name)
                return None
            return _reconcile(body, kube, config, emit)
        except Exception as err:
            metrics.RECONCILE_ERRORS.labels(reason=type(err).__name__).inc()
            raise
        finally:
            metrics.RECONCILE_DURATION.observe(time.perf_counter() - started)


def _reconcile(body: dict[str, Any], kube: Kube, config: OperatorConfig, emit: EmitEvent) -> Outcome:
    meta = body["metadata"]
    owner = children.Owner.from_body(body)
    previous_status = dict(body.get("status") or {})
    trainer_status = {k: previous_status.get(k) for k in TRAINER_FIELDS if previous_status.get(k) is not None}
    parsed = validation.parse(body.get("spec") or {})
    spec_error: tuple[str, str] | None = None
    name_conflict = None
    preflight = training = None
    spec: FineTuneJobSpec | None = None
    if isinstance(parsed, validation.SpecProblem):
        spec_error = (parsed.reason, parsed.message)
    else:
        spec = parsed
        problem = validation.check_references(spec, owner.namespace, kube.read)
        already_started = previous_status.get("jobName") is not None
        if problem is not None and not already_started:
            spec_error = (problem.reason, problem.message)
    workload_active = None
    if spec is not None and spec_error is None:
        try:
            preflight, training = _ensure_children(kube, owner, spec, config)
        except NotOwned as err:
            name_conflict = str(err)
        if training is not None and not _finished(training):
            training, workload_active = _apply_suspend(kube, spec, training)

    observed = Observed(
        spec_error=spec_error,
        preflight_job=preflight,
        training_job=training,
        trainer_status=trainer_status,
        suspend=bool(spec.suspend) if spec else False,
        queued_with_kueue=bool(spec and spec.queue_name),
        workload_active=workload_active,
        name_conflict=name_conflict,
    )
    verdict = decide(observed)
    status = render_status(
        verdict,
        observed,
        previous_status,
        generation=meta.get("generation"),
        now=_now(),
        job_name=training["metadata"]["name"] if training else None,
        preflight_job_name=preflight["metadata"]["name"] if preflight else None,
    )
    if _status_changed(previous_status, status):
        kube.patch_finetunejob_status(owner.namespace, owner.name, status)
    old_phase = previous_status.get("phase")
    if old_phase != str(verdict.phase):
        kind = "Warning" if verdict.phase == Phase.FAILED else "Normal"
        emit(body, kind, f"Phase{verdict.phase}", f"{old_phase or 'New'} -> {verdict.phase}: {verdict.message}")
        metrics.record_transition(owner.namespace, old_phase, str(verdict.phase))
    metrics.record_phase(owner.namespace, owner.name, str(verdict.phase))
    permanent = verdict.phase == Phase.FAILED and (spec_error is not None or name_conflict is not None)
    return Outcome(verdict.phase, verdict, permanent)


def _finished(job: dict[str, Any]) -> bool:
    return bool(job_condition(job, "Complete") or job_condition(job, "Failed"))


def forget(namespace: str, name: str) -> None:
    metrics.forget(namespace, name)
    _locks.pop((namespace, name), None)
