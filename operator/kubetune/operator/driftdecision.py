"""A DriftMonitor's decisions, as pure functions of what was observed.

When the next check is due, what a finished check Job says (its report, or why it could not check),
what that means under the monitor's rules (persistence, cooldown, limits) and the status that
records it. ``driftreconcile`` reads the cluster and writes; everything here is computed.

Windows are disjoint: a check reads only request logs newer than the last decided check's newest
file, so ``persistence`` drifted checks in a row are that many independent windows. A window
smaller than ``detection.minSamples`` decides nothing and is read again, with more, next time.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from pydantic import ValidationError

from kubetune.api.driftmonitor import (
    MAX_HISTORY,
    Action,
    ChallengeReport,
    CheckDecision,
    CheckRecord,
    DriftCheckReport,
    DriftMonitorSpec,
    DriftMonitorStatus,
    RetrainingRecord,
    Verdict,
)
from kubetune.api.v1alpha1 import ChallengeOutcome, Condition, DatasetFormat

TIME_FORMAT = "%Y-%m-%dT%H:%M:%SZ"
DRIFT_CONDITION = "DriftDetected"
VALID_CONDITION = "Valid"


def format_time(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime(TIME_FORMAT)


def parse_time(text: str | None) -> datetime | None:
    """An RFC 3339 time as the API server writes it (``...Z`` or ``...+00:00``); None if unreadable."""
    if not text:
        return None
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


@dataclass(frozen=True)
class CheckResult:
    """A finished check Job: its report, or why there is none."""

    job_name: str
    finished_at: str
    report: DriftCheckReport | None
    failure: str | None = None


def _condition(job: dict[str, Any], kind: str) -> dict[str, Any] | None:
    for condition in (job.get("status") or {}).get("conditions") or []:
        if condition.get("type") == kind and condition.get("status") == "True":
            return dict(condition)
    return None


def read_check(job: dict[str, Any], termination: tuple[int, str] | None, now: datetime) -> CheckResult | None:
    """What a check Job found, once it has finished (None while it runs). ``termination``: its pod's
    exit code and termination message, where ``kubetune drift check --report`` writes the report."""
    name = job["metadata"]["name"]
    complete, failed = _condition(job, "Complete"), _condition(job, "Failed")
    if complete is None and failed is None:
        return None
    finished = format_time(parse_time((complete or failed or {}).get("lastTransitionTime")) or now)
    said = termination[1] if termination else ""
    if failed is not None:
        why = f"{failed.get('reason', 'Failed')}: {failed.get('message', '')}".rstrip(": ")
        return CheckResult(name, finished, None, f"check Job {name} failed ({why})" + (f": {said}" if said else ""))
    try:
        return CheckResult(name, finished, DriftCheckReport.model_validate_json(said))
    except ValidationError:
        return CheckResult(name, finished, None, f"check Job {name} ended without a readable report: {said[:200]!r}")


@dataclass(frozen=True)
class Decision:
    verdict: Verdict
    action: Action
    message: str
    consecutive: int  # drifted checks in a row against the same version, after this one


def _retrainings_since(status: DriftMonitorStatus, since: datetime) -> list[RetrainingRecord]:
    return [r for r in status.retrainings or [] if (parse_time(r.start_time) or since) > since]


def decide(spec: DriftMonitorSpec, status: DriftMonitorStatus, result: CheckResult, now: datetime) -> Decision:
    previous = status.consecutive_drifted or 0
    report = result.report
    if report is None:
        return Decision(Verdict.CHECK_FAILED, Action.NONE, result.failure or "the check failed", previous)
    if report.sample_size < spec.detection.min_samples:
        return Decision(
            Verdict.TOO_FEW_SAMPLES,
            Action.NONE,
            f"{report.sample_size} new requests, fewer than detection.minSamples ({spec.detection.min_samples}); "
            "the next check reads them again with the ones that arrive meanwhile",
            previous,
        )
    # Persistence counts windows against one version: a new champion starts the count again.
    carried = previous if report.version == status.champion else 0
    if not report.drifted:
        return Decision(Verdict.NO_DRIFT, Action.NONE, report.message, 0)
    consecutive = carried + 1
    persistence = spec.detection.persistence
    if consecutive < persistence:
        return Decision(
            Verdict.DRIFTED,
            Action.NONE,
            f"drifted window {consecutive} of the {persistence} in a row needed: {report.message}",
            consecutive,
        )
    confirmed = f"drift confirmed ({consecutive} drifted windows in a row against {report.version}): {report.message}"
    retraining = spec.retraining
    if retraining is None:
        return Decision(
            Verdict.CONFIRMED, Action.NOT_CONFIGURED, confirmed + "; no retraining is configured", consecutive
        )
    if all(source.format == DatasetFormat.REQUEST_LOG for source in retraining.template.dataset.sources) and (
        report.labelled == 0
    ):
        return Decision(
            Verdict.CONFIRMED,
            Action.NO_LABELS,
            f"{confirmed}; no retraining: the template learns only from request logs' confirmed answers and none of "
            f"the window's {report.sample_size} requests has one (a label or feedback field)",
            consecutive,
        )
    started = [parse_time(r.start_time) for r in status.retrainings or []]
    last = max((t for t in started if t is not None), default=None)
    if last is not None and now < last + timedelta(minutes=spec.cooldown_minutes):
        until = format_time(last + timedelta(minutes=spec.cooldown_minutes))
        return Decision(Verdict.CONFIRMED, Action.COOLDOWN, f"{confirmed}; in cooldown until {until}", consecutive)
    period = timedelta(hours=retraining.period_hours)
    if len(_retrainings_since(status, now - period)) >= retraining.max_jobs:
        return Decision(
            Verdict.CONFIRMED,
            Action.LIMIT_REACHED,
            f"{confirmed}; {retraining.max_jobs} retraining(s) already started in the last {retraining.period_hours} h",
            consecutive,
        )
    return Decision(Verdict.CONFIRMED, Action.RETRAINING, confirmed, 0)


# What a retraining FineTuneJob's phase says about the retraining.
RETRAINING_OUTCOMES = {"Succeeded": "Trained", "Failed": "Failed"}


@dataclass(frozen=True)
class Observed:
    """A retraining FineTuneJob as read: its phase and the version it published (None: not read)."""

    phase: str | None
    version: str | None = None


def followed(status: DriftMonitorStatus, observed: Mapping[str, Observed]) -> DriftMonitorStatus:
    """The retraining records brought up to date with their FineTuneJobs (by name)."""
    records = []
    for record in status.retrainings or []:
        seen = observed.get(record.job_name)
        outcome = RETRAINING_OUTCOMES.get(seen.phase or "") if seen is not None else None
        if record.outcome == "Running" and seen is not None and outcome is not None:
            if outcome == "Trained" and seen.version is None:
                outcome, why = "Failed", "succeeded without publishing a version"
            else:
                why = record.message
            record = record.model_copy(update={"outcome": outcome, "version": seen.version, "message": why})
        records.append(record)
    return status.model_copy(update={"retrainings": records}) if status.retrainings else status


def read_challenge(job: dict[str, Any], termination: tuple[int, str] | None) -> tuple[ChallengeReport | None, str]:
    """(the comparison's report, or None and why) of a finished compare Job."""
    said = termination[1] if termination else ""
    name = job["metadata"]["name"]
    failed = _condition(job, "Failed")
    if failed is not None:
        return None, f"compare Job {name} failed ({failed.get('reason', 'Failed')})" + (f": {said}" if said else "")
    try:
        return ChallengeReport.model_validate_json(said), ""
    except ValidationError:
        return None, f"compare Job {name} ended without a readable report: {said[:200]!r}"


def compared(status: DriftMonitorStatus, index: int, report: ChallengeReport | None, why: str) -> DriftMonitorStatus:
    """Retraining ``index``'s record once its challenger was compared with the champion."""
    records = list(status.retrainings or [])
    outcome = "Promoted" if report is not None and report.promoted else "NotPromoted"
    message = report.message if report is not None else why
    records[index] = records[index].model_copy(update={"outcome": outcome, "message": message[:1024]})
    promoted = report.challenger if report is not None and report.promoted else status.promoted_version
    return status.model_copy(update={"retrainings": records, "promoted_version": promoted})


def challenge_outcome(
    monitor: str, spec: DriftMonitorSpec, report: ChallengeReport | None, why: str, now: datetime
) -> ChallengeOutcome:
    """The retraining FineTuneJob's side of the comparison (its ``status.challenge``)."""
    return ChallengeOutcome(
        monitor=monitor,
        channel=spec.target.channel,
        champion=report.champion if report is not None else "",
        promoted=report is not None and report.promoted,
        message=(report.message if report is not None else why)[:1024],
        time=format_time(now),
    )


def seconds_until_due(spec: DriftMonitorSpec, status: DriftMonitorStatus, now: datetime) -> float:
    """Seconds until the next check should start (0: now)."""
    last = parse_time(status.last_check_time)
    if last is None:
        return 0.0
    return max(0.0, (last + timedelta(minutes=spec.schedule.interval_minutes) - now).total_seconds())


def _set_condition(conditions: list[Condition], new: Condition) -> list[Condition]:
    kept = [c for c in conditions if c.type != new.type]
    old = next((c for c in conditions if c.type == new.type), None)
    if old is not None and old.status == new.status:
        new = new.model_copy(update={"last_transition_time": old.last_transition_time})
    return [*kept, new]


def recorded(
    status: DriftMonitorStatus,
    result: CheckResult,
    decision: Decision,
    *,
    sequence: int,
    retraining: str | None,
    generation: int | None,
) -> DriftMonitorStatus:
    """The status after check ``sequence`` is decided (and ``retraining`` started, when one was)."""
    report = result.report
    counted = report is not None and decision.verdict != Verdict.TOO_FEW_SAMPLES
    history = [
        *(status.history or []),
        CheckRecord(
            job_name=result.job_name,
            time=result.finished_at,
            version=report.version if report else (status.champion or ""),
            sample_size=report.sample_size if report else 0,
            verdict=decision.verdict,
            min_adjusted_p_value=min((m.adjusted_p_value for m in report.methods), default=None) if report else None,
        ),
    ][-MAX_HISTORY:]
    retrainings = list(status.retrainings or [])
    if retraining is not None:
        retrainings.append(
            RetrainingRecord(job_name=retraining, start_time=result.finished_at, message=decision.message)
        )
    conditions = status.conditions or []
    # Drift is detected once confirmed, and cleared by a window without drift; a window that drifted
    # but is not yet confirmed, one too small, or a failed check leaves the condition as it was.
    detected = {Verdict.CONFIRMED: "True", Verdict.NO_DRIFT: "False"}.get(decision.verdict)
    if detected is None and not any(c.type == DRIFT_CONDITION for c in conditions):
        detected = "False"
    if detected is not None:
        drift = Condition(
            type=DRIFT_CONDITION,
            status=detected,
            reason=decision.verdict.value if decision.action == Action.NONE else decision.action.value,
            message=decision.message[:1024],
            last_transition_time=result.finished_at,
            observed_generation=generation,
        )
        conditions = _set_condition(conditions, drift)
    return status.model_copy(
        update={
            "checks": sequence,
            "champion": report.version if report else status.champion,
            "last_check_time": result.finished_at,
            "sample_size": report.sample_size if report else status.sample_size,
            "methods": report.methods if report else status.methods,
            "decision": CheckDecision(
                verdict=decision.verdict, action=decision.action, message=decision.message[:1024]
            ),
            "consecutive_drifted": decision.consecutive,
            "newest_sample": report.newest if counted and report else status.newest_sample,
            "history": history,
            "retrainings": retrainings,
            "conditions": conditions,
            "observed_generation": generation,
        }
    )


def invalid(
    status: DriftMonitorStatus, reason: str, message: str, generation: int | None, now: str
) -> DriftMonitorStatus:
    """The status of a monitor whose spec or policy refuses it: nothing runs until the spec changes."""
    valid = Condition(
        type=VALID_CONDITION,
        status="False",
        reason=reason,
        message=message[:1024],
        last_transition_time=now,
        observed_generation=generation,
    )
    conditions = _set_condition(status.conditions or [], valid)
    return status.model_copy(update={"conditions": conditions, "observed_generation": generation})


def valid(status: DriftMonitorStatus, generation: int | None, now: str) -> DriftMonitorStatus:
    condition = Condition(
        type=VALID_CONDITION,
        status="True",
        reason="Accepted",
        message="spec and platform policy accepted",
        last_transition_time=now,
        observed_generation=generation,
    )
    return status.model_copy(
        update={"conditions": _set_condition(status.conditions or [], condition), "observed_generation": generation}
    )
