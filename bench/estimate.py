"""Pre-flight estimates against what the run then measures, for ``kubetune run`` on this machine.

    python bench/estimate.py            # three real runs of the README example (~30 min on 2 cores)
    python bench/estimate.py --smoke --base-model file:///path/to/tiny-model   # CI: seconds

Each shape is one ``kubetune run`` of the README example's manifest (its own process, as a user runs
it): ``example`` as written; ``longer-sequences`` packed into rows of 512 tokens instead of the 128
the plan picks; ``full``, full fine-tuning. The two variants train one epoch and skip the forgetting
check, which only shortens the stages after training. For each, the pre-flight's estimate (written
by the plan stage, before any training: ``reports/preflight.json``) against the training stage's
measured wall time (``stage_times.json``) and the process's peak memory (the published manifest's
``training.peakMemoryBytes``). The formula estimate the pre-flight made before it timed real steps
(and still makes in a pre-flight pod) is recomputed from the same plan, for comparison.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))

from measurement import cpu_model, git  # noqa: E402

EXAMPLE = ROOT / "examples" / "support-tickets.yaml"
RESULTS = ROOT / "docs" / "measurements" / "estimate.json"
TOLERANCE = 0.25  # issue 14: within ±25% of what the run measures
SHORTER = {"evaluation": {"forgetting": False, "maxExamples": 8}}
SHAPES: dict[str, dict[str, Any]] = {
    "example": {},
    "longer-sequences": {"hyperparameters": {"sequenceLength": 512, "epochs": 1}, **SHORTER},
    "full": {"method": {"type": "full"}, "hyperparameters": {"epochs": 1}, **SHORTER},
}


def manifest(shape: dict[str, Any], base_model: str, smoke: bool) -> dict[str, Any]:
    document = yaml.safe_load(EXAMPLE.read_text())
    spec = document["spec"]
    spec["baseModel"] = {"uri": base_model}
    for key, value in shape.items():
        spec[key] = {**spec.get(key, {}), **value}
    if smoke:  # seconds, not minutes
        spec["hyperparameters"] = {**spec.get("hyperparameters", {}), "epochs": 1}
        spec["evaluation"] = {"forgetting": False, "maxExamples": 4}
        spec["dataset"]["replay"] = {"enabled": False}
    return dict(document)


def run_shape(name: str, shape: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    folder = args.work / name
    job = folder / "job.yaml"
    folder.mkdir(parents=True, exist_ok=True)
    job.write_text(yaml.safe_dump(manifest(shape, args.base_model, args.smoke)))
    command = [sys.executable, "-m", "kubetune_trainer.cli", "run", str(job), "--workdir", str(folder / "work")]
    command += ["--output-dir", str(folder / "runs"), "--map", f"/opt/kubetune/examples={EXAMPLE.parent}"]
    subprocess.run(command, check=True, cwd=ROOT, stdout=subprocess.DEVNULL)
    reports = folder / "work" / "artifacts" / "reports"
    preflight = json.loads((reports / "preflight.json").read_text())
    resolved = json.loads((reports / "resolved.json").read_text())
    train_seconds = json.loads((folder / "work" / "stage_times.json").read_text())["train"]
    manifests = sorted((folder / "runs").glob("*/v*/manifest.json"), key=lambda p: p.stat().st_mtime_ns)
    peak = json.loads(manifests[-1].read_text())["training"]["peakMemoryBytes"]
    formula = formula_estimate(resolved, preflight["trainTokens"], args.base_model)
    return {
        "estimate": {"minutes": preflight["estimatedMinutes"], "memoryGiB": preflight["estimatedMemoryGib"]},
        "formula": formula,
        "measured": {"minutes": train_seconds / 60, "memoryGiB": peak / 2**30},
        "message": preflight["message"],
        "plan": {
            "method": resolved["method"],
            "sequenceLength": resolved["hyperparameters"]["sequenceLength"],
            "epochs": resolved["hyperparameters"]["epochs"],
        },
    }


def formula_estimate(resolved: dict[str, Any], train_tokens: int, base_model: str) -> dict[str, float]:
    """What the pre-flight estimated from its formulas alone (a pre-flight pod still does)."""
    from pydantic import TypeAdapter
    from transformers import AutoConfig

    from kubetune.api.v1alpha1 import ResolvedTraining
    from kubetune_trainer.hardware import Hardware
    from kubetune_trainer.models.loading import resolve_model_dir
    from kubetune_trainer.plan import ModelShape, preflight_estimate
    from kubetune_trainer.storage import ObjectStore

    plan: Any = TypeAdapter(ResolvedTraining).validate_python(resolved)
    shape = ModelShape.from_config(AutoConfig.from_pretrained(resolve_model_dir(base_model, ObjectStore())))
    report = preflight_estimate(plan, shape, Hardware.detect(), train_tokens=train_tokens, total_memory_limit_gib=None)
    return {"minutes": float(report.estimated_minutes or 0), "memoryGiB": float(report.estimated_memory_gib or 0)}


def error(estimate: float, measured: float) -> float:
    return estimate / measured - 1 if measured else float("inf")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true", help="tiny runs of the example shape only (CI)")
    parser.add_argument("--base-model", default="builtin://smollm2-135m-instruct")
    parser.add_argument("--shapes", default=",".join(SHAPES), help=f"comma-separated subset of {', '.join(SHAPES)}")
    parser.add_argument("--work", type=Path, default=ROOT / ".bench" / "estimate")
    parser.add_argument("--results", type=Path, default=None, help=f"default {RESULTS.relative_to(ROOT)}; smoke: none")
    args = parser.parse_args(argv)
    asked = args.shapes.split(",")
    if unknown := sorted(set(asked) - set(SHAPES)):
        parser.error(f"--shapes: unknown {', '.join(unknown)}; the shapes are {', '.join(SHAPES)}")
    if args.smoke:
        asked = ["example"]
    shapes = {name: run_shape(name, SHAPES[name], args) for name in asked}
    for result in shapes.values():
        result["error"] = {
            "minutes": error(result["estimate"]["minutes"], result["measured"]["minutes"]),
            "memoryGiB": error(result["estimate"]["memoryGiB"], result["measured"]["memoryGiB"]),
        }
        result["withinTolerance"] = all(abs(e) <= TOLERANCE for e in result["error"].values())
    report = {
        "command": "python bench/estimate.py" + (" " + " ".join(argv if argv is not None else sys.argv[1:])).rstrip(),
        "commit": git("rev-parse", "HEAD"),
        "machine": {"cpu": cpu_model(), "cores": len(os.sched_getaffinity(0))},
        "tolerance": TOLERANCE,
        "shapes": shapes,
    }
    print(render_markdown(report))
    results = args.results or (None if args.smoke else RESULTS)
    if results is not None:
        results.parent.mkdir(parents=True, exist_ok=True)
        results.write_text(json.dumps(report, indent=2) + "\n")
    return 0


def render_markdown(report: dict[str, Any]) -> str:
    lines = [
        f"`{report['command']}` at commit `{report['commit'][:12]}` on {report['machine']['cpu']} "
        f"({report['machine']['cores']} cores).",
        "",
        "| shape | plan | training estimated | measured | error | formula alone | peak memory estimated | measured | error |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, shape in report["shapes"].items():
        plan, estimate, measured, err = shape["plan"], shape["estimate"], shape["measured"], shape["error"]
        lines.append(
            f"| {name} | {plan['method']}, {plan['sequenceLength']} tokens, {plan['epochs']:g} epoch(s) | "
            f"{estimate['minutes']:.1f} min | {measured['minutes']:.1f} min | {err['minutes']:+.0%} | "
            f"{shape['formula']['minutes']:.1f} min | {estimate['memoryGiB']:.2f} GiB | "
            f"{measured['memoryGiB']:.2f} GiB | {err['memoryGiB']:+.0%} |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
