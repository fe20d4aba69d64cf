"""``kubetune challenge``: is a retrained challenger better than the version a channel serves?

Both models answer the same prompts: the challenger's test split, as its evaluation published it
(``reports/predictions.jsonl``: each row's whole prompt, reference and source row). Rows read from the
champion's training sources are the old data: the champion's own test rows, which the shared seeded
hash split kept out of the challenger's training (``operator/kubetune/operator/driftjobs.py``). The
other rows are the new data.

The challenger wins when, on the task's primary metric (per example: accuracy, exact match or
ROUGE-L), the paired-bootstrap 95% interval of challenger - champion on the new data lies above 0,
it loses at most ``tolerance`` on the old data, and at most ``tolerance`` of the known answers on the
general prompts (each version's own forgetting measurement, against the same base model's answers).
Only then does the channel move to the challenger; the champion stays published and one
``kubetune rollback`` away.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kubetune.api.contract import EXIT_CONFIG, EXIT_OK
from kubetune.api.driftmonitor import ChallengeReport, PromotionSpec, SplitComparison
from kubetune.api.v1alpha1 import Metric, S3Spec
from kubetune_trainer import channels
from kubetune_trainer.data.types import Example, Message
from kubetune_trainer.environment import TrainerEnvironment
from kubetune_trainer.errors import ConfigurationError
from kubetune_trainer.evaluation import metrics as m
from kubetune_trainer.output import add_output_option, emit, wants_document
from kubetune_trainer.storage import ObjectStore, StorageError, join_uri
from kubetune_trainer.termination import write_termination_message

PREDICTIONS = "reports/predictions.jsonl"
PER_EXAMPLE = {Metric.ACCURACY: m.label_match, Metric.EXACT_MATCH: m.exact_match, Metric.ROUGE_L: m.rouge_l}
FLOAT_SLACK = 1e-9  # a loss of exactly the tolerance is within it


@dataclass(frozen=True)
class TestRow:
    example: Example
    reference: str
    source_file: str


def test_rows(predictions: Sequence[dict[str, Any]]) -> list[TestRow]:
    """The test split as the evaluation published it; a row without its whole prompt cannot be asked
    again (a version published before kubetune recorded it)."""
    rows = []
    for number, row in enumerate(predictions, start=1):
        messages = row.get("messages")
        if not isinstance(messages, list) or not messages:
            raise ConfigurationError(
                f"{PREDICTIONS} row {number}: no 'messages' (published before kubetune recorded whole prompts)"
            )
        example = Example(messages=tuple(Message(role=str(x["role"]), content=str(x["content"])) for x in messages))
        source = str(row.get("source", ""))
        rows.append(TestRow(example, str(row.get("reference", "")), source.rpartition(":")[0] or source))
    return rows


def from_sources(source_file: str, sources: Sequence[str]) -> bool:
    """Whether a row's file is one of ``sources`` (a file, or a prefix ending in '/')."""
    return any(source_file == s or (s.endswith("/") and source_file.startswith(s)) for s in sources)


def compare_split(
    champion: Sequence[float], challenger: Sequence[float], *, tolerance: float, must_win: bool, seed: int = 0
) -> SplitComparison:
    """Per-example scores of both models on the same rows: a win (interval above 0) or a loss of at
    most ``tolerance``. No rows decide nothing, so they pass neither test."""
    if len(champion) != len(challenger):
        raise ValueError(f"{len(champion)} champion scores against {len(challenger)} challenger scores")
    count = len(champion)
    if count == 0:
        return SplitComparison(examples=0, champion=0.0, challenger=0.0, passed=False)
    ours, theirs = m.mean(champion), m.mean(challenger)
    interval = m.paired_bootstrap(count, lambda idx: m.mean([challenger[i] - champion[i] for i in idx]), seed=seed)
    passed = interval.low > 0 if must_win else theirs >= ours - tolerance - FLOAT_SLACK
    return SplitComparison(
        examples=count,
        champion=round(ours, 6),
        challenger=round(theirs, 6),
        ci_low=round(interval.low, 6),
        ci_high=round(interval.high, 6),
        passed=passed,
    )


def compare_general(champion: dict[str, Any], challenger: dict[str, Any], tolerance: float) -> SplitComparison | None:
    """Known answers on the general prompts, from each version's own forgetting measurement; None when
    either did not measure it (forgetting opted out)."""

    def known(manifest: dict[str, Any]) -> dict[str, Any] | None:
        found = ((manifest.get("evaluation") or {}).get("forgetting") or {}).get("knownAnswers")
        return found if isinstance(found, dict) else None

    ours, theirs = known(champion), known(challenger)
    if ours is None or theirs is None:
        return None
    before, after = float(ours["tuned"]), float(theirs["tuned"])
    return SplitComparison(
        examples=int(theirs.get("examples", 0)),
        champion=round(before, 6),
        challenger=round(after, 6),
        passed=after >= before - tolerance - FLOAT_SLACK,
    )


def verdict(new: SplitComparison, old: SplitComparison, general: SplitComparison | None) -> tuple[bool, str]:
    if new.examples == 0:
        return False, "no new-data rows in the challenger's test split: nothing to win on"
    if not new.passed:
        return False, f"no win on the new data (challenger - champion 95% interval [{new.ci_low}, {new.ci_high}])"
    if old.examples == 0:
        return False, "none of the champion's test rows in the challenger's test split (was dataset.split changed?)"
    if not old.passed:
        return False, f"worse on the champion's test rows beyond the tolerance ({old.champion} -> {old.challenger})"
    if general is None:
        return False, "forgetting not measured by both versions: the general prompts cannot be compared"
    if not general.passed:
        return (
            False,
            f"known answers on general prompts fell beyond the tolerance ({general.champion} -> {general.challenger})",
        )
    return True, (
        f"better on the new data ({new.champion} -> {new.challenger}, 95% interval [{new.ci_low}, {new.ci_high}]), "
        f"within the tolerance on the old data ({old.champion} -> {old.challenger}) and the general prompts"
    )


def _answers(
    store: ObjectStore, version_uri: str, rows: Sequence[TestRow], scratch: Path, max_new_tokens: int
) -> list[str]:
    from kubetune_trainer.evaluation.scoring import generate
    from kubetune_trainer.models.loading import resolve_model_dir
    from kubetune_trainer.models.versions import load_version
    from kubetune_trainer.publish import read_manifest
    from kubetune_trainer.training.model import load_tokenizer

    manifest = read_manifest(version_uri, store)
    base_dir = resolve_model_dir(str(manifest["baseModel"]["uri"]), store)
    _, tuned = load_version(store, manifest, version_uri, base_dir, scratch)
    if tuned is None:
        raise ConfigurationError(f"{version_uri}: its tuned model cannot be rebuilt on this machine (QLoRA needs CUDA)")
    return generate(tuned, load_tokenizer(base_dir), [r.example for r in rows], max_new_tokens=max_new_tokens)


def challenge(
    store: ObjectStore, output_uri: str, channel: str, challenger_uri: str, *, tolerance: float, scratch: Path
) -> ChallengeReport:
    from kubetune_trainer.publish import read_manifest

    entry = channels.current(store, output_uri, channel)
    if entry is None:
        raise ConfigurationError(f"{channels.channel_uri(output_uri, channel)}: the channel names no champion")
    challenger_uri = challenger_uri.rstrip("/")
    champion_manifest = read_manifest(entry.version_uri, store)
    challenger_manifest = read_manifest(challenger_uri, store)
    evaluation = challenger_manifest.get("evaluation") or {}
    metric = Metric(evaluation.get("primaryMetric", ""))
    max_new_tokens = evaluation.get("maxNewTokens")
    if not isinstance(max_new_tokens, int) or max_new_tokens < 1:
        raise ConfigurationError(
            f"{challenger_uri}: no evaluation.maxNewTokens (published before kubetune recorded it)"
        )
    if metric not in PER_EXAMPLE:
        raise ConfigurationError(f"{challenger_uri}: primary metric {metric} is not scored per example")
    lines = store.read_bytes(join_uri(challenger_uri, PREDICTIONS)).decode().splitlines()
    rows = test_rows([json.loads(line) for line in lines if line.strip()])
    old_sources = [str(s) for s in (champion_manifest.get("dataset") or {}).get("sources") or []]
    # Both models decode as the challenger's own evaluation did.
    champion_answers = _answers(store, entry.version_uri, rows, scratch / "champion", max_new_tokens)
    challenger_answers = _answers(store, challenger_uri, rows, scratch / "challenger", max_new_tokens)
    score = PER_EXAMPLE[metric]
    scored = [
        (from_sources(r.source_file, old_sources), score(a, r.reference), score(b, r.reference))
        for r, a, b in zip(rows, champion_answers, challenger_answers, strict=True)
    ]
    new = compare_split(
        [a for old, a, _ in scored if not old],
        [b for old, _, b in scored if not old],
        tolerance=tolerance,
        must_win=True,
    )
    old = compare_split(
        [a for is_old, a, _ in scored if is_old],
        [b for is_old, _, b in scored if is_old],
        tolerance=tolerance,
        must_win=False,
    )
    general = compare_general(champion_manifest, challenger_manifest, tolerance)
    won, why = verdict(new, old, general)
    if won and challenger_manifest.get("promoted") is not True:
        won, why = False, "the challenger's own quality gate did not pass (its reports/evaluation.md says why)"
    return ChallengeReport(
        champion=entry.version,
        challenger=challenger_uri.rpartition("/")[2],
        metric=str(metric),
        new_data=new,
        old_data=old,
        general=general,
        promoted=won,
        message=why,
    )


def add_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    cmd = sub.add_parser("challenge", help="compare a challenger with a channel's champion; promote it if it wins")
    cmd.add_argument("challenger", metavar="VERSION_URI", help="the retrained version")
    cmd.add_argument("--channel", required=True, help="the channel whose current version is the champion")
    cmd.add_argument(
        "--tolerance",
        type=float,
        default=PromotionSpec.model_fields["tolerance"].default,
        help="largest loss on the old data and general prompts (default: a DriftMonitor's promotion.tolerance)",
    )
    cmd.add_argument("--promote", action="store_true", help="move the channel to the challenger when it wins")
    cmd.add_argument("--endpoint", default=None, help="S3 endpoint URL (default: AWS_ENDPOINT_URL_S3, else AWS)")
    cmd.add_argument("--region", default=None, help="S3 region (default: AWS_REGION, else us-east-1)")
    cmd.add_argument("--report", type=Path, default=None, metavar="PATH", help="write the ChallengeReport here")
    add_output_option(cmd)
    cmd.set_defaults(handler=challenge_command)


def challenge_command(args: argparse.Namespace) -> int:
    if not 0 <= args.tolerance <= 1:
        print("cannot compare: --tolerance in [0, 1]", file=sys.stderr)
        return EXIT_CONFIG
    try:
        store = ObjectStore.for_command(
            S3Spec(endpoint=args.endpoint, region=args.region), TrainerEnvironment.from_env()
        )
        output_uri, _ = channels.split_version_uri(args.challenger)
        with tempfile.TemporaryDirectory(prefix="kubetune-challenge-") as scratch:
            report = challenge(
                store, output_uri, args.channel, args.challenger, tolerance=args.tolerance, scratch=Path(scratch)
            )
        if report.promoted and args.promote:
            channels.promote(
                store, args.challenger, args.channel, reason=f"won against {report.champion}: {report.message}"
            )
    except (StorageError, ConfigurationError, ValueError, KeyError) as err:
        print(f"cannot compare: {err}", file=sys.stderr)
        if args.report is not None:
            write_termination_message(f"cannot compare: {err}", args.report)
        return EXIT_CONFIG
    text = json.dumps(report.to_manifest(), separators=(",", ":"))
    if args.report is not None:
        write_termination_message(text, args.report)
    moved = report.promoted and args.promote
    if wants_document(args):
        emit({**report.to_manifest(), "channelMoved": moved}, args.output)
        return EXIT_OK
    print(
        f"{report.challenger} vs {report.champion}: {'wins' if report.promoted else 'does not win'}"
        f"{' (channel moved)' if moved else ''}: {report.message}"
    )
    return EXIT_OK
