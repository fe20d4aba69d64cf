"""``kubetune challenge``: the challenger against the channel's champion, on the new data (a win) and on
the champion's own test rows and the general prompts (within a tolerance); the channel moves only on a
win. The rules on scores; then end to end on two versions real ``kubetune run``s published (tiny model).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from kubetune.api.contract import EXIT_CONFIG, EXIT_OK
from kubetune.api.driftmonitor import ChallengeReport, SplitComparison
from kubetune_trainer.challenge import compare_general, compare_split, from_sources, verdict
from kubetune_trainer.cli import main as kubetune
from tests.trainer.jobs import publish_on_channel, write_job

WIN = SplitComparison(examples=40, champion=0.5, challenger=0.8, ci_low=0.1, ci_high=0.45, passed=True)
KEPT = SplitComparison(examples=30, champion=0.9, challenger=0.89, passed=True)
GENERAL = SplitComparison(examples=142, champion=0.41, challenger=0.40, passed=True)


def test_a_win_needs_the_whole_interval_above_zero_and_a_loss_may_reach_the_tolerance() -> None:
    better = compare_split([0.0] * 20 + [1.0] * 20, [1.0] * 40, tolerance=0.02, must_win=True)
    assert better.passed and better.ci_low is not None and better.ci_low > 0
    mixed = compare_split([0.0, 1.0] * 20, [1.0, 0.0] * 20, tolerance=0.02, must_win=True)
    assert not mixed.passed, "as many rows lost as won is no win"
    # Old data: 2 points is the tolerance, exactly; more is a regression.
    assert compare_split([1.0] * 50, [1.0] * 49 + [0.0], tolerance=0.02, must_win=False).passed
    assert not compare_split([1.0] * 50, [1.0] * 48 + [0.0] * 2, tolerance=0.02, must_win=False).passed
    assert compare_split([], [], tolerance=0.02, must_win=False) == SplitComparison(
        examples=0, champion=0.0, challenger=0.0, passed=False
    )


@pytest.mark.parametrize(
    ("new", "old", "general", "promoted", "why"),
    [
        (WIN, KEPT, GENERAL, True, "better on the new data"),
        (WIN.model_copy(update={"passed": False, "ci_low": -0.05}), KEPT, GENERAL, False, "no win on the new data"),
        (WIN, KEPT.model_copy(update={"passed": False}), GENERAL, False, "worse on the champion's test rows"),
        (WIN, KEPT.model_copy(update={"examples": 0}), GENERAL, False, "was dataset.split changed?"),
        (WIN, KEPT, GENERAL.model_copy(update={"passed": False}), False, "known answers on general prompts fell"),
        (WIN, KEPT, None, False, "forgetting not measured"),
        (WIN.model_copy(update={"examples": 0}), KEPT, GENERAL, False, "nothing to win on"),
    ],
)
def test_the_verdict_needs_every_part(
    new: SplitComparison, old: SplitComparison, general: SplitComparison | None, promoted: bool, why: str
) -> None:
    decided, message = verdict(new, old, general)
    assert decided is promoted and why in message


def test_rows_are_old_when_they_come_from_the_champions_sources() -> None:
    assert from_sources("s3://data/old/part-1.jsonl", ["s3://data/old/"])
    assert not from_sources("s3://data/older/part-1.jsonl", ["s3://data/old/"]), "a prefix ends at '/'"
    assert from_sources("file:///d/a.jsonl", ["file:///d/a.jsonl"]) and not from_sources(
        "file:///d/ab.jsonl", ["file:///d/a.jsonl"]
    )


def test_general_prompts_compare_each_versions_own_measurement() -> None:
    def manifest(known: float | None) -> dict[str, object]:
        forgetting = {"knownAnswers": {"tuned": known, "examples": 142}} if known is not None else {"optedOut": True}
        return {"evaluation": {"forgetting": forgetting}}

    assert compare_general(manifest(0.41), manifest(0.40), 0.02) == GENERAL
    held = compare_general(manifest(0.41), manifest(0.30), 0.02)
    assert held is not None and not held.passed
    assert compare_general(manifest(0.41), manifest(None), 0.02) is None


def test_a_challenger_is_compared_with_the_champion_on_both_halves_and_the_channel_moves_only_on_a_win(
    tmp_path: Path, tiny_model_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    champion, old_data = publish_on_channel(tmp_path, tiny_model_dir)
    new_data = tmp_path / "new.jsonl"
    rows = [
        {
            "messages": [
                {"role": "user", "content": f"Ticket {i}: the parcel number {i * 11} never came, where is it?"},
                {"role": "assistant", "content": "shipping"},
            ]
        }
        for i in range(48)
    ]
    new_data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    # The retraining a DriftMonitor makes: the new data, and the champion's data through the same split.
    job = write_job(
        tmp_path / "retrain.yaml",
        model_dir=tiny_model_dir,
        data=new_data,
        output=f"file://{tmp_path}/out/",
        evaluation={"gate": {"metric": "perplexity"}},
    )
    manifest = yaml.safe_load(job.read_text())
    manifest["spec"]["dataset"]["sources"].append({"uri": f"file://{old_data}", "weight": 0.5})
    job.write_text(yaml.safe_dump(manifest))
    capsys.readouterr()  # the champion's run
    code = kubetune(
        [
            "run",
            str(job),
            "--output-dir",
            str(tmp_path / "runs"),
            "--workdir",
            str(tmp_path / "work2"),
            "--max-steps",
            "2",
            "-o",
            "json",
        ]
    )
    assert code == EXIT_OK
    (challenger,) = [v for v in (tmp_path / "runs" / "tiny-job").glob("v*") if v.name != champion.name]
    published = json.loads(capsys.readouterr().out)  # the run's result, the FineTuneJob's status.result form
    assert (published["version"], published["manifestUri"]) == (challenger.name, f"file://{challenger}/manifest.json")
    assert published["promoted"] == json.loads((challenger / "manifest.json").read_text())["promoted"]

    report_file = tmp_path / "termination-log"
    capsys.readouterr()
    arguments = ["challenge", f"file://{challenger}", "--channel", "prod", "--promote", "--report", str(report_file)]
    assert kubetune(arguments) == EXIT_OK
    report = ChallengeReport.model_validate_json(report_file.read_text())
    assert (report.champion, report.challenger) == (champion.name, challenger.name)
    # The champion's test rows are the old half, every one of them; the rest is new.
    champion_prompts = {
        json.loads(line)["prompt"] for line in (champion / "reports" / "predictions.jsonl").read_text().splitlines()
    }
    assert report.old_data.examples == len(champion_prompts) > 0
    challenger_rows = (challenger / "reports" / "predictions.jsonl").read_text().splitlines()
    assert report.new_data.examples == len(challenger_rows) - len(champion_prompts) > 0
    assert report.general is None, "both opted out of forgetting: the general prompts cannot be compared"
    assert not report.promoted, "two training steps on the tiny model win nothing, and forgetting was not measured"
    entries = sorted((tmp_path / "runs" / "tiny-job" / "channels" / "prod").glob("*.json"))
    assert [json.loads(e.read_text())["version"] for e in entries] == [champion.name], "no win, no move"
    assert "does not win" in capsys.readouterr().out
    # One more comparison, as a document (yaml; json's rendering is the same code, checked without a model).
    assert kubetune([*arguments, "-o", "yaml"]) == EXIT_OK
    assert yaml.safe_load(capsys.readouterr().out) == {**report.to_manifest(), "channelMoved": False}

    assert (
        kubetune(["challenge", f"file://{challenger}", "--channel", "staging", "--report", str(report_file)])
        == EXIT_CONFIG
    )
    assert report_file.read_text().startswith("cannot compare: ") and "names no champion" in report_file.read_text()
