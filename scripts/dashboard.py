"""Writes the chart's Grafana dashboard, helm/kubetune/dashboards/kubetune.json, from the panels below.

    python scripts/dashboard.py           # write it
    python scripts/dashboard.py --check   # exit 1 if the committed file differs (tests run this)

Generated rather than hand-edited so that every panel has the same datasource, variables and
layout rules; the tests query every expression against a real Prometheus.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

OUT = Path(__file__).resolve().parents[1] / "helm" / "kubetune" / "dashboards" / "kubetune.json"
DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
NS = 'namespace=~"$namespace"'
JOB = 'namespace=~"$namespace", finetunejob=~"$finetunejob"'
BY_JOB = "namespace, finetunejob"


@dataclass(frozen=True)
class Query:
    expr: str
    legend: str = ""


@dataclass(frozen=True)
class Panel:
    title: str
    description: str
    queries: tuple[Query, ...]
    kind: str = "timeseries"  # timeseries | stat | table | bargauge
    unit: str = "short"
    width: int = 8
    height: int = 8
    instant: bool = False  # tables and stats show the latest value
    options: dict[str, Any] = field(default_factory=dict)


def q(expr: str, legend: str = "") -> Query:
    return Query(" ".join(expr.split()), legend)


FLEET = (
    Panel(
        "FineTuneJobs by phase",
        "Jobs the operator tracks, by phase, right now.",
        (q(f"sum by (phase) (kubetune_finetunejobs{{{NS}}})", "{{phase}}"),),
        kind="bargauge",
        instant=True,
        width=6,
    ),
    Panel(
        "Jobs by phase over time",
        "Queued and Pending jobs wait for GPUs or Kueue quota; Validating ones for their pre-flight.",
        (q(f"sum by (phase) (kubetune_finetunejobs{{{NS}}})", "{{phase}}"),),
        width=10,
    ),
    Panel(
        "Failures by reason",
        "FineTuneJobs that failed, by the reason of their Failed condition (InvalidSpec, PreflightFailed, TrainingFailed, ...).",
        (
            q(
                f"sum by (namespace, reason) (increase(kubetune_finetunejob_failures_total{{{NS}}}[$__rate_interval]))",
                "{{namespace}} {{reason}}",
            ),
        ),
        kind="timeseries",
        width=8,
    ),
    Panel(
        "Queue time",
        "From creation to the trainer running: validation, pre-flight, GPU queue and scheduling (p50, p95 over 1h).",
        tuple(
            q(
                f"histogram_quantile({quantile}, sum by (le) (rate(kubetune_finetunejob_queue_seconds_bucket{{{NS}}}[1h])))",
                f"p{int(quantile * 100)}",
            )
            for quantile in (0.5, 0.95)
        ),
        unit="s",
    ),
    Panel(
        "Time to training Job",
        "From creation to the training Job's creation: validation and the CPU pre-flight (p95 over 1h).",
        (
            q(
                f"histogram_quantile(0.95, sum by (le) (rate(kubetune_finetunejob_job_creation_delay_seconds_bucket{{{NS}}}[1h])))",
                "p95",
            ),
        ),
        unit="s",
    ),
    Panel(
        "Job duration by outcome",
        "From creation to Succeeded or Failed (p50 over 6h).",
        (
            q(
                f"histogram_quantile(0.5, sum by (le, outcome) (rate(kubetune_finetunejob_duration_seconds_bucket{{{NS}}}[6h])))",
                "{{outcome}}",
            ),
        ),
        unit="s",
    ),
    Panel(
        "GPUs in use",
        "GPUs requested by Running FineTuneJobs.",
        (q(f"sum by (namespace) (kubetune_gpus_in_use{{{NS}}})", "{{namespace}}"),),
        width=8,
    ),
    Panel(
        "GPU-hours in the time range",
        "GPU time used by Running FineTuneJobs over the dashboard's time range.",
        (q(f"sum by (namespace) (increase(kubetune_gpu_seconds_total{{{NS}}}[$__range])) / 3600", "{{namespace}}"),),
        kind="bargauge",
        instant=True,
        width=8,
    ),
    Panel(
        "Time in current phase (active jobs)",
        "How long each active job has been in its phase; KubetuneFineTuneJobStuck fires on long waits.",
        (
            q(
                f"time() - max by (namespace, finetunejob, phase) (kubetune_finetunejob_phase_timestamp_seconds{{{NS}}})",
                "{{namespace}}/{{finetunejob}} {{phase}}",
            ),
        ),
        kind="table",
        instant=True,
        unit="s",
        width=8,
    ),
    Panel(
        "GPUs held by job",
        "GPUs each active FineTuneJob holds now (its request while Running).",
        (
            q(
                f"max by (namespace, finetunejob) (kubetune_finetunejob_gpus_in_use{{{NS}}})",
                "{{namespace}}/{{finetunejob}}",
            ),
        ),
        kind="table",
        instant=True,
        width=8,
    ),
    Panel(
        "Operator reconcile latency and errors",
        "p99 of one reconcile, and reconciles that raised (by exception type).",
        (
            q(
                "histogram_quantile(0.99, sum by (le) (rate(kubetune_reconcile_duration_seconds_bucket[$__rate_interval])))",
                "p99 latency (s)",
            ),
            q("sum by (reason) (rate(kubetune_reconcile_errors_total[$__rate_interval]))", "errors/s {{reason}}"),
        ),
        width=16,
    ),
)

TRAINING = (
    Panel(
        "Progress",
        "Optimizer steps done out of those planned.",
        (
            q(
                f"max by ({BY_JOB}) (kubetune_trainer_step{{{JOB}}}) / max by ({BY_JOB}) (kubetune_trainer_total_steps{{{JOB}}})",
                "{{namespace}}/{{finetunejob}}",
            ),
        ),
        kind="bargauge",
        instant=True,
        unit="percentunit",
        width=8,
    ),
    Panel(
        "Training loss",
        "Training loss at each logging step.",
        (q(f"max by ({BY_JOB}) (kubetune_trainer_train_loss{{{JOB}}})", "{{namespace}}/{{finetunejob}}"),),
    ),
    Panel(
        "Validation loss",
        "Loss on the validation split at each evaluation.",
        (q(f"max by ({BY_JOB}) (kubetune_trainer_eval_loss{{{JOB}}})", "{{namespace}}/{{finetunejob}}"),),
    ),
    Panel(
        "Tokens per second",
        "Throughput over each logging window: all input tokens (padding excluded) and the trained (answer) tokens.",
        (
            q(
                f"max by ({BY_JOB}, kind) (kubetune_trainer_tokens_per_second{{{JOB}}})",
                "{{namespace}}/{{finetunejob}} {{kind}}",
            ),
        ),
        width=12,
    ),
    Panel(
        "Learning rate",
        "The schedule as applied (warmup, decay).",
        (q(f"max by ({BY_JOB}) (kubetune_trainer_learning_rate{{{JOB}}})", "{{namespace}}/{{finetunejob}}"),),
        width=6,
    ),
    Panel(
        "Epoch",
        "Epochs done (fractional).",
        (q(f"max by ({BY_JOB}) (kubetune_trainer_epoch{{{JOB}}})", "{{namespace}}/{{finetunejob}}"),),
        width=6,
    ),
    Panel(
        "Peak memory",
        "Peak GPU memory reserved (accelerator) and peak resident host memory of each trainer.",
        (
            q(
                f"max by ({BY_JOB}, device) (kubetune_trainer_memory_peak_bytes{{{JOB}}})",
                "{{namespace}}/{{finetunejob}} {{device}}",
            ),
        ),
        unit="bytes",
    ),
    Panel(
        "Padding",
        "Share of batch positions that are padding (packing keeps it near 0).",
        (q(f"max by ({BY_JOB}) (kubetune_trainer_padding_ratio{{{JOB}}})", "{{namespace}}/{{finetunejob}}"),),
        unit="percentunit",
    ),
    Panel(
        "Checkpoints",
        "Checkpoints uploaded, and the time since the latest one (what a preemption would lose).",
        (
            q(
                f"max by ({BY_JOB}) (kubetune_trainer_checkpoints_total{{{JOB}}})",
                "{{namespace}}/{{finetunejob}} count",
            ),
            q(
                f"time() - max by ({BY_JOB}) (kubetune_trainer_last_checkpoint_timestamp_seconds{{{JOB}}})",
                "{{namespace}}/{{finetunejob}} seconds since",
            ),
        ),
        kind="table",
        instant=True,
    ),
)

QUALITY = (
    Panel(
        "Evaluation delta (tuned - base)",
        "Per metric on the held-out test split; for perplexity lower is better, for the others higher. "
        "The operator exports the trainer's result from the FineTuneJob status until the job is deleted.",
        (
            q(
                f'max by ({BY_JOB}, metric) (kubetune_finetunejob_eval_metric{{{JOB}, model="tuned"}})'
                f' - max by ({BY_JOB}, metric) (kubetune_finetunejob_eval_metric{{{JOB}, model="base"}})',
                "{{namespace}}/{{finetunejob}} {{metric}}",
            ),
        ),
        kind="table",
        instant=True,
        width=10,
    ),
    Panel(
        "Evaluation: base and tuned",
        "Each metric for the base model and the tuned one, same prompts and decoding.",
        (
            q(
                f"max by ({BY_JOB}, metric, model) (kubetune_finetunejob_eval_metric{{{JOB}}})",
                "{{namespace}}/{{finetunejob}} {{metric}} {{model}}",
            ),
        ),
        kind="table",
        instant=True,
        width=8,
    ),
    Panel(
        "Quality gate and exit",
        "1: the tuned model met the gate and was promoted (the FineTuneJob's QualityGatePassed condition). "
        "Exit code (while the pod is scraped, or pushed) 0 ok, 2 bad input, 143 preempted.",
        (
            q(
                f"max by ({BY_JOB}) (kubetune_finetunejob_quality_gate_passed{{{JOB}}})",
                "{{namespace}}/{{finetunejob}} gate",
            ),
            q(f"max by ({BY_JOB}) (kubetune_trainer_exit_code{{{JOB}}})", "{{namespace}}/{{finetunejob}} exit"),
        ),
        kind="table",
        instant=True,
        width=6,
    ),
)

MONITOR = 'namespace=~"$namespace"'
DRIFT = (
    Panel(
        "Drift confirmed",
        "1: the DriftMonitor confirmed drift (persistence drifted windows in a row against the channel's version).",
        (
            q(
                f"max by (namespace, driftmonitor) (kubetune_driftmonitor_drift_detected{{{MONITOR}}})",
                "{{namespace}}/{{driftmonitor}}",
            ),
        ),
        kind="table",
        instant=True,
        width=6,
    ),
    Panel(
        "Drift p-values",
        "Holm-adjusted p-value of each test in each monitor's last check; below the monitor's alpha is a drifted window.",
        (
            q(
                f"max by (namespace, driftmonitor, method) (kubetune_driftmonitor_p_value{{{MONITOR}}})",
                "{{namespace}}/{{driftmonitor}} {{method}}",
            ),
        ),
        width=10,
    ),
    Panel(
        "Checks and retrainings",
        "Checks decided and retraining FineTuneJobs started in the time range, per monitor.",
        (
            q(
                f"sum by (namespace, driftmonitor) (increase(kubetune_driftmonitor_checks_total{{{MONITOR}}}[$__range]))",
                "{{namespace}}/{{driftmonitor}} checks",
            ),
            q(
                f"sum by (namespace, driftmonitor) (increase(kubetune_driftmonitor_retrainings_total{{{MONITOR}}}[$__range]))",
                "{{namespace}}/{{driftmonitor}} retrainings",
            ),
        ),
        kind="table",
        instant=True,
        width=8,
    ),
)

ROWS = (("Fleet", FLEET), ("Training", TRAINING), ("Quality", QUALITY), ("Drift", DRIFT))


def _panel(panel: Panel, panel_id: int, x: int, y: int) -> dict[str, Any]:
    targets = [
        {
            "datasource": DATASOURCE,
            "expr": query.expr,
            "legendFormat": query.legend or "__auto",
            "refId": chr(ord("A") + index),
            "instant": panel.instant,
            "range": not panel.instant,
            **({"format": "table"} if panel.kind == "table" else {}),
        }
        for index, query in enumerate(panel.queries)
    ]
    return {
        "id": panel_id,
        "type": panel.kind,
        "title": panel.title,
        "description": panel.description,
        "datasource": DATASOURCE,
        "gridPos": {"x": x, "y": y, "w": panel.width, "h": panel.height},
        "fieldConfig": {"defaults": {"unit": panel.unit}, "overrides": []},
        "options": panel.options,
        "targets": targets,
    }


def _variable(name: str, label: str, query: str) -> dict[str, Any]:
    return {
        "name": name,
        "label": label,
        "type": "query",
        "datasource": DATASOURCE,
        "query": {"query": query, "refId": name},
        "definition": query,
        "refresh": 2,
        "includeAll": True,
        "multi": True,
        "allValue": ".*",
        "current": {"text": "All", "value": "$__all"},
        "sort": 1,
    }


def dashboard() -> dict[str, Any]:
    panels: list[dict[str, Any]] = []
    y, next_id = 0, 1
    for title, row in ROWS:
        panels.append(
            {
                "id": next_id,
                "type": "row",
                "title": title,
                "collapsed": False,
                "gridPos": {"x": 0, "y": y, "w": 24, "h": 1},
            }
        )
        next_id, y, x, row_height = next_id + 1, y + 1, 0, 0
        for panel in row:
            if x + panel.width > 24:
                x, y, row_height = 0, y + row_height, 0
            panels.append(_panel(panel, next_id, x, y))
            next_id, x, row_height = next_id + 1, x + panel.width, max(row_height, panel.height)
        y += row_height
    return {
        "uid": "kubetune",
        "title": "kubetune: fine-tuning jobs",
        "description": "Job health, training speed and model quality of kubetune FineTuneJobs (docs/metrics.md).",
        "tags": ["kubetune", "fine-tuning"],
        "editable": True,
        "graphTooltip": 1,
        "schemaVersion": 39,
        "version": 1,
        "refresh": "30s",
        "time": {"from": "now-6h", "to": "now"},
        "timezone": "browser",
        "templating": {
            "list": [
                {
                    "name": "datasource",
                    "label": "Prometheus",
                    "type": "datasource",
                    "query": "prometheus",
                    "current": {},
                    "hide": 0,
                },
                _variable("namespace", "Namespace", "label_values(kubetune_finetunejobs, namespace)"),
                _variable(
                    "finetunejob",
                    "FineTuneJob",
                    'label_values(kubetune_trainer_step{namespace=~"$namespace"}, finetunejob)',
                ),
            ]
        },
        "annotations": {"list": []},
        "panels": panels,
    }


def render() -> str:
    return json.dumps(dashboard(), indent=2) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="exit 1 if the committed dashboard differs")
    args = parser.parse_args()
    text = render()
    if args.check:
        if not OUT.exists() or OUT.read_text() != text:
            print(f"{OUT} is out of date: run python scripts/dashboard.py", file=sys.stderr)
            return 1
        return 0
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(text)
    print(f"wrote {OUT}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
