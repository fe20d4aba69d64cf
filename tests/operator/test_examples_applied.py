"""Every manifest in examples/ is applied to the emulated cluster and reaches a training Job."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from kubetune.api.manifest import load_manifest
from kubetune.api.v1alpha1 import FineTuneJobSpec
from kubetune.operator.children import preflight_job_name, training_job_name
from tests.kubeapi.cluster import TestCluster
from tests.operator.cluster import Cluster, wait_for
from tests.operator.conftest import running_operator

MANIFESTS = sorted((Path(__file__).resolve().parents[2] / "examples").glob("*.yaml"))


def seed_references(cluster: Cluster, spec: FineTuneJobSpec) -> None:
    """What the platform team creates (and opts in) before anyone applies the manifest, derived from the spec."""
    secret = spec.s3.credentials_secret
    if secret is not None:
        keys = [secret.access_key_id_key, secret.secret_access_key_key, secret.session_token_key]
        cluster.create_secret(secret.name, {key: "value" for key in keys if key})
    if spec.hub.token_secret is not None:
        cluster.create_secret(spec.hub.token_secret.name, {spec.hub.token_secret.key: "hf_token"}, hub_token=True)
    if spec.s3.ca_bundle is not None:
        cluster.core.create_namespaced_config_map(
            "default", {"metadata": {"name": spec.s3.ca_bundle.name}, "data": {spec.s3.ca_bundle.key: "PEM"}}
        )
    if spec.storage.pvc is not None:
        claim = {"metadata": {"name": spec.storage.pvc.claim_name}, "spec": {"accessModes": ["ReadWriteOnce"]}}
        cluster.core.create_namespaced_persistent_volume_claim("default", claim)
    if spec.service_account_name:
        cluster.create_service_account(spec.service_account_name)


def test_there_are_examples() -> None:
    assert MANIFESTS


PLATFORM_VALUES = yaml.safe_load((MANIFESTS[0].parent / "platform" / "values.yaml").read_text())


@pytest.fixture()
def platform_operator(test_cluster: TestCluster) -> Iterator[Any]:
    """The operator as the platform team configures it for the examples (examples/platform/values.yaml)."""
    profiles = json.dumps(PLATFORM_VALUES["policy"]["placementProfiles"])
    with running_operator(test_cluster, KUBETUNE_PLACEMENT_PROFILES=profiles) as runner:
        yield runner


@pytest.mark.parametrize("path", MANIFESTS, ids=lambda p: p.name)
def test_example_reaches_a_training_job(path: Path, cluster: Cluster, platform_operator: Any) -> None:
    job = load_manifest(path)
    name = job.metadata["name"]
    seed_references(cluster, job.spec)
    manifest = next(d for d in yaml.safe_load_all(path.read_text()) if d)
    cluster.apply(manifest)
    wait_for(lambda: cluster.job(preflight_job_name(name)), what=f"{name} pre-flight Job")
    cluster.finish_job(preflight_job_name(name), succeeded=True)
    train = wait_for(lambda: cluster.job(training_job_name(name)), what=f"{name} training Job")
    resources = job.spec.resources
    requests = train["spec"]["template"]["spec"]["containers"][0]["resources"]["requests"]
    assert requests.get(resources.gpu_resource_name) == (str(resources.gpus) if resources.gpus else None)
    assert train["metadata"]["labels"]["kubetune.dev/job"] == name
    assert train["spec"]["suspend"] is bool(job.spec.queue_name or job.spec.suspend)
    if job.spec.resources.placement is not None:
        profile = PLATFORM_VALUES["policy"]["placementProfiles"][job.spec.resources.placement]
        pod = train["spec"]["template"]["spec"]
        assert {key: pod[key] for key in profile} == profile
