"""Phase Events: exactly one per recorded transition, never lost, never doubled.

Each phase transition is recorded in ``status.phaseHistory`` with an id (status.py), in the same
status write that changes the phase. Its Event gets a name derived from the FineTuneJob's uid and
that id, so posting it is idempotent: a post retried after a 500 whose write had committed, or a
restarted operator posting the Events of every recorded transition, gets 409 for an Event that
exists, and creates the one that does not.
"""

from __future__ import annotations

import hashlib
import logging
import os
from typing import Any

from kubetune.api.v1alpha1 import API_VERSION, KIND
from kubetune.operator.kube import Kube

log = logging.getLogger("kubetune.operator")
COMPONENT = "kubetune-operator"
MAX_NAME = 253  # Events are named like any object: a DNS-1123 subdomain
MAX_MESSAGE = 1024


def event_name(owner_name: str, owner_uid: str, what: str) -> str:
    """``<owner>.<uid prefix>.<what>``: one name per owner and recorded fact, so a post is idempotent."""
    suffix = f".{owner_uid[:8]}.{what}"
    if len(owner_name) + len(suffix) <= MAX_NAME:
        return owner_name + suffix
    digest = hashlib.sha256(owner_name.encode()).hexdigest()[:8]
    return f"{owner_name[: MAX_NAME - len(suffix) - 9].rstrip('-.')}-{digest}{suffix}"


def build_event(
    body: dict[str, Any], kind: str, what: str, *, reason: str, message: str, warning: bool, time: str
) -> dict[str, Any]:
    """The core/v1 Event of one recorded fact (``what``) about the object ``body`` of ``kind``."""
    meta = body["metadata"]
    return {
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {"name": event_name(meta["name"], meta["uid"], what), "namespace": meta["namespace"]},
        "involvedObject": {
            "apiVersion": API_VERSION,
            "kind": kind,
            "name": meta["name"],
            "namespace": meta["namespace"],
            "uid": meta["uid"],
        },
        "reason": reason,
        "message": message[:MAX_MESSAGE],
        "type": "Warning" if warning else "Normal",
        "firstTimestamp": time,
        "lastTimestamp": time,
        "count": 1,
        "source": {"component": COMPONENT},
        "reportingComponent": COMPONENT,
        "reportingInstance": os.environ.get("HOSTNAME", COMPONENT)[:128],
    }


def build_phase_event(body: dict[str, Any], transition: dict[str, Any]) -> dict[str, Any]:
    """The core/v1 Event for one recorded transition of the FineTuneJob ``body``."""
    phase = transition["phase"]
    message = f"{transition.get('previousPhase') or 'New'} -> {phase}: {transition.get('message', '')}".rstrip(": ")
    return build_event(
        body,
        KIND,
        f"phase-{int(transition['id'])}",
        reason=f"Phase{phase}",
        message=message,
        warning=phase == "Failed",
        time=transition["time"],
    )


class PhaseEvents:
    """Posts the Events of recorded transitions this process has not posted yet.

    The set of posted ids lives in memory only: after a restart every recorded transition is
    posted once more, and the ones that exist answer 409.
    """

    def __init__(self) -> None:
        self._posted: set[tuple[str, int]] = set()

    def post_recorded(self, kube: Kube, body: dict[str, Any]) -> None:
        uid = body["metadata"]["uid"]
        for transition in (body.get("status") or {}).get("phaseHistory") or []:
            key = (uid, int(transition["id"]))
            if key in self._posted:
                continue
            kube.create_event(build_phase_event(body, transition))  # raises on a transient error: retried
            self._posted.add(key)

    def forget(self, uid: str) -> None:
        self._posted = {key for key in self._posted if key[0] != uid}
