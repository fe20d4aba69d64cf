"""Differential privacy (spec.privacy): DP-SGD with Opacus through ``kubetune run`` with the real loader
and LoRA; the epsilon the lineage reports is recomputed here from the steps actually taken."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from kubetune.api.v1alpha1 import ResolvedAdapterTraining, ResolvedPrivacy
from kubetune_trainer.plan import resolve_training
from tests.builders import spec
from tests.trainer.jobs import run_locally, write_dataset, write_job
from tests.trainer.plans import CPU, L4, NO_REPLAY, SEVEN_B, SMOL


def rdp_epsilon(noise: float, sample_rate: float, steps: int, delta: float) -> float:
    """Epsilon of ``steps`` Poisson-sampled Gaussian steps, from Opacus's RDP analysis directly (not the
    trainer's accountant object): the guarantee the run's record claims."""
    from opacus.accountants.analysis.rdp import compute_rdp, get_privacy_spent
    from opacus.accountants.rdp import RDPAccountant

    orders = RDPAccountant.DEFAULT_ALPHAS
    rdp = compute_rdp(q=sample_rate, noise_multiplier=noise, steps=steps, orders=orders)
    epsilon, _ = get_privacy_spent(orders=orders, rdp=rdp, delta=delta)
    return float(epsilon)


def test_the_plan_samples_rows_for_the_budget_and_keeps_validation_out() -> None:
    manifest = spec(privacy={"targetEpsilon": 4}, resources={"gpus": 0})
    plan = resolve_training(manifest, CPU, train_examples=200, token_lengths=[40] * 200, shape=SMOL, replay=NO_REPLAY)
    assert isinstance(plan, ResolvedAdapterTraining) and isinstance(plan.privacy, ResolvedPrivacy)
    hp, privacy = plan.hyperparameters, plan.privacy
    assert privacy.sample_rate == hp.batch_size * hp.gradient_accumulation_steps / 200
    assert privacy.steps == -(-hp.epochs // privacy.sample_rate)
    assert (privacy.delta, privacy.max_grad_norm, privacy.accountant) == (1 / 2000, 1.0, "rdp")
    plain = resolve_training(spec(), CPU, train_examples=200, token_lengths=[40] * 200, shape=SMOL, replay=NO_REPLAY)
    assert isinstance(plain, ResolvedAdapterTraining) and plain.privacy.mechanism == "none"
    on_gpu = resolve_training(
        spec(privacy={"targetEpsilon": 4}),
        L4,
        train_examples=200,
        token_lengths=[40] * 200,
        shape=SEVEN_B,
        replay=NO_REPLAY,
    )
    assert on_gpu.hyperparameters.gradient_checkpointing is False, "Opacus sees each layer's activations once"
    # one row, one privacy unit; validation rows choose nothing
    assert (hp.packing, hp.early_stopping_patience, plan.lora.strengths) == (False, 0, [1.0])


@pytest.fixture(scope="module")
def private_run(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> tuple[dict, dict, str]:  # type: ignore[type-arg]
    folder = tmp_path_factory.mktemp("private")
    job = write_job(
        folder / "job.yaml",
        model_dir=tiny_model_dir,
        data=write_dataset(folder / "data.jsonl", 32),
        output=f"file://{folder}/out/",
        privacy={"targetEpsilon": 8, "maxGradNorm": 0.5},
        hyperparameters={"epochs": 1, "learningRate": 0.01, "batchSize": 4, "gradientAccumulationSteps": 1},
        checkpoint={},
    )
    result, manifest_path = run_locally(job, folder)
    lineage = yaml.safe_load(manifest_path.read_text())
    return lineage, lineage["privacy"], result.stdout + result.stderr


def test_kubetune_run_spends_at_most_the_budget_and_the_record_recomputes(private_run) -> None:  # type: ignore[no-untyped-def]
    lineage, privacy, _ = private_run
    resolved = lineage["resolved"]["privacy"]
    assert privacy["steps"] == resolved["steps"] == lineage["training"]["globalStep"], "every planned step taken"
    assert privacy["sampleRate"] == resolved["sampleRate"] and privacy["delta"] == resolved["delta"]
    assert privacy["targetEpsilon"] == 8 and resolved["maxGradNorm"] == 0.5
    recomputed = rdp_epsilon(privacy["noiseMultiplier"], privacy["sampleRate"], privacy["steps"], privacy["delta"])
    assert privacy["epsilon"] == pytest.approx(recomputed, rel=1e-9)
    # the noise is the least that keeps the target: the budget is spent, not exceeded
    assert 0.95 * 8 <= privacy["epsilon"] <= 8
    assert rdp_epsilon(privacy["noiseMultiplier"] * 0.9, privacy["sampleRate"], privacy["steps"], privacy["delta"]) > 8


def test_the_private_adapter_is_trained_and_published(private_run) -> None:  # type: ignore[no-untyped-def]
    lineage, _, output = private_run
    assert lineage["resolved"]["hyperparameters"]["packing"] is False
    assert "DP-SGD" in output
    published = {artifact["path"].split("/")[0] for artifact in lineage["artifacts"]}
    assert "adapter" in published
    (perplexity,) = [m for m in lineage["evaluation"]["metrics"] if m["name"] == "perplexity"]
    assert perplexity["tuned"] != perplexity["base"], "the adapter changed the model"
