"""Start from a published version (``spec.continual.from``) instead of the base model.

The version's merged weights are the starting point, checked file by file against the SHA-256 its
manifest records (a version is immutable; a changed file is damage, not an update). A version that
published only its adapter (``output.formats: [adapter]``) is merged into the base it was trained on
first (checked against the digest its manifest recorded), the way its own export would have merged it;
prefix and bottleneck adapters cannot be merged into weights and are refused. The chain of
versions travels on: each version's lineage manifest lists every version it descends from, oldest
first, and the base model the chain began with, which ``spec.baseModel.uri`` must name, so a job
says plainly which pretrained model (and tokenizer) it builds on.

Replay (``continual.replayFraction``): the sources every version of the chain trained on, read from
their manifests (each checked against the SHA-256 the chain recorded), join the job's data at that
weight. Never a version's evalOnly sources (held out from it, they must not become training data),
and only under the storage prefixes the platform allows the job: the operator checked the spec's URIs,
these are found at run time.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from kubetune.api.prefixes import guarded, within
from kubetune.api.v1alpha1 import (
    MAX_DATASET_SOURCES,
    PREFERENCE_OBJECTIVES,
    UNMERGEABLE_ADAPTERS,
    DatasetFormat,
    DatasetSource,
    FineTuneJobSpec,
    MethodType,
)
from kubetune_trainer.errors import ConfigurationError
from kubetune_trainer.models.builtin import cache_root
from kubetune_trainer.models.loading import model_checksum, resolve_model_dir
from kubetune_trainer.publish import MANIFEST
from kubetune_trainer.storage import ObjectStore, StorageError, join_uri, sha256_file

FIELD = "spec.continual.from"
WEIGHTS = "merged"  # the artifact a continued job starts from
ADAPTER = "adapter"  # else the adapter, merged into its version's base here
FISHER = "fisher"  # the task's Fisher, where the version was trained with continual.publishFisher


@dataclass(frozen=True)
class StartingVersion:
    weights_uri: str  # the version's merged folder, or its adapter's (merged here into its base)
    path: Path  # that folder, downloaded and verified
    lineage: dict[str, Any]  # the next version's manifest ``continual`` block
    replay: list[DatasetSource]  # earlier training data mixed into this job's
    version_uri: str = ""
    manifest: dict[str, Any] | None = None  # the version's, as read (its SHA-256 is in the lineage)


def _outside(uri: str, prefixes: tuple[str, ...]) -> bool:
    return bool(prefixes) and guarded(uri) and not within(uri, prefixes)


def _replayable(source: dict[str, Any], pairs: bool) -> DatasetSource | None:
    """A source of an earlier version as this job can read it: its format as the version's manifest
    recorded it (``auto: chat`` when detected), and only data of this job's kind (pairs of answers for
    DPO and ORPO, single answers otherwise); never an evalOnly source."""
    recorded = str(source.get("format") or "auto")
    if source.get("role") not in ("task", "trainOnly") or (DatasetFormat.PREFERENCE.value in recorded) != pairs:
        return None
    known = recorded in {f.value for f in DatasetFormat}
    return DatasetSource(uri=str(source.get("uri")), format=recorded if known else DatasetFormat.AUTO)


def _replay(
    store: ObjectStore, chain: list[dict[str, Any]], spec: FineTuneJobSpec, prefixes: tuple[str, ...]
) -> list[DatasetSource]:
    """Every task and trainOnly source the chain's versions trained on, once, at ``replayFraction``."""
    assert spec.continual is not None
    fraction = spec.continual.replay_fraction
    pairs = spec.method.objective in PREFERENCE_OBJECTIVES
    skip = {source.uri for source in spec.dataset.sources}
    if fraction == 0:
        return []
    replay: dict[str, DatasetSource] = {}
    for step in chain:
        manifest, sha256 = _read(store, str(step["uri"]))
        if sha256 != step.get("manifestSha256"):
            raise ConfigurationError(
                f"{FIELD}: {step['uri']}/{MANIFEST} changed since a later version recorded it (sha256 "
                f"{sha256[:12]}…, recorded {str(step.get('manifestSha256'))[:12]}…): its data cannot be replayed"
            )
        for recorded in (manifest.get("dataset") or {}).get("mix") or []:
            source = _replayable(recorded, pairs)
            if source is None or source.uri in skip or source.uri in replay:
                continue
            uri = source.uri
            if _outside(uri, prefixes):
                raise ConfigurationError(
                    f"spec.continual.replayFraction: {step['uri']} trained on {uri}, outside the storage this "
                    f"namespace may use ({', '.join(prefixes)}): set replayFraction to 0 or ask the platform team"
                )
            replay[uri] = source.model_copy(update={"weight": fraction})
    if len(skip) + len(replay) > MAX_DATASET_SOURCES:  # a long chain must not grow a job's reads unbounded
        raise ConfigurationError(
            f"spec.continual.replayFraction: the chain's versions trained on {len(replay)} other sources; with the "
            f"job's {len(skip)} that is more than the {MAX_DATASET_SOURCES} sources one job may read: lower "
            f"replayFraction to 0, or continue from a version whose data is gathered in fewer sources"
        )
    return list(replay.values())


def _merged_adapter(manifest: dict[str, Any], adapter_uri: str, store: ObjectStore, prefixes: tuple[str, ...]) -> Path:
    """The version's adapter merged into the base it was trained on, built once into the cache."""
    from kubetune_trainer.export.merge import merge_adapter

    base = manifest.get("baseModel") or {}
    base_uri = str(base.get("uri"))
    if _outside(base_uri, prefixes):
        raise ConfigurationError(
            f"{FIELD}: the version's adapter was trained on {base_uri}, outside the storage this namespace may use "
            f"({', '.join(prefixes)})"
        )
    base_dir = resolve_model_dir(base_uri, store)
    if model_checksum(base_dir) != base.get("sha256"):
        raise ConfigurationError(
            f"{FIELD}: the base model the version's adapter was trained on, {base_uri}, differs from the digest "
            f"its manifest recorded: the adapter cannot be merged into it"
        )
    folder = cache_root() / "continual" / hashlib.sha256(adapter_uri.encode()).hexdigest()[:16]
    merged, done = folder / WEIGHTS, folder / ".complete"
    if not done.exists():  # versions never change: one merge serves every later job on this node
        shutil.rmtree(folder, ignore_errors=True)
        adapter_dir = store.download_tree(adapter_uri, folder / ADAPTER)
        _check_files(manifest, ADAPTER, adapter_dir, adapter_uri.rsplit("/", 1)[0])
        method = MethodType(str((manifest.get("resolved") or {}).get("method") or MethodType.LORA.value))
        merge_adapter(base_dir, adapter_dir, merged, method=method)
        done.write_text(adapter_uri)
    return merged


def _check_files(manifest: dict[str, Any], artifact: str, folder: Path, version_uri: str) -> None:
    """The downloaded ``artifact`` folder holds exactly the files the manifest lists, each with its size
    and SHA-256 (checked on the local copy: one read of what training will use, not a second download)."""
    listed = {
        PurePosixPath(str(entry.get("path"))).relative_to(artifact).as_posix(): entry
        for entry in manifest.get("artifacts") or []
        if PurePosixPath(str(entry.get("path"))).parts[:1] == (artifact,)
    }
    found = {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file() and not p.name.startswith(".")}
    problems = [f"{name}: not in the manifest" for name in sorted(found - set(listed))]
    for name, entry in sorted(listed.items()):
        local = folder / name
        if name not in found:
            problems.append(f"{name}: missing (the manifest lists it)")
        elif (sha256_file(local), local.stat().st_size) != (entry.get("sha256"), entry.get("sizeBytes")):
            problems.append(
                f"{name}: sha256 {sha256_file(local)[:12]}…; the manifest says {str(entry.get('sha256'))[:12]}…"
            )
    if problems:
        raise ConfigurationError(
            f"{FIELD}: {version_uri}: its {artifact} differs from its manifest: {artifact}/{problems[0]}"
        )


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


@dataclass(frozen=True)
class VersionWeights:
    """A published version's weights, downloaded and checked against its manifest."""

    manifest: dict[str, Any]
    manifest_sha256: str
    weights_uri: str  # its merged folder, or its adapter's (merged here into its base)
    path: Path


def is_published_version(store: ObjectStore, uri: str) -> bool:
    """Whether ``uri`` is a version's folder (it holds a manifest), not a model folder."""
    if uri.startswith("builtin://"):
        return False
    try:
        return store.exists(join_uri(uri.rstrip("/"), MANIFEST))
    except (StorageError, ConfigurationError):
        return False


def version_weights(
    store: ObjectStore, version_uri: str, storage_prefixes: tuple[str, ...] = (), field: str = FIELD
) -> VersionWeights:
    """The weights of the version at ``version_uri``: its merged folder, or its adapter merged into its
    base, each file checked against its manifest; errors name ``field``."""
    try:
        manifest, manifest_sha256 = _read(store, version_uri)
        kinds = {PurePosixPath(str(a.get("path"))).parts[0] for a in manifest.get("artifacts") or []}
        adapter = str((manifest.get("resolved") or {}).get("adapter") or "")
        if WEIGHTS in kinds:
            artifact = WEIGHTS
        elif ADAPTER in kinds and adapter not in UNMERGEABLE_ADAPTERS:
            artifact = ADAPTER
        else:
            listed = ", ".join(sorted(kinds - {MANIFEST})) or "none"
            raise ConfigurationError(
                f"{FIELD}: {version_uri} published neither merged weights nor an adapter that merges into them (its "
                f"artifacts: {listed}; adapter: {adapter or 'none'}): name a version whose output.formats "
                f"included merged, or one with a LoRA, DoRA, AdaLoRA, IA3 or OSF adapter"
            )
        weights_uri = join_uri(version_uri, artifact)
        try:
            if artifact == WEIGHTS:
                path = resolve_model_dir(weights_uri, store)
                _check_files(manifest, WEIGHTS, path, version_uri)
            else:
                path = _merged_adapter(manifest, weights_uri, store, storage_prefixes)
        except ConfigurationError as err:
            raise ConfigurationError(str(err).replace("spec.baseModel.uri", FIELD, 1)) from err
    except ConfigurationError as err:
        raise ConfigurationError(str(err).replace(FIELD, field)) from err
    return VersionWeights(manifest=manifest, manifest_sha256=manifest_sha256, weights_uri=weights_uri, path=path)


def resolve_starting_version(
    spec: FineTuneJobSpec, store: ObjectStore, storage_prefixes: tuple[str, ...] = ()
) -> StartingVersion:
    """The version ``spec.continual.from`` names, ready to train from, with the data it replays."""
    assert spec.continual is not None and spec.continual.from_version is not None
    version_uri, base_model_uri = spec.continual.from_version.rstrip("/"), spec.base_model.uri
    manifest, _ = _read(store, version_uri)
    earlier = manifest.get("continual") or {}
    origin = earlier.get("originBaseModel") or manifest.get("baseModel") or {}
    if origin.get("uri") != base_model_uri:
        raise ConfigurationError(
            f"{FIELD}: {version_uri} descends from the base model {origin.get('uri')!r}, but spec.baseModel.uri is "
            f"{base_model_uri!r}: set spec.baseModel.uri to {origin.get('uri')!r} (the tokenizer and architecture "
            f"come from it)"
        )
    weights = version_weights(store, version_uri, storage_prefixes)
    manifest, manifest_sha256 = weights.manifest, weights.manifest_sha256
    step = {
        "version": manifest.get("version"),
        "uri": version_uri,
        "manifestSha256": manifest_sha256,
        "promoted": manifest.get("promoted"),
    }
    chain = [*(earlier.get("chain") or []), step]  # oldest first, ending with the version started from
    replay = _replay(store, chain, spec, storage_prefixes)
    lineage = {
        "from": step,
        "chain": chain,
        "originBaseModel": origin,
        "replay": {"fraction": spec.continual.replay_fraction, "sources": [source.uri for source in replay]},
    }
    return StartingVersion(
        weights_uri=weights.weights_uri,
        path=weights.path,
        lineage=lineage,
        replay=replay,
        version_uri=version_uri,
        manifest=manifest,
    )


def published_fisher(start: StartingVersion, store: ObjectStore, destination: Path) -> Path | None:
    """The Fisher the version published (``continual.publishFisher``), downloaded and checked against
    its manifest; None where it published none."""
    from kubetune_trainer.training.ewc import FISHER_FILE

    manifest = start.manifest or {}
    if not any(PurePosixPath(str(a.get("path"))).parts[:1] == (FISHER,) for a in manifest.get("artifacts") or []):
        return None
    folder = store.download_tree(join_uri(start.version_uri, FISHER), destination)
    _check_files(manifest, FISHER, folder, start.version_uri)
    return folder / FISHER_FILE
