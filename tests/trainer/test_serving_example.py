"""The serving example (examples/serving/vllm-channel.yaml) is valid Kubernetes, and its init
container's ``kubetune fetch`` command brings the channel's current version, verified, into place:
run here against a channel in the suite's S3, with only the bucket and endpoint changed."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import boto3
import kubernetes_validate
import pytest
import yaml

from kubetune.api.contract import EXIT_DAMAGED, EXIT_OK
from kubetune.api.v1alpha1 import S3Spec
from kubetune_trainer.channels import promote, rollback
from kubetune_trainer.cli import main as kubetune
from kubetune_trainer.errors import ConfigurationError
from kubetune_trainer.publish import publish_run
from kubetune_trainer.storage import ObjectStore
from tests.kubeapi.validation.core import KUBERNETES_VERSION

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "serving" / "vllm-channel.yaml"


def documents() -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(EXAMPLE.read_text()) if doc]


def fetch_command() -> list[str]:
    (deployment,) = [d for d in documents() if d["kind"] == "Deployment"]
    (init,) = deployment["spec"]["template"]["spec"]["initContainers"]
    assert init["command"][:2] == ["kubetune", "fetch"]
    return list(init["command"][1:])


def test_the_example_is_valid_kubernetes() -> None:
    for document in documents():
        kubernetes_validate.validate(document, KUBERNETES_VERSION, strict=True)


def test_the_init_containers_fetch_brings_the_channels_version_and_follows_it(
    tmp_path: Path, s3_endpoint: str, s3_spec: S3Spec, s3_bucket: str, capsys: pytest.CaptureFixture[str]
) -> None:
    store = ObjectStore(s3_spec)
    output = f"s3://{s3_bucket}/support-tickets"
    versions = []
    for name in ("first", "second"):
        root = tmp_path / "published" / name
        (root / "merged").mkdir(parents=True)
        (root / "merged" / "model.safetensors").write_bytes(name.encode() * 1000)
        (root / "merged" / "config.json").write_text('{"model_type": "llama"}')
        (root / "adapter").mkdir()
        (root / "adapter" / "adapter_model.safetensors").write_bytes(b"adapter")
        versions.append(publish_run(root, output + "/", store, {"promoted": True}).version_uri)
    promote(store, versions[0], "prod")

    command = fetch_command()
    command[1] = output + "/"  # the example's bucket, here the suite's
    dest = tmp_path / "models" / "current"
    command[command.index("--dest") + 1] = str(dest)
    run = [*command, "--endpoint", s3_endpoint]

    assert kubetune(run) == EXIT_OK
    assert (dest / "model.safetensors").read_bytes() == b"first" * 1000, "the merged folder, at the link"
    assert (dest / "VERSION").read_text().strip() == versions[0].rsplit("/", 1)[1]
    assert not (dest / "adapter_model.safetensors").exists()
    assert kubetune(run) == EXIT_OK and "already in place" in capsys.readouterr().out

    promote(store, versions[1], "prod")
    assert kubetune(run) == EXIT_OK
    assert (dest / "model.safetensors").read_bytes() == b"second" * 1000
    assert sorted(p.name for p in dest.parent.iterdir()) == ["current", f"{versions[1].rsplit('/', 1)[1]}-merged"]

    # The channel goes back to a version whose weights were changed after publishing: nothing of it is
    # served, and what was in place stays.
    key = versions[0].removeprefix(f"s3://{s3_bucket}/") + "/merged/model.safetensors"
    boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1").put_object(
        Bucket=s3_bucket, Key=key, Body=b"tampered"
    )
    with pytest.raises(ConfigurationError, match="differs from its manifest"):
        rollback(store, output, "prod")  # a rollback re-checks the version it goes back to
    with pytest.raises(ConfigurationError, match="differs from its manifest"):
        promote(store, versions[0], "prod", require_promoted=False)  # so does a forced promote
    assert kubetune(run) == EXIT_OK and "already in place" in capsys.readouterr().out
    assert (dest / "model.safetensors").read_bytes() == b"second" * 1000


def test_a_version_changed_after_it_joined_the_channel_is_not_served(
    tmp_path: Path, s3_endpoint: str, s3_spec: S3Spec, s3_bucket: str, capsys: pytest.CaptureFixture[str]
) -> None:
    store = ObjectStore(s3_spec)
    output = f"s3://{s3_bucket}/support-tickets"
    root = tmp_path / "published"
    (root / "merged").mkdir(parents=True)
    (root / "merged" / "model.safetensors").write_bytes(b"weights" * 1000)
    version_uri = publish_run(root, output + "/", store, {"promoted": True}).version_uri
    promote(store, version_uri, "prod")
    dest = tmp_path / "models" / "current"
    command = fetch_command()
    command[1] = output
    command[command.index("--dest") + 1] = str(dest)
    key = version_uri.removeprefix(f"s3://{s3_bucket}/") + "/merged/model.safetensors"
    boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1").put_object(
        Bucket=s3_bucket, Key=key, Body=b"tampered"
    )
    assert kubetune([*command, "--endpoint", s3_endpoint]) == EXIT_DAMAGED
    assert "differs from its manifest" in capsys.readouterr().out
    assert not dest.exists() and list(dest.parent.iterdir()) == [], "nothing half-fetched is left"
    assert kubetune([*command, "--artifact", "gguf", "--endpoint", s3_endpoint]) != EXIT_OK
    assert "no 'gguf' artifact (it has merged)" in capsys.readouterr().err
