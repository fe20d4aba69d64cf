"""The evaluation report: base vs tuned per metric with intervals, forgetting, the gate."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from kubetune.api.contract import FORGETTING_METRICS
from kubetune_trainer.evaluation.gate import Forgetting, GateResult
from kubetune_trainer.evaluation.results import MetricResult


@dataclass
class EvaluationReport:
    test_examples: int
    metrics: list[MetricResult]
    gate: GateResult
    forgetting: Forgetting
    primary_metric: str
    max_new_tokens: int  # the answers' length limit: a later comparison decodes the same way
    predictions: list[dict[str, Any]] = field(default_factory=list)
    general_predictions: list[dict[str, Any]] = field(default_factory=list)

    def metric(self, name: str) -> MetricResult | None:
        return next((m for m in self.metrics if m.name == name), None)

    def summary_metrics(self) -> dict[str, float]:
        """Flat numbers for the FineTuneJob status and Prometheus: ``base.<m>``, ``tuned.<m>``."""
        flat: dict[str, float] = {}
        for m in self.metrics:
            flat[f"base.{m.name}"] = round(m.base, 6)
            flat[f"tuned.{m.name}"] = round(m.tuned, 6)
        # Named by the contract: the operator re-exports only the metrics it names.
        forgetting = self.forgetting
        measures = (forgetting.likelihood, forgetting.known_answers, forgetting.label_collapse)
        for name, measure in zip(FORGETTING_METRICS, measures, strict=True):
            if measure is not None:
                flat[f"base.{name}"] = round(measure.base, 6)
                flat[f"tuned.{name}"] = round(measure.tuned, 6)
        return flat

    def to_dict(self) -> dict[str, Any]:
        forgetting = self.forgetting
        return {
            "testExamples": self.test_examples,
            "primaryMetric": self.primary_metric,
            "maxNewTokens": self.max_new_tokens,
            "metrics": [{**asdict(m), "delta": m.delta, "improved": m.improved} for m in self.metrics],
            "forgetting": {
                "set": forgetting.set_name,
                "optedOut": forgetting.opted_out,
                "likelihood": _with_passed(forgetting.likelihood),
                "knownAnswers": _with_passed(forgetting.known_answers),
                "labelCollapse": asdict(forgetting.label_collapse) if forgetting.label_collapse else None,
            },
            "gate": {**asdict(self.gate), "promoted": self.gate.passed},
        }

    def to_markdown(self) -> str:
        lines = [
            "# Evaluation",
            "",
            f"Held-out test examples: {self.test_examples}. Same prompts and greedy decoding for both models.",
            f"Primary metric: {self.primary_metric}.",
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
        lines += ["", "## Forgetting", ""]
        if self.forgetting.opted_out:
            lines.append("Forgetting not measured (opted out).")
        else:
            lines.append(f"General prompts: {self.forgetting.set_name}.")
        lines += ["", "## Checks", ""]
        for check in self.gate.checks:
            mark = {True: "passed", False: "FAILED", None: "reported"}[check.passed]
            lines.append(f"- **{check.name}** ({mark}): {check.detail}")
        lines += ["", f"**Verdict:** {self.gate.message}", ""]
        return "\n".join(lines)

    def write(self, folder: Path) -> list[Path]:
        folder.mkdir(parents=True, exist_ok=True)
        paths = [folder / "evaluation.json", folder / "evaluation.md", folder / "predictions.jsonl"]
        paths[0].write_text(json.dumps(self.to_dict(), indent=2))
        paths[1].write_text(self.to_markdown())
        paths[2].write_text("".join(json.dumps(p, ensure_ascii=False) + "\n" for p in self.predictions))
        if self.general_predictions:
            general = folder / "general_predictions.jsonl"
            general.write_text("".join(json.dumps(p, ensure_ascii=False) + "\n" for p in self.general_predictions))
            paths.append(general)
        return paths


def _with_passed(measure: Any) -> dict[str, Any] | None:
    return {**asdict(measure), "passed": measure.passed} if measure is not None else None


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
