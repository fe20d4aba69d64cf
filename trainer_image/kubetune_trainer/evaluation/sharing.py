"""Evaluation shared by every rank of a multi-process job.

After training, every rank holds the trained model (rank 0's weights, ``training/sharding.py``) and
runs the same evaluation code in step (the adapter strength on the validation split, then base against
tuned on the test split and the general prompts). Each batch list of ``evaluation/scoring.py`` is split
by whole batches, rank r taking batches r, r + N, ...: every example is scored in the batch it would
have in one process, so the scores and greedy answers are the ones a single process computes, value
for value, and the caches keyed by that batching stay valid. The results are gathered on every rank,
so all ranks go on with the same values and call the same collectives next.

What a cache decides must be decided once: a cache hit on one node and a miss on another would send
the ranks down different paths and hang the group. :func:`cached_on_rank0` lets rank 0 alone consult
the cache; the others follow it.

Outside :func:`shared_between_ranks` (one process, or the stages rank 0 runs alone) every function
here is the identity: one process computes every batch.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any, TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")
U = TypeVar("U")
Batch = list[int]


@dataclass
class Sharing:
    rank: int
    world_size: int
    batches_scored: int = 0
    batches_in_all: int = 0


_sharing: ContextVar[Sharing | None] = ContextVar("evaluation_sharing", default=None)


@contextmanager
def shared_between_ranks(rank: int, world_size: int) -> Iterator[Sharing | None]:
    """Within this block, evaluation's batches are split between the ``world_size`` ranks (every rank
    must enter it and run the same evaluation); with one process, nothing changes."""
    sharing = Sharing(rank, world_size) if world_size > 1 else None
    token = _sharing.set(sharing)
    try:
        yield sharing
    finally:
        _sharing.reset(token)
        if sharing is not None:
            log.info(
                "evaluation shared by %d processes: process %d scored %d of %d batches",
                world_size,
                rank,
                sharing.batches_scored,
                sharing.batches_in_all,
            )


def my_batches(batches: Sequence[Batch]) -> list[Batch]:
    """This rank's share of ``batches``: every N-th, from its rank (batches come longest first, so the
    shares cost about the same)."""
    sharing = _sharing.get()
    if sharing is None:
        return list(batches)
    mine = list(batches[sharing.rank :: sharing.world_size])
    sharing.batches_scored += len(mine)
    sharing.batches_in_all += len(batches)
    return mine


def gathered(results: dict[int, T]) -> dict[int, T]:
    """Every rank's results by example index, on every rank (each rank calls this once per batch list,
    after its share, even an empty one)."""
    sharing = _sharing.get()
    if sharing is None:
        return results
    import torch.distributed as dist

    parts: list[Any] = [None] * sharing.world_size
    dist.all_gather_object(parts, results)
    merged: dict[int, T] = {}
    for part in parts:
        merged.update(part)
    return merged


# What rank 0 sends first: whether the cache missed (every rank computes) or held the value.
_COMPUTE, _FOUND = "compute", "found"


def _from_rank0(value: Any) -> Any:
    import torch.distributed as dist

    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def cached_on_rank0(cached: Callable[[Callable[[], U]], T], compute: Callable[[], U]) -> T:
    """``cached(compute)``, a cache that calls ``compute`` on a miss (at most once), consulted by rank 0
    alone: on a miss every rank takes part in ``compute`` (its share of the batches); then every rank
    returns rank 0's value. The cache is read and written by rank 0 only."""
    sharing = _sharing.get()
    if sharing is None:
        return cached(compute)
    if sharing.rank == 0:
        missed = False

        def compute_together() -> U:
            nonlocal missed
            missed = True
            _from_rank0(_COMPUTE)
            return compute()

        value = cached(compute_together)
        if not missed:
            _from_rank0(_FOUND)
        _from_rank0(value)
        return value
    if _from_rank0(None) == _COMPUTE:
        compute()
    result: T = _from_rank0(None)
    return result
