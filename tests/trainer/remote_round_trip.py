"""What every remote store must do through ObjectStore, shared by each scheme's storage tests: objects
written, read, listed and deleted; create-only and conditional writes decided by the service; and one
job's round trip the way a pod runs it (rows read from the store, a version published there with its
lineage, then ``kubetune verify`` and ``kubetune versions`` on its URIs, a file slipped in caught)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from kubetune.api.contract import EXIT_DAMAGED, EXIT_OK
from kubetune_trainer.storage import ObjectStore, StorageError, WriteConflict
from tests.trainer.jobs import write_dataset, write_job


def objects_are_written_read_listed_and_deleted(store: ObjectStore, base: str, tmp_path: Path) -> None:
    """``base``: a fresh, writable URI (``gs://bucket/runs/job``, ``az://account/container/runs/job``)."""
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
    with pytest.raises(StorageError, match=rf"{base}/missing: cannot read"):
        store.read_bytes(f"{base}/missing")


def writes_are_create_only_or_conditional(store: ObjectStore, uri: str) -> None:
    """A lost condition is a WriteConflict: creating what exists, updating what changed since it was read."""
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


def train_publish_and_verify(
    tmp_path: Path, tiny_model_dir: Path, store: ObjectStore, pod: dict[str, str], base: str
) -> None:
    """``pod``: the environment the operator sets for the scheme (endpoint, mounted key); ``base``: a
    writable URI (``gs://bucket``, ``az://account/container``); ``store``: the test's own view of it."""
    data = f"{base}/data/tickets.jsonl"
    store.upload(write_dataset(tmp_path / "rows.jsonl", 48), data, if_absent=True)
    output = f"{base}/models/tickets/"
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
