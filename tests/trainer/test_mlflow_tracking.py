"""spec.tracking.mlflow: a real `kubetune run` reports to a real MLflow server (tests/mlflowserver.py)
over its REST API: the run with its parameters, metrics by step and the published version as tags, and
the promoted version registered with the published folder as its source. MLflow out of reach never
fails a run."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from kubetune.api.v1alpha1 import S3Spec
from kubetune_trainer.storage import ObjectStore
from tests.mlflowserver import MlflowServer
from tests.trainer.jobs import kubetune_process, write_dataset, write_job


def tracked_job(
    folder: Path, model_dir: Path, tracking: dict[str, Any], *, output: str, s3_endpoint: str | None = None
) -> Path:
    data = write_dataset(folder / "data.jsonl", 64)
    return write_job(
        folder / "job.yaml",
        model_dir=model_dir,
        data=data,
        output=output,
        s3_endpoint=s3_endpoint,
        evaluation={"gate": {"metric": "perplexity"}},  # the tiny model's perplexity falls: promoted
        tracking={"mlflow": tracking},
    )


def test_a_run_is_tracked_and_its_promoted_version_registered(
    tmp_path: Path,
    tiny_model_dir: Path,
    mlflow_server: MlflowServer,
    s3_spec: S3Spec,
    s3_bucket: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server.uri)
    output = f"s3://{s3_bucket}/tracked/"
    tracking = {"experiment": "tickets triage", "registeredModel": "tiny-tickets"}
    job = tracked_job(tmp_path, tiny_model_dir, tracking, output=output, s3_endpoint=s3_spec.endpoint)

    # Published where the manifest says (no --output-dir): MLflow registers only a remote source.
    result = subprocess.run(
        [
            str(Path(sys.executable).parent / "kubetune"),
            "run",
            str(job),
            "--workdir",
            str(tmp_path / "work"),
            "--max-steps",
            "4",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )

    assert result.returncode == 0, result.stderr[-3000:]
    store = ObjectStore(s3_spec)
    (manifest_uri,) = [uri for uri in store.list(output) if uri.endswith("/manifest.json")]
    manifest = json.loads(store.read_bytes(manifest_uri))
    experiment = mlflow_server.get("experiments/get-by-name", experiment_name="tickets triage")["experiment"]
    (run,) = mlflow_server.post("runs/search", {"experiment_ids": [experiment["experiment_id"]]})["runs"]
    assert run["info"]["status"] == "FINISHED" and run["info"]["run_name"] == "tiny-job"
    params = {p["key"]: p["value"] for p in run["data"]["params"]}
    learning_rate = [value for key, value in params.items() if key.endswith("learningRate")]
    assert learning_rate == ["0.001"], params  # the job's value, as resolved
    tags = {t["key"]: t["value"] for t in run["data"]["tags"]}
    assert tags["kubetune.version"] == manifest["version"] and tags["kubetune.promoted"] == "true"
    assert tags["kubetune.manifestUri"] == manifest_uri
    assert tags["kubetune.finetunejob"] == "tiny-job" and tags["kubetune.namespace"] == "default"
    history = mlflow_server.get("metrics/get-history", run_id=run["info"]["run_id"], metric_key="train_loss")
    steps = [point["step"] for point in history["metrics"]]
    assert steps and steps == sorted(steps) and steps[-1] <= 4, steps
    metrics = {m["key"] for m in run["data"]["metrics"]}
    assert {"eval/base.perplexity", "eval/tuned.perplexity", "tokens_per_second"} <= metrics, metrics
    (version,) = mlflow_server.get("model-versions/search", filter="name='tiny-tickets'")["model_versions"]
    assert version["source"] == manifest_uri.rsplit("/", 1)[0], "serving loads the published folder"
    assert version["run_id"] == run["info"]["run_id"]
    assert {t["key"]: t["value"] for t in version["tags"]}["manifestUri"] == manifest_uri


def test_an_mlflow_out_of_reach_is_a_warning_and_the_run_goes_on(
    tmp_path: Path, tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{port}")
    job = tracked_job(tmp_path, tiny_model_dir, {"registeredModel": "tiny-tickets"}, output=f"file://{tmp_path}/out")

    result = kubetune_process("run", str(job), tmp_path, "--max-steps", "2")

    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stderr.count("the run goes on without MLflow") == 1, result.stderr[-3000:]
    assert f"cannot reach http://127.0.0.1:{port}" in result.stderr
    assert list((tmp_path / "runs").glob("*/v*/manifest.json")), "published all the same"


class Proxy:
    """A loopback HTTP proxy to the MLflow server; ``refusal`` says, per request, the status a gateway
    answers instead of forwarding it (None: forward)."""

    def __init__(self, upstream: str) -> None:
        import threading
        import urllib.request
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        self.forwarded = 0
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            def _forward(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0)) or None
                refused = proxy.refusal(self.headers.get("Authorization") or "")
                if refused is not None:
                    payload = json.dumps({"error": "unauthorized"}).encode()
                    self.send_response(refused)
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload)
                    return
                request = urllib.request.Request(upstream + self.path, data=body, method=self.command)
                request.add_header("Content-Type", "application/json")
                try:
                    with urllib.request.urlopen(request, timeout=30) as answer:
                        status, payload = answer.status, answer.read()
                except urllib.error.HTTPError as err:
                    status, payload = err.code, err.read()
                proxy.forwarded += 1
                self.send_response(status)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            do_GET = do_POST = _forward

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.uri = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def refusal(self, authorization: str) -> int | None:
        return None

    def close(self) -> None:
        self.server.shutdown()


class StallingProxy(Proxy):
    """Holds every request until ``opened`` is set: a tracking server that has stopped answering, for as
    long as the test says."""

    def __init__(self, upstream: str) -> None:
        import threading

        self.opened = threading.Event()
        super().__init__(upstream)

    def refusal(self, authorization: str) -> int | None:
        self.opened.wait()
        return None

    def close(self) -> None:
        self.opened.set()
        super().close()


class TokenGateway(Proxy):
    """An access gateway in front of MLflow (an OAuth2 proxy, a managed MLflow's front door): a request
    passes only with ``Authorization: Bearer <token>``, else 401."""

    def __init__(self, upstream: str, token: str) -> None:
        self.token = token
        super().__init__(upstream)

    def refusal(self, authorization: str) -> int | None:
        return None if authorization == f"Bearer {self.token}" else 401


def test_a_stalled_mlflow_never_holds_training_and_gets_every_report_in_order(
    mlflow_server: MlflowServer, caplog: pytest.LogCaptureFixture
) -> None:
    from kubetune.api.v1alpha1 import MlflowTrackingSpec, Progress
    from kubetune_trainer.reporting.mlflow import MlflowClient, MlflowReporter

    proxy = StallingProxy(mlflow_server.uri)
    try:
        # A client timeout shorter than the stall: a reporter that waited on the server would give up.
        reporter = MlflowReporter(
            MlflowClient(proxy.uri, timeout=3), MlflowTrackingSpec(experiment="stalled"), namespace="ml", name="slow"
        )
        reporter.stage("training")
        for step in range(1, 6):
            reporter.progress(Progress(step=step, train_loss=1.0 / step))
        assert proxy.forwarded == 0, "every report returned while the server answered nothing"

        proxy.opened.set()
        reporter.close(0)
        assert "the run goes on without MLflow" not in caplog.text
        run_id = reporter.run_id
        assert run_id is not None
        direct = MlflowClient(mlflow_server.uri)
        assert direct.call("GET", "runs/get", {"run_id": run_id})["run"]["info"]["status"] == "FINISHED"
        history = direct.call("GET", "metrics/get-history", {"run_id": run_id, "metric_key": "train_loss"})
        assert [(m["step"], m["value"]) for m in history["metrics"]] == [
            (s, pytest.approx(1.0 / s)) for s in range(1, 6)
        ]

        # A server that never answers again: the job's end waits its bounded drain, then leaves.
        proxy.opened.clear()
        stuck = MlflowReporter(
            MlflowClient(proxy.uri, timeout=30), MlflowTrackingSpec(experiment="stalled"), namespace="ml", name="stuck"
        )
        stuck.drain_seconds = 0.5
        stuck.stage("training")
        stuck.close(0)
        assert "took more than 0.5 s for the run's last reports" in caplog.text
    finally:
        proxy.close()


def test_an_mlflow_with_basic_auth_takes_the_jobs_login_and_refuses_a_wrong_one(
    tmp_path: Path, tiny_model_dir: Path, mlflow_auth_server: MlflowServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    from kubetune.api import contract

    mlflow_auth_server.create_user("team-a", "team-a-password")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_auth_server.uri)
    login = {"name": "mlflow-login", "usernameKey": "user", "passwordKey": "pass"}
    tracking = {"experiment": "team-a", "credentialsSecret": login}
    job = tracked_job(tmp_path, tiny_model_dir, tracking, output=f"file://{tmp_path}/out")

    # The Secret's two keys as the operator mounts them: the files the contract names.
    mounted = tmp_path / "mounted"
    mounted.mkdir()
    (mounted / contract.MLFLOW_USERNAME_FILE).write_text("team-a\n")
    (mounted / contract.MLFLOW_PASSWORD_FILE).write_text("team-a-password\n")
    monkeypatch.setenv(contract.ENV_MLFLOW_CREDENTIALS_DIR, str(mounted))
    result = kubetune_process("run", str(job), tmp_path / "mounted-run", "--max-steps", "2")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "MLflow" not in result.stderr, result.stderr[-3000:]
    experiment = mlflow_auth_server.get("experiments/get-by-name", experiment_name="team-a")["experiment"]
    (run,) = mlflow_auth_server.post("runs/search", {"experiment_ids": [experiment["experiment_id"]]})["runs"]
    assert run["info"]["status"] == "FINISHED"
    with pytest.raises(urllib.error.HTTPError, match="401"):  # the server refuses who has no login
        urllib.request.urlopen(f"{mlflow_auth_server.uri}/api/2.0/mlflow/experiments/search?max_results=1", timeout=10)
    assert "team-a-password" not in result.stderr

    # A key the Secret lacks: named at its field, and the run goes on untracked.
    (mounted / contract.MLFLOW_PASSWORD_FILE).unlink()
    result = kubetune_process("run", str(job), tmp_path / "missing-key-run", "--max-steps", "2")
    assert result.returncode == 0, result.stderr[-3000:]
    assert (
        "spec.tracking.mlflow.credentialsSecret.passwordKey: Secret 'mlflow-login' has no key 'pass'; "
        "this run is not reported to MLflow" in result.stderr
    )

    # Locally, MLflow's own login variables; a wrong password is the server's 401, one warning.
    monkeypatch.delenv(contract.ENV_MLFLOW_CREDENTIALS_DIR)
    monkeypatch.setenv(contract.ENV_MLFLOW_USERNAME, "team-a")
    monkeypatch.setenv(contract.ENV_MLFLOW_PASSWORD, "not-the-password")
    result = kubetune_process("run", str(job), tmp_path / "wrong-run", "--max-steps", "2")
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stderr.count("the run goes on without MLflow") == 1 and ": 401" in result.stderr, result.stderr[
        -3000:
    ]
    assert list((tmp_path / "wrong-run" / "runs").glob("*/v*/manifest.json")), "published all the same"
    assert len(mlflow_auth_server.post("runs/search", {"experiment_ids": [experiment["experiment_id"]]})["runs"]) == 1


def test_a_server_that_is_not_mlflow_is_one_warning_not_a_dead_sender(caplog: pytest.LogCaptureFixture) -> None:
    """A proxy's login page answered with 200: the reports stop with one warning, and the run's end is
    still tried (a sender thread killed by the answer would leave nothing said)."""
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    from kubetune.api.v1alpha1 import MlflowTrackingSpec, Progress
    from kubetune_trainer.reporting.mlflow import MlflowClient, MlflowReporter

    class LoginPage(BaseHTTPRequestHandler):
        def _page(self) -> None:
            self.rfile.read(int(self.headers.get("Content-Length") or 0))
            body = b"<html>sign in</html>"
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        do_GET = do_POST = _page

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), LoginPage)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        client = MlflowClient(f"http://127.0.0.1:{server.server_address[1]}", timeout=5)
        reporter = MlflowReporter(client, MlflowTrackingSpec(), namespace="ml", name="job")
        reporter.stage("training")
        reporter.progress(Progress(step=1, train_loss=1.0))
        reporter.close(0)
        assert reporter._sender is not None and not reporter._sender.is_alive()
        assert caplog.text.count("the run goes on without MLflow") == 1
        assert "answered something other than MLflow's JSON" in caplog.text
    finally:
        server.shutdown()


def test_an_mlflow_behind_a_token_gateway_takes_the_jobs_token_and_refuses_a_wrong_one(
    tmp_path: Path, tiny_model_dir: Path, mlflow_server: MlflowServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    from kubetune.api import contract
    from kubetune.api.v1alpha1 import MlflowTrackingSpec
    from kubetune_trainer.environment import TrainerEnvironment
    from kubetune_trainer.reporting.mlflow import MlflowClient, MlflowError

    gateway = TokenGateway(mlflow_server.uri, "mlflow-token-a")
    try:
        monkeypatch.setenv("MLFLOW_TRACKING_URI", gateway.uri)
        tracking = {"experiment": "team-token", "tokenSecret": {"name": "mlflow-token", "key": "pat"}}
        job = tracked_job(tmp_path, tiny_model_dir, tracking, output=f"file://{tmp_path}/out")
        mounted = tmp_path / "mounted"  # the Secret's key as the operator mounts it: the contract's file
        mounted.mkdir()
        (mounted / contract.MLFLOW_TOKEN_FILE).write_text("mlflow-token-a\n")
        monkeypatch.setenv(contract.ENV_MLFLOW_CREDENTIALS_DIR, str(mounted))
        result = kubetune_process("run", str(job), tmp_path / "run", "--max-steps", "2")
        assert result.returncode == 0, result.stderr[-3000:]
        assert "MLflow" not in result.stderr and "mlflow-token-a" not in result.stderr, result.stderr[-3000:]
        direct = MlflowClient(mlflow_server.uri)
        experiment = direct.call("GET", "experiments/get-by-name", {"experiment_name": "team-token"})["experiment"]
        (run,) = direct.call("POST", "runs/search", {"experiment_ids": [experiment["experiment_id"]]})["runs"]
        assert run["info"]["status"] == "FINISHED"

        # The mounted key missing: named at its field. Locally, MLflow's own token variable; a wrong one is 401.
        (mounted / contract.MLFLOW_TOKEN_FILE).unlink()
        from kubetune_trainer.errors import ConfigurationError
        from kubetune_trainer.reporting.mlflow import read_login

        with pytest.raises(
            ConfigurationError,
            match=r"spec\.tracking\.mlflow\.tokenSecret\.key: Secret 'mlflow-token' has no key 'pat'",
        ):
            read_login(mounted, MlflowTrackingSpec.model_validate(tracking))
        for token, answer in (("mlflow-token-a", None), ("not-the-token", "401")):
            login = TrainerEnvironment.from_env({contract.ENV_MLFLOW_TOKEN: token}).mlflow_login
            client = MlflowClient(gateway.uri, login=login)
            if answer is None:
                assert client.call("GET", "experiments/get-by-name", {"experiment_name": "team-token"})
            else:
                with pytest.raises(MlflowError, match=answer):
                    client.call("GET", "experiments/get-by-name", {"experiment_name": "team-token"})
    finally:
        gateway.close()
