"""Outbound webhooks through the real operator: a local receiver gets the job's end and its gate, signed,
retried, at least once across operator restarts, every delivery of one fact under one id."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from kubetune.operator.webhookpolicy import WebhookPolicy
from kubetune.operator.webhooks import Notification, due_notifications, slack_message
from tests.builders import trainer_result
from tests.kubeapi.cluster import OPERATOR_NAMESPACE, PLATFORM_WEBHOOK_SECRET, TestCluster
from tests.operator.cluster import Cluster, wait_for
from tests.operator.conftest import running_operator
from tests.operator.test_lifecycle import JOB, condition, phase
from tests.operator.test_tenancy import secret_contents_served
from tests.operator.test_validation import assert_rejected

SIGNING_KEY = "a-key-only-the-receiver-knows"


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes

    @property
    def document(self) -> dict[str, Any]:
        return dict(json.loads(self.body))

    def signed_with(self, key: str) -> bool:
        """The Standard Webhooks check a receiver makes: HMAC-SHA256 of ``id.timestamp.body``, base64."""
        signed = f"{self.headers['webhook-id']}.{self.headers['webhook-timestamp']}.".encode() + self.body
        expected = base64.b64encode(hmac.new(key.encode(), signed, hashlib.sha256).digest()).decode()
        return hmac.compare_digest(self.headers["webhook-signature"], "v1," + expected)


@dataclass
class Receiver:
    """An HTTP receiver on loopback answering ``answers`` in turn (then 200), recording every request."""

    server: ThreadingHTTPServer
    answers: list[int] = field(default_factory=list)
    received: list[Received] = field(default_factory=list)

    @property
    def port(self) -> int:
        return int(self.server.server_address[1])

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def acknowledged(self) -> list[Received]:
        return [r for r in self.received if r.headers.get("x-answered") == "200"]


@pytest.fixture()
def receiver() -> Iterator[Receiver]:
    state: dict[str, Receiver] = {}

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            owner = state["receiver"]
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            answer = owner.answers.pop(0) if owner.answers else 200
            headers = {k.lower(): v for k, v in self.headers.items()} | {"x-answered": str(answer)}
            owner.received.append(Received(self.path, headers, body))
            self.send_response(answer)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *_: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    state["receiver"] = found = Receiver(server)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield found
    server.shutdown()
    server.server_close()


def with_webhooks(*webhooks: dict[str, str]) -> dict[str, Any]:
    return {**JOB, "spec": {**JOB["spec"], "notifications": {"webhooks": list(webhooks)}}}


def delivered(cluster: Cluster) -> dict[str, str]:
    return dict(cluster.finetunejob("tickets").get("status", {}).get("notificationsDelivered") or {})


def test_the_end_and_the_gate_reach_each_webhook_signed_after_retries(
    cluster: Cluster, test_cluster: TestCluster, receiver: Receiver
) -> None:
    """Two receivers (CloudEvents and Slack); the first two POSTs answered 503: each fact arrives, retried
    with the same id and signed with the Secret's key; the first failure is a Warning Event."""
    cluster.create_secret("events-hook", {"url": receiver.url("/events"), "signingKey": SIGNING_KEY}, webhook=True)
    cluster.create_secret("chat-hook", {"url": receiver.url("/chat"), "signingKey": SIGNING_KEY}, webhook=True)
    receiver.answers[:] = [503, 503]
    hooks = (
        {"name": "events", "secretName": "events-hook"},
        {"name": "chat", "secretName": "chat-hook", "format": "slack"},
    )
    with running_operator(test_cluster, KUBETUNE_ALLOWED_WEBHOOK_ENDPOINTS=f"*,127.0.0.1:{receiver.port}"):
        cluster.apply(with_webhooks(*hooks))
        wait_for(lambda: cluster.job("tickets-preflight"), what="pre-flight Job")
        cluster.finish_job("tickets-preflight", succeeded=True)
        wait_for(lambda: cluster.job("tickets-train"), what="training Job")
        cluster.trainer_reports("tickets", {"result": trainer_result("v2", promoted=False)})
        cluster.finish_job("tickets-train", succeeded=True)
        wait_for(lambda: condition(cluster, "QualityGatePassed").get("status") == "False", what="gate judged")
        wait_for(lambda: len(delivered(cluster)) == 4, timeout=30, what="four deliveries recorded")

    uid = cluster.finetunejob("tickets")["metadata"]["uid"]
    events = [r for r in receiver.acknowledged() if r.path == "/events"]
    assert sorted(r.document["type"] for r in events) == [
        "dev.kubetune.finetunejob.gate.failed",
        "dev.kubetune.finetunejob.succeeded",
    ]
    for request in receiver.received:
        assert request.signed_with(SIGNING_KEY), request.headers
        assert request.headers["webhook-id"].startswith(uid + ".")
    gate = next(r.document for r in events if r.document["type"].endswith("gate.failed"))
    assert gate["specversion"] == "1.0" and gate["id"] == f"{uid}.gate"
    assert gate["source"] == "/apis/kubetune.dev/v1alpha1/namespaces/default/finetunejobs/tickets"
    assert gate["data"]["reason"] == "QualityGateNotMet" and gate["data"]["version"] == "v2"
    assert [c["name"] for c in gate["data"]["checks"]] == ["task", "forgetting.knownAnswers"]
    assert {r.headers["content-type"] for r in events} == {"application/cloudevents+json"}
    chat = sorted(r.document["text"].splitlines()[0] for r in receiver.acknowledged() if r.path == "/chat")
    assert chat[0].startswith("FineTuneJob default/tickets: Succeeded (")
    assert chat[1] == "FineTuneJob default/tickets: quality gate not passed (QualityGateNotMet)"
    # The two refused POSTs were retried under the id they were first sent with.
    refused = [r for r in receiver.received if r.headers["x-answered"] == "503"]
    assert len(refused) == 2
    for attempt in refused:
        same = [
            r
            for r in receiver.acknowledged()
            if (r.path, r.headers["webhook-id"]) == (attempt.path, attempt.headers["webhook-id"])
        ]
        assert len(same) == 1, "the refused POST is delivered again, once, under its id"
    facts = (f"phase-{_succeeded_id(cluster)}", "gate")
    assert set(delivered(cluster)) == {f"{uid}.{fact}/{hook}" for fact in facts for hook in ("events", "chat")}
    warnings = [e for e in cluster.events_for("tickets") if e["reason"] == "WebhookNotDelivered"]
    assert warnings and "the receiver answered 503" in warnings[0]["message"]
    # The operator read the webhooks' Secrets whole, no other, and wrote neither value anywhere.
    operator_user = test_cluster.operator_user.name
    read = {served[2] for served in secret_contents_served(test_cluster) if served[0] == operator_user}
    assert read == {"events-hook", "chat-hook"}
    seen = json.dumps([cluster.finetunejob("tickets"), cluster.events_for("tickets"), cluster.jobs()])
    assert SIGNING_KEY not in seen and f"127.0.0.1:{receiver.port}/events" not in seen


def _succeeded_id(cluster: Cluster) -> str:
    history = cluster.finetunejob("tickets")["status"]["phaseHistory"]
    return str(next(t["id"] for t in history if t["phase"] == "Succeeded"))


def test_a_failure_arrives_at_least_once_across_restarts_under_one_id(
    cluster: Cluster, test_cluster: TestCluster, receiver: Receiver
) -> None:
    """A receiver on loopback the platform did not list is refused (Warning Event, nothing sent); listed
    by the next operator, it answers 500 to the first POST; a third operator sends nothing more."""
    cluster.create_secret("hook", {"url": receiver.url("/hook"), "signingKey": SIGNING_KEY}, webhook=True)
    with running_operator(test_cluster):
        cluster.apply(with_webhooks({"name": "ops", "secretName": "hook"}))
        wait_for(lambda: cluster.job("tickets-preflight"), what="pre-flight Job")
        cluster.finish_job("tickets-preflight", succeeded=False, reason="PodFailurePolicy")
        wait_for(lambda: phase(cluster) == "Failed", what="phase Failed")
        warning = wait_for(
            lambda: next((e for e in cluster.events_for("tickets") if e["reason"] == "WebhookNotDelivered"), None),
            what="the refusal's Warning Event",
        )
    assert "127.0.0.1 is a loopback address" in warning["message"], warning["message"]
    assert receiver.received == [] and delivered(cluster) == {}

    receiver.answers[:] = [500]
    listed = {"KUBETUNE_ALLOWED_WEBHOOK_ENDPOINTS": f"127.0.0.1:{receiver.port}"}
    with running_operator(test_cluster, **listed):
        wait_for(lambda: delivered(cluster), timeout=30, what="the delivery recorded")
    ids = {r.headers["webhook-id"] for r in receiver.received}
    assert [r.headers["x-answered"] for r in receiver.received] == ["500", "200"]
    (fact,) = ids
    assert receiver.received[1].document["type"] == "dev.kubetune.finetunejob.failed"
    assert receiver.received[1].document["data"]["reason"] == "PreflightFailed"

    with running_operator(test_cluster, **listed):
        cluster.patch_spec("tickets", {"suspend": True})  # one more reconcile of the finished job
        wait_for(
            lambda: cluster.finetunejob("tickets")["status"].get("observedGeneration") == 2,
            what="the restarted operator's reconcile",
        )
    assert len(receiver.received) == 2, "a delivery recorded in status is not sent again"
    assert list(delivered(cluster)) == [f"{fact}/ops"]


@pytest.mark.parametrize(
    ("secret", "reason", "said"),
    [
        ("hook", "SecretNotFound", "Secret 'hook' not found"),
        ("app-secret", "SecretNotAllowed", "Secret 'app-secret' is not labelled kubetune.dev/webhook=true"),
    ],
)
def test_a_webhook_secret_must_exist_and_be_opted_in(
    cluster: Cluster, operator: Any, secret: str, reason: str, said: str
) -> None:
    """The operator reads a webhook Secret's data, so only a Secret a namespace admin labelled may be named."""
    cluster.create_secret("app-secret", {"url": "https://hooks.example.com/x", "signingKey": "k"}, s3_credentials=False)
    cluster.apply(with_webhooks({"name": "ops", "secretName": secret}))
    assert_rejected(cluster, reason, f"spec.notifications.webhooks[0].secretName: {said}")


def test_the_platforms_webhook_hears_of_every_job(
    cluster: Cluster, test_cluster: TestCluster, receiver: Receiver
) -> None:
    """notifications.webhooks in the chart: a Secret of the operator's namespace (the chart grants reading it
    and no other there), no tenant opt-in, its URL the platform's choice; a job naming no webhook is told."""
    secret = {"url": receiver.url("/platform"), "signingKey": SIGNING_KEY}
    encoded = {key: base64.b64encode(value.encode()).decode() for key, value in secret.items()}
    test_cluster.installer.core.create_namespaced_secret(
        OPERATOR_NAMESPACE,
        {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": PLATFORM_WEBHOOK_SECRET}, "data": encoded},
    )
    platform = json.dumps([{"name": "ops", "secretName": PLATFORM_WEBHOOK_SECRET, "format": "slack"}])
    with running_operator(test_cluster, KUBETUNE_PLATFORM_WEBHOOKS=platform):
        cluster.apply(JOB)
        wait_for(lambda: cluster.job("tickets-preflight"), what="pre-flight Job")
        cluster.finish_job("tickets-preflight", succeeded=False, reason="PodFailurePolicy")
        wait_for(lambda: delivered(cluster), what="the platform's delivery recorded")
    uid = cluster.finetunejob("tickets")["metadata"]["uid"]
    (request,) = receiver.received
    assert request.signed_with(SIGNING_KEY)
    assert request.document["text"].startswith("FineTuneJob default/tickets: Failed (PreflightFailed)")
    assert list(delivered(cluster)) == [f"{request.headers['webhook-id']}/platform.ops"]
    assert request.headers["webhook-id"].startswith(uid)


def test_only_terminal_transitions_and_a_judged_gate_are_told() -> None:
    body = {
        "metadata": {"namespace": "team", "name": "j", "uid": "u1"},
        "status": {
            "phaseHistory": [
                {"id": 1, "phase": "Validating", "reason": "Validating", "time": "t1"},
                {"id": 2, "phase": "Running", "reason": "Running", "time": "t2"},
                {"id": 3, "phase": "Succeeded", "previousPhase": "Running", "reason": "Succeeded", "time": "t3"},
            ],
            "conditions": [
                {
                    "type": "QualityGatePassed",
                    "status": "True",
                    "reason": "QualityGatePassed",
                    "lastTransitionTime": "t3",
                }
            ],
            "result": trainer_result("v7"),
        },
    }
    told = due_notifications(body)
    assert [(n.id, n.type) for n in told] == [
        ("u1.phase-3", "dev.kubetune.finetunejob.succeeded"),
        ("u1.gate", "dev.kubetune.finetunejob.gate.passed"),
    ]
    assert told[1].data["version"] == "v7" and told[1].data["passed"] is True
    running = {
        **body,
        "status": {**body["status"], "phaseHistory": body["status"]["phaseHistory"][:2], "conditions": []},
    }
    assert due_notifications(running) == []
    gate = Notification("u1.gate", "x", "t", {**told[1].data, "message": "task 0.4 -> 0.9"})
    assert slack_message(gate)["text"] == (
        "FineTuneJob team/j: quality gate passed (QualityGatePassed)\ntask 0.4 -> 0.9\nversion v7"
    )


@pytest.mark.parametrize(
    ("url", "why"),
    [
        ("https://hooks.example.com/services/T0", None),
        ("http://hooks.example.com/x", "must use https"),
        ("https://10.0.0.5/x", "a private or reserved address"),
        ("https://metadata.google.internal/x", "a cluster-internal name"),
        ("https://user:pw@hooks.example.com/x", "credentials"),
        ("https://rebound.example.com/x", "resolves to 169.254.169.254"),
        ("ftp://hooks.example.com/x", "http(s)://"),
    ],
)
def test_webhook_urls_inside_the_cluster_or_the_node_are_refused(url: str, why: str | None) -> None:
    def resolver(host: str, _port: int) -> list[str]:
        return ["169.254.169.254"] if host.startswith("rebound") else ["93.184.215.14"]

    refusal = WebhookPolicy.parse(["*"]).refusal(url, resolver=resolver)
    assert (refusal is None) if why is None else (refusal is not None and why in refusal), refusal
    assert WebhookPolicy.parse(["hooks.example.com"]).refusal("http://hooks.example.com/x") is None
    unlisted = WebhookPolicy.parse(["a.example.com"]).refusal("https://hooks.example.com/x")
    assert unlisted is not None and "not in the platform's allowed webhook endpoints" in unlisted
