"""Preference tuning (``method.objective: dpo|orpo``): the losses, the rewards the evaluation reports and
the gate judges, and whole ``kubetune run``s on the tiny model. The row formats and their refusals are
in the dataset corpus (tests/corpus/datasets/cases.yaml, ``preference-*``); the real-model run is
tests/test_preference_slow.py."""

from __future__ import annotations

import json
import math
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch
import yaml

from kubetune.api.v1alpha1 import DpoLoss, Metric
from kubetune_trainer.evaluation.forgetting import KnownAnswerResult
from kubetune_trainer.evaluation.gate import Forgetting, decide_promotion
from kubetune_trainer.evaluation.preference import compare_answers, compare_preferences, reward_margins
from kubetune_trainer.evaluation.results import MetricResult
from kubetune_trainer.evaluation.scoring import TokenLoss
from kubetune_trainer.plan import DEFAULTS
from kubetune_trainer.training.preference import dpo_losses, orpo_odds_ratio_losses
from tests.trainer.jobs import run_locally, write_dataset, write_job, write_pairs


def test_dpo_losses_follow_their_papers() -> None:
    chosen, rejected = torch.tensor([-4.0, -9.0]), torch.tensor([-6.0, -5.0])
    reference_chosen, reference_rejected = torch.tensor([-5.0, -9.0]), torch.tensor([-5.0, -5.0])
    tokens = torch.tensor([2, 4])
    sigmoid = dpo_losses(
        chosen,
        rejected,
        reference_chosen,
        reference_rejected,
        beta=0.5,
        loss=DpoLoss.SIGMOID,
        chosen_tokens=tokens,
        rejected_tokens=tokens,
    )
    # Pair 0: log ratios +1 and -1, so -log sigmoid(0.5 * 2); pair 1 has not moved: log 2.
    assert sigmoid.tolist() == pytest.approx([math.log1p(math.exp(-1.0)), math.log(2)])
    ipo = dpo_losses(
        chosen,
        rejected,
        reference_chosen,
        reference_rejected,
        beta=0.5,
        loss=DpoLoss.IPO,
        chosen_tokens=tokens,
        rejected_tokens=tokens,
    )
    # Per-token log-ratio difference (1/2 - (-1/2) = 1 for pair 0, 0 for pair 1) against 1/(2 beta) = 1.
    assert ipo.tolist() == pytest.approx([0.0, 1.0])


def test_orpo_odds_ratio_term_equals_trls() -> None:
    from trl.experimental.orpo.orpo_trainer import ORPOTrainer

    generator = torch.Generator().manual_seed(0)
    chosen = -torch.rand(6, generator=generator) * 3 - 1e-3
    rejected = -torch.rand(6, generator=generator) * 3 - 1e-3
    beta = 0.25
    trainer = SimpleNamespace(beta=beta, accelerator=SimpleNamespace(device="cpu"))
    trl_losses = ORPOTrainer.odds_ratio_loss(trainer, chosen, rejected)[0]  # type: ignore[arg-type]
    # TRL returns beta * log sigmoid(log odds ratio) and subtracts its mean from the NLL.
    ours = orpo_odds_ratio_losses(chosen, rejected, beta=beta)
    assert torch.allclose(ours, -trl_losses, atol=1e-6)


def losses(*values: float) -> list[TokenLoss]:
    return [TokenLoss(value, 4) for value in values]


def test_rewards_are_log_ratios_against_the_base_and_ties_count_half() -> None:
    margins = reward_margins(losses(10, 10, 10), losses(8, 10, 12), losses(10, 10, 10), losses(12, 10, 9), beta=0.1)
    # Pair 0: the tuned model gained 2 nats on chosen, lost 2 on rejected; pair 1: unchanged; pair 2: wrong way.
    assert margins == pytest.approx([0.4, 0.0, -0.3])
    accuracy, margin = compare_preferences(margins, seed=0)
    assert (accuracy.name, accuracy.base, accuracy.tuned) == ("rewardAccuracy", 0.5, pytest.approx(0.5))
    assert (margin.name, margin.base, margin.tuned) == ("rewardMargin", 0.0, pytest.approx(0.1 / 3))
    assert not accuracy.improved  # three pairs prove nothing


def test_the_pair_win_rate_asks_whose_answer_leans_further_to_the_chosen_side() -> None:
    chosen = ["blue", "red", "teal", "gray"]
    rejected = ["I think it is blue, maybe", "Possibly red, not sure", "teal I guess, or green", "gray it could be"]
    base = ["I think it is blue, maybe", "red", "teal", "no idea"]
    tuned = ["blue", "Possibly red, not sure", "teal", "gray"]
    # Win (moved to chosen), loss (moved to rejected), tie (both the chosen answer), win (off-pair -> chosen).
    result = compare_answers(base, tuned, chosen, rejected, seed=0)
    assert (result.name, result.base, result.tuned) == ("pairWinRate", 0.5, pytest.approx(2.5 / 4))


def preference_results(accuracy: float, margin: float, spread: float) -> list[MetricResult]:
    return [
        MetricResult("rewardAccuracy", 0.5, accuracy, accuracy - 0.5 - spread, accuracy - 0.5 + spread, False),
        MetricResult("rewardMargin", 0.0, margin, margin - spread, margin + spread, False),
    ]


FORGETTING_KEPT = Forgetting(set_name="general", known_answers=KnownAnswerResult(40, 0.5, 0.5, 0.0, -0.05, 0.05, 0.05))


@pytest.mark.parametrize(
    ("accuracy", "margin", "examples", "promoted"),
    [(0.8, 0.3, 64, True), (0.55, 0.3, 64, False), (0.8, 0.05, 64, False), (0.9, 0.5, 10, False)],
)
def test_the_default_gate_of_a_preference_run_judges_its_rewards(
    accuracy: float, margin: float, examples: int, promoted: bool
) -> None:
    verdict = decide_promotion(
        [],
        FORGETTING_KEPT,
        None,
        primary=Metric.ACCURACY,
        test_examples=examples,
        preference=preference_results(accuracy, margin, 0.1),
    )
    assert verdict.passed is promoted, verdict.message
    assert verdict.checks[0].name == "preference" and verdict.checks[0].passed is promoted


RUNS: dict[str, dict[str, Any]] = {
    "dpo-lora": {"objective": "dpo", "type": "lora", "lora": {"r": 4, "alpha": 8, "dropout": 0.0}},
    "ipo-ia3": {"objective": "dpo", "dpo": {"loss": "ipo", "beta": 0.5}, "type": "lora", "adapter": "ia3"},
    "orpo-full": {"objective": "orpo", "type": "full"},
    "dpo-prefix": {"objective": "dpo", "type": "lora", "adapter": "prefix", "prefix": {"virtualTokens": 8}},
}
RATES = {"full": 1e-4, "prefix": 1e-2}  # else 1e-3


@pytest.mark.parametrize("name", list(RUNS))
def test_a_preference_run_learns_its_pairs_and_is_judged_on_its_rewards(
    name: str, tmp_path: Path, tiny_model_dir: Path
) -> None:
    method = RUNS[name]
    data = write_pairs(tmp_path / "pairs.jsonl")
    job = write_job(
        tmp_path / "job.yaml",
        model_dir=tiny_model_dir,
        data=data,
        output=f"file://{tmp_path}/out",
        dataset={"split": {"validation": 0.1, "test": 0.3}},
        hyperparameters={"learningRate": RATES.get(method["type"], RATES.get(method.get("adapter", ""), 1e-3))},
        # One run generates answers too, for the pair win rate.
        evaluation={"metrics": ["perplexity", "rougeL"] if name == "orpo-full" else ["perplexity"]},
    )
    manifest = yaml.safe_load(job.read_text())
    manifest["spec"]["method"] = method  # in place of the LoRA block write_job starts from
    job.write_text(yaml.safe_dump(manifest))
    _, lineage_path = run_locally(job, tmp_path)
    lineage = json.loads(lineage_path.read_text())
    resolved = lineage["resolved"]
    if method["type"] != "full" and method.get("adapter") != "prefix":  # neither has a strength
        assert lineage["training"]["adapterStrength"]["scale"] == 1.0
        assert lineage["training"]["adapterStrength"]["how"].startswith("full strength: a preference run")
    assert resolved["objective"]["type"] == method["objective"]
    assert resolved["hyperparameters"]["packing"] is False and resolved["replay"]["enabled"] is False
    if method["objective"] == "dpo":
        assert resolved["objective"]["reference"] == "base"
        assert resolved["objective"]["beta"] == method.get("dpo", {}).get("beta", DEFAULTS.dpo_beta)

    reports = tmp_path / "work" / "artifacts" / "reports"
    history = json.loads((reports / "training_history.json").read_text())
    steps = [entry["loss"] for entry in history if "loss" in entry]
    if method["objective"] == "dpo" and method.get("adapter") != "prefix":
        # Before the first step the model is its reference: every log ratio is 0 (a prefix starts random,
        # so its model does not start at the base).
        beta = resolved["objective"]["beta"]
        untrained = math.log(2) if resolved["objective"]["loss"] == "sigmoid" else (1 / (2 * beta)) ** 2
        assert steps[0] == pytest.approx(untrained, rel=1e-4)
    assert steps[-1] < steps[0]

    evaluation = json.loads((reports / "evaluation.json").read_text())
    metrics = {m["name"]: m for m in evaluation["metrics"]}
    assert metrics["rewardAccuracy"]["tuned"] > 0.5 and metrics["rewardMargin"]["ci_low"] > 0, metrics
    checks = {c["name"]: c for c in evaluation["gate"]["checks"]}
    assert checks["preference"]["passed"] is True, checks
    assert ("pairWinRate" in metrics) is (name == "orpo-full")
    if name == "orpo-full":
        assert checks["preference.pairWinRate"]["passed"] is None
    predictions = [json.loads(line) for line in (reports / "predictions.jsonl").read_text().splitlines()]
    assert all("rejected" in p and "rewardMargin" in p for p in predictions)


def test_a_dpo_run_from_a_published_sft_version_takes_that_version_as_its_reference(
    tmp_path: Path, tiny_model_dir: Path
) -> None:
    """The usual recipe, SFT then DPO: the DPO job names the SFT version's published merged model as
    its base model, so training starts there and the reference its rewards are measured against is that
    version (the model before the first step), not the original base."""
    sft, dpo = tmp_path / "sft", tmp_path / "dpo"
    sft.mkdir(), dpo.mkdir()
    job = write_job(
        sft / "job.yaml",
        model_dir=tiny_model_dir,
        data=write_dataset(sft / "data.jsonl", 32),
        output=f"file://{sft}/out",
    )
    manifest = yaml.safe_load(job.read_text())
    manifest["spec"]["output"]["formats"] = ["merged"]
    job.write_text(yaml.safe_dump(manifest))
    _, sft_lineage = run_locally(job, sft)
    published = sft_lineage.parent / "merged"

    job = write_job(
        dpo / "job.yaml",
        model_dir=published,
        data=write_pairs(dpo / "pairs.jsonl"),
        output=f"file://{dpo}/out",
        dataset={"split": {"validation": 0.1, "test": 0.3}},
        method={"type": "lora", "objective": "dpo", "lora": {"r": 4, "alpha": 8, "dropout": 0.0}},
    )
    _, lineage_path = run_locally(job, dpo)
    lineage = json.loads(lineage_path.read_text())
    assert lineage["baseModel"]["uri"] == f"file://{published}"
    original = json.loads(sft_lineage.read_text())["baseModel"]
    assert lineage["baseModel"]["sha256"] != original["sha256"]  # the SFT version's weights, not the base's
    assert lineage["resolved"]["objective"]["reference"] == "base"
    history = json.loads((dpo / "work" / "artifacts" / "reports" / "training_history.json").read_text())
    first = next(entry["loss"] for entry in history if "loss" in entry)
    assert first == pytest.approx(math.log(2), rel=1e-4)  # the policy starts as its reference: the version
    evaluation = json.loads((dpo / "work" / "artifacts" / "reports" / "evaluation.json").read_text())
    metrics = {m["name"]: m for m in evaluation["metrics"]}
    assert metrics["rewardMargin"]["base"] == 0.0 and metrics["rewardMargin"]["tuned"] > 0, metrics


EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def test_the_shipped_preference_example_is_reproducible_valid_and_judged_by_its_rule(tmp_path: Path) -> None:
    import subprocess
    import sys

    from kubetune.api.v1alpha1 import DatasetFormat
    from kubetune_trainer.data.formats import to_example

    committed = EXAMPLES / "ticket-preferences" / "data.jsonl"
    regenerated = tmp_path / "data.jsonl"
    subprocess.run(
        [sys.executable, str(EXAMPLES / "tools" / "make_preferences.py"), str(regenerated)], check=True, timeout=60
    )
    assert regenerated.read_bytes() == committed.read_bytes()
    done = subprocess.run(
        [str(Path(sys.executable).parent / "kubetune"), "validate", str(EXAMPLES / "ticket-preferences.yaml")],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    sys.path.insert(0, str(EXAMPLES / "tools"))
    try:
        from make_preferences import CHATTY, LABELS, on_format
    finally:
        sys.path.remove(str(EXAMPLES / "tools"))
    pairs = [to_example(json.loads(line), DatasetFormat.PREFERENCE) for line in committed.read_text().splitlines()]
    assert len(pairs) == 480
    # The judge is the rule that made the pairs: it prefers every chosen answer and no rejected one.
    assert all(on_format(p.reference()) and not on_format(p.rejected or "") for p in pairs)
    assert len({p.rejected for p in pairs}) == len(CHATTY) * len(LABELS)  # every chatty style, every label
