"""Versioned publishing: never overwrite, manifest last, checksums true (moto S3 and file://)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from kubetune.api.v1alpha1 import S3Spec
from kubetune_trainer.publish import list_versions, publish_run, read_manifest
from kubetune_trainer.storage import ObjectStore, StorageError


def artifacts(root: Path, content: str) -> Path:
    (root / "adapter").mkdir(parents=True)
    (root / "adapter" / "adapter_model.safetensors").write_text(content)
    (root / "reports").mkdir()
    (root / "reports" / "evaluation.json").write_text('{"ok": true}')
    return root


def test_two_runs_make_two_versions_and_the_first_is_untouched(tmp_path: Path, s3_spec: S3Spec, s3_bucket: str) -> None:
    store = ObjectStore(s3_spec)
    output = f"s3://{s3_bucket}/models/tickets/"
    first = publish_run(artifacts(tmp_path / "a", "weights-1"), output, store, {"promoted": True})
    first_bytes = store.read_bytes(f"{first.version_uri}/adapter/adapter_model.safetensors")
    second = publish_run(artifacts(tmp_path / "b", "weights-2"), output, store, {"promoted": False})
    assert first.version != second.version
    assert list_versions(output, store) == sorted([first.version, second.version])
    assert store.read_bytes(f"{first.version_uri}/adapter/adapter_model.safetensors") == first_bytes == b"weights-1"
    manifest = read_manifest(first.version_uri, store)
    assert manifest["promoted"] is True and manifest["version"] == first.version
    for entry in manifest["artifacts"]:
        data = store.read_bytes(f"{first.version_uri}/{entry['path']}")
        assert hashlib.sha256(data).hexdigest() == entry["sha256"] and len(data) == entry["sizeBytes"]
    assert "kubetune" in manifest["code"]


class FailingStore(ObjectStore):
    """Uploads fail after ``allowed`` objects: S3 going away in the middle of a publish."""

    def __init__(self, s3: S3Spec, allowed: int) -> None:
        super().__init__(s3)
        self.allowed = allowed

    def upload(self, path: Path, uri: str, *, if_absent: bool = False) -> str:
        if self.allowed <= 0:
            raise StorageError(f"{uri}: cannot upload: connection reset")
        self.allowed -= 1
        return super().upload(path, uri, if_absent=if_absent)


def test_a_half_uploaded_run_has_no_manifest_and_is_not_listed(tmp_path: Path, s3_spec: S3Spec, s3_bucket: str) -> None:
    output = f"s3://{s3_bucket}/models/x/"
    good = publish_run(artifacts(tmp_path / "a", "w"), output, ObjectStore(s3_spec), {})
    with pytest.raises(StorageError, match="connection reset"):
        publish_run(artifacts(tmp_path / "b", "w2"), output, FailingStore(s3_spec, allowed=1), {})
    store = ObjectStore(s3_spec)
    partial = [u for u in store.list(output) if good.version not in u]
    assert partial, "the failed run left a partial upload"
    assert not any(u.endswith("manifest.json") for u in partial)
    assert list_versions(output, store) == [good.version]


def test_manifest_is_written_last(tmp_path: Path, s3_spec: S3Spec, s3_bucket: str) -> None:
    order: list[str] = []

    class Recording(ObjectStore):
        def upload(self, path: Path, uri: str, *, if_absent: bool = False) -> str:
            order.append(uri)
            return super().upload(path, uri, if_absent=if_absent)

        def write_bytes(self, uri: str, data: bytes, *, if_absent: bool = False) -> None:
            order.append(uri)
            super().write_bytes(uri, data, if_absent=if_absent)

    publish_run(artifacts(tmp_path / "a", "w"), f"s3://{s3_bucket}/m/", Recording(s3_spec), {})
    assert order[-1].endswith("/manifest.json") and len(order) == 3


def test_local_folder_output(tmp_path: Path) -> None:
    output = f"file://{tmp_path}/out/"
    run = publish_run(artifacts(tmp_path / "a", "w"), output, ObjectStore(), {"promoted": True})
    assert (tmp_path / "out" / run.version / "manifest.json").exists()
    assert list_versions(output, ObjectStore()) == [run.version]
