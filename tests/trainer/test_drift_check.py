"""``kubetune drift check`` through the command line, against a version published by a real
``kubetune run`` on the tiny model: the same population passes, French requests are drift, and what
cannot be checked says why (exit 2), never a traceback."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from kubetune.api.contract import EXIT_CONFIG, EXIT_OK
from kubetune_trainer.cli import main as kubetune
from kubetune_trainer.drift.command import EXIT_DRIFT
from tests.trainer.jobs import write_dataset, write_job


@pytest.fixture(scope="module")
def published(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> tuple[Path, Path]:
    """(the version's folder, the training data) of one short local run."""
    root = tmp_path_factory.mktemp("drift-check")
    data = write_dataset(root / "data.jsonl", 64)
    job = write_job(root / "job.yaml", model_dir=tiny_model_dir, data=data, output=f"file://{root}/out/")
    manifest = yaml.safe_load(job.read_text())
    manifest["spec"]["output"]["channel"] = "prod"
    manifest["spec"]["evaluation"]["gate"] = {"metric": "perplexity"}
    job.write_text(yaml.safe_dump(manifest))
    code = kubetune(
        ["run", str(job), "--output-dir", str(root / "runs"), "--workdir", str(root / "work"), "--max-steps", "2"]
    )
    assert code == EXIT_OK
    (version,) = (root / "runs" / "tiny-job").glob("v*")
    return version, data


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
