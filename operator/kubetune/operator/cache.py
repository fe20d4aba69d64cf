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

Bodies are held as their JSON text, parsed again on each read: as Python dicts the 3,000 bodies of
1,000 FineTuneJobs took about 80 MB, as text about 12 MB, and a parse costs tens of microseconds,
a few per reconcile. Each read also hands out a copy no other reader shares.
"""

from __future__ import annotations

import json
import threading
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass
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


@dataclass(frozen=True)
class _Held:
    uid: str
    version: int | None
    labels: dict[str, str]
    text: bytes

    @classmethod
    def of(cls, body: dict[str, Any]) -> _Held:
        meta = body["metadata"]
        labels = {str(k): str(v) for k, v in (meta.get("labels") or {}).items()}
        return cls(str(meta.get("uid", "")), _version(body), labels, json.dumps(body).encode())

    def body(self) -> dict[str, Any]:
        return dict(json.loads(self.text))


class ObjectCache:
    """The latest body seen of each watched object: a thread-safe map the reconcile workers read."""

    def __init__(self, kinds: Iterable[str]) -> None:
        self.kinds = frozenset(kinds)
        self._objects: dict[Key, _Held] = {}
        self._deleted: deque[str] = deque(maxlen=TOMBSTONES)
        self._deleted_set: set[str] = set()
        self._lock = threading.Lock()

    def serves(self, kind: str) -> bool:
        return kind in self.kinds

    def observe(self, kind: str, body: dict[str, Any]) -> None:
        """A body from a watch event, or the API server's answer to one of our writes: kept unless
        the cache already holds a newer version of the same object."""
        key, new = _key(kind, body), _Held.of(body)
        with self._lock:
            if new.uid in self._deleted_set:
                return
            if self._older(self._objects.get(key), new):
                return
            self._objects[key] = new

    @staticmethod
    def _older(held: _Held | None, new: _Held) -> bool:
        """Whether ``new`` is an older version of the object held (comparable versions only)."""
        if held is None or held.uid != new.uid or held.version is None or new.version is None:
            return False
        return new.version < held.version

    def forget(self, kind: str, body: dict[str, Any]) -> None:
        """The object was deleted (a DELETED watch event)."""
        key = _key(kind, body)
        uid = str(body["metadata"].get("uid", ""))
        with self._lock:
            held = self._objects.get(key)
            if held is not None and held.uid == uid:
                del self._objects[key]
            if uid and uid not in self._deleted_set:
                if len(self._deleted) == self._deleted.maxlen:
                    self._deleted_set.discard(self._deleted[0])
                self._deleted.append(uid)
                self._deleted_set.add(uid)

    def get(self, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        with self._lock:
            held = self._objects.get((kind, namespace, name))
        return held.body() if held is not None else None

    def list(self, kind: str, namespace: str, labels: dict[str, str] | None = None) -> list[dict[str, Any]]:
        """Every cached ``kind`` in ``namespace`` carrying all of ``labels``."""
        wanted = (labels or {}).items()
        with self._lock:
            found = [held for (k, ns, _), held in self._objects.items() if k == kind and ns == namespace]
        return [held.body() for held in found if wanted <= held.labels.items()]

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
        """Kept: the child's identity, not its content (nobody reads these children back)."""
        meta = body["metadata"]
        kept = {"kind": kind, "metadata": {k: meta[k] for k in ("name", "namespace", "uid") if k in meta}}
        with self._lock:
            self._seen[_key(kind, body)] = (owner_uid, kept)

    def forget_owner(self, owner_uid: str) -> None:
        with self._lock:
            for key in [key for key, (uid, _) in self._seen.items() if uid == owner_uid]:
                del self._seen[key]

    def __len__(self) -> int:
        with self._lock:
            return len(self._seen)
