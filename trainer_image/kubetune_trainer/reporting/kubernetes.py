"""Patch the trainer's own FineTuneJob status: progress, pre-flight findings, plan, result.

The pod's per-job Role allows get/patch on ``finetunejobs/status`` of this one job and
nothing else, so the trainer writes only the fields it owns (``progress``, ``preflight``,
``resolved``, ``result``); the operator owns phase and conditions.

Status is how people and the operator follow a run, so a trainer that cannot write it says so
instead of training blind for hours:

- The first write is synchronous. Refused credentials (401 or 403, after the client re-read
  them once) or any other refusal that waiting cannot change raise :class:`CannotReport` at
  once; transient errors (5xx, 429, timeouts, no connection) are retried for
  ``first_write_timeout``, then raise it too. The pipeline exits before doing any work.
- Later writes never block training: one background thread sends them in report order, keeping
  only the latest progress, and retries transient errors and refused credentials (a RoleBinding
  may be restored) with capped exponential backoff for as long as the process runs.
- :meth:`KubernetesStatusReporter.result` waits up to ``flush_timeout`` for everything, the
  result included, to be written, and raises :class:`ResultNotReported` when it was not.

Every write is a JSON merge patch of fields only the trainer writes, so sending one again after
a timeout (the server may have applied it) is harmless.
"""

from __future__ import annotations

import contextlib
import json
import logging
import random
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from http import HTTPStatus
from typing import Any, NoReturn

import urllib3
from kubernetes.client.exceptions import ApiException

from kubetune.api.contract import ENV_JOB_NAME, ENV_JOB_NAMESPACE
from kubetune.api.v1alpha1 import GROUP, PLURAL, VERSION, PreflightReport, Progress, ResolvedTraining, TrainerResult
from kubetune.kubeclient import NoCredentials
from kubetune_trainer.environment import TrainerEnvironment
from kubetune_trainer.errors import CannotReport, ResultNotReported
from kubetune_trainer.reporting import Reporter

log = logging.getLogger(__name__)

Patch = dict[str, Any]  # a JSON merge patch of the FineTuneJob's .status

# Answers that say "not now" rather than "no": timeouts, conflicts, throttling (and every 5xx).
TRANSIENT_STATUSES = frozenset({408, 409, 429})
REFUSED_CREDENTIALS = frozenset({401, 403})
# While writes keep failing, one log line a minute says so: enough to notice, not a flood.
FAILURE_LOG_INTERVAL = 60.0


def custom_objects_api() -> Any:
    """A ``CustomObjectsApi`` on the pod's credentials (in-cluster, else kubeconfig), re-read on a 401."""
    from kubernetes import client

    from kubetune.kubeclient import ReauthenticatingApiClient

    return client.CustomObjectsApi(ReauthenticatingApiClient())


@dataclass(frozen=True)
class ApiFailure:
    """One failed status write: what the API server (or the network) said, and whether waiting helps."""

    description: str  # one line, e.g. "HTTP 403 Forbidden: <the Status message>"
    transient: bool  # an outage or overload that passes by itself
    credentials: bool = False  # credentials refused or missing: only someone fixing RBAC or the token helps
    retry_after: float | None = None  # seconds the server asked us to wait

    @classmethod
    def of(cls, err: Exception) -> ApiFailure:
        if isinstance(err, ApiException) and err.status:
            status = int(err.status)
            return cls(
                _describe_answer(status, err.reason, err.body),
                transient=status in TRANSIENT_STATUSES or status >= 500,
                credentials=status in REFUSED_CREDENTIALS,
                retry_after=_retry_after(err.headers),
            )
        if isinstance(err, NoCredentials):
            return cls(_first_line(str(err)), transient=False, credentials=True)
        if isinstance(err, ApiException | urllib3.exceptions.HTTPError | OSError):
            # No answer: refused or reset connection, timeout, TLS failure (status 0).
            reason = err.reason if isinstance(err, ApiException | urllib3.exceptions.MaxRetryError) else err
            # The client folds a TLS error into a reason of two lines: "SSLError\n<what failed>".
            what = _first_line(str(reason).replace("\n", ": "))
            return cls(f"cannot reach the API server: {what}", transient=True)
        return cls(f"{type(err).__name__}: {_first_line(str(err))}", transient=False)


def _describe_answer(status: int, reason: str | None, body: str | None) -> str:
    """``HTTP 403 Forbidden: <message>``: the Status object's message, else the start of the body."""
    try:
        phrase = HTTPStatus(status).phrase
    except ValueError:
        phrase = reason or ""
    message = ""
    try:
        document = json.loads(body or "")
        if isinstance(document, Mapping):
            message = str(document.get("message") or "")
    except ValueError:
        message = body or ""
    message = _first_line(message) or reason or ""
    return f"HTTP {status} {phrase}: {message}".rstrip(": ")


def _retry_after(headers: Any) -> float | None:
    """Seconds from a ``Retry-After`` header (kube-apiserver sends whole seconds)."""
    value = headers.get("Retry-After") if headers is not None else None
    try:
        seconds = float(value) if value is not None else None
    except ValueError:
        return None  # an HTTP date: not something kube-apiserver sends; fall back to backoff
    return seconds if seconds is not None and seconds >= 0 else None


def _first_line(text: str, limit: int = 500) -> str:
    return text.strip().split("\n", 1)[0][:limit]


@dataclass(frozen=True)
class Backoff:
    """Capped exponential delays with jitter, so that trainers do not retry in step after an outage."""

    initial: float = 0.5
    cap: float = 30.0
    jitter: float = 0.2  # each delay is shortened by up to this share, at random

    def delay(self, attempt: int) -> float:
        return min(self.cap, self.initial * 2 ** min(attempt, 32)) * (1 - self.jitter * random.random())


@dataclass(frozen=True)
class _Write:
    """One status patch waiting to be sent."""

    field: str  # the status field it writes: progress, preflight, resolved or result
    patch: Patch


def _merged(earlier: Patch, later: Patch) -> Patch:
    """One merge patch with the effect of applying ``earlier`` then ``later``."""
    merged = dict(earlier)
    for key, value in later.items():
        before = merged.get(key)
        merged[key] = _merged(before, value) if isinstance(before, dict) and isinstance(value, dict) else value
    return merged


class KubernetesStatusReporter(Reporter):
    """Writes the trainer's reports into its FineTuneJob's status; see the module's docstring."""

    def __init__(
        self,
        connect: Callable[[], Any],
        namespace: str,
        name: str,
        *,
        min_interval: float = 5.0,
        first_write_timeout: float = 120.0,
        flush_timeout: float = 300.0,
        request_timeout: float = 30.0,
        backoff: Backoff | None = None,
    ) -> None:
        self.connect = connect  # returns a kubernetes.client.CustomObjectsApi; called at the first write
        self.namespace = namespace
        self.name = name
        self.min_interval = min_interval
        self.first_write_timeout = first_write_timeout
        self.flush_timeout = flush_timeout
        self.request_timeout = request_timeout
        self.backoff = backoff or Backoff()
        self._api: Any = None
        self._last_progress = 0.0
        self._pending: Progress | None = None  # throttled progress, sent with the next report or at the end
        self._done = False  # refused at the first write, or closed: reports are ignored
        self._sender: threading.Thread | None = None
        self._stop = threading.Event()
        self._changed = threading.Condition()  # guards the queue, the write in flight and the result's fate
        self._queue: list[_Write] = []
        self._in_flight: _Write | None = None
        self._result_written: bool | None = None
        self._last_error = ""
        self._gave_up_flushing = False
        self._last_failure_logged = -FAILURE_LOG_INTERVAL

    @classmethod
    def from_environment(cls, environment: TrainerEnvironment | None = None) -> KubernetesStatusReporter:
        """The reporter of the job the operator named in ``KUBETUNE_JOB_NAMESPACE``/``KUBETUNE_JOB_NAME``."""
        environment = environment or TrainerEnvironment.from_env()
        if environment.job_namespace is None or environment.job_name is None:
            raise CannotReport(f"{ENV_JOB_NAMESPACE} and {ENV_JOB_NAME} must name the FineTuneJob to report to")
        return cls(custom_objects_api, environment.job_namespace, environment.job_name)

    # ------------------------------------------------------------------ reports
    def stage(self, name: str) -> None:
        self._report(_Write("progress", {"progress": {"stage": name, "updatedAt": _now()}}))

    def progress(self, progress: Progress) -> None:
        now = time.monotonic()
        final = progress.step is not None and progress.step == progress.total_steps
        if not final and now - self._last_progress < self.min_interval:
            self._pending = progress
            return
        self._last_progress = now
        self._pending = None
        self._report(_progress_write(progress))

    def preflight(self, report: PreflightReport) -> None:
        self._report(_Write("preflight", {"preflight": report.to_manifest()}))

    def resolved(self, resolved: ResolvedTraining) -> None:
        self._report(_Write("resolved", {"resolved": resolved.to_manifest()}))

    def result(self, result: TrainerResult) -> None:
        """Write the result and wait (up to ``flush_timeout``) until it and every earlier report are written.

        Raises :class:`ResultNotReported` with the last error when the result was not written.
        """
        self._flush_pending()
        with self._changed:
            self._result_written = None
        self._report(_Write("result", {"result": result.to_manifest()}))
        if self._done:
            return
        drained = self._wait_until_sent(self.flush_timeout)
        if self._result_written:
            return
        error = self._last_error or "no answer from the API server"
        if not drained:
            # The API has been failing for flush_timeout already; close() need not wait that long again.
            self._gave_up_flushing = True
            error = f"{error} (still not written after {self.flush_timeout:g} s)"
        raise ResultNotReported(error)

    def close(self, exit_code: int) -> None:
        """Send what is still queued (up to ``flush_timeout``) and stop the sender; never raises."""
        if self._done:
            return
        with contextlib.suppress(CannotReport):  # nothing was ever written and now cannot be; logged
            self._flush_pending()
        self._done = True
        if self._sender is None:
            return
        if not self._wait_until_sent(0.0 if self._gave_up_flushing else self.flush_timeout):
            log.error(
                "gave up writing FineTuneJob %s/%s status; the last error: %s",
                self.namespace,
                self.name,
                self._last_error,
            )
        self._stop.set()
        with self._changed:
            self._changed.notify_all()
        self._sender.join(timeout=1.0)  # a request in flight may hold it; the thread is a daemon

    def _flush_pending(self) -> None:
        if self._pending is not None:
            pending, self._pending = self._pending, None
            self._report(_progress_write(pending))

    # ------------------------------------------------------------------ delivery
    def _report(self, write: _Write) -> None:
        if self._done:
            return
        if self._sender is None:
            self._first_write(write)
            return
        with self._changed:
            if write.field == "progress":
                # Only the latest progress matters: fold a queued one into this one, which goes last.
                earlier = next((queued for queued in self._queue if queued.field == "progress"), None)
                if earlier is not None:
                    self._queue.remove(earlier)
                    write = _Write("progress", _merged(earlier.patch, write.patch))
            self._queue.append(write)
            self._changed.notify_all()

    def _first_write(self, write: _Write) -> None:
        """Synchronously, before any work: a trainer that cannot report must not train."""
        deadline = time.monotonic() + self.first_write_timeout
        attempt = 0
        while (failure := self._send(write.patch)) is not None:
            if not failure.transient:
                self._refuse(failure.description)
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                self._refuse(f"{failure.description} (no status write succeeded in {self.first_write_timeout:g} s)")
            self._log_failure(failure)
            time.sleep(min(self._delay(failure, attempt), remaining))
            attempt += 1
        if write.field == "result":
            self._result_written = True
        self._sender = threading.Thread(target=self._send_queued, name="kubetune-status", daemon=True)
        self._sender.start()

    def _refuse(self, description: str) -> NoReturn:
        self._done = True
        log.error("cannot write FineTuneJob %s/%s status, stopping: %s", self.namespace, self.name, description)
        raise CannotReport(description)

    def _send_queued(self) -> None:
        """The sender thread: one write at a time, in report order, until close() stops it."""
        while True:
            with self._changed:
                self._changed.wait_for(lambda: bool(self._queue) or self._stop.is_set())
                if self._stop.is_set():
                    return
                write = self._in_flight = self._queue.pop(0)
            written = self._deliver(write)
            with self._changed:
                self._in_flight = None
                if write.field == "result":
                    self._result_written = written
                self._changed.notify_all()

    def _deliver(self, write: _Write) -> bool:
        """Send one write, retrying what may heal until it is written or close() gives up."""
        attempt = 0
        while (failure := self._send(write.patch)) is not None:
            self._last_error = failure.description
            if not (failure.transient or failure.credentials):
                log.error(
                    "FineTuneJob %s/%s: the API server refused the %s status write, dropping it: %s",
                    self.namespace,
                    self.name,
                    write.field,
                    failure.description,
                )
                return False
            self._log_failure(failure)
            if self._stop.wait(self._delay(failure, attempt)):
                return False
            attempt += 1
        if attempt:
            log.info("FineTuneJob %s/%s status writes succeed again", self.namespace, self.name)
        return True

    def _send(self, patch: Patch) -> ApiFailure | None:
        try:
            if self._api is None:
                self._api = self.connect()
            self._api.patch_namespaced_custom_object_status(
                GROUP,
                VERSION,
                self.namespace,
                PLURAL,
                self.name,
                {"status": patch},
                _request_timeout=self.request_timeout,
            )
        except Exception as err:  # every failure is judged by ApiFailure; none may kill training or the sender
            return ApiFailure.of(err)
        return None

    def _delay(self, failure: ApiFailure, attempt: int) -> float:
        return failure.retry_after if failure.retry_after is not None else self.backoff.delay(attempt)

    def _wait_until_sent(self, timeout: float) -> bool:
        with self._changed:
            return self._changed.wait_for(lambda: not self._queue and self._in_flight is None, timeout)

    def _log_failure(self, failure: ApiFailure) -> None:
        now = time.monotonic()
        if now - self._last_failure_logged < FAILURE_LOG_INTERVAL:
            return
        self._last_failure_logged = now
        if failure.credentials:
            log.error(
                "cannot write FineTuneJob %s/%s status (credentials refused; retrying in case the Role or "
                "RoleBinding is restored): %s",
                self.namespace,
                self.name,
                failure.description,
            )
        else:
            log.warning(
                "cannot write FineTuneJob %s/%s status yet, retrying: %s",
                self.namespace,
                self.name,
                failure.description,
            )


def _progress_write(progress: Progress) -> _Write:
    return _Write("progress", {"progress": progress.model_copy(update={"updated_at": _now()}).to_manifest()})


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
