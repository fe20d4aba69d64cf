"""Checks the CRD schema cannot make: that what the spec references exists and fits.

Each problem names the exact field, e.g. ``spec.s3.credentialsSecret.name: Secret 'x' not
found in namespace 'ns'``, so a user can fix the manifest without reading operator logs.
A missing Secret or key is caught here, never left as a pod in CreateContainerConfigError.
"""

from __future__ import annotations

import base64
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from kubetune.api.manifest import ManifestError, parse_spec
from kubetune.api.v1alpha1 import FineTuneJobSpec
from kubetune.operator.imagepolicy import ImagePolicy

Reader = Callable[[str, str, str], dict[str, Any] | None]  # (kind, namespace, name) -> object or None


@dataclass(frozen=True)
class SpecProblem:
    reason: str  # CamelCase, for the condition's reason
    message: str


def parse(spec: dict[str, Any]) -> FineTuneJobSpec | SpecProblem:
    try:
        return parse_spec(spec)
    except ManifestError as err:
        details = "; ".join(f"{path}: {message}" for path, message in err.problems)
        return SpecProblem("InvalidSpec", details)


def check_policy(spec: FineTuneJobSpec, images: ImagePolicy) -> SpecProblem | None:
    """What the platform team's policy refuses, before any pod exists."""
    if spec.image is not None and (why := images.refusal(spec.image)) is not None:
        return SpecProblem("ImageNotAllowed", f"spec.image: {why}")
    return None


def _keys(obj: dict[str, Any]) -> set[str]:
    return set((obj.get("data") or {}).keys()) | set((obj.get("stringData") or {}).keys())


def check_references(spec: FineTuneJobSpec, namespace: str, read: Reader) -> SpecProblem | None:
    secret_ref = spec.s3.credentials_secret
    if secret_ref is not None:
        secret = read("Secret", namespace, secret_ref.name)
        if secret is None:
            return SpecProblem(
                "SecretNotFound",
                f"spec.s3.credentialsSecret.name: Secret '{secret_ref.name}' not found in namespace '{namespace}'",
            )
        keys = _keys(secret)
        wanted = [
            ("accessKeyIdKey", secret_ref.access_key_id_key),
            ("secretAccessKeyKey", secret_ref.secret_access_key_key),
        ]
        if secret_ref.session_token_key:
            wanted.append(("sessionTokenKey", secret_ref.session_token_key))
        for field, key in wanted:
            if key not in keys:
                have = ", ".join(sorted(keys)) or "none"
                return SpecProblem(
                    "SecretKeyMissing",
                    f"spec.s3.credentialsSecret.{field}: Secret '{secret_ref.name}' has no key '{key}' (keys: {have})",
                )
            value = (secret.get("data") or {}).get(key)
            if value is not None and not base64.b64decode(value or b""):
                return SpecProblem(
                    "SecretKeyEmpty",
                    f"spec.s3.credentialsSecret.{field}: key '{key}' of Secret '{secret_ref.name}' is empty",
                )
    ca = spec.s3.ca_bundle
    if ca is not None:
        config_map = read("ConfigMap", namespace, ca.name)
        if config_map is None:
            return SpecProblem(
                "ConfigMapNotFound",
                f"spec.s3.caBundle.name: ConfigMap '{ca.name}' not found in namespace '{namespace}'",
            )
        if ca.key not in _keys(config_map):
            return SpecProblem(
                "ConfigMapKeyMissing", f"spec.s3.caBundle.key: ConfigMap '{ca.name}' has no key '{ca.key}'"
            )
    if spec.storage.pvc is not None and read("PersistentVolumeClaim", namespace, spec.storage.pvc.claim_name) is None:
        return SpecProblem(
            "PersistentVolumeClaimNotFound",
            f"spec.storage.pvc.claimName: PersistentVolumeClaim '{spec.storage.pvc.claim_name}' not found in namespace '{namespace}'",
        )
    if spec.service_account_name and read("ServiceAccount", namespace, spec.service_account_name) is None:
        return SpecProblem(
            "ServiceAccountNotFound",
            f"spec.serviceAccountName: ServiceAccount '{spec.service_account_name}' not found in namespace '{namespace}'",
        )
    return None
