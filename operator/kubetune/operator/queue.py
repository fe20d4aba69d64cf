"""Every reconcile runs through one queue: at most one at a time per FineTuneJob, retried with capped
backoff on the event loop, never by sleeping in a worker.

Why not kopf's own retries: kopf retries ``TemporaryError`` only in change handlers, never in event
handlers (a child Job finishing, the trainer reporting), and a handler that sleeps between its own
retries holds one of the few worker threads, so at a 30% API error rate the throughput fell
tenfold. Here a failed reconcile schedules its retry with ``loop.call_later`` and frees its
worker at once; a newer event for the same FineTuneJob supersedes a scheduled retry; a 429's
``Retry-After`` is honoured. A child's completion seen during an API outage is therefore acted on
within one backoff step of the outage ending, not at the next relist.

Two lanes share the workers: FineTuneJobs never reconciled yet, served first, and everything else,
which keeps every eighth worker handover when both wait. A thread pool alone is first come, first
served, so under load a new FineTuneJob waited behind every queued follow-up of the jobs before it
(their Jobs' events, the trainers' reports), and its validation verdict and pre-flight Job came a
whole backlog late (bench/operator.py at 20 new jobs a second). Serving the lanes strictly in turn
was measured too: a 300-job burst then drained in 28-34 s against 17 s, the follow-ups taking half
the workers. The eighth share bounds how long the rest can wait without slowing the new ones so.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from kubernetes.client.rest import ApiException
from urllib3.exceptions import HTTPError

log = logging.getLogger("kubetune.operator")

Key = tuple[str, str]  # (namespace, name)
FIRST_RETRY_SECONDS = 0.5
MAX_RETRY_SECONDS = 10.0


def retry_after(error: BaseException) -> float | None:
    """The seconds a throttling API server asked us to wait (429 Retry-After), if it did."""
    if isinstance(error, ApiException) and error.headers:
        value = error.headers.get("Retry-After")
        if value and value.strip().isdigit():
            return float(value)
    return None


def retry_delay(attempt: int, error: BaseException | None = None) -> float:
    """Capped exponential backoff with jitter; at least the server's Retry-After when it sent one."""
    delay = min(MAX_RETRY_SECONDS, FIRST_RETRY_SECONDS * 2 ** max(attempt - 1, 0))
    delay *= random.uniform(0.8, 1.2)
    asked = retry_after(error) if error is not None else None
    return max(delay, asked) if asked is not None else delay


def transient(error: BaseException) -> bool:
    """Errors that may heal by themselves: the API server busy, down, or racing with another writer.

    401/403 count too: credentials are re-read on the next call and RBAC can be repaired; a
    refusal that will not heal (a child the API server finds invalid) never reaches here, the
    reconcile records it as the FineTuneJob's failure.
    """
    if isinstance(error, ApiException):
        return error.status in (401, 403, 404, 409, 429) or (error.status or 0) >= 500 or error.status == 0
    return isinstance(error, HTTPError | OSError | TimeoutError)


@dataclass
class _Entry:
    running: bool = False
    dirty: bool = False  # an event arrived while running: run again right after
    attempts: int = 0  # consecutive failures
    timer: asyncio.TimerHandle | None = None
    not_before: float = 0.0  # loop time before which the server asked us not to come back (Retry-After)
    new: bool = False  # never reconciled yet: waits in the new lane
    waiting: bool = False  # started but waiting for a worker: it has read nothing yet


class _Lanes:
    """``workers`` slots, handed to waiters from two lanes: new objects first, but every
    ``REST_SHARE``-th handover to the rest when both wait, so neither lane can starve."""

    REST_SHARE = 8

    def __init__(self, workers: int) -> None:
        self._free = workers
        self._new: deque[asyncio.Future[None]] = deque()
        self._rest: deque[asyncio.Future[None]] = deque()
        self._handovers = 0

    async def acquire(self, new: bool) -> None:
        if self._free > 0:
            self._free -= 1
            return
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        (self._new if new else self._rest).append(waiter)
        await waiter  # the slot is handed over by release(), already counted

    def release(self) -> None:
        self._handovers += 1
        lanes = (self._rest, self._new) if self._handovers % self.REST_SHARE == 0 else (self._new, self._rest)
        for lane in lanes:
            while lane:
                waiter = lane.popleft()
                if not waiter.done():  # a cancelled waiter holds no slot
                    waiter.set_result(None)
                    return
        self._free += 1


class ReconcileQueue:
    def __init__(self, reconcile: Callable[[str, str], object], *, workers: int = 8) -> None:
        self._reconcile = reconcile
        self._executor = ThreadPoolExecutor(workers, thread_name_prefix="reconcile")
        self._lanes = _Lanes(workers)
        self._entries: dict[Key, _Entry] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    def trigger(self, namespace: str, name: str, *, new: bool = False) -> None:
        """Reconcile now (or right after the running one); call on the event loop. ``new``: the object
        was never reconciled (it waits in the new lane)."""
        key = (namespace, name)
        entry = self._entries.setdefault(key, _Entry())
        entry.new = entry.new or new
        if entry.running:
            # A run still waiting for a worker reads everything afresh when it starts: it sees this event.
            entry.dirty = entry.dirty or not entry.waiting
            return
        if entry.timer is not None:
            if asyncio.get_running_loop().time() < entry.not_before:
                return  # throttled: the scheduled retry comes when the server said, and sees this event too
            entry.timer.cancel()
            entry.timer = None
        self._start(key, entry)

    def forget(self, namespace: str, name: str) -> None:
        entry = self._entries.pop((namespace, name), None)
        if entry is not None and entry.timer is not None:
            entry.timer.cancel()

    def pending_retries(self) -> int:
        return sum(1 for entry in self._entries.values() if entry.timer is not None)

    def _start(self, key: Key, entry: _Entry) -> None:
        entry.running = True
        entry.waiting = True
        task = asyncio.get_running_loop().create_task(self._run(key, entry))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _run(self, key: Key, entry: _Entry) -> None:
        loop = asyncio.get_running_loop()
        delay: float | None = None
        recheck: float | None = None
        try:
            await self._lanes.acquire(entry.new)
        finally:
            entry.waiting = False
        entry.new = False
        try:
            outcome = await loop.run_in_executor(self._executor, self._reconcile, *key)
            entry.attempts = 0
            # A reconcile may ask to be run again without an event (a job waiting for a quota slot).
            recheck = getattr(outcome, "recheck_after", None)
        except Exception as err:
            entry.attempts += 1
            delay = retry_delay(entry.attempts, err)
            if retry_after(err) is not None:
                entry.not_before = loop.time() + delay
            if transient(err):
                log.info("%s/%s: retrying in %.1fs: %s", *key, delay, _short(err))
            else:
                log.exception("%s/%s: reconcile failed, retrying in %.1fs", *key, delay)
        finally:
            entry.running = False
            self._lanes.release()
        if self._entries.get(key) is not entry:  # forgotten meanwhile (deleted)
            return
        if entry.dirty and delay is None:
            entry.dirty = False
            self._start(key, entry)
        elif (wait := delay if delay is not None else recheck) is not None:
            entry.dirty = False
            entry.timer = loop.call_later(wait, self._fire, key, entry)
        else:
            self._entries.pop(key, None)

    def _fire(self, key: Key, entry: _Entry) -> None:
        entry.timer = None
        if self._entries.get(key) is entry and not entry.running:
            self._start(key, entry)

    async def stop(self) -> None:
        for entry in self._entries.values():
            if entry.timer is not None:
                entry.timer.cancel()
        self._entries.clear()
        for task in list(self._tasks):
            task.cancel()
        self._executor.shutdown(wait=False, cancel_futures=True)


def _short(error: BaseException) -> str:
    if isinstance(error, ApiException):
        return f"HTTP {error.status} {error.reason}"
    return f"{type(error).__name__}: {error}"
