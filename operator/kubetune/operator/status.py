"""Pure status derivation: (FineTuneJob, observed children) → the status the operator owns.

Status is always recomputed from what is observed (level-based), never accumulated, so an
operator restarted at any moment computes the same status again.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from kubetune.api.contract import EXIT_CANNOT_REPORT, EXIT_RESULT_NOT_REPORTED, VERSION_PATTERN
from kubetune.api.v1alpha1 import FineTuneJobStatus, Phase

# Every reason a Failed condition can carry: validation.check_references' and check_policy's problems, the
# manifest parser's, and decide()'s own (tests keep this list complete). Bounded, so it is
# safe as a metric label.
FAILURE_REASONS = (
    "InvalidSpec",
    "NamespaceNotAllowed",
    "SecretNotFound",
    "SecretNotAllowed",
    "ConfigMapNotFound",
    "ConfigMapKeyMissing",
    "PersistentVolumeClaimNotFound",
    "ServiceAccountNotFound",
    "ServiceAccountNotAllowed",
    "ImageNotAllowed",
    "PlacementNotAllowed",
    "StorageNotAllowed",
    "RegistryNotAllowed",
    "PersonalDataPolicyNotAllowed",
    "TrackingNotAvailable",
    "GpuQuotaExceeded",
    "NodeQuotaExceeded",
    "NameConflict",
    "PreflightFailed",
    "TrainingFailed",
    "TrainingJobLost",
    "TrainerCannotReport",
    "ResultNotReported",
    "ChildRefused",
)
MAX_PHASE_HISTORY = 16
# A promotion's gate checks travel to the verification Job on its command line: bounded.
MAX_GATE_CHECKS = 32
MAX_GATE_CHECK_NAME = 64
MAX_TRANSITION_MESSAGE = 1024

# The Job controller's Failed condition after a FailJob rule names the exit code: "Container
# trainer for pod <ns>/<pod> failed with exit code 3 matching FailJob rule at index 0".
FAILED_WITH_EXIT_CODE = re.compile(r"\bfailed with exit code (\d+)\b")

# The trainer's part of the status: what it reports, and all the operator reads from status to derive
# the rest. Phase, conditions and the operator's bookkeeping are never taken from status as verdicts
# (the chart's admission policy also refuses a trainer's write to them).
TRAINER_FIELDS = ("preflight", "progress", "resolved", "result")
# Every key the status schema names (the operator's and the trainer's parts), and kopf's own.
STATUS_FIELDS = frozenset(field.alias or name for name, field in FineTuneJobStatus.model_fields.items()) | {"kopf"}

# Conditions that are True exactly while the job is in one phase.
PHASE_CONDITIONS = (
    ("Running", Phase.RUNNING),
    ("Suspended", Phase.SUSPENDED),
    ("Succeeded", Phase.SUCCEEDED),
    ("Failed", Phase.FAILED),
)


@dataclass(frozen=True)
class Verdict:
    """What the operator concluded; conditions and phase are rendered from it."""

    phase: Phase
    reason: str
    message: str
    validated: tuple[str, str, str] = ("Unknown", "Pending", "")  # status, reason, message


@dataclass(frozen=True)
class Observed:
    spec_error: tuple[str, str] | None  # (reason, message) when the spec/references are invalid
    preflight_job: dict[str, Any] | None
    training_job: dict[str, Any] | None
    trainer_status: dict[str, Any]  # status fields written by the trainer (preflight, progress, result)
    suspend: bool
    queued_with_kueue: bool
    workload_active: bool | None = None  # Kueue Workload spec.active, when one exists
    name_conflict: str | None = None  # a child with our name but another owner
    training_job_lost: bool = False  # status.jobName is recorded but the Job is gone (TTL, deleted by hand)
    child_refused: str | None = None  # the API server refused a child for good, in its own words
    namespace_quota: str | None = None  # why the training Job waits for a slot of the namespace's cap
    # (exit code, termination message) of the trainer container of the Job's last failed pod, when read
    trainer_termination: tuple[int, str] | None = None
    # The Job that checks a reported promotion against the published manifest, once one was made;
    # why the API server refused to make it; and what its pod said when it failed.
    verification_job: dict[str, Any] | None = None
    verification_refused: str | None = None
    verification_termination: tuple[int, str] | None = None


def job_condition(job: dict[str, Any] | None, kind: str) -> dict[str, Any] | None:
    for condition in (job or {}).get("status", {}).get("conditions", []) or []:
        if condition.get("type") == kind and condition.get("status") == "True":
            return dict(condition)
    return None


def _job_failure(job: dict[str, Any], termination: tuple[int, str] | None = None) -> str:
    """The Job's Failed condition, and what the trainer said when it stopped (its termination message)."""
    failed = job_condition(job, "Failed") or {}
    reason = failed.get("reason", "Failed")
    message = failed.get("message", "")
    summary = f"{reason}: {message}".rstrip(": ")
    if termination is not None and termination[1].strip():
        summary += f"; the trainer exited with code {termination[0]}: {termination[1].strip()}"
    return summary


def failed_exit_code(job: dict[str, Any] | None) -> int | None:
    """The trainer exit code a Job's Failed condition names (a podFailurePolicy FailJob rule), if any."""
    match = FAILED_WITH_EXIT_CODE.search((job_condition(job, "Failed") or {}).get("message", ""))
    return int(match.group(1)) if match else None


def _status_not_written(
    job: dict[str, Any], termination: tuple[int, str] | None, validated: tuple[str, str, str]
) -> Verdict | None:
    """A Job that failed because its trainer could not write the FineTuneJob status says so.

    The trainer's termination message carries the API's answer (e.g. ``HTTP 403 Forbidden: ...``)
    and, for an unreported result, the published version and manifest URI.
    """
    code = termination[0] if termination is not None else failed_exit_code(job)
    said = termination[1].strip() if termination is not None else ""
    if code == EXIT_CANNOT_REPORT:
        detail = said.removeprefix("TrainerCannotReport: ") or f"exit code {code}; see the trainer pod's logs"
        message = f"the trainer stopped before any work because it could not write the FineTuneJob status: {detail}"
        return Verdict(Phase.FAILED, "TrainerCannotReport", message, validated)
    if code == EXIT_RESULT_NOT_REPORTED:
        detail = said.removeprefix("ResultNotReported: ") or (
            f"exit code {code}; the trainer pod's logs name the version and its manifest URI"
        )
        message = (
            "the model was trained and published (its artifacts are in storage) but the trainer could not "
            f"write the result to the FineTuneJob status: {detail}"
        )
        return Verdict(Phase.FAILED, "ResultNotReported", message, validated)
    return None


def decide(observed: Observed) -> Verdict:
    if observed.name_conflict:
        return Verdict(
            Phase.FAILED, "NameConflict", observed.name_conflict, ("False", "NameConflict", observed.name_conflict)
        )
    if observed.spec_error is not None:
        reason, message = observed.spec_error
        return Verdict(Phase.FAILED, reason, message, ("False", reason, message))
    if observed.child_refused is not None:
        # Not the user's spec as written but what the operator made of it: a bug or a cluster policy.
        return Verdict(Phase.FAILED, "ChildRefused", observed.child_refused)

    preflight_report = observed.trainer_status.get("preflight") or {}
    preflight = observed.preflight_job
    if observed.training_job_lost:
        return _lost_job_verdict(observed.trainer_status.get("result"))
    if observed.training_job is None:
        if preflight is None or not (job_condition(preflight, "Complete") or job_condition(preflight, "Failed")):
            return Verdict(
                Phase.VALIDATING, "PreflightRunning", "checking dataset, tokens and memory on a CPU-only pod"
            )
        if job_condition(preflight, "Failed"):
            incomplete = ("Unknown", "PreflightIncomplete", "the pre-flight stopped before it could report its checks")
            unwritten = _status_not_written(preflight, observed.trainer_termination, incomplete)
            if unwritten is not None:
                return unwritten
            message = preflight_report.get("message") or _job_failure(preflight, observed.trainer_termination)
            return Verdict(Phase.FAILED, "PreflightFailed", message, ("False", "PreflightFailed", message))
    validated = ("True", "PreflightPassed", preflight_report.get("message") or "pre-flight checks passed")

    job = observed.training_job
    if job is None:
        if observed.namespace_quota is not None:
            return Verdict(Phase.QUEUED, "NamespaceQuota", observed.namespace_quota, validated)
        return Verdict(Phase.PENDING, "CreatingJob", "creating the training Job", validated)
    if job_condition(job, "Complete"):
        result = observed.trainer_status.get("result") or {}
        published = f"published {result.get('version', '')}".strip()
        if (
            promotion_claimed(result, job_succeeded=True)
            and observed.verification_refused is None
            and not _finished(observed.verification_job)
        ):
            message = f"{published}; checking the published version against its manifest before promoting it"
            return Verdict(Phase.RUNNING, "VerifyingPromotion", message, validated)
        return Verdict(Phase.SUCCEEDED, "TrainingSucceeded", published, validated)
    if job_condition(job, "Failed"):
        unwritten = _status_not_written(job, observed.trainer_termination, validated)
        if unwritten is not None:
            return unwritten
        return Verdict(Phase.FAILED, "TrainingFailed", _job_failure(job, observed.trainer_termination), validated)
    if observed.suspend:
        return Verdict(
            Phase.SUSPENDED,
            "Suspended",
            "spec.suspend is true; a resumed job continues from its last checkpoint",
            validated,
        )
    if job.get("spec", {}).get("suspend"):
        if observed.queued_with_kueue:
            return Verdict(Phase.QUEUED, "WaitingForKueue", "waiting for Kueue to admit the Job", validated)
        return Verdict(Phase.SUSPENDED, "Suspended", "the training Job is suspended", validated)
    status = job.get("status", {})
    if (status.get("ready") or 0) > 0:
        return Verdict(Phase.RUNNING, "Training", "the trainer is running", validated)
    return Verdict(Phase.QUEUED, "WaitingForPod", "the training pod is waiting to be scheduled or to start", validated)


def _finished(job: dict[str, Any] | None) -> bool:
    return bool(job_condition(job, "Complete") or job_condition(job, "Failed"))


def _lost_job_verdict(result: dict[str, Any] | None) -> Verdict:
    """The training Job vanished (ttlSecondsAfterFinished, or deleted by hand) before we saw it end.

    The trainer's published result is the evidence of success; it is never run again.
    """
    validated = ("True", "PreflightPassed", "pre-flight checks passed")
    if result and result.get("version"):
        return Verdict(
            Phase.SUCCEEDED, "TrainingSucceeded", f"published {result['version']} (the training Job is gone)", validated
        )
    return Verdict(
        Phase.FAILED,
        "TrainingJobLost",
        "the training Job was deleted before it finished and the trainer published nothing; it is not re-run",
        validated,
    )


def _condition(
    kind: str,
    status: str,
    reason: str,
    message: str,
    previous: dict[str, dict[str, Any]],
    now: str,
    generation: int | None,
) -> dict[str, Any]:
    before = previous.get(kind)
    changed = before is None or before.get("status") != status
    condition = {
        "type": kind,
        "status": status,
        "reason": reason,
        "message": message,
        "lastTransitionTime": now if changed else before.get("lastTransitionTime", now),  # type: ignore[union-attr]
    }
    if generation is not None:
        condition["observedGeneration"] = generation
    return condition


def render_status(
    verdict: Verdict,
    observed: Observed,
    previous_status: dict[str, Any],
    *,
    generation: int | None,
    now: str,
    job_name: str | None,
    preflight_job_name: str | None,
) -> dict[str, Any]:
    """The operator-owned status fields for this verdict (a merge patch for status)."""
    previous = {c["type"]: c for c in previous_status.get("conditions") or [] if "type" in c}
    phase = verdict.phase
    conditions = [_condition("Validated", *verdict.validated, previous, now, generation)]
    for kind, active_phase in PHASE_CONDITIONS:
        active = phase == active_phase
        conditions.append(
            _condition(
                kind,
                "True" if active else "False",
                verdict.reason if active else f"Not{kind}",
                verdict.message if active else "",
                previous,
                now,
                generation,
            )
        )
    gate = quality_gate(
        observed.trainer_status.get("result") or {},
        job_succeeded=job_condition(observed.training_job, "Complete") is not None,
        verification=verification_verdict(observed),
    )
    if gate is not None and phase == Phase.SUCCEEDED:  # the gate is judged on a finished run
        conditions.append(_condition("QualityGatePassed", *gate, previous, now, generation))
    status: dict[str, Any] = {
        "phase": str(phase),
        "phaseHistory": phase_history(previous_status, verdict, now),
        "conditions": conditions,
        "observedGeneration": generation,
        "jobName": job_name,
        "preflightJobName": preflight_job_name,
    }
    progress = observed.trainer_status.get("progress") or {}
    if progress.get("step") is not None and progress.get("totalSteps"):
        status["progressText"] = f"{progress['step']}/{progress['totalSteps']}"
    job_status = (observed.training_job or {}).get("status", {})
    # When the trainer first ran, not when the Job controller started the Job (its pod may wait
    # for a GPU for hours): the queue-time metric counts to this moment.
    start = previous_status.get("startTime") or (now if phase == Phase.RUNNING else None)
    if start is None and phase in (Phase.SUCCEEDED, Phase.FAILED):
        start = job_status.get("startTime")  # finished before the operator saw it running
    if start is not None:
        status["startTime"] = start
    if phase in (Phase.SUCCEEDED, Phase.FAILED):
        status["completionTime"] = previous_status.get("completionTime") or job_status.get("completionTime") or now
    written = {k: v for k, v in status.items() if v is not None}
    # A key the status schema does not name (the schema keeps unknown status fields) was written by
    # someone else, e.g. a trainer's `promoted`: removed (null in the merge patch), so it never survives.
    return written | {key: None for key in previous_status if key not in STATUS_FIELDS}


def quality_gate(
    result: Mapping[str, Any], *, job_succeeded: bool, verification: str | None
) -> tuple[str, str, str] | None:
    """The QualityGatePassed condition (status, reason, message) of a finished run from the trainer's
    result; None when the trainer gave no verdict.

    "Not promoted" is taken as reported. "Promoted" is the trainer's claim, taken only when it is
    consistent (the operator saw the training Job succeed, a version and its manifest were
    published, at least one gate check was judged and every judged check passed) and the
    verification Job found the published manifest saying the same (``verification`` is None, else
    why not). Otherwise the condition is False with reason ``PromotionNotVerified``, saying why.
    """
    promoted = result.get("promoted")
    if promoted is None:
        return None
    gate = str(result.get("qualityGateMessage") or "")
    if promoted is not True:
        missed = "published but not promoted: the quality gate was missed (see the evaluation report)"
        return "False", "QualityGateNotMet", gate or missed
    problems = promotion_problems(result, job_succeeded=job_succeeded)
    if problems:
        return "False", "PromotionNotVerified", "the trainer reported the model promoted, but " + "; ".join(problems)
    if verification is not None:
        return "False", "PromotionNotVerified", f"the trainer reported the model promoted, but {verification}"
    return "True", "QualityGatePassed", gate or "the tuned model met the quality gate"


def promotion_claimed(result: Mapping[str, Any], *, job_succeeded: bool) -> bool:
    """Whether the result claims a promotion consistent enough to be checked against the manifest."""
    return result.get("promoted") is True and not promotion_problems(result, job_succeeded=job_succeeded)


def claimed_gate_checks(result: Mapping[str, Any]) -> dict[str, bool | None]:
    """The reported gate checks by name, as the verification Job compares them with the manifest's."""
    checks = [check for check in result.get("gateChecks") or [] if isinstance(check, Mapping)]
    return {str(check.get("name")): check.get("passed") for check in checks}


def verification_verdict(observed: Observed) -> str | None:
    """Why the published manifest does not back the reported promotion, or None when it does (the
    verification Job completed). Read only for a consistent claim, once the phase is Succeeded."""
    job = observed.verification_job
    if observed.verification_refused is not None:
        return f"its verification Job was refused: {observed.verification_refused}"
    if job_condition(job, "Complete"):
        return None
    if job is None:
        return "the published version was not checked against its manifest"
    said = observed.verification_termination[1] if observed.verification_termination else ""
    detail = said.removeprefix("PromotionNotVerified: ") or _job_failure(job)
    return f"the published manifest does not back it: {detail}"


def promotion_problems(result: Mapping[str, Any], *, job_succeeded: bool) -> list[str]:
    """Why a result claiming ``promoted`` is not internally consistent (empty when it is)."""
    problems = []
    if not job_succeeded:
        problems.append("the operator did not see the training Job succeed")
    if not result.get("version") or not result.get("manifestUri"):
        problems.append("it names no published version and manifest URI")
    version = result.get("version")
    if version and not re.fullmatch(VERSION_PATTERN, str(version)):
        problems.append(f"its version {str(version)[:80]!r} is not a name kubetune gives")
    checks = [check for check in result.get("gateChecks") or [] if isinstance(check, Mapping)]
    if len(checks) > MAX_GATE_CHECKS or any(len(str(c.get("name", ""))) > MAX_GATE_CHECK_NAME for c in checks):
        problems.append(
            f"it lists more than {MAX_GATE_CHECKS} gate checks or a name over {MAX_GATE_CHECK_NAME} characters"
        )
    judged = [check for check in checks if check.get("passed") is not None]
    failed = [str(check.get("name", "?")) for check in judged if check.get("passed") is not True]
    if not judged:
        problems.append("it lists no judged gate check")
    if failed:
        problems.append(f"gate checks {', '.join(failed)} did not pass")
    return problems


def recorded_phase_stands(children: list[dict[str, Any]]) -> bool:
    """Whether a terminal phase found in status is kept as the operator recorded it, given the
    FineTuneJob's own child Jobs that still exist.

    The operator records a terminal phase once a Job finished or no Job could be made. While one of
    its Jobs still runs, a terminal phase in status is either someone else's (a trainer wrote it) or
    one the operator derives from what it still observes (a spec its policy now refuses): deriving
    the status again undoes the first and finds the second again, so it is derived again.
    """
    return all(job_condition(job, "Complete") or job_condition(job, "Failed") for job in children)


def phase_history(previous_status: dict[str, Any], verdict: Verdict, now: str) -> list[dict[str, Any]]:
    """The recorded transitions, with one more when the phase changes (ids count up from 1)."""
    history = list(previous_status.get("phaseHistory") or [])
    previous_phase = previous_status.get("phase")
    if previous_phase == str(verdict.phase):
        return history
    transition: dict[str, Any] = {
        "id": int(history[-1]["id"]) + 1 if history else 1,
        "phase": str(verdict.phase),
        "reason": verdict.reason,
        "message": verdict.message[:MAX_TRANSITION_MESSAGE],
        "time": now,
    }
    if previous_phase:
        transition["previousPhase"] = previous_phase
    return [*history, transition][-MAX_PHASE_HISTORY:]


def derive_status(ftj: Mapping[str, Any], observed: Observed, now: str) -> tuple[Verdict, dict[str, Any]]:
    """(FineTuneJob, observed children and trainer reports, now) -> (verdict, status merge patch).

    Pure: the same inputs give the same status, which is what makes a restarted operator
    converge to the status its predecessor would have written.
    """
    previous_status = dict(ftj.get("status") or {})
    verdict = decide(observed)
    patch = render_status(
        verdict,
        observed,
        previous_status,
        generation=ftj.get("metadata", {}).get("generation"),
        now=now,
        job_name=_name(observed.training_job) or previous_status.get("jobName"),
        preflight_job_name=_name(observed.preflight_job) or previous_status.get("preflightJobName"),
    )
    return verdict, patch


def _name(obj: dict[str, Any] | None) -> str | None:
    return obj["metadata"]["name"] if obj else None
