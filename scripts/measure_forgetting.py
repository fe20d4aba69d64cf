"""Measure what kubetune's defaults do to a model's general ability: each task dataset with the
protections on (the minimal manifest, as a user writes it) and off (the same manifest with
``dataset.replay.enabled: false``), through ``kubetune run``, the way a user runs it.

    python scripts/measure_forgetting.py              # the measurement: ~15 min per run on 2 cores
    python scripts/measure_forgetting.py --sweep      # training values against forgetting, the example
    python scripts/measure_forgetting.py --smoke --base-model file:///path/to/tiny-model   # CI

Every finished run is written to the results file at once (default
``docs/measurements/forgetting.json``), with the command, the commit, the machine, the seeds, the
resolved values and every per-example output; an interrupted invocation is resumed by running the
same command again (finished runs are kept, and refused if the trainer, the API or the examples
changed since they were measured; a run cut short, by its hour's timeout or the interruption, goes on
from its last checkpoint). ``docs/measurements/forgetting.md`` is rendered from the JSON, so the
figures in the docs are the measured ones (a test checks it).

``--smoke`` runs the same code path on a tiny model in about two minutes: one planted forgetting run
(replay off, a destructive learning rate) that must be refused promotion. It has no protected run:
on a random tiny model that would show nothing but cost CI time, and the protected path (replay
generated in the training pod, mixed, recorded) is what the end-to-end tests and the README demo run.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml
from measurement import code_digest as measured_code
from measurement import git, run_within

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "docs" / "measurements" / "forgetting.json"
SWEEP_RESULTS = ROOT / "docs" / "measurements" / "forgetting-sweep.json"
# Task datasets from three different generators: six labels (chat), free-text short answers (chat),
# nine intents (alpaca).
DATASETS = {
    "support-tickets": ROOT / "examples" / "support-tickets.yaml",
    "short-answers": ROOT / "examples" / "short-answers.yaml",
    "intents": ROOT / "examples" / "intents.yaml",
}
PROTECTIONS: dict[str, dict[str, Any]] = {
    "on": {},  # the minimal manifest: kubetune's defaults
    # Every protection that changes the model off: no replay, and the adapter kept at full strength.
    "off": {"dataset": {"replay": {"enabled": False}}, "method": {"lora": {"scale": 1.0}}},
}
# --sweep: the protected minimal manifest on the example, one training value changed at a time
# from the defaults (LoRA r=8, learning rate 5e-4, 3 epochs when they were swept), to see what each
# does to forgetting and not only to the task.
SWEEP_DATASET = "support-tickets"
SWEEP: dict[str, dict[str, Any]] = {
    "learningRate 3e-4": {"hyperparameters": {"learningRate": 3e-4}},
    "epochs 2": {"hyperparameters": {"epochs": 2}},
    "lora r 4": {"method": {"lora": {"r": 4}}},
    # Facts are stored mostly in the MLP layers: adapting attention alone may keep more of them.
    "lora attention only": {"method": {"lora": {"targetModules": ["q_proj", "k_proj", "v_proj", "o_proj"]}}},
    # Less training forgot more (lr 3e-4, 2 epochs): does more help, and can it be bought in fewer epochs?
    "epochs 2, learningRate 1e-3": {"hyperparameters": {"epochs": 2, "learningRate": 1e-3}},
    "learningRate 1e-3": {"hyperparameters": {"learningRate": 1e-3}},
}
# What a run's result depends on: a recorded run is reused only while these are unchanged.
CODE_PATHS = ("trainer_image", "api", "examples")
RUN_TIMEOUT_SECONDS = 60 * 60
# Speed, memory, steps and best validation loss of a run's training, from its lineage manifest.
TRAINING_FIGURES = ("tokensPerSecond", "trainedTokensPerSecond", "peakMemoryBytes", "bestEvalLoss", "globalStep")
SMOKE_DATASET_ROWS = 96
# The smoke's planted forgetting: no replay and a learning rate that wrecks a tiny model in a few steps.
PLANTED_FORGETTING = {"dataset": {"replay": {"enabled": False}}, "hyperparameters": {"learningRate": 0.05}}
SMOKE_HYPERPARAMETERS = {"epochs": 1, "sequenceLength": 128, "batchSize": 4, "gradientAccumulationSteps": 1}


def merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in override.items():
        merged[key] = (
            merge(merged[key], value) if isinstance(value, dict) and isinstance(merged.get(key), dict) else value
        )
    return merged


def code_digest() -> str:
    """sha256 of every file (tracked or not, ignored ones aside) that decides a run's result."""
    return measured_code(CODE_PATHS)


def machine_words(where: dict[str, Any]) -> str:
    """Where a measurement ran, for its page: "2 CPUs (platform, torch version)"."""
    return f"{where['cpus']} CPUs ({where['platform']}, torch {where['torch']})"


def machine() -> dict[str, Any]:
    import torch

    return {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }


def planned_runs(smoke: bool, sweep: bool = False) -> list[tuple[str, str, Path, dict[str, Any]]]:
    """(dataset, setting, manifest, spec override) for every run of the measurement."""
    if sweep:
        manifest = DATASETS[SWEEP_DATASET]
        return [(SWEEP_DATASET, f"on, {name}", manifest, override) for name, override in SWEEP.items()]
    if smoke:
        manifest = DATASETS["support-tickets"]
        return [("support-tickets", "planted", manifest, PLANTED_FORGETTING)]
    return [(name, setting, path, PROTECTIONS[setting]) for name, path in DATASETS.items() for setting in PROTECTIONS]


def write_smoke_dataset(manifest: Path, target: Path) -> None:
    """The first rows of the manifest's dataset, so the smoke trains in seconds."""
    spec = yaml.safe_load(manifest.read_text())["spec"]
    source = spec["dataset"]["sources"][0]["uri"].replace("file:///opt/kubetune/examples", str(manifest.parent))
    rows = Path(source.removeprefix("file://")).read_text().splitlines()[:SMOKE_DATASET_ROWS]
    target.write_text("\n".join(rows) + "\n")


def clear_unless_resumable(folder: Path, job_text: str) -> bool:
    """Start ``folder`` clean, unless an attempt of this very job was cut short there (the run's
    timeout, an interrupted invocation): its checkpoints are kept, and ``kubetune run`` resumes from
    them (same spec, data and base model: the same run). Whether it was kept."""
    job_file = folder / "job.yaml"
    if job_file.exists() and job_file.read_text() == job_text and (folder / "runs").exists():
        return True
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    return False


def job_manifest(
    manifest: Path, override: dict[str, Any], *, base_model: str | None, smoke_data: str | None
) -> dict[str, Any]:
    job = yaml.safe_load(manifest.read_text())
    spec = merge(job["spec"], override)
    if base_model:
        spec["baseModel"] = {"uri": base_model}
    if smoke_data:
        spec["dataset"]["sources"] = [{"uri": smoke_data}]
        spec["hyperparameters"] = merge(SMOKE_HYPERPARAMETERS, spec.get("hyperparameters", {}))
    return {**job, "spec": spec}


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


def run_kubetune(job: dict[str, Any], folder: Path, examples: Path) -> tuple[subprocess.CompletedProcess[str], float]:
    """``kubetune run`` of ``job`` in ``folder`` (the examples' paths mapped to ``examples``), as a user
    runs it, within the hour; the process's result and its wall time."""
    job_file = folder / "job.yaml"
    job_file.write_text(yaml.safe_dump(job, sort_keys=False))
    command = [
        str(Path(sys.executable).parent / "kubetune"),
        "run",
        str(job_file),
        "--output-dir",
        str(folder / "runs"),
        "--workdir",
        str(folder / "work"),
        "--map",
        f"/opt/kubetune/examples={examples}",
    ]
    started = time.time()
    # A run past the hour is recorded as failed (not kept on resume), so the other runs still happen.
    result = run_within(command, RUN_TIMEOUT_SECONDS, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    return result, time.time() - started


def run_one(
    name: str, setting: str, manifest: Path, override: dict[str, Any], args: argparse.Namespace, scratch: Path
) -> dict[str, Any]:
    folder = scratch / re.sub(r"[^A-Za-z0-9.]+", "-", f"{name}-{setting}")
    smoke_data = folder / "smoke-data.jsonl"
    job = job_manifest(
        manifest, override, base_model=args.base_model, smoke_data=f"file://{smoke_data}" if args.smoke else None
    )
    resumed = clear_unless_resumable(folder, yaml.safe_dump(job, sort_keys=False))
    if resumed:
        print(f"{name}, {setting}: resuming the attempt cut short in {folder}", file=sys.stderr)
    if args.smoke:
        write_smoke_dataset(manifest, smoke_data)
    result, wall = run_kubetune(job, folder, manifest.parent)
    record: dict[str, Any] = {
        "dataset": name,
        "protections": setting,
        "manifest": job,
        "exitCode": result.returncode,
        "wallSeconds": round(wall, 1),
    }
    if result.returncode != 0:
        record["error"] = result.stderr[-3000:]
        return record
    (version,) = [p for p in (folder / "runs" / job["metadata"]["name"]).iterdir() if p.name.startswith("v")]
    lineage = json.loads((version / "manifest.json").read_text())
    evaluation = lineage["evaluation"]
    # A preference run's default gate judges its rewards, and its primary metric may not be evaluated.
    primary = next((m for m in evaluation["metrics"] if m["name"] == evaluation["primaryMetric"]), None)
    record.update(
        {
            "resolved": lineage["resolved"],
            "replay": lineage["dataset"].get("replay"),
            "splits": lineage["dataset"]["splits"],
            "adapterStrength": lineage["training"].get("adapterStrength"),
            "task": {
                "metric": primary["name"],
                "examples": evaluation["testExamples"],
                "base": primary["base"],
                "tuned": primary["tuned"],
                "ci": [primary["ci_low"], primary["ci_high"]],
            }
            if primary is not None
            else None,
            "metrics": evaluation["metrics"],
            "forgetting": evaluation["forgetting"],
            "gate": evaluation["gate"],
            "promoted": lineage["promoted"],
            "stageSeconds": json.loads((folder / "work" / "stage_times.json").read_text()),
            "training": {key: lineage["training"].get(key) for key in TRAINING_FIGURES},
            "perExample": {
                "test": read_jsonl(version / "reports" / "predictions.jsonl"),
                "general": read_jsonl(version / "reports" / "general_predictions.jsonl"),
            },
        }
    )
    return record


def provenance(command: list[str]) -> dict[str, Any]:
    """Where and from what code a measurement is made."""
    return {
        "command": " ".join(command),
        "commit": git("rev-parse", "HEAD"),
        "dirty": bool(git("status", "--porcelain", "--", *CODE_PATHS)),
        "codeSha256": code_digest(),
        "machine": machine(),
    }


def run_code() -> dict[str, Any]:
    """A run's own code (commit, dirty, digest): an invocation adding runs to a file may come at a later commit."""
    return {k: v for k, v in provenance([]).items() if k in ("commit", "dirty", "codeSha256")}


def measured_elsewhere(runs: list[dict[str, Any]], name: str, commit: str) -> list[str]:
    """The page's note naming the runs measured at another commit than the file's last invocation (a run
    recorded before runs carried their own commit counts as the file's)."""
    elsewhere = [f"{run[name]} at {run['commit'][:12]}" for run in runs if run.get("commit", commit) != commit]
    return [f"Measured at another commit (an earlier invocation): {'; '.join(elsewhere)}.", ""] if elsewhere else []


def resumed_results(args: argparse.Namespace, command: list[str]) -> dict[str, Any]:
    """What ``args.out`` recorded (nothing with ``--restart``), under this invocation's provenance: the
    start of a resumable measurement (measure_continual.py, measure_privacy.py)."""
    if args.restart and args.out.exists():
        args.out.unlink()
    results: dict[str, Any] = json.loads(args.out.read_text()) if args.out.exists() else {}
    return {**results, **provenance(command), "seed": 0}


def load_results(path: Path, command: list[str]) -> dict[str, Any]:
    if path.exists():
        results: dict[str, Any] = json.loads(path.read_text())
        if results["codeSha256"] != code_digest():
            raise SystemExit(
                f"{path} was measured at {results['commit'][:12]} and the trainer, the API or the examples "
                "changed since: its runs cannot be resumed; measure again with --restart (after committing)"
            )
        return results
    return {**provenance(command), "runs": []}


def save(path: Path, results: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_suffix(".tmp")
    temporary.write_text(json.dumps(results, indent=1, ensure_ascii=False) + "\n")
    temporary.replace(path)


def _change(measure: dict[str, Any] | None) -> str:
    """``base → tuned (change relative to the base)`` of a forgetting measure."""
    if measure is None:
        return "n/a"
    return f"{measure['base']:.3f} → {measure['tuned']:.3f} ({-measure['relative_loss']:+.1%})"


def _row(run: dict[str, Any]) -> str:
    if run["exitCode"] != 0:
        return f"| {run['dataset']} | {run['protections']} | failed: exit {run['exitCode']} |"
    task, forgetting = run["task"], run["forgetting"]
    collapse = forgetting.get("labelCollapse")
    cells = [
        run["dataset"],
        run["protections"],
        str((run.get("replay") or {}).get("examples", 0)),
        f"{run['adapterStrength']['scale']:g}" if run.get("adapterStrength") else "1 (before it existed)",
        f"{task['metric']} ({task['examples']})",
        f"{task['base']:.3f}",
        f"{task['tuned']:.3f}",
        f"{task['tuned'] - task['base']:+.3f} [{task['ci'][0]:+.3f}, {task['ci'][1]:+.3f}]",
        _change(forgetting.get("likelihood")),
        _change(forgetting.get("knownAnswers")),
        f"{collapse['base']:.3f} → {collapse['tuned']:.3f}" if collapse else "n/a",
        "yes" if run["promoted"] else "no",
    ]
    return "| " + " | ".join(cells) + " |"


SWEEP_INTRODUCTION = [
    "Protections on (the minimal manifest) on the example tickets, with one training value changed from",
    "the defaults of the time (see `forgetting.md` for the defaults' own run); forgetting measured as there.",
]
MAIN_INTRODUCTION = [
    "Protections on: the minimal manifest (replay of the base model's answers, the adapter strength chosen",
    "on the validation split, auto values). Off: the same manifest with `dataset.replay.enabled: false` and",
    "`method.lora.scale: 1.0`. Forgetting is measured on the built-in regression pool, never trained on:",
    "likelihood of the base model's own answers, and keyword checks of known answers.",
]


def render_markdown(results: dict[str, Any], name: str = "forgetting.json") -> str:
    """The docs page: every figure comes from the JSON."""
    where = results["machine"]
    sweep = name == SWEEP_RESULTS.name
    lines = [
        "# Training values against forgetting" if sweep else "# Forgetting with kubetune's protections on and off",
        "",
        f"Generated by `scripts/measure_forgetting.py` from `{name}`; do not edit by hand.",
        "",
        f"Command: `{results['command']}` at commit `{results['commit'][:12]}`"
        + (" (with uncommitted changes)" if results.get("dirty") else "")
        + f", on {machine_words(where)}.",
        "",
        *(SWEEP_INTRODUCTION if sweep else MAIN_INTRODUCTION),
        "",
        "| dataset | protections | replay rows | adapter strength | task metric (n) | base | tuned | delta [95% CI] "
        "| likelihood of base answers | known answers right | label collapse | promoted |",
        "|---|---|---:|---:|---|---:|---:|---|---:|---:|---:|---|",
        *(_row(run) for run in results["runs"]),
        "",
        "Verdicts:",
        "",
    ]
    for run in results["runs"]:
        if run["exitCode"] == 0:
            lines.append(f"- {run['dataset']}, protections {run['protections']}: {run['gate']['message']}")
    return "\n".join(lines) + "\n"


def add_run_arguments(parser: argparse.ArgumentParser, results: Path) -> None:
    """The options every measurement through ``kubetune run`` takes (this script's and measure_methods.py's)."""
    parser.add_argument("--out", type=Path, default=results, help="results JSON (the .md is written beside it)")
    parser.add_argument(
        "--smoke", action="store_true", help="a planted run on a tiny model: the CI check of the script"
    )
    parser.add_argument("--base-model", default=None, help="override spec.baseModel.uri (the smoke's tiny model)")
    parser.add_argument("--restart", action="store_true", help="discard recorded runs and measure again")
    parser.add_argument("--scratch", type=Path, default=None, help="where runs write (default: a temporary folder)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_run_arguments(parser, RESULTS)
    parser.add_argument("--only", nargs="*", default=None, help="dataset names to run (default: all)")
    parser.add_argument(
        "--sweep",
        action="store_true",
        help=f"training values on {SWEEP_DATASET} (default --out: {SWEEP_RESULTS.relative_to(ROOT)})",
    )
    args = parser.parse_args(argv)
    if args.sweep and args.out == RESULTS:
        args.out = SWEEP_RESULTS
    command = ["python", "scripts/measure_forgetting.py", *(argv if argv is not None else sys.argv[1:])]
    if args.restart and args.out.exists():
        args.out.unlink()
    results = load_results(args.out, command)
    done = {(r["dataset"], r["protections"]) for r in results["runs"] if r["exitCode"] == 0}
    results["runs"] = [r for r in results["runs"] if (r["dataset"], r["protections"]) in done]
    scratch = args.scratch or Path(tempfile.mkdtemp(prefix="kubetune-forgetting-"))
    for name, setting, manifest, override in planned_runs(args.smoke, args.sweep):
        if (name, setting) in done or (args.only and name not in args.only):
            print(f"{name}, protections {setting}: recorded, skipped", file=sys.stderr)
            continue
        print(f"{name}, protections {setting}: running", file=sys.stderr)
        record = run_one(name, setting, manifest, override, args, scratch)
        results["runs"].append(record)
        save(args.out, results)
        args.out.with_suffix(".md").write_text(render_markdown(results, args.out.name))
        verdict = record["gate"]["message"] if record["exitCode"] == 0 else f"failed (exit {record['exitCode']})"
        print(f"{name}, protections {setting}: {record['wallSeconds']:.0f} s, {verdict}", file=sys.stderr)
    save(args.out, results)
    args.out.with_suffix(".md").write_text(render_markdown(results, args.out.name))
    return 0 if all(r["exitCode"] == 0 for r in results["runs"]) else 1


if __name__ == "__main__":
    sys.exit(main())
