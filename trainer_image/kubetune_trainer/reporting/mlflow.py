"""The run in MLflow (``spec.tracking.mlflow``), over MLflow's REST API: the experiment and run, the
resolved training values as parameters, the losses and throughput by step and the evaluation as
metrics, the published version and its manifest as tags, and each promoted version registered in the
model registry with the published folder as its source.

The REST API (``/api/2.0/mlflow/...``, stable since MLflow 1.0) rather than the ``mlflow`` package:
the trainer image keeps its own pins and size, and these few calls need nothing of the package's.

Tracking is a report beside the job's status, never its verdict: when the server cannot be reached or
refuses, the run goes on and a warning says why, once; MLflow then misses the rest of the run. Nor does
it slow training: reports are sent by one background thread, in report order, and the job waits for
them only at its end, for at most ``DRAIN_SECONDS``.
"""

from __future__ import annotations

import base64
import json
import logging
import queue
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, TypeAlias

from kubetune.api import contract
from kubetune.api.v1alpha1 import MlflowTrackingSpec, Progress, ResolvedTraining, TrainerResult
from kubetune_trainer.errors import ConfigurationError
from kubetune_trainer.reporting import Reporter, TrainingMetrics
from kubetune_trainer.secrets import read_secret_key

log = logging.getLogger(__name__)

API = "/api/2.0/mlflow"
TIMEOUT_SECONDS = 10
# How long the end of a job waits for the reports still queued (the result, the registration, the run's
# end) before it leaves them: a few requests' worth, each bounded by TIMEOUT_SECONDS.
DRAIN_SECONDS = 60
# MLflow's limits for one runs/log-batch request, and for a parameter's value.
MAX_PARAMS_PER_BATCH = 100
MAX_PARAM_VALUE = 6000
TAG_PREFIX = "kubetune."


# How a run logs in: a user name and password (MLflow's basic auth), or a bearer token.
MlflowLogin: TypeAlias = tuple[str, str] | str


class MlflowError(RuntimeError):
    """MLflow refused a request or could not be reached; the message says which and why."""

    def __init__(self, message: str, code: str | None = None) -> None:
        super().__init__(message)
        self.code = code  # MLflow's error_code, e.g. RESOURCE_ALREADY_EXISTS


class MlflowClient:
    """The few REST calls kubetune makes, against one tracking server."""

    def __init__(self, uri: str, *, timeout: float = TIMEOUT_SECONDS, login: MlflowLogin | None = None) -> None:
        self.uri = uri.rstrip("/")
        self.timeout = timeout
        self._headers = {"Content-Type": "application/json"}
        if isinstance(login, str):  # a token, as MLflow's own client sends MLFLOW_TRACKING_TOKEN
            self._headers["Authorization"] = f"Bearer {login}"
        elif login is not None:  # MLflow's basic auth, as its own client sends it
            self._headers["Authorization"] = "Basic " + base64.b64encode(":".join(login).encode()).decode()

    def call(self, method: str, path: str, body: Mapping[str, Any] | None = None) -> dict[str, Any]:
        url = f"{self.uri}{API}/{path}"
        data = None
        if method == "GET" and body:
            url += "?" + urllib.parse.urlencode(body)
        elif body is not None:
            data = json.dumps(body).encode()
        request = urllib.request.Request(url, data=data, method=method, headers=self._headers)
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                answer = response.read()
        except urllib.error.HTTPError as err:
            detail = _error_body(err)
            raise MlflowError(
                f"{method} {path}: {err.code} {detail.get('error_code', '')}: {detail.get('message', '')}".strip(),
                detail.get("error_code"),
            ) from None
        except (urllib.error.URLError, OSError) as err:
            reason = getattr(err, "reason", err)
            raise MlflowError(f"{method} {path}: cannot reach {self.uri}: {reason}") from None
        try:
            parsed = json.loads(answer or b"{}")
        except ValueError:
            parsed = None
        if not isinstance(parsed, dict):  # a proxy's page, not MLflow: the sender thread must not die of it
            raise MlflowError(f"{method} {path}: {self.uri} answered something other than MLflow's JSON")
        return parsed

    def experiment_id(self, name: str) -> str:
        """The experiment's id, created when missing (another writer creating it first is fine)."""
        try:
            return str(
                self.call("GET", "experiments/get-by-name", {"experiment_name": name})["experiment"]["experiment_id"]
            )
        except MlflowError as err:
            if err.code != "RESOURCE_DOES_NOT_EXIST":
                raise
        try:
            return str(self.call("POST", "experiments/create", {"name": name})["experiment_id"])
        except MlflowError as err:
            if err.code != "RESOURCE_ALREADY_EXISTS":
                raise
        return str(
            self.call("GET", "experiments/get-by-name", {"experiment_name": name})["experiment"]["experiment_id"]
        )

    def create_run(self, experiment_id: str, name: str, tags: Mapping[str, str]) -> str:
        body = {"experiment_id": experiment_id, "run_name": name, "start_time": _now_ms(), "tags": _pairs(tags)}
        return str(self.call("POST", "runs/create", body)["run"]["info"]["run_id"])

    def log_batch(
        self,
        run_id: str,
        *,
        metrics: Mapping[str, float] | None = None,
        step: int = 0,
        params: Mapping[str, str] | None = None,
        tags: Mapping[str, str] | None = None,
    ) -> None:
        stamp = _now_ms()
        body: dict[str, Any] = {"run_id": run_id}
        if metrics:
            body["metrics"] = [
                {"key": key, "value": float(value), "timestamp": stamp, "step": step} for key, value in metrics.items()
            ]
        if params:
            body["params"] = _pairs(params)
        if tags:
            body["tags"] = _pairs(tags)
        self.call("POST", "runs/log-batch", body)

    def end_run(self, run_id: str, status: str) -> None:
        self.call("POST", "runs/update", {"run_id": run_id, "status": status, "end_time": _now_ms()})

    def register(self, name: str, source: str, run_id: str, tags: Mapping[str, str]) -> str:
        """A new version of the registered model ``name`` (created when missing); its version number."""
        try:
            self.call("POST", "registered-models/create", {"name": name})
        except MlflowError as err:
            if err.code != "RESOURCE_ALREADY_EXISTS":
                raise
        body = {"name": name, "source": source, "run_id": run_id, "tags": _pairs(tags)}
        return str(self.call("POST", "model-versions/create", body)["model_version"]["version"])


def read_login(folder: Path, spec: MlflowTrackingSpec) -> MlflowLogin:
    """The user name and password of ``spec.credentialsSecret``, or the token of ``spec.tokenSecret``, as
    the operator mounts them (one file per key), each problem named at the field that lists the key."""
    if (token := spec.token_secret) is not None:
        return read_secret_key(
            folder,
            contract.MLFLOW_TOKEN_FILE,
            field="spec.tracking.mlflow.tokenSecret.key",
            secret=token.name,
            key=token.key,
        )
    secret = spec.credentials_secret
    if secret is None:
        raise ConfigurationError(
            f"{folder}: an MLflow login is mounted but neither spec.tracking.mlflow.credentialsSecret nor "
            "tokenSecret is set"
        )
    username, password = (
        read_secret_key(
            folder, file, field=f"spec.tracking.mlflow.credentialsSecret.{field}", secret=secret.name, key=key
        )
        for field, key, file in (
            ("usernameKey", secret.username_key, contract.MLFLOW_USERNAME_FILE),
            ("passwordKey", secret.password_key, contract.MLFLOW_PASSWORD_FILE),
        )
    )
    return username, password


class MlflowReporter(Reporter):
    """One MLflow run per process that reports (rank 0), opened at its first report."""

    def __init__(self, client: MlflowClient, spec: MlflowTrackingSpec, *, namespace: str, name: str) -> None:
        self.client = client
        self.spec = spec
        self.experiment = spec.experiment or f"kubetune/{namespace}"
        self.run_name = name
        self.job_tags = {f"{TAG_PREFIX}namespace": namespace, f"{TAG_PREFIX}finetunejob": name}
        self.run_id: str | None = None
        self.step = 0
        self._failed = False
        self._params_logged = False
        self.drain_seconds: float = DRAIN_SECONDS
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()  # callables; None stops the sender
        self._sender: threading.Thread | None = None

    # ------------------------------------------------------------------ reports
    def stage(self, name: str) -> None:
        self._guarded(lambda run_id: None)  # the run exists from the first stage on

    def resolved(self, resolved: ResolvedTraining) -> None:
        if self._params_logged:  # the pre-flight and the training both resolve; the values are the same
            return
        params = dict(_flatten(resolved.model_dump(by_alias=True, exclude_none=True, mode="json")))

        def log_params(run_id: str) -> None:
            items = list(params.items())
            for start in range(0, len(items), MAX_PARAMS_PER_BATCH):
                self.client.log_batch(run_id, params=dict(items[start : start + MAX_PARAMS_PER_BATCH]))

        self._params_logged = True
        self._guarded(log_params)

    def progress(self, progress: Progress) -> None:
        if progress.step is None:
            return
        self.step = progress.step
        metrics = {
            key: value
            for key, value in (
                ("train_loss", progress.train_loss),
                ("eval_loss", progress.eval_loss),
                ("epoch", progress.epoch),
            )
            if value is not None
        }
        if metrics:
            step = self.step  # sent later, by the sender thread: the step of this report
            self._guarded(lambda run_id: self.client.log_batch(run_id, metrics=metrics, step=step))

    def training_metrics(self, metrics: TrainingMetrics) -> None:
        values = metrics.tracked()
        step = self.step
        self._guarded(lambda run_id: self.client.log_batch(run_id, metrics=values, step=step))

    def result(self, result: TrainerResult) -> None:
        tags = {
            f"{TAG_PREFIX}version": result.version or "",
            f"{TAG_PREFIX}manifestUri": result.manifest_uri or "",
            f"{TAG_PREFIX}promoted": str(bool(result.promoted)).lower(),
        }
        metrics = {f"eval/{key}": value for key, value in (result.metrics or {}).items()}
        step = self.step
        self._guarded(lambda run_id: self.client.log_batch(run_id, metrics=metrics, step=step, tags=tags))
        if self.spec.registered_model and result.promoted and result.manifest_uri:
            self._register(self.spec.registered_model, result)

    def close(self, exit_code: int) -> None:
        """Send what is queued, then end the run FINISHED or FAILED, even after a failed report: one last
        try, never left RUNNING by a report MLflow refused. Waits at most ``drain_seconds``."""
        if self._sender is None:
            return
        self._queue.put(lambda: self._end(exit_code))
        self._queue.put(None)
        self._sender.join(timeout=self.drain_seconds)
        if self._sender.is_alive():  # a daemon: it does not hold the process
            log.warning(
                "spec.tracking.mlflow: the server took more than %g s for the run's last reports; they were left",
                self.drain_seconds,
            )

    def _end(self, exit_code: int) -> None:
        if self.run_id is None:
            return
        try:
            self.client.end_run(self.run_id, "FINISHED" if exit_code == 0 else "FAILED")
        except MlflowError as err:
            log.warning("spec.tracking.mlflow: %s; the MLflow run was not ended", err)

    # ------------------------------------------------------------------ plumbing
    def _register(self, model: str, result: TrainerResult) -> None:
        """The promoted version in the registry: its source the published folder, what serving loads.
        MLflow takes only a remote source (or one inside the run's own artifacts): a version published
        to a local folder (``kubetune run`` to file://) is not registered, and the warning says so."""
        assert result.manifest_uri is not None
        source = result.manifest_uri.rsplit("/", 1)[0]
        if "://" not in source or source.startswith("file://"):
            log.warning(
                "spec.tracking.mlflow.registeredModel: %s is a local folder, which MLflow cannot register; "
                "publish to object storage (s3://) to register versions",
                source,
            )
            return
        tags = {"manifestUri": result.manifest_uri, "version": result.version or ""}

        def register(run_id: str) -> None:
            number = self.client.register(model, source, run_id, tags)
            log.info("registered %s as version %s of MLflow model %r", source, number, model)

        self._guarded(register)

    def _guarded(self, action: Any) -> None:
        """``action(run_id)`` queued for the sender thread (started by the first report)."""
        if self._sender is None:
            self._sender = threading.Thread(target=self._send_queued, name="kubetune-mlflow", daemon=True)
            self._sender.start()
        self._queue.put(lambda: self._send(action))

    def _send_queued(self) -> None:
        """The sender thread: one request at a time, in report order, until close() queues the end."""
        while (task := self._queue.get()) is not None:
            task()

    def _send(self, action: Any) -> None:
        """``action(run_id)``, the run opened first; the first failure is logged and ends the reports."""
        if self._failed:
            return
        try:
            if self.run_id is None:
                experiment_id = self.client.experiment_id(self.experiment)
                self.run_id = self.client.create_run(experiment_id, self.run_name, self.job_tags)
            action(self.run_id)
        except (MlflowError, KeyError, TypeError) as err:  # the last two: an answer without MLflow's fields
            self._failed = True
            log.warning("spec.tracking.mlflow: %s; the run goes on without MLflow", err)


def _flatten(value: Any, prefix: str = "") -> Iterator[tuple[str, str]]:
    if isinstance(value, dict):
        for key, item in value.items():
            yield from _flatten(item, f"{prefix}.{key}" if prefix else str(key))
    else:
        text = value if isinstance(value, str) else json.dumps(value)
        yield prefix, text[:MAX_PARAM_VALUE]


def _pairs(values: Mapping[str, str]) -> list[dict[str, str]]:
    return [{"key": key, "value": value} for key, value in values.items()]


def _now_ms() -> int:
    return int(time.time() * 1000)


def _error_body(err: urllib.error.HTTPError) -> dict[str, Any]:
    try:
        return dict(json.loads(err.read() or b"{}"))
    except ValueError:
        return {}
