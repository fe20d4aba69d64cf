"""Measure each training method on the example tickets: the task, forgetting, speed and memory,
through ``kubetune run`` the way a user runs it (the example manifest with only ``method`` changed).

    python scripts/measure_methods.py                  # ~15 min per method on 2 cores
    python scripts/measure_methods.py --only dora       # some methods; the others stay recorded
    python scripts/measure_methods.py --smoke --base-model file:///path/to/tiny-model   # CI

Every finished run is written to the results file at once (default ``docs/measurements/methods.json``)
with the command, the commit, the machine, the resolved values and every per-example output. Running
it again measures only the methods not recorded yet, so the methods can be measured a few at a time,
over several sessions: each run carries its own provenance (command, commit, code digest, machine),
and the page says when runs were measured at different commits or machines. ``--again`` measures the
named methods again; ``--restart`` discards every run. ``docs/measurements/methods.md`` is rendered
from the JSON (a test checks it).

Speed is the trainer's own count over its training loop (all tokens, and the trained ones: not
padding, not prompt); memory is the process's peak while training. Methods run one after the other
on the same machine, so their speeds compare within one results file only.

``--smoke`` runs one planted case on a tiny model: DoRA at a destructive learning rate with replay
off, which the gate must refuse to promote.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import random
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from measure_forgetting import (
    DATASETS,
    PLANTED_FORGETTING,
    ROOT,
    add_run_arguments,
    machine_words,
    merge,
    provenance,
    run_one,
    save,
)

RESULTS = ROOT / "docs" / "measurements" / "methods.json"
DATASET = "support-tickets"
PREFERENCE_DATASET = "ticket-preferences"
MANIFESTS = {DATASET: DATASETS[DATASET], PREFERENCE_DATASET: ROOT / "examples" / f"{PREFERENCE_DATASET}.yaml"}


@dataclass(frozen=True)
class Method:
    dataset: str  # a key of MANIFESTS
    override: dict[str, Any]  # the fields added to the example's manifest


# Each method as a user asks for it: the example manifest with only these fields added. The preference
# objectives learn the preference example's pairs (its manifest asks for dpo).
METHODS: dict[str, Method] = {
    "lora": Method(DATASET, {}),  # the example as it ships: kubetune's defaults
    "dora": Method(DATASET, {"method": {"adapter": "dora"}}),
    "rslora": Method(DATASET, {"method": {"lora": {"scaling": "rslora"}}}),
    "adalora": Method(DATASET, {"method": {"adapter": "adalora"}}),
    "ia3": Method(DATASET, {"method": {"adapter": "ia3"}}),
    "prefix": Method(DATASET, {"method": {"adapter": "prefix"}}),
    "bottleneck": Method(DATASET, {"method": {"adapter": "bottleneck"}}),
    "full": Method(DATASET, {"method": {"type": "full"}}),
    "dpo": Method(PREFERENCE_DATASET, {}),
    "orpo": Method(PREFERENCE_DATASET, {"method": {"objective": "orpo"}}),
}
PLANTED = {
    "dora, planted forgetting": Method(DATASET, merge(PLANTED_FORGETTING, {"method": {"adapter": "dora"}})),
    "dpo, planted forgetting": Method(PREFERENCE_DATASET, PLANTED_FORGETTING),
}


# Candidates for a default, measured only when named with --only: the figures a default's change rests on.
# DPO at its defaults of the time (beta 0.1) learned the example's pairs completely (reward accuracy 100%,
# margin +3.5) and lost 7 points of known answers: one epoch instead of three, or a 5x larger beta (a
# stronger pull towards the reference), each keeping everything else. Beta 0.5 became the default; each
# candidate names its beta so a rerun measures what was recorded.
CANDIDATES: dict[str, Method] = {
    "dpo, 1 epoch": Method(PREFERENCE_DATASET, {"hyperparameters": {"epochs": 1}, "method": {"dpo": {"beta": 0.1}}}),
    "dpo, beta 0.5": Method(PREFERENCE_DATASET, {"method": {"dpo": {"beta": 0.5}}}),
}


def planned_runs(smoke: bool, only: list[str] | None = None) -> dict[str, Method]:
    """The planted runs for the smoke; else every method, and the candidates that ``only`` names."""
    if smoke:
        return PLANTED
    return {**METHODS, **{name: method for name, method in CANDIDATES.items() if only and name in only}}


def _judge() -> Callable[[str], bool]:
    """The rule that made the preference example's pairs (examples/tools/make_preferences.py)."""
    spec = importlib.util.spec_from_file_location(
        "make_preferences", ROOT / "examples" / "tools" / "make_preferences.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    judge: Callable[[str], bool] = module.on_format
    return judge


def win_rate(predictions: list[dict[str, Any]], *, seed: int = 0, resamples: int = 1000) -> dict[str, Any]:
    """Tuned against base answers on the held-out prompts, judged by the example's rule: a win when only
    the tuned answer is on format, a loss when only the base's is, half otherwise; with a 95% bootstrap
    interval."""
    judge = _judge()
    scores = [0.5 + 0.5 * (judge(p["tuned"]) - judge(p["base"])) for p in predictions if p.get("tuned") is not None]
    if not scores:
        return {"prompts": 0}
    rng = random.Random(seed)
    means = sorted(sum(rng.choice(scores) for _ in scores) / len(scores) for _ in range(resamples))
    return {
        "prompts": len(scores),
        "winRate": sum(scores) / len(scores),
        "ci": [means[int(0.025 * (resamples - 1))], means[int(0.975 * (resamples - 1))]],
        "baseOnFormat": sum(judge(p["base"]) for p in predictions) / len(scores),
        "tunedOnFormat": sum(judge(p["tuned"]) for p in predictions) / len(scores),
    }


PROVENANCE = ("command", "commit", "dirty", "codeSha256", "machine")


def load_runs(path: Path, current: dict[str, Any]) -> dict[str, Any]:
    """The recorded runs, each with its provenance (a run recorded before runs carried their own takes
    the file's), under the current invocation's provenance."""
    if not path.exists():
        return {**current, "runs": []}
    results: dict[str, Any] = json.loads(path.read_text())
    for run in results["runs"]:
        run.setdefault("provenance", {key: results[key] for key in PROVENANCE if key in results})
    return {**results, **current}


def measure(
    name: str, method: Method, args: argparse.Namespace, scratch: Path, measured_by: dict[str, Any]
) -> dict[str, Any]:
    record = run_one(method.dataset, name, MANIFESTS[method.dataset], method.override, args, scratch)
    record["provenance"] = measured_by
    # run_one names the setting after the forgetting measurement's protections; here it is the method.
    record["method"] = record.pop("protections")
    if record["exitCode"] == 0 and record["resolved"]["objective"]["type"] != "sft":
        record["preference"] = {
            m["name"]: {"base": m["base"], "tuned": m["tuned"], "ci": [m["ci_low"], m["ci_high"]]}
            for m in record["metrics"]
            if m["name"] in ("rewardAccuracy", "rewardMargin")
        }
        record["preference"]["judged"] = win_rate(record["perExample"]["test"])
    return record


def _change(measure: dict[str, Any] | None) -> str:
    if measure is None:
        return "n/a"
    return f"{measure['base']:.3f} → {measure['tuned']:.3f} ({-measure['relative_loss'] + 0.0:+.1%})"


# Each adapter's defining values, from its resolved block, as the table names the method.
ADAPTER_VALUES: dict[str, Callable[[dict[str, Any]], str]] = {
    "lora": lambda block: f"r={block['r']}, {block['scaling']} scaling",  # lora and dora
    "adalora": lambda block: f"r={block['initialRank']}→{block['targetRank']}",
    "ia3": lambda block: f"on {' '.join(block['targetModules'])}",
    "prefix": lambda block: f"{block['virtualTokens']} virtual tokens",
    "bottleneck": lambda block: f"size {block['size']}, {block['placement']}",
}


def _described(resolved: dict[str, Any]) -> str:
    for block, values in ADAPTER_VALUES.items():
        if resolved.get(block):
            return f"{resolved['method']}, {resolved['adapter']} {values(resolved[block])}"
    return str(resolved["method"])  # a full fine-tune


def _row(run: dict[str, Any]) -> str:
    if run["exitCode"] != 0:
        return f"| {run['method']} | failed: exit {run['exitCode']} |"
    task, forgetting, training = run["task"] or {}, run["forgetting"], run["training"]
    cells = [
        run["method"],
        _described(run["resolved"]),
        f"{run['adapterStrength']['scale']:g}" if run.get("adapterStrength") else "1 (full)",
        *(
            (
                f"{task['metric']} ({task['examples']})",
                f"{task['base']:.3f} → {task['tuned']:.3f}",
                f"{task['tuned'] - task['base']:+.3f} [{task['ci'][0]:+.3f}, {task['ci'][1]:+.3f}]",
            )
            if task
            else ("rewards (below)", "", "")
        ),
        _change(forgetting.get("likelihood")),
        _change(forgetting.get("knownAnswers")),
        f"{training['bestEvalLoss']:.4f}" if training.get("bestEvalLoss") is not None else "n/a",
        f"{training['trainedTokensPerSecond']:.0f}",
        f"{training['tokensPerSecond']:.0f}",
        f"{run['stageSeconds'].get('train', 0) / 60:.1f} min",
        f"{training['peakMemoryBytes'] / 2**30:.2f} GiB",
        "yes" if run["promoted"] else "no",
    ]
    return "| " + " | ".join(cells) + " |"


def _interval(figure: dict[str, Any], fmt: str) -> str:
    return (
        f"{figure['tuned']:{fmt}} [{figure['base'] + figure['ci'][0]:{fmt}}, {figure['base'] + figure['ci'][1]:{fmt}}]"
    )


def _preference_table(runs: list[dict[str, Any]]) -> list[str]:
    preference = [run for run in runs if run.get("preference")]
    if not preference:
        return []
    lines = [
        "Preference runs (`examples/ticket-preferences.yaml`, with only `method` changed): rewards on the",
        "held-out pairs (likelihoods, no generation), and the held-out prompts' greedy answers of both models",
        "judged by the rule that made the pairs (on format: exactly one category label); a win counts 1, a",
        "tie 0.5.",
        "",
        "| run | pairs | reward accuracy [95% CI] | reward margin [95% CI] | on format base → tuned "
        "| win rate over base [95% CI] |",
        "|---|---:|---|---|---|---|",
    ]
    for run in preference:
        figures, judged = run["preference"], run["preference"]["judged"]
        accuracy, margin = figures["rewardAccuracy"], figures["rewardMargin"]
        lines.append(
            f"| {run['method']} | {run['splits']['test']} | {_interval(accuracy, '.3f')} | {_interval(margin, '+.3f')} | "
            + (
                f"{judged['baseOnFormat']:.1%} → {judged['tunedOnFormat']:.1%} | {judged['winRate']:.3f} "
                f"[{judged['ci'][0]:.3f}, {judged['ci'][1]:.3f}] |"
                if judged["prompts"]
                else "n/a | n/a |"
            )
        )
    return [*lines, ""]


def quoted_task_figures(run: dict[str, Any]) -> list[str]:
    """The phrases docs/methods.md quotes for a supervised run, as rendered from its record."""
    task, known = run["task"], run["forgetting"].get("knownAnswers")
    quoted = [
        f"{run['method']}: {task['metric']} {task['base']:.3f} → {task['tuned']:.3f} on {task['examples']} test examples"
    ]
    if known is not None:
        quoted.append(f"known answers right {_change(known)}")
    quoted.append("promoted" if run["promoted"] else "not promoted")
    return quoted


def quoted_preference_figures(method: str, figures: dict[str, Any], judged: dict[str, Any]) -> list[str]:
    """The phrases docs/methods.md quotes for a preference run, as rendered from its record."""
    accuracy, margin = figures["rewardAccuracy"], figures["rewardMargin"]
    quoted = [
        f"{method}: reward accuracy {_interval(accuracy, '.3f')}",
        f"reward margin {_interval(margin, '+.3f')}",
    ]
    if judged["prompts"]:
        quoted.append(
            f"on format {judged['baseOnFormat']:.1%} → {judged['tunedOnFormat']:.1%}, win rate over the base "
            f"{judged['winRate']:.3f} [{judged['ci'][0]:.3f}, {judged['ci'][1]:.3f}] on {judged['prompts']} prompts"
        )
    return quoted


def _measured_at(run: dict[str, Any]) -> str:
    """Its command, commit and machine, and the measurer's note where one was recorded (for example that
    other work shared the machine, which understates speeds)."""
    where, made = run["provenance"]["machine"], run["provenance"]
    return (
        f"`{made['command']}` at commit `{made['commit'][:12]}`"
        + (" (with uncommitted changes)" if made.get("dirty") else "")
        + f", on {machine_words(where)}"
        + (f". Note: {made['note']}" if made.get("note") else "")
    )


def _provenance_lines(runs: list[dict[str, Any]]) -> list[str]:
    """One line per run: the methods may be measured over several invocations, at different commits."""
    lines = [f"- {run['method']}: {_measured_at(run)}" for run in runs]
    commits = {run["provenance"]["commit"] for run in runs}
    machines = {json.dumps(run["provenance"]["machine"], sort_keys=True) for run in runs}
    caveat = []
    if len(commits) > 1 or len(machines) > 1:
        caveat = [
            "",
            "These runs were measured at different commits or on different machines: their speeds compare only "
            "between runs of one commit on one machine.",
        ]
    return ["Measured:", "", *lines, *caveat, ""]


def render_markdown(results: dict[str, Any]) -> str:
    """The docs page: every figure comes from the JSON."""
    lines = [
        "# Training methods on the example tickets",
        "",
        f"Generated by `scripts/measure_methods.py` from `{RESULTS.name}`; do not edit by hand.",
        "",
        *_provenance_lines(results["runs"]),
        "The example manifest (`examples/support-tickets.yaml`, kubetune's defaults: replay, the adapter",
        "strength chosen on the validation split) with only `method` changed. Forgetting is measured on the",
        "built-in regression pool, never trained on. Tokens per second count the training loop alone; the",
        "training time includes loading and the in-training validation passes.",
        "",
        "| run | resolved | adapter strength | task metric (n) | task base → tuned | delta [95% CI] "
        "| likelihood of base answers | known answers right | best validation loss | trained tokens/s "
        "| all tokens/s | training | peak memory | promoted |",
        "|---|---|---:|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---|",
        *(_row(run) for run in results["runs"]),
        "",
        *_preference_table(results["runs"]),
        "Verdicts:",
        "",
    ]
    lines += [f"- {run['method']}: {run['gate']['message']}" for run in results["runs"] if run["exitCode"] == 0]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_run_arguments(parser, RESULTS)
    parser.add_argument(
        "--only",
        nargs="*",
        default=None,
        help=f"methods to run (default: all of {list(METHODS)}); candidates for a default, {list(CANDIDATES)}, "
        "run only when named here",
    )
    parser.add_argument(
        "--again", action="store_true", help="measure the --only methods (or all) again, replacing their records"
    )
    args = parser.parse_args(argv)
    command = ["python", "scripts/measure_methods.py", *(argv if argv is not None else sys.argv[1:])]
    if args.restart and args.out.exists():
        args.out.unlink()
    measured_by = provenance(command)
    results = load_runs(args.out, measured_by)
    results["runs"] = [r for r in results["runs"] if r["exitCode"] == 0]
    if args.again:
        results["runs"] = [r for r in results["runs"] if args.only is not None and r["method"] not in args.only]
    done = {r["method"] for r in results["runs"]}
    scratch = args.scratch or Path(tempfile.mkdtemp(prefix="kubetune-methods-"))
    for name, method in planned_runs(args.smoke, args.only).items():
        if name in done or (args.only and name not in args.only):
            print(f"{name}: recorded or not asked for, skipped", file=sys.stderr)
            continue
        print(f"{name}: running", file=sys.stderr)
        record = measure(name, method, args, scratch, measured_by)
        results["runs"].append(record)
        save(args.out, results)
        args.out.with_suffix(".md").write_text(render_markdown(results))
        verdict = record["gate"]["message"] if record["exitCode"] == 0 else f"failed (exit {record['exitCode']})"
        print(f"{name}: {record['wallSeconds']:.0f} s, {verdict}", file=sys.stderr)
    # Recorded runs in the order METHODS lists them, whatever order they were measured in.
    order = [*planned_runs(args.smoke), *CANDIDATES]
    results["runs"].sort(key=lambda run: order.index(run["method"]) if run["method"] in order else len(order))
    save(args.out, results)
    args.out.with_suffix(".md").write_text(render_markdown(results))
    return 0 if all(r["exitCode"] == 0 for r in results["runs"]) else 1


if __name__ == "__main__":
    sys.exit(main())
