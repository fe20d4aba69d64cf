"""The curation report: what was read, what each rule dropped, and what is left."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from kubetune_trainer.data.balance import BALANCE_DOWNSAMPLED
from kubetune_trainer.data.curation import TEST_LEAKAGE, Dropped
from kubetune_trainer.data.pii import PERSONAL_DATA, redact

SAMPLES_PER_RULE = 5
SAMPLE_CHARS = 160
MAX_LABELS_SHOWN = 50


@dataclass
class SourceStats:
    uri: str
    files: list[str]
    format: str
    rows_read: int = 0
    rows_valid: int = 0
    weight: float = 1.0
    # task, trainOnly or evalOnly: what a later version may replay (models.continual never replays evalOnly).
    role: str = "task"
    # The source's personal-data policy and the identifiers found per kind (kubetune_trainer.data.pii).
    personal_data: dict[str, Any] = field(default_factory=dict)


@dataclass
class CurationReport:
    sources: list[SourceStats] = field(default_factory=list)
    invalid_rows: Counter[str] = field(default_factory=Counter)
    invalid_samples: list[str] = field(default_factory=list)
    dropped: Counter[str] = field(default_factory=Counter)
    dropped_samples: dict[str, list[dict[str, str]]] = field(default_factory=dict)
    splits: dict[str, int] = field(default_factory=dict)
    train_after_mixing: int = 0
    token_lengths: list[int] = field(default_factory=list)
    # When the answers are labels: their counts before (and after) balancing (kubetune_trainer.data.balance).
    labels: dict[str, Any] = field(default_factory=dict)

    def add_dropped(self, items: list[Dropped]) -> None:
        for item in items:
            self.dropped[item.rule] += 1
            samples = self.dropped_samples.setdefault(item.rule, [])
            if len(samples) < SAMPLES_PER_RULE:
                # The report never repeats an identifier, whatever the source's policy.
                text = redact(item.example.flat_text().replace("\n", " "))[0]
                samples.append(
                    {
                        "where": f"{item.example.source}:{item.example.row}",
                        "detail": item.detail,
                        "text": text[:SAMPLE_CHARS] + ("…" if len(text) > SAMPLE_CHARS else ""),
                    }
                )

    def length_summary(self) -> dict[str, float]:
        if not self.token_lengths:
            return {}
        ordered = sorted(self.token_lengths)

        def pct(q: float) -> float:
            return float(ordered[min(len(ordered) - 1, int(q * (len(ordered) - 1) + 0.5))])

        return {
            "min": float(ordered[0]),
            "mean": sum(ordered) / len(ordered),
            "p50": pct(0.5),
            "p95": pct(0.95),
            "p99": pct(0.99),
            "max": float(ordered[-1]),
        }

    def histogram(self, bins: int = 10) -> list[dict[str, int]]:
        if not self.token_lengths:
            return []
        low, high = min(self.token_lengths), max(self.token_lengths)
        width = max(1, -(-(high - low + 1) // bins))
        counts = Counter((length - low) // width for length in self.token_lengths)
        return [
            {"from": low + i * width, "to": low + (i + 1) * width - 1, "count": counts.get(i, 0)}
            for i in range(-(-(high - low + 1) // width))
        ]

    def to_dict(self) -> dict[str, Any]:
        return {
            "sources": [vars(s) for s in self.sources],
            "invalidRows": dict(self.invalid_rows),
            "invalidSamples": self.invalid_samples,
            "dropped": dict(self.dropped),
            "droppedSamples": self.dropped_samples,
            "splits": self.splits,
            "trainAfterMixing": self.train_after_mixing,
            "tokens": self.length_summary(),
            "tokenHistogram": self.histogram(),
            **({"labels": self.labels} if self.labels else {}),
        }

    def to_markdown(self) -> str:
        lines = ["# Curation report", "", "| source | format | rows read | valid |", "|---|---|---:|---:|"]
        lines += [f"| {s.uri} | {s.format} | {s.rows_read} | {s.rows_valid} |" for s in self.sources]
        lines += ["", "| rule | dropped |", "|---|---:|"]
        for reason, count in sorted(self.invalid_rows.items()):
            lines.append(f"| invalid: {reason} | {count} |")
        for rule in (
            PERSONAL_DATA,
            BALANCE_DOWNSAMPLED,
            "exact_duplicate",
            "near_duplicate",
            "too_short",
            "too_long",
            TEST_LEAKAGE,
        ):
            lines.append(f"| {rule} | {self.dropped.get(rule, 0)} |")
        lines += ["", "| source | personal data | found |", "|---|---|---|"]
        for source in self.sources:
            found = source.personal_data.get("found", {})
            counts = ", ".join(f"{count} {kind}" for kind, count in sorted(found.items())) or "none"
            lines.append(f"| {source.uri} | {source.personal_data.get('policy', 'off')} | {counts} |")
        if self.labels:
            after = self.labels.get("after")
            lines += ["", "| label | rows |" if after is None else "| label | rows | after balancing |"]
            lines.append("|---|---:|" if after is None else "|---|---:|---:|")
            for label, count in list(self.labels["before"].items())[:MAX_LABELS_SHOWN]:
                lines.append(f"| {label} | {count} |" + ("" if after is None else f" {after.get(label, 0)} |"))
        lines += ["", "| split | examples |", "|---|---:|"]
        lines += [f"| {name} | {count} |" for name, count in self.splits.items()]
        lines.append(f"| train after source weights | {self.train_after_mixing} |")
        summary = self.length_summary()
        if summary:
            lines += ["", "Tokens per example: " + ", ".join(f"{k} {v:.0f}" for k, v in summary.items()), ""]
            lines += ["| tokens | examples |", "|---|---:|"]
            lines += [f"| {b['from']}-{b['to']} | {b['count']} |" for b in self.histogram()]
        if self.invalid_samples:
            lines += ["", "## Invalid rows (first few)", ""] + [f"- {s}" for s in self.invalid_samples]
        for rule, samples in self.dropped_samples.items():
            lines += ["", f"## Dropped by {rule} (first few)", ""]
            lines += [f"- `{s['where']}` ({s['detail']}): {s['text']}" for s in samples]
        return "\n".join(lines) + "\n"
