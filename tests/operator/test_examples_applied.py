"""Every manifest in examples/ is applied to the emulated cluster and reaches a training Job."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from kubetune.api.manifest import load_manifest
from tests.operator.cluster import Cluster, wait_for

MANIFESTS = sorted((Path(__file__).resolve().parents[2] / "examples").glob("*.yaml"))


def test_there_are_examples() -> None:
    assert MANIFESTS


@pytest.mark.parametrize("path", MANIFESTS, ids=lambda p: p.name)
def test_example_reaches_a_training_job(path: Path, cluster: Cluster, operator: Any) -> None:
    job = load_manifest(path)
    name = job.metadata["name"]
    secret = job.spec.s3.credentials_secret
    if secret is not None:  # what the platform team would have created beforehand
        cluster.create_secret(secret.name, {secret.access_key_id_key: "AKIA", secret.secret_access_key_key: "s3cr3t"})
    manifest = next(d for d in yaml.safe_load_all(path.read_text()) if d)
    cluster.apply(manifest)
    wait_for(lambda: cluster.job(f"{name}-preflight"), what=f"{name} pre-flight Job")
    cluster.finish_job(f"{name}-preflight", succeeded=True)
    train = wait_for(lambda: cluster.job(f"{name}-train"), what=f"{name} training Job")
    gpus = job.spec.resources.gpus
    requests = train["spec"]["template"]["spec"]["containers"][0]["resources"]["requests"]
    assert requests.get("nvidia.com/gpu") == (str(gpus) if gpus else None)
