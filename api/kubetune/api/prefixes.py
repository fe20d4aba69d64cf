"""Whether a URI stays under the storage prefixes the platform allows a namespace: one rule for both
planes. The operator applies it to every ``s3://`` URI of a spec before any pod exists
(``kubetune.operator.storagepolicy``); the trainer applies it to the URIs it finds only at run time,
in published manifests (``kubetune_trainer.models.continual``)."""

from __future__ import annotations

from collections.abc import Sequence


def within(uri: str, prefixes: Sequence[str]) -> bool:
    """``uri`` is under one of ``prefixes`` (each ending in ``/``), so a prefix ends at a path segment:
    ``s3://team-a/`` admits ``s3://team-a/x`` and ``s3://team-a``, never ``s3://team-a-evil/x``."""
    return any((uri if uri.endswith("/") else uri + "/").startswith(prefix) for prefix in prefixes)
