"""Measure what differential privacy costs on the ticket-triage example: accuracy on its held-out test
split against the privacy budget, through ``kubetune run`` the way a user runs it.

    python scripts/measure_privacy.py                 # the baseline and every run below: ~25 min each on 2 cores
    python scripts/measure_privacy.py --only "epsilon 4"
    python scripts/measure_privacy.py --smoke --base-model file:///path/to/tiny-model   # CI

Each run is the support-tickets example's minimal manifest with ``spec.privacy.targetEpsilon`` set (and
nothing else, but for one run that also narrows the adapter to the attention's query and value
projections); the baseline trains the same way without privacy: rows unpacked, no early stopping, the
adapter at full strength, which is what ``privacy`` resolves those settings to. Per run: accuracy of the
base model and the tuned one on the test rows, a 95% paired bootstrap interval, and for the private
runs the epsilon their accountant reported, which the script recomputes from (noise, sample rate,
steps, delta) with Opacus's RDP analysis: a run whose record does not recompute, or that spent more
than its target, is flagged and the script exits 1.

Every finished run is written at once to the results file (default ``docs/measurements/privacy.json``)
with the command, commit, machine, seeds and per-example answers; the same command again measures only
what is not recorded, and a run cut short (the hour's limit, an interrupted invocation) resumes from its
last checkpoint: DP-SGD saves its whole state, accountant and random generators included, so the resumed
run spends what one uninterrupted run spends (``training.resumedFromStep`` in its record; its
``wallSeconds`` is the last invocation's).
``docs/measurements/privacy.md`` is rendered from the JSON.

``--smoke`` runs one private budget on a tiny model and checks the verifier on a planted record: the
same run's record with half its noise, whose claimed epsilon the script must flag as not recomputing.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
from pathlib import Path
from typing import Any

import yaml
from measure_continual import example_rows, task_figures
from measure_forgetting import (
    DATASETS,
    ROOT,
    SMOKE_HYPERPARAMETERS,
    add_run_arguments,
    clear_unless_resumable,
    machine_words,
    measured_elsewhere,
    merge,
    read_jsonl,
    resumed_results,
    run_code,
    run_kubetune,
    save,
)

RESULTS = ROOT / "docs" / "measurements" / "privacy.json"
TASK = "support-tickets"
BASELINE = "no privacy"
# What spec.privacy resolves these to, set in the baseline so that they are not part of the difference. The
# private recipe's larger batch and higher learning rate stay part of it: each run takes its own defaults.
WITHOUT_PRIVACY = {
    "hyperparameters": {"packing": False, "earlyStoppingPatience": 0},
    "method": {"lora": {"scale": 1.0}},
}
RUNS: dict[str, dict[str, Any]] = {
    BASELINE: WITHOUT_PRIVACY,
    "epsilon 16": {"privacy": {"targetEpsilon": 16}},
    # The default adapter (all-linear, rank 8: 2.4 M weights) neither learns nor keeps the general ability at
    # epsilon 16; DP-SGD's noise grows with the square root of the trained weights, and Yu et al. 2022 (DP
    # fine-tuning with LoRA) adapt the attention's query and value projections only (460 k weights here).
    "epsilon 16, q and v only": {
        "privacy": {"targetEpsilon": 16},
        "method": {"lora": {"targetModules": ["q_proj", "v_proj"]}},
    },
    "epsilon 4": {"privacy": {"targetEpsilon": 4}},
    "epsilon 1": {"privacy": {"targetEpsilon": 1}},
}
SMOKE_RUNS: dict[str, dict[str, Any]] = {"epsilon 8": {"privacy": {"targetEpsilon": 8}}}
SMOKE_EVERY_JOB = {
    "hyperparameters": SMOKE_HYPERPARAMETERS,
    "dataset": {"replay": {"enabled": False}},
    "evaluation": {"forgetting": False, "maxNewTokens": 4},
}
SMOKE_ROWS = 32
RELATIVE_TOLERANCE = 1e-6  # the recomputed epsilon against the reported one


def recomputed_epsilon(privacy: dict[str, Any]) -> float:
    """Epsilon of the recorded steps from Opacus's RDP analysis (the accountant's own formulas, not the
    trainer's accountant object)."""
    from opacus.accountants.analysis.rdp import compute_rdp, get_privacy_spent
    from opacus.accountants.rdp import RDPAccountant

    orders = RDPAccountant.DEFAULT_ALPHAS
    rdp = compute_rdp(
        q=privacy["sampleRate"], noise_multiplier=privacy["noiseMultiplier"], steps=privacy["steps"], orders=orders
    )
    epsilon, _ = get_privacy_spent(orders=orders, rdp=rdp, delta=privacy["delta"])
    return float(epsilon)


def problems(privacy: dict[str, Any]) -> list[str]:
    """What is wrong with a private run's record: an epsilon that does not recompute, or one over budget."""
    found = []
    again = recomputed_epsilon(privacy)
    if not math.isclose(again, privacy["epsilon"], rel_tol=RELATIVE_TOLERANCE):
        found.append(f"reported epsilon {privacy['epsilon']:.4f} but its steps spent {again:.4f}")
    if privacy["epsilon"] > privacy["targetEpsilon"]:
        found.append(f"spent epsilon {privacy['epsilon']:.4f} over its target {privacy['targetEpsilon']}")
    return found


def job_for(override: dict[str, Any], args: argparse.Namespace, data: Path | None) -> dict[str, Any]:
    job = yaml.safe_load(DATASETS[TASK].read_text())
    spec = merge(job["spec"], SMOKE_EVERY_JOB) if args.smoke else job["spec"]
    spec = merge(spec, override)
    if data is not None:
        spec["dataset"]["sources"] = [{**spec["dataset"]["sources"][0], "uri": f"file://{data}"}]
    if args.base_model:
        spec["baseModel"] = {"uri": args.base_model}
    return {**job, "spec": spec}


def smoke_data(folder: Path) -> Path:
    """The example's first rows: the tiny model's run stays short."""
    rows = example_rows(DATASETS[TASK])[0][:SMOKE_ROWS]
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "rows.jsonl").write_text("\n".join(rows) + "\n")
    return folder / "rows.jsonl"


def measure(name: str, job: dict[str, Any], folder: Path) -> dict[str, Any]:
    if clear_unless_resumable(folder, yaml.safe_dump(job, sort_keys=False)):
        print(f"{name}: resuming the attempt cut short in {folder}", file=sys.stderr)
    result, wall = run_kubetune(job, folder, DATASETS[TASK].parent)
    record: dict[str, Any] = {
        "run": name,
        "manifest": job,
        "exitCode": result.returncode,
        "wallSeconds": round(wall, 1),
        **run_code(),
    }
    if result.returncode != 0:
        return {**record, "error": result.stderr[-3000:]}
    (version,) = [p for p in (folder / "runs" / job["metadata"]["name"]).iterdir() if p.name.startswith("v")]
    lineage = json.loads((version / "manifest.json").read_text())
    predictions = read_jsonl(version / "reports" / "predictions.jsonl")
    privacy = lineage.get("privacy")
    return {
        **record,
        "test": task_figures(predictions),
        "privacy": privacy,
        "problems": problems(privacy) if privacy else [],
        "resolved": lineage["resolved"],
        "training": {
            k: lineage["training"].get(k)
            for k in ("globalStep", "resumedFromStep", "tokensPerSecond", "peakMemoryBytes")
        },
        "perExample": {"test": predictions},
    }


def _row(run: dict[str, Any]) -> str:
    if run["exitCode"] != 0:
        return f"| {run['run']} | failed (exit {run['exitCode']}) | | | |"
    test, privacy = run["test"], run["privacy"]
    spent = (
        f"{privacy['epsilon']:.2f} (δ {privacy['delta']:.1e}, noise {privacy['noiseMultiplier']:.2f})"
        if privacy
        else "∞"
    )
    return (
        f"| {run['run']} | {spent} | {test['before']:.3f} → {test['after']:.3f} "
        f"[{test['afterCi'][0]:.3f}, {test['afterCi'][1]:.3f}] | {run['training']['globalStep']} "
        f"| {'; '.join(run['problems']) or 'ok'} |"
    )


def render_markdown(results: dict[str, Any]) -> str:
    return "\n".join(
        [
            "# Differential privacy: accuracy against the budget on the ticket-triage example",
            "",
            f"Rendered from `privacy.json` by `{results['command']}` at {results['commit'][:12]} on "
            f"{machine_words(results['machine'])}. Accuracy on the example's test rows, base → tuned, with the "
            "95% bootstrap interval of the tuned model; epsilon as the run's accountant reported it and the "
            "script recomputed it.",
            "",
            "| run | epsilon spent | accuracy | steps | record |",
            "|---|---|---|---:|---|",
            *(_row(run) for run in results["runs"]),
            "",
            *measured_elsewhere(results["runs"], "run", results["commit"]),
        ]
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_run_arguments(parser, RESULTS)
    parser.add_argument("--only", nargs="*", default=None, help=f"runs to make (default: all of {list(RUNS)})")
    args = parser.parse_args(argv)
    results = resumed_results(
        args, ["python", "scripts/measure_privacy.py", *(argv if argv is not None else sys.argv[1:])]
    )
    results["runs"] = [run for run in results.get("runs", []) if run["exitCode"] == 0]
    scratch = args.scratch or Path(tempfile.mkdtemp(prefix="kubetune-privacy-"))
    data = smoke_data(scratch / "data") if args.smoke else None
    plan = SMOKE_RUNS if args.smoke else RUNS
    done = {run["run"] for run in results["runs"]}
    for name, override in plan.items():
        if name in done or (args.only and name not in args.only):
            print(f"{name}: recorded or not asked for, skipped", file=sys.stderr)
            continue
        print(f"{name}: running", file=sys.stderr)
        run = measure(name, job_for(override, args, data), scratch / name.replace(" ", "-"))
        results["runs"].append(run)
        save(args.out, results)
        args.out.with_suffix(".md").write_text(render_markdown(results))
        verdict = "; ".join(run.get("problems") or []) or ("ok" if run["exitCode"] == 0 else "failed")
        print(f"{name}: {run['wallSeconds']:.0f} s, {verdict}", file=sys.stderr)
    order = list(plan)
    results["runs"].sort(key=lambda r: order.index(r["run"]) if r["run"] in order else len(order))
    if args.smoke:
        private = next((r for r in results["runs"] if r.get("privacy")), None)
        if private is not None:
            # The planted record: the same run claiming its epsilon with half the noise it used.
            doctored = {**private["privacy"], "noiseMultiplier": private["privacy"]["noiseMultiplier"] / 2}
            results["planted"] = {"privacy": doctored, "problems": problems(doctored)}
            print(f"planted: {'; '.join(results['planted']['problems']) or 'NOT FLAGGED'}", file=sys.stderr)
    save(args.out, results)
    args.out.with_suffix(".md").write_text(render_markdown(results))
    failed = [r for r in results["runs"] if r["exitCode"] != 0 or r["problems"]]
    planted_missed = args.smoke and not (results.get("planted") or {}).get("problems")
    return 1 if failed or planted_missed else 0


if __name__ == "__main__":
    sys.exit(main())
