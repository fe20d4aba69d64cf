"""Named, timed pipeline stages: each one is announced to the reporters and its time kept."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Protocol


class StageListener(Protocol):
    def stage(self, name: str) -> None: ...


@dataclass
class StageClock:
    listener: StageListener | None = None
    durations: dict[str, float] = field(default_factory=dict)

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        if self.listener is not None:
            self.listener.stage(name)
        start = time.perf_counter()
        try:
            yield
        finally:
            self.durations[name] = self.durations.get(name, 0.0) + time.perf_counter() - start

    @property
    def total(self) -> float:
        return sum(self.durations.values())
