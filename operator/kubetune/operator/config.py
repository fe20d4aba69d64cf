"""Operator configuration: ``KUBETUNE_*`` environment variables, validated once at startup."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

from kubetune.api.v1alpha1 import DEFAULT_TRAINER_IMAGE


class ConfigError(ValueError):
    pass


@dataclass(frozen=True)
class OperatorConfig:
    namespaces: tuple[str, ...]  # empty: every namespace (cluster-wide)
    trainer_image: str
    image_pull_policy: str
    default_s3_endpoint: str | None
    default_s3_region: str | None
    metrics_port: int
    health_port: int

    @property
    def clusterwide(self) -> bool:
        return not self.namespaces

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> OperatorConfig:
        env = os.environ if env is None else env

        def port(name: str, default: int) -> int:
            raw = env.get(name, str(default))
            if not raw.isdigit() or not 0 < int(raw) < 65536:
                raise ConfigError(f"{name}={raw!r}: expected a TCP port number")
            return int(raw)

        policy = env.get("KUBETUNE_IMAGE_PULL_POLICY", "IfNotPresent")
        if policy not in ("Always", "IfNotPresent", "Never"):
            raise ConfigError(f"KUBETUNE_IMAGE_PULL_POLICY={policy!r}: expected Always, IfNotPresent or Never")
        namespaces = tuple(n.strip() for n in env.get("KUBETUNE_NAMESPACES", "").split(",") if n.strip())
        return cls(
            namespaces=namespaces,
            trainer_image=env.get("KUBETUNE_TRAINER_IMAGE", DEFAULT_TRAINER_IMAGE),
            image_pull_policy=policy,
            default_s3_endpoint=env.get("KUBETUNE_DEFAULT_S3_ENDPOINT") or None,
            default_s3_region=env.get("KUBETUNE_DEFAULT_S3_REGION") or None,
            metrics_port=port("KUBETUNE_METRICS_PORT", 8080),
            health_port=port("KUBETUNE_HEALTH_PORT", 8081),
        )
