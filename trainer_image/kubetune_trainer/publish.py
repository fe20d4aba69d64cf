"""Publish a run's artifacts under a new, never-overwritten version, manifest last.

Layout: ``<output>/<version>/...artifacts...`` and ``<output>/<version>/manifest.json``. The
manifest is written only after every artifact uploaded, with a conditional write, so a
version without a manifest is by definition incomplete and :func:`list_versions` skips it.
"""

from __future__ import annotations

import json
import secrets
import subprocess
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import kubetune.api
from kubetune_trainer.storage import ObjectStore, StorageError, join_uri, sha256_file

MANIFEST = "manifest.json"


@dataclass(frozen=True)
class PublishedArtifact:
    name: str  # path relative to the version prefix
    uri: str
    sha256: str
    size_bytes: int


@dataclass(frozen=True)
class PublishedRun:
    version: str
    version_uri: str
    manifest_uri: str
    artifacts: list[PublishedArtifact]


def new_version(now: datetime | None = None) -> str:
    stamp = (now or datetime.now(UTC)).strftime("%Y%m%d-%H%M%S")
    return f"v{stamp}-{secrets.token_hex(3)}"


def code_version() -> dict[str, str]:
    version = {"kubetune": kubetune.api.__version__}
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
            timeout=5,
            cwd=Path(__file__).parent,
        ).stdout.strip()
        version["gitCommit"] = commit
    except (OSError, subprocess.SubprocessError):
        pass
    return version


def publish_run(local_dir: Path, output_uri: str, store: ObjectStore, manifest: dict[str, Any]) -> PublishedRun:
    """Upload everything under ``local_dir`` to a fresh version, then the manifest."""
    version = new_version()
    version_uri = join_uri(output_uri, version)
    if store.list(version_uri + "/"):
        raise StorageError(f"{version_uri}: already exists; refusing to overwrite a published version")
    files = sorted(p for p in local_dir.rglob("*") if p.is_file())
    artifacts = []
    for path in files:
        relative = path.relative_to(local_dir).as_posix()
        uri = join_uri(version_uri, *relative.split("/"))
        store.upload(path, uri)
        artifacts.append(PublishedArtifact(relative, uri, sha256_file(path), path.stat().st_size))
    document = {
        **manifest,
        "apiVersion": "kubetune.dev/v1alpha1",
        "kind": "ModelVersion",
        "version": version,
        "publishedAt": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "code": code_version(),
        "artifacts": [{"path": a.name, "sha256": a.sha256, "sizeBytes": a.size_bytes} for a in artifacts],
    }
    manifest_uri = join_uri(version_uri, MANIFEST)
    store.write_bytes(manifest_uri, json.dumps(document, indent=2, sort_keys=True).encode(), if_absent=True)
    return PublishedRun(version, version_uri, manifest_uri, artifacts)


def read_manifest(version_uri: str, store: ObjectStore) -> dict[str, Any]:
    return dict(json.loads(store.read_bytes(join_uri(version_uri, MANIFEST))))


def list_versions(output_uri: str, store: ObjectStore) -> list[str]:
    """Complete versions only (those with a manifest), oldest first."""
    prefix = output_uri.rstrip("/") + "/"
    versions = set()
    for uri in store.list(prefix):
        relative = uri[len(prefix) :]
        parts = relative.split("/")
        if len(parts) == 2 and parts[1] == MANIFEST and parts[0].startswith("v"):
            versions.add(parts[0])
    return sorted(versions)
