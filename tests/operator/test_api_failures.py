"""What a real API server does to an operator: outages, throttling, lost responses, revoked tokens.

Each test injects the failure at the test API server, for the operator's identity only, and checks
the operator's observable behaviour (status, Jobs, Events) through the tenant's eyes.
"""

from __future__ import annotations

import time
from collections import Counter
from typing import Any

from tests.kubeapi.cluster import TestCluster
from tests.kubeapi.server import Outage
from tests.operator.cluster import Cluster, wait_for
from tests.operator.conftest import running_operator
from tests.operator.test_control import through_preflight
from tests.operator.test_lifecycle import JOB, phase


def operator_name(test_cluster: TestCluster) -> str:
    return test_cluster.operator_user.name


def phase_events(cluster: Cluster, name: str = "tickets") -> Counter[str]:
    return Counter(e["metadata"]["name"] for e in cluster.events_for(name) if e["reason"].startswith("Phase"))


def test_a_job_finished_during_an_outage_is_acted_on_when_the_outage_ends(
    test_cluster: TestCluster, cluster: Cluster, operator: Any
) -> None:
    through_preflight(cluster)
    cluster.start_job("tickets-train")
    wait_for(lambda: phase(cluster) == "Running", what="Running")
    outage_seconds = 3.0
    cluster.outage(Outage(user=operator_name(test_cluster), status=503, until=time.monotonic() + outage_seconds))
    ended = time.monotonic() + outage_seconds
    cluster.trainer_reports("tickets", {"result": {"version": "v1", "promoted": True}})
    cluster.finish_job("tickets-train", succeeded=True)  # its watch event reaches the operator during the outage
    wait_for(lambda: phase(cluster) == "Succeeded", timeout=30, what="Succeeded after the outage")
    late = time.monotonic() - ended
    # Retried on a capped backoff (0.5 s doubling), not at the next relist (minutes in a busy cluster).
    assert late < 6, f"acted on {late:.1f} s after the outage ended"


def test_a_watch_too_old_to_resume_relists_and_misses_nothing(
    test_cluster: TestCluster, cluster: Cluster, operator: Any
) -> None:
    """The API server drops every watch and compacts its history while the operator cannot reconnect:
    its resourceVersion is gone (410 Gone), it lists again, and acts on what happened meanwhile."""
    through_preflight(cluster)
    cluster.start_job("tickets-train")
    wait_for(lambda: phase(cluster) == "Running", what="Running")
    server = test_cluster.apiserver.server
    blocked = cluster.outage(
        Outage(verb="watch", user=operator_name(test_cluster), status=503, until=time.monotonic() + 3)
    )
    test_cluster.apiserver.call(server.end_watches)
    cluster.trainer_reports("tickets", {"result": {"version": "v1", "promoted": True}})
    cluster.finish_job("tickets-train", succeeded=True)
    test_cluster.apiserver.call(server.store.compact)
    wait_for(lambda: phase(cluster) == "Succeeded", timeout=30, what="Succeeded after relisting")
    assert blocked.refused > 0, "the operator tried to resume while it could not"
    assert server.watches_expired > 0, "it resumed from a compacted resourceVersion and was told 410 Gone"


def test_throttling_is_honoured_and_holds_no_worker(test_cluster: TestCluster, cluster: Cluster, operator: Any) -> None:
    """A 429 with Retry-After on one job's status writes delays that job by at least Retry-After,
    and meanwhile another job goes all the way through: no worker waits for the throttled one."""
    throttled = cluster.outage(
        Outage(
            verb="patch",
            plural="finetunejobs",
            subresource="status",
            name="slow",
            user=operator_name(test_cluster),
            status=429,
            retry_after=2,
            count=2,
        )
    )
    started = time.monotonic()
    cluster.apply({**JOB, "metadata": {"name": "slow"}})
    cluster.apply({**JOB, "metadata": {"name": "fast"}})
    wait_for(lambda: phase(cluster, "fast") == "Validating", what="the other job Validating")
    fast_done = time.monotonic() - started
    wait_for(lambda: phase(cluster, "slow") == "Validating", timeout=30, what="the throttled job Validating")
    slow_done = time.monotonic() - started
    assert throttled.refused == 2
    assert slow_done >= 4, f"Retry-After: 2 honoured twice (took {slow_done:.1f} s)"
    assert fast_done < 2, f"the other job was not held up ({fast_done:.1f} s)"


def test_an_event_whose_response_was_lost_is_not_posted_twice(
    test_cluster: TestCluster, cluster: Cluster, operator: Any
) -> None:
    # The first Event post commits, then the answer is a 500: the retry finds it (409) and moves on.
    lost = cluster.outage(Outage(verb="create", plural="events", user=operator_name(test_cluster), after_write=True))
    through_preflight(cluster)
    cluster.start_job("tickets-train")
    wait_for(lambda: phase(cluster) == "Running", what="Running")
    history = cluster.finetunejob("tickets")["status"]["phaseHistory"]
    assert [t["phase"] for t in history] == ["Validating", "Queued", "Running"]
    wait_for(lambda: len(phase_events(cluster)) == len(history), what="one Event per transition")
    assert lost.refused == 1
    assert set(phase_events(cluster).values()) == {1}


def test_a_restarted_operator_posts_the_events_its_predecessor_missed(
    test_cluster: TestCluster, cluster: Cluster
) -> None:
    events_down = Outage(
        verb="create", plural="events", user=operator_name(test_cluster), until=time.monotonic() + 3600
    )
    with running_operator(test_cluster):
        cluster.outage(events_down)
        cluster.apply(JOB)
        wait_for(lambda: phase(cluster) == "Validating", what="Validating")
        cluster.finish_job("tickets-preflight", succeeded=True)
        wait_for(lambda: phase(cluster) == "Queued", what="Queued")
        assert phase_events(cluster) == Counter(), "no Event got through the outage"
    events_down.until = time.monotonic()  # the API server recovers while no operator runs
    with running_operator(test_cluster):
        wait_for(lambda: len(phase_events(cluster)) == 2, what="the missed Events posted")
        time.sleep(1)
        names = phase_events(cluster)
    uid = cluster.finetunejob("tickets")["metadata"]["uid"]
    assert names == Counter({f"tickets.{uid[:8]}.phase-1": 1, f"tickets.{uid[:8]}.phase-2": 1})
    reasons = sorted(e["reason"] for e in cluster.events_for("tickets"))
    assert reasons == ["PhaseQueued", "PhaseValidating"]


def test_a_revoked_token_is_replaced_and_the_operator_keeps_working(
    test_cluster: TestCluster, cluster: Cluster, operator: Any
) -> None:
    """The kubelet rotates a projected ServiceAccount token; here its kubeconfig is rewritten."""
    cluster.apply({**JOB, "metadata": {"name": "before"}})
    wait_for(lambda: cluster.job("before-preflight"), what="a Job before the rotation")
    server = test_cluster.apiserver.server
    user = test_cluster.operator_user
    test_cluster.apiserver.call(lambda: server.authn.revoke_user(user))
    test_cluster.operator_kubeconfig()  # a new token in the same file
    test_cluster.apiserver.call(server.end_watches)  # watches reconnect, and must authenticate again
    cluster.apply({**JOB, "metadata": {"name": "after"}})
    wait_for(lambda: cluster.job("after-preflight"), timeout=30, what="a Job after the rotation")
    wait_for(lambda: phase(cluster, "after") == "Validating", what="its status written with the new token")
