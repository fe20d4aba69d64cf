"""Indexed object storage with resourceVersions and a bounded watch history, as etcd plus the watch cache.

- Objects are indexed by resource, namespace and name: reads and writes never scan other objects.
- Every write takes the next global resourceVersion; each resource keeps its last ``capacity``
  events so that a watch can resume from a resourceVersion with nothing lost in between. A watch
  from a version older than what is kept gets ``410 Gone`` and the client must list again, as with
  a real API server's watch cache.
- Stored objects are never mutated in place: each write stores a new dict, so an event can share it.

Everything here runs on the server's event loop thread; no locks.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from tests.kubeapi.selectors import Matcher

ResourceKey = tuple[str, str]  # (group, plural)
ObjectKey = tuple[str, str]  # (namespace or "", name)


@dataclass(frozen=True)
class Event:
    rv: int
    type: str  # ADDED, MODIFIED, DELETED
    obj: dict[str, Any]
    old: dict[str, Any] | None


@dataclass(eq=False)
class Watcher:
    namespace: str | None
    labels: Matcher | None
    fields: Matcher | None
    queue: asyncio.Queue[Event | None] = field(default_factory=asyncio.Queue)

    def _matches(self, obj: dict[str, Any] | None) -> bool:
        if obj is None:
            return False
        if self.namespace is not None and obj.get("metadata", {}).get("namespace") != self.namespace:
            return False
        if self.labels is not None and not self.labels(obj):
            return False
        return self.fields is None or self.fields(obj)

    def translate(self, event: Event) -> Event | None:
        """The event as this watcher sees it: an object leaving its selector is DELETED for it."""
        now = event.type != "DELETED" and self._matches(event.obj)
        before = self._matches(event.old) if event.old is not None else False
        if event.type == "DELETED":
            return event if self._matches(event.obj) else None
        if now and not before and event.type == "MODIFIED":
            return Event(event.rv, "ADDED", event.obj, event.old)
        if before and not now:
            return Event(event.rv, "DELETED", event.obj, event.old)
        return event if now else None

    def offer(self, event: Event) -> None:
        seen = self.translate(event)
        if seen is not None:
            self.queue.put_nowait(seen)


class ResourceStore:
    def __init__(self, capacity: int) -> None:
        self.objects: dict[ObjectKey, dict[str, Any]] = {}
        self.by_namespace: dict[str, dict[str, dict[str, Any]]] = {}
        self.history: deque[Event] = deque()
        self.capacity = capacity
        self.compacted_rv = 0  # events at or below this version are gone from the history
        self.watchers: set[Watcher] = set()

    def get(self, namespace: str, name: str) -> dict[str, Any] | None:
        return self.objects.get((namespace, name))

    def items(self, namespace: str | None) -> Iterator[dict[str, Any]]:
        if namespace is None:
            yield from self.objects.values()
        else:
            yield from self.by_namespace.get(namespace, {}).values()

    def record(self, event: Event) -> None:
        meta = event.obj["metadata"]
        key = (meta.get("namespace", ""), meta["name"])
        if event.type == "DELETED":
            self.objects.pop(key, None)
            self.by_namespace.get(key[0], {}).pop(key[1], None)
        else:
            self.objects[key] = event.obj
            self.by_namespace.setdefault(key[0], {})[key[1]] = event.obj
        self.history.append(event)
        while len(self.history) > self.capacity:
            self.compacted_rv = self.history.popleft().rv
        for watcher in list(self.watchers):
            watcher.offer(event)

    def events_since(self, rv: int) -> list[Event] | None:
        """Events after ``rv``, or None when some of them were already compacted away (410)."""
        if rv < self.compacted_rv:
            return None
        return [event for event in self.history if event.rv > rv]

    def compact(self) -> None:
        """Forget the history (what etcd compaction does), so older watches must relist."""
        if self.history:
            self.compacted_rv = self.history[-1].rv
        self.history.clear()


class Store:
    def __init__(self, history_capacity: int = 2000) -> None:
        self.resource_version = 0
        self.history_capacity = history_capacity
        self._resources: dict[ResourceKey, ResourceStore] = {}

    def resource(self, key: ResourceKey) -> ResourceStore:
        store = self._resources.get(key)
        if store is None:
            store = self._resources[key] = ResourceStore(self.history_capacity)
            # A resource that appears now has no history before this point.
            store.compacted_rv = self.resource_version
        return store

    def next_version(self) -> int:
        self.resource_version += 1
        return self.resource_version

    def write(self, key: ResourceKey, event_type: str, obj: dict[str, Any], old: dict[str, Any] | None) -> Event:
        """Store ``obj`` (already carrying its new resourceVersion) and tell the watchers."""
        event = Event(int(obj["metadata"]["resourceVersion"]), event_type, obj, old)
        self.resource(key).record(event)
        return event

    def compact(self) -> None:
        for store in self._resources.values():
            store.compact()

    def count(self) -> int:
        return sum(len(store.objects) for store in self._resources.values())
