"""The commands that follow a FineTuneJob in a cluster, through the user's own kubeconfig: ``submit``,
``status``, ``wait`` and ``logs``.

``logs`` prints the trainer container's output of the job's newest training pod (the pre-flight's
before the training Job exists, or with ``--preflight``), following it with ``-f``.

``submit`` validates the manifest exactly as ``kubetune validate`` does and creates it as written (the
API server applies the schema's defaults and its CEL rules, the same ones); ``status`` shows the phase,
progress and the gate's verdict; ``wait`` returns when the job reaches a phase.

Exit codes: 0 done (for ``wait``: the phase was reached); 1 ``wait`` ended without it (the job ended in
another phase, or the timeout passed); 2 cannot be done as asked (an invalid manifest, no credentials,
the API server refusing: forbidden, not found, already exists), with the API server's own message and
never a traceback. ``--output json|yaml`` (kubetune_trainer.output) prints the created object
(``submit``), the job's status (``status``) or the phase reached (``wait``).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from kubetune.api.contract import EXIT_CONFIG, EXIT_OK, TRAINER_CONTAINER
from kubetune.api.manifest import ManifestError, load_document
from kubetune.api.v1alpha1 import GROUP, PLURAL, TERMINAL_PHASES, VERSION, Phase
from kubetune_trainer.output import add_output_option, emit, wants_document

EXIT_NOT_REACHED = 1
PLURALS = {"FineTuneJob": PLURAL, "DriftMonitor": "driftmonitors"}


class CannotDo(Exception):
    """What the API server (or the kubeconfig) refused, in one line."""


def add_parsers(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    submit = sub.add_parser("submit", help="validate a FineTuneJob or DriftMonitor manifest, then create it")
    submit.add_argument("manifest", type=Path)
    _common(submit)
    submit.set_defaults(handler=submit_command)

    status = sub.add_parser("status", help="a FineTuneJob's phase, progress and gate")
    status.add_argument("name")
    _common(status)
    status.set_defaults(handler=status_command)

    wait = sub.add_parser("wait", help="wait until a FineTuneJob reaches a phase")
    wait.add_argument("name")
    wait.add_argument(
        "--for",
        dest="phase",
        default=Phase.SUCCEEDED.value,
        type=lambda text: text[:1].upper() + text[1:].lower(),
        choices=[phase.value for phase in Phase],
        help="the phase to wait for, any case (default: succeeded)",
    )
    wait.add_argument("--timeout", type=float, default=3600.0, help="seconds (default: 3600)")
    wait.add_argument("--interval", type=float, default=2.0, help=argparse.SUPPRESS)
    _common(wait)
    wait.set_defaults(handler=wait_command)

    logs = sub.add_parser("logs", help="the trainer's output of a FineTuneJob (its newest training pod)")
    logs.add_argument("name")
    logs.add_argument("-f", "--follow", action="store_true", help="stream new output until the trainer exits")
    logs.add_argument("--preflight", action="store_true", help="the pre-flight pod's output instead")
    logs.add_argument("--tail", type=int, default=None, metavar="LINES", help="only the last LINES lines")
    logs.add_argument("-n", "--namespace", default=None, help="default: the kubeconfig context's, else default")
    logs.set_defaults(handler=logs_command)


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-n", "--namespace", default=None, help="default: the kubeconfig context's, else default")
    add_output_option(parser)


def _api(kind: str = "CustomObjectsApi") -> Any:
    """A ``kubernetes.client`` API class of the user's kubeconfig (or the pod's ServiceAccount)."""
    from kubernetes import client

    from kubetune.kubeclient import NoCredentials, ReauthenticatingApiClient

    try:
        return getattr(client, kind)(ReauthenticatingApiClient())
    except NoCredentials as err:
        raise CannotDo(str(err)) from err


def _context_namespace() -> str:
    from kubernetes import config

    try:
        _, context = config.list_kube_config_contexts()
    except Exception:
        return "default"
    return str((context or {}).get("context", {}).get("namespace") or "default")


def _call(action: Callable[[], Any], what: str) -> Any:
    from kubernetes.client.rest import ApiException

    try:
        return action()
    except ApiException as err:
        try:
            message = json.loads(err.body or "{}").get("message") or err.reason
        except (json.JSONDecodeError, AttributeError):
            message = err.reason
        raise CannotDo(f"{what}: {message} (HTTP {err.status})") from err


def _run(action: Callable[[], int]) -> int:
    try:
        return action()
    except (CannotDo, ManifestError) as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_CONFIG


# ------------------------------------------------------------------ submit
def submit_command(args: argparse.Namespace) -> int:
    def submit() -> int:
        document, found = load_document(args.manifest)  # refused here exactly as `kubetune validate` refuses it
        written = document.get("metadata", {}).get("namespace")
        if written and args.namespace and written != args.namespace:
            raise CannotDo(
                f"{args.manifest}: metadata.namespace is {written!r} and --namespace {args.namespace!r}: drop one"
            )
        namespace = written or args.namespace or _context_namespace()
        plural = PLURALS[found.kind]
        created = _call(
            lambda: _api().create_namespaced_custom_object(GROUP, VERSION, namespace, plural, document),
            f"cannot create {found.kind} {document['metadata'].get('name')!r} in namespace {namespace!r}",
        )
        if wants_document(args):
            emit(created, args.output)
        else:
            print(f"{plural}.{GROUP}/{created['metadata']['name']} created in namespace {namespace}")
        return EXIT_OK

    return _run(submit)


# ------------------------------------------------------------------ status
def _reader(name: str, namespace: str | None) -> Callable[[], dict[str, Any]]:
    """Reads the job; the client and the namespace are settled once (``wait`` reads many times)."""
    api, where = _api(), namespace or _context_namespace()

    def read() -> dict[str, Any]:
        return dict(
            _call(
                lambda: api.get_namespaced_custom_object(GROUP, VERSION, where, PLURAL, name),
                f"cannot read FineTuneJob {name!r} in namespace {where!r}",
            )
        )

    return read


def describe(job: dict[str, Any]) -> str:
    """The status in lines a person reads: phase, progress with its ETA, the result and the gate."""
    status = job.get("status") or {}
    lines = [f"{job['metadata']['name']}: {status.get('phase') or 'Pending'}"]
    progress = status.get("progress") or {}
    if progress.get("totalSteps"):
        step = f"step {progress.get('step') or 0}/{progress['totalSteps']}"
        loss = f", loss {progress['trainLoss']:.4f}" if progress.get("trainLoss") is not None else ""
        eta = f", about {_duration(progress['etaSeconds'])} left" if progress.get("etaSeconds") is not None else ""
        lines.append(f"  {progress.get('stage') or 'train'}: {step}{loss}{eta}")
    result = status.get("result") or {}
    if result.get("version"):
        promoted = result.get("promoted")
        verdict = "promoted" if promoted is True else "not promoted" if promoted is False else "no verdict"
        lines.append(f"  version {result['version']}: {verdict}")
        if result.get("qualityGateMessage"):
            lines.append(f"  gate: {result['qualityGateMessage']}")
    if result.get("privacy"):
        privacy = result["privacy"]
        lines.append(f"  privacy: epsilon {privacy['epsilon']:.2f} of {privacy['targetEpsilon']:g} spent")
    for condition in status.get("conditions") or []:
        if condition.get("status") == "False" and condition.get("message"):
            lines.append(f"  {condition['type']}: {condition['message']}")
    return "\n".join(lines)


def _duration(seconds: float) -> str:
    minutes = round(seconds / 60)
    return f"{minutes // 60} h {minutes % 60} min" if minutes >= 60 else f"{max(minutes, 1)} min"


def status_command(args: argparse.Namespace) -> int:
    def show() -> int:
        job = _reader(args.name, args.namespace)()
        if wants_document(args):
            emit(job.get("status") or {}, args.output)
        else:
            print(describe(job))
        return EXIT_OK

    return _run(show)


# ------------------------------------------------------------------ wait
def wait_command(args: argparse.Namespace) -> int:
    def wait() -> int:
        read = _reader(args.name, args.namespace)
        deadline = time.monotonic() + args.timeout
        while True:
            phase = (read().get("status") or {}).get("phase") or Phase.PENDING.value
            if phase == args.phase:
                return _waited(args, phase, f"{args.name}: {phase}")
            if phase in TERMINAL_PHASES:
                return _waited(args, phase, f"{args.name}: {phase}, not {args.phase} (kubetune status {args.name})")
            if time.monotonic() >= deadline:
                return _waited(args, phase, f"{args.name}: still {phase} after {args.timeout:g} s")
            time.sleep(min(args.interval, max(0.0, deadline - time.monotonic())))

    return _run(wait)


def _waited(args: argparse.Namespace, phase: str, line: str) -> int:
    """The end of a wait. The phase reached is the result, on stdout; another phase is a failure, its
    line on stderr, though a document (on stdout) still says which phase the job was in."""
    reached = phase == args.phase
    if not reached or not wants_document(args):
        print(line, file=sys.stdout if reached else sys.stderr)
    if wants_document(args):
        emit({"name": args.name, "phase": phase, "wanted": args.phase, "reached": reached}, args.output)
    return EXIT_OK if reached else EXIT_NOT_REACHED


# ------------------------------------------------------------------ logs
def newest_pod_of(pods: list[dict[str, Any]], job_name: str) -> dict[str, Any] | None:
    """The newest pod the Job ``job_name`` made (a Job that retried has several), or None."""
    made = [
        pod
        for pod in pods
        if any(
            ref.get("kind") == "Job" and ref.get("name") == job_name
            for ref in pod["metadata"].get("ownerReferences") or []
        )
    ]
    return max(made, key=lambda pod: pod["metadata"].get("creationTimestamp") or "", default=None)


def logs_command(args: argparse.Namespace) -> int:
    def logs() -> int:
        job = _reader(args.name, args.namespace)()
        namespace, status = job["metadata"]["namespace"], job.get("status") or {}
        training = None if args.preflight else status.get("jobName")
        job_name, which = (training, "training") if training else (status.get("preflightJobName"), "pre-flight")
        core = _api("CoreV1Api")
        listing = _call(
            lambda: core.list_namespaced_pod(namespace, _preload_content=False),
            f"cannot list the pods of FineTuneJob {args.name!r} in namespace {namespace!r}",
        )
        pod = newest_pod_of(json.loads(listing.data).get("items", []), job_name) if job_name else None
        if pod is None:
            phase = status.get("phase") or Phase.PENDING.value
            raise CannotDo(f"FineTuneJob {args.name!r} has no {which} pod yet (phase {phase})")
        name = pod["metadata"]["name"]
        stream = _call(
            lambda: core.read_namespaced_pod_log(
                name,
                namespace,
                container=TRAINER_CONTAINER,
                follow=args.follow,
                tail_lines=args.tail,
                _preload_content=False,
            ),
            f"cannot read the output of pod {name!r}",
        )
        for chunk in stream.stream(4096):
            sys.stdout.write(chunk.decode(errors="replace"))
            sys.stdout.flush()
        return EXIT_OK

    return _run(logs)
