"""Evaluation speed: the evaluation stage as it was against ours, cold and warm cache, same run.

    python bench/evaluate.py                   # the README example (~20 min on 2 cores the first time:
                                               # it trains the example once, kept under .bench/evaluate)
    python bench/evaluate.py --adapter runs/support-tickets/v.../adapter    # an adapter already trained
    python bench/evaluate.py --smoke --base-model file:///path/to/tiny-model   # CI: seconds

All three evaluations run in this process on the same tuned model (the README example's trained
adapter on the built-in SmolLM2-135M-Instruct, loaded once), the same curated test split and the
same general prompts, through ``kubetune_trainer.evaluation.runner.evaluate``, the function the
training pod runs:

- ``before``: the evaluation as it was before issue 14: every answer decoded by transformers'
  ``generate`` (each row computed until its batch's longest answer ends), nothing read off the
  scoring forward, the base model's test-split scores computed every run;
- ``cold``: ours with an empty cache: answers begin from what the scoring forward already knows and
  rows leave their batch at EOS; the base's scores are computed and kept;
- ``warm``: ours again, the base's test-split scores read back from the cache (a retraining job, a
  sweep, a second run of a manifest).

Every metric value, interval, verdict and answer of ``cold`` and ``warm`` must equal ``before``'s;
the script says which differ, if any, and exits 1.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))

from measurement import code_digest, cpu_model, git  # noqa: E402

EXAMPLE = ROOT / "examples" / "support-tickets.yaml"
RESULTS = ROOT / "docs" / "measurements" / "evaluation.json"
TARGET = 3.0  # issue 14: the evaluation at least 3x faster than before, identical metric values
WAYS = ("before", "cold", "warm")
CODE = ["trainer_image/kubetune_trainer/evaluation", "bench/evaluate.py"]


@dataclasses.dataclass
class Setup:
    ctx: Any
    model: Any  # BaseModelInfo
    test: list[Any]
    resolved: Any
    subject: Any  # ModelUnderTest
    regression: Any
    method: Any


def trained_adapter(work: Path) -> Path:
    """The README example's adapter, trained once by ``kubetune run`` and kept under ``work``."""
    import subprocess

    found = sorted((work / "run").glob("support-tickets/v*/adapter"))
    if found:
        return found[-1]
    print("training the README example once (kubetune run; about 12 minutes on 2 cores)...", file=sys.stderr)
    subprocess.run(
        [sys.executable, "-m", "kubetune_trainer.cli", "run", str(EXAMPLE), "--output-dir", str(work / "run")],
        check=True,
        cwd=ROOT,
    )
    return sorted((work / "run").glob("support-tickets/v*/adapter"))[-1]


def random_adapter(model: Any, folder: Path) -> Path:
    """Smoke: a LoRA adapter with random weights (answers that differ from the base's)."""
    import torch
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(0)
    peft_model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules="all-linear"))
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.05)
    peft_model.save_pretrained(folder)
    return folder


def setup(args: argparse.Namespace, work: Path) -> Setup:
    import yaml
    from peft import PeftModel

    from kubetune.api.manifest import parse_manifest
    from kubetune.api.v1alpha1 import MethodType
    from kubetune_trainer import steps
    from kubetune_trainer.context import Mode, RunContext
    from kubetune_trainer.environment import TrainerEnvironment
    from kubetune_trainer.evaluation.forgetting import RegressionSet
    from kubetune_trainer.evaluation.runner import ModelUnderTest
    from kubetune_trainer.localrun import default_mappings, localize
    from kubetune_trainer.reporting import build_reporters
    from kubetune_trainer.stages import StageClock
    from kubetune_trainer.storage import ObjectStore
    from kubetune_trainer.training.model import load_base

    document = yaml.safe_load(EXAMPLE.read_text())
    document["spec"]["baseModel"] = {"uri": args.base_model}
    job = localize(parse_manifest(document, str(EXAMPLE)), default_mappings(EXAMPLE), work / "out")
    # The evaluation cache in a folder of the bench's own (emptied before the cold run); the rest of
    # the cache (the built-in model) as the environment has it.
    environment = dataclasses.replace(TrainerEnvironment.from_env(), cache=work / "cache")
    reporters = build_reporters(job, console=False, environment=environment)
    ctx = RunContext(
        job=job,
        mode=Mode.LOCAL,
        workdir=work / "scratch",
        store=ObjectStore(),
        clock=StageClock(reporters),
        reporters=reporters,
        environment=environment,
    )
    model = steps.prepare_base_model(ctx)
    data = steps.prepare_data(ctx, model)
    resolved, _ = steps.plan(ctx, model, data)
    method = MethodType(resolved.method)
    base = load_base(model.path, method, device=model.hardware.device, bf16=model.hardware.bf16)
    adapter = args.adapter or (
        random_adapter(load_base(model.path, method, device="cpu", bf16=False), work / "adapter")
        if args.smoke
        else trained_adapter(work)
    )
    subject = ModelUnderTest(PeftModel.from_pretrained(base, str(adapter)).eval())
    regression = steps.load_regression_set(ctx, model, method, subject.as_base())
    test = data.test
    if args.examples is not None:
        test = test[: args.examples]
        if regression is not None:
            regression = RegressionSet(regression.name, regression.items[: args.examples])  # base scored now
    return Setup(ctx, model, test, resolved, subject, regression, method)


def timed(calls: list[dict[str, Any]], name: str, function: Callable[..., Any]) -> Callable[..., Any]:
    """``function`` with each call's wall time appended to ``calls`` (what the evaluation spends where)."""

    def call(model: Any, tokenizer: Any, examples: Any, **settings: Any) -> Any:
        started = time.perf_counter()
        try:
            return function(model, tokenizer, examples, **settings)
        finally:
            calls.append({"call": name, "examples": len(examples), "seconds": time.perf_counter() - started})

    return call


def evaluate_once(setup: Setup, way: str) -> tuple[float, Any, list[dict[str, Any]]]:
    """One evaluation, timed: ``before`` with transformers' generate for every answer and no cache."""
    from kubetune_trainer import steps
    from kubetune_trainer.evaluation import runner, scoring

    def before_generate(model: Any, tokenizer: Any, examples: Any, **settings: Any) -> list[str]:
        settings.pop("starts", None)
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        prompts = [scoring.prompt_ids(e, tokenizer, settings.pop("chat_template", None)) for e in examples]
        return scoring._generate_with_transformers(
            model,
            tokenizer,
            prompts,
            pad=pad,
            batch_size=scoring.EVALUATION_BATCH_ROWS,
            max_batch_tokens=scoring.EVALUATION_BATCH_TOKENS,
            **settings,
        )

    hyperparameters = setup.resolved.hyperparameters
    cache_hook = (
        None
        if way == "before"
        else steps._base_test_scores(setup.ctx, setup.model, setup.method, hyperparameters.sequence_length)
    )
    original: Callable[..., list[str]] = runner.generate
    original_scoring = runner.score_examples
    calls: list[dict[str, Any]] = []
    runner.generate = timed(calls, "generate", before_generate if way == "before" else original)  # type: ignore[assignment]
    runner.score_examples = timed(calls, "score", original_scoring)  # type: ignore[assignment]
    try:
        started = time.perf_counter()
        report = runner.evaluate(
            setup.subject,
            setup.model.tokenizer,
            setup.test,
            setup.ctx.spec.evaluation,
            regression=setup.regression,
            max_length=hyperparameters.sequence_length,
            chat_template=setup.model.chat_template,
            seed=hyperparameters.seed,
            base_test_scores=cache_hook,
        )
        return time.perf_counter() - started, report, calls
    finally:
        runner.generate = original  # type: ignore[assignment]
        runner.score_examples = original_scoring  # type: ignore[assignment]


def merged(setup: Setup) -> Setup:
    """The tuned side with its adapter merged into a copy of the weights (the base side comes from the
    warm cache and the shipped likelihoods, so it is never computed from this copy)."""
    import copy

    from kubetune_trainer.evaluation.runner import ModelUnderTest

    weights = copy.deepcopy(setup.subject.model).merge_and_unload().eval()
    return dataclasses.replace(setup, subject=ModelUnderTest(weights))


def outcome(report: Any) -> dict[str, Any]:
    """Everything an evaluation decides: values, intervals, the verdict, every answer."""
    return {
        "metrics": [dataclasses.asdict(m) for m in report.metrics],
        "summary": report.summary_metrics(),
        "gate": {"passed": report.gate.passed, "message": report.gate.message},
        "predictions": report.predictions,
        "generalPredictions": report.general_predictions,
    }


def differences(first: dict[str, Any], second: dict[str, Any]) -> list[str]:
    return [key for key in first if first[key] != second[key]]


def machine() -> dict[str, Any]:
    import os

    return {"cpu": cpu_model(), "cores": len(os.sched_getaffinity(0))}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true", help="a few examples, a random adapter (CI)")
    parser.add_argument("--base-model", default="builtin://smollm2-135m-instruct")
    parser.add_argument(
        "--adapter", type=Path, default=None, help="a trained LoRA adapter (default: train the example)"
    )
    parser.add_argument("--examples", type=int, default=None, help="the first N test examples and general prompts")
    parser.add_argument("--work", type=Path, default=ROOT / ".bench" / "evaluate")
    parser.add_argument("--results", type=Path, default=None, help=f"default {RESULTS.relative_to(ROOT)}; smoke: none")
    args = parser.parse_args(argv)
    if args.examples is not None and args.examples <= 0:
        parser.error(f"--examples: must be positive, got {args.examples}")
    if args.adapter is not None and not (args.adapter / "adapter_config.json").is_file():
        parser.error(f"--adapter: {args.adapter} holds no adapter_config.json")
    if args.smoke and args.examples is None:
        args.examples = 6
    args.work.mkdir(parents=True, exist_ok=True)
    for stale in ("cache", "out", "scratch"):
        shutil.rmtree(args.work / stale, ignore_errors=True)
    setup_ = setup(args, args.work)
    # Warm-up outside the clock: the first forward and decode pay one-off costs (kernels, allocator).
    from kubetune_trainer.evaluation.scoring import generate

    generate(setup_.subject.model, setup_.model.tokenizer, setup_.test[:2], max_new_tokens=4)
    seconds: dict[str, float] = {}
    parts: dict[str, list[dict[str, Any]]] = {}
    outcomes: dict[str, dict[str, Any]] = {}
    for way in WAYS:
        seconds[way], report, parts[way] = evaluate_once(setup_, way)
        outcomes[way] = outcome(report)
        print(f"{way}: {seconds[way]:.1f} s", file=sys.stderr, flush=True)
    differing = {way: differences(outcomes["before"], outcomes[way]) for way in WAYS[1:]}
    # A lever measured and not taken: the adapter merged into the weights for the tuned side.
    merged_seconds, merged_report, _ = evaluate_once(merged(setup_), "warm")
    merged_outcome = outcome(merged_report)
    before_summary = outcomes["before"]["summary"]
    result = {
        "command": "python bench/evaluate.py" + (" " + " ".join(argv if argv is not None else sys.argv[1:])).rstrip(),
        "commit": git("rev-parse", "HEAD"),
        "code": code_digest(CODE)[:12],
        "machine": machine(),
        "testExamples": len(setup_.test),
        "generalPrompts": len(setup_.regression.items) if setup_.regression else 0,
        "knownAnswerPrompts": len(setup_.regression.known) if setup_.regression else 0,
        "seconds": seconds,
        "parts": parts,
        "speedup": {way: seconds["before"] / seconds[way] for way in WAYS[1:]},
        "target": TARGET,
        "identical": {way: not found for way, found in differing.items()},
        "differing": differing,
        "summary": before_summary,
        "mergedLever": {
            "seconds": merged_seconds,
            "speedup": seconds["before"] / merged_seconds,
            "differing": differences(outcomes["before"], merged_outcome),
            "largestRelativeChange": max(
                (abs(value - before_summary[name]) / abs(before_summary[name]) if before_summary[name] else 0.0)
                for name, value in merged_outcome["summary"].items()
            ),
        },
    }
    print(render_markdown(result))
    results = args.results or (None if args.smoke else RESULTS)
    if results is not None:
        results.parent.mkdir(parents=True, exist_ok=True)
        results.write_text(json.dumps(result, indent=2) + "\n")
    if any(differing.values()):
        print(f"evaluations differ from before: {differing}", file=sys.stderr)
        return 1
    return 0


def quoted_figures(result: dict[str, Any]) -> list[str]:
    """The figures docs/benchmarks.md quotes, as it words them (a test checks the page holds each)."""
    seconds, speedup = result["seconds"], result["speedup"]
    return [
        f"before {seconds['before']:.1f} s",
        f"cold cache {seconds['cold']:.1f} s ({speedup['cold']:.2f}x)",
        f"warm cache {seconds['warm']:.1f} s ({speedup['warm']:.2f}x)",
    ]


def render_markdown(result: dict[str, Any]) -> str:
    lines = [
        f"`{result['command']}` at commit `{result['commit'][:12]}` (evaluation code `{result['code']}`) on "
        f"{result['machine']['cpu']} ({result['machine']['cores']} cores): {result['testExamples']} test examples, "
        f"{result['generalPrompts']} general prompts ({result['knownAnswerPrompts']} with a known answer).",
        "",
        "| evaluation | seconds | vs before | every value, interval, verdict and answer identical |",
        "|---|---:|---:|---|",
    ]
    for way in WAYS:
        ratio = 1.0 if way == "before" else result["speedup"][way]
        same = "—" if way == "before" else ("yes" if result["identical"][way] else f"no: {result['differing'][way]}")
        lines.append(f"| {way} | {result['seconds'][way]:.1f} | {ratio:.2f}x | {same} |")
    lever = result["mergedLever"]
    lines += [
        "",
        f"Measured, not taken: the adapter merged into the weights for the tuned side, warm cache: "
        f"{lever['seconds']:.1f} s ({lever['speedup']:.2f}x before); differs from before in "
        f"{', '.join(lever['differing']) or 'nothing'} (largest relative change of a metric value "
        f"{lever['largestRelativeChange']:.1e}).",
    ]
    lines += ["", "Where the time goes, call by call (a scoring forward, or generation, and its examples):", ""]
    for way in WAYS:
        spent = ", ".join(f"{c['call']} {c['examples']}: {c['seconds']:.1f} s" for c in result["parts"][way])
        lines.append(f"- {way}: {spent}")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
