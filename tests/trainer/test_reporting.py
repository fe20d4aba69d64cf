"""Trainer metrics as Prometheus sees them (scraped over HTTP), and the numbers behind them:
token throughput measured on the training batches of a real Trainer run."""

from __future__ import annotations

import socket
from pathlib import Path
from types import SimpleNamespace

import pytest

from kubetune.api.v1alpha1 import PrivacySpent, Progress, TrainerResult
from kubetune_trainer.reporting import TrainingMetrics
from kubetune_trainer.reporting.prometheus import PrometheusReporter
from kubetune_trainer.tensors.batching import TokenCounts, TokenMeter
from kubetune_trainer.training.progress import ReportProgress
from tests.scrape import Samples, scrape, value


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def job_value(samples: Samples, name: str, **labels: str) -> float | None:
    return value(samples, name, namespace="ml", finetunejob="tickets", **labels)


def test_every_report_is_served_with_the_job_labels() -> None:
    port = free_port()
    clock = iter(range(1000, 2000))
    reporter = PrometheusReporter("ml", "tickets", port=port, clock=lambda: float(next(clock)))
    try:
        reporter.stage("data")
        reporter.stage("train")
        reporter.progress(
            Progress(step=12, total_steps=40, epoch=0.6, train_loss=1.25, eval_loss=1.5, tokens_per_second=210.0)
        )
        metrics = TrainingMetrics(
            learning_rate=4e-4,
            tokens_per_second=210.0,
            trained_tokens_per_second=30.0,
            tokens=5000,
            trained_tokens=700,
            padding_ratio=0.02,
            host_memory_peak_bytes=3 * 2**30,
            accelerator_memory_peak_bytes=None,
        )
        reporter.training_metrics(metrics)
        reporter.training_metrics(TrainingMetrics(**{**vars(metrics), "tokens": 8000, "trained_tokens": 1000}))
        reporter.checkpoint_uploaded(10)
        spent = PrivacySpent(
            epsilon=7.5, delta=1e-4, target_epsilon=8.0, noise_multiplier=0.9, sample_rate=0.05, steps=60
        )
        reporter.result(
            TrainerResult(metrics={"base.accuracy": 0.12, "tuned.accuracy": 0.9}, promoted=True, privacy=spent)
        )
        values = scrape(f"http://127.0.0.1:{port}/metrics")
    finally:
        reporter.close(0)
    assert job_value(values, "kubetune_trainer_step") == 12
    assert job_value(values, "kubetune_trainer_total_steps") == 40
    assert job_value(values, "kubetune_trainer_epoch") == 0.6
    assert job_value(values, "kubetune_trainer_train_loss") == 1.25
    assert job_value(values, "kubetune_trainer_eval_loss") == 1.5
    assert job_value(values, "kubetune_trainer_learning_rate") == 4e-4
    assert job_value(values, "kubetune_trainer_tokens_per_second", kind="all") == 210.0
    assert job_value(values, "kubetune_trainer_tokens_per_second", kind="trained") == 30.0
    assert job_value(values, "kubetune_trainer_tokens_total", kind="all") == 8000, "the counter follows the totals"
    assert job_value(values, "kubetune_trainer_tokens_total", kind="trained") == 1000
    assert job_value(values, "kubetune_trainer_padding_ratio") == 0.02
    assert job_value(values, "kubetune_trainer_memory_peak_bytes", device="host") == 3 * 2**30
    assert job_value(values, "kubetune_trainer_memory_peak_bytes", device="accelerator") is None, "no GPU, no series"
    assert job_value(values, "kubetune_trainer_checkpoints_total") == 1
    assert job_value(values, "kubetune_trainer_last_checkpoint_timestamp_seconds") == 1005
    assert job_value(values, "kubetune_trainer_last_progress_timestamp_seconds") == 1006
    assert job_value(values, "kubetune_trainer_stage", stage="train") == 1
    assert job_value(values, "kubetune_trainer_stage", stage="data") == 0
    assert job_value(values, "kubetune_trainer_eval_metric", model="tuned", metric="accuracy") == 0.9
    assert job_value(values, "kubetune_trainer_eval_metric", model="base", metric="accuracy") == 0.12
    assert job_value(values, "kubetune_trainer_quality_gate_passed") == 1
    assert job_value(values, "kubetune_trainer_privacy_epsilon", kind="spent") == 7.5
    assert job_value(values, "kubetune_trainer_privacy_epsilon", kind="target") == 8.0
    with pytest.raises(OSError):
        scrape(f"http://127.0.0.1:{port}/metrics")  # closed with the reporter


def test_a_busy_port_does_not_stop_the_trainer(caplog: pytest.LogCaptureFixture) -> None:
    with socket.socket() as taken:
        taken.bind(("0.0.0.0", 0))
        taken.listen()
        reporter = PrometheusReporter("ml", "tickets", port=taken.getsockname()[1])
        reporter.stage("train")
        reporter.close(0)
    assert "not serving trainer metrics on port" in caplog.text


def test_an_unreachable_pushgateway_is_one_warning_not_a_failure(caplog: pytest.LogCaptureFixture) -> None:
    reporter = PrometheusReporter("ml", "tickets", pushgateway=f"http://127.0.0.1:{free_port()}", push_interval=3600)
    for stage in ("model", "data", "train"):
        reporter.stage(stage)
    reporter.close(0)
    assert caplog.text.count("could not push metrics to the Pushgateway") == 1


def test_throughput_covers_the_window_since_the_last_log_and_skips_evaluation_time() -> None:
    meter, now = TokenMeter(), [100.0]
    progress: list[Progress] = []
    metrics: list[TrainingMetrics] = []
    callback = ReportProgress(
        meter,
        device="cpu",
        world_size=2,
        on_progress=progress.append,
        on_metrics=metrics.append,
        clock=lambda: now[0],
    )
    state = SimpleNamespace(is_world_process_zero=True, global_step=0, max_steps=10, epoch=0.0)
    callback.on_train_begin(None, state, None)

    def step(seconds: float, positions: int, tokens: int, trained: int, logs: dict[str, float]) -> None:
        now[0] += seconds
        meter.collated(TokenCounts(positions, tokens, trained))
        meter.consumed()
        state.global_step += 1
        callback.on_log(None, state, None, logs=logs)

    step(2.0, positions=1000, tokens=900, trained=100, logs={"loss": 2.0, "learning_rate": 1e-3})
    step(30.0, positions=0, tokens=0, trained=0, logs={"eval_loss": 1.8})  # evaluation: no training tokens
    step(4.0, positions=1000, tokens=1000, trained=200, logs={"loss": 1.5, "learning_rate": 5e-4})
    first, second = metrics
    assert first.tokens_per_second == 2 * 900 / 2.0 and first.trained_tokens_per_second == 2 * 100 / 2.0
    assert first.padding_ratio == pytest.approx(0.1)
    assert second.tokens_per_second == 2 * 1000 / 4.0, "the evaluation's 30 s are not in the window"
    assert second.padding_ratio == 0.0 and second.learning_rate == 5e-4
    assert (second.tokens, second.trained_tokens) == (2 * 1900, 2 * 300)
    assert [p.eval_loss for p in progress] == [None, 1.8, 1.8]
    assert progress[1].tokens_per_second is None and progress[2].tokens_per_second == 500.0
    # time left at the pace so far, evaluations included: 2 s for 1 step, 32 s for 2, 36 s for 3 (of 10)
    assert [p.eta_seconds for p in progress] == [18, 128, 84]
    resumed = SimpleNamespace(is_world_process_zero=True, global_step=6, max_steps=10, epoch=0.6)
    callback.on_train_begin(None, resumed, None)
    now[0] += 5.0
    resumed.global_step += 1
    callback.on_log(None, resumed, None, logs={"loss": 1.0})
    assert progress[-1].eta_seconds == 15, "a resumed run's pace counts its own steps only"


def test_a_real_trainer_run_meters_exactly_its_training_batches(tmp_path: Path, tiny_model_dir: Path) -> None:
    from transformers import AutoTokenizer

    from kubetune_trainer.storage import ObjectStore
    from kubetune_trainer.tensors.batching import build_rows
    from kubetune_trainer.tensors.encode import IGNORE_INDEX, encode_example
    from kubetune_trainer.training.checkpoints import CheckpointStore
    from kubetune_trainer.training.loop import TrainConfig, train
    from tests.trainer.plans import tiny_plan
    from tests.trainer.test_training_methods import EXAMPLES

    plan = tiny_plan("lora", 1e-3)
    plan.hyperparameters.eval_steps = 1  # evaluate after every step: those batches must not count
    seen: list[TrainingMetrics] = []
    outcome = train(
        TrainConfig(
            model_dir=tiny_model_dir,
            resolved=plan,
            train=EXAMPLES[:16],
            validation=EXAMPLES[16:],
            output_dir=tmp_path / "run",
            checkpoints=CheckpointStore(ObjectStore(), f"file://{tmp_path}/ckpt"),
            checkpoint_every_steps=1000,
            on_metrics=seen.append,
        )
    )
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    rows = build_rows([encode_example(e, tokenizer, 64) for e in EXAMPLES[:16]], 64, packing=True)
    epochs = int(plan.hyperparameters.epochs)
    assert len(seen) == outcome.global_step > 1
    assert seen[-1].tokens == epochs * sum(len(r.input_ids) for r in rows)
    targets = sum(1 for r in rows for label in r.labels[1:] if label != IGNORE_INDEX)
    assert seen[-1].trained_tokens == epochs * targets
    assert all(m.tokens_per_second > 0 and 0 <= m.padding_ratio < 1 for m in seen)
    assert [m.learning_rate for m in seen] == [1e-3] * len(seen), "the constant schedule's rate, as logged"
    assert outcome.tokens_per_second > 0 and 0 <= outcome.padding_fraction < 1
