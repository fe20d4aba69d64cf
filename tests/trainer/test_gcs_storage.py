"""``gs://`` through ObjectStore: google-cloud-storage against Cloud Storage on loopback
(tests/gcsdouble.py: the emulator behind service-account OAuth and generation preconditions)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from kubetune.api import contract
from kubetune.api.contract import EXIT_DAMAGED, EXIT_OK
from kubetune_trainer.errors import ConfigurationError
from kubetune_trainer.storage import ObjectStore, StorageError, WriteConflict, sha256_file
from kubetune_trainer.stores.gcs import GcsBucket
from tests.gcsdouble import GcsServer, service_account_key
from tests.trainer.jobs import write_dataset, write_job

MiB = 1024 * 1024


def _store(gcs_server: GcsServer, key: Path | None) -> ObjectStore:
    return ObjectStore(gcs=GcsBucket(endpoint=gcs_server.endpoint, key_file=key))


@pytest.fixture()
def store(tmp_path: Path, gcs_server: GcsServer) -> ObjectStore:
    return _store(gcs_server, gcs_server.write_key(tmp_path / "key.json"))


def test_objects_are_written_read_listed_and_deleted_with_the_jobs_key(
    tmp_path: Path, store: ObjectStore, gcs_bucket: str
) -> None:
    base = f"gs://{gcs_bucket}/runs/job"
    store.write_bytes(f"{base}/a.json", b'{"a": 1}', if_absent=True)
    store.write_bytes(f"{base}/nested/b.txt", b"b")
    assert store.exists(f"{base}/a.json") and not store.exists(f"{base}/missing")
    assert store.read_bytes(f"{base}/a.json") == b'{"a": 1}'
    assert store.list(f"{base}/") == [f"{base}/a.json", f"{base}/nested/b.txt"]
    assert store.digest(f"{base}/nested/b.txt")[1] == 1
    store.download_tree(f"{base}/", tmp_path / "copy")
    assert (tmp_path / "copy" / "nested" / "b.txt").read_bytes() == b"b"
    store.delete_tree(f"{base}/nested/")
    assert store.list(f"{base}/") == [f"{base}/a.json"]
    with pytest.raises(StorageError, match=rf"gs://{gcs_bucket}/runs/job/missing: cannot read"):
        store.read_bytes(f"{base}/missing")


def test_create_only_and_conditional_updates_are_decided_by_the_generation(store: ObjectStore, gcs_bucket: str) -> None:
    uri = f"gs://{gcs_bucket}/channels/prod/pointer.json"
    first = store.replace_if_unchanged(uri, b"1", None)
    with pytest.raises(WriteConflict):
        store.write_bytes(uri, b"again", if_absent=True)
    with pytest.raises(WriteConflict):
        store.replace_if_unchanged(uri, b"from nothing", None)
    data, tag = store.read_tagged(uri)
    assert (data, tag) == (b"1", first)
    second = store.replace_if_unchanged(uri, b"2", tag)
    with pytest.raises(WriteConflict):
        store.replace_if_unchanged(uri, b"stale writer", first)
    assert store.read_tagged(uri) == (b"2", second)


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
    tests/operator/test_gcs_access.py shows it sets them): rows from gs://, a version published to gs://
    with its lineage, then ``kubetune verify`` and ``kubetune versions`` on the gs:// URIs."""
    key = gcs_server.write_key(tmp_path / "key.json")
    pod = {contract.ENV_GCS_ENDPOINT: gcs_server.endpoint, contract.ENV_GCS_KEY_FILE: str(key)}
    store = _store(gcs_server, key)
    data = f"gs://{gcs_bucket}/data/tickets.jsonl"
    store.upload(write_dataset(tmp_path / "rows.jsonl", 48), data, if_absent=True)
    output = f"gs://{gcs_bucket}/models/tickets/"
    job = write_job(tmp_path / "job.yaml", model_dir=tiny_model_dir, data=tmp_path / "unused", output=output)
    manifest = yaml.safe_load(job.read_text())
    manifest["spec"]["dataset"]["sources"] = [{"uri": data}]
    job.write_text(yaml.safe_dump(manifest))

    env = {**os.environ, "OMP_NUM_THREADS": "1", **pod}
    train = [sys.executable, "-m", "kubetune_trainer.cli", "train", "--job", str(job), "--workdir", str(tmp_path / "w")]
    result = subprocess.run(train, capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == EXIT_OK, result.stderr[-3000:]

    (version,) = [uri for uri in store.list(output) if uri.endswith("/manifest.json")]
    version_uri = version.removesuffix("/manifest.json")
    lineage = json.loads(store.read_bytes(version))
    assert lineage["dataset"]["sources"] == [data]
    assert any(a["path"].startswith("adapter/") for a in lineage["artifacts"])

    kubetune = [str(Path(sys.executable).parent / "kubetune")]
    verified = subprocess.run([*kubetune, "verify", version_uri], capture_output=True, text=True, env=env, timeout=120)
    assert verified.returncode == EXIT_OK, verified.stderr
    listed = subprocess.run(
        [*kubetune, "versions", output, "-o", "json"], capture_output=True, text=True, env=env, timeout=120
    )
    assert listed.returncode == EXIT_OK, listed.stderr
    assert version_uri.rsplit("/", 1)[1] in listed.stdout

    store.write_bytes(f"{version_uri}/adapter/extra.py", b"import os")  # a file slipped into the version
    damaged = subprocess.run([*kubetune, "verify", version_uri], capture_output=True, text=True, env=env, timeout=120)
    assert damaged.returncode == EXIT_DAMAGED and "adapter/extra.py: not in the manifest" in damaged.stdout
