"""``kubetune drift check --reference VERSION_URI --samples URI``: is a window of production requests
still what a published version was trained on? The same check a DriftMonitor's Job runs.

``--reference OUTPUT_URI --channel NAME`` checks the version the channel serves now. ``--report PATH``
writes the decision as a :class:`~kubetune.api.driftmonitor.DriftCheckReport` (a check Job writes it
to its termination message, where the operator reads it); the exit code is then 0 for any decision
made, since a drifted window is a result, not a failure of the pod.

It reads the version's reference profile (``reports/drift-profile/``) and manifest, loads the base
model the profile was made with (its SHA-256 must match: another base model's embeddings mean
something else) and the version's adapter for the losses, measures the window the same way, and runs
the detectors. Exit 0: no drift; 1: drift; 2: the check could not be made (the message says why).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

from kubetune.api.contract import EXIT_CONFIG, EXIT_OK, TERMINATION_MESSAGE_LIMIT
from kubetune.api.driftmonitor import DriftCheckReport, DriftMethod, MethodScore
from kubetune.api.manifest import ManifestError
from kubetune.api.v1alpha1 import S3Spec
from kubetune_trainer import channels
from kubetune_trainer.drift.detectors import DEFAULT_ALPHA, DEFAULT_PERMUTATIONS, Decision, Sample, check
from kubetune_trainer.drift.profile import MAX_ROWS, ReferenceProfile, embed, prompt_losses, prompt_text, token_lengths
from kubetune_trainer.drift.window import Window, read_window
from kubetune_trainer.environment import TrainerEnvironment
from kubetune_trainer.errors import ConfigurationError
from kubetune_trainer.models.versions import load_version
from kubetune_trainer.output import add_output_option, emit, wants_document
from kubetune_trainer.storage import ObjectStore, StorageError, join_uri
from kubetune_trainer.termination import write_termination_message

EXIT_DRIFT = 1


def add_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    drift = sub.add_parser("drift", help="drift checks of production requests against a published version")
    verbs = drift.add_subparsers(dest="drift_command", required=True)
    checking = verbs.add_parser("check", help="compare a window of request logs with a version's reference profile")
    checking.add_argument(
        "--reference", required=True, metavar="URI", help="the published version (with --channel: its output prefix)"
    )
    checking.add_argument("--channel", default=None, help="check the version this channel of --reference serves")
    checking.add_argument("--samples", required=True, metavar="URI", help="a request-log file or a prefix of them")
    checking.add_argument("--endpoint", default=None, help="S3 endpoint URL (default: AWS_ENDPOINT_URL_S3, else AWS)")
    checking.add_argument("--region", default=None, help="S3 region (default: AWS_REGION, else us-east-1)")
    checking.add_argument("--alpha", type=float, default=DEFAULT_ALPHA, help="the decision's significance level")
    checking.add_argument("--permutations", type=int, default=DEFAULT_PERMUTATIONS)
    checking.add_argument("--window", type=int, default=MAX_ROWS, help="at most this many of the newest requests")
    checking.add_argument("--seed", type=int, default=0)
    checking.add_argument(
        "--methods",
        default=",".join(DriftMethod),
        help=f"comma-separated tests to run (default: all of {', '.join(DriftMethod)})",
    )
    checking.add_argument("--after", default=None, metavar="URI", help="read only request-log files after this one")
    add_output_option(checking, json_flag=True)
    checking.add_argument(
        "--report", type=Path, default=None, metavar="PATH", help="write the DriftCheckReport here; exit 0 if made"
    )
    checking.set_defaults(handler=check_command)


def check_command(args: argparse.Namespace) -> int:
    methods = {m.strip() for m in args.methods.split(",") if m.strip()}
    if not 0 < args.alpha < 1 or args.permutations < 19 or args.window < 2 or not methods <= set(DriftMethod):
        print(
            "cannot check: --alpha in (0, 1), --permutations at least 19, --window at least 2, "
            f"--methods among {', '.join(DriftMethod)}",
            file=sys.stderr,
        )
        return EXIT_CONFIG
    args.methods = methods
    try:
        store = ObjectStore.for_command(
            S3Spec(endpoint=args.endpoint, region=args.region), TrainerEnvironment.from_env()
        )
        version_uri = _version_uri(store, args.reference, args.channel)
        with tempfile.TemporaryDirectory(prefix="kubetune-drift-") as scratch:
            decision, window, sources = run_check(store, version_uri, args, Path(scratch))
        report = to_report(decision, window, version_uri.rstrip("/").rpartition("/")[2], sources)
    except (StorageError, ConfigurationError, ManifestError, ValueError) as err:
        print(f"cannot check: {err}", file=sys.stderr)
        if args.report is not None:
            write_termination_message(f"cannot check: {err}", args.report)
        return EXIT_CONFIG
    if args.report is not None:
        write_termination_message(_compact(report), args.report)
    if wants_document(args):
        emit(to_json(decision, window), args.output)
    else:
        print(
            f"{len(window.examples)} requests ({window.labelled} labelled, {window.skipped} skipped): {decision.explain()}"
        )
    if args.report is not None:
        return EXIT_OK
    return EXIT_DRIFT if decision.drifted else EXIT_OK


def _version_uri(store: ObjectStore, reference: str, channel: str | None) -> str:
    if channel is None:
        return reference.rstrip("/")
    entry = channels.current(store, reference, channel)
    if entry is None:
        raise ConfigurationError(f"{channels.channel_uri(reference, channel)}: the channel names no version yet")
    return entry.version_uri


def run_check(
    store: ObjectStore, version_uri: str, args: argparse.Namespace, scratch: Path
) -> tuple[Decision, Window, list[str]]:
    """The decision on the window, the window, and the version's training data sources (its lineage)."""
    from kubetune_trainer.evaluation.metrics import as_label
    from kubetune_trainer.models.loading import model_checksum, resolve_model_dir
    from kubetune_trainer.publish import read_manifest
    from kubetune_trainer.training.model import load_tokenizer

    manifest = read_manifest(version_uri, store)
    folder = manifest.get("driftProfile")
    if not folder:
        raise ConfigurationError(f"{version_uri}: published without a drift reference profile (before kubetune 0.2)")
    profile = ReferenceProfile.load(store.download_tree(join_uri(version_uri, folder), scratch / "profile"))
    base_dir = resolve_model_dir(str(manifest["baseModel"]["uri"]), store)
    if profile.base_model_sha256 and model_checksum(base_dir) != profile.base_model_sha256:
        raise ConfigurationError(f"{manifest['baseModel']['uri']}: not the base model the profile was made with")
    window = read_window(store, args.samples, limit=args.window, after=args.after)
    texts = [prompt_text(e) for e in window.examples]
    tokenizer = load_tokenizer(base_dir)
    base, tuned = load_version(store, manifest, version_uri, base_dir, scratch)
    confirmed = [as_label(e.reference()) for e in window.examples if e.reference()] if profile.labels else None
    chosen = args.methods
    measured = Sample(
        embeddings=embed(base, tokenizer, texts) if DriftMethod.EMBEDDINGS in chosen else None,
        lengths=[float(n) for n in token_lengths(tokenizer, texts)] if DriftMethod.LENGTHS in chosen else None,
        labels=confirmed if confirmed and window.labelled and DriftMethod.LABELS in chosen else None,
        losses=(
            prompt_losses(tuned, tokenizer, texts)
            if tuned is not None and profile.losses and DriftMethod.LOSS in chosen
            else None
        ),
    )
    decision = check(profile.as_sample(), measured, alpha=args.alpha, permutations=args.permutations, seed=args.seed)
    return decision, window, [str(uri) for uri in manifest.get("dataset", {}).get("sources") or []]


def to_report(decision: Decision, window: Window, version: str, sources: list[str]) -> DriftCheckReport:
    """The report, within a termination message: the explanation is shortened first; sources that would
    not fit are refused rather than cut (a partial replay would be a silent change of the data)."""
    report = DriftCheckReport(
        version=version,
        sample_size=len(window.examples),
        labelled=window.labelled,
        newest=window.files[-1],
        training_sources=sources,
        drifted=decision.drifted,
        alpha=decision.alpha,
        methods=[
            MethodScore(
                method=r.method,
                statistic=round(r.statistic, 6),
                p_value=round(r.p_value, 6),
                adjusted_p_value=round(decision.adjusted[r.method], 6),
            )
            for r in decision.results
        ],
        message=decision.explain(),
    )
    for limit in (1024, 256, 0):
        report = report.model_copy(update={"message": decision.explain()[:limit]})
        if len(_compact(report).encode()) <= TERMINATION_MESSAGE_LIMIT:
            return report
    raise ConfigurationError(
        f"the version's {len(sources)} training sources do not fit a {TERMINATION_MESSAGE_LIMIT}-byte report"
    )


def _compact(report: DriftCheckReport) -> str:
    return json.dumps(report.to_manifest(), separators=(",", ":"))


def to_json(decision: Decision, window: Window) -> dict[str, Any]:
    return {
        "drifted": decision.drifted,
        "alpha": decision.alpha,
        "requests": len(window.examples),
        "labelled": window.labelled,
        "skipped": window.skipped,
        "methods": [
            {
                "method": r.method,
                "statistic": r.statistic,
                "pValue": r.p_value,
                "adjustedPValue": decision.adjusted[r.method],
                "referenceSize": r.reference_size,
                "windowSize": r.window_size,
            }
            for r in decision.results
        ],
        "explanation": decision.explain(),
    }
