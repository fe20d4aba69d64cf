"""Resolve ``spec.baseModel.uri`` to a local Hugging Face folder the trainer can load.

``builtin://`` is the packaged default model, ``file://`` a folder inside the pod (a mounted
volume or the image), ``s3://`` a prefix that is downloaded once into the cache, ``hf://`` a Hub
repository at one commit (``kubetune_trainer.hub``: its safe files only, each checked). Only
safetensors weights are accepted: pickled ``.bin`` checkpoints can execute code on load.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from kubetune.api.v1alpha1 import BUILTIN_MODEL_URI
from kubetune_trainer.errors import ConfigurationError
from kubetune_trainer.hub import HubError
from kubetune_trainer.models.builtin import builtin_model_dir, cache_root
from kubetune_trainer.storage import ObjectStore, StorageError, parse_uri


class ModelSourceError(ConfigurationError):
    """The base model URI does not lead to a loadable, safe Hugging Face folder."""


def _check_folder(path: Path, uri: str) -> Path:
    if not (path / "config.json").is_file():
        raise ModelSourceError(
            f"spec.baseModel.uri: {uri}: no config.json in {path} (expected a Hugging Face model folder)"
        )
    if not any(path.glob("*.safetensors")):
        pickled = sorted(p.name for p in path.glob("*.bin"))
        hint = (
            f" (found {', '.join(pickled)}: pickled weights are refused; convert them to safetensors)"
            if pickled
            else ""
        )
        raise ModelSourceError(f"spec.baseModel.uri: {uri}: no *.safetensors weights in {path}{hint}")
    if not (path / "tokenizer_config.json").is_file() and not (path / "tokenizer.json").is_file():
        raise ModelSourceError(f"spec.baseModel.uri: {uri}: no tokenizer files in {path}")
    return path


def resolve_model_dir(uri: str, store: ObjectStore) -> Path:
    """A local folder holding the base model named by ``uri`` (downloaded/converted if needed)."""
    if uri == BUILTIN_MODEL_URI:
        return builtin_model_dir()
    if uri.startswith("builtin://"):
        raise ModelSourceError(f"spec.baseModel.uri: unknown built-in model {uri!r} (available: {BUILTIN_MODEL_URI})")
    location = parse_uri(uri)
    if location.scheme == "file":
        return _check_folder(Path(location.key), uri)
    if location.scheme == "hf":
        return _check_folder(_hub_model(uri, store), uri)
    key = hashlib.sha256(uri.encode()).hexdigest()[:16]
    target = cache_root() / "s3-models" / key
    if not (target / ".complete").exists():
        try:
            store.download_tree(uri, target)
        except (StorageError, ConfigurationError) as err:  # unreachable, or a key that would escape `target`
            raise ModelSourceError(f"spec.baseModel.uri: {err}") from err
        (target / ".complete").write_text(uri)
    return _check_folder(target, uri)


def _hub_model(uri: str, store: ObjectStore) -> Path:
    """A Hub repository's safe files, at the commit its revision names, in a folder of the cache
    (one per commit: a moved branch is a new folder, a commit is never fetched twice)."""
    try:
        pinned = store.pinned(uri)
        target = cache_root() / "hub-models" / hashlib.sha256(pinned.encode()).hexdigest()[:16]
        if not (target / ".complete").exists():
            store.hub.download_model(pinned, target)
            (target / ".complete").write_text(pinned)
    except (StorageError, HubError) as err:
        raise ModelSourceError(f"spec.baseModel.uri: {err}") from err
    return target


def model_checksum(model_dir: Path) -> str:
    """sha256 over the weight files and config, for the lineage manifest."""
    digest = hashlib.sha256()
    for path in [*sorted(model_dir.glob("*.safetensors")), model_dir / "config.json"]:
        digest.update(path.name.encode())
        with path.open("rb") as handle:
            while block := handle.read(1 << 20):
                digest.update(block)
    return digest.hexdigest()
