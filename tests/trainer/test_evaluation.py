"""Metrics, bootstrap intervals, forgetting and the quality gate."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM, AutoTokenizer

from kubetune.api.v1alpha1 import EvaluationSpec, Metric, QualityGateSpec
from kubetune_trainer.data.types import Example, Message
from kubetune_trainer.evaluation import metrics, scoring
from kubetune_trainer.evaluation.forgetting import (
    KnownAnswerResult,
    RegressionItem,
    RegressionSet,
    compare_known_answers,
    compare_label_collapse,
)
from kubetune_trainer.evaluation.gate import MIN_TEST_EXAMPLES, Forgetting, decide_promotion, primary_metric
from kubetune_trainer.evaluation.report import plot_loss_curve
from kubetune_trainer.evaluation.results import MetricResult, RegressionResult
from kubetune_trainer.evaluation.runner import ModelUnderTest, evaluate
from kubetune_trainer.evaluation.scoring import adapter_disabled, generate, length_batches, score_examples
from kubetune_trainer.tensors.encode import prompt_ids


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
GENERAL = RegressionSet("test prompts", tuple(RegressionItem(e, (e.reference(),)) for e in EXAMPLES))


def test_evaluation_batches_group_similar_lengths_within_the_token_budget() -> None:
    lengths = [5, 300, 40, 41, 600, 39, 7, 300]
    batches = length_batches(lengths, max_rows=3, max_tokens=640)
    assert sorted(i for batch in batches for i in batch) == list(range(len(lengths)))
    for batch in batches:
        assert len(batch) <= 3 and (len(batch) == 1 or len(batch) * max(lengths[i] for i in batch) <= 640)
    assert batches[0] == [4] and batches[1] == [1, 7]  # longest first; 600 alone, two of 300 fit 640
    assert length_batches(lengths, max_rows=8, max_tokens=10_000) == [[4, 1, 7, 3, 2, 5, 6, 0]]


def test_length_sorted_batches_score_and_answer_each_row_as_alone(tiny_model_dir: Path) -> None:
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()
    varied = [
        Example(messages=(Message("user", "word " * (3 + 7 * (i % 4)) + str(i)), Message("assistant", f"answer {i}")))
        for i in range(9)
    ]
    batched = score_examples(model, tokenizer, varied, max_length=128)[0]
    alone = score_examples(model, tokenizer, varied, max_length=128, batch_size=1)[0]
    for a, b in zip(batched, alone, strict=True):
        assert math.isclose(a.nll_sum, b.nll_sum, rel_tol=1e-4) and a.tokens == b.tokens
    assert len({round(x.nll_sum, 3) for x in batched}) == len(varied)  # every row scored as itself
    asked = [Example(messages=e.prompt_messages()) for e in varied]
    assert generate(model, tokenizer, asked, max_new_tokens=6) == generate(
        model, tokenizer, asked, max_new_tokens=6, batch_size=1
    )


VARIED_PROMPTS = [Example(messages=(Message("user", "word " * (2 + 5 * (i % 3)) + f"thing {i}"),)) for i in range(8)]


def test_rows_leave_the_batch_when_they_end_and_answer_as_transformers_generate_does(tiny_model_dir: Path) -> None:
    """Our decoding loop against transformers' generate on the same left-padded batch: the same greedy
    tokens, with rows ending at different steps (an end token the answers hold at different places,
    and budgets) and so leaving the batch at different steps."""
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = perturbed_lora(tiny_model_dir, 0.3)
    prompts = [prompt_ids(e, tokenizer) for e in VARIED_PROMPTS]
    pad = tokenizer.pad_token_id
    width = max(len(p) for p in prompts)
    ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompts])
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])

    def transformers_generate(end: int, budgets: list[int]) -> list[list[int]]:
        rows = model.generate(
            input_ids=ids,
            attention_mask=mask,
            max_new_tokens=max(budgets),
            do_sample=False,
            eos_token_id=end,
            pad_token_id=pad,
        )[:, width:].tolist()
        return [
            (row[: row.index(end)] if end in row else row)[:budget] for row, budget in zip(rows, budgets, strict=True)
        ]

    unbounded = transformers_generate(-1, [12] * len(prompts))
    assert scoring._greedy_decode(model, prompts, [12] * len(prompts), pad=pad, eos=-1) == unbounded
    # The token the answers hold most often, taken as the end token: rows end at different steps.
    end = max({t for row in unbounded for t in row}, key=lambda t: sum(row.count(t) for row in unbounded))
    budgets = [12, 5, 12, 3, 12, 8, 1, 12]
    expected = transformers_generate(end, budgets)
    assert len({len(row) for row in expected}) > 2, "rows must end at different steps for this test to mean anything"
    assert scoring._greedy_decode(model, prompts, budgets, pad=pad, eos=end) == expected


def test_a_greedy_start_follows_the_reference_while_the_model_agrees_then_takes_its_own_token() -> None:
    ids = [5, 6, 7, 8, 9, 2]  # prompt 5 6 | answer 7 8 9, then EOS (2)
    unlabelled = -1
    # chosen[t] is the model's pick for token t + 1
    assert scoring._greedy_start(ids, [unlabelled, 7, 8, 9, 2, unlabelled], 2, 2) == scoring.GreedyStart(
        (7, 8, 9), True
    )
    assert scoring._greedy_start(ids, [unlabelled, 7, 4, 9, 2, unlabelled], 2, 2) == scoring.GreedyStart((7, 4), False)
    assert scoring._greedy_start(ids, [unlabelled, 7, 2, 9, 2, unlabelled], 2, 2) == scoring.GreedyStart((7,), True)
    # Truncated before its end: known as far as the forward went, not finished.
    assert scoring._greedy_start(ids[:4], [unlabelled, 7, 8, unlabelled], 2, 2) == scoring.GreedyStart((7, 8), False)


def test_an_answer_read_off_the_scoring_forward_is_the_answer_decoding_gives(tiny_model_dir: Path) -> None:
    """Greedy starts: a reference equal to the model's own answer is read whole (nothing left to
    decode), one that departs is followed up to the model's own token there, then decoded on."""
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = perturbed_lora(tiny_model_dir, 0.3)
    own = generate(model, tokenizer, VARIED_PROMPTS, max_new_tokens=40)
    # Half the references are the model's own answers, half another row's.
    references = [own[i] if i % 2 == 0 else own[(i + 3) % len(own)] for i in range(len(own))]
    examples = [
        Example(messages=(*e.messages, Message("assistant", r)))
        for e, r in zip(VARIED_PROMPTS, references, strict=True)
    ]
    _, starts = score_examples(model, tokenizer, examples, max_length=256)
    assert all(start is not None for start in starts)
    calls: list[int] = []
    model.register_forward_pre_hook(lambda *_: calls.append(1))
    for max_new_tokens in (3, 40):
        expected = generate(model, tokenizer, VARIED_PROMPTS, max_new_tokens=max_new_tokens)
        calls.clear()
        assert generate(model, tokenizer, VARIED_PROMPTS, max_new_tokens=max_new_tokens, starts=starts) == expected
        decoded_rows = [i for i, s in enumerate(starts) if s and not s.finished and len(s.tokens) < max_new_tokens]
        assert bool(calls) == bool(decoded_rows), "only rows whose answer is not known yet are decoded"


def test_greedy_starts_that_do_not_match_the_examples_are_refused(tiny_model_dir: Path) -> None:
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = perturbed_lora(tiny_model_dir, 0.3)
    with pytest.raises(ValueError, match="1 greedy starts for 8 examples"):
        generate(model, tokenizer, VARIED_PROMPTS, max_new_tokens=3, starts=[None])


def test_a_model_whose_generation_settings_change_greedy_picks_is_decoded_by_transformers(tiny_model_dir: Path) -> None:
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = perturbed_lora(tiny_model_dir, 0.3)
    plain = generate(model, tokenizer, VARIED_PROMPTS, max_new_tokens=12)
    model.generation_config.repetition_penalty = 5.0
    penalised = generate(model, tokenizer, VARIED_PROMPTS, max_new_tokens=12)
    prompts = [prompt_ids(e, tokenizer) for e in VARIED_PROMPTS]
    assert penalised == scoring._generate_with_transformers(
        model, tokenizer, prompts, max_new_tokens=12, pad=tokenizer.pad_token_id, batch_size=64, max_batch_tokens=16384
    )
    assert penalised != plain, "the setting must change the answers for this test to mean anything"


def test_perplexity_matches_an_independent_computation_and_base_is_adapter_off(tiny_model_dir: Path) -> None:
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = perturbed_lora(tiny_model_dir, 0.5)
    plain = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()
    with adapter_disabled(model):
        base_losses = score_examples(model, tokenizer, EXAMPLES, max_length=64, batch_size=4)[0]
    plain_losses = score_examples(plain, tokenizer, EXAMPLES, max_length=64, batch_size=1)[0]
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
        regression=GENERAL,
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
        regression=GENERAL,
        max_length=64,
    )
    likelihood = report.forgetting.likelihood
    assert likelihood is not None and likelihood.relative_loss > 0.05 and not likelihood.passed
    assert not report.gate.passed and "likelihood of the base model's own answers" in report.gate.message
    assert report.gate.message.startswith("not promoted: insufficient evidence (n=6")
    assert report.forgetting.known_answers is not None and report.forgetting.known_answers.examples == 6
    harmless = perturbed_lora(tiny_model_dir, 0.0)
    report = evaluate(
        ModelUnderTest(harmless),
        tokenizer,
        EXAMPLES,
        EvaluationSpec(metrics=["perplexity"]),
        regression=GENERAL,
        max_length=64,
    )
    likelihood = report.forgetting.likelihood
    assert likelihood is not None and abs(likelihood.relative_loss) < 1e-6 and likelihood.passed
    assert not report.gate.passed, "forgetting nothing is not enough: the task was not shown better"
    assert "insufficient evidence (n=6" in report.gate.message


def result(name: str, base: float, tuned: float, lower: bool = False, spread: float = 0.01) -> MetricResult:
    return MetricResult(name, base, tuned, tuned - base - spread, tuned - base + spread, lower)


KEPT = Forgetting("general", likelihood=RegressionResult(240, 0.5, 0.5, 0.0, -0.01, 0.01, 0.05))
FORGOT = Forgetting("general", likelihood=RegressionResult(240, 0.5, 0.45, 0.10, 0.08, 0.12, 0.05))


def decide(results: list[MetricResult], forgetting: Forgetting, gate: QualityGateSpec | None = None, n: int = 58):  # type: ignore[no-untyped-def]
    return decide_promotion(results, forgetting, gate, primary=Metric.ACCURACY, test_examples=n)


def test_explicit_gate_directions_and_messages() -> None:
    gate = QualityGateSpec(metric="perplexity", minImprovement=0.15)
    assert decide([result("perplexity", 10.0, 8.0, lower=True)], KEPT, gate).passed  # 20% lower
    missed = decide([result("perplexity", 10.0, 9.0, lower=True)], KEPT, gate)
    assert not missed.passed and "required +15.0%" in missed.message and "missed" in missed.message
    accuracy = QualityGateSpec(metric="accuracy", minImprovement=0.15)
    assert decide([result("accuracy", 0.5, 0.6)], KEPT, accuracy).passed
    assert not decide([result("accuracy", 0.5, 0.55)], KEPT, accuracy).passed
    absolute = decide([result("accuracy", 0.0, 0.2)], KEPT, accuracy)
    assert absolute.passed and "absolute" in absolute.message
    blocked = decide([result("accuracy", 0.5, 0.9)], FORGOT, accuracy)
    assert not blocked.passed and "likelihood of the base model's own answers" in blocked.message
    assert not decide([], KEPT, accuracy).passed


def test_without_a_gate_the_default_gate_needs_evidence_and_no_forgetting() -> None:
    better = decide([result("accuracy", 0.0, 0.85, spread=0.1)], KEPT)
    assert better.passed and better.default_gate and better.message.startswith("promoted: ")
    assert [c.name for c in better.checks] == ["task", "forgetting.likelihood"]
    unsure = decide([result("accuracy", 0.5, 0.55, spread=0.1)], KEPT)  # the interval reaches below 0
    assert not unsure.passed and "not shown better than the base" in unsure.message
    few = decide([result("accuracy", 0.0, 1.0)], KEPT, n=MIN_TEST_EXAMPLES - 1)
    assert not few.passed and few.message == (
        f"not promoted: insufficient evidence (n={MIN_TEST_EXAMPLES - 1} test examples, at least {MIN_TEST_EXAMPLES} needed)"
    ), "only the missing evidence: nothing was forgotten"
    forgot = decide([result("accuracy", 0.0, 0.85, spread=0.1)], FORGOT)
    assert not forgot.passed and "likelihood" in forgot.message
    nothing = decide([result("accuracy", 0.0, 0.85, spread=0.1)], Forgetting(None))
    assert not nothing.passed and "could not be measured" in nothing.message
    assert "no quality gate set" not in better.message + unsure.message + forgot.message


def test_opting_out_of_forgetting_needs_an_explicit_gate_to_promote() -> None:
    opted_out = Forgetting(None, opted_out=True)
    default = decide([result("accuracy", 0.0, 0.85, spread=0.1)], opted_out)
    assert not default.passed
    assert "forgetting not measured (opted out) and no explicit gate" in default.message
    assert any(c.detail == "forgetting not measured (opted out)" and c.passed is None for c in default.checks)
    explicit = decide(
        [result("accuracy", 0.0, 0.85)], opted_out, QualityGateSpec(metric="accuracy", minImprovement=0.15)
    )
    assert explicit.passed


def test_known_answers_are_judged_by_keywords_and_a_drop_fails() -> None:
    items = [RegressionItem(EXAMPLES[0], ("Paris",)), RegressionItem(EXAMPLES[1], ("56", "fifty-six"))] * 10
    kept = compare_known_answers(items, ["Paris.", "It is 56"] * 10, ["paris", "fifty-six"] * 10, 0.05, seed=0)
    assert kept.base == kept.tuned == 1.0 and kept.passed
    lost = compare_known_answers(items, ["Paris.", "It is 56"] * 10, ["billing", "It is 156"] * 10, 0.05, seed=0)
    assert lost.tuned == 0.0 and lost.relative_loss == 1.0 and not lost.passed and lost.ci_high < 0
    forgetting = Forgetting("general", likelihood=KEPT.likelihood, known_answers=lost)
    verdict = decide([result("accuracy", 0.0, 0.85, spread=0.1)], forgetting)
    assert not verdict.passed and "known answers right 100.0% -> 0.0%" in verdict.message


def test_label_collapse_counts_general_answers_that_are_task_labels() -> None:
    collapse = compare_label_collapse({"billing", "shipping"}, ["Paris", "56"] * 10, ["Billing", "56"] * 10, seed=0)
    assert collapse.base == 0.0 and collapse.tuned == 0.5 and collapse.ci_low > 0
    forgetting = Forgetting(
        "general",
        likelihood=KEPT.likelihood,
        known_answers=KnownAnswerResult(20, 1.0, 1.0, 0.0, 0.0, 0.0, 0.05),
        label_collapse=collapse,
    )
    verdict = decide([result("accuracy", 0.0, 0.85, spread=0.1)], forgetting)
    assert verdict.passed, "reported, not judged"
    assert next(c for c in verdict.checks if c.name == "labelCollapse").passed is None


def test_the_primary_metric_is_accuracy_for_label_like_answers_else_rouge_l() -> None:
    assert primary_metric(["billing", "Shipping.", "billing"] * 10) == Metric.ACCURACY
    assert primary_metric([f"answer number {i}" for i in range(60)]) == Metric.ROUGE_L
    mostly = [f"label{i % 40}" for i in range(95)] + [f"rare {i}" for i in range(5)]
    assert primary_metric(mostly) == Metric.ACCURACY, "40 labels cover 95% of rows"
    spread = [f"label{i % 50}" for i in range(85)] + [f"rare {i}" for i in range(15)]
    assert primary_metric(spread) == Metric.ROUGE_L, "50 answers cover only 85%"


def test_loss_curve_is_a_png(tmp_path: Path) -> None:
    path = plot_loss_curve(
        [{"step": 1, "loss": 2.0}, {"step": 2, "loss": 1.5, "eval_loss": 1.7}], tmp_path / "curve.png"
    )
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_forgetting_is_scored_at_a_fixed_length_whatever_the_run_trained_at(tiny_model_dir: Path) -> None:
    """The base model's likelihood on general prompts must not move with the training sequence length."""
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    long_answer = " ".join(f"word{i}" for i in range(60))
    general = RegressionSet(
        "long answers",
        tuple(
            RegressionItem(Example(messages=(Message("user", f"say {i}"), Message("assistant", long_answer))), None)
            for i in range(4)
        ),
    )
    model = perturbed_lora(tiny_model_dir, 0.5)
    measured = [
        evaluate(
            ModelUnderTest(model),
            tokenizer,
            EXAMPLES,
            EvaluationSpec(metrics=["perplexity"]),
            regression=general,
            max_length=length,
        ).forgetting.likelihood
        for length in (24, 256)
    ]
    assert measured[0] is not None and measured[1] is not None
    assert measured[0].base == measured[1].base and measured[0].tuned == measured[1].tuned
    # ... whereas the test split is scored at the run's length: the short run cut the answers
    short = score_examples(model, tokenizer, general.examples, max_length=24, batch_size=4)[0]
    full = score_examples(model, tokenizer, general.examples, max_length=256, batch_size=4)[0]
    assert short[0].tokens < full[0].tokens
