"""Whether a URI stays under the storage prefixes the platform allows a namespace: one rule for both
planes. The operator applies it to every ``s3://``, ``gs://``, ``az://`` and ``hf://`` URI of a spec before any pod exists
(``kubetune.operator.storagepolicy``); the trainer applies it to the URIs it finds only at run time,
in published manifests (``kubetune_trainer.models.continual``)."""

from __future__ import annotations

from collections.abc import Sequence

# The schemes whose URIs the platform bounds by prefix: object storage, and the Hub's repositories
# (``hf://owner/``, ``hf://datasets/owner/``). file:// is the pod's own filesystem, builtin:// the image's.
GUARDED_SCHEMES = ("s3://", "gs://", "az://", "hf://")


def guarded(uri: str) -> bool:
    return uri.startswith(GUARDED_SCHEMES)


def within(uri: str, prefixes: Sequence[str]) -> bool:
    """``uri`` is under one of ``prefixes`` (each ending in ``/``), so a prefix ends at a path segment:
    ``s3://team-a/`` admits ``s3://team-a/x`` and ``s3://team-a``, never ``s3://team-a-evil/x``. An
    hf:// URI is matched without its ``@revision``: ``hf://org/model/`` admits ``hf://org/model@v2``."""
    uri = without_revision(uri)
    return any((uri if uri.endswith("/") else uri + "/").startswith(prefix) for prefix in prefixes)


def without_revision(uri: str) -> str:
    """An hf:// URI with the ``@revision`` of its repository name left out; other URIs as they are."""
    if not uri.startswith("hf://"):
        return uri
    parts = uri.split("/")  # "hf:", "", ["datasets",] owner, name[@revision], path...
    name = 4 if parts[2] == "datasets" else 3
    if len(parts) > name:
        parts[name] = parts[name].split("@", 1)[0]
    return "/".join(parts)
