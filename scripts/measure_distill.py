"""Measure distillation on the ticket-triage example: a tuned SmolLM2-135M teacher distilled into a student
made by dropping every other decoder layer of the same base, against that student tuned on the labels
alone, with each model's size and speed, through ``kubetune run`` the way a user runs it.

    python scripts/measure_distill.py                  # the teacher, then two students: ~20 min per run on 2 cores
    python scripts/measure_distill.py --only distilled # some students; the others stay recorded
    python scripts/measure_distill.py --smoke --base-model file:///path/to/tiny-model   # CI

The task's rows are split once, by a hash of the row, into training and held-out test rows (the split
``scripts/measure_continual.py`` uses). The teacher is the example's minimal manifest on the training
rows, with the test rows as its ``evalOnly`` source: a published version. The student is the base model
with decoder layers 0, 2, 4, ... kept and the others dropped (the same tokenizer, so ``mode: auto``
resolves to logit distillation), saved as a model folder. Both students run the example's manifest with
the student as ``spec.baseModel``; the distilled one adds ``method.objective: distill`` with the
teacher's version folder as ``distill.teacher`` (temperature and alpha at their defaults). Only the
teacher differs between them.

Per run: accuracy on the test rows before tuning and after, with a 95% bootstrap interval; between the
students, the paired 95% interval of the distilled one's accuracy minus the labels-only one's, row by
row. Size: parameters and bytes of each published merged model. Speed: greedy generation of the same
test prompts by the teacher's and the distilled student's merged models in this process, alternating,
median of three rounds, as milliseconds per generated token, and their ratio (measured in the same run,
never in a test).

Every finished run is written to the results file at once (default ``docs/measurements/distill.json``)
with the command, the commit, the machine, the seeds and every per-example answer; the same command again
measures only what is not recorded (a run cut short goes on from its last checkpoint).
``docs/measurements/distill.md`` is rendered from the JSON (a test checks it).

Each distilled run is verified to have been taught by the measured teacher: the lineage's
``distill.teacher`` must name the teacher's version and the SHA-256 of its ``manifest.json``; a run that
was not is flagged and the script exits 1.

``--smoke`` runs the whole measurement on a tiny model (two layers, so a one-layer student) with short
answers, in seconds, and checks the verifier on a planted record: the distilled run's record naming
another teacher's manifest, which the script must flag.
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import json
import math
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from measure_continual import (
    SMOKE_A,
    _sources,
    job_for,
    run_job,
    task_figures,
    write_task_files,
)
from measure_forgetting import add_run_arguments, machine_words, merge, read_jsonl, resumed_results, save

from kubetune_trainer.evaluation.metrics import label_match, paired_bootstrap

RESULTS = Path(__file__).resolve().parents[1] / "docs" / "measurements" / "distill.json"
TASK = "support-tickets"
KEEP_EVERY = 2  # the student keeps decoder layers 0, KEEP_EVERY, 2 * KEEP_EVERY, ...
LABELS_ONLY, DISTILLED = "labels only", "distilled"
# What each student's manifest adds to the example's (beside the student as its base model); the
# distilled one's teacher is the teacher run's version folder, known once it is published.
STUDENTS: dict[str, dict[str, Any]] = {LABELS_ONLY: {}, DISTILLED: {"method": {"objective": "distill"}}}
SPEED_ROUNDS = 3
SPEED_NEW_TOKENS = {False: 32, True: 4}  # per prompt: measurement, smoke
SPEED_PROMPTS = {False: 16, True: 2}


def make_student(base: Path, dest: Path, keep_every: int = KEEP_EVERY) -> dict[str, Any]:
    """``base`` with only every ``keep_every``-th decoder layer (the first kept), saved to ``dest`` with
    its tokenizer, chat template and generation settings, in the base's dtype. Deterministic: the same
    base gives the same student."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(base, dtype="auto")
    layers = model.model.layers
    kept = list(range(0, len(layers), keep_every))
    model.model.layers = torch.nn.ModuleList(layers[i] for i in kept)
    for index, layer in enumerate(model.model.layers):
        layer.self_attn.layer_idx = index  # the KV cache is indexed by position in the stack
    model.config.num_hidden_layers = len(kept)
    if getattr(model.config, "layer_types", None):
        model.config.layer_types = [model.config.layer_types[i] for i in kept]
    dest.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(dest)
    AutoTokenizer.from_pretrained(base).save_pretrained(dest)
    return {"uri": f"file://{dest}", "baseLayers": len(layers), "keptLayers": kept}


def model_size(folder: Path) -> dict[str, int]:
    """Parameters and bytes of a model folder's safetensors files (tied weights stored once, counted once)."""
    from safetensors import safe_open

    parameters, size = 0, 0
    for path in sorted(folder.glob("*.safetensors")):
        size += path.stat().st_size
        with safe_open(str(path), "pt") as weights:
            for name in weights.keys():  # noqa: SIM118 (safe_open is not a mapping)
                parameters += math.prod(weights.get_slice(name).get_shape())
    return {"parameters": parameters, "bytes": size}


def generation_speed(folders: dict[str, Path], prompts: list[list[dict[str, str]]], new_tokens: int) -> dict[str, Any]:
    """Milliseconds per generated token of each model, greedy, exactly ``new_tokens`` per prompt, the
    models alternating round by round (so a slower moment of the machine falls on both); the median round."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    loaded = {}
    for name, folder in folders.items():
        tokenizer = AutoTokenizer.from_pretrained(folder)
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
        inputs = [tokenizer.apply_chat_template(p, add_generation_prompt=True, return_tensors="pt") for p in prompts]
        loaded[name] = (model, [i if isinstance(i, torch.Tensor) else i["input_ids"] for i in inputs], tokenizer)
    rounds: dict[str, list[float]] = {name: [] for name in folders}
    for _ in range(SPEED_ROUNDS):
        for name, (model, inputs, tokenizer) in loaded.items():
            started = time.perf_counter()
            with torch.inference_mode():
                for ids in inputs:
                    model.generate(
                        ids,
                        attention_mask=torch.ones_like(ids),
                        max_new_tokens=new_tokens,
                        min_new_tokens=new_tokens,
                        do_sample=False,
                        pad_token_id=tokenizer.pad_token_id or tokenizer.eos_token_id,
                    )
            rounds[name].append(1000 * (time.perf_counter() - started) / (new_tokens * len(inputs)))
    return {
        "newTokensPerPrompt": new_tokens,
        "prompts": len(prompts),
        "threads": torch.get_num_threads(),
        "msPerToken": {name: statistics.median(values) for name, values in rounds.items()},
        "rounds": rounds,
    }


def _correct(rows: list[dict[str, Any]]) -> dict[str, float]:
    return {row["source"]: label_match(row["tuned"] or "", row["reference"]) for row in rows}


def compare(distilled: list[dict[str, Any]], labels_only: list[dict[str, Any]], *, seed: int = 0) -> dict[str, Any]:
    """The distilled student's accuracy minus the labels-only one's on the same test rows, with its
    paired 95% bootstrap interval (rows matched by their source line)."""
    first, second = _correct(distilled), _correct(labels_only)
    rows = sorted(set(first) & set(second))
    if len(rows) != len(first) or len(rows) != len(second):
        raise SystemExit("the two students were evaluated on different test rows")
    difference = lambda picks: sum(first[rows[i]] - second[rows[i]] for i in picks) / max(len(picks), 1)  # noqa: E731
    interval = paired_bootstrap(len(rows), difference, seed=seed)
    return {"examples": len(rows), "difference": difference(range(len(rows))), "ci": [interval.low, interval.high]}


def run_record(name: str, record: dict[str, Any], version: Path, test_uri: str) -> dict[str, Any]:
    lineage = json.loads((version / "manifest.json").read_text())
    predictions = [p for p in read_jsonl(version / "reports" / "predictions.jsonl") if p["source"].startswith(test_uri)]
    return {
        **record,
        "run": name,
        "version": str(version),
        "task": task_figures(predictions),
        "size": model_size(version / "merged"),
        "distill": lineage.get("distill"),
        "gate": lineage["evaluation"]["gate"],
        "forgetting": lineage["evaluation"]["forgetting"],
        "resolved": lineage["resolved"],
        "training": {k: lineage["training"].get(k) for k in ("globalStep", "tokensPerSecond", "peakMemoryBytes")},
        "perExample": {"test": predictions},
    }


def taught_by_teacher(run: dict[str, Any], teacher: dict[str, Any]) -> str | None:
    """Why the distilled ``run`` was not taught by the measured ``teacher`` (its lineage's ``distill.teacher``
    against the teacher's version folder), or None."""
    named = ((run.get("distill") or {}).get("teacher") or {}).get("version") or {}
    folder = Path(teacher["version"])
    digest = hashlib.sha256((folder / "manifest.json").read_bytes()).hexdigest()
    if named.get("version") != folder.name:
        return f"{run['run']}: taught by version {named.get('version')!r}, not the teacher {folder.name}"
    if named.get("manifestSha256") != digest:
        return f"{run['run']}: its teacher's manifest is {named.get('manifestSha256')}, the teacher's is {digest}"
    return None


def _megabytes(size: dict[str, int]) -> str:
    return f"{size['parameters'] / 1e6:.1f} M parameters, {size['bytes'] / 2**20:.0f} MiB"


def render_markdown(results: dict[str, Any]) -> str:
    student = results["student"]
    lines = [
        "# Distillation: ticket triage, a tuned SmolLM2-135M teacher into a half-depth student",
        "",
        f"Rendered from `distill.json` by `{results['command']}` at {results['commit'][:12]} on "
        f"{machine_words(results['machine'])}. The student is the base model with decoder layers "
        f"{', '.join(map(str, student['keptLayers'][:3]))}, ... kept ({len(student['keptLayers'])} of "
        f"{student['baseLayers']}); both students ran the example's manifest, the distilled one with the teacher "
        "(logit distillation at the defaults). Accuracy on the held-out test rows before tuning → after, 95% "
        "bootstrap interval of after.",
        "",
        "| run | base model | accuracy | size (merged) |",
        "|---|---|---|---|",
    ]
    for run in results["runs"]:
        if run["exitCode"] != 0:
            lines.append(f"| {run['run']} | | failed (exit {run['exitCode']}) | |")
            continue
        task = run["task"]
        lines.append(
            f"| {run['run']} | {'the base' if run['run'] == 'teacher' else 'the student'} "
            f"| {task['before']:.3f} → {task['after']:.3f} [{task['afterCi'][0]:.3f}, {task['afterCi'][1]:.3f}] "
            f"| {_megabytes(run['size'])} |"
        )
    if (comparison := results.get("comparison")) is not None:
        lines += [
            "",
            f"Distilled minus labels only, same {comparison['examples']} test rows: "
            f"{comparison['difference']:+.3f} [{comparison['ci'][0]:+.3f}, {comparison['ci'][1]:+.3f}] (paired 95% interval).",
        ]
    if (speed := results.get("speed")) is not None:
        ms = speed["msPerToken"]
        lines += [
            "",
            f"Generation, {speed['prompts']} test prompts, {speed['newTokensPerPrompt']} tokens each, "
            f"{speed['threads']} threads, median of {SPEED_ROUNDS} alternating rounds: teacher "
            f"{ms['teacher']:.1f} ms per token, distilled student {ms[DISTILLED]:.1f} ms per token "
            f"(the student {ms['teacher'] / ms[DISTILLED]:.2f}x as fast).",
        ]
    return "\n".join([*lines, ""])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_run_arguments(parser, RESULTS)
    parser.add_argument("--only", nargs="*", default=None, help=f"students to run (default: all of {list(STUDENTS)})")
    args = parser.parse_args(argv)
    results = resumed_results(
        args, ["python", "scripts/measure_distill.py", *(argv if argv is not None else sys.argv[1:])]
    )
    runs = {run["run"]: run for run in results.get("runs", []) if run["exitCode"] == 0}
    scratch = args.scratch or Path(tempfile.mkdtemp(prefix="kubetune-distill-"))
    data = write_task_files(TASK, scratch / "data", args.smoke)
    sources = _sources((data, "train", False), (data, "test", True))

    def record(name: str, override: dict[str, Any], base_model: str | None) -> dict[str, Any] | None:
        job = job_for(TASK, sources, override, args)
        if base_model is not None:
            job["spec"]["baseModel"] = {"uri": base_model}
        print(f"{name}: running", file=sys.stderr)
        outcome, version = run_job(name, job, scratch / name.replace(" ", "-"))
        runs[name] = run_record(name, outcome, version, data["test"]) if version else {**outcome, "run": name}
        results["runs"] = list(runs.values())
        save(args.out, results)
        print(f"{name}: {outcome['wallSeconds']:.0f} s, exit {outcome['exitCode']}", file=sys.stderr)
        return runs[name] if version else None

    teacher = runs.get("teacher")
    if teacher is None or not Path(teacher["version"]).is_dir():
        for stale in STUDENTS:  # measured against another teacher, as were the figures between them
            runs.pop(stale, None)
        results.pop("comparison", None)
        results.pop("speed", None)
        teacher = record("teacher", SMOKE_A if args.smoke else {}, None)
        if teacher is None:
            return 1
    base = Path((args.base_model or "").removeprefix("file://")) if args.base_model else _builtin_base()
    student_dir = scratch / "student"
    results["student"] = make_student(base, student_dir)
    for name, override in STUDENTS.items():
        if name in runs or (args.only and name not in args.only):
            print(f"{name}: recorded or not asked for, skipped", file=sys.stderr)
            continue
        if name == DISTILLED:
            override = merge(override, {"method": {"distill": {"teacher": f"file://{teacher['version']}"}}})
        record(name, override, results["student"]["uri"])
    order = ["teacher", *STUDENTS]
    results["runs"] = sorted(runs.values(), key=lambda run: order.index(run["run"]))
    students = [runs.get(name) for name in STUDENTS]
    if all(run is not None and run["exitCode"] == 0 for run in students):
        distilled, labels_only = runs[DISTILLED], runs[LABELS_ONLY]
        results["comparison"] = compare(distilled["perExample"]["test"], labels_only["perExample"]["test"])
        if "speed" not in results:
            prompts = [row["messages"] for row in distilled["perExample"]["test"][: SPEED_PROMPTS[args.smoke]]]
            folders = {"teacher": Path(teacher["version"]) / "merged", DISTILLED: Path(distilled["version"]) / "merged"}
            results["speed"] = generation_speed(folders, prompts, SPEED_NEW_TOKENS[args.smoke])
    problems = [
        problem
        for run in students
        if run and run["run"] == DISTILLED and run["exitCode"] == 0
        if (problem := taught_by_teacher(run, teacher)) is not None
    ]
    for problem in problems:
        print(f"FLAGGED: {problem}", file=sys.stderr)
    if args.smoke and runs.get(DISTILLED, {}).get("exitCode") == 0:
        # The planted record: the distilled run claiming another teacher's manifest.
        planted = copy.deepcopy({key: runs[DISTILLED][key] for key in ("run", "distill")})
        planted["distill"]["teacher"]["version"]["manifestSha256"] = "0" * 64
        results["planted"] = {"distill": planted["distill"], "problem": taught_by_teacher(planted, teacher)}
        print(f"planted: {results['planted']['problem'] or 'NOT FLAGGED'}", file=sys.stderr)
    save(args.out, results)
    args.out.with_suffix(".md").write_text(render_markdown(results))
    planted_missed = args.smoke and not (results.get("planted") or {}).get("problem")
    failed = any(run["exitCode"] != 0 for run in results["runs"])
    return 1 if failed or problems or planted_missed else 0


def _builtin_base() -> Path:
    from kubetune_trainer.models.builtin import builtin_model_dir

    return builtin_model_dir()


if __name__ == "__main__":
    sys.exit(main())
