"""The trainer's stages in order: model → data → plan → replay → train → strength → evaluate → profile → export → publish.

``Mode.PREFLIGHT`` stops after the plan (the CPU-only pre-flight Job), ``Mode.TRAIN`` is the
GPU Job, ``Mode.LOCAL`` is ``kubetune run``. Every stage is timed and announced to the
reporters; errors become exit codes the operator's pod failure policy understands
(``kubetune.api.contract``), and every non-zero exit leaves a one-line termination message saying
why, which ``kubectl describe pod`` and the operator show.
"""

from __future__ import annotations

import json
import logging
import shutil
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from kubetune.api.contract import (
    EXIT_CANNOT_REPORT,
    EXIT_CONFIG,
    EXIT_OK,
    EXIT_RESULT_NOT_REPORTED,
    EXIT_RETRYABLE,
)
from kubetune.api.v1alpha1 import (
    ArtifactStatus,
    FineTuneJob,
    GateCheck,
    PreflightReport,
    ResolvedTraining,
    TrainerResult,
)
from kubetune_trainer.context import Mode, Reproduction, RunContext
from kubetune_trainer.environment import TrainerEnvironment
from kubetune_trainer.errors import CannotReport, ConfigurationError, ResultNotReported
from kubetune_trainer.stages import StageClock
from kubetune_trainer.storage import ObjectStore, StorageError
from kubetune_trainer.termination import write_termination_message

if TYPE_CHECKING:
    from kubetune_trainer.reporting import Reporter

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Exit:
    """How the run ends: the process exit code and, for a failure, the termination message."""

    code: int
    message: str = ""  # "<Reason>: <detail>", one line; empty on success


def run_pipeline(
    job: FineTuneJob,
    *,
    mode: Mode,
    workdir: Path,
    max_steps: int | None,
    environment: TrainerEnvironment,
    reproducing: Reproduction | None = None,
    also_report_to: Sequence[Reporter] = (),
) -> int:
    """Run the job; returns the process exit code (see ``kubetune.api.contract``). ``also_report_to``:
    reporters besides the environment's (``kubetune run -o json`` keeps the published result)."""
    from kubetune_trainer.reporting import Reporters, build_reporters

    # Outputs of an earlier run in the same scratch must never be published with this one.
    for stale in ("artifacts", "merged", "training"):
        shutil.rmtree(workdir / stale, ignore_errors=True)
    workdir.mkdir(parents=True, exist_ok=True)
    chosen = build_reporters(job, console=sys.stderr.isatty(), environment=environment)
    # First: the environment's Kubernetes reporter stays last (its result may raise; the others have it).
    reporters = Reporters([*also_report_to, *chosen.reporters])
    ctx = RunContext(
        job=job,
        mode=mode,
        workdir=workdir,
        store=ObjectStore.from_environment(job.spec.s3, environment),
        clock=StageClock(reporters),
        reporters=reporters,
        environment=environment,
        max_steps=max_steps,
        reproducing=reproducing,
    )
    try:
        end = _run_and_explain(ctx)
    except BaseException as err:  # unexpected: Python exits 1 (retryable) and prints the traceback
        write_termination_message(f"{type(err).__name__}: {err}", environment.termination_log)
        reporters.close(EXIT_RETRYABLE)
        raise
    write_termination_message(
        end.message, environment.termination_log
    )  # before close(), which may wait minutes for the API
    reporters.close(end.code)
    return end.code


def _run_and_explain(ctx: RunContext) -> Exit:
    """Run the stages; the errors a retry may or may not fix become exit codes with a reason."""
    try:
        return _run_stages(ctx)
    except CannotReport as err:
        print(f"error: cannot write the FineTuneJob status: {err}", file=sys.stderr)
        return Exit(EXIT_CANNOT_REPORT, f"TrainerCannotReport: {err}")
    except ConfigurationError as err:
        log.error("%s", err)
        print(f"error: {err}", file=sys.stderr)
        if "plan" not in ctx.clock.durations:
            # Model, data or plan failed: that is the pre-flight failing; say why in status.
            ctx.reporters.preflight(PreflightReport(passed=False, message=str(err)[:4000]))
        return Exit(EXIT_CONFIG, f"ConfigurationError: {err}")
    except StorageError as err:
        log.error("storage: %s", err)
        print(f"error: {err}", file=sys.stderr)
        return Exit(EXIT_RETRYABLE, f"StorageError: {err}")


def _run_stages(ctx: RunContext) -> Exit:
    # Imported when a run starts, not with the CLI: the stages pull in torch and transformers, which
    # `kubetune validate` never needs. (Not a hidden cycle: the stages never import the pipeline.)
    from kubetune_trainer import steps
    from kubetune_trainer.evaluation.sharing import shared_between_ranks

    with ctx.clock.stage("model"):
        model = steps.prepare_base_model(ctx)
    if ctx.reproducing:
        ctx.reproducing.check("base model", ctx.reproducing.base_model_sha256, model.sha256)
    with ctx.clock.stage("data"):
        data = steps.prepare_data(ctx, model)
    if ctx.reproducing:
        ctx.reproducing.check("training data", ctx.reproducing.data_sha256, data.content_sha256)
    with ctx.clock.stage("plan"):
        resolved, preflight = steps.plan(ctx, model, data)
    ctx.reporters.resolved(resolved)
    ctx.reporters.preflight(preflight)
    if not preflight.passed:
        print(f"error: pre-flight failed: {preflight.message}", file=sys.stderr)
        return Exit(EXIT_CONFIG, f"PreflightFailed: {preflight.message}")
    if ctx.mode == Mode.PREFLIGHT:
        _print_timings(ctx)
        return Exit(EXIT_OK)

    if resolved.replay.enabled:
        with ctx.clock.stage("replay"):
            steps.mix_in_replay(ctx, model, data, resolved)
    with ctx.clock.stage("train"):
        outcome = steps.train(ctx, model, data, resolved)
    if outcome.preempted:
        return Exit(outcome.exit_code, "Preempted: stopped on SIGTERM after a checkpoint; the next pod resumes from it")
    # Every rank holds the trained model and takes a share of the evaluation's batches; rank 0 alone
    # profiles, exports and publishes.
    with shared_between_ranks(ctx.environment.rank, ctx.environment.world_size):
        with ctx.clock.stage("strength"):
            steps.choose_adapter_strength(ctx, model, data, resolved, outcome)
        with ctx.clock.stage("evaluate"):
            evaluation, subject = steps.evaluate(ctx, model, data, resolved, outcome)
    if not ctx.is_main_process:
        return Exit(EXIT_OK)
    with ctx.clock.stage("profile"):
        steps.reference_profile(ctx, model, data, resolved, subject)
    with ctx.clock.stage("export"):
        steps.export(ctx, model, resolved, outcome)
    with ctx.clock.stage("fisher"):
        steps.publish_fisher(ctx, model, data, resolved, outcome)
    with ctx.clock.stage("publish"):
        published = steps.publish(ctx, model, data, resolved, outcome, evaluation)
    pushed = None
    if ctx.spec.output.oci is not None:
        with ctx.clock.stage("push"):
            pushed = steps.push_to_registry(ctx, published)
    result = TrainerResult(
        version=published.version,
        manifest_uri=published.manifest_uri,
        promoted=evaluation.gate.passed,
        quality_gate_message=evaluation.gate.message,
        # Every check, so the operator can see the verdict follows from them (it re-checks before promoting).
        gate_checks=[GateCheck(name=c.name, passed=c.passed, detail=c.detail) for c in evaluation.gate.checks],
        metrics=evaluation.summary_metrics(),
        privacy=outcome.privacy,
        artifacts=[
            ArtifactStatus(name=a.name, uri=a.uri, sha256=a.sha256, size_bytes=a.size_bytes)
            for a in published.artifacts
        ],
        oci=pushed,
    )
    end = _report_result(ctx, result)
    if outcome.privacy is not None and end.code == EXIT_OK:
        # Only once the result is reported: a pod that fails before then is retried, and its
        # replacement must resume this run's chain, not draw a second one (docs/privacy.md).
        steps.discard_private_checkpoints(ctx.store, ctx.checkpoint_uri)
    from kubetune_trainer.summary import print_summary

    print_summary(ctx.name, evaluation, published, outcome)
    if ctx.mode == Mode.LOCAL and ctx.spec.output.channel and evaluation.gate.passed and end.code == EXIT_OK:
        # In a cluster the operator's verification Job moves the channel, once it has checked the
        # published version against this run's report; on a laptop the run itself does.
        _promote_to_channel(ctx, published.version_uri, ctx.spec.output.channel)
    _print_timings(ctx)
    return end


def _promote_to_channel(ctx: RunContext, version_uri: str, channel: str) -> None:
    from kubetune_trainer.channels import describe, promote

    entry = promote(ctx.store, version_uri, channel, reason=f"kubetune run: {ctx.name} passed its quality gate")
    print(f"channel {channel}: {describe(entry)}", file=sys.stderr)


def _report_result(ctx: RunContext, result: TrainerResult) -> Exit:
    try:
        ctx.reporters.result(result)
    except ResultNotReported as err:
        # The artifacts are in storage and stay there; only the FineTuneJob does not know. Failing
        # (instead of exiting 0) keeps the job from passing as done with no result to show.
        message = (
            f"ResultNotReported: {result.version} published at {result.manifest_uri}, "
            f"but the FineTuneJob status could not be written: {err}"
        )
        print(f"error: {message}", file=sys.stderr)
        return Exit(EXIT_RESULT_NOT_REPORTED, message)
    return Exit(EXIT_OK)


def _print_timings(ctx: RunContext) -> None:
    lines = [f"  {name:<10} {seconds:8.1f} s" for name, seconds in ctx.clock.durations.items()]
    print("stage times:\n" + "\n".join(lines) + f"\n  {'total':<10} {ctx.clock.total:8.1f} s", file=sys.stderr)
    (ctx.workdir / "stage_times.json").write_text(json.dumps(ctx.clock.durations, indent=2))


__all__ = [
    "Exit",
    "Mode",
    "PreflightReport",
    "ResolvedTraining",
    "RunContext",
    "run_pipeline",
]
