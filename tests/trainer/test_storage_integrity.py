"""Storage integrity: what is read back from tenant-writable storage cannot steer the trainer, and
what is published arrives whole, once, and can be re-checked (``kubetune verify``).

All against the suite's S3 (moto on loopback behind a layer refusing bodies that do not match
their SHA-256, as S3 does: tests/s3double.py) through the production ObjectStore.
"""

from __future__ import annotations

import base64
import hashlib
import json
from pathlib import Path

import boto3
import pytest
from botocore.exceptions import ClientError

from kubetune.api.contract import EXIT_CONFIG, EXIT_DAMAGED, EXIT_OK
from kubetune.api.v1alpha1 import S3Spec
from kubetune_trainer.cli import main as kubetune
from kubetune_trainer.errors import ConfigurationError
from kubetune_trainer.models.loading import ModelSourceError, resolve_model_dir
from kubetune_trainer.publish import list_versions, publish_run
from kubetune_trainer.storage import ObjectStore, StorageError, sha256_file
from kubetune_trainer.stores.s3 import S3Bucket
from kubetune_trainer.training.checkpoints import CheckpointStore
from tests.s3double import S3Server

MiB = 1024 * 1024


def client(endpoint: str):  # type: ignore[no-untyped-def]
    return boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")


def artifacts(root: Path) -> Path:
    (root / "adapter").mkdir(parents=True)
    (root / "adapter" / "adapter_model.safetensors").write_bytes(b"weights" * 100)
    (root / "reports").mkdir()
    (root / "reports" / "evaluation.json").write_text('{"ok": true}')
    return root


# ------------------------------------------------------------------ the test double itself
def test_the_suite_s3_refuses_a_body_that_does_not_match_its_checksum(s3_endpoint: str, s3_bucket: str) -> None:
    s3 = client(s3_endpoint)
    wrong = base64.b64encode(hashlib.sha256(b"other").digest()).decode()
    with pytest.raises(ClientError, match="BadDigest"):
        s3.put_object(Bucket=s3_bucket, Key="k", Body=b"hello", ChecksumSHA256=wrong)
    right = base64.b64encode(hashlib.sha256(b"hello").digest()).decode()
    s3.put_object(Bucket=s3_bucket, Key="k", Body=b"hello", ChecksumSHA256=right)
    with pytest.raises(ClientError, match="PreconditionFailed"):  # moto keeps create-only writes
        s3.put_object(Bucket=s3_bucket, Key="k", Body=b"again", IfNoneMatch="*")
    assert s3.get_object(Bucket=s3_bucket, Key="k")["Body"].read() == b"hello"


# ------------------------------------------------------------------ writes
def test_a_publish_damaged_on_the_way_is_refused_by_the_server_and_leaves_no_version(
    tmp_path: Path, s3_server: S3Server, s3_spec: S3Spec, s3_bucket: str
) -> None:
    store = ObjectStore(s3_spec)
    output = f"s3://{s3_bucket}/models/tickets/"
    refused = s3_server.verifier.refused_digests
    s3_server.verifier.corrupt_next_upload()
    with pytest.raises(StorageError, match="BadDigest"):
        publish_run(artifacts(tmp_path / "a"), output, store, {"promoted": True})
    assert s3_server.verifier.refused_digests == refused + 1
    assert list_versions(output, store) == []  # no manifest: not a version anyone reads


def test_large_files_go_in_parts_each_checked_and_create_only(
    tmp_path: Path, s3_server: S3Server, s3_spec: S3Spec, s3_bucket: str
) -> None:
    store = ObjectStore(s3_spec)
    s3 = store.remote("s3")
    assert isinstance(s3, S3Bucket)
    s3.multipart_threshold = s3.part_size = 5 * MiB  # S3's smallest part
    big = tmp_path / "model.safetensors"
    big.write_bytes(bytes(range(256)) * (11 * MiB // 256) + b"tail")  # three parts
    uri = f"s3://{s3_bucket}/v1/model.safetensors"

    assert store.upload(big, uri, if_absent=True) == sha256_file(big)
    assert store.read_bytes(uri) == big.read_bytes()

    other = tmp_path / "other.safetensors"
    other.write_bytes(b"x" * (6 * MiB))
    with pytest.raises(StorageError, match="PreconditionFailed"):
        store.upload(other, uri, if_absent=True)
    s3_server.verifier.corrupt_next_upload()
    with pytest.raises(StorageError, match=r"part \d.*BadDigest"):
        store.upload(other, f"s3://{s3_bucket}/v2/model.safetensors")
    assert store.read_bytes(uri) == big.read_bytes()  # the published object is untouched
    assert not store.exists(f"s3://{s3_bucket}/v2/model.safetensors")
    uploads = client(s3_server.endpoint).list_multipart_uploads(Bucket=s3_bucket)
    assert uploads.get("Uploads", []) == []  # the failed upload was aborted, not left to bill


def test_local_publishing_is_create_only_too(tmp_path: Path) -> None:
    store = ObjectStore()
    target = tmp_path / "out" / "v1" / "manifest.json"
    store.write_bytes(f"file://{target}", b"first", if_absent=True)
    with pytest.raises(StorageError, match="already exists"):
        store.write_bytes(f"file://{target}", b"second", if_absent=True)
    source = tmp_path / "w.bin"
    source.write_bytes(b"second")
    with pytest.raises(StorageError, match="already exists"):
        store.upload(source, f"file://{target}", if_absent=True)
    assert target.read_bytes() == b"first"
    assert sorted(p.name for p in target.parent.iterdir()) == ["manifest.json"]  # no .partial left


# ------------------------------------------------------------------ reads
@pytest.mark.parametrize(
    ("key", "problem"),
    [
        ("../../../etc/cron.d/evil", "'..' segment"),
        ("weights//config.json", "an empty segment"),
        ("./config.json", "'\\.' segment"),
        ("sub\\..\\..\\evil", "backslash"),
    ],
)
def test_a_model_prefix_with_a_key_escaping_the_download_folder_downloads_nothing(
    tmp_path: Path, s3_endpoint: str, s3_spec: S3Spec, s3_bucket: str, key: str, problem: str
) -> None:
    s3 = client(s3_endpoint)
    s3.put_object(Bucket=s3_bucket, Key="models/m/config.json", Body=b"{}")
    s3.put_object(Bucket=s3_bucket, Key=f"models/m/{key}", Body=b"planted")
    dest = tmp_path / "cache" / "model"
    with pytest.raises(ConfigurationError, match=problem) as refused:
        ObjectStore(s3_spec).download_tree(f"s3://{s3_bucket}/models/m", dest)
    assert repr(key) in str(refused.value)
    assert not dest.exists()  # every key is checked before the first byte is written
    assert not list(tmp_path.rglob("evil*"))


def test_a_hostile_base_model_fails_the_job_at_its_field(
    tmp_path: Path, s3_endpoint: str, s3_spec: S3Spec, s3_bucket: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KUBETUNE_CACHE", str(tmp_path / "cache"))
    client(s3_endpoint).put_object(Bucket=s3_bucket, Key="models/m/../escape.json", Body=b"planted")
    with pytest.raises(ModelSourceError, match=r"^spec\.baseModel\.uri: .*'\.\.' segment"):
        resolve_model_dir(f"s3://{s3_bucket}/models/m", ObjectStore(s3_spec))


def test_folder_markers_are_skipped_and_files_land_under_their_relative_paths(
    tmp_path: Path, s3_endpoint: str, s3_spec: S3Spec, s3_bucket: str
) -> None:
    s3 = client(s3_endpoint)
    s3.put_object(Bucket=s3_bucket, Key="models/m/", Body=b"")  # what a console's "create folder" writes
    s3.put_object(Bucket=s3_bucket, Key="models/m/tokenizer/", Body=b"")
    s3.put_object(Bucket=s3_bucket, Key="models/m/tokenizer/vocab.json", Body=b"{}")
    dest = ObjectStore(s3_spec).download_tree(f"s3://{s3_bucket}/models/m/", tmp_path / "m")
    assert sorted(p.relative_to(dest).as_posix() for p in dest.rglob("*")) == ["tokenizer", "tokenizer/vocab.json"]


@pytest.mark.parametrize(
    ("pointer", "problem"),
    [
        ({"step": 40, "uri": "s3://{bucket}/other-team/job/checkpoints/checkpoint-40"}, "not at this job's"),
        ({"step": 40, "uri": "s3://{bucket}/team/job/checkpoints/checkpoint-40/../../../x"}, "not at this job's"),
        ({"step": 40, "uri": "s3://{bucket}/team/job/checkpoints/checkpoint-41"}, "not at this job's"),
        ({"step": "40", "uri": "s3://{bucket}/team/job/checkpoints/checkpoint-40"}, "not a step number"),
        ({"uri": "s3://{bucket}/team/job/checkpoints/checkpoint-40"}, "not a checkpoint pointer"),
        ("not json", "not a checkpoint pointer"),
    ],
)
def test_a_checkpoint_pointer_must_name_this_jobs_own_checkpoint(
    tmp_path: Path, s3_spec: S3Spec, s3_bucket: str, pointer: object, problem: str
) -> None:
    store = ObjectStore(s3_spec)
    checkpoints = CheckpointStore(store, f"s3://{s3_bucket}/team/job/checkpoints/")
    saved = tmp_path / "checkpoint-40"
    saved.mkdir()
    (saved / "trainer_state.json").write_text("{}")
    checkpoints.upload(saved, 40)
    assert checkpoints.latest() == (40, f"s3://{s3_bucket}/team/job/checkpoints/checkpoint-40")

    text = pointer if isinstance(pointer, str) else json.dumps(pointer).replace("{bucket}", s3_bucket)
    store.write_bytes(f"s3://{s3_bucket}/team/job/checkpoints/latest.json", text.encode())
    with pytest.raises(ConfigurationError, match=problem):
        checkpoints.download_latest(tmp_path / "resume")
    assert not (tmp_path / "resume").exists()


@pytest.mark.parametrize("scheme", ["s3", "file"])
def test_a_second_writer_of_the_same_job_cannot_move_the_checkpoint_pointer(
    tmp_path: Path, s3_spec: S3Spec, s3_bucket: str, scheme: str
) -> None:
    """An old pod still terminating beside its replacement: both read no pointer, the first to save
    moves it, the other's move is refused (a conditional update) and the pointer keeps the first's."""
    prefix = f"s3://{s3_bucket}/team/job/checkpoints" if scheme == "s3" else f"file://{tmp_path}/checkpoints"
    store = ObjectStore(s3_spec)
    old_pod, new_pod = CheckpointStore(store, prefix), CheckpointStore(store, prefix)
    assert old_pod.latest() is None and new_pod.latest() is None
    saved = tmp_path / "saved"
    saved.mkdir()
    (saved / "trainer_state.json").write_text("{}")
    new_pod.upload(saved, 10)
    with pytest.raises(StorageError, match=r"PreconditionFailed|changed since it was read"):
        old_pod.upload(saved, 20)
    assert new_pod.latest() == (10, f"{prefix}/checkpoint-10")
    new_pod.upload(saved, 30)  # the writer that moved it last keeps moving it
    resumed = CheckpointStore(store, prefix)
    assert resumed.latest() == (30, f"{prefix}/checkpoint-30")
    resumed.upload(saved, 40)  # a resumed job moves it from the version it read
    assert CheckpointStore(store, prefix).latest() == (40, f"{prefix}/checkpoint-40")


@pytest.mark.parametrize("scheme", ["s3", "file"])
def test_discarding_a_jobs_checkpoints_deletes_them_and_the_pointer_and_nothing_else(
    tmp_path: Path, s3_spec: S3Spec, s3_bucket: str, scheme: str
) -> None:
    """A private run's checkpoints, once it is published: the checkpoint URI is the manifest's to set, so
    what else lies under it (another job's files, a folder that merely starts alike) stays."""
    prefix = f"s3://{s3_bucket}/team/job/checkpoints" if scheme == "s3" else f"file://{tmp_path}/checkpoints"
    store = ObjectStore(s3_spec)
    checkpoints = CheckpointStore(store, prefix)
    saved = tmp_path / "saved"
    (saved / "sub").mkdir(parents=True)
    (saved / "sub" / "state.pt").write_bytes(b"state")
    for step in (2, 4):
        checkpoints.upload(saved, step)
    kept = [f"{prefix}/notes.txt", f"{prefix}/checkpoint-old/x", f"{prefix}-other/checkpoint-2/x"]
    for uri in kept:
        store.write_bytes(uri, b"not a checkpoint")
    assert checkpoints.discard() == 2
    assert CheckpointStore(store, prefix).latest() is None
    assert all(store.exists(uri) for uri in kept)
    left = sorted(store.list(prefix + "/"))
    assert left == sorted(uri for uri in kept if uri.startswith(prefix + "/")), "only checkpoints and the pointer go"
    assert checkpoints.discard() == 0, "nothing left to discard is not an error"


def test_a_private_run_whose_checkpoints_cannot_be_deleted_still_ends_well_and_says_where_they_are(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Failing the run there would have the Job retry it: no pointer, fresh noise, a second release from
    the same data. The checkpoints left behind are named instead (an endpoint nothing listens on)."""
    from kubetune_trainer.steps import discard_private_checkpoints

    unreachable = ObjectStore(S3Spec(endpoint="http://127.0.0.1:9", region="us-east-1"))
    with pytest.raises(StorageError):  # the store really fails: the step below must absorb it
        CheckpointStore(unreachable, "s3://bucket/job/checkpoints").discard()
    discard_private_checkpoints(unreachable, "s3://bucket/job/checkpoints")
    assert "s3://bucket/job/checkpoints were not all deleted" in caplog.text and "by hand" in caplog.text


# ------------------------------------------------------------------ kubetune verify
def test_kubetune_verify_finds_every_change_to_a_published_version(
    tmp_path: Path, s3_endpoint: str, s3_spec: S3Spec, s3_bucket: str, capsys: pytest.CaptureFixture[str]
) -> None:
    published = publish_run(artifacts(tmp_path / "a"), f"s3://{s3_bucket}/out/job/", ObjectStore(s3_spec), {})
    verify = ["verify", published.version_uri, "--endpoint", s3_endpoint]
    assert kubetune(verify) == EXIT_OK
    out = capsys.readouterr().out
    assert out.count("ok ") == 2 and "adapter/adapter_model.safetensors" in out

    s3 = client(s3_endpoint)
    prefix = published.version_uri.removeprefix(f"s3://{s3_bucket}/")
    s3.put_object(Bucket=s3_bucket, Key=f"{prefix}/adapter/adapter_model.safetensors", Body=b"swapped weights")
    s3.delete_object(Bucket=s3_bucket, Key=f"{prefix}/reports/evaluation.json")
    s3.put_object(Bucket=s3_bucket, Key=f"{prefix}/adapter/extra.py", Body=b"import os")
    assert kubetune(verify) == EXIT_DAMAGED
    damaged = [line for line in capsys.readouterr().out.splitlines() if line.startswith("DAMAGED")]
    assert len(damaged) == 3
    assert any("adapter_model.safetensors: sha256" in line and "15 bytes" in line for line in damaged)
    assert any("reports/evaluation.json: missing" in line for line in damaged)
    assert any("adapter/extra.py: not in the manifest" in line for line in damaged)


def test_kubetune_verify_says_why_it_cannot_check(
    s3_endpoint: str, s3_bucket: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert kubetune(["verify", f"s3://{s3_bucket}/out/job/v1", "--endpoint", s3_endpoint]) == EXIT_CONFIG
    assert "cannot verify" in capsys.readouterr().err
    assert kubetune(["verify", "s3://bucket/v1", "--endpoint", "http://user:pw@host"]) == EXIT_CONFIG
    err = capsys.readouterr().err
    assert "cannot verify" in err and "Traceback" not in err
