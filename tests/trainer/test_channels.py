"""Promotion channels through the command line a person or a pod uses (``kubetune promote``,
``rollback``, ``channel``), against the suite's S3 (moto, create-only writes honoured) and a local
folder: numbered create-only entries, the highest one current, history kept, nothing overwritten."""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

import boto3
import pytest
import yaml

from kubetune.api.contract import EXIT_CONFIG, EXIT_OK
from kubetune.api.v1alpha1 import S3Spec
from kubetune_trainer.channels import current, history
from kubetune_trainer.cli import main as kubetune
from kubetune_trainer.publish import publish_run
from kubetune_trainer.storage import ObjectStore
from kubetune_trainer.stores.s3 import S3Bucket


def publish(store: ObjectStore, output: str, root: Path, *, promoted: bool = True) -> str:
    """A published version (its URI) as a training run leaves it."""
    (root / "adapter").mkdir(parents=True)
    (root / "adapter" / "adapter_model.safetensors").write_bytes(root.name.encode() * 50)
    return publish_run(root, output, store, {"promoted": promoted, "job": {"name": "tickets"}}).version_uri


@pytest.fixture()
def s3_place(tmp_path: Path, s3_endpoint: str, s3_spec: S3Spec, s3_bucket: str) -> tuple[ObjectStore, str, list[str]]:
    """(store, output prefix, the CLI's S3 arguments)."""
    return ObjectStore(s3_spec), f"s3://{s3_bucket}/models/tickets", ["--endpoint", s3_endpoint]


def test_promote_and_roll_back_move_a_pointer_made_of_create_only_entries(
    tmp_path: Path, s3_place: tuple[ObjectStore, str, list[str]], capsys: pytest.CaptureFixture[str]
) -> None:
    store, output, where = s3_place
    a, b, c, d = (publish(store, output, tmp_path / name) for name in "abcd")
    for version in (a, b, c):
        assert kubetune(["promote", version, "--channel", "prod", *where]) == EXIT_OK
    assert current(store, output, "prod").version_uri == c  # type: ignore[union-attr]
    # Rolling back twice goes back twice (C, then B, are withdrawn), not back and forth.
    assert kubetune(["rollback", output, "--channel", "prod", *where]) == EXIT_OK
    assert current(store, output, "prod").version_uri == b  # type: ignore[union-attr]
    assert kubetune(["rollback", output, "--channel", "prod", *where, "--reason", "B answers in French"]) == EXIT_OK
    assert current(store, output, "prod").version_uri == a  # type: ignore[union-attr]
    assert kubetune(["promote", d, "--channel", "prod", *where]) == EXIT_OK
    assert kubetune(["rollback", output, "--channel", "prod", *where]) == EXIT_OK
    assert current(store, output, "prod").version_uri == a, "withdrawn versions stay withdrawn"  # type: ignore[union-attr]
    assert kubetune(["rollback", output, "--channel", "prod", "--to", c, *where]) == EXIT_CONFIG, "--to takes a name"
    version_c = c.rsplit("/", 1)[1]
    assert kubetune(["rollback", output, "--channel", "prod", "--to", version_c, *where]) == EXIT_OK

    entries = history(store, output, "prod")
    assert [e.sequence for e in entries] == [1, 2, 3, 4, 5, 6, 7, 8]
    assert [e.action for e in entries] == ["promote"] * 3 + ["rollback"] * 2 + ["promote", "rollback", "rollback"]
    assert entries[4].reason == "B answers in French" and entries[4].replaces == b.rsplit("/", 1)[1]
    keys = [o["Key"] for o in _objects(store, output)]
    assert [k.rsplit("/", 1)[1] for k in keys] == [f"{n:06d}.json" for n in range(1, 9)]
    capsys.readouterr()
    assert kubetune(["channel", output, "--channel", "prod", *where, "--json"]) == EXIT_OK
    shown = json.loads(capsys.readouterr().out)
    assert shown[-1]["versionUri"] == c and len(shown) == 8
    # The published versions themselves are untouched: each still verifies.
    for version in (a, b, c, d):
        assert kubetune(["verify", version, *where]) == EXIT_OK


def test_what_a_channel_refuses(
    tmp_path: Path, s3_place: tuple[ObjectStore, str, list[str]], capsys: pytest.CaptureFixture[str]
) -> None:
    store, output, where = s3_place
    missed = publish(store, output, tmp_path / "missed", promoted=False)
    assert kubetune(["promote", missed, "--channel", "prod", *where]) == EXIT_CONFIG
    assert "its quality gate did not promote it" in capsys.readouterr().err
    assert kubetune(["promote", missed, "--channel", "prod", "--force", *where]) == EXIT_OK

    damaged = publish(store, output, tmp_path / "damaged")
    key = damaged.removeprefix(f"s3://{output.split('/')[2]}/") + "/adapter/adapter_model.safetensors"
    _s3(store).put_object(Bucket=output.split("/")[2], Key=key, Body=b"swapped")
    assert kubetune(["promote", damaged, "--channel", "prod", *where]) == EXIT_CONFIG
    assert "differs from its manifest" in capsys.readouterr().err

    for bad in (
        ["promote", f"{output}/not-a-version", "--channel", "prod"],
        ["promote", f"{output}/v20261204-101500-0a1b2c", "--channel", "prod"],  # nothing published
        ["promote", missed, "--channel", "Prod/../x"],
        ["rollback", output, "--channel", "empty"],
    ):
        assert kubetune([*bad, *where]) == EXIT_CONFIG, bad
        err = capsys.readouterr().err
        assert err.startswith("cannot ") and "Traceback" not in err, err
    assert len(history(store, output, "prod")) == 1, "nothing refused was written"

    # An object under the channel that points outside the job's versions is refused, never followed.
    bucket, prefix = output.split("/")[2], output.split("/", 3)[3]
    forged = {
        "sequence": 2,
        "version": "v20261204-101500-0a1b2c",
        "versionUri": "s3://elsewhere/v20261204-101500-0a1b2c",
    }
    forged |= {"manifestSha256": "0" * 64, "action": "promote"}
    _s3(store).put_object(Bucket=bucket, Key=f"{prefix}/channels/prod/000002.json", Body=json.dumps(forged).encode())
    assert kubetune(["channel", output, "--channel", "prod", *where]) == EXIT_CONFIG
    assert "not a channel entry" in capsys.readouterr().err


def test_writers_racing_for_a_channel_each_get_their_own_number(
    tmp_path: Path, s3_place: tuple[ObjectStore, str, list[str]]
) -> None:
    """Four writers promote at once, five times each: twenty entries, numbered 1 to 20, none lost."""
    from kubetune_trainer.channels import promote

    store, output, _ = s3_place
    versions = [publish(store, output, tmp_path / f"v{i}") for i in range(4)]
    errors: list[BaseException] = []

    def writer(version: str) -> None:
        try:
            for _ in range(5):
                promote(ObjectStore(_spec(store)), version, "prod")  # one client per writer, as in separate pods
        except BaseException as err:
            errors.append(err)

    threads = [threading.Thread(target=writer, args=(v,)) for v in versions]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors, errors
    entries = history(store, output, "prod")
    assert [e.sequence for e in entries] == list(range(1, 21))
    assert sorted(e.version_uri for e in entries) == sorted(versions * 5)


def test_a_pod_names_its_place_by_the_mounted_finetunejob(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    store, output = ObjectStore(), f"file://{tmp_path}/out"
    version_uri = publish(store, output, tmp_path / "a")
    job = {
        "apiVersion": "kubetune.dev/v1alpha1",
        "kind": "FineTuneJob",
        "metadata": {"name": "tickets", "namespace": "team-a", "uid": "u-1"},
        "spec": {"dataset": {"sources": [{"uri": "s3://data/x.jsonl"}]}, "output": {"uri": f"{output}/"}},
    }
    (tmp_path / "job.yaml").write_text(yaml.safe_dump(job))
    version = version_uri.rsplit("/", 1)[1]
    in_pod = ["--job", str(tmp_path / "job.yaml"), "--channel", "staging"]
    assert kubetune(["promote", *in_pod, "--version", version]) == EXIT_OK
    assert kubetune(["channel", *in_pod]) == EXIT_OK
    assert f"staging: now {output}/{version}" in capsys.readouterr().out
    assert kubetune(["promote", *in_pod, "--version", "../../etc"]) == EXIT_CONFIG
    assert kubetune(["channel", output, *in_pod]) == EXIT_CONFIG, "a URI and --job are one place too many"
    assert (tmp_path / "out" / "channels" / "staging" / "000001.json").exists()


def _spec(store: ObjectStore) -> S3Spec:
    s3 = store.remote("s3")
    assert isinstance(s3, S3Bucket)
    return s3.spec


def _s3(store: ObjectStore) -> Any:
    spec = _spec(store)
    return boto3.client("s3", endpoint_url=spec.endpoint, region_name=spec.region)


def _objects(store: ObjectStore, output: str) -> list[dict[str, Any]]:
    bucket, prefix = output.split("/")[2], output.split("/", 3)[3]
    listing = _s3(store).list_objects_v2(Bucket=bucket, Prefix=f"{prefix}/channels/prod/")
    return list(listing.get("Contents", []))
