"""Unit tests of status derivation: observed children -> phase and conditions."""

from __future__ import annotations

from typing import Any

from kubetune.api.v1alpha1 import Phase
from kubetune.operator.status import Observed, decide, derive_status, render_status


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
