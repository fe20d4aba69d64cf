"""spec.tracking.wandb through ``kubetune run``: the run W&B's own client records, read back from its
offline folder (``WANDB_MODE=offline``, W&B's setting for air-gapped runs, synced later with ``wandb
sync``). The operator's side (server, key, refusals) is tests/operator/test_tracking.py."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

from kubetune.api import contract
from kubetune.api.contract import EXIT_OK
from tests.trainer.jobs import write_dataset, write_job

KUBETUNE = str(Path(sys.executable).parent / "kubetune")


def _records(folder: Path) -> dict[str, Any]:
    """What the offline run holds: its config, its history rows and its summary, as W&B's reader
    (the one ``wandb sync`` uses) reads them."""
    from wandb.proto import wandb_internal_pb2 as pb
    from wandb.sdk.internal import datastore

    (path,) = folder.glob("wandb/offline-run-*/run-*.wandb")
    store = datastore.DataStore()
    store.open_for_scan(str(path))
    found: dict[str, Any] = {"config": {}, "history": [], "summary": {}, "exit": None}
    while (data := store.scan_data()) is not None:
        record = pb.Record()
        record.ParseFromString(data)
        kind = record.WhichOneof("record_type")
        if kind == "run":
            found["run"] = record.run
            found["config"] |= {item.key: json.loads(item.value_json) for item in record.run.config.update}
        elif kind == "config":
            found["config"] |= {item.key: json.loads(item.value_json) for item in record.config.update}
        elif kind == "history":
            found["history"].append({_key(item): json.loads(item.value_json) for item in record.history.item})
        elif kind == "summary":
            found["summary"] |= {_key(item): json.loads(item.value_json) for item in record.summary.update}
        elif kind == "exit":
            found["exit"] = record.exit.exit_code
    return found


def _key(item: Any) -> str:
    """A history or summary item's name: wandb-core writes it as ``nested_key`` parts."""
    return str(item.key or "/".join(item.nested_key))


def _run(
    tmp_path: Path, tiny_model_dir: Path, env: dict[str, str]
) -> tuple[subprocess.CompletedProcess[str], dict[str, Any]]:
    job = write_job(
        tmp_path / "job.yaml",
        model_dir=tiny_model_dir,
        data=write_dataset(tmp_path / "rows.jsonl", 48),
        output=f"file://{tmp_path / 'runs'}",
        tracking={"wandb": {"project": "tickets", "group": "nightly", "apiKeySecret": {"name": "wandb-key"}}},
    )
    command = [
        KUBETUNE,
        "run",
        str(job),
        "--output-dir",
        str(tmp_path / "runs"),
        "--workdir",
        str(tmp_path / "w"),
        "-o",
        "json",
    ]
    result = subprocess.run(
        command,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "offline", "WANDB_DIR": str(tmp_path), **env},
    )
    assert result.returncode == EXIT_OK, result.stderr[-3000:]
    return result, json.loads(result.stdout)


def test_a_run_reports_its_config_history_and_result_to_wandb(tmp_path: Path, tiny_model_dir: Path) -> None:
    key = tmp_path / "api-key"
    key.write_text("local-" + "0" * 40 + "\n")  # as the operator mounts the Secret's key
    _, published = _run(tmp_path, tiny_model_dir, {contract.ENV_WANDB_KEY_FILE: str(key)})
    run = _records(tmp_path)

    assert (
        run["run"].project == "tickets" and run["run"].display_name == "tiny-job" and run["run"].run_group == "nightly"
    )
    assert run["config"]["hyperparameters"]["learningRate"] == 0.001  # the resolved training values
    losses = [row for row in run["history"] if "train_loss" in row]
    assert losses and all(row["_step"] >= 1 for row in losses)
    assert any("tokens_per_second" in row for row in run["history"])
    summary = run["summary"]
    assert summary["kubetune/version"] == published["version"]
    assert summary["kubetune/manifestUri"] == published["manifestUri"]
    assert published["metrics"] and all(summary[f"eval/{key}"] == value for key, value in published["metrics"].items())
    assert run["exit"] == 0


def test_a_key_the_secret_lacks_is_a_warning_and_the_run_goes_on_untracked(
    tmp_path: Path, tiny_model_dir: Path
) -> None:
    result, published = _run(tmp_path, tiny_model_dir, {contract.ENV_WANDB_KEY_FILE: str(tmp_path / "not-mounted")})
    assert (
        "spec.tracking.wandb.apiKeySecret: the Secret has no such key; this run is not reported to W&B" in result.stderr
    )
    assert published["version"] and not list(tmp_path.glob("wandb/offline-run-*"))


def test_a_pod_the_operator_gave_no_server_never_reports_to_wandbs_default_cloud(tmp_path: Path) -> None:
    """The pre-flight pod of a W&B-tracked job has no WANDB_BASE_URL (it is no run): no reporter, so
    nothing goes to api.wandb.ai, whatever wandb's own default is."""
    from kubetune.api.manifest import parse_manifest
    from kubetune_trainer.environment import TrainerEnvironment
    from kubetune_trainer.reporting import build_reporters
    from kubetune_trainer.reporting.wandb import WandbReporter

    job = write_job(tmp_path / "job.yaml", model_dir=tmp_path, data=tmp_path / "rows.jsonl", output="file:///tmp/out")
    manifest = yaml.safe_load(job.read_text())
    manifest["spec"]["tracking"] = {"wandb": {"project": "tickets"}}
    parsed = parse_manifest(manifest)
    in_pod = {contract.ENV_JOB_NAME: "tickets", contract.ENV_JOB_NAMESPACE: "ml"}
    chosen = build_reporters(parsed, console=False, environment=TrainerEnvironment.from_env(in_pod))
    assert not any(isinstance(r, WandbReporter) for r in chosen.reporters)
    served = {**in_pod, contract.ENV_WANDB_BASE_URL: "https://wandb.example.com"}
    chosen = build_reporters(parsed, console=False, environment=TrainerEnvironment.from_env(served))
    (reporter,) = [r for r in chosen.reporters if isinstance(r, WandbReporter)]
    assert reporter.base_url == "https://wandb.example.com" and reporter.project == "tickets"
