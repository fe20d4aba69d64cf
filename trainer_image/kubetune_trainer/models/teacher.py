"""The teacher of ``method.objective: distill`` (``spec.method.distill.teacher``).

A model folder or a built-in model is resolved as ``spec.baseModel.uri`` is (models.loading); a
version this platform published, ``<output.uri>/<version>``, as ``continual.from`` is
(models.continual): its merged weights, or its adapter merged into its base, every file checked
against its manifest. Errors name the teacher's field.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kubetune_trainer.errors import ConfigurationError
from kubetune_trainer.models.continual import is_published_version, version_weights
from kubetune_trainer.models.loading import model_checksum, resolve_model_dir
from kubetune_trainer.storage import ObjectStore

FIELD = "spec.method.distill.teacher"


@dataclass(frozen=True)
class Teacher:
    uri: str  # as the manifest named it
    path: Path  # a local Hugging Face folder
    sha256: str  # models.loading.model_checksum of its weights and config
    version: dict[str, Any] | None = None  # where it is a published version: its uri, version and manifest digest

    def lineage(self) -> dict[str, Any]:
        return {"uri": self.uri, "sha256": self.sha256, **({"version": self.version} if self.version else {})}


def resolve_teacher(uri: str, store: ObjectStore, storage_prefixes: tuple[str, ...] = ()) -> Teacher:
    """The teacher ``uri`` names, as a local folder with its digest."""
    if not uri.startswith("hf://") and is_published_version(store, uri):  # a Hub repository is never one
        weights = version_weights(store, uri.rstrip("/"), storage_prefixes, field=FIELD)
        version = {
            "uri": uri.rstrip("/"),
            "version": weights.manifest.get("version"),
            "manifestSha256": weights.manifest_sha256,
        }
        return Teacher(uri=uri, path=weights.path, sha256=model_checksum(weights.path), version=version)
    try:
        path = resolve_model_dir(uri, store)
    except ConfigurationError as err:
        message = str(err).replace("spec.baseModel.uri", FIELD, 1)
        if "no config.json" in message:
            message += " or a published version's folder, <output.uri>/<version>, holding a manifest.json"
        raise ConfigurationError(message) from err
    # An hf:// revision as the commit it resolved to (asked once: resolving the folder asked already).
    return Teacher(uri=store.pinned(uri), path=path, sha256=model_checksum(path))


def same_vocabulary(student_tokenizer: Any, teacher_tokenizer: Any) -> bool:
    """Whether both tokenizers map the same strings to the same ids: the condition for comparing the two
    models' distributions token by token."""
    return bool(student_tokenizer.get_vocab() == teacher_tokenizer.get_vocab())
