"""``kubetune``: the trainer's command line, on a laptop and in the pod.

- ``kubetune run job.yaml``: the whole job locally (no cluster), with progress bars, stage
  timings and a base-vs-tuned table at the end. ``--nodes 2``: as a job of two nodes, two local
  torchrun agents running the pods' command (``kubetune_trainer.localgroup``).
- ``kubetune preflight --job /etc/kubetune/job.yaml``: the CPU-only pre-flight Job.
- ``kubetune train --job /etc/kubetune/job.yaml``: the training Job (also under torchrun).
- ``kubetune validate job.yaml ...``: check manifests against the API, nothing else.
- ``kubetune verify s3://bucket/prefix/job/v...``: re-check a published version against its
  manifest (exit 0 intact, 1 damaged, 2 cannot be checked). The operator's verification Job runs
  ``kubetune verify --job /etc/kubetune/job.yaml --version V --claimed-gate JSON``: the same checks,
  and the manifest must say what the trainer reported in the FineTuneJob status.
- ``kubetune promote VERSION_URI --channel prod``, ``kubetune rollback OUTPUT_URI --channel prod``,
  ``kubetune channel OUTPUT_URI --channel prod``: move and show a promotion channel
  (``kubetune_trainer.channels``); ``kubetune fetch`` brings a channel's version to a serving pod.
- ``kubetune drift check --reference VERSION_URI --samples URI``: production requests against a
  version's reference profile (exit 0 no drift, 1 drift, 2 cannot check).
- ``kubetune completion bash|zsh``: a shell completion script.

Each verb that reports something takes ``-o json|yaml`` (``kubetune_trainer.output``); docs/cli.md
lists every verb's document and exit codes.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kubetune.api.contract import EXIT_CONFIG, EXIT_OK
from kubetune.api.manifest import ManifestError, load_manifest, load_object
from kubetune_trainer import challenge, lifecycle, version_commands
from kubetune_trainer.drift import command as drift_command
from kubetune_trainer.environment import TrainerEnvironment
from kubetune_trainer.localrun import PathMapping, parse_mapping
from kubetune_trainer.output import add_output_option, emit, wants_document
from kubetune_trainer.reporting import Reporter

if TYPE_CHECKING:
    from kubetune.api.v1alpha1 import FineTuneJob, TrainerResult
    from kubetune_trainer.context import Reproduction

COMPLETION_SHELLS = ("bash", "zsh")


def _run(args: argparse.Namespace) -> int:
    from kubetune_trainer.localrun import default_mappings, localize

    job = load_manifest(args.manifest)
    mappings = list(args.map) + default_mappings(args.manifest)
    for mapping in mappings:
        print(f"mapping file://{mapping.pod_prefix}/ -> {mapping.local_dir.resolve()}/", file=sys.stderr)
    job = localize(job, mappings, args.output_dir)
    if args.nodes > 1:
        from kubetune_trainer.localgroup import run_group

        if args.max_steps is not None or wants_document(args):
            print(
                "kubetune run: --nodes runs the pods' own command, which takes no --max-steps or --output",
                file=sys.stderr,
            )
            return EXIT_CONFIG
        return run_group(job, args.nodes, args.workdir)
    return _run_locally(args, job, max_steps=args.max_steps)


def _run_locally(
    args: argparse.Namespace, job: FineTuneJob, *, max_steps: int | None, reproducing: Reproduction | None = None
) -> int:
    """``kubetune run``'s and ``reproduce``'s run. With ``-o json|yaml`` the document is what was published
    (the FineTuneJob's ``status.result`` form), printed whenever a version was published, whatever the
    exit code; the run's own report (its tables) goes to stderr then, leaving stdout to the document."""
    from kubetune_trainer.pipeline import Mode, run_pipeline

    published = _PublishedResult()
    with contextlib.redirect_stdout(sys.stderr) if wants_document(args) else contextlib.nullcontext():
        code = run_pipeline(
            job,
            mode=Mode.LOCAL,
            workdir=args.workdir,
            max_steps=max_steps,
            environment=TrainerEnvironment.from_env(),
            reproducing=reproducing,
            also_report_to=[published],
        )
    if wants_document(args) and published.found is not None:
        emit(published.found.to_manifest(), args.output)
    return code


class _PublishedResult(Reporter):
    """Keeps what the run published: ``kubetune run -o json|yaml``'s document."""

    def __init__(self) -> None:
        self.found: TrainerResult | None = None

    def result(self, result: TrainerResult) -> None:
        self.found = result


def _reproduce(args: argparse.Namespace) -> int:
    """The version's recorded spec run again (``kubetune run``'s way, published under --output-dir), its
    base model and training data checked against the SHA-256s the version recorded before any training."""
    from pydantic import ValidationError

    from kubetune.api.v1alpha1 import API_VERSION, KIND, FineTuneJob, S3Spec
    from kubetune_trainer.context import Reproduction
    from kubetune_trainer.errors import ConfigurationError
    from kubetune_trainer.localrun import localize
    from kubetune_trainer.publish import read_manifest
    from kubetune_trainer.storage import ObjectStore, StorageError

    try:
        store = ObjectStore.for_command(
            S3Spec(endpoint=args.endpoint, region=args.region), TrainerEnvironment.from_env()
        )
        lineage = read_manifest(args.version_uri, store)
        if "spec" not in lineage:
            raise ConfigurationError(f"{args.version_uri} was published before kubetune recorded the job's spec")
        document = {"apiVersion": API_VERSION, "kind": KIND, "metadata": {"name": lineage["job"]["name"]}}
        job = FineTuneJob.model_validate({**document, "spec": lineage["spec"]})
        if job.spec.privacy is not None:
            raise ConfigurationError(
                "it was trained with spec.privacy, and a private run is not reproduced: its rows and noise were "
                "drawn from a secret random source that no record keeps, so a second run ends on other weights, "
                "and it would be a second release from the same data, spending another "
                f"epsilon {job.spec.privacy.target_epsilon:g}. To train it again on purpose, apply its spec as a "
                "new job (docs/privacy.md)"
            )
    except (StorageError, ConfigurationError, ValidationError, KeyError, ValueError) as err:
        print(f"error: cannot reproduce {args.version_uri}: {err}", file=sys.stderr)
        return EXIT_CONFIG
    expected = Reproduction(
        version_uri=args.version_uri,
        base_model_sha256=str(lineage["baseModel"]["sha256"]),
        data_sha256=str(lineage["dataset"]["contentSha256"]),
    )
    return _run_locally(args, localize(job, [], args.output_dir), max_steps=None, reproducing=expected)


def _in_pod(args: argparse.Namespace, mode_name: str) -> int:
    from kubetune_trainer.pipeline import Mode, run_pipeline

    job = load_manifest(args.job)
    environment = TrainerEnvironment.from_env()
    workdir = args.workdir or environment.scratch / "work"
    return run_pipeline(job, mode=Mode(mode_name), workdir=workdir, max_steps=None, environment=environment)


def _validate(args: argparse.Namespace) -> int:
    results = [_validate_one(path, quiet=wants_document(args)) for path in args.manifests]
    if wants_document(args):
        emit(results, args.output)
    return EXIT_OK if all(result["valid"] for result in results) else EXIT_CONFIG


def _validate_one(path: Path, *, quiet: bool) -> dict[str, Any]:
    """One manifest's verdict; the reason it is refused always goes to stderr."""
    try:
        found = load_object(path)
    except ManifestError as err:
        print(err, file=sys.stderr)
        return {"path": str(path), "valid": False, "kind": None, "name": None, "error": str(err)}
    name = found.metadata.get("name")
    if not quiet:
        print(f"{path}: valid {found.kind} {name or '?'!r}")
    return {"path": str(path), "valid": True, "kind": found.kind, "name": name, "error": None}


def _completion(args: argparse.Namespace) -> int:
    """The completion script, generated by shtab from this very parser: it cannot drift from the verbs."""
    import shtab

    sys.stdout.write(shtab.complete(build_parser(), shell=args.shell))
    return EXIT_OK


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
    run.add_argument(
        "--nodes",
        type=int,
        default=1,
        choices=range(1, 9),
        metavar="N",
        help="run as a job of resources.nodes N: N local torchrun agents on the CPU, the pods' own command (1-8)",
    )
    add_output_option(run)
    run.set_defaults(handler=_run)

    reproduce = sub.add_parser(
        "reproduce", help="run a published version's job again locally, refusing if its base model or data changed"
    )
    reproduce.add_argument("version_uri", help="the version's URI, e.g. s3://bucket/out/job/v20261204-...")
    reproduce.add_argument(
        "--output-dir", type=Path, default=Path("runs"), help="where the new version is published (default: runs)"
    )
    reproduce.add_argument("--workdir", type=Path, default=Path(".kubetune-work"), help="scratch folder")
    reproduce.add_argument("--endpoint", default=None, help="S3 endpoint to read the version from")
    reproduce.add_argument("--region", default=None, help="S3 region to read the version from")
    add_output_option(reproduce)
    reproduce.set_defaults(handler=_reproduce)

    for name, help_text in (
        ("preflight", "the pre-flight check (in the pre-flight Job)"),
        ("train", "train, evaluate, publish (in the training Job)"),
    ):
        cmd = sub.add_parser(name, help=help_text)
        cmd.add_argument("--job", type=Path, required=True, help="the FineTuneJob manifest (the operator mounts it)")
        cmd.add_argument("--workdir", type=Path, default=None)
        cmd.set_defaults(handler=lambda args, mode=name: _in_pod(args, mode))

    validate = sub.add_parser("validate", help="check FineTuneJob and DriftMonitor manifests against the API")
    validate.add_argument("manifests", type=Path, nargs="+")
    add_output_option(validate)
    validate.set_defaults(handler=_validate)

    version_commands.add_parsers(sub)
    drift_command.add_parser(sub)
    challenge.add_parser(sub)
    lifecycle.add_parsers(sub)

    completion = sub.add_parser("completion", help="print a shell completion script (docs/cli.md: installing it)")
    completion.add_argument("shell", choices=COMPLETION_SHELLS)
    completion.set_defaults(handler=_completion)
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
