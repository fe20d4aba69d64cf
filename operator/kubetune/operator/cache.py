"""What the operator reads, served from its watches instead of the API server.

The operator already watches its FineTuneJobs and the Jobs it made (kopf delivers every change as an
event); ``ObjectCache`` keeps the latest body of each, fed by kopf index functions (main.py). kopf
runs every index function over the initial listing before any handler runs, so once a reconcile runs
the cache is complete: an object missing from it does not exist. The operator's own writes go in too
(the API server's answer to a create or patch), so a reconcile right after a write sees it before the
watch event arrives, and a late watch event never rolls a newer body back.

Why not read the API server (as the operator did): a reconcile needed about nine GETs, so at 1,000
FineTuneJobs created at once the operator spent its CPU on reads and fell a minute behind
(bench/operator.py measures both ways: ``KUBETUNE_READ_CACHE=false`` is the old behaviour).

``Ensured`` remembers the children nobody watches (the spec ConfigMap, the trainer's ServiceAccount,
Role and RoleBinding) once this process has seen them exist for their owner: they are made once per
FineTuneJob and nothing in the cluster changes them, so checking them again on every reconcile only
cost requests. A restarted operator checks each once more.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Iterable
from typing import Any

Key = tuple[str, str, str]  # (kind, namespace, name)
# Deleted objects' uids kept so that a write answered before the deletion cannot bring them back.
TOMBSTONES = 10_000


def _version(body: dict[str, Any]) -> int | None:
    """The resourceVersion as a number when it is one (etcd's revision is): only then are two comparable."""
    value = str(body.get("metadata", {}).get("resourceVersion", ""))
    return int(value) if value.isdigit() else None


def _key(kind: str, body: dict[str, Any]) -> Key:
    meta = body["metadata"]
    return kind, str(meta.get("namespace", "")), str(meta["name"])


class ObjectCache:
    """The latest body seen of each watched object: a thread-safe map the reconcile workers read."""

    def __init__(self, kinds: Iterable[str]) -> None:
        self.kinds = frozenset(kinds)
        self._objects: dict[Key, dict[str, Any]] = {}
        self._deleted: deque[str] = deque(maxlen=TOMBSTONES)
        self._deleted_set: set[str] = set()
        self._lock = threading.Lock()

    def serves(self, kind: str) -> bool:
        return kind in self.kinds

    def observe(self, kind: str, body: dict[str, Any]) -> None:
        """A body from a watch event, or the API server's answer to one of our writes: kept unless
        the cache already holds a newer version of the same object."""
        key = _key(kind, body)
        uid = str(body["metadata"].get("uid", ""))
        with self._lock:
            if uid in self._deleted_set:
                return
            held = self._objects.get(key)
            if held is not None and held["metadata"].get("uid") == uid:
                old, new = _version(held), _version(body)
                if old is not None and new is not None and new < old:
                    return
            self._objects[key] = body

    def forget(self, kind: str, body: dict[str, Any]) -> None:
        """The object was deleted (a DELETED watch event)."""
        key = _key(kind, body)
        uid = str(body["metadata"].get("uid", ""))
        with self._lock:
            held = self._objects.get(key)
            if held is not None and held["metadata"].get("uid") == uid:
                del self._objects[key]
            if uid and uid not in self._deleted_set:
                if len(self._deleted) == self._deleted.maxlen:
                    self._deleted_set.discard(self._deleted[0])
                self._deleted.append(uid)
                self._deleted_set.add(uid)

    def get(self, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        with self._lock:
            return self._objects.get((kind, namespace, name))

    def list(self, kind: str, namespace: str, labels: dict[str, str] | None = None) -> list[dict[str, Any]]:
        """Every cached ``kind`` in ``namespace`` carrying all of ``labels``."""
        wanted = (labels or {}).items()
        with self._lock:
            found = [body for (k, ns, _), body in self._objects.items() if k == kind and ns == namespace]
        return [body for body in found if wanted <= (body["metadata"].get("labels") or {}).items()]

    def __len__(self) -> int:
        with self._lock:
            return len(self._objects)


class Ensured:
    """Children this process saw exist for their owner: (kind, namespace, name) -> (owner uid, body)."""

    def __init__(self) -> None:
        self._seen: dict[Key, tuple[str, dict[str, Any]]] = {}
        self._lock = threading.Lock()

    def get(self, kind: str, namespace: str, name: str, owner_uid: str) -> dict[str, Any] | None:
        with self._lock:
            found = self._seen.get((kind, namespace, name))
        return found[1] if found is not None and found[0] == owner_uid else None

    def remember(self, kind: str, body: dict[str, Any], owner_uid: str) -> None:
        with self._lock:
            self._seen[_key(kind, body)] = (owner_uid, body)

    def forget_owner(self, owner_uid: str) -> None:
        with self._lock:
            for key in [key for key, (uid, _) in self._seen.items() if uid == owner_uid]:
                del self._seen[key]

    def __len__(self) -> int:
        with self._lock:
            return len(self._seen)
