"""``kubetune versions OUTPUT_URI``: what was published under an output prefix, newest first, with each
version's primary metric, gate verdict and the channels naming it; as a table, JSON or YAML."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from kubetune.api.contract import EXIT_OK
from kubetune.api.v1alpha1 import S3Spec
from kubetune_trainer.channels import promote
from kubetune_trainer.cli import main as kubetune
from kubetune_trainer.publish import publish_run
from kubetune_trainer.storage import ObjectStore


def manifest(tuned: float, promoted: bool) -> dict[str, object]:
    return {
        "job": {"name": "tickets", "namespace": "ml"},
        "promoted": promoted,
        "evaluation": {
            "primaryMetric": "accuracy",
            "metrics": [
                {"name": "perplexity", "base": 9.0, "tuned": 4.0},
                {"name": "accuracy", "base": 0.1, "tuned": tuned},
            ],
        },
    }


def test_versions_are_listed_newest_first_with_their_metric_and_channels(
    tmp_path: Path, s3_endpoint: str, s3_spec: S3Spec, s3_bucket: str, capsys: pytest.CaptureFixture[str]
) -> None:
    store = ObjectStore(s3_spec)
    output = f"s3://{s3_bucket}/tickets"
    command = ["versions", output, "--endpoint", s3_endpoint]
    assert kubetune(command) == EXIT_OK
    assert "no version published yet" in capsys.readouterr().err
    published = []
    for number, (tuned, promoted) in enumerate(((0.5, True), (0.3, False), (0.8, True))):
        root = tmp_path / str(number)
        (root / "adapter").mkdir(parents=True)
        (root / "adapter" / "adapter_model.safetensors").write_bytes(b"x" * (number + 1))
        published.append(publish_run(root, output + "/", store, manifest(tuned, promoted)).version)
    promote(store, f"{output}/{published[0]}", "prod")
    promote(store, f"{output}/{published[2]}", "staging")
    (tmp_path / "incomplete").mkdir()
    store.write_bytes(f"{output}/v20991231-235959-abcdef/adapter/x.bin", b"no manifest: not a version")

    assert kubetune([*command, "-o", "json"]) == EXIT_OK
    rows = json.loads(capsys.readouterr().out)
    # a version's name starts with its publishing time (to the second), so by name is newest first
    assert [row["version"] for row in rows] == sorted(published, reverse=True)
    by_version = {row["version"]: row for row in rows}
    last = by_version[published[2]]
    assert (last["promoted"], last["metric"], last["base"], last["tuned"]) == (True, "accuracy", 0.1, 0.8)
    assert {row["version"]: row["channels"] for row in rows} == {
        published[0]: ["prod"],
        published[1]: [],
        published[2]: ["staging"],
    }
    assert last["job"] == "ml/tickets" and by_version[published[1]]["promoted"] is False

    assert kubetune([*command, "-o", "yaml"]) == EXIT_OK
    assert yaml.safe_load(capsys.readouterr().out) == rows
    assert kubetune(command) == EXIT_OK
    table = capsys.readouterr().out.splitlines()
    assert table[0].split() == ["VERSION", "PUBLISHED", "PROMOTED", "METRIC", "BASE", "TUNED", "CHANNELS"]
    cells = {line.split()[0]: line.split()[2:] for line in table[1:]}
    assert cells[published[2]] == ["yes", "accuracy", "0.100", "0.800", "staging"]
    assert cells[published[1]] == ["no", "accuracy", "0.100", "0.300", "-"]
    assert [line.split()[0] for line in table[1:]] == [row["version"] for row in rows]
