"""The trainer's FineTuneJob status writes against an HTTP server that answers like kube-apiserver.

The real reporter and the real ``ReauthenticatingApiClient`` run, configured by a kubeconfig
(``$KUBECONFIG``) as in a cluster; the server on loopback checks the bearer token and the
merge-patch content type, answers refusals with ``Status`` bodies (401, 403, 422, 429 with
Retry-After, 5xx) and records every request it gets.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import yaml

from kubetune.api.contract import ENV_TERMINATION_LOG, EXIT_CANNOT_REPORT, EXIT_RESULT_NOT_REPORTED
from kubetune.api.manifest import load_manifest
from kubetune.api.v1alpha1 import FineTuneJob, PreflightReport, Progress, ResolvedTraining
from kubetune.api.v1alpha1 import TrainerResult as Result
from kubetune_trainer.drift.profile import ReferenceProfile
from kubetune_trainer.environment import TrainerEnvironment
from kubetune_trainer.errors import CannotReport, ResultNotReported
from kubetune_trainer.pipeline import Mode, run_pipeline
from kubetune_trainer.reporting.kubernetes import Backoff, KubernetesStatusReporter, custom_objects_api
from kubetune_trainer.termination import write_termination_message
from tests.kubeapi.model import ApiError, FieldError, ResourceType, UserInfo
from tests.trainer.jobs import write_dataset, write_job
from tests.trainer.plans import tiny_plan

FINETUNEJOBS = ResourceType(
    "kubetune.dev",
    "v1alpha1",
    "finetunejobs",
    "FineTuneJob",
    namespaced=True,
    subresources=frozenset({"status"}),
    crd_name="finetunejobs.kubetune.dev",
)
NAMESPACE, NAME = "ml", "tickets"
STATUS_PATH = f"/apis/kubetune.dev/v1alpha1/namespaces/{NAMESPACE}/finetunejobs/{NAME}/status"
TRAINER = UserInfo.service_account(NAMESPACE, "tickets-trainer")
MERGE_PATCH = "application/merge-patch+json"


def forbidden() -> ApiError:
    """kube-apiserver's answer when the trainer's Role or RoleBinding is missing."""
    return ApiError.forbidden(
        f'finetunejobs.kubetune.dev "{NAME}" is forbidden: User "{TRAINER.name}" cannot patch resource '
        f'"finetunejobs/status" in API group "kubetune.dev" in the namespace "{NAMESPACE}"',
        FINETUNEJOBS,
        NAME,
    )


def unavailable() -> ApiError:
    return ApiError(503, "ServiceUnavailable", "the server is currently unable to handle the request")


@dataclass(frozen=True)
class Refusal:
    error: ApiError
    retry_after: int | None = None


@dataclass(frozen=True)
class Seen:
    """One request as the server got it, and its answer."""

    at: float  # time.monotonic() on arrival
    token: str
    status: dict[str, Any]  # the patch's .status
    code: int


@dataclass
class StatusApi:
    """The FineTuneJob ``tickets`` in namespace ``ml``, as far as its status subresource goes."""

    tokens: set[str] = field(default_factory=lambda: {"token-1"})  # the bearer tokens it accepts
    refusals: list[Refusal] = field(default_factory=list)  # answers to the next requests, then 200
    refuse: Callable[[dict[str, Any]], ApiError | None] = lambda status: None  # a standing refusal
    delay: float = 0.0  # seconds every answer takes
    seen: list[Seen] = field(default_factory=list)
    status: dict[str, Any] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def answer(self, path: str, token: str, content_type: str, body: bytes) -> tuple[int, dict[str, Any], int | None]:
        """(HTTP code, JSON body, Retry-After) for one PATCH, in kube-apiserver's order of checks."""
        arrived = time.monotonic()
        status = (json.loads(body or b"{}").get("status") or {}) if content_type == MERGE_PATCH else {}
        with self.lock:
            retry_after = None
            if token not in self.tokens:
                error: ApiError | None = ApiError.unauthorized()
            elif path != STATUS_PATH:
                error = ApiError.not_found(FINETUNEJOBS, path.rsplit("/", 2)[-2])
            elif content_type != MERGE_PATCH:
                error = ApiError.unsupported_media_type(content_type)
            elif self.refusals:
                refusal = self.refusals.pop(0)
                error, retry_after = refusal.error, refusal.retry_after
            else:
                error = self.refuse(status)
            if error is None:
                self.status = _merge_patched(self.status, status)
            self.seen.append(Seen(arrived, token, status, error.code if error else 200))
            if error is not None:
                return error.code, error.status(), retry_after
            document = {
                "apiVersion": "kubetune.dev/v1alpha1",
                "kind": "FineTuneJob",
                "metadata": {"name": NAME, "namespace": NAMESPACE},
                "status": self.status,
            }
            return 200, document, None

    def written(self) -> list[dict[str, Any]]:
        """The patches it applied, in order."""
        return [seen.status for seen in self.seen if seen.code == 200]


def _merge_patched(target: dict[str, Any], patch: dict[str, Any]) -> dict[str, Any]:
    """RFC 7386 JSON merge patch."""
    merged = dict(target)
    for key, value in patch.items():
        if value is None:
            merged.pop(key, None)
        elif isinstance(value, dict):
            before = merged.get(key)
            merged[key] = _merge_patched(before if isinstance(before, dict) else {}, value)
        else:
            merged[key] = value
    return merged


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def do_PATCH(self) -> None:
        api = self.server.api
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        time.sleep(api.delay)
        token = (self.headers.get("Authorization") or "").removeprefix("Bearer ")
        content_type = (self.headers.get("Content-Type") or "").split(";")[0].strip()
        code, document, retry_after = api.answer(self.path.split("?")[0], token, content_type, body)
        payload = json.dumps(document).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        if retry_after is not None:
            self.send_header("Retry-After", str(retry_after))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: the test reads ``StatusApi.seen``."""


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, api: StatusApi) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.api = api


def write_kubeconfig(path: Path, server: str, token: str) -> None:
    path.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "test", "cluster": {"server": server}}],
                "users": [{"name": "trainer", "user": {"token": token}}],
                "contexts": [
                    {"name": "test", "context": {"cluster": "test", "user": "trainer", "namespace": NAMESPACE}}
                ],
                "current-context": "test",
            }
        )
    )


@dataclass
class Cluster:
    api: StatusApi
    url: str
    kubeconfig: Path

    def rotate_token(self, token: str) -> None:
        """The server accepts only ``token`` from now on, and the kubeconfig holds it (as the kubelet rotates it)."""
        with self.api.lock:
            self.api.tokens = {token}
        write_kubeconfig(self.kubeconfig, self.url, token)


@pytest.fixture()
def cluster(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Cluster]:
    api = StatusApi()
    server = _Server(api)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{server.server_address[1]}"
    kubeconfig = tmp_path / "kubeconfig"
    write_kubeconfig(kubeconfig, url, "token-1")
    monkeypatch.setenv("KUBECONFIG", str(kubeconfig))
    # The kubernetes library reads $KUBECONFIG once, when it is imported (as a process started with
    # it set would see it); this process imported it before the test set the variable.
    monkeypatch.setattr("kubernetes.config.kube_config.KUBE_CONFIG_DEFAULT_LOCATION", str(kubeconfig))
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)  # never the in-cluster configuration
    try:
        yield Cluster(api, url, kubeconfig)
    finally:
        server.shutdown()
        server.server_close()


def reporter(**options: Any) -> KubernetesStatusReporter:
    """The production reporter and client, with bounds a test can wait for."""
    settings: dict[str, Any] = {
        "min_interval": 0.0,
        "first_write_timeout": 2.0,
        "flush_timeout": 5.0,
        "request_timeout": 5.0,
        "backoff": Backoff(initial=0.05, cap=0.2),
        **options,
    }
    return KubernetesStatusReporter(custom_objects_api, NAMESPACE, NAME, **settings)


def in_pod(monkeypatch: pytest.MonkeyPatch, termination_log: Path) -> None:
    """The environment the operator gives the trainer container (kubetune.operator.children)."""
    monkeypatch.setenv("KUBETUNE_REPORT_STATUS", "true")
    monkeypatch.setenv("KUBETUNE_JOB_NAMESPACE", NAMESPACE)
    monkeypatch.setenv("KUBETUNE_JOB_NAME", NAME)
    monkeypatch.setenv(ENV_TERMINATION_LOG, str(termination_log))
    for unused in ("KUBETUNE_METRICS_PORT", "KUBETUNE_PUSHGATEWAY_URL", "RANK"):
        monkeypatch.delenv(unused, raising=False)


def resolved_plan() -> ResolvedTraining:
    return tiny_plan("lora")


# --------------------------------------------------------------------------- the first write


def test_refused_credentials_stop_the_trainer_before_any_work(
    cluster: Cluster, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cluster.api.refuse = lambda status: forbidden()
    in_pod(monkeypatch, tmp_path / "termination-log")
    # Neither the model nor the data exist: had the pipeline gone on, it would have exited with EXIT_CONFIG.
    job = load_manifest(
        write_job(
            tmp_path / "job.yaml",
            model_dir=tmp_path / "no-model",
            data=tmp_path / "no-data.jsonl",
            output=f"file://{tmp_path}/out/",
        )
    )

    code = run_pipeline(
        job, mode=Mode.TRAIN, workdir=tmp_path / "work", max_steps=None, environment=TrainerEnvironment.from_env()
    )

    assert code == EXIT_CANNOT_REPORT == 3
    message = (tmp_path / "termination-log").read_text()
    assert message == f"TrainerCannotReport: HTTP 403 Forbidden: {forbidden().message}"
    assert [seen.code for seen in cluster.api.seen] == [403], "a 403 is final: no retry, no credential re-read"
    assert cluster.api.seen[0].status["progress"]["stage"] == "model", "the first stage's announcement"
    assert not (tmp_path / "out").exists()


def test_a_401_rereads_the_kubeconfig_once_then_stops_the_trainer(cluster: Cluster) -> None:
    with cluster.api.lock:
        cluster.api.tokens = {"token-2"}  # the kubeconfig still holds token-1

    with pytest.raises(CannotReport) as refused:
        reporter().stage("model")

    assert str(refused.value) == "HTTP 401 Unauthorized: Unauthorized"
    assert [(seen.token, seen.code) for seen in cluster.api.seen] == [("token-1", 401), ("token-1", 401)]


def test_an_api_that_stays_unavailable_stops_the_trainer_after_the_first_write_window(cluster: Cluster) -> None:
    cluster.api.refuse = lambda status: unavailable()
    started = time.monotonic()

    with pytest.raises(CannotReport) as refused:
        reporter(first_write_timeout=0.5).stage("model")

    assert 0.5 <= time.monotonic() - started < 2.0
    assert str(refused.value) == (
        "HTTP 503 Service Unavailable: the server is currently unable to handle the request "
        "(no status write succeeded in 0.5 s)"
    )
    assert len(cluster.api.seen) >= 3, "retried with backoff"


def test_an_unreachable_api_stops_the_trainer_after_the_first_write_window(cluster: Cluster) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed_port = probe.getsockname()[1]
    write_kubeconfig(cluster.kubeconfig, f"http://127.0.0.1:{closed_port}", "token-1")

    with pytest.raises(CannotReport) as refused:
        reporter(first_write_timeout=0.3).stage("model")

    assert str(refused.value).startswith("cannot reach the API server: ")
    assert "Connection refused" in str(refused.value) and "(no status write succeeded in 0.3 s)" in str(refused.value)


# --------------------------------------------------------------------------- later writes


def test_server_errors_are_retried_in_the_background_and_reports_arrive_in_order(cluster: Cluster) -> None:
    status = reporter(backoff=Backoff(initial=0.2, cap=0.4, jitter=0.0))
    status.stage("plan")
    cluster.api.refusals = [Refusal(ApiError(500, "InternalError", "etcdserver: request timed out"))] * 2

    started = time.monotonic()
    status.preflight(PreflightReport(passed=True, message="fits"))
    status.resolved(resolved_plan())
    status.stage("train")
    for step in range(1, 6):
        status.progress(Progress(step=step, total_steps=10, train_loss=2.0 / step))
    assert time.monotonic() - started < 0.5, "training went on while the API failed (retries take 0.6 s)"
    status.result(Result(version="v1", manifest_uri="s3://models/v1/manifest.json"))
    status.close(0)

    assert [seen.code for seen in cluster.api.seen] == [200, 500, 500, 200, 200, 200, 200]
    assert [next(iter(patch)) for patch in cluster.api.written()] == [
        "progress",
        "preflight",
        "resolved",
        "progress",
        "result",
    ]
    progress = cluster.api.written()[3]["progress"]
    assert (progress["stage"], progress["step"], progress["trainLoss"]) == ("train", 5, 0.4), "only the latest"
    assert cluster.api.status["preflight"]["message"] == "fits"
    assert cluster.api.status["result"]["version"] == "v1"


def test_too_many_requests_waits_as_long_as_retry_after_says(cluster: Cluster) -> None:
    status = reporter(backoff=Backoff(initial=0.01, cap=0.02))
    status.stage("train")
    throttled = ApiError(429, "TooManyRequests", "Too many requests, please try again later.")
    cluster.api.refusals = [Refusal(throttled, retry_after=1)]

    status.progress(Progress(step=1, total_steps=2))
    status.close(0)

    first, throttled_at, retried_at = cluster.api.seen
    assert (first.code, throttled_at.code, retried_at.code) == (200, 429, 200)
    assert 0.9 <= retried_at.at - throttled_at.at < 3.0, "Retry-After: 1, not the 0.01 s backoff"


def test_credentials_refused_after_the_start_are_retried_until_restored_and_logged_once(
    cluster: Cluster, caplog: pytest.LogCaptureFixture
) -> None:
    status = reporter(backoff=Backoff(initial=0.02, cap=0.05))
    status.stage("train")
    cluster.api.refusals = [Refusal(forbidden())] * 5  # the RoleBinding is restored after five tries

    status.progress(Progress(step=3, total_steps=9))
    status.close(0)

    assert [seen.code for seen in cluster.api.seen] == [200, 403, 403, 403, 403, 403, 200]
    assert cluster.api.status["progress"]["step"] == 3
    assert caplog.text.count("credentials refused") == 1, "at most one error a minute"


def test_a_rotated_token_is_reread_after_a_401_mid_run(cluster: Cluster) -> None:
    status = reporter()
    status.stage("train")
    cluster.rotate_token("token-2")

    status.progress(Progress(step=4, total_steps=8))
    status.close(0)

    assert [(seen.token, seen.code) for seen in cluster.api.seen] == [
        ("token-1", 200),
        ("token-1", 401),
        ("token-2", 200),
    ]
    assert cluster.api.status["progress"]["step"] == 4


def test_writes_do_not_block_training_while_the_api_is_slow(cluster: Cluster) -> None:
    status = reporter()
    status.stage("train")
    cluster.api.delay = 2.0

    started = time.monotonic()
    for step in range(1, 21):
        status.progress(Progress(step=step, total_steps=40))
    assert time.monotonic() - started < 0.5

    status.close(0)  # waits for the write in flight and then one write of the latest progress
    assert cluster.api.status["progress"]["step"] == 20
    assert len(cluster.api.seen) <= 3, "twenty reports, at most two writes"


def test_progress_is_throttled_and_the_pending_one_is_written_at_the_end(cluster: Cluster) -> None:
    status = reporter(min_interval=3600.0)
    status.stage("train")
    for step in range(1, 6):
        status.progress(Progress(step=step, total_steps=10))
    status.close(0)

    steps = [patch["progress"].get("step") for patch in cluster.api.written()]
    # The stage, then the first progress (unless it was still queued when the last one came: merged).
    assert steps in ([None, 1, 5], [None, 5]), "steps 2-4 came within min_interval: held back, then dropped"


# --------------------------------------------------------------------------- the result


def test_a_result_the_api_keeps_refusing_is_reported_as_not_written(cluster: Cluster) -> None:
    status = reporter(flush_timeout=1.0)
    status.stage("publish")
    cluster.api.refuse = lambda patch: unavailable() if "result" in patch else None

    started = time.monotonic()
    with pytest.raises(ResultNotReported) as unwritten:
        status.result(Result(version="v2", manifest_uri="s3://models/v2/manifest.json"))
    assert 1.0 <= time.monotonic() - started < 3.0

    assert str(unwritten.value) == (
        "HTTP 503 Service Unavailable: the server is currently unable to handle the request "
        "(still not written after 1 s)"
    )
    closing = time.monotonic()
    status.close(EXIT_RESULT_NOT_REPORTED)
    assert time.monotonic() - closing < 1.5, "close() does not wait out the flush timeout a second time"
    assert "result" not in cluster.api.status


def test_a_published_run_whose_result_cannot_be_written_fails_and_keeps_its_artifacts(
    cluster: Cluster, tmp_path: Path, tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    too_many = FieldError("status.result.artifacts", "FieldValueTooMany", "Too many: 300: must have at most 256 items")
    attempted: list[dict[str, Any]] = []

    def refuse(patch: dict[str, Any]) -> ApiError | None:
        if "result" not in patch:
            return None
        attempted.append(patch["result"])
        return ApiError.invalid(FINETUNEJOBS, NAME, [too_many])

    cluster.api.refuse = refuse
    in_pod(monkeypatch, tmp_path / "termination-log")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    job: FineTuneJob = load_manifest(
        write_job(
            tmp_path / "job.yaml",
            model_dir=tiny_model_dir,
            data=write_dataset(tmp_path / "data.jsonl", 24),
            output=f"file://{tmp_path}/out/",
        )
    )

    code = run_pipeline(
        job, mode=Mode.TRAIN, workdir=tmp_path / "work", max_steps=1, environment=TrainerEnvironment.from_env()
    )

    assert code == EXIT_RESULT_NOT_REPORTED == 4
    (manifest,) = (tmp_path / "out").glob("*/manifest.json")
    version = manifest.parent.name
    assert (tmp_path / "termination-log").read_text() == (
        f"ResultNotReported: {version} published at file://{manifest}, but the FineTuneJob status could "
        f'not be written: HTTP 422 Unprocessable Entity: FineTuneJob.kubetune.dev "{NAME}" is invalid: '
        "status.result.artifacts: Too many: 300: must have at most 256 items"
    )
    assert manifest.is_file(), "the published version stays in storage"
    assert [next(iter(patch)) for patch in cluster.api.written()][-1] != "result"
    assert cluster.api.status["preflight"]["passed"] is True, "everything before the result was written"
    # The result carries every gate check its verdict follows from: the operator copies a promotion
    # only when each judged check passed (kubetune.operator.status.quality_gate).
    result = attempted[-1]
    judged = {check["name"]: check["passed"] for check in result["gateChecks"] if "passed" in check}
    assert "task" in judged and all(check["detail"] for check in result["gateChecks"])
    assert result["promoted"] is False or all(judged.values())
    # Every published version carries its drift reference profile (kubetune_trainer.drift.profile).
    published = {artifact["name"] for artifact in result["artifacts"]}
    assert {"reports/drift-profile/profile.json", "reports/drift-profile/embeddings.npy"} <= published
    profile = ReferenceProfile.load(manifest.parent / "reports" / "drift-profile")
    assert profile.embeddings.shape[0] == len(profile.lengths) > 0 and profile.losses
    assert json.loads(manifest.read_text())["driftProfile"] == "reports/drift-profile"


# --------------------------------------------------------------------------- the termination message


def test_the_termination_message_is_one_bounded_line_and_never_fails_the_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    log_file = tmp_path / "termination-log"
    monkeypatch.setenv(ENV_TERMINATION_LOG, str(log_file))
    where = TrainerEnvironment.from_env().termination_log
    write_termination_message("StorageError: " + "x" * 5000 + "\nTraceback (most recent call last): ...", where)
    assert log_file.read_text() == ("StorageError: " + "x" * 5000)[:4096]

    monkeypatch.setenv(ENV_TERMINATION_LOG, str(tmp_path / "missing-folder" / "termination-log"))
    write_termination_message("StorageError: unreachable", TrainerEnvironment.from_env().termination_log)
    assert not (tmp_path / "missing-folder").exists()

    monkeypatch.delenv(ENV_TERMINATION_LOG)
    assert TrainerEnvironment.from_env().termination_log is None  # kubetune run: nowhere to write
    write_termination_message("StorageError: unreachable", None)
