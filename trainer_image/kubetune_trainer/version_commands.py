"""The commands that work on published versions rather than on a run: ``verify``, ``promote``,
``rollback``, ``channel``, ``fetch``, ``serving`` and ``versions``.

Each names its place in storage one of two ways. A person gives a URI (and ``--endpoint``/``--region``
for S3; credentials from the usual AWS sources). A pod gives ``--job /etc/kubetune/job.yaml``: the
output prefix and S3 settings come from the mounted FineTuneJob and the credentials from the files the
operator mounted, exactly as for training; the operator's verification Job runs
``kubetune verify --job ... --version V --claimed-gate JSON [--promote-to CHANNEL]``.

Exit codes: 0 done; 1 (EXIT_DAMAGED) the version differs from its manifest or from what was reported;
2 (EXIT_CONFIG) the request cannot be done as asked (a bad argument, nothing published there, a
version its gate did not promote, storage refusing). Messages name the URI and never carry a
traceback; in a pod, the first line of a failure is also the termination message.

``-o json|yaml`` (kubetune_trainer.output) prints each command's result as one document; docs/cli.md
lists their fields.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from kubetune.api.contract import EXIT_CONFIG, EXIT_DAMAGED, EXIT_OK, VERSION_PATTERN
from kubetune.api.manifest import ManifestError, load_manifest
from kubetune.api.v1alpha1 import FineTuneJob, S3Spec
from kubetune_trainer.channels import ChannelEntry
from kubetune_trainer.environment import TrainerEnvironment
from kubetune_trainer.errors import ConfigurationError
from kubetune_trainer.output import add_output_option, emit, wants_document
from kubetune_trainer.serving import SERVERS
from kubetune_trainer.storage import ObjectStore, StorageError, join_uri

FAILURES = (StorageError, ConfigurationError, ManifestError)
# The folders a published version may hold (kubetune_trainer.steps.export): merged for vLLM or KServe,
# gguf for llama.cpp and Ollama, adapter for a server that loads LoRA adapters.
ARTIFACT_FOLDERS = ("adapter", "merged", "bnb-4bit", "gguf")


@dataclass(frozen=True)
class Place:
    """Where a command works: the store and, in a pod, the FineTuneJob it was given."""

    store: ObjectStore
    job: FineTuneJob | None


def add_parsers(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    verify = sub.add_parser("verify", help="re-check a published version's artifacts against its manifest")
    verify.add_argument("version_uri", nargs="?", help="the version's URI, e.g. s3://bucket/out/job/v20261204-...")
    _place_arguments(verify)
    verify.add_argument("--version", default=None, help="with --job: the version's name (v<date>-<time>-<hex>)")
    verify.add_argument(
        "--claimed-gate",
        default=None,
        metavar="JSON",
        help="with --job: the gate checks reported ({name: passed}); the manifest must say promoted with exactly these",
    )
    verify.add_argument("--promote-to", default=None, metavar="CHANNEL", help="with --claimed-gate: then promote")
    add_output_option(verify)
    verify.set_defaults(handler=verify_command)

    promote = sub.add_parser("promote", help="point a promotion channel at a published version")
    promote.add_argument("version_uri", nargs="?", help="the version's URI")
    _place_arguments(promote)
    promote.add_argument("--version", default=None, help="with --job: the version's name")
    promote.add_argument("--channel", required=True, help="e.g. prod")
    promote.add_argument("--reason", default="", help="recorded in the channel entry")
    promote.add_argument("--force", action="store_true", help="also a version its quality gate did not promote")
    add_output_option(promote)
    promote.set_defaults(handler=promote_command)

    rollback = _channel_parser(sub, "rollback", "point a promotion channel back at the version it named before")
    rollback.add_argument("--to", default=None, metavar="VERSION", help="a version the channel named before")
    rollback.add_argument("--reason", default="", help="recorded in the channel entry")
    add_output_option(rollback)
    rollback.set_defaults(handler=rollback_command)

    channel = _channel_parser(sub, "channel", "show a promotion channel's current version and history")
    add_output_option(channel, json_flag=True)
    channel.set_defaults(handler=channel_command)

    fetch = _channel_parser(sub, "fetch", "download the channel's current version of one artifact, verified")
    fetch.add_argument(
        "--artifact", required=True, choices=ARTIFACT_FOLDERS, help="which artifact folder of the version"
    )
    fetch.add_argument(
        "--dest", type=Path, required=True, help="a link swapped to the fetched folder, e.g. /models/current"
    )
    add_output_option(fetch)
    fetch.set_defaults(handler=fetch_command)

    versions = sub.add_parser("versions", help="list the versions published under an output prefix, newest first")
    versions.add_argument("output_uri", nargs="?", help="the job's output prefix (spec.output.uri)")
    _place_arguments(versions)
    add_output_option(versions, human="table")
    versions.set_defaults(handler=versions_command)

    serving = _channel_parser(sub, "serving", "render what a serving stack applies to run the channel's version")
    serving.add_argument("--for", dest="server", required=True, choices=SERVERS, help="the serving stack")
    serving.add_argument("--name", required=True, help="the objects' name (a DNS label), also the served model's")
    serving.add_argument("--namespace", default=None, help="the objects' namespace (default: none set)")
    serving.add_argument(
        "--secret",
        default=None,
        help="vllm, llama-cpp: a Secret with access-key-id and secret-access-key for the fetch (default: "
        "workload identity)",
    )
    add_output_option(serving, human="manifests")
    serving.set_defaults(handler=serving_command)


def _channel_parser(sub: argparse._SubParsersAction, name: str, help_text: str) -> argparse.ArgumentParser:  # type: ignore[type-arg]
    """A command on a channel of a job's output prefix."""
    parser: argparse.ArgumentParser = sub.add_parser(name, help=help_text)
    parser.add_argument("output_uri", nargs="?", help="the job's output prefix (spec.output.uri)")
    _place_arguments(parser)
    parser.add_argument("--channel", required=True)
    return parser


def _place_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--endpoint", default=None, help="S3 endpoint URL (default: AWS_ENDPOINT_URL_S3, else AWS)")
    parser.add_argument("--region", default=None, help="S3 region (default: AWS_REGION, else us-east-1)")
    parser.add_argument(
        "--job", type=Path, default=None, help="in a pod: the FineTuneJob manifest the operator mounted"
    )


def _place(args: argparse.Namespace, environment: TrainerEnvironment, uri: str | None) -> Place:
    if args.job is None:
        if uri is None:
            raise ConfigurationError("name a URI, or --job with the FineTuneJob manifest (in a pod)")
        try:
            spec = S3Spec(endpoint=args.endpoint, region=args.region)
        except ValidationError as err:  # the same rules as spec.s3 in a manifest
            raise ConfigurationError(str(err)) from err
        return Place(ObjectStore.for_command(spec, environment), None)
    if uri is not None or args.endpoint or args.region:
        raise ConfigurationError("with --job, the place and the S3 settings come from the manifest")
    job = load_manifest(args.job)
    store = ObjectStore.from_environment(job.spec.s3, environment)
    return Place(store, job)


def _version_uri(args: argparse.Namespace, place: Place) -> str:
    if place.job is None:
        return str(args.version_uri)
    if not re.fullmatch(VERSION_PATTERN, args.version or ""):
        raise ConfigurationError(f"--version {args.version!r} is not a version kubetune names")
    return join_uri(place.job.spec.output.uri, args.version)


def _output_uri(args: argparse.Namespace, place: Place) -> str:
    return place.job.spec.output.uri if place.job is not None else str(args.output_uri)


def _run(what: str, action: Callable[[TrainerEnvironment], int], *, reason: str = "") -> int:
    """Run a command, turning what cannot be done into exit 2 with one line saying why."""
    environment = TrainerEnvironment.from_env()
    try:
        return action(environment)
    except FAILURES as err:
        print(f"cannot {what}: {err}", file=sys.stderr)
        if reason:
            _say(f"{reason}: could not {what}: {err}", environment)
        return EXIT_CONFIG


def _say(message: str, environment: TrainerEnvironment) -> None:
    from kubetune_trainer.termination import write_termination_message

    write_termination_message(message, environment.termination_log)


# ------------------------------------------------------------------ verify
def verify_command(args: argparse.Namespace) -> int:
    """Re-check a version; with ``--claimed-gate``, also that its manifest says what was reported."""

    def check(environment: TrainerEnvironment) -> int:
        place = _place(args, environment, args.version_uri)
        if place.job is None and (args.version or args.claimed_gate is not None or args.promote_to):
            raise ConfigurationError("--version, --claimed-gate and --promote-to go with --job (the verification Job)")
        if args.promote_to and args.claimed_gate is None:
            raise ConfigurationError("--promote-to needs --claimed-gate: only a verified promotion moves a channel")
        version_uri = _version_uri(args, place)
        problems, intact = _check_version(version_uri, place, args.claimed_gate)
        if not wants_document(args):
            for line in intact:
                print(f"ok       {line}")
            for line in problems:
                print(f"DAMAGED  {line}")
        print(f"{version_uri}: {len(intact)} artifacts intact, {len(problems)} problems", file=sys.stderr)
        result: dict[str, Any] = {"versionUri": version_uri, "intact": intact, "problems": problems, "promoted": None}
        if problems:
            more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
            _say(f"PromotionNotVerified: {version_uri}: {problems[0]}{more}", environment)
        elif args.promote_to:  # just checked, artifact by artifact: not read a second time
            entry = _promote(place, version_uri, args.promote_to, reason=_verified_reason(place), verified=True)
            result["promoted"] = _show_entry(args, args.promote_to, entry, document=False)
        if wants_document(args):
            emit(result, args.output)
        return EXIT_DAMAGED if problems else EXIT_OK

    return _run("verify", check, reason="PromotionNotVerified")


def _check_version(version_uri: str, place: Place, claimed_gate: str | None) -> tuple[list[str], list[str]]:
    """(problems, intact artifacts): the artifacts against the manifest, then the manifest against
    what the trainer reported, when it reported something."""
    from kubetune_trainer.publish import promotion_mismatches, read_manifest, verify_version

    intact, problems = verify_version(version_uri, place.store)
    if claimed_gate is not None:
        try:
            checks = json.loads(claimed_gate)
        except json.JSONDecodeError as err:
            raise ConfigurationError(f"--claimed-gate is not JSON: {err}") from err
        if not isinstance(checks, dict) or not all(v in (True, False, None) for v in checks.values()):
            raise ConfigurationError("--claimed-gate must map each gate check's name to true, false or null")
        uid = place.job.metadata.get("uid") if place.job is not None else None
        manifest = read_manifest(version_uri, place.store)
        problems = promotion_mismatches(manifest, job_uid=uid, claimed_checks=checks) + problems
    return problems, intact


def _verified_reason(place: Place) -> str:
    meta = place.job.metadata if place.job is not None else {}
    return f"FineTuneJob {meta.get('namespace', '?')}/{meta.get('name', '?')}: quality gate passed, verified by the operator"


# ------------------------------------------------------------------ channels
def _promote(
    place: Place, version_uri: str, channel: str, *, reason: str, force: bool = False, verified: bool = False
) -> ChannelEntry:
    from kubetune_trainer.channels import promote

    return promote(place.store, version_uri, channel, reason=reason, require_promoted=not force, verified=verified)


def _show_entry(
    args: argparse.Namespace, channel: str, entry: ChannelEntry, *, document: bool = True
) -> dict[str, Any]:
    """A channel's new entry: its line for a person now, or (``document``) printed as the result. Returns
    the entry as data: the result of promote and rollback, and part of verify's."""
    from kubetune_trainer.channels import describe

    data = {"channel": channel, **entry.to_json()}
    if not wants_document(args):
        print(f"{channel}: {describe(entry)}")
    elif document:
        emit(data, args.output)
    return data


def promote_command(args: argparse.Namespace) -> int:
    def run(environment: TrainerEnvironment) -> int:
        place = _place(args, environment, args.version_uri)
        if place.job is None and args.version:
            raise ConfigurationError("--version goes with --job; name the version's URI instead")
        entry = _promote(place, _version_uri(args, place), args.channel, reason=args.reason, force=args.force)
        _show_entry(args, args.channel, entry)
        return EXIT_OK

    return _run("promote", run)


def rollback_command(args: argparse.Namespace) -> int:
    from kubetune_trainer.channels import rollback

    def run(environment: TrainerEnvironment) -> int:
        place = _place(args, environment, args.output_uri)
        entry = rollback(place.store, _output_uri(args, place), args.channel, to_version=args.to, reason=args.reason)
        _show_entry(args, args.channel, entry)
        return EXIT_OK

    return _run("roll back", run)


def channel_command(args: argparse.Namespace) -> int:
    from kubetune_trainer.channels import describe, history

    def run(environment: TrainerEnvironment) -> int:
        place = _place(args, environment, args.output_uri)
        entries = history(place.store, _output_uri(args, place), args.channel)
        if wants_document(args):  # the entries alone, oldest first: what `--json` always printed
            emit([entry.to_json() for entry in entries], args.output)
        elif not entries:
            print(f"{args.channel}: no entries")
        else:
            print(f"{args.channel}: now {entries[-1].version_uri}")
            for entry in reversed(entries):
                print(f"  {describe(entry)}")
        return EXIT_OK

    return _run("read the channel", run)


def fetch_command(args: argparse.Namespace) -> int:
    from kubetune_trainer.fetch import VersionDamaged, fetch

    def run(environment: TrainerEnvironment) -> int:
        place = _place(args, environment, args.output_uri)
        result: dict[str, Any] = {"channel": args.channel, "artifact": args.artifact, "dest": str(args.dest)}
        try:
            fetched = fetch(place.store, _output_uri(args, place), args.channel, args.artifact, args.dest)
        except VersionDamaged as err:
            _say(f"VersionDamaged: {err}", environment)
            return _fetch_result(args, {**result, "damaged": str(err)}, f"DAMAGED  {err}", EXIT_DAMAGED)
        done = f"{fetched.files} files fetched" if fetched.files else "already in place"
        result |= {
            "version": fetched.entry.version,
            "versionUri": fetched.entry.version_uri,
            "folder": str(fetched.folder),
            "filesFetched": fetched.files,
            "damaged": None,
        }
        return _fetch_result(
            args, result, f"{args.dest} -> {fetched.folder.name}: {fetched.entry.version_uri} ({done})", EXIT_OK
        )

    return _run("fetch", run, reason="FetchFailed")


def _fetch_result(args: argparse.Namespace, result: dict[str, Any], line: str, code: int) -> int:
    if wants_document(args):
        emit(result, args.output)
    else:
        print(line)
    return code


# ------------------------------------------------------------------ serving
def serving_command(args: argparse.Namespace) -> int:
    """Print the channel's serving hand-off (kubetune_trainer.serving says how each stack follows it)."""
    from kubetune_trainer.serving import Placement, hand_off, render, served_version

    def run(environment: TrainerEnvironment) -> int:
        place = _place(args, environment, args.output_uri)
        served = served_version(place.store, _output_uri(args, place), args.channel)
        placement = Placement(
            name=args.name, namespace=args.namespace, secret=args.secret, endpoint=args.endpoint, region=args.region
        )
        if wants_document(args):
            emit(hand_off(args.server, served, placement), args.output)
        else:
            sys.stdout.write(render(args.server, served, placement))
        return EXIT_OK

    return _run("render the serving manifests", run)


# ------------------------------------------------------------------ versions
def version_summary(manifest: dict[str, Any], channels: list[str]) -> dict[str, Any]:
    """What a listing shows of one version: when, from which job, its primary metric base → tuned, its
    gate's verdict and the channels naming it now."""
    evaluation = manifest.get("evaluation") or {}
    primary = evaluation.get("primaryMetric")
    metric = next((m for m in evaluation.get("metrics") or [] if m.get("name") == primary), None)
    job = manifest.get("job") or {}
    return {
        "version": manifest.get("version"),
        "publishedAt": manifest.get("publishedAt"),
        "job": f"{job.get('namespace')}/{job.get('name')}" if job else None,
        "promoted": manifest.get("promoted"),
        "metric": primary,
        "base": metric.get("base") if metric else None,
        "tuned": metric.get("tuned") if metric else None,
        "channels": channels,
    }


def _table(rows: list[dict[str, Any]]) -> str:
    def number(value: Any) -> str:
        return f"{value:.3f}" if isinstance(value, int | float) else "-"

    lines = [("VERSION", "PUBLISHED", "PROMOTED", "METRIC", "BASE", "TUNED", "CHANNELS")]
    for row in rows:
        promoted = {True: "yes", False: "no"}.get(row["promoted"], "-")
        metric = row["metric"] or "-"
        channels = ",".join(row["channels"]) or "-"
        lines.append(
            (
                row["version"],
                row["publishedAt"] or "-",
                promoted,
                metric,
                number(row["base"]),
                number(row["tuned"]),
                channels,
            )
        )
    widths = [max(len(str(line[i])) for line in lines) for i in range(len(lines[0]))]
    return "\n".join(
        "  ".join(str(cell).ljust(width) for cell, width in zip(line, widths, strict=True)).rstrip() for line in lines
    )


def versions_command(args: argparse.Namespace) -> int:
    from kubetune_trainer.channels import channel_names, current
    from kubetune_trainer.publish import list_versions, read_manifest

    def run(environment: TrainerEnvironment) -> int:
        place = _place(args, environment, args.output_uri)
        output = _output_uri(args, place)
        naming: dict[str, list[str]] = {}
        for channel in channel_names(place.store, output):
            entry = current(place.store, output, channel)
            if entry is not None:
                naming.setdefault(entry.version, []).append(channel)
        names = sorted(list_versions(output, place.store), reverse=True)  # a version's name starts with its time
        rows = [
            version_summary(read_manifest(join_uri(output, name), place.store), naming.get(name, [])) for name in names
        ]
        if wants_document(args):
            emit(rows, args.output)
        else:
            print(_table(rows))
        if not rows:
            print(f"{output}: no version published yet", file=sys.stderr)
        return EXIT_OK

    return _run("list the versions", run)
