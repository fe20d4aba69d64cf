"""Start from a published version (``spec.continual.from``) instead of the base model.

The version's merged weights are the starting point, checked file by file against the SHA-256 its
manifest records (a version is immutable; a changed file is damage, not an update). The chain of
versions travels on: each version's lineage manifest lists every version it descends from, oldest
first, and the base model the chain began with, which ``spec.baseModel.uri`` must name, so a job
says plainly which pretrained model (and tokenizer) it builds on.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from kubetune_trainer.errors import ConfigurationError
from kubetune_trainer.models.loading import resolve_model_dir
from kubetune_trainer.publish import MANIFEST, verify_version
from kubetune_trainer.storage import ObjectStore, StorageError, join_uri

FIELD = "spec.continual.from"
WEIGHTS = "merged"  # the artifact a continued job starts from


@dataclass(frozen=True)
class StartingVersion:
    weights_uri: str  # the version's merged folder
    path: Path  # that folder, downloaded and verified
    lineage: dict[str, Any]  # the next version's manifest ``continual`` block


def _read(store: ObjectStore, version_uri: str) -> tuple[dict[str, Any], str]:
    """The version's manifest and its SHA-256; a clear error where there is no published version."""
    manifest_uri = join_uri(version_uri, MANIFEST)
    try:
        raw = store.read_bytes(manifest_uri)
    except StorageError as err:
        raise ConfigurationError(
            f"{FIELD}: {version_uri}: no published version there ({manifest_uri} cannot be read: {err}); "
            f"name a version's folder, <output.uri>/<version>"
        ) from err
    try:
        manifest = json.loads(raw)
        if not isinstance(manifest, dict) or manifest.get("kind") != "ModelVersion":
            raise ValueError("not a ModelVersion")
    except ValueError as err:
        raise ConfigurationError(f"{FIELD}: {manifest_uri}: not a version manifest ({err})") from err
    return manifest, hashlib.sha256(raw).hexdigest()


def resolve_starting_version(version_uri: str, base_model_uri: str, store: ObjectStore) -> StartingVersion:
    version_uri = version_uri.rstrip("/")
    manifest, manifest_sha256 = _read(store, version_uri)
    earlier = manifest.get("continual") or {}
    origin = earlier.get("originBaseModel") or manifest.get("baseModel") or {}
    if origin.get("uri") != base_model_uri:
        raise ConfigurationError(
            f"{FIELD}: {version_uri} descends from the base model {origin.get('uri')!r}, but spec.baseModel.uri is "
            f"{base_model_uri!r}: set spec.baseModel.uri to {origin.get('uri')!r} (the tokenizer and architecture "
            f"come from it)"
        )
    paths = [str(artifact.get("path")) for artifact in manifest.get("artifacts") or []]
    if not any(PurePosixPath(path).parts[:1] == (WEIGHTS,) for path in paths):
        kinds = sorted({PurePosixPath(path).parts[0] for path in paths if "/" in path})
        raise ConfigurationError(
            f"{FIELD}: {version_uri} published no merged weights (its artifacts: {', '.join(kinds) or 'none'}); "
            f"a job continues from merged weights: start from a version whose output.formats included merged"
        )
    _, problems = verify_version(version_uri, store)
    damaged = [problem for problem in problems if problem.startswith(join_uri(version_uri, WEIGHTS) + "/")]
    if damaged:
        raise ConfigurationError(f"{FIELD}: {version_uri}: its merged weights differ from its manifest: {damaged[0]}")
    weights_uri = join_uri(version_uri, WEIGHTS)
    try:
        path = resolve_model_dir(weights_uri, store)
    except ConfigurationError as err:
        raise ConfigurationError(str(err).replace("spec.baseModel.uri", FIELD, 1)) from err
    step = {
        "version": manifest.get("version"),
        "uri": version_uri,
        "manifestSha256": manifest_sha256,
        "promoted": manifest.get("promoted"),
    }
    lineage = {
        "from": step,
        "chain": [*(earlier.get("chain") or []), step],  # oldest first, ending with the version started from
        "originBaseModel": origin,
    }
    return StartingVersion(weights_uri=weights_uri, path=path, lineage=lineage)
