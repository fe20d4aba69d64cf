"""The reconcile queue's two lanes: a FineTuneJob never reconciled goes ahead of queued follow-ups, and
the follow-ups still get their share of the workers; a run waiting for a worker absorbs new events."""

from __future__ import annotations

import asyncio
import threading

from kubetune.operator.queue import ReconcileQueue


class _Recorder:
    """A reconcile that records its order; the first run holds the only worker until released."""

    def __init__(self) -> None:
        self.order: list[str] = []
        self.release_first = threading.Event()

    def __call__(self, namespace: str, name: str) -> None:
        if not self.order:
            self.release_first.wait(10)
        self.order.append(name)


async def _drain(queue: ReconcileQueue, recorder: _Recorder, expected_runs: int) -> None:
    recorder.release_first.set()
    for _ in range(500):
        if len(recorder.order) >= expected_runs:
            break
        await asyncio.sleep(0.01)
    await queue.stop()


def test_new_finetunejobs_go_ahead_of_queued_follow_ups() -> None:
    recorder = _Recorder()

    async def scenario() -> None:
        queue = ReconcileQueue(recorder, workers=1)
        queue.trigger("ns", "busy")
        await asyncio.sleep(0.05)  # "busy" holds the worker
        for index in range(3):
            queue.trigger("ns", f"follow-up-{index}")
        for index in range(3):
            queue.trigger("ns", f"new-{index}", new=True)
        await _drain(queue, recorder, 7)

    asyncio.run(scenario())
    assert recorder.order == ["busy", "new-0", "new-1", "new-2", "follow-up-0", "follow-up-1", "follow-up-2"]


def test_follow_ups_are_not_starved_by_a_stream_of_new_ones() -> None:
    recorder = _Recorder()
    news = 30

    async def scenario() -> None:
        queue = ReconcileQueue(recorder, workers=1)
        queue.trigger("ns", "busy")
        await asyncio.sleep(0.05)
        queue.trigger("ns", "follow-up")
        for index in range(news):
            queue.trigger("ns", f"new-{index}", new=True)
        await _drain(queue, recorder, news + 2)

    asyncio.run(scenario())
    position = recorder.order.index("follow-up")
    assert position < news, f"the follow-up ran at position {position}, after every new job"
    assert recorder.order[1:position] == [f"new-{index}" for index in range(position - 1)]


def test_events_for_a_run_still_waiting_for_a_worker_do_not_queue_a_second_run() -> None:
    """The waiting run reads everything when it starts, so it sees them; an event during a run that
    has started still makes one more run."""
    recorder = _Recorder()

    async def scenario() -> None:
        queue = ReconcileQueue(recorder, workers=1)
        queue.trigger("ns", "busy")
        await asyncio.sleep(0.05)
        for _ in range(5):
            queue.trigger("ns", "waiting")
        queue.trigger("ns", "busy")  # busy has started: it must run again
        await _drain(queue, recorder, 3)
        await asyncio.sleep(0.1)

    asyncio.run(scenario())
    assert sorted(recorder.order) == ["busy", "busy", "waiting"]
