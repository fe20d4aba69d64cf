"""Unit tests of status derivation: observed children -> phase and conditions."""

from __future__ import annotations

from typing import Any

import pytest

from kubetune.api.v1alpha1 import Phase
from kubetune.operator.status import (
    FAILURE_REASONS,
    Observed,
    decide,
    derive_status,
    failed_exit_code,
    quality_gate,
    recorded_phase_stands,
    render_status,
)
from tests.builders import trainer_result


def job(
    suspend: bool = False, ready: int = 0, condition: str | None = None, reason: str = "", message: str = ""
) -> dict[str, Any]:
    status: dict[str, Any] = {"ready": ready}
    if condition:
        status["conditions"] = [{"type": condition, "status": "True", "reason": reason, "message": message}]
    return {"metadata": {"name": "x-train"}, "spec": {"suspend": suspend}, "status": status}


PASSED = job(condition="Complete")


def observed(**kw: Any) -> Observed:
    base: dict[str, Any] = {
        "spec_error": None,
        "preflight_job": PASSED,
        "training_job": None,
        "trainer_status": {},
        "suspend": False,
        "queued_with_kueue": False,
    }
    return Observed(**{**base, **kw})


def test_phases_follow_the_children() -> None:
    assert decide(observed(preflight_job=job())).phase == Phase.VALIDATING
    assert decide(observed(preflight_job=None)).phase == Phase.VALIDATING
    assert decide(observed()).phase == Phase.PENDING
    assert decide(observed(training_job=job(suspend=True), queued_with_kueue=True)).phase == Phase.QUEUED
    assert decide(observed(training_job=job())).phase == Phase.QUEUED
    assert decide(observed(training_job=job(ready=1))).phase == Phase.RUNNING
    assert decide(observed(training_job=job(ready=1), suspend=True)).phase == Phase.SUSPENDED
    assert decide(observed(training_job=job(condition="Complete"))).phase == Phase.SUCCEEDED
    failed = decide(observed(training_job=job(condition="Failed", reason="DeadlineExceeded", message="too slow")))
    assert (failed.phase, failed.reason, failed.message) == (
        Phase.FAILED,
        "TrainingFailed",
        "DeadlineExceeded: too slow",
    )
    invalid = decide(observed(spec_error=("SecretNotFound", "spec.s3.credentialsSecret.name: ...")))
    assert invalid.phase == Phase.FAILED and invalid.validated[0] == "False"


def test_conditions_keep_transition_time_when_status_is_unchanged() -> None:
    seen = observed(training_job=job(ready=1), trainer_status={"progress": {"step": 3, "totalSteps": 9}})
    first = render_status(
        decide(seen), seen, {}, generation=1, now="T1", job_name="x-train", preflight_job_name="x-preflight"
    )
    second = render_status(
        decide(seen), seen, first, generation=1, now="T2", job_name="x-train", preflight_job_name="x-preflight"
    )
    running = next(c for c in second["conditions"] if c["type"] == "Running")
    assert running["status"] == "True" and running["lastTransitionTime"] == "T1"
    assert second["progressText"] == "3/9"
    assert second["startTime"] == "T1"
    done = observed(training_job=job(condition="Complete"), trainer_status={"result": {"promoted": False}})
    third = render_status(
        decide(done), done, second, generation=1, now="T3", job_name="x-train", preflight_job_name="x-preflight"
    )
    running = next(c for c in third["conditions"] if c["type"] == "Running")
    assert running["status"] == "False" and running["lastTransitionTime"] == "T3"
    gate = next(c for c in third["conditions"] if c["type"] == "QualityGatePassed")
    assert (gate["status"], gate["reason"]) == ("False", "QualityGateNotMet")
    assert third["completionTime"] == "T3"


def test_a_vanished_training_job_is_judged_by_what_the_trainer_published() -> None:
    published = decide(observed(training_job_lost=True, trainer_status={"result": {"version": "v3", "promoted": True}}))
    assert (published.phase, published.reason) == (Phase.SUCCEEDED, "TrainingSucceeded")
    assert "v3" in published.message
    lost = decide(observed(training_job_lost=True, trainer_status={"progress": {"step": 5, "totalSteps": 9}}))
    assert (lost.phase, lost.reason) == (Phase.FAILED, "TrainingJobLost")


def test_derive_status_is_a_function_of_the_finetunejob_and_its_children() -> None:
    ftj = {
        "metadata": {"name": "x", "generation": 2},
        "status": {"jobName": "x-train", "phase": "Running", "progress": {"step": 7, "totalSteps": 10}},
    }
    seen = observed(training_job_lost=True, trainer_status={"progress": {"step": 7, "totalSteps": 10}})
    verdict, patch = derive_status(ftj, seen, "T9")
    assert verdict.phase == Phase.FAILED
    assert patch["phase"] == "Failed"
    assert patch["jobName"] == "x-train", "the recorded Job name stays when the Job is gone"
    assert patch["observedGeneration"] == 2
    assert patch["progressText"] == "7/10"
    assert patch["completionTime"] == "T9"
    assert all(c["observedGeneration"] == 2 for c in patch["conditions"])
    assert derive_status(ftj, seen, "T9") == (verdict, patch)


def failed_by_policy(exit_code: int) -> dict[str, Any]:
    """A Job the Job controller failed on a podFailurePolicy FailJob rule, with its exact condition message."""
    return job(
        condition="Failed",
        reason="PodFailurePolicy",
        message=f"Container trainer for pod ml/tickets-train-x7k2p failed with exit code {exit_code} "
        "matching FailJob rule at index 0",
    )


FORBIDDEN = (
    'TrainerCannotReport: HTTP 403 Forbidden: finetunejobs.kubetune.dev "tickets" is forbidden: User '
    '"system:serviceaccount:ml:tickets-trainer" cannot patch resource "finetunejobs/status" in API group '
    '"kubetune.dev" in the namespace "ml"'
)


def test_a_trainer_that_cannot_write_its_status_fails_the_job_and_says_why() -> None:
    quoted = decide(observed(training_job=failed_by_policy(3), trainer_termination=(3, FORBIDDEN)))
    assert (quoted.phase, quoted.reason) == (Phase.FAILED, "TrainerCannotReport")
    assert FORBIDDEN.removeprefix("TrainerCannotReport: ") in quoted.message, "the API's answer, HTTP status included"
    assert "could not write the FineTuneJob status" in quoted.message

    unread = decide(observed(training_job=failed_by_policy(3)))  # the reconciler has not read the pod (yet)
    assert (unread.phase, unread.reason) == (Phase.FAILED, "TrainerCannotReport")
    assert "could not write the FineTuneJob status" in unread.message and "logs" in unread.message

    preflight = decide(observed(preflight_job=failed_by_policy(3), trainer_termination=(3, FORBIDDEN)))
    assert (preflight.phase, preflight.reason) == (Phase.FAILED, "TrainerCannotReport")
    assert preflight.validated[0] == "Unknown", "the pre-flight never got to check anything"


def test_a_result_that_was_not_written_fails_the_job_and_says_the_artifacts_are_in_storage() -> None:
    said = (
        "ResultNotReported: 20250101-120000 published at s3://models/tickets/20250101-120000/manifest.json, "
        "but the FineTuneJob status could not be written: HTTP 503 Service Unavailable: etcd is unavailable"
    )
    quoted = decide(observed(training_job=failed_by_policy(4), trainer_termination=(4, said)))
    assert (quoted.phase, quoted.reason) == (Phase.FAILED, "ResultNotReported")
    assert "artifacts are in storage" in quoted.message
    assert "s3://models/tickets/20250101-120000/manifest.json" in quoted.message and "HTTP 503" in quoted.message
    assert quoted.validated[0] == "True", "the pre-flight had passed"

    unread = decide(observed(training_job=failed_by_policy(4)))
    assert (unread.phase, unread.reason) == (Phase.FAILED, "ResultNotReported")
    assert "artifacts are in storage" in unread.message and "logs" in unread.message


def test_other_failures_keep_their_reasons_and_quote_the_trainer() -> None:
    bad_input = decide(observed(training_job=failed_by_policy(2)))
    assert (bad_input.reason, bad_input.message) == ("TrainingFailed", f"PodFailurePolicy: {_message(2)}")
    assert decide(observed(training_job=failed_by_policy(34))).reason == "TrainingFailed", "34 is not 3"
    assert decide(observed(preflight_job=failed_by_policy(2))).reason == "PreflightFailed"

    exhausted = job(
        condition="Failed", reason="BackoffLimitExceeded", message="Job has reached the specified backoff limit"
    )
    crashed = decide(observed(training_job=exhausted, trainer_termination=(1, "StorageError: s3://models: timed out")))
    assert crashed.reason == "TrainingFailed"
    assert crashed.message == (
        "BackoffLimitExceeded: Job has reached the specified backoff limit; "
        "the trainer exited with code 1: StorageError: s3://models: timed out"
    )


def test_failure_reasons_name_the_reporting_failures() -> None:
    assert {"TrainerCannotReport", "ResultNotReported"} <= set(FAILURE_REASONS)


def test_the_exit_code_is_read_from_the_job_controllers_failed_condition() -> None:
    assert failed_exit_code(failed_by_policy(3)) == 3
    assert failed_exit_code(failed_by_policy(143)) == 143
    assert failed_exit_code(job(condition="Failed", reason="DeadlineExceeded", message="too slow")) is None
    assert failed_exit_code(job(ready=1)) is None and failed_exit_code(None) is None


def _message(exit_code: int) -> str:
    return str(failed_by_policy(exit_code)["status"]["conditions"][0]["message"])


# ---------------------------------------------------------------------------------------------- status integrity
PROMOTED = trainer_result()


def _without(result: dict[str, Any], key: str) -> dict[str, Any]:
    return {k: v for k, v in result.items() if k != key}


@pytest.mark.parametrize(
    ("result", "succeeded", "expected"),
    [
        (PROMOTED, True, ("True", "QualityGatePassed", PROMOTED["qualityGateMessage"])),
        (
            trainer_result(promoted=False),
            True,
            ("False", "QualityGateNotMet", "not promoted: accuracy 0.40 -> 0.90: missed"),
        ),
        ({"version": "v4"}, True, None),
        (PROMOTED, False, ("False", "PromotionNotVerified", "the operator did not see the training Job succeed")),
        (
            _without(PROMOTED, "manifestUri"),
            True,
            ("False", "PromotionNotVerified", "no published version and manifest URI"),
        ),
        (_without(PROMOTED, "gateChecks"), True, ("False", "PromotionNotVerified", "it lists no judged gate check")),
        (
            {**PROMOTED, "version": "v1 --claimed-gate {}"},
            True,
            ("False", "PromotionNotVerified", "is not a name kubetune gives"),
        ),
        (
            {**PROMOTED, "gateChecks": [{"name": "labelCollapse", "detail": "reported only"}]},
            True,
            ("False", "PromotionNotVerified", "it lists no judged gate check"),
        ),
        (
            {**PROMOTED, "gateChecks": [*PROMOTED["gateChecks"], {"name": "forgetting.likelihood", "passed": False}]},
            True,
            ("False", "PromotionNotVerified", "gate checks forgetting.likelihood did not pass"),
        ),
    ],
    ids=[
        "consistent",
        "not promoted",
        "no verdict",
        "job not seen",
        "unpublished",
        "no checks",
        "odd version",
        "none judged",
        "failed check",
    ],
)
def test_a_promotion_is_copied_only_when_the_result_is_consistent(
    result: dict[str, Any], succeeded: bool, expected: tuple[str, str, str] | None
) -> None:
    gate = quality_gate(result, job_succeeded=succeeded, verification=None)
    if expected is None or expected[1] != "PromotionNotVerified":
        assert gate == expected
    else:
        assert gate is not None and gate[:2] == expected[:2]
        assert gate[2].startswith("the trainer reported the model promoted, but ")
        assert expected[2] in gate[2]


def test_an_inconsistent_promotion_says_so_in_the_quality_gate_condition() -> None:
    claimed = {**PROMOTED, "gateChecks": [{"name": "task", "passed": False, "detail": "missed"}]}
    done = observed(training_job=job(condition="Complete"), trainer_status={"result": claimed})
    status = render_status(decide(done), done, {}, generation=1, now="T", job_name="x-train", preflight_job_name=None)
    gate = next(c for c in status["conditions"] if c["type"] == "QualityGatePassed")
    assert (gate["status"], gate["reason"]) == ("False", "PromotionNotVerified")
    assert "gate checks task did not pass" in gate["message"]
    lost = observed(training_job_lost=True, trainer_status={"result": PROMOTED})
    status = render_status(decide(lost), lost, {}, generation=1, now="T", job_name="x-train", preflight_job_name=None)
    gate = next(c for c in status["conditions"] if c["type"] == "QualityGatePassed")
    assert (gate["status"], gate["reason"]) == ("False", "PromotionNotVerified"), "never seen to succeed"


def test_phase_conditions_and_promoted_written_by_a_trainer_never_survive() -> None:
    """What the trainer may write is only read from its four keys; anything else in status is the
    operator's (derived again, replacing what is there) or nobody's (removed by a null)."""
    forged = {
        "phase": "Succeeded",
        "conditions": [{"type": "QualityGatePassed", "status": "True", "reason": "QualityGatePassed", "message": "!"}],
        "promoted": True,
        "verdict": {"promoted": True},
        "kopf": {"progress": {}},
        "progress": {"step": 5, "totalSteps": 9},
    }
    seen = observed(training_job=job(ready=1), trainer_status={"progress": forged["progress"]})
    verdict, patch = derive_status({"metadata": {"generation": 1}, "status": forged}, seen, "T")
    assert verdict.phase == Phase.RUNNING and patch["phase"] == "Running"
    assert {c["type"] for c in patch["conditions"]} == {"Validated", "Running", "Suspended", "Succeeded", "Failed"}
    assert patch["promoted"] is None and patch["verdict"] is None, "keys the status schema does not name are removed"
    assert "kopf" not in patch and "progress" not in patch, "kopf's and the trainer's own keys are left alone"


def test_a_terminal_phase_stands_only_when_no_child_job_still_runs() -> None:
    assert recorded_phase_stands([])
    assert recorded_phase_stands([job(condition="Complete"), job(condition="Failed")])
    assert not recorded_phase_stands([job(condition="Complete"), job(ready=1)])
    assert not recorded_phase_stands([job()])


def _verification(condition: str, message: str = "") -> dict[str, Any]:
    return {**job(condition=condition, message=message), "metadata": {"name": "x-verify"}}


def _gate(done: Observed) -> dict[str, Any]:
    status = render_status(decide(done), done, {}, generation=1, now="T", job_name="x-train", preflight_job_name=None)
    return next(c for c in status["conditions"] if c["type"] == "QualityGatePassed")


def test_a_consistent_promotion_waits_for_its_verification_and_takes_its_verdict() -> None:
    trained = {"training_job": job(condition="Complete"), "trainer_status": {"result": PROMOTED}}
    for waiting in (None, _verification("")):
        verdict = decide(observed(**trained, verification_job=waiting))
        assert (verdict.phase, verdict.reason) == (Phase.RUNNING, "VerifyingPromotion")
        assert PROMOTED["version"] in verdict.message
    verified = observed(**trained, verification_job=_verification("Complete"))
    assert decide(verified).phase == Phase.SUCCEEDED
    assert (_gate(verified)["status"], _gate(verified)["reason"]) == ("True", "QualityGatePassed")
    said = "PromotionNotVerified: s3://models/x/v: the manifest says promoted: false"
    mismatch = observed(
        **trained, verification_job=_verification("Failed", "exit code 1"), verification_termination=(1, said)
    )
    assert decide(mismatch).phase == Phase.SUCCEEDED, "trained and published; only the promotion is refused"
    gate = _gate(mismatch)
    assert (gate["status"], gate["reason"]) == ("False", "PromotionNotVerified")
    assert gate["message"].endswith(
        "the published manifest does not back it: s3://models/x/v: the manifest says promoted: false"
    )
    refused = observed(**trained, verification_refused="Job x-verify exists but does not run the check")
    assert decide(refused).phase == Phase.SUCCEEDED
    assert "its verification Job was refused: Job x-verify exists" in _gate(refused)["message"]
    # Nothing to verify when nothing is claimed: a missed gate is taken as reported, at once.
    missed = observed(training_job=job(condition="Complete"), trainer_status={"result": trainer_result(promoted=False)})
    assert decide(missed).phase == Phase.SUCCEEDED and _gate(missed)["reason"] == "QualityGateNotMet"


def test_a_running_verification_keeps_a_recorded_terminal_phase_from_standing() -> None:
    assert not recorded_phase_stands([job(condition="Complete"), _verification("")])
    assert recorded_phase_stands([job(condition="Complete"), _verification("Complete")])
