"""The end of a run, for people: one table and a few lines on the console (``kubetune run`` and pod logs)."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table

from kubetune_trainer.evaluation.report import EvaluationReport
from kubetune_trainer.publish import PublishedRun
from kubetune_trainer.training.loop import TrainOutcome


def print_summary(name: str, evaluation: EvaluationReport, published: PublishedRun, outcome: TrainOutcome) -> None:
    """The end of a run, for people: base vs tuned, the forgetting measures, the gate, training, the version."""
    table = Table(title=f"{name}: base vs tuned on {evaluation.test_examples} held-out examples")
    for column in ("metric", "base", "tuned", "delta [95% CI]", "better"):
        table.add_column(column, justify="left" if column in ("metric", "better") else "right")
    for m in evaluation.metrics:
        table.add_row(
            f"{m.name} ({'↓' if m.lower_is_better else '↑'})",
            f"{m.base:.4f}",
            f"{m.tuned:.4f}",
            f"{m.delta:+.4f} [{m.ci_low:+.4f}, {m.ci_high:+.4f}]",
            "yes" if m.improved else "no",
        )
    measures = (
        ("general prompts: likelihood of the base's answers ↑", evaluation.forgetting.likelihood),
        ("general prompts: known answers right ↑", evaluation.forgetting.known_answers),
    )
    for label, measure in measures:
        if measure is not None:
            table.add_row(
                f"{label} ({measure.examples})",
                f"{measure.base:.4f}",
                f"{measure.tuned:.4f}",
                f"{-measure.relative_loss:+.2%} of the base",
                "ok" if measure.passed else f"lost > {measure.max_regression:.0%}",
            )
    console = Console()
    console.print(table)
    if evaluation.forgetting.opted_out:
        console.print("forgetting not measured (opted out)")
    verdict = "[green]promoted[/]" if evaluation.gate.passed else "[red]not promoted[/]"
    console.print(f"quality gate: {verdict} — {evaluation.gate.message}")
    console.print(
        f"training: {outcome.global_step} steps, {outcome.tokens_per_second:.0f} tokens/s "
        f"({outcome.trained_tokens_per_second:.0f} trained tokens/s), padding {outcome.padding_fraction:.1%}, "
        f"peak memory {outcome.peak_memory_bytes / 2**30:.2f} GiB"
    )
    if outcome.strength is not None:
        console.print(f"adapter strength: {outcome.strength.describe()}")
    console.print(f"published version {published.version}: {published.manifest_uri}")
