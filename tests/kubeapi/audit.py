"""What the server saw, bounded: which grants each identity used, what it was refused, what it was warned.

Kept as sets and counters (never a growing request log), so 100,000 requests cost no more memory or
time than ten. Tests read it to compare the grants the operator really uses with what the chart
grants, in both directions.
"""

from __future__ import annotations

import threading
from collections import Counter
from dataclasses import dataclass

MAX_WARNINGS = 200


@dataclass(frozen=True)
class Use:
    """One kind of authorized request: who did what to which resource, at which scope."""

    user: str
    verb: str
    api_group: str
    resource: str  # "finetunejobs/status" for a subresource
    namespaced: bool
    allowed: bool


class Audit:
    def __init__(self) -> None:
        self.uses: Counter[Use] = Counter()
        self.warnings: dict[str, list[str]] = {}
        self._lock = threading.Lock()

    def record(self, user: str, verb: str, api_group: str, resource: str, namespaced: bool, allowed: bool) -> None:
        use = Use(user, verb, api_group, resource, namespaced, allowed)
        with self._lock:
            self.uses[use] += 1

    def warn(self, user: str, text: str) -> None:
        with self._lock:
            seen = self.warnings.setdefault(user, [])
            if len(seen) < MAX_WARNINGS and text not in seen:
                seen.append(text)

    def of(self, user: str) -> set[Use]:
        with self._lock:
            return {use for use in self.uses if use.user == user}

    def refused(self, user: str) -> set[Use]:
        return {use for use in self.of(user) if not use.allowed}

    def to_json(self) -> dict[str, object]:
        with self._lock:
            uses = [{**use.__dict__, "count": count} for use, count in self.uses.items()]
            return {"uses": uses, "warnings": dict(self.warnings)}

    @classmethod
    def from_json(cls, data: dict[str, object]) -> Audit:
        audit = cls()
        for entry in data["uses"]:  # type: ignore[attr-defined]
            fields = {k: v for k, v in entry.items() if k != "count"}
            audit.uses[Use(**fields)] += int(entry["count"])
        audit.warnings = {user: list(texts) for user, texts in data["warnings"].items()}  # type: ignore[attr-defined]
        return audit

    def merge_into(self, other: Audit) -> None:
        with self._lock, other._lock:
            other.uses.update(self.uses)
            for user, texts in self.warnings.items():
                for text in texts:
                    if text not in other.warnings.setdefault(user, []):
                        other.warnings[user].append(text)
