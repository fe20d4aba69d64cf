"""Differential privacy (spec.privacy): DP-SGD with Opacus through ``kubetune run`` with the real loader
and LoRA; the epsilon the lineage reports is recomputed here from the steps actually taken."""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import yaml
from safetensors.torch import load_file

from kubetune.api.contract import EXIT_CONFIG
from kubetune.api.v1alpha1 import ResolvedAdapterTraining, ResolvedPrivacy
from kubetune_trainer.plan import DEFAULTS, resolve_training
from tests.builders import spec
from tests.trainer.jobs import kubetune_process, run_locally, write_dataset, write_job
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
    assert privacy.steps == math.ceil(hp.epochs / privacy.sample_rate)
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


def _private_plan(rows: int, **hyperparameters: float) -> tuple[ResolvedAdapterTraining, ResolvedPrivacy]:
    manifest = spec(privacy={"targetEpsilon": 4}, resources={"gpus": 0}, hyperparameters=hyperparameters)
    plan = resolve_training(manifest, CPU, train_examples=rows, token_lengths=[40] * rows, shape=SMOL, replay=NO_REPLAY)
    assert isinstance(plan, ResolvedAdapterTraining) and isinstance(plan.privacy, ResolvedPrivacy)
    return plan, plan.privacy


def test_the_private_recipe_takes_a_few_large_steps_an_epoch_at_a_higher_rate_and_the_users_values_win() -> None:
    # The example's 561 rows: 8 steps an epoch of about 70 rows (micro-batches of 4), not the plain batch of 8.
    plan, privacy = _private_plan(561)
    hp = plan.hyperparameters
    assert (hp.batch_size, hp.gradient_accumulation_steps, hp.learning_rate) == (4, 18, DEFAULTS.lr_private)
    assert privacy.sample_rate == 72 / 561 and privacy.steps == 24
    plain = resolve_training(spec(), CPU, train_examples=561, token_lengths=[40] * 561, shape=SMOL, replay=NO_REPLAY)
    assert plain.hyperparameters.gradient_accumulation_steps * plain.hyperparameters.batch_size == 8
    assert plain.hyperparameters.learning_rate == DEFAULTS.lr_lora < DEFAULTS.lr_private
    # A small dataset keeps at least the plain batch; a large one is capped and takes more steps an epoch.
    assert _private_plan(40)[1].sample_rate == 8 / 40
    large_plan, large = _private_plan(200_000)
    assert large_plan.hyperparameters.gradient_accumulation_steps * 4 == DEFAULTS.privacy_max_expected_batch
    assert large.steps == math.ceil(large_plan.hyperparameters.epochs * 200_000 / 1024)
    # What the user sets is kept.
    mine, mine_privacy = _private_plan(561, batchSize=2, gradientAccumulationSteps=3, learningRate=1e-4)
    assert mine_privacy.sample_rate == 6 / 561 and mine.hyperparameters.learning_rate == 1e-4


@pytest.fixture(scope="module")
def private_run(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> tuple[dict, dict, str, Path]:  # type: ignore[type-arg]
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
    return lineage, lineage["privacy"], result.stdout + result.stderr, manifest_path.parent


def test_kubetune_run_spends_at_most_the_budget_and_the_record_recomputes(private_run) -> None:  # type: ignore[no-untyped-def]
    lineage, privacy, _, _ = private_run
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
    lineage, _, output, version = private_run
    assert lineage["resolved"]["hyperparameters"]["packing"] is False
    # the drawn rows' loss is computed without noise: it is released nowhere (history, progress, logs)
    history = json.loads((version / "reports" / "training_history.json").read_text())
    assert len(history) == lineage["privacy"]["steps"] and not any("loss" in entry for entry in history)
    assert not re.search(r"loss[ =:]+[0-9]", output), "a loss figure was printed"
    assert "DP-SGD" in output
    published = {artifact["path"].split("/")[0] for artifact in lineage["artifacts"]}
    assert "adapter" in published
    (perplexity,) = [m for m in lineage["evaluation"]["metrics"] if m["name"] == "perplexity"]
    assert perplexity["tuned"] != perplexity["base"], "the adapter changed the model"


def test_a_private_version_leaves_no_checkpoint_and_is_not_reproduced(private_run, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """The checkpoints hold the secret generators' states: gone once the run is published. Running the
    version again would be a second release from the same data on other noise: refused, saying so."""
    _, _, _, version = private_run
    runs = version.parents[1]
    assert not [*runs.rglob("latest.json"), *runs.rglob("checkpoint-*")], "a published private run kept its state"
    again = kubetune_process("reproduce", f"file://{version}", tmp_path)
    assert again.returncode == EXIT_CONFIG, again.stderr[-3000:]
    assert "spec.privacy" in again.stderr and "second release" in again.stderr and "Traceback" not in again.stderr
    assert not (tmp_path / "runs").exists(), "nothing was trained or published"


def _kubetune_run(job: Path, folder: Path) -> subprocess.Popen[str]:
    """``kubetune run`` as a user runs it, its micro-batches traced on stderr (one thread)."""
    command = [str(Path(sys.executable).parent / "kubetune"), "run", str(job)]
    return subprocess.Popen(
        [*command, "--output-dir", str(folder / "runs"), "--workdir", str(folder / "work")],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1", "KUBETUNE_TRACE_MICROSTEPS": "1"},
        start_new_session=True,
    )


def _published(folder: Path) -> list[tuple[dict, dict[str, torch.Tensor]]]:  # type: ignore[type-arg]
    """Every version published under ``folder``, oldest first: its lineage and its adapter's weights."""
    found = []
    for manifest in sorted((folder / "runs").glob("*/v*/manifest.json"), key=lambda m: m.parent.name):
        (weights,) = manifest.parent.glob("adapter/adapter_model.safetensors")
        found.append((yaml.safe_load(manifest.read_text()), load_file(str(weights))))
    return found


def test_a_killed_private_run_resumes_its_chain_and_counts_each_step_once(tmp_path: Path, tiny_model_dir: Path) -> None:
    """SIGKILL between two micro-batches of a step after a checkpoint; ``kubetune run`` again resumes the
    saved state (adapter, optimizer, both generators, the accountant), epsilon recomputed from the planned
    steps, each counted once. The generators are seeded from a secret source, so a restart that did not
    restore one of them would draw other rows or noise: two restarts from the same checkpoint end on the
    same adapter. Each deletes the checkpoints once it has published."""
    data = write_dataset(tmp_path / "data.jsonl", 40)
    job = write_job(
        tmp_path / "job.yaml",
        model_dir=tiny_model_dir,
        data=data,
        output=f"file://{tmp_path}/out/",
        privacy={"targetEpsilon": 8},
        hyperparameters={"epochs": 2, "learningRate": 0.01, "batchSize": 2, "gradientAccumulationSteps": 3},
    )
    first = _kubetune_run(job, tmp_path)
    assert first.stderr is not None
    killed_at = None
    for line in first.stderr:
        fields = dict(part.split("=") for part in line.split()[1:]) if line.startswith("kubetune-microstep") else {}
        if fields and int(fields["step"]) >= 5 and fields["substep"] != "end":
            os.killpg(first.pid, signal.SIGKILL)  # step 4 was checkpointed (every 2 steps)
            killed_at = line.strip()
            break
    first.wait(timeout=60)
    assert killed_at is not None, "no step after the checkpoint had two micro-batches"
    (pointer,) = (tmp_path / "runs").rglob("latest.json")
    checkpoints = pointer.parent
    shutil.copytree(checkpoints, tmp_path / "saved")

    for restart in range(2):
        if restart:  # the same checkpoint again
            shutil.copytree(tmp_path / "saved", checkpoints, dirs_exist_ok=True)
        second = _kubetune_run(job, tmp_path)
        _, err = second.communicate(timeout=300)
        assert second.returncode == 0, err[-3000:]
        assert "resumed DP-SGD at step" in err
        assert "kubetune-microstep step=1 substep=end" not in err, "the restart did not start over"
        left = sorted(path.name for path in checkpoints.iterdir())
        assert left == [], f"a published private run left its checkpoints: {left}"

    (lineage, resumed), (again_lineage, again) = _published(tmp_path)
    assert lineage["training"]["resumedFromStep"] >= 4
    privacy = lineage["privacy"]
    assert privacy == again_lineage["privacy"]
    assert privacy["steps"] == lineage["resolved"]["privacy"]["steps"] == lineage["training"]["globalStep"]
    recomputed = rdp_epsilon(privacy["noiseMultiplier"], privacy["sampleRate"], privacy["steps"], privacy["delta"])
    assert privacy["epsilon"] == pytest.approx(recomputed, rel=1e-9) and privacy["epsilon"] <= 8
    assert resumed.keys() == again.keys()
    for name in again:
        torch.testing.assert_close(resumed[name], again[name], atol=1e-6, rtol=1e-5)


def test_a_preempted_loop_resumed_from_its_state_ends_on_the_uninterrupted_chain_whose_noise_is_secret(
    tmp_path: Path, tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The DP-SGD loop itself on the tiny model with LoRA. With its secret seed fixed here, a run stopped on
    SIGTERM after step 3 and resumed from the state it saved (written and read back as a restart reads it)
    ends on the uninterrupted run's adapter: the state holds everything the chain depends on. With the
    secret source, two runs of the same hyperparameters (seed included) draw other rows and noise."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from kubetune_trainer.data.types import Example, Message
    from kubetune_trainer.tensors.batching import RowDataset, build_rows, collator_for
    from kubetune_trainer.tensors.encode import encode_example
    from kubetune_trainer.training import private

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    examples = [
        Example(messages=(Message("user", f"question {i}"), Message("assistant", f"answer {i % 3}"))) for i in range(24)
    ]
    rows = RowDataset(build_rows([encode_example(e, tokenizer, 64) for e in examples], 64, packing=False))
    plan = resolve_training(
        spec(
            privacy={"targetEpsilon": 8},
            hyperparameters={
                "epochs": 1.5,
                "learningRate": 0.01,
                "warmupRatio": 0,
                "batchSize": 2,
                "gradientAccumulationSteps": 3,
            },
            resources={"gpus": 0},
        ),
        CPU,
        train_examples=len(rows),
        token_lengths=[40] * len(rows),
        shape=SMOL,
        replay=NO_REPLAY,
    )
    assert isinstance(plan, ResolvedAdapterTraining) and isinstance(plan.privacy, ResolvedPrivacy)
    hyperparameters, privacy = plan.hyperparameters, plan.privacy
    assert privacy.steps == 6 and hyperparameters.sequence_length >= 64

    def trained(checkpointing: private.Checkpointing, max_steps: int | None = None) -> dict[str, torch.Tensor]:
        torch.manual_seed(0)  # the same base and adapter initialisation every time
        model = get_peft_model(
            AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32),
            LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules=["q_proj", "v_proj"]),
        )
        private.train_private(
            model,
            rows,
            collator_for(tokenizer, packing=False),
            privacy=privacy,
            hyperparameters=hyperparameters,
            device="cpu",
            checkpointing=checkpointing,
            max_steps=max_steps,
        )
        return {name: p.detach().clone() for name, p in model.named_parameters() if p.requires_grad}

    def unsaved() -> private.Checkpointing:
        return private.Checkpointing(every_steps=privacy.steps + 1, save=lambda step, state: None)

    with monkeypatch.context() as fixed:
        fixed.setattr(private, "_secret_seed", lambda: 1234)
        uninterrupted = trained(unsaved())
        saved: dict[int, dict] = {}  # type: ignore[type-arg]
        steps_seen = iter(range(1, privacy.steps + 1))
        trained(
            private.Checkpointing(
                every_steps=privacy.steps + 1, save=saved.__setitem__, stop_requested=lambda: next(steps_seen) == 3
            )
        )
        assert list(saved) == [3], "the loop saved its state when asked to stop, and stopped"
        private.write_state(tmp_path / "checkpoint-3", saved[3])
        resumed = trained(replace(unsaved(), resume=private.read_state(tmp_path / "checkpoint-3")))
    for name, weights in uninterrupted.items():
        torch.testing.assert_close(resumed[name], weights, atol=1e-6, rtol=1e-5, msg=name)
    first, second = trained(unsaved(), max_steps=1), trained(unsaved(), max_steps=1)
    assert any(not torch.allclose(first[name], second[name]) for name in first), "the noise repeated a run's"


def test_a_state_whose_accountant_does_not_add_up_or_that_is_not_plain_data_is_refused(tmp_path: Path) -> None:
    """What a restart reads back from storage (the tenant can write there) is checked before it is resumed:
    a pickle that is more than tensors and plain values, and an accountant that did not count exactly the
    saved steps at this run's noise and sample rate, are refused by name."""
    from kubetune.api.v1alpha1 import ResolvedPrivacy
    from kubetune_trainer.errors import ConfigurationError
    from kubetune_trainer.training.private import (
        STATE_FILE,
        LoopParts,
        read_state,
        restore_state,
        resumable_step,
        write_state,
    )

    privacy = ResolvedPrivacy(
        mechanism="dp-sgd", target_epsilon=8, delta=1e-3, max_grad_norm=1.0, sample_rate=0.1, steps=20, accountant="rdp"
    )
    write_state(tmp_path / "checkpoint-4", {"format": 1, "step": 4, "accountant": [[1.5, 0.1, 4]]})
    state = read_state(tmp_path / "checkpoint-4")
    assert resumable_step(state, 1.5, privacy) == 4
    for accountant in ([[1.5, 0.1, 3]], [[1.2, 0.1, 4]], [[1.5, 0.1, 2], [1.5, 0.1, 2]], []):
        with pytest.raises(ConfigurationError, match="checkpoint-4: its accountant counted"):
            resumable_step({**state, "accountant": accountant}, 1.5, privacy)
    with pytest.raises(ConfigurationError, match="checkpoint-40"):
        resumable_step({**state, "step": 40, "accountant": [[1.5, 0.1, 40]]}, 1.5, privacy)
    # a state whose accountant adds up but whose parts are damaged does not load, and says which checkpoint
    model = torch.nn.Linear(2, 2)
    optimizer = torch.optim.AdamW(model.parameters())
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)
    parts = LoopParts(
        SimpleNamespace(original_optimizer=optimizer), schedule, torch.Generator(), torch.Generator(), None
    )
    good = {
        **state,
        "trainable": {name: p.detach().clone() for name, p in model.named_parameters()},
        "optimizer": optimizer.state_dict(),
        "schedule": schedule.state_dict(),
        "sampler": torch.Generator().get_state(),
        "noise": torch.Generator().get_state(),
        "global_rng": torch.get_rng_state(),
        "history": [{"step": 1.0, "learning_rate": 0.1}],
    }
    parts.accountant = SimpleNamespace(history=[])
    assert restore_state(good, model, parts, 1.5, privacy) == (4, good["history"])
    assert parts.accountant.history == [(1.5, 0.1, 4)]
    for damaged in (
        {**good, "trainable": {"weight": torch.zeros(2, 2)}},
        {**good, "trainable": {**good["trainable"], "weight": "not a tensor"}},
        {**good, "sampler": torch.zeros(3)},
        {**good, "optimizer": {"state": {}}},
        {key: value for key, value in good.items() if key != "noise"},
        {key: value for key, value in good.items() if key != "history"},
        {**good, "history": [3]},
    ):
        with pytest.raises(ConfigurationError, match=r"checkpoint-4: its (trained weights|saved state)"):
            restore_state(damaged, model, parts, 1.5, privacy)
    (tmp_path / "checkpoint-6").mkdir()
    torch.save({"format": 1, "payload": ConfigurationError("code")}, tmp_path / "checkpoint-6" / STATE_FILE)
    with pytest.raises(ConfigurationError, match=r"checkpoint-6.*unreadable"):
        read_state(tmp_path / "checkpoint-6")
    (tmp_path / "checkpoint-8").mkdir()
    with pytest.raises(ConfigurationError, match=r"checkpoint-8: no kubetune_private_state\.pt"):
        read_state(tmp_path / "checkpoint-8")
