"""The DriftMonitor verb: check when due, decide what a finished check means, act, record.

Level-based like the FineTuneJob reconcile: each run reads the monitor and its next check Job
(``<monitor>-check-<checks + 1>``) fresh. No Job and a check due: create it. A finished Job: read
its report, decide (``driftdecision``), start a retraining FineTuneJob when the decision says so,
post the Events, then write the status that counts the check as decided. A crash anywhere in
between re-decides the same Job to the same result: the retraining and the Events have
deterministic names, so nothing is done twice.
"""

from __future__ import annotations

import re
import threading
from collections import defaultdict
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from kubetune.api.contract import TRAINER_CONTAINER, VERSION_PATTERN
from kubetune.api.driftmonitor import KIND, Action, ChallengeReport, DriftMonitorSpec, DriftMonitorStatus, Verdict
from kubetune.api.v1alpha1 import KIND as FINETUNEJOB_KIND
from kubetune.operator import validation
from kubetune.operator.children import Owner, build_trainer_network_policy, runs_as_built
from kubetune.operator.config import OperatorConfig
from kubetune.operator.driftdecision import (
    CheckResult,
    Decision,
    Observed,
    challenge_outcome,
    compared,
    decide,
    followed,
    format_time,
    invalid,
    read_challenge,
    read_check,
    recorded,
    seconds_until_due,
    valid,
)
from kubetune.operator.driftjobs import (
    build_check_job,
    build_compare_job,
    build_retraining,
    check_job_name,
    monitor_owner,
)
from kubetune.operator.events import build_event
from kubetune.operator.kube import ChildRefused, Kube, NotOwned, owned_by

_locks: defaultdict[tuple[str, str], threading.Lock] = defaultdict(threading.Lock)
# A running check Job's end arrives as a Job event; this is the fallback if that event is missed.
RUNNING_RECHECK_SECONDS = 300.0
WARNINGS = {Verdict.CONFIRMED, Verdict.CHECK_FAILED}


@dataclass(frozen=True)
class MonitorOutcome:
    recheck_after: float | None


def reconcile_monitor(namespace: str, name: str, kube: Kube, config: OperatorConfig) -> MonitorOutcome | None:
    """Reconcile one DriftMonitor; ``None`` when it no longer exists."""
    with _locks[(namespace, name)]:
        body = kube.read_driftmonitor(namespace, name)
        if body is None or body.get("metadata", {}).get("deletionTimestamp"):
            _locks.pop((namespace, name), None)
            return None
        return _reconcile(body, kube, config, datetime.now(UTC))


def current_status(body: dict[str, Any]) -> DriftMonitorStatus:
    """The monitor's status as the API defines it (kopf's own keys, if any, left aside)."""
    raw = body.get("status") or {}
    known = {field.alias or name for name, field in DriftMonitorStatus.model_fields.items()}
    return DriftMonitorStatus.model_validate({k: v for k, v in raw.items() if k in known})


def _write(kube: Kube, body: dict[str, Any], before: DriftMonitorStatus, after: DriftMonitorStatus) -> None:
    if after != before:
        meta = body["metadata"]
        kube.patch_driftmonitor_status(meta["namespace"], meta["name"], after.model_dump(by_alias=True, mode="json"))


def _reconcile(body: dict[str, Any], kube: Kube, config: OperatorConfig, now: datetime) -> MonitorOutcome:
    owner = monitor_owner(body)
    generation = body["metadata"].get("generation")
    before = current_status(body)
    stamp = format_time(now)
    spec = validation.parse_monitor(body.get("spec") or {})
    if isinstance(spec, validation.SpecProblem):
        _write(kube, body, before, invalid(before, spec.reason, spec.message, generation, stamp))
        return MonitorOutcome(None)  # a spec change is an update event: nothing to retry until then
    problem = (
        validation.check_monitor_policy(spec, owner.namespace, config)
        or validation.check_s3_references(spec.s3, owner.namespace, kube.read)
        or validation.check_hub_references(spec.hub, owner.namespace, kube.read)
        or validation.check_cloud_storage_references(spec.gcs, spec.azure, owner.namespace, kube.read)
    )
    if problem is not None:
        _write(kube, body, before, invalid(before, problem.reason, problem.message, generation, stamp))
        return MonitorOutcome(None)
    if config.trainer_egress is not None:  # before any of its Jobs, so no pod ever runs without it
        # The versions it checks may stand on a Hub model, known only from their manifests.
        kube.ensure_spec(build_trainer_network_policy(owner, config.trainer_egress, reads_hub=True), owner.uid)
    status = _follow_retrainings(kube, owner, valid(before, generation, stamp))
    status = _compare_challengers(kube, body, owner, spec, config, status)
    sequence = (status.checks or 0) + 1
    job = kube.read("Job", owner.namespace, check_job_name(owner.name, sequence))
    if job is None:
        if spec.suspend or (wait := seconds_until_due(spec, status, now)) > 0:
            _write(kube, body, before, status)
            return MonitorOutcome(None if spec.suspend else wait)
        kube.ensure(build_check_job(owner, spec, config, sequence=sequence, after=status.newest_sample), owner.uid)
        _write(kube, body, before, status)
        return MonitorOutcome(RUNNING_RECHECK_SECONDS)
    result = _result(kube, owner, job, now)
    if result is None:
        _write(kube, body, before, status)
        return MonitorOutcome(RUNNING_RECHECK_SECONDS)
    decision = decide(spec, status, result, now)
    retraining = None
    if decision.action == Action.RETRAINING and spec.retraining is not None and result.report is not None:
        manifest = build_retraining(
            owner,
            spec.retraining,
            sequence=len(status.retrainings or []) + 1,
            training_sources=result.report.training_sources,
            reason=decision.message,
        )
        try:
            kube.ensure(manifest, owner.uid)
            retraining = manifest["metadata"]["name"]
        except (ChildRefused, NotOwned) as err:
            why = (
                str(err)
                if isinstance(err, ChildRefused)
                else "a FineTuneJob of its name exists, not made by this monitor"
            )
            decision = Decision(
                decision.verdict, Action.NOT_CONFIGURED, f"{decision.message}; retraining not started: {why}", 0
            )
    after = recorded(status, result, decision, sequence=sequence, retraining=retraining, generation=generation)
    _post_events(kube, body, sequence, result, decision, retraining)
    _write(kube, body, before, after)
    return MonitorOutcome(None if spec.suspend else seconds_until_due(spec, after, now))


def _follow_retrainings(kube: Kube, owner: Owner, status: DriftMonitorStatus) -> DriftMonitorStatus:
    observed: dict[str, Observed] = {}
    for record in status.retrainings or []:
        if record.outcome == "Running":
            found = (kube.read_finetunejob(owner.namespace, record.job_name) or {}).get("status") or {}
            version = (found.get("result") or {}).get("version")
            valid_version = version if isinstance(version, str) and re.fullmatch(VERSION_PATTERN, version) else None
            observed[record.job_name] = Observed(found.get("phase"), valid_version)
    return followed(status, observed)


def _compare_challengers(
    kube: Kube,
    body: dict[str, Any],
    owner: Owner,
    spec: DriftMonitorSpec,
    config: OperatorConfig,
    status: DriftMonitorStatus,
) -> DriftMonitorStatus:
    """Each trained challenger against the champion: its compare Job made, and once it ended, read."""
    for index, record in enumerate(status.retrainings or []):
        if record.outcome != "Trained" or record.version is None or spec.retraining is None:
            continue
        output = spec.retraining.template.output.uri.rstrip("/")
        built = build_compare_job(owner, spec, config, sequence=index + 1, challenger_uri=f"{output}/{record.version}")
        try:
            job = kube.ensure(built, owner.uid)
        except NotOwned:
            job = {"metadata": built["metadata"], "spec": {}}  # compared below as not the operator's
        if not runs_as_built(job, built):
            report, why = None, f"Job {job['metadata']['name']} does not run the operator's comparison"
        elif _condition_of(job):
            termination = kube.trainer_termination(owner.namespace, job, TRAINER_CONTAINER, successful=True)
            report, why = read_challenge(job, termination)
        else:
            continue
        _record_on_challenger(kube, owner, spec, record.job_name, report, why)
        status = compared(status, index, report, why)
        promoted = report is not None and report.promoted
        kube.create_event(
            build_event(
                body,
                KIND,
                f"compare-{index + 1}",
                reason="ChallengerPromoted" if promoted else "ChallengerNotPromoted",
                message=f"{record.version}: {report.message if report is not None else why}",
                warning=False,
                time=format_time(datetime.now(UTC)),
            )
        )
    return status


def _record_on_challenger(
    kube: Kube, owner: Owner, spec: DriftMonitorSpec, job_name: str, report: ChallengeReport | None, why: str
) -> None:
    """The comparison's verdict in the retraining FineTuneJob's own status and Events (before the
    monitor's status counts it: a crash in between writes the same again)."""
    challenger = kube.read_finetunejob(owner.namespace, job_name)
    if challenger is None:  # deleted since it trained: the monitor's record is the one left
        return
    try:
        owned_by(challenger, owner.uid)
    except NotOwned:  # replaced by someone else's FineTuneJob of that name: not ours to write on
        return
    outcome = challenge_outcome(owner.name, spec, report, why, datetime.now(UTC))
    kube.patch_finetunejob_status(owner.namespace, job_name, {"challenge": outcome.to_manifest()})
    kube.create_event(
        build_event(
            challenger,
            FINETUNEJOB_KIND,
            "challenge",
            reason="Promoted" if outcome.promoted else "NotPromoted",
            message=f"against {outcome.champion or 'the champion'} on channel {outcome.channel}: {outcome.message}",
            warning=False,
            time=outcome.time,
        )
    )


def _condition_of(job: dict[str, Any]) -> bool:
    return any(
        c.get("type") in ("Complete", "Failed") and c.get("status") == "True"
        for c in (job.get("status") or {}).get("conditions") or []
    )


def _result(kube: Kube, owner: Owner, job: dict[str, Any], now: datetime) -> CheckResult | None:
    name = job["metadata"]["name"]
    try:
        owned_by(job, owner.uid)
    except NotOwned:
        # Someone else's Job under the name of this check: it decides nothing, and is skipped.
        return CheckResult(name, format_time(now), None, f"Job {name} was not created by this DriftMonitor")
    termination = kube.trainer_termination(owner.namespace, job, TRAINER_CONTAINER, successful=True)
    return read_check(job, termination, now)


def _post_events(
    kube: Kube,
    body: dict[str, Any],
    sequence: int,
    result: CheckResult,
    decision: Decision,
    retraining: str | None,
) -> None:
    kube.create_event(
        build_event(
            body,
            KIND,
            f"check-{sequence}",
            reason=decision.verdict.value,
            message=decision.message,
            warning=decision.verdict in WARNINGS,
            time=result.finished_at,
        )
    )
    if retraining is not None:
        kube.create_event(
            build_event(
                body,
                KIND,
                f"retrain-{sequence}",
                reason="RetrainingStarted",
                message=f"FineTuneJob {retraining} started: {decision.message}",
                warning=False,
                time=result.finished_at,
            )
        )
