"""``kubetune drift check`` through the command line, against a version published by a real
``kubetune run`` on the tiny model: the same population passes, French requests are drift, and what
cannot be checked says why (exit 2), never a traceback."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from kubetune.api.contract import EXIT_CONFIG, EXIT_OK, TERMINATION_MESSAGE_LIMIT
from kubetune.api.driftmonitor import DriftCheckReport
from kubetune_trainer.cli import main as kubetune
from kubetune_trainer.drift.command import EXIT_DRIFT
from tests.trainer.jobs import publish_on_channel


@pytest.fixture(scope="module")
def published(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> tuple[Path, Path]:
    """(the version's folder, the training data) of one short local run."""
    return publish_on_channel(tmp_path_factory.mktemp("drift-check"), tiny_model_dir)


def test_a_local_run_its_gate_promotes_joins_its_channel(published: tuple[Path, Path]) -> None:
    version, _ = published
    assert json.loads((version / "manifest.json").read_text())["promoted"] is True, "the tiny run passes its gate"
    (entry,) = (version.parent / "channels" / "prod").glob("*.json")
    assert json.loads(entry.read_text())["version"] == version.name


def requests(path: Path, prompts: list[str], labels: list[str] | None = None) -> str:
    rows = [{"messages": [{"role": "user", "content": p}]} for p in prompts]
    for row, label in zip(rows, labels or [], strict=False):
        row["label"] = label  # type: ignore[assignment]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return f"file://{path}"


def test_requests_like_the_training_data_pass_and_french_ones_are_drift(
    published: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    version, data = published
    reference = ["drift", "check", "--reference", f"file://{version}", "--permutations", "199", "--json"]
    training_prompts = [json.loads(line)["messages"][0]["content"] for line in data.read_text().splitlines()]
    capsys.readouterr()
    assert kubetune([*reference, "--samples", requests(tmp_path / "same.jsonl", training_prompts)]) == EXIT_OK
    same = json.loads(capsys.readouterr().out)
    assert same["drifted"] is False and same["requests"] == 64
    as_yaml = [*reference[:-1], "-o", "yaml", "--samples", requests(tmp_path / "same.jsonl", training_prompts)]
    assert kubetune(as_yaml) == EXIT_OK
    assert yaml.safe_load(capsys.readouterr().out) == same, "-o yaml: the same document (the --json alias is -o json)"
    assert {m["method"] for m in same["methods"]} == {"embeddings.mmd", "lengths.ks", "labels.chi2", "loss.mean"} - {
        "labels.chi2"
    }

    french = [f"Bonjour, ma commande {i} n'est toujours pas arrivée, pouvez-vous m'aider ?" for i in range(64)]
    labels = ["shipping"] * 64
    assert kubetune([*reference, "--samples", requests(tmp_path / "fr.jsonl", french, labels)]) == EXIT_DRIFT
    moved = json.loads(capsys.readouterr().out)
    assert moved["drifted"] is True and moved["labelled"] == 64
    by_method = {m["method"]: m for m in moved["methods"]}
    assert by_method["embeddings.mmd"]["adjustedPValue"] < 0.05, moved["explanation"]
    assert "labels.chi2" in by_method, "confirmed labels are compared with the training answers"


def test_what_cannot_be_checked_says_why(
    published: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    version, _ = published
    (tmp_path / "junk.jsonl").write_text('{"nothing": 1}\n{"messages": "no"}\n')
    bad = [
        (["--reference", f"file://{version}", "--samples", f"file://{tmp_path}/junk.jsonl"], "none a request"),
        (["--reference", f"file://{version}", "--samples", f"file://{tmp_path}/none/"], "no request logs"),
        (
            ["--reference", f"file://{tmp_path}/v20261204-101500-0a1b2c", "--samples", f"file://{tmp_path}"],
            "cannot read",
        ),
        (["--reference", f"file://{version}", "--samples", f"file://{tmp_path}", "--alpha", "2"], "--alpha in (0, 1)"),
    ]
    for arguments, expected in bad:
        assert kubetune(["drift", "check", *arguments]) == EXIT_CONFIG, arguments
        err = capsys.readouterr().err
        assert err.startswith("cannot check: ") and expected in err and "Traceback" not in err, err


def test_a_check_job_checks_the_channels_version_and_reports_for_the_operator(
    published: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """What a DriftMonitor's check Job runs: the channel's current version, the decision written as a
    DriftCheckReport (the pod's termination message), exit 0 for drift too; a channel that names no
    version is a reason written there, exit 2."""
    version, _ = published
    output = f"file://{version.parent}/"
    report = tmp_path / "termination-log"
    french = [f"Bonjour, ma commande {i} n'est toujours pas arrivée, pouvez-vous m'aider ?" for i in range(64)]
    samples = requests(tmp_path / "fr.jsonl", french, ["shipping"] * 64)
    arguments = ["drift", "check", "--reference", output, "--samples", samples, "--permutations", "199"]
    assert kubetune([*arguments, "--channel", "prod", "--report", str(report)]) == EXIT_OK
    written = report.read_text()
    assert "\n" not in written and len(written.encode()) <= TERMINATION_MESSAGE_LIMIT
    parsed = DriftCheckReport.model_validate_json(written)
    assert parsed.version == version.name and parsed.drifted and parsed.sample_size == 64 and parsed.labelled == 64
    assert min(m.adjusted_p_value for m in parsed.methods) < 0.05
    assert parsed.newest == samples and parsed.training_sources and parsed.training_sources[0].endswith("data.jsonl")

    # Only the methods asked for; only files after the last one a check read.
    assert kubetune([*arguments, "--channel", "prod", "--report", str(report), "--methods", "lengths"]) == EXIT_OK
    assert {m.method for m in DriftCheckReport.model_validate_json(report.read_text()).methods} == {"lengths.ks"}
    assert kubetune([*arguments, "--channel", "prod", "--report", str(report), "--after", samples]) == EXIT_CONFIG
    assert "no request logs newer than" in report.read_text()

    assert kubetune([*arguments, "--channel", "staging", "--report", str(report)]) == EXIT_CONFIG
    assert report.read_text().startswith("cannot check: ") and "names no version" in report.read_text()
    assert "Traceback" not in capsys.readouterr().err
