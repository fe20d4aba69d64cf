"""``kubetune reproduce VERSION_URI``: a published version's recorded spec run again, its base model and
training data checked against what the version recorded before anything trains."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import yaml

from kubetune.api.contract import EXIT_CONFIG, EXIT_OK
from tests.trainer.jobs import kubetune_process, run_locally, write_dataset, write_job


def reproduce(version: Path, folder: Path, *options: str) -> subprocess.CompletedProcess[str]:
    return kubetune_process("reproduce", f"file://{version}", folder, *options)


def test_a_version_runs_again_from_its_manifest_and_changed_data_is_refused_before_training(
    tmp_path: Path, tiny_model_dir: Path
) -> None:
    data = write_dataset(tmp_path / "data.jsonl", 24)
    job = write_job(tmp_path / "job.yaml", model_dir=tiny_model_dir, data=data, output=f"file://{tmp_path}/out/")
    _, manifest_path = run_locally(job, tmp_path / "first")
    first = json.loads(manifest_path.read_text())
    assert first["spec"]["dataset"]["sources"][0]["uri"] == f"file://{data}", "the lineage records the spec"

    again = reproduce(manifest_path.parent, tmp_path / "again", "-o", "yaml")
    assert again.returncode == EXIT_OK, again.stderr[-3000:]
    (second_path,) = (tmp_path / "again" / "runs").glob("*/v*/manifest.json")
    published = yaml.safe_load(again.stdout)  # stdout is the document alone: the run's tables went to stderr
    assert (published["version"], published["manifestUri"]) == (second_path.parent.name, f"file://{second_path}")
    second = json.loads(second_path.read_text())
    assert second["dataset"]["contentSha256"] == first["dataset"]["contentSha256"]
    assert second["baseModel"]["sha256"] == first["baseModel"]["sha256"]
    assert (
        second["resolved"] == first["resolved"] and second["training"]["globalStep"] == first["training"]["globalStep"]
    )

    data.write_text(data.read_text().replace("ticket", "tlcket", 1))  # one changed character
    changed = reproduce(manifest_path.parent, tmp_path / "changed")
    assert changed.returncode == EXIT_CONFIG
    assert "its training data changed since it was published" in changed.stderr and "Traceback" not in changed.stderr
    assert not list((tmp_path / "changed").glob("runs/*/v*")), "nothing trained, nothing published"
