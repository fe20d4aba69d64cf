"""``kubetune``: the trainer's command line, on a laptop and in the pod.

- ``kubetune run job.yaml``: the whole job locally (no cluster), with progress bars, stage
  timings and a base-vs-tuned table at the end.
- ``kubetune preflight --job /etc/kubetune/job.yaml``: the CPU-only pre-flight Job.
- ``kubetune train --job /etc/kubetune/job.yaml``: the training Job (also under torchrun).
- ``kubetune validate job.yaml ...``: check manifests against the API, nothing else.
- ``kubetune verify s3://bucket/prefix/job/v...``: re-check a published version against its
  manifest (exit 0 intact, 1 damaged, 2 cannot be checked). The operator's verification Job runs
  ``kubetune verify --job /etc/kubetune/job.yaml --version V --claimed-gate JSON``: the same checks,
  and the manifest must say what the trainer reported in the FineTuneJob status.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Any

from kubetune.api.contract import EXIT_CONFIG, EXIT_DAMAGED, EXIT_OK
from kubetune.api.manifest import ManifestError, load_manifest
from kubetune_trainer.environment import TrainerEnvironment
from kubetune_trainer.localrun import PathMapping, parse_mapping


def _run(args: argparse.Namespace) -> int:
    from kubetune_trainer.localrun import default_mappings, localize
    from kubetune_trainer.pipeline import Mode, run_pipeline

    job = load_manifest(args.manifest)
    mappings = list(args.map) + default_mappings(args.manifest)
    for mapping in mappings:
        print(f"mapping file://{mapping.pod_prefix}/ -> {mapping.local_dir.resolve()}/", file=sys.stderr)
    job = localize(job, mappings, args.output_dir)
    environment = TrainerEnvironment.from_env()
    return run_pipeline(job, mode=Mode.LOCAL, workdir=args.workdir, max_steps=args.max_steps, environment=environment)


def _in_pod(args: argparse.Namespace, mode_name: str) -> int:
    from kubetune_trainer.pipeline import Mode, run_pipeline

    job = load_manifest(args.job)
    environment = TrainerEnvironment.from_env()
    workdir = args.workdir or environment.scratch / "work"
    return run_pipeline(job, mode=Mode(mode_name), workdir=workdir, max_steps=None, environment=environment)


def _validate(args: argparse.Namespace) -> int:
    status = EXIT_OK
    for path in args.manifests:
        try:
            job = load_manifest(path)
        except ManifestError as err:
            print(err, file=sys.stderr)
            status = EXIT_CONFIG
            continue
        print(f"{path}: valid FineTuneJob {job.metadata.get('name', '?')!r}")
    return status


def _verify(args: argparse.Namespace) -> int:
    """Re-check a version: a person names it by URI; the operator's verification Job names it by the
    mounted FineTuneJob and the version the trainer reported, with the gate checks it reported."""
    from kubetune_trainer.errors import ConfigurationError
    from kubetune_trainer.storage import StorageError

    environment = TrainerEnvironment.from_env()
    try:
        version_uri, store, claims = _verification_target(args, environment)
        problems, intact = _check_version(version_uri, store, claims)
    except (StorageError, ConfigurationError, ManifestError) as err:
        print(f"cannot verify: {err}", file=sys.stderr)
        _say(f"PromotionNotVerified: could not check the published version: {err}", environment)
        return EXIT_CONFIG
    for line in intact:
        print(f"ok       {line}")
    for line in problems:
        print(f"DAMAGED  {line}")
    print(f"{version_uri}: {len(intact)} artifacts intact, {len(problems)} problems", file=sys.stderr)
    if problems:
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        _say(f"PromotionNotVerified: {version_uri}: {problems[0]}{more}", environment)
        return EXIT_DAMAGED
    return EXIT_OK


_Claims = tuple[str | None, dict[str, bool | None]]  # (FineTuneJob uid, gate checks reported)


def _verification_target(args: argparse.Namespace, environment: TrainerEnvironment) -> tuple[str, Any, _Claims | None]:
    import json
    import re

    from pydantic import ValidationError

    from kubetune.api.contract import VERSION_PATTERN
    from kubetune.api.v1alpha1 import S3Spec
    from kubetune_trainer.errors import ConfigurationError
    from kubetune_trainer.storage import ObjectStore, join_uri

    if args.job is None:
        if args.version_uri is None or args.version or args.claimed_gate is not None:
            raise ConfigurationError("name a VERSION_URI, or --job and --version (the verification Job's form)")
        try:
            spec = S3Spec(endpoint=args.endpoint, region=args.region)
        except ValidationError as err:  # the same rules as spec.s3 in a manifest
            raise ConfigurationError(str(err)) from err
        return args.version_uri, ObjectStore(spec), None
    if args.version_uri is not None or args.endpoint or args.region:
        raise ConfigurationError("with --job, the version and the S3 settings come from --version and the manifest")
    if not re.fullmatch(VERSION_PATTERN, args.version or ""):
        raise ConfigurationError(f"--version {args.version!r} is not a version kubetune names")
    job = load_manifest(args.job)
    store = ObjectStore(
        job.spec.s3,
        ca_bundle=environment.s3_ca_bundle,
        credentials_dir=environment.s3_credentials_dir,
        public_endpoint_only=environment.s3_public_endpoint_only,
    )
    claims = None
    if args.claimed_gate is not None:
        try:
            checks = json.loads(args.claimed_gate)
        except json.JSONDecodeError as err:
            raise ConfigurationError(f"--claimed-gate is not JSON: {err}") from err
        if not isinstance(checks, dict) or not all(v in (True, False, None) for v in checks.values()):
            raise ConfigurationError("--claimed-gate must map each gate check's name to true, false or null")
        claims = (job.metadata.get("uid"), checks)
    return join_uri(job.spec.output.uri, args.version), store, claims


def _check_version(version_uri: str, store: Any, claims: _Claims | None) -> tuple[list[str], list[str]]:
    """(problems, intact artifacts): the artifacts against the manifest, then the manifest against
    what the trainer reported, when it reported something."""
    from kubetune_trainer.publish import promotion_mismatches, read_manifest, verify_version

    intact, problems = verify_version(version_uri, store)
    if claims is not None:
        job_uid, checks = claims
        problems = (
            promotion_mismatches(read_manifest(version_uri, store), job_uid=job_uid, claimed_checks=checks) + problems
        )
    return problems, intact


def _say(message: str, environment: TrainerEnvironment) -> None:
    from kubetune_trainer.pipeline import write_termination_message

    write_termination_message(message, environment.termination_log)


def _mapping(text: str) -> PathMapping:
    try:
        return parse_mapping(text)
    except ValueError as err:  # argparse prints it with the usage and exits 2
        raise argparse.ArgumentTypeError(str(err)) from err


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="kubetune", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run a FineTuneJob manifest locally, end to end")
    run.add_argument("manifest", type=Path)
    run.add_argument(
        "--output-dir",
        type=Path,
        default=None,
        help="publish to this local folder instead of spec.output.uri (versions go under <dir>/<job name>/)",
    )
    run.add_argument(
        "--map",
        action="append",
        default=[],
        type=_mapping,
        metavar="/POD/PATH=LOCAL/DIR",
        help="read file:///POD/PATH/... from LOCAL/DIR (default: /opt/kubetune/examples -> the manifest's folder)",
    )
    run.add_argument(
        "--workdir", type=Path, default=Path(".kubetune-work"), help="scratch folder (checkpoints, exports)"
    )
    run.add_argument("--max-steps", type=int, default=None, help="stop training after N optimizer steps (smoke runs)")
    run.set_defaults(handler=_run)

    for name, help_text in (
        ("preflight", "the pre-flight check (in the pre-flight Job)"),
        ("train", "train, evaluate, publish (in the training Job)"),
    ):
        cmd = sub.add_parser(name, help=help_text)
        cmd.add_argument("--job", type=Path, required=True, help="the FineTuneJob manifest (the operator mounts it)")
        cmd.add_argument("--workdir", type=Path, default=None)
        cmd.set_defaults(handler=lambda args, mode=name: _in_pod(args, mode))

    validate = sub.add_parser("validate", help="check manifests against the FineTuneJob API")
    validate.add_argument("manifests", type=Path, nargs="+")
    validate.set_defaults(handler=_validate)

    verify = sub.add_parser("verify", help="re-check a published version's artifacts against its manifest")
    verify.add_argument("version_uri", nargs="?", help="the version's URI, e.g. s3://bucket/out/job/v20261204-...")
    verify.add_argument("--endpoint", default=None, help="S3 endpoint URL (default: AWS_ENDPOINT_URL_S3, else AWS)")
    verify.add_argument("--region", default=None, help="S3 region (default: AWS_REGION, else us-east-1)")
    verify.add_argument(
        "--job", type=Path, default=None, help="the FineTuneJob manifest: the version is under its spec.output.uri"
    )
    verify.add_argument("--version", default=None, help="with --job: the version's name (v<date>-<time>-<hex>)")
    verify.add_argument(
        "--claimed-gate",
        default=None,
        metavar="JSON",
        help="with --job: the gate checks reported ({name: passed}); the manifest must say promoted with exactly these",
    )
    verify.set_defaults(handler=_verify)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    for noisy in ("botocore", "urllib3", "httpx", "filelock"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    try:
        return int(args.handler(args))
    except ManifestError as err:
        print(err, file=sys.stderr)
        return EXIT_CONFIG


if __name__ == "__main__":
    raise SystemExit(main())
