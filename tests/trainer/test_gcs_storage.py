"""``gs://`` through ObjectStore: google-cloud-storage against Cloud Storage on loopback
(tests/gcsdouble.py: the emulator behind service-account OAuth and generation preconditions)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from kubetune.api import contract
from kubetune_trainer.errors import ConfigurationError
from kubetune_trainer.storage import ObjectStore, StorageError, WriteConflict, sha256_file
from kubetune_trainer.stores.gcs import GcsBucket
from tests.gcsdouble import GcsServer, service_account_key
from tests.trainer.remote_round_trip import (
    objects_are_written_read_listed_and_deleted,
    train_publish_and_verify,
    writes_are_create_only_or_conditional,
)

MiB = 1024 * 1024


def _store(gcs_server: GcsServer, key: Path | None) -> ObjectStore:
    return ObjectStore(gcs=GcsBucket(endpoint=gcs_server.endpoint, key_file=key))


@pytest.fixture()
def store(tmp_path: Path, gcs_server: GcsServer) -> ObjectStore:
    return _store(gcs_server, gcs_server.write_key(tmp_path / "key.json"))


def test_objects_are_written_read_listed_and_deleted_with_the_jobs_key(
    tmp_path: Path, store: ObjectStore, gcs_bucket: str
) -> None:
    objects_are_written_read_listed_and_deleted(store, f"gs://{gcs_bucket}/runs/job", tmp_path)


def test_create_only_and_conditional_updates_are_decided_by_the_generation(store: ObjectStore, gcs_bucket: str) -> None:
    writes_are_create_only_or_conditional(store, f"gs://{gcs_bucket}/channels/prod/pointer.json")


def test_a_large_file_goes_resumable_create_only_and_checked(
    tmp_path: Path, gcs_server: GcsServer, store: ObjectStore, gcs_bucket: str
) -> None:
    big = tmp_path / "model.safetensors"
    big.write_bytes(bytes(range(256)) * (9 * MiB // 256) + b"tail")  # over the client's 8 MiB: resumable
    uri = f"gs://{gcs_bucket}/v1/model.safetensors"
    assert store.upload(big, uri, if_absent=True) == sha256_file(big)
    assert store.digest(uri) == (sha256_file(big), big.stat().st_size)
    with pytest.raises(WriteConflict):
        store.upload(big, uri, if_absent=True)

    gcs_server.corrupt_next_upload()
    damaged = f"gs://{gcs_bucket}/v2/model.safetensors"
    with pytest.raises(StorageError, match="CRC32C"):
        store.upload(big, damaged, if_absent=True)
    assert not store.exists(damaged), "an object that arrived damaged is removed, not left for a reader"


def test_a_body_damaged_on_the_way_is_not_stored(gcs_server: GcsServer, store: ObjectStore, gcs_bucket: str) -> None:
    uri = f"gs://{gcs_bucket}/data/rows.jsonl"
    gcs_server.corrupt_next_upload()
    with pytest.raises(StorageError):
        store.write_bytes(uri, b'{"x": 1}\n' * 512, if_absent=True)
    assert not store.exists(uri)


def test_no_key_or_an_untrusted_key_gets_nothing(
    tmp_path: Path, gcs_server: GcsServer, gcs_bucket: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # No key and no Application Default Credentials (no gcloud login, not on Google's metadata server).
    monkeypatch.delenv("GOOGLE_APPLICATION_CREDENTIALS", raising=False)
    monkeypatch.setenv("CLOUDSDK_CONFIG", str(tmp_path / "gcloud"))
    monkeypatch.setenv("NO_GCE_CHECK", "True")
    with pytest.raises(ConfigurationError, match=r"spec\.gcs: no credentials for Cloud Storage"):
        _store(gcs_server, None).read_bytes(f"gs://{gcs_bucket}/x")
    missing = tmp_path / "not-mounted.json"  # the Secret lacks the key: the optional volume has no file
    with pytest.raises(ConfigurationError, match=r"spec\.gcs\.credentialsSecret\.key: the Secret has no such key"):
        _store(gcs_server, missing).read_bytes(f"gs://{gcs_bucket}/x")
    stranger = tmp_path / "stranger.json"  # a well-formed key the server never trusted
    key, _ = service_account_key(gcs_server.httpd.token_uri)
    stranger.write_text(json.dumps(key))
    with pytest.raises(StorageError, match="credentials refused"):
        _store(gcs_server, stranger).read_bytes(f"gs://{gcs_bucket}/x")
    not_json = tmp_path / "not-json"
    not_json.write_text("AKIA...")
    with pytest.raises(ConfigurationError, match=r"spec\.gcs\.credentialsSecret\.key: not a service-account key"):
        _store(gcs_server, not_json).read_bytes(f"gs://{gcs_bucket}/x")


def test_a_job_reads_its_data_from_gs_and_publishes_a_version_there_that_kubetune_verifies(
    tmp_path: Path, tiny_model_dir: Path, gcs_server: GcsServer, gcs_bucket: str
) -> None:
    """The trainer's own command in a pod's environment (the operator's endpoint and mounted key, as
    tests/operator/test_cloud_storage_access.py shows it sets them)."""
    key = gcs_server.write_key(tmp_path / "key.json")
    pod = {contract.ENV_GCS_ENDPOINT: gcs_server.endpoint, contract.ENV_GCS_KEY_FILE: str(key)}
    train_publish_and_verify(tmp_path, tiny_model_dir, _store(gcs_server, key), pod, f"gs://{gcs_bucket}")
