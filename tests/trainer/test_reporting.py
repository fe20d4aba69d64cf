"""Trainer metrics as Prometheus sees them, scraped over HTTP."""

from __future__ import annotations

import socket
import urllib.request

from prometheus_client.parser import text_string_to_metric_families

from kubetune.api.v1alpha1 import Progress, TrainerResult
from kubetune_trainer.reporting.prometheus import PrometheusReporter


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def test_progress_and_results_are_served() -> None:
    port = free_port()
    reporter = PrometheusReporter("ml", "tickets", port=port)
    reporter.stage("train")
    reporter.progress(
        Progress(step=12, total_steps=40, epoch=0.6, train_loss=1.25, eval_loss=1.5, tokens_per_second=210.0)
    )
    reporter.checkpoint_uploaded()
    reporter.result(TrainerResult(metrics={"base.accuracy": 0.12, "tuned.accuracy": 0.9}))
    values = scrape(port)
    job = (("job", "tickets"), ("namespace", "ml"))
    assert values[("kubetune_trainer_step", job)] == 12
    assert values[("kubetune_trainer_total_steps", job)] == 40
    assert values[("kubetune_trainer_train_loss", job)] == 1.25
    assert values[("kubetune_trainer_tokens_per_second", tuple(sorted((*job, ("kind", "all")))))] == 210.0
    assert values[("kubetune_trainer_checkpoints_total", job)] == 1
    assert values[("kubetune_trainer_stage", tuple(sorted((*job, ("stage", "train")))))] == 1
    assert (
        values[("kubetune_trainer_eval_metric", tuple(sorted((*job, ("metric", "accuracy"), ("model", "tuned")))))]
        == 0.9
    )
