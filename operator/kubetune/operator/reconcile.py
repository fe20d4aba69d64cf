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
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from kubetune.api.contract import MANAGED_BY, MANAGED_BY_LABEL, REPORTING_FAILURES
from kubetune.api.v1alpha1 import TERMINAL_PHASES, FineTuneJobSpec, Phase
from kubetune.operator import children, quota, validation
from kubetune.operator.config import OperatorConfig
from kubetune.operator.events import PhaseEvents
from kubetune.operator.kube import ChildRefused, Kube, NotOwned, owned_by
from kubetune.operator.metrics import Observation, OperatorMetrics, parse_time, phase_entered
from kubetune.operator.status import (
    TRAINER_FIELDS,
    Observed,
    Verdict,
    claimed_gate_checks,
    derive_status,
    failed_exit_code,
    job_condition,
    promotion_claimed,
    recorded_phase_stands,
)
from kubetune.operator.storagepolicy import reads_hub
from kubetune.operator.webhooks import WebhookSender

_locks: defaultdict[tuple[str, str], threading.Lock] = defaultdict(threading.Lock)
_namespace_locks: defaultdict[str, threading.Lock] = defaultdict(threading.Lock)


@dataclass(frozen=True)
class Outcome:
    phase: Phase
    verdict: Verdict
    permanent_failure: bool
    recheck_after: float | None = None  # seconds until the queue reconciles again without an event


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _start_training(
    kube: Kube, owner: children.Owner, spec: FineTuneJobSpec, config: OperatorConfig
) -> tuple[dict[str, Any] | None, str | None]:
    """Create the training Job, unless the namespace's cap holds it back: (the Job, why it waits)."""
    cap = config.max_jobs_per_namespace
    if spec.resources.nodes > 1:  # the pods' DNS names exist before the first pod looks them up
        kube.ensure(children.build_rendezvous_service(owner), owner.uid)
    if cap is None:
        return kube.ensure(children.build_training_job(owner, spec, config), owner.uid), None
    with _namespace_locks[owner.namespace]:  # held until the Job exists: no two take the last slot
        made_by_us = f"{MANAGED_BY_LABEL}={MANAGED_BY}"
        waiting = quota.waiting_reason(
            owner.name, cap, kube.list_jobs(owner.namespace, made_by_us), kube.list_finetunejobs(owner.namespace)
        )
        if waiting is not None:
            return None, waiting
        return kube.ensure(children.build_training_job(owner, spec, config), owner.uid), None


def _ensure_children(
    kube: Kube,
    owner: children.Owner,
    spec: FineTuneJobSpec,
    config: OperatorConfig,
    *,
    job_recorded: bool,
    first_reconcile: bool,
) -> tuple[dict[str, Any] | None, dict[str, Any] | None, str | None]:
    """Create what is missing; returns (pre-flight Job, training Job) as observed, and why the training
    Job waits for a slot of the namespace's cap, if it does.

    The training Job is created at most once per FineTuneJob: once ``status.jobName`` is
    recorded, a missing Job means it finished and was removed (or was deleted by hand), and
    re-running a finished training is never what anyone wants.
    """
    training = kube.read("Job", owner.namespace, children.training_job_name(owner.name, spec.resources.nodes))
    if training is not None:
        owned_by(training, owner.uid)
    # The spec ConfigMap is the costly child to build (its YAML): not built again once seen.
    if not kube.ensured_already("ConfigMap", owner.namespace, children.spec_configmap_name(owner.name), owner.uid):
        kube.ensure(children.build_spec_configmap(owner, spec, config), owner.uid, likely_new=first_reconcile)
    for manifest in children.build_trainer_rbac(owner, spec):
        kube.ensure(manifest, owner.uid, likely_new=first_reconcile)
    if config.trainer_egress is not None:  # before either Job, so no pod ever runs without it
        tracked = bool(children.tracking_env(spec, config) or children.wandb_env(spec, config))
        policy = children.build_trainer_network_policy(
            owner, config.trainer_egress, reads_hub=reads_hub(spec), tracked=tracked, group=spec.resources.nodes > 1
        )
        kube.ensure_spec(policy, owner.uid)
    if training is not None or job_recorded:
        preflight = kube.read("Job", owner.namespace, children.preflight_job_name(owner.name))
        return (owned_by(preflight, owner.uid) if preflight else None), training, None
    preflight = kube.ensure(children.build_preflight_job(owner, spec, config), owner.uid)
    waiting = None
    if job_condition(preflight, "Complete"):
        training, waiting = _start_training(kube, owner, spec, config)
    return preflight, training, waiting


def _ensure_verification(
    kube: Kube, owner: children.Owner, spec: FineTuneJobSpec, config: OperatorConfig, trainer_status: dict[str, Any]
) -> tuple[dict[str, Any] | None, str | None]:
    """The Job checking a reported promotion against the published manifest, made when the training Job
    completed and its result claims one (``status.promotion_claimed``): (the Job, why it was refused).

    Made again if it vanished before the phase was recorded: it only reads, so running twice is harmless.
    """
    result = trainer_status.get("result") or {}
    if not promotion_claimed(result, job_succeeded=True):
        return None, None
    manifest = children.build_verification_job(
        owner, spec, config, version=str(result["version"]), claimed_checks=claimed_gate_checks(result)
    )
    try:
        job = kube.ensure(manifest, owner.uid)
    except (ChildRefused, NotOwned) as err:
        return None, str(err)
    if not children.runs_as_built(job, manifest):
        name = manifest["metadata"]["name"]
        return None, f"Job {name} exists but does not run the check the operator builds (someone else made it)"
    return job, None


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


def reconcile(
    namespace: str,
    name: str,
    kube: Kube,
    config: OperatorConfig,
    events: PhaseEvents,
    metrics: OperatorMetrics,
    webhooks: WebhookSender | None = None,
) -> Outcome | None:
    """Reconcile one FineTuneJob; ``None`` when it no longer exists.

    Triggers can race (a Job event and the FineTuneJob's own event); a per-job lock
    serialises them and each run reads the object fresh, so no run acts on a stale status.
    """
    started = time.perf_counter()
    with _locks[(namespace, name)]:
        try:
            body = kube.read_finetunejob(namespace, name)
            if body is None or body.get("metadata", {}).get("deletionTimestamp"):
                forget(namespace, name, metrics)
                return None
            return _reconcile(body, kube, config, events, metrics, webhooks)
        except Exception as err:
            metrics.reconcile_errors.labels(type(err).__name__).inc()
            raise
        finally:
            metrics.reconcile_duration.observe(time.perf_counter() - started)


def _reconcile(
    body: dict[str, Any],
    kube: Kube,
    config: OperatorConfig,
    events: PhaseEvents,
    metrics: OperatorMetrics,
    webhooks: WebhookSender | None,
) -> Outcome:
    owner = children.Owner.from_body(body)
    previous_status = dict(body.get("status") or {})
    previous_phase = previous_status.get("phase")
    if previous_phase in TERMINAL_PHASES and recorded_phase_stands(_own_jobs(kube, owner, previous_status)):
        _announce(kube, events, webhooks, body)  # a restart between the status write and its Event
        outcome = _settled(body, kube, Phase(previous_phase))
        metrics.observe(_observation(body, outcome.verdict, previous_phase, gpus=0, training_job_created=None))
        return outcome
    job_recorded = previous_status.get("jobName") is not None
    spec, problem = _validate(body, kube, config, check_references=not job_recorded)
    spec_error = (problem.reason, problem.message) if problem else None
    name_conflict = child_refused = namespace_quota = None
    preflight = training = None
    workload_active = None
    if spec is not None and spec_error is None:
        try:
            preflight, training, namespace_quota = _ensure_children(
                kube, owner, spec, config, job_recorded=job_recorded, first_reconcile=not previous_status
            )
        except NotOwned as err:
            name_conflict = str(err)
        except ChildRefused as err:
            child_refused = str(err)
        if training is not None and not _finished(training):
            training, workload_active = _apply_suspend(kube, spec, training)

    # The trainer reports before it exits, so reading its reports after the Jobs means a finished
    # Job is never judged without the report that explains it. The report and the Job's end come by
    # different watches, in either order: when a Job's end would be judged without its report, the
    # API server is read.
    fresh = _report_may_lag(preflight, training, body.get("status") or {})
    body = kube.read_finetunejob(owner.namespace, owner.name, fresh=fresh) or body
    previous_status = dict(body.get("status") or {})
    trainer_status = {k: previous_status[k] for k in TRAINER_FIELDS if previous_status.get(k) is not None}
    verification, verification_refused = None, None
    if spec is not None and training is not None and job_condition(training, "Complete"):
        verification, verification_refused = _ensure_verification(kube, owner, spec, config, trainer_status)
    observed = Observed(
        spec_error=spec_error,
        preflight_job=preflight,
        training_job=training,
        trainer_status=trainer_status,
        suspend=bool(spec and spec.suspend),
        queued_with_kueue=bool(spec and spec.queue_name),
        workload_active=workload_active,
        name_conflict=name_conflict,
        child_refused=child_refused,
        namespace_quota=namespace_quota,
        training_job_lost=job_recorded and training is None and spec_error is None and name_conflict is None,
        trainer_termination=_trainer_termination(kube, owner.namespace, training or preflight),
        verification_job=verification,
        verification_refused=verification_refused,
        verification_termination=(
            kube.trainer_termination(owner.namespace, verification, children.TRAINER_CONTAINER)
            if verification is not None and job_condition(verification, "Failed")
            else None
        ),
    )
    verdict, status = derive_status(body, observed, _now())
    if _status_changed(previous_status, status):
        kube.patch_finetunejob_status(owner.namespace, owner.name, status)
    _announce(kube, events, webhooks, {**body, "status": {**previous_status, **status}})
    training_job_created = None
    if training is not None and not job_recorded:  # the first reconcile to see the training Job
        training_job_created = parse_time(training["metadata"].get("creationTimestamp")) or time.time()
    # GPUs are held while the training Job runs; not while its finished run's promotion is verified.
    gpus = spec.resources.total_gpus if spec is not None and not (training is not None and _finished(training)) else 0
    metrics.observe(_observation(body, verdict, previous_phase, gpus=gpus, training_job_created=training_job_created))
    permanent = verdict.phase == Phase.FAILED and any(e is not None for e in (spec_error, name_conflict, child_refused))
    # Nothing of this job changes when another job's slot frees: look again instead of waiting for an event.
    recheck = quota.RECHECK_SECONDS if namespace_quota is not None else None
    return Outcome(verdict.phase, verdict, permanent, recheck)


def _announce(kube: Kube, events: PhaseEvents, webhooks: WebhookSender | None, body: dict[str, Any]) -> None:
    """Post the Events of the recorded transitions and offer the webhooks what they were not told."""
    events.post_recorded(kube, body)
    if webhooks is not None:
        webhooks.offer(body)


def _observation(
    body: dict[str, Any],
    verdict: Verdict,
    previous_phase: str | None,
    *,
    gpus: int,
    training_job_created: float | None,
) -> Observation:
    """What the metrics need from this reconcile; ``body`` carries the status from before it."""
    meta, status = body["metadata"], dict(body.get("status") or {})
    created = parse_time(meta.get("creationTimestamp"))
    phase = str(verdict.phase)
    return Observation(
        namespace=meta["namespace"],
        name=meta["name"],
        phase=phase,
        previous_phase=previous_phase,
        reason=verdict.reason,
        created=created,
        gpus=gpus,
        phase_entered=phase_entered(status, phase, created),
        first_running=verdict.phase == Phase.RUNNING and not status.get("startTime"),
        training_job_created=training_job_created,
    )


def _validate(
    body: dict[str, Any], kube: Kube, config: OperatorConfig, *, check_references: bool
) -> tuple[FineTuneJobSpec | None, validation.SpecProblem | None]:
    parsed = validation.parse(body.get("spec") or {})
    if isinstance(parsed, validation.SpecProblem):
        return None, parsed
    if (refused := validation.check_policy(parsed, body["metadata"]["namespace"], config)) is not None:
        return parsed, refused
    # Once the training Job exists, a referenced object changing later does not stop it.
    problem = (
        validation.check_references(parsed, body["metadata"]["namespace"], kube.read) if check_references else None
    )
    return parsed, problem


def _settled(body: dict[str, Any], kube: Kube, phase: Phase) -> Outcome:
    """A finished FineTuneJob stays as it ended: nothing is created, resumed or re-derived.

    (Its training Job may be gone by now, removed by ttlSecondsAfterFinished.)
    """
    meta, status = body["metadata"], body.get("status") or {}
    if meta.get("generation") is not None and status.get("observedGeneration") != meta["generation"]:
        kube.patch_finetunejob_status(meta["namespace"], meta["name"], {"observedGeneration": meta["generation"]})
    condition: dict[str, Any] = next((c for c in status.get("conditions") or [] if c.get("type") == str(phase)), {})
    verdict = Verdict(phase, condition.get("reason", str(phase)), condition.get("message", ""))
    return Outcome(phase, verdict, permanent_failure=False)


def _own_jobs(kube: Kube, owner: children.Owner, status: dict[str, Any]) -> list[dict[str, Any]]:
    """The FineTuneJob's Jobs that still exist (one of another owner is not its). The training Job by the
    name its status recorded: a multi-node job's differs, and a finished job's spec is not read again."""
    names = (
        children.preflight_job_name(owner.name),
        status.get("jobName") or children.training_job_name(owner.name),
        children.verification_job_name(owner.name),
    )
    jobs = (kube.read("Job", owner.namespace, name) for name in names)
    return [job for job in jobs if job is not None and _owned(job, owner.uid)]


def _owned(job: dict[str, Any], owner_uid: str) -> bool:
    try:
        owned_by(job, owner_uid)
    except NotOwned:
        return False
    return True


def _trainer_termination(kube: Kube, namespace: str, job: dict[str, Any] | None) -> tuple[int, str] | None:
    """Why the trainer failed, in its own words, when it could not write them into status itself.

    Only for the exit codes that mean "could not report" (the pod's termination message is then
    the only place the trainer could leave the API's refusal); read from the Job's pods, which may
    already be gone.
    """
    if job is None or failed_exit_code(job) not in REPORTING_FAILURES:
        return None
    return kube.trainer_termination(namespace, job, children.TRAINER_CONTAINER)


def _report_may_lag(preflight: dict[str, Any] | None, training: dict[str, Any] | None, status: dict[str, Any]) -> bool:
    """Whether the status held may lack the trainer's report on a Job that ended: a training Job over
    without ``result``, or a pre-flight that failed (a pre-flight that passed decides nothing final)."""
    if training is not None:
        return _finished(training) and not status.get("result")
    return preflight is not None and bool(job_condition(preflight, "Failed"))


def _finished(job: dict[str, Any]) -> bool:
    return bool(job_condition(job, "Complete") or job_condition(job, "Failed"))


def forget(namespace: str, name: str, metrics: OperatorMetrics) -> None:
    metrics.forget(namespace, name)
    _locks.pop((namespace, name), None)
