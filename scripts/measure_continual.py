"""Measure continual learning on two sequential tasks from real text: ticket triage (task A, the
support-tickets example), then smart-home intents (task B, the intents example), through ``kubetune
run`` the way a user runs it.

    python scripts/measure_continual.py              # A, then B five ways: ~20 min per run on 2 cores
    python scripts/measure_continual.py --only ewc   # some variants; the others stay recorded
    python scripts/measure_continual.py --only --ewc-lambda 1e5 1e6   # EWC alone at set weights
    python scripts/measure_continual.py --smoke --base-model file:///path/to/tiny-model   # CI

Each task's rows are split once, by a hash of the row, into training rows and held-out test rows.
Version A trains on A's training rows (its minimal manifest, with ``continual.publishFisher: true``
so a later job can use its Fisher), with A's test rows as its ``evalOnly`` source. Each variant of B
starts from version A (``continual.from``) and trains on B's training rows, with A's and B's test rows
as its ``evalOnly`` sources: its evaluation's "base" is version A, so one run gives, per test row of
either task, version A's answer and the answer after B. The variants:

- ``plain``: sequential tuning, nothing kept (``replayFraction: 0``);
- ``replay``: the default recipe for ``from: <version>``, frozen before this measurement (what a
  job that says nothing else gets: replayFraction 0.5, no EWC);
- ``ewc``: no replay, elastic weight consolidation with A's published Fisher;
- ``replay + ewc``: both;
- ``osf``: no replay, orthogonal subspace fine-tuning (``method.adapter: osf``) instead of a fresh LoRA;
- ``ewc, lambda L`` (``--ewc-lambda L ...``): no replay, EWC at the penalty weight ``L``: a sweep of
  ``continual.ewc.lambda`` beside the auto weight of ``ewc``.

Per variant: accuracy on A's test rows before B (version A) and after, and on B's, each with a 95%
paired bootstrap interval, and the mean likelihood of A's reference answers. A variant keeps A when
its accuracy on A after B is within 5% (relative) of before; the default recipe must (the issue's
bar). Where version A's accuracy is 0 (the smoke's random tiny model), the likelihood stands in: kept
when the mean negative log-likelihood of A's answers rose by at most 5%.

Every finished run is written to the results file at once (default ``docs/measurements/continual.json``)
with the command, the commit, the machine, the seeds and every per-example output; running the same
command again measures only what is not recorded (a run cut short goes on from its last checkpoint;
where the scratch folder is gone, version A is trained again and the recorded variants stand when it
comes out with the same weights, by their SHA-256).
``docs/measurements/continual.md`` is rendered from the JSON (a test checks it).

``--smoke`` runs version A and one planted variant on a tiny model: sequential tuning at a destructive
learning rate, which the script must flag as forgetting A.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import yaml
from measure_forgetting import (
    DATASETS,
    ROOT,
    SMOKE_DATASET_ROWS,
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

from kubetune_trainer.evaluation.metrics import label_match, paired_bootstrap

RESULTS = ROOT / "docs" / "measurements" / "continual.json"
TASK_A, TASK_B = "support-tickets", "intents"
TEST_SHARE = 0.2  # of each task's rows, held out by a hash of the row
KEEP_WITHIN = 0.05  # the largest relative loss on A a variant may show and still keep it
DEFAULT_VARIANT = "replay"
# Each variant of B: what its manifest adds to the intents example's (beside continual.from).
VARIANTS: dict[str, dict[str, Any]] = {
    "plain": {"continual": {"replayFraction": 0}},
    DEFAULT_VARIANT: {},  # the default recipe: continual.from and nothing else
    "ewc": {"continual": {"replayFraction": 0, "ewc": {}}},
    "replay + ewc": {"continual": {"ewc": {}}},
    # peft's orthogonal subspace fine-tuning instead of a fresh LoRA: the version's largest singular
    # directions frozen, the method's own protection alone (no replay), beside plain and ewc.
    "osf": {"continual": {"replayFraction": 0}, "method": {"adapter": "osf"}},
}
PLANTED = "planted: plain at learning rate 0.05"
# The smoke's version A must learn something to lose: the tiny random model learns A's labels only
# when every weight trains (its unembedding included), over a few epochs. Generation is what costs on
# a tiny model, so its answers stay short and the general prompts unasked.
SMOKE_A = {"hyperparameters": {"learningRate": 0.001, "epochs": 3}}
SMOKE_EVERY_JOB = {
    "hyperparameters": SMOKE_HYPERPARAMETERS,
    "dataset": {"replay": {"enabled": False}},
    "evaluation": {"forgetting": False, "maxNewTokens": 4},
    "method": {"type": "full"},
}
SMOKE_VARIANTS: dict[str, dict[str, Any]] = {
    PLANTED: {"continual": {"replayFraction": 0}, "hyperparameters": {"learningRate": 0.05}}
}


def split_rows(rows: Sequence[str], share: float = TEST_SHARE) -> tuple[list[str], list[str]]:
    """(training rows, test rows): a row is a test row when its hash falls under ``share``."""
    train: list[str] = []
    test: list[str] = []
    for row in rows:
        bucket = int(hashlib.sha256(row.encode()).hexdigest()[:8], 16) / 0xFFFFFFFF
        (test if bucket < share else train).append(row)
    return train, test


def example_rows(manifest: Path) -> tuple[list[str], str]:
    """The example's rows and its source's format."""
    source = yaml.safe_load(manifest.read_text())["spec"]["dataset"]["sources"][0]
    path = Path(source["uri"].replace("file:///opt/kubetune/examples", str(manifest.parent)).removeprefix("file://"))
    return [line for line in path.read_text().splitlines() if line.strip()], str(source.get("format", "auto"))


def write_task_files(task: str, folder: Path, smoke: bool) -> dict[str, Any]:
    """The task's training and test files in ``folder``: sources for the jobs."""
    rows, fmt = example_rows(DATASETS[task])
    train, test = split_rows(rows[:SMOKE_DATASET_ROWS] if smoke else rows)
    folder.mkdir(parents=True, exist_ok=True)
    files = {"train": folder / f"{task}-train.jsonl", "test": folder / f"{task}-test.jsonl"}
    for part, chosen in (("train", train), ("test", test)):
        files[part].write_text("\n".join(chosen) + "\n")
    return {"format": fmt, **{part: f"file://{path}" for part, path in files.items()}}


def _sources(*items: tuple[dict[str, Any], str, bool]) -> list[dict[str, Any]]:
    return [
        {"uri": files[part], "format": files["format"], **({"evalOnly": True} if held_out else {})}
        for files, part, held_out in items
    ]


def job_for(
    task: str, sources: list[dict[str, Any]], override: dict[str, Any], args: argparse.Namespace
) -> dict[str, Any]:
    """The task's example manifest with these sources and ``override`` (and, for the smoke, the tiny
    model, short rows and no built-in replay)."""
    job = yaml.safe_load(DATASETS[task].read_text())
    spec = job["spec"]
    if args.smoke:
        spec = merge(spec, SMOKE_EVERY_JOB)
    spec = merge(spec, override)
    spec["dataset"]["sources"] = sources
    if args.base_model:
        spec["baseModel"] = {"uri": args.base_model}
    return {**job, "spec": spec}


def run_job(name: str, job: dict[str, Any], folder: Path) -> tuple[dict[str, Any], Path | None]:
    """One run (resumed where an attempt of the same job was cut short): its record and version folder."""
    if clear_unless_resumable(folder, yaml.safe_dump(job, sort_keys=False)):
        print(f"{name}: resuming the attempt cut short in {folder}", file=sys.stderr)
    result, wall = run_kubetune(job, folder, DATASETS[TASK_A].parent)
    record: dict[str, Any] = {
        "manifest": job,
        "exitCode": result.returncode,
        "wallSeconds": round(wall, 1),
        **run_code(),
    }
    if result.returncode != 0:
        return {**record, "error": result.stderr[-3000:]}, None
    (version,) = [p for p in (folder / "runs" / job["metadata"]["name"]).iterdir() if p.name.startswith("v")]
    return record, version


def _accuracy(rows: list[dict[str, Any]], side: str) -> Callable[[Sequence[int]], float]:
    return lambda picks: sum(label_match(rows[i][side] or "", rows[i]["reference"]) for i in picks) / max(len(picks), 1)


def task_figures(rows: list[dict[str, Any]], *, seed: int = 0) -> dict[str, Any]:
    """Accuracy before (the version continued) and after, with 95% paired bootstrap intervals, and the
    mean negative log-likelihood of the reference answers."""
    everything = list(range(len(rows)))
    before, after = _accuracy(rows, "base"), _accuracy(rows, "tuned")
    interval = paired_bootstrap(len(rows), after, seed=seed)
    change = paired_bootstrap(len(rows), lambda picks: after(picks) - before(picks), seed=seed)
    return {
        "examples": len(rows),
        "before": before(everything),
        "after": after(everything),
        "afterCi": [interval.low, interval.high],
        "changeCi": [change.low, change.high],
        "nllBefore": sum(r["baseNll"] for r in rows) / max(len(rows), 1),
        "nllAfter": sum(r["tunedNll"] for r in rows) / max(len(rows), 1),
    }


def kept(a: dict[str, Any]) -> bool:
    """Task A kept within KEEP_WITHIN (relative) of its accuracy before B; by likelihood where it had none."""
    if a["before"] > 0:
        return bool(a["after"] >= (1 - KEEP_WITHIN) * a["before"])
    return bool(a["nllAfter"] <= (1 + KEEP_WITHIN) * a["nllBefore"])


def weights_digest(version: Path) -> str:
    """Version A's identity: the SHA-256 of what it published of its weights (each file's path and digest,
    from its manifest). Training is seeded, so an invocation whose scratch folder is gone trains A again
    to the same digest, and the variants measured from the earlier A stand."""
    artifacts = json.loads((version / "manifest.json").read_text())["artifacts"]
    weights = sorted((a["path"], a["sha256"]) for a in artifacts if a["path"].split("/", 1)[0] in ("merged", "adapter"))
    return hashlib.sha256(json.dumps(weights).encode()).hexdigest()


def variant_record(name: str, record: dict[str, Any], version: Path, test_uris: dict[str, str]) -> dict[str, Any]:
    lineage = json.loads((version / "manifest.json").read_text())
    predictions = read_jsonl(version / "reports" / "predictions.jsonl")
    by_task = {
        task: [p for p in predictions if p["source"].rsplit(":", 1)[0] == uri] for task, uri in test_uris.items()
    }
    figures = {task: task_figures(rows) for task, rows in by_task.items()}
    return {
        **record,
        "variant": name,
        "continual": lineage.get("continual"),
        "tasks": figures,
        "keptA": kept(figures["A"]),
        "gate": lineage["evaluation"]["gate"],
        "forgetting": lineage["evaluation"]["forgetting"],
        "resolved": lineage["resolved"],
        "training": {k: lineage["training"].get(k) for k in ("globalStep", "tokensPerSecond", "peakMemoryBytes")},
        "perExample": {"test": predictions},
    }


def _percent(value: float) -> str:
    return f"{100 * value:.1f}%"


def _row(run: dict[str, Any]) -> str:
    if run["exitCode"] != 0:
        return f"| {run['variant']} | failed (exit {run['exitCode']}) | | | | |"
    a, b = run["tasks"]["A"], run["tasks"]["B"]
    change = (a["after"] - a["before"]) / a["before"] if a["before"] else 0.0
    return (
        f"| {run['variant']} | {a['before']:.3f} → {a['after']:.3f} [{a['afterCi'][0]:.3f}, {a['afterCi'][1]:.3f}] "
        f"| {change:+.1%} | {a['nllBefore']:.3f} → {a['nllAfter']:.3f} "
        f"| {b['before']:.3f} → {b['after']:.3f} [{b['afterCi'][0]:.3f}, {b['afterCi'][1]:.3f}] "
        f"| {'yes' if run['keptA'] else '**no**'} |"
    )


def render_markdown(results: dict[str, Any]) -> str:
    lines = [
        "# Continual learning: ticket triage (A), then intents (B)",
        "",
        f"Rendered from `continual.json` by `{results['command']}` at {results['commit'][:12]} on "
        f"{machine_words(results['machine'])}. Version A trained on A alone; each variant of B started from "
        "it. Accuracy on each task's held-out rows before B (version A) → after, 95% bootstrap interval of "
        f"after; A kept = within {_percent(KEEP_WITHIN)} of its accuracy before B. The default recipe is "
        f"`{DEFAULT_VARIANT}`.",
        "",
        "| variant | A accuracy | A change | A answers' NLL | B accuracy | A kept |",
        "|---|---|---:|---|---|---|",
        *(_row(run) for run in results["variants"]),
        "",
        *measured_elsewhere(results["variants"], "variant", results["commit"]),
    ]
    return "\n".join(lines)


def ewc_sweep_variant(weight: str) -> tuple[str, dict[str, Any]]:
    """The variant of ``--ewc-lambda weight``: EWC alone at that penalty weight, named as typed."""
    return f"ewc, lambda {weight}", {"continual": {"replayFraction": 0, "ewc": {"lambda": float(weight)}}}


def _variants(smoke: bool, ewc_lambdas: Sequence[str] = ()) -> dict[str, dict[str, Any]]:
    return SMOKE_VARIANTS if smoke else {**VARIANTS, **dict(ewc_sweep_variant(w) for w in ewc_lambdas)}


def _weight(text: str) -> str:
    """An ``--ewc-lambda`` value: kept as typed (it names the variant) once it reads as a number >= 0."""
    try:
        ok = float(text) >= 0
    except ValueError:
        ok = False
    if not ok:
        raise argparse.ArgumentTypeError(f"{text!r} is not a penalty weight (a number >= 0)")
    return text


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_run_arguments(parser, RESULTS)
    parser.add_argument("--only", nargs="*", default=None, help=f"variants to run (default: all of {list(VARIANTS)})")
    parser.add_argument(
        "--ewc-lambda",
        nargs="+",
        default=[],
        type=_weight,
        help="also run EWC alone at each of these continual.ewc.lambda values (with --only: only these)",
    )
    args = parser.parse_args(argv)
    sweep = dict(ewc_sweep_variant(w) for w in args.ewc_lambda)
    if args.only is not None:
        args.only = [*args.only, *sweep]
    results = resumed_results(
        args, ["python", "scripts/measure_continual.py", *(argv if argv is not None else sys.argv[1:])]
    )
    results.setdefault("variants", [])
    results["variants"] = [v for v in results["variants"] if v["exitCode"] == 0]
    scratch = args.scratch or Path(tempfile.mkdtemp(prefix="kubetune-continual-"))
    data = {
        "A": write_task_files(TASK_A, scratch / "data", args.smoke),
        "B": write_task_files(TASK_B, scratch / "data", args.smoke),
    }
    test_uris = {task: files["test"] for task, files in data.items()}

    recorded = results.get("versionA") or {}
    if recorded.get("exitCode") == 0 and Path(recorded["version"]).is_dir():
        version_a: Path | None = Path(recorded["version"])  # an earlier invocation's, in the same --scratch
    else:
        first = job_for(
            TASK_A,
            _sources((data["A"], "train", False), (data["A"], "test", True)),
            merge(SMOKE_A if args.smoke else {}, {"continual": {"publishFisher": True}}),
            args,
        )
        record, version_a = run_job("A", first, scratch / "A")
        digest = weights_digest(version_a) if version_a else None
        if digest is None or digest != recorded.get("weightsSha256"):
            results["variants"] = []  # measured from another version A
        else:
            print("version A trained again to the same weights: its recorded variants stand", file=sys.stderr)
        results["versionA"] = {**record, "version": str(version_a), "weightsSha256": digest}
        save(args.out, results)  # at once: an invocation stopped during a variant must not train A again
        if version_a is None:
            print(f"version A failed: {record['error']}", file=sys.stderr)
            return 1
    done = {v["variant"] for v in results["variants"]}
    for name, override in _variants(args.smoke, args.ewc_lambda).items():
        if name in done or (args.only and name not in args.only):
            print(f"{name}: recorded or not asked for, skipped", file=sys.stderr)
            continue
        print(f"{name}: running", file=sys.stderr)
        sources = _sources((data["B"], "train", False), (data["A"], "test", True), (data["B"], "test", True))
        job = job_for(TASK_B, sources, merge(override, {"continual": {"from": f"file://{version_a}"}}), args)
        record, version = run_job(name, job, scratch / "B" / name.replace(" ", "").replace(":", "-"))
        variant = variant_record(name, record, version, test_uris) if version else {**record, "variant": name}
        results["variants"].append(variant)
        save(args.out, results)
        args.out.with_suffix(".md").write_text(render_markdown(results))
        verdict = ("keeps A" if variant["keptA"] else "FORGETS A") if version else f"failed (exit {record['exitCode']})"
        print(f"{name}: {record['wallSeconds']:.0f} s, {verdict}", file=sys.stderr)
    order = list(_variants(args.smoke, args.ewc_lambda))
    results["variants"].sort(key=lambda v: order.index(v["variant"]) if v["variant"] in order else len(order))
    save(args.out, results)
    args.out.with_suffix(".md").write_text(render_markdown(results))
    default = next((v for v in results["variants"] if v["variant"] == DEFAULT_VARIANT), None)
    if default is not None and default["exitCode"] == 0 and not default["keptA"]:
        print(f"the default recipe ({DEFAULT_VARIANT}) does not keep A within {_percent(KEEP_WITHIN)}", file=sys.stderr)
        return 1
    return 0 if all(v["exitCode"] == 0 for v in results["variants"]) else 1


if __name__ == "__main__":
    sys.exit(main())
