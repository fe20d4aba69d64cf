"""The evaluation report: base vs tuned per metric with intervals, forgetting, the gate."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class MetricResult:
    name: str
    base: float
    tuned: float
    ci_low: float  # 95% paired-bootstrap interval of tuned - base
    ci_high: float
    lower_is_better: bool

    @property
    def delta(self) -> float:
        return self.tuned - self.base

    @property
    def improved(self) -> bool:
        """Better in the metric's good direction, with the whole interval on that side."""
        return self.ci_high < 0 if self.lower_is_better else self.ci_low > 0


@dataclass
class RegressionResult:
    """Forgetting: per-token likelihood (exp of -mean NLL) of the regression answers."""

    examples: int
    base: float
    tuned: float
    relative_loss: float  # (base - tuned) / base; positive = forgot
    ci_low: float
    ci_high: float
    max_regression: float

    @property
    def passed(self) -> bool:
        return self.relative_loss <= self.max_regression


@dataclass
class GateResult:
    passed: bool
    message: str
    metric: str | None = None
    base: float | None = None
    tuned: float | None = None
    improvement: float | None = None
    required: float | None = None


@dataclass
class EvaluationReport:
    test_examples: int
    metrics: list[MetricResult]
    gate: GateResult
    regression: RegressionResult | None = None
    predictions: list[dict[str, Any]] = field(default_factory=list)

    def metric(self, name: str) -> MetricResult | None:
        return next((m for m in self.metrics if m.name == name), None)

    def summary_metrics(self) -> dict[str, float]:
        """Flat numbers for the FineTuneJob status and Prometheus: ``base.<m>``, ``tuned.<m>``."""
        flat: dict[str, float] = {}
        for m in self.metrics:
            flat[f"base.{m.name}"] = round(m.base, 6)
            flat[f"tuned.{m.name}"] = round(m.tuned, 6)
        if self.regression is not None:
            flat["base.regressionLikelihood"] = round(self.regression.base, 6)
            flat["tuned.regressionLikelihood"] = round(self.regression.tuned, 6)
        return flat

    def to_dict(self) -> dict[str, Any]:
        return {
            "testExamples": self.test_examples,
            "metrics": [{**asdict(m), "delta": m.delta, "improved": m.improved} for m in self.metrics],
            "regression": {**asdict(self.regression), "passed": self.regression.passed} if self.regression else None,
            "gate": asdict(self.gate),
        }

    def to_markdown(self) -> str:
        lines = [
            "# Evaluation",
            "",
            f"Held-out test examples: {self.test_examples}. Same prompts and greedy decoding for both models.",
            "",
            "| metric | base | tuned | delta [95% CI] | better |",
            "|---|---:|---:|---|---|",
        ]
        for m in self.metrics:
            arrow = "lower is better" if m.lower_is_better else "higher is better"
            lines.append(
                f"| {m.name} ({arrow}) | {m.base:.4f} | {m.tuned:.4f} | {m.delta:+.4f} [{m.ci_low:+.4f}, {m.ci_high:+.4f}] "
                f"| {'yes' if m.improved else 'no'} |"
            )
        if self.regression is not None:
            r = self.regression
            lines.append(
                f"| general regression set ({r.examples} prompts, per-token likelihood) | {r.base:.4f} | {r.tuned:.4f} "
                f"| {-r.relative_loss:+.2%} [{-r.ci_high:+.2%}, {-r.ci_low:+.2%}] | "
                f"{'ok' if r.passed else 'FORGOT'} (max loss {r.max_regression:.0%}) |"
            )
        lines += ["", f"**Quality gate:** {'passed' if self.gate.passed else 'NOT passed'} — {self.gate.message}", ""]
        return "\n".join(lines)

    def write(self, folder: Path) -> list[Path]:
        folder.mkdir(parents=True, exist_ok=True)
        paths = [folder / "evaluation.json", folder / "evaluation.md", folder / "predictions.jsonl"]
        paths[0].write_text(json.dumps(self.to_dict(), indent=2))
        paths[1].write_text(self.to_markdown())
        paths[2].write_text("".join(json.dumps(p, ensure_ascii=False) + "\n" for p in self.predictions))
        return paths


def plot_loss_curve(history: list[dict[str, Any]], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    train = [(h["step"], h["loss"]) for h in history if "loss" in h and "step" in h]
    evals = [(h["step"], h["eval_loss"]) for h in history if "eval_loss" in h and "step" in h]
    fig, axis = plt.subplots(figsize=(7, 4), dpi=100)
    if train:
        axis.plot(*zip(*train, strict=True), label="train loss", linewidth=1)
    if evals:
        axis.plot(*zip(*evals, strict=True), label="validation loss", marker="o")
    axis.set_xlabel("optimizer step")
    axis.set_ylabel("loss (nats/token)")
    axis.set_title("Training curve")
    axis.grid(alpha=0.3)
    axis.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path
