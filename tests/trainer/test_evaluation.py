"""Metrics, bootstrap intervals, forgetting and the quality gate."""

from __future__ import annotations

import math
from pathlib import Path

import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM, AutoTokenizer

from kubetune.api.v1alpha1 import EvaluationSpec, QualityGateSpec
from kubetune_trainer.data.types import Example, Message
from kubetune_trainer.evaluation import metrics
from kubetune_trainer.evaluation.report import MetricResult, RegressionResult, plot_loss_curve
from kubetune_trainer.evaluation.runner import ModelUnderTest, apply_gate, evaluate
from kubetune_trainer.evaluation.scoring import adapter_disabled, token_losses


def test_metric_functions_on_known_cases() -> None:
    assert metrics.exact_match("  Paris. ", "paris") == 1.0
    assert metrics.exact_match("Paris is nice", "paris") == 0.0
    assert metrics.label_match("billing\nbecause the card...", "Billing") == 1.0
    assert metrics.rouge_l("the cat sat", "the cat sat") == 1.0
    assert 0 < metrics.rouge_l("the cat", "the cat sat on the mat") < 1
    assert metrics.macro_f1(["a", "a", "b", "b"], ["a", "b", "b", "b"]) == (2 / 3 + 0.8) / 2
    assert math.isclose(metrics.corpus_bleu(["the cat is on the mat"], ["the cat is on the mat"]), 100.0)


def test_bootstrap_is_seeded_and_brackets_the_estimate() -> None:
    values = [1.0] * 70 + [0.0] * 30
    stat = lambda idx: metrics.mean([values[i] for i in idx])  # noqa: E731
    first = metrics.paired_bootstrap(len(values), stat, seed=3)
    assert first == metrics.paired_bootstrap(len(values), stat, seed=3)
    assert first.low < 0.7 < first.high and first.high - first.low < 0.25


def perturbed_lora(model_dir: Path, scale: float):  # type: ignore[no-untyped-def]
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    peft_model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules="all-linear"))
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, scale)
    return peft_model.eval()


EXAMPLES = [
    Example(messages=(Message("user", f"what is {i}+{i}?"), Message("assistant", str(2 * i)))) for i in range(6)
]


def test_perplexity_matches_an_independent_computation_and_base_is_adapter_off(tiny_model_dir: Path) -> None:
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = perturbed_lora(tiny_model_dir, 0.5)
    plain = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()
    with adapter_disabled(model):
        base_losses = token_losses(model, tokenizer, EXAMPLES, max_length=64, batch_size=4)
    plain_losses = token_losses(plain, tokenizer, EXAMPLES, max_length=64, batch_size=1)
    for a, b in zip(base_losses, plain_losses, strict=True):
        assert math.isclose(a.nll_sum, b.nll_sum, rel_tol=1e-4) and a.tokens == b.tokens
    from kubetune_trainer.tensors.encode import encode_example

    encoded = encode_example(EXAMPLES[0], tokenizer, 64)
    with torch.no_grad():
        out = plain(input_ids=torch.tensor([encoded.input_ids]), labels=torch.tensor([encoded.labels]))
    assert math.isclose(plain_losses[0].mean, float(out.loss), rel_tol=1e-4)
    report = evaluate(
        ModelUnderTest(model),
        tokenizer,
        EXAMPLES,
        EvaluationSpec(metrics=["perplexity", "exactMatch"], maxNewTokens=4),
        regression=EXAMPLES,
        max_length=64,
    )
    ppl = report.metric("perplexity")
    assert ppl is not None and math.isclose(
        ppl.base, math.exp(sum(x.nll_sum for x in base_losses) / sum(x.tokens for x in base_losses)), rel_tol=1e-4
    )
    assert len(report.predictions) == 6 and report.predictions[0]["tuned"] is not None


def test_forgetting_is_detected(tiny_model_dir: Path) -> None:
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    damaged = perturbed_lora(tiny_model_dir, 2.0)
    report = evaluate(
        ModelUnderTest(damaged),
        tokenizer,
        EXAMPLES,
        EvaluationSpec(metrics=["perplexity"]),
        regression=EXAMPLES,
        max_length=64,
    )
    assert report.regression is not None
    assert report.regression.relative_loss > 0.05 and not report.regression.passed
    assert not report.gate.passed and "forgetting" in report.gate.message
    harmless = perturbed_lora(tiny_model_dir, 0.0)
    report = evaluate(
        ModelUnderTest(harmless),
        tokenizer,
        EXAMPLES,
        EvaluationSpec(metrics=["perplexity"]),
        regression=EXAMPLES,
        max_length=64,
    )
    assert report.regression is not None and abs(report.regression.relative_loss) < 1e-6 and report.gate.passed


def result(name: str, base: float, tuned: float, lower: bool = False) -> MetricResult:
    return MetricResult(name, base, tuned, tuned - base - 0.01, tuned - base + 0.01, lower)


def test_gate_directions_and_messages() -> None:
    gate = QualityGateSpec(metric="perplexity", minImprovement=0.15)
    assert apply_gate([result("perplexity", 10.0, 8.0, lower=True)], None, gate).passed  # 20% lower
    missed = apply_gate([result("perplexity", 10.0, 9.0, lower=True)], None, gate)
    assert not missed.passed and "required +15.0%" in missed.message and "missed" in missed.message
    accuracy = QualityGateSpec(metric="accuracy", minImprovement=0.15)
    assert apply_gate([result("accuracy", 0.5, 0.6)], None, accuracy).passed
    assert not apply_gate([result("accuracy", 0.5, 0.55)], None, accuracy).passed
    absolute = apply_gate([result("accuracy", 0.0, 0.2)], None, accuracy)
    assert absolute.passed and "absolute" in absolute.message
    forgot = RegressionResult(240, 0.5, 0.45, 0.10, 0.08, 0.12, 0.05)
    blocked = apply_gate([result("accuracy", 0.5, 0.9)], forgot, accuracy)
    assert not blocked.passed and "forgetting" in blocked.message
    assert not apply_gate([], None, accuracy).passed


def test_loss_curve_is_a_png(tmp_path: Path) -> None:
    path = plot_loss_curve(
        [{"step": 1, "loss": 2.0}, {"step": 2, "loss": 1.5, "eval_loss": 1.7}], tmp_path / "curve.png"
    )
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
