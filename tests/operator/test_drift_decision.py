"""A DriftMonitor's rules as pure functions: persistence counts windows against one version, a window
without drift starts the count again, cooldown and limits hold retraining back, a monitor without
retraining only reports, and the schedule counts from the last check."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from kubetune.api.driftmonitor import (
    Action,
    ChallengeReport,
    DriftCheckReport,
    DriftMonitorSpec,
    DriftMonitorStatus,
    MethodScore,
    RetrainingRecord,
    SplitComparison,
    Verdict,
)
from kubetune.operator.driftdecision import (
    CheckResult,
    Observed,
    challenge_outcome,
    compared,
    decide,
    followed,
    format_time,
    read_check,
    recorded,
    seconds_until_due,
)

NOW = datetime(2026, 12, 4, 12, 0, tzinfo=UTC)
TEMPLATE = {"dataset": {"sources": [{"uri": "s3://team-data/new/"}]}, "output": {"uri": "s3://team-models/t/"}}


def spec(**fields: Any) -> DriftMonitorSpec:
    return DriftMonitorSpec.model_validate(
        {
            "target": {"outputUri": "s3://team-models/t/", "channel": "prod"},
            "samples": {"uri": "s3://team-logs/t/"},
            "retraining": {"template": TEMPLATE, "maxJobs": 2, "periodHours": 24},
            "cooldownMinutes": 60,
            **fields,
        }
    )


def result(*, drifted: bool, version: str = "v1", size: int = 300, labelled: int | None = None) -> CheckResult:
    report = DriftCheckReport(
        version=version,
        sample_size=size,
        labelled=size if labelled is None else labelled,
        newest="s3://team-logs/t/0001.jsonl",
        training_sources=["s3://team-data/old/"],
        drifted=drifted,
        alpha=0.05,
        methods=[MethodScore(method="embeddings.mmd", statistic=0.1, p_value=0.001, adjusted_p_value=0.004)],
    )
    return CheckResult("m-check-1", format_time(NOW), report)


def status(consecutive: int = 0, champion: str = "v1", started: list[datetime] | None = None) -> DriftMonitorStatus:
    return DriftMonitorStatus(
        champion=champion,
        consecutive_drifted=consecutive,
        retrainings=[
            RetrainingRecord(job_name=f"m-retrain-{i}", start_time=format_time(t)) for i, t in enumerate(started or [])
        ],
    )


def test_persistence_counts_drifted_windows_against_one_version() -> None:
    assert decide(spec(), status(0), result(drifted=True), NOW).verdict == Verdict.DRIFTED
    confirmed = decide(spec(), status(1), result(drifted=True), NOW)
    assert (confirmed.verdict, confirmed.action, confirmed.consecutive) == (Verdict.CONFIRMED, Action.RETRAINING, 0)
    # A new champion: the drifted window before it counted against another model.
    assert decide(spec(), status(1, champion="v0"), result(drifted=True), NOW).verdict == Verdict.DRIFTED
    calm = decide(spec(), status(1), result(drifted=False), NOW)
    assert (calm.verdict, calm.consecutive) == (Verdict.NO_DRIFT, 0)


@pytest.mark.parametrize(
    ("started", "action"),
    [
        ([NOW - timedelta(minutes=59)], Action.COOLDOWN),
        ([NOW - timedelta(minutes=61)], Action.RETRAINING),
        ([NOW - timedelta(hours=23), NOW - timedelta(hours=2)], Action.LIMIT_REACHED),
        ([NOW - timedelta(hours=25), NOW - timedelta(hours=2)], Action.RETRAINING),
    ],
    ids=["in-cooldown", "after-cooldown", "limit-reached", "older-one-out-of-the-period"],
)
def test_cooldown_and_the_limit_hold_retraining_back(started: list[datetime], action: Action) -> None:
    assert decide(spec(), status(1, started=started), result(drifted=True), NOW).action == action


def test_without_retraining_confirmed_drift_is_only_reported_and_small_windows_decide_nothing() -> None:
    no_retraining = spec(retraining=None)
    decision = decide(no_retraining, status(1), result(drifted=True), NOW)
    assert (decision.verdict, decision.action) == (Verdict.CONFIRMED, Action.NOT_CONFIGURED)
    small = decide(spec(), status(1), result(drifted=True, size=50), NOW)
    assert (small.verdict, small.consecutive) == (Verdict.TOO_FEW_SAMPLES, 1)
    after = recorded(status(1), result(drifted=True, size=50), small, sequence=4, retraining=None, generation=1)
    assert after.newest_sample is None and after.checks == 4, "a small window is read again next time"


def test_a_template_that_learns_only_from_request_logs_retrains_only_when_requests_carry_labels() -> None:
    logs_only = {**TEMPLATE, "dataset": {"sources": [{"uri": "s3://team-logs/t/", "format": "request-log"}]}}
    from_logs = spec(retraining={"template": logs_only})
    unlabelled = decide(from_logs, status(1), result(drifted=True, labelled=0), NOW)
    assert (unlabelled.verdict, unlabelled.action) == (Verdict.CONFIRMED, Action.NO_LABELS)
    assert "none of the window's 300 requests" in unlabelled.message
    after = recorded(status(1), result(drifted=True, labelled=0), unlabelled, sequence=2, retraining=None, generation=1)
    drift = next(c for c in after.conditions or [] if c.type == "DriftDetected")
    assert (drift.status, drift.reason) == ("True", "NoLabelledData"), "reported, though nothing is started"
    assert decide(from_logs, status(1), result(drifted=True, labelled=12), NOW).action == Action.RETRAINING
    # A labelled dataset prefix in the template is labelled new data whatever the requests carry.
    assert decide(spec(), status(1), result(drifted=True, labelled=0), NOW).action == Action.RETRAINING


def test_the_schedule_counts_from_the_last_check() -> None:
    fresh = DriftMonitorStatus()
    assert seconds_until_due(spec(), fresh, NOW) == 0
    checked = DriftMonitorStatus(last_check_time="2026-12-04T11:30:00+00:00")  # as the API server may write it
    assert seconds_until_due(spec(), checked, NOW) == 30 * 60
    assert seconds_until_due(spec(schedule={"intervalMinutes": 15}), checked, NOW) == 0


def test_a_check_job_is_read_from_its_conditions_and_termination_message() -> None:
    running = {"metadata": {"name": "m-check-1"}, "status": {"active": 1}}
    assert read_check(running, None, NOW) is None
    complete = {
        "metadata": {"name": "m-check-1"},
        "status": {
            "conditions": [{"type": "Complete", "status": "True", "lastTransitionTime": "2026-12-04T11:59:00Z"}]
        },
    }
    report = result(drifted=True).report
    assert report is not None
    read = read_check(complete, (0, report.model_dump_json(by_alias=True)), NOW)
    assert read is not None and read.report == report and read.finished_at == "2026-12-04T11:59:00Z"
    garbled = read_check(complete, (0, "Traceback (most recent call last)"), NOW)
    assert garbled is not None and garbled.report is None and "without a readable report" in (garbled.failure or "")


def test_retraining_records_follow_their_finetunejobs() -> None:
    before = status(started=[NOW, NOW])
    after = followed(
        before, {"m-retrain-0": Observed("Succeeded", "v20261204-120000-0a1b2c"), "m-retrain-1": Observed("Running")}
    )
    assert [(r.outcome, r.version) for r in after.retrainings or []] == [
        ("Trained", "v20261204-120000-0a1b2c"),
        ("Running", None),
    ]
    # A success that published nothing has no challenger to compare.
    empty = followed(before, {"m-retrain-0": Observed("Succeeded", None)})
    assert (empty.retrainings or [])[0].outcome == "Failed"


def test_a_comparison_records_its_verdict_and_a_win_names_the_promoted_version() -> None:
    trained = status(started=[NOW]).model_copy()
    trained = trained.model_copy(
        update={
            "retrainings": [(trained.retrainings or [])[0].model_copy(update={"outcome": "Trained", "version": "v2"})]
        }
    )
    report = ChallengeReport(
        champion="v1",
        challenger="v2",
        metric="accuracy",
        new_data=SplitComparison(examples=40, champion=0.5, challenger=0.8, ci_low=0.1, ci_high=0.4, passed=True),
        old_data=SplitComparison(examples=30, champion=0.9, challenger=0.9, passed=True),
        promoted=True,
        message="better on the new data",
    )
    won = compared(trained, 0, report, "")
    assert (won.retrainings or [])[0].outcome == "Promoted" and won.promoted_version == "v2"
    failed = compared(trained, 0, None, "compare Job m-compare-1 failed (BackoffLimitExceeded)")
    assert (failed.retrainings or [])[0].outcome == "NotPromoted" and failed.promoted_version is None
    assert "BackoffLimitExceeded" in (failed.retrainings or [])[0].message
    # The challenger's own status says the same, from the same report.
    mine = challenge_outcome("m", spec(), report, "", NOW)
    assert (mine.monitor, mine.channel, mine.champion, mine.promoted) == ("m", "prod", "v1", True)
    lost = challenge_outcome("m", spec(), None, "compare Job m-compare-1 failed (BackoffLimitExceeded)", NOW)
    assert not lost.promoted and lost.champion == "" and "BackoffLimitExceeded" in lost.message
