"""Outbound webhooks: a FineTuneJob's end and its quality gate, told to the receivers its spec names
and to the platform's own (Helm value ``notifications.webhooks``).

What is told is derived from status, like the phase Events (events.py): each terminal transition in
``status.phaseHistory`` and the ``QualityGatePassed`` condition, each with an id stable per (job uid,
fact), so every delivery of one fact, a retry or a restarted operator's, carries the same id and a
receiver can drop duplicates. A receiver's 2xx answer is recorded in ``status.notificationsDelivered``;
what is not recorded there is sent again, by this process's retries with backoff or by the next
operator's first reconcile of the job: delivered at least once.

Sending never blocks a reconcile: the reconcile only offers what is due; one thread sends, reading
the webhook's Secret (URL and signing key) at each attempt, checking the URL against the platform's
policy (webhookpolicy.py) and signing the body as Standard Webhooks do (``webhook-id``,
``webhook-timestamp``, ``webhook-signature: v1,<base64 HMAC-SHA256 of id.timestamp.body>``).

The CloudEvents envelope (structured mode, JSON) is eight fields, built here rather than with the
CloudEvents SDK, which would add a dependency to the operator image for them.
"""

from __future__ import annotations

import base64
import hashlib
import heapq
import hmac
import json
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import urllib3
from kubernetes.client.rest import ApiException
from pydantic import ValidationError

from kubetune.api.v1alpha1 import (
    API_VERSION,
    KIND,
    PLURAL,
    TERMINAL_PHASES,
    WEBHOOK_SIGNING_KEY,
    WEBHOOK_URL_KEY,
    NotificationsSpec,
    WebhookFormat,
    WebhookSpec,
)
from kubetune.operator.events import build_event
from kubetune.operator.kube import Kube
from kubetune.operator.validation import WEBHOOK_LABEL
from kubetune.operator.webhookpolicy import Resolver, WebhookPolicy, resolve

log = logging.getLogger("kubetune.operator")
EVENT_TYPE_PREFIX = "dev.kubetune.finetunejob"
REQUEST_TIMEOUT_SECONDS = 10.0
FIRST_RETRY_SECONDS = 1.0
MAX_RETRY_SECONDS = 300.0  # a receiver down for hours is still tried every five minutes
STATUS_FIELD = "notificationsDelivered"


@dataclass(frozen=True)
class Notification:
    """One fact about a FineTuneJob, told to each of its webhooks."""

    id: str  # "<job uid>.phase-<transition id>" or "<job uid>.gate": stable across retries and restarts
    type: str
    time: str
    data: dict[str, Any]


def delivery_key(notification: Notification, webhook: str) -> str:
    """The key of ``status.notificationsDelivered`` recording that ``webhook`` acknowledged it."""
    return f"{notification.id}/{webhook}"


def due_notifications(body: dict[str, Any]) -> list[Notification]:
    """What the FineTuneJob ``body``'s status says happened that webhooks are told about."""
    meta, status = body["metadata"], body.get("status") or {}
    subject = {"namespace": meta["namespace"], "name": meta["name"], "uid": meta["uid"]}
    result = status.get("result") or {}
    published = {key: result[key] for key in ("version", "manifestUri") if result.get(key) is not None}
    found = []
    for transition in status.get("phaseHistory") or []:
        phase = transition["phase"]
        if phase not in TERMINAL_PHASES:
            continue
        data = {
            **subject,
            "phase": phase,
            "previousPhase": transition.get("previousPhase"),
            "reason": transition.get("reason", ""),
            "message": transition.get("message", ""),
            **published,
        }
        found.append(
            Notification(
                f"{meta['uid']}.phase-{int(transition['id'])}",
                f"{EVENT_TYPE_PREFIX}.{phase.lower()}",
                transition["time"],
                data,
            )
        )
    gate = next((c for c in status.get("conditions") or [] if c.get("type") == "QualityGatePassed"), None)
    if gate is not None and gate.get("status") in ("True", "False"):
        passed = gate["status"] == "True"
        data = {
            **subject,
            "passed": passed,
            "reason": gate.get("reason", ""),
            "message": gate.get("message", ""),
            "checks": result.get("gateChecks") or [],
            **published,
        }
        kind = "passed" if passed else "failed"
        found.append(
            Notification(f"{meta['uid']}.gate", f"{EVENT_TYPE_PREFIX}.gate.{kind}", gate["lastTransitionTime"], data)
        )
    return found


def cloudevent(notification: Notification) -> dict[str, Any]:
    """The CloudEvents 1.0 event (structured content mode) of ``notification``."""
    data = notification.data
    return {
        "specversion": "1.0",
        "id": notification.id,
        "source": f"/apis/{API_VERSION}/namespaces/{data['namespace']}/{PLURAL}/{data['name']}",
        "type": notification.type,
        "subject": data["name"],
        "time": notification.time,
        "datacontenttype": "application/json",
        "data": data,
    }


def slack_message(notification: Notification) -> dict[str, Any]:
    """A Slack incoming-webhook message (``text``) saying what ``notification`` says."""
    data = notification.data
    what = f"{KIND} {data['namespace']}/{data['name']}"
    if "phase" in data:
        line = f"{what}: {data['phase']} ({data['reason']})"
    else:
        line = f"{what}: quality gate {'passed' if data['passed'] else 'not passed'} ({data['reason']})"
    details = [data.get("message") or "", f"version {data['version']}" if data.get("version") else ""]
    return {"text": "\n".join([line, *(d for d in details if d)])}


def payload(notification: Notification, form: WebhookFormat) -> tuple[bytes, str]:
    """(body, content type) of ``notification`` in the webhook's format."""
    if form == WebhookFormat.SLACK:
        return json.dumps(slack_message(notification)).encode(), "application/json"
    return json.dumps(cloudevent(notification)).encode(), "application/cloudevents+json"


def signature(key: bytes, message_id: str, timestamp: int, body: bytes) -> str:
    """The ``webhook-signature`` header: ``v1,`` and the base64 HMAC-SHA256 of ``id.timestamp.body``."""
    signed = f"{message_id}.{timestamp}.".encode() + body
    return "v1," + base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()


PLATFORM_PREFIX = "platform."  # a job's webhook name is a DNS label (no dot): the two never collide


@dataclass(frozen=True)
class Receiver:
    """Where one webhook's notifications go: a job's own, or one the platform sends every job's to."""

    name: str  # names it in status.notificationsDelivered and Events: the job's name for it, or platform.<name>
    secret_namespace: str
    webhook: WebhookSpec
    # The platform's own (Helm value notifications.webhooks): its Secret, in the operator's namespace,
    # needs no tenant opt-in label, and its URL is the platform's choice, not held to the tenants' policy.
    platform: bool = False


def _job_webhooks(body: dict[str, Any]) -> list[WebhookSpec]:
    try:
        parsed = NotificationsSpec.model_validate((body.get("spec") or {}).get("notifications") or {})
    except ValidationError:
        return []  # the API server's schema refuses such a spec; nothing to tell and no one to tell it to
    return parsed.webhooks


class NotDelivered(Exception):
    """A delivery attempt that did not get a 2xx answer, and why: retried later."""


@dataclass(order=True)
class _Delivery:
    due: float
    key: tuple[str, str] = field(compare=False)  # (job uid, delivery key)
    namespace: str = field(compare=False)
    name: str = field(compare=False)
    notification: Notification = field(compare=False)
    receiver: Receiver = field(compare=False)
    attempts: int = field(default=0, compare=False)


class WebhookSender:
    """Sends what reconciles offer, on its own thread, until each receiver acknowledges."""

    def __init__(
        self,
        kube: Kube,
        policy: WebhookPolicy,
        *,
        platform: tuple[WebhookSpec, ...] = (),
        platform_namespace: str | None = None,
        resolver: Resolver = resolve,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._kube, self._policy, self._resolver, self._clock = kube, policy, resolver, clock
        self._platform = [
            Receiver(PLATFORM_PREFIX + webhook.name, platform_namespace or "", webhook, platform=True)
            for webhook in platform
        ]
        self._http = urllib3.PoolManager(retries=False, timeout=REQUEST_TIMEOUT_SECONDS)
        self._queue: list[_Delivery] = []
        self._pending: set[tuple[str, str]] = set()
        self._warned: set[tuple[str, str]] = set()
        self._wake = threading.Condition()
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="kubetune-webhooks", daemon=True)

    def start(self) -> WebhookSender:
        self._thread.start()
        return self

    def stop(self) -> None:
        with self._wake:
            self._stopping = True
            self._wake.notify()
        self._thread.join(timeout=REQUEST_TIMEOUT_SECONDS + 5)

    def offer(self, body: dict[str, Any]) -> None:
        """Queue every notification of ``body`` (a FineTuneJob with its current status) that a receiver has
        not acknowledged and that is not queued already. Returns at once."""
        meta = body["metadata"]
        receivers = [Receiver(w.name, meta["namespace"], w) for w in _job_webhooks(body)] + self._platform
        if not receivers:
            return
        delivered = (body.get("status") or {}).get(STATUS_FIELD) or {}
        with self._wake:
            for notification in due_notifications(body):
                for receiver in receivers:
                    key = (meta["uid"], delivery_key(notification, receiver.name))
                    if key[1] in delivered or key in self._pending:
                        continue
                    self._pending.add(key)
                    delivery = _Delivery(self._clock(), key, meta["namespace"], meta["name"], notification, receiver)
                    heapq.heappush(self._queue, delivery)
            self._wake.notify()

    def forget(self, uid: str) -> None:
        """A deleted FineTuneJob: nothing more of it is sent."""
        with self._wake:
            self._queue = [d for d in self._queue if d.key[0] != uid]
            heapq.heapify(self._queue)
            self._pending = {key for key in self._pending if key[0] != uid}
            self._warned = {key for key in self._warned if key[0] != uid}

    def _run(self) -> None:
        while True:
            with self._wake:
                while not self._stopping and (not self._queue or self._queue[0].due > self._clock()):
                    self._wake.wait(timeout=self._queue[0].due - self._clock() if self._queue else None)
                if self._stopping:
                    return
                delivery = heapq.heappop(self._queue)
            self._attempt(delivery)

    def _attempt(self, delivery: _Delivery) -> None:
        try:
            self._send(delivery)
            self._record(delivery)
        except NotDelivered as err:
            self._retry(delivery, str(err))
        except ApiException as err:
            if err.status == 404:  # the FineTuneJob is gone
                self.forget(delivery.key[0])
                return
            self._retry(delivery, f"the API server answered {err.status}")
        except Exception as err:  # one bad delivery must not stop the thread
            self._retry(delivery, f"unexpected {type(err).__name__}")  # not its message: it may hold the URL
        else:
            with self._wake:
                self._pending.discard(delivery.key)

    def _send(self, delivery: _Delivery) -> None:
        receiver = delivery.receiver
        secret_name = receiver.webhook.secret_name
        secret = self._kube.read_webhook_secret(receiver.secret_namespace, secret_name)
        if secret is None:
            raise NotDelivered(f"Secret '{secret_name}' not found in namespace '{receiver.secret_namespace}'")
        opted_in = (secret.get("metadata", {}).get("labels") or {}).get(WEBHOOK_LABEL) == "true"
        if not receiver.platform and not opted_in:
            raise NotDelivered(f"Secret '{secret_name}' is not labelled {WEBHOOK_LABEL}=true")
        data = secret.get("data") or {}
        missing = [key for key in (WEBHOOK_URL_KEY, WEBHOOK_SIGNING_KEY) if not data.get(key)]
        if missing:  # an empty signing key would sign with nothing a receiver can trust
            raise NotDelivered(f"Secret '{secret_name}' has no key {' or '.join(missing)}, or it is empty")
        url = base64.b64decode(data[WEBHOOK_URL_KEY]).decode().strip()
        if not receiver.platform and (why := self._policy.refusal(url, resolver=self._resolver)) is not None:
            raise NotDelivered(f"the URL in Secret '{secret_name}' is refused: {why}")
        body, content_type = payload(delivery.notification, receiver.webhook.format)
        timestamp = int(self._clock())
        headers = {
            "Content-Type": content_type,
            "webhook-id": delivery.notification.id,
            "webhook-timestamp": str(timestamp),
            "webhook-signature": signature(
                base64.b64decode(data[WEBHOOK_SIGNING_KEY]), delivery.notification.id, timestamp, body
            ),
            "User-Agent": "kubetune-operator",
        }
        try:
            answer = self._http.request("POST", url, body=body, headers=headers, redirect=False)
        except urllib3.exceptions.HTTPError as err:
            raise NotDelivered(f"POST failed: {type(err).__name__}") from err
        if not 200 <= answer.status < 300:
            raise NotDelivered(f"the receiver answered {answer.status}")

    def _record(self, delivery: _Delivery) -> None:
        now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        status = {STATUS_FIELD: {delivery.key[1]: now}}
        self._kube.patch_finetunejob_status(delivery.namespace, delivery.name, status)

    def _retry(self, delivery: _Delivery, why: str) -> None:
        delivery.attempts += 1
        delay = min(FIRST_RETRY_SECONDS * 2 ** (delivery.attempts - 1), MAX_RETRY_SECONDS)
        log.warning(
            "webhook %s of %s/%s not delivered (%s), attempt %d; again in %.0f s",
            delivery.receiver.name,
            delivery.namespace,
            delivery.name,
            why,
            delivery.attempts,
            delay,
        )
        self._warn_once(delivery, why)
        delivery.due = self._clock() + delay
        with self._wake:
            if delivery.key in self._pending:  # not forgotten meanwhile
                heapq.heappush(self._queue, delivery)
                self._wake.notify()

    def _warn_once(self, delivery: _Delivery, why: str) -> None:
        """A Warning Event on the FineTuneJob at the first failed attempt of each delivery, saying why."""
        if delivery.key in self._warned:
            return
        self._warned.add(delivery.key)
        fact = delivery.notification.id.rsplit(".", 1)[-1]
        body = {"metadata": {"name": delivery.name, "namespace": delivery.namespace, "uid": delivery.key[0]}}
        event = build_event(
            body,
            KIND,
            f"webhook-{delivery.receiver.name}-{fact}",
            reason="WebhookNotDelivered",
            message=f"webhook {delivery.receiver.name}: {why}; retrying with backoff",
            warning=True,
            time=datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        )
        try:
            self._kube.create_event(event)
        except ApiException:
            log.warning("could not post the Event for webhook %s", delivery.receiver.name)
