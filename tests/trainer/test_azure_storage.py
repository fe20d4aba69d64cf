"""``az://`` through ObjectStore: azure-storage-blob against Azurite on loopback (tests/azurite.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from kubetune.api import contract
from kubetune_trainer.errors import ConfigurationError
from kubetune_trainer.storage import ObjectStore, StorageError, WriteConflict, sha256_file
from kubetune_trainer.stores.azure import AzureBucket
from tests.azurite import ACCOUNT_KEY, AzuriteServer
from tests.trainer.remote_round_trip import (
    objects_are_written_read_listed_and_deleted,
    train_publish_and_verify,
    writes_are_create_only_or_conditional,
)

MiB = 1024 * 1024


def _store(azurite: AzuriteServer, key: Path | None) -> ObjectStore:
    return ObjectStore(azure=AzureBucket(endpoint=azurite.endpoint, key_file=key))


@pytest.fixture()
def store(tmp_path: Path, azurite: AzuriteServer) -> ObjectStore:
    key = tmp_path / "account-key"
    key.write_text(ACCOUNT_KEY + "\n")  # as the operator mounts the Secret's key
    return _store(azurite, key)


def test_objects_are_written_read_listed_and_deleted_with_the_account_key(
    tmp_path: Path, store: ObjectStore, azure_container: str
) -> None:
    objects_are_written_read_listed_and_deleted(store, f"{azure_container}/runs/job", tmp_path)


def test_create_only_and_conditional_updates_are_decided_by_the_etag(store: ObjectStore, azure_container: str) -> None:
    writes_are_create_only_or_conditional(store, f"{azure_container}/channels/prod/pointer.json")


def test_a_large_file_goes_in_blocks_create_only(tmp_path: Path, store: ObjectStore, azure_container: str) -> None:
    big = tmp_path / "model.safetensors"
    big.write_bytes(bytes(range(256)) * (17 * MiB // 256) + b"tail")  # over 8 MiB: three blocks
    uri = f"{azure_container}/v1/model.safetensors"
    assert store.upload(big, uri, if_absent=True) == sha256_file(big)
    assert store.digest(uri) == (sha256_file(big), big.stat().st_size)
    with pytest.raises(WriteConflict):
        store.upload(big, uri, if_absent=True)


def test_a_wrong_or_missing_key_gets_nothing(tmp_path: Path, azurite: AzuriteServer, azure_container: str) -> None:
    wrong = tmp_path / "wrong-key"
    wrong.write_text("A" * 88)
    with pytest.raises(StorageError, match="cannot read: Server failed to authenticate the request"):
        _store(azurite, wrong).read_bytes(f"{azure_container}/x")
    with pytest.raises(ConfigurationError, match=r"spec\.azure\.credentialsSecret\.key: the Secret has no such key"):
        _store(azurite, tmp_path / "not-mounted").read_bytes(f"{azure_container}/x")
    # A URI's account is a name, never a host: nothing is sent anywhere for one that is not a name.
    with pytest.raises(StorageError, match="a storage account name is 3 to 24 lower-case letters and digits"):
        _store(azurite, None).read_bytes("az://evil.example:80@x/container/key")
    with pytest.raises(StorageError, match="needs a storage account and a container"):
        ObjectStore().read_bytes("az://mlstore")


def test_a_job_reads_its_data_from_az_and_publishes_a_version_there_that_kubetune_verifies(
    tmp_path: Path, tiny_model_dir: Path, azurite: AzuriteServer, azure_container: str
) -> None:
    """The trainer's own command in a pod's environment (the operator's endpoint template and mounted
    account key, as tests/operator/test_cloud_storage_access.py shows it sets them)."""
    key = tmp_path / "account-key"
    key.write_text(ACCOUNT_KEY)
    pod = {contract.ENV_AZURE_ENDPOINT: azurite.endpoint, contract.ENV_AZURE_KEY_FILE: str(key)}
    train_publish_and_verify(tmp_path, tiny_model_dir, _store(azurite, key), pod, azure_container)
