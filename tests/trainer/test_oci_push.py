"""spec.output.oci: each published version pushed to an OCI registry as an ORAS artifact, through
``kubetune run`` in a pod's environment (the registry URL and mounted login the operator sets, as
tests/operator/test_oci_access.py shows), against CNCF Distribution on loopback (tests/ociregistry.py)."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from kubetune.api import contract
from kubetune.api.contract import EXIT_OK
from kubetune_trainer.ocipush import CONFIG_MEDIA_TYPE, MANIFEST_MEDIA_TYPE, push_version
from tests.ociregistry import RegistryServer
from tests.trainer.jobs import write_dataset, write_job

KUBETUNE = str(Path(sys.executable).parent / "kubetune")


def _job(tmp_path: Path, model_dir: Path, repository: str) -> Path:
    """The tiny job, publishing to a local folder and pushing to ``repository``."""
    job = write_job(
        tmp_path / "job.yaml",
        model_dir=model_dir,
        data=write_dataset(tmp_path / "rows.jsonl", 48),
        output=f"file://{tmp_path / 'runs'}",
    )
    manifest = yaml.safe_load(job.read_text())
    manifest["spec"]["output"]["oci"] = {"repository": repository, "credentialsSecret": {"name": "registry-login"}}
    job.write_text(yaml.safe_dump(manifest))
    return job


def _run(tmp_path: Path, job: Path, env: dict[str, str]) -> tuple[subprocess.CompletedProcess[str], dict[str, Any]]:
    command = [KUBETUNE, "run", str(job), "--output-dir", str(tmp_path / "runs"), "--workdir", str(tmp_path / "w")]
    result = subprocess.run(
        [*command, "-o", "json"],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "OMP_NUM_THREADS": "1", **env},
    )
    assert result.returncode == EXIT_OK, result.stderr[-3000:]
    return result, json.loads(result.stdout)


def test_a_published_version_is_pushed_with_its_manifest_and_adapter_and_pulls_back_intact(
    tmp_path: Path, tiny_model_dir: Path, oci_registry: RegistryServer
) -> None:
    repository = f"{oci_registry.host}/team-a/tickets"
    job = _job(tmp_path, tiny_model_dir, repository)
    login = oci_registry.docker_config(tmp_path / "dockerconfig.json")
    pod = {contract.ENV_OCI_REGISTRY: oci_registry.url, contract.ENV_OCI_AUTH_FILE: str(login)}
    _, published = _run(tmp_path, job, pod)

    version = published["version"]
    assert published["oci"]["reference"] == f"{repository}:{version}", published["oci"]
    assert "error" not in published["oci"], published["oci"]
    assert published["oci"]["digest"].startswith("sha256:")
    (manifest_path,) = (tmp_path / "runs").glob(f"*/{version}/manifest.json")
    client: Any = oci_registry.client()
    stored = client.get_manifest(f"{repository}:{version}")
    assert stored["config"]["mediaType"] == CONFIG_MEDIA_TYPE
    assert stored["annotations"]["org.opencontainers.image.version"] == version
    titles = {layer["annotations"]["org.opencontainers.image.title"]: layer for layer in stored["layers"]}
    assert set(titles) == {"manifest.json", "adapter"} and titles["manifest.json"]["mediaType"] == MANIFEST_MEDIA_TYPE

    pulled = tmp_path / "pulled"
    client.pull(target=f"{repository}:{version}", outdir=str(pulled))
    assert (pulled / "manifest.json").read_bytes() == manifest_path.read_bytes()
    lineage = json.loads(manifest_path.read_text())
    adapter_files = [a for a in lineage["artifacts"] if a["path"].startswith("adapter/")]
    assert adapter_files
    for artifact in adapter_files:
        assert hashlib.sha256((pulled / artifact["path"]).read_bytes()).hexdigest() == artifact["sha256"]


def test_a_push_that_cannot_happen_leaves_the_version_published_and_says_why(
    tmp_path: Path, tiny_model_dir: Path, oci_registry: RegistryServer
) -> None:
    """A wrong password is the registry's 401; an existing tag is never overwritten."""
    repository = f"{oci_registry.host}/team-a/refused"
    job = _job(tmp_path, tiny_model_dir, repository)
    wrong = oci_registry.docker_config(tmp_path / "wrong.json", password="not-the-password")
    _, published = _run(
        tmp_path, job, {contract.ENV_OCI_REGISTRY: oci_registry.url, contract.ENV_OCI_AUTH_FILE: str(wrong)}
    )
    assert "digest" not in published["oci"]
    assert published["oci"]["error"].startswith(f"{repository}:{published['version']}: "), published["oci"]
    assert "the registry refused the login" in published["oci"]["error"]
    assert list((tmp_path / "runs").glob(f"*/{published['version']}/manifest.json"))  # still published

    # The same version pushed twice: the second is refused, the tag keeps the first.
    (version_dir,) = (tmp_path / "runs").glob(f"*/{published['version']}")
    login = oci_registry.docker_config(tmp_path / "login.json")
    push = {
        "version": published["version"],
        "manifest_uri": f"file://{version_dir}/manifest.json",
        "repository": repository,
        "registry_url": oci_registry.url,
        "auth_file": login,
    }
    first = push_version(version_dir, (version_dir / "manifest.json").read_bytes(), **push)
    assert first.error is None and first.digest is not None
    again = push_version(version_dir, b'{"other": true}', **push)
    assert again.digest is None and again.error is not None and "the tag exists already" in again.error


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"auths": {}}, "has no login for"),
        ({"auths": {"HOST": {"auth": "bm8tY29sb24="}}}, "neither username and password nor a valid auth"),
        ("not json", "not a Docker config in JSON"),
    ],
)
def test_a_login_file_without_a_usable_login_is_named(
    tmp_path: Path, oci_registry: RegistryServer, config: Any, message: str
) -> None:
    login = tmp_path / "config.json"
    login.write_text(json.dumps(config).replace("HOST", oci_registry.host) if not isinstance(config, str) else config)
    (tmp_path / "adapter").mkdir()
    status = push_version(
        tmp_path,
        b"{}",
        version="v1",
        manifest_uri="file:///x/manifest.json",
        repository=f"{oci_registry.host}/team-a/logins",
        registry_url=oci_registry.url,
        auth_file=login,
    )
    assert status.error is not None and "spec.output.oci.credentialsSecret" in status.error and message in status.error


def test_a_registry_other_than_the_one_the_operator_set_is_not_pushed_to(tmp_path: Path) -> None:
    """The repository's host must be the registry the pod was given; a pod given none pushes nowhere.
    Either is the push's error, the version untouched (nothing is contacted)."""
    (tmp_path / "adapter").mkdir()
    push = {"version": "v1", "manifest_uri": "file:///x/manifest.json", "auth_file": None}
    other = push_version(tmp_path, b"{}", repository="ghcr.io/a/b", registry_url="https://quay.io", **push)
    assert other.error == "ghcr.io/a/b: ghcr.io is not the registry this pod may push to (https://quay.io)"
    none = push_version(tmp_path, b"{}", repository="ghcr.io/a/b", registry_url=None, in_pod=True, **push)
    assert none.error is not None and "this pod was given no registry" in none.error and none.digest is None
