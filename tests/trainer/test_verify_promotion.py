"""``kubetune verify --job FILE --version V --claimed-gate JSON``: the operator's verification Job.
The version must be intact, written by this FineTuneJob, promoted, and record exactly the gate checks
the trainer reported; the pod says why not in its termination message (one line), never a traceback."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from kubetune.api.contract import ENV_TERMINATION_LOG, EXIT_CONFIG, EXIT_DAMAGED, EXIT_OK
from kubetune_trainer.cli import main as kubetune
from kubetune_trainer.publish import publish_run
from kubetune_trainer.storage import ObjectStore

UID = "5f0c-uid"
CHECKS = {"task": True, "forgetting.knownAnswers": True, "labelCollapse": None}


def job_file(tmp_path: Path, uid: str = UID) -> Path:
    path = tmp_path / "job.yaml"
    document = {
        "apiVersion": "kubetune.dev/v1alpha1",
        "kind": "FineTuneJob",
        "metadata": {"name": "tickets", "namespace": "team-a", "uid": uid},
        "spec": {"dataset": {"sources": [{"uri": "s3://data/x.jsonl"}]}, "output": {"uri": f"file://{tmp_path}/out/"}},
    }
    path.write_text(yaml.safe_dump(document))
    return path


def publish(tmp_path: Path, *, uid: str = UID, promoted: bool = True, checks: dict[str, Any] = CHECKS) -> str:
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "adapter.safetensors").write_bytes(b"w" * 64)
    manifest = {
        "job": {"name": "tickets", "uid": uid},
        "promoted": promoted,
        "evaluation": {"gate": {"checks": [{"name": k, "passed": v, "detail": ""} for k, v in checks.items()]}},
    }
    return publish_run(tmp_path / "a", f"file://{tmp_path}/out/", ObjectStore(), manifest).version


@pytest.fixture()
def said(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The pod's termination message file."""
    path = tmp_path / "termination-log"
    monkeypatch.setenv(ENV_TERMINATION_LOG, str(path))
    return path


def verify(tmp_path: Path, version: str, claimed: dict[str, Any] = CHECKS) -> int:
    command = ["verify", "--job", str(tmp_path / "job.yaml"), "--version", version]
    return kubetune([*command, "--claimed-gate", json.dumps(claimed)])


def test_a_version_that_backs_the_report_passes(tmp_path: Path, said: Path) -> None:
    job_file(tmp_path)
    assert verify(tmp_path, publish(tmp_path)) == EXIT_OK
    assert not said.exists()


@pytest.mark.parametrize(
    ("published", "claimed", "expected"),
    [
        ({"promoted": False}, CHECKS, "the manifest says promoted: false"),
        ({"uid": "other-uid"}, CHECKS, "written by FineTuneJob uid 'other-uid', not this one (5f0c-uid)"),
        ({}, {**CHECKS, "task": False}, "gate check 'task': reported passed=false, the manifest says passed=true"),
        ({}, {"task": True}, "the manifest's gate check 'forgetting.knownAnswers' was not reported"),
        ({}, {**CHECKS, "extra": True}, "gate check 'extra' was reported but the manifest has no such check"),
        ({"checks": {**CHECKS, "task": False}}, {**CHECKS, "task": False}, "gate checks task did not pass"),
    ],
    ids=["not-promoted", "another-job", "verdict-differs", "check-unreported", "check-invented", "check-failed"],
)
def test_a_manifest_that_disagrees_with_the_report_fails_and_says_where(
    tmp_path: Path,
    said: Path,
    capsys: pytest.CaptureFixture[str],
    published: dict[str, Any],
    claimed: dict[str, Any],
    expected: str,
) -> None:
    job_file(tmp_path)
    assert verify(tmp_path, publish(tmp_path, **published), claimed) == EXIT_DAMAGED
    message = said.read_text()
    assert message.startswith("PromotionNotVerified: file://") and expected in message, message
    assert "\n" not in message
    assert expected in capsys.readouterr().out


def test_what_cannot_be_checked_exits_2_saying_why(
    tmp_path: Path, said: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    job_file(tmp_path)
    assert verify(tmp_path, "v20261204-101500-0a1b2c") == EXIT_CONFIG  # nothing published under it
    assert said.read_text().startswith("PromotionNotVerified: could not verify: ")
    for bad in (
        ["--version", "../../elsewhere", "--claimed-gate", "{}"],
        ["--version", "v20261204-101500-0a1b2c", "--claimed-gate", "[1]"],
        ["--version", "v20261204-101500-0a1b2c", "--claimed-gate", "{not json"],
        ["--version", "v20261204-101500-0a1b2c", "--endpoint", "http://s3.example"],
    ):
        assert kubetune(["verify", "--job", str(tmp_path / "job.yaml"), *bad]) == EXIT_CONFIG, bad
        err = capsys.readouterr().err
        assert "cannot verify" in err and "Traceback" not in err
    assert kubetune(["verify"]) == EXIT_CONFIG
    assert "name a URI, or --job" in capsys.readouterr().err
