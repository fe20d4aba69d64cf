"""``kubetune serving``: the manifests a serving stack applies to run a channel's current version,
rendered from the version's manifest, valid Kubernetes where a schema exists, and working: the
rendered init container's own command fetches what the rendered server is told to load."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from kubetune.api.contract import EXIT_CONFIG, EXIT_OK
from kubetune.api.v1alpha1 import S3Spec
from kubetune_trainer.channels import promote
from kubetune_trainer.cli import main as kubetune
from kubetune_trainer.publish import publish_run
from kubetune_trainer.storage import ObjectStore
from tests.kubeapi.validation.core import KUBERNETES_VERSION


def publish(tmp_path: Path, store: ObjectStore, output: str, *, gguf: bool) -> str:
    root = tmp_path / ("with-gguf" if gguf else "merged-only")
    (root / "merged").mkdir(parents=True)
    (root / "merged" / "model.safetensors").write_bytes(b"weights" * 100)
    (root / "merged" / "config.json").write_text('{"model_type": "llama"}')
    if gguf:
        (root / "gguf").mkdir()
        (root / "gguf" / "tickets-q4_0.gguf").write_bytes(b"GGUF q4")
        (root / "gguf" / "tickets-q8_0.gguf").write_bytes(b"GGUF q8")
    return publish_run(root, output + "/", store, {"promoted": True}).version_uri


@pytest.fixture
def channel(tmp_path: Path, s3_spec: S3Spec, s3_bucket: str) -> tuple[str, str]:
    """A prod channel naming a version with merged weights and two GGUF files: (output URI, version URI)."""
    store = ObjectStore(s3_spec)
    output = f"s3://{s3_bucket}/support-tickets"
    version = publish(tmp_path, store, output, gguf=True)
    promote(store, version, "prod")
    return output, version


def render(capsys: pytest.CaptureFixture[str], endpoint: str, output: str, server: str, *extra: str) -> str:
    code = kubetune(
        ["serving", output, "--channel", "prod", "--for", server, "--name", "tickets", "--endpoint", endpoint, *extra]
    )
    captured = capsys.readouterr()
    assert code == EXIT_OK, captured.err
    return captured.out


def init_fetch(deployment: dict[str, Any], dest: Path) -> list[str]:
    """The rendered init container's command, its destination moved under the test's folder and the
    endpoint its environment names passed as the flag."""
    (init,) = deployment["spec"]["template"]["spec"]["initContainers"]
    command = list(init["command"][1:])
    command[command.index("--dest") + 1] = str(dest)
    endpoint = {e["name"]: e.get("value") for e in init["env"]}["AWS_ENDPOINT_URL_S3"]
    return [*command, "--endpoint", endpoint]


@pytest.mark.parametrize(("server", "loads"), [("vllm", "merged"), ("llama-cpp", "gguf")])
def test_a_deployment_follows_the_channel_and_its_server_loads_what_the_fetch_brought(
    tmp_path: Path,
    s3_endpoint: str,
    channel: tuple[str, str],
    capsys: pytest.CaptureFixture[str],
    server: str,
    loads: str,
) -> None:
    output, version = channel
    documents = list(
        yaml.safe_load_all(
            render(capsys, s3_endpoint, output, server, "--namespace", "ml", "--secret", "models-reader")
        )
    )
    assert [d["kind"] for d in documents] == ["Deployment", "Service"]
    for document in documents:
        kubernetes_validate.validate(document, KUBERNETES_VERSION, strict=True)
    deployment = documents[0]
    assert deployment["metadata"]["namespace"] == "ml"
    env = {e["name"]: e for e in deployment["spec"]["template"]["spec"]["initContainers"][0]["env"]}
    assert env["AWS_ACCESS_KEY_ID"]["valueFrom"]["secretKeyRef"] == {"name": "models-reader", "key": "access-key-id"}

    dest = tmp_path / "models" / "current"
    assert kubetune(init_fetch(deployment, dest)) == EXIT_OK
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    served = container["args"][container["args"].index("--model" if server == "vllm" else "-m") + 1]
    local = dest / Path(served).relative_to("/models/current")
    if loads == "merged":
        assert (local / "model.safetensors").read_bytes() == b"weights" * 100
    else:
        assert local.read_bytes() == b"GGUF q8", "the 8-bit GGUF where both were published"
    assert (dest / "VERSION").read_text().strip() == version.rsplit("/", 1)[1]


def test_an_inference_service_is_pinned_to_the_version_and_an_ollama_modelfile_names_its_gguf(
    tmp_path: Path, s3_endpoint: str, channel: tuple[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    output, version = channel
    (service,) = yaml.safe_load_all(render(capsys, s3_endpoint, output, "kserve"))
    assert (service["apiVersion"], service["kind"]) == ("serving.kserve.io/v1beta1", "InferenceService")
    model = service["spec"]["predictor"]["model"]
    assert model["storageUri"] == version + "/merged" and model["modelFormat"] == {"name": "huggingface"}
    assert service["metadata"]["annotations"]["kubetune.dev/version"] == version.rsplit("/", 1)[1]

    modelfile = render(capsys, s3_endpoint, output, "ollama")
    (source,) = [line.split(" ", 1)[1] for line in modelfile.splitlines() if line.startswith("FROM ")]
    dest = tmp_path / "ollama"
    fetch = ["fetch", output, "--channel", "prod", "--artifact", "gguf", "--dest", str(dest), "--endpoint", s3_endpoint]
    assert kubetune(fetch) == EXIT_OK
    assert (dest / source).read_bytes() == b"GGUF q8"


def test_what_the_version_cannot_serve_is_refused_naming_the_format_to_publish(
    tmp_path: Path, s3_endpoint: str, s3_spec: S3Spec, s3_bucket: str, capsys: pytest.CaptureFixture[str]
) -> None:
    store = ObjectStore(s3_spec)
    output = f"s3://{s3_bucket}/intents"
    base = ["serving", output, "--channel", "prod", "--name", "intents", "--endpoint", s3_endpoint]
    assert kubetune([*base, "--for", "vllm"]) == EXIT_CONFIG
    assert "names no version yet" in capsys.readouterr().err
    promote(store, publish(tmp_path, store, output, gguf=False), "prod")
    assert kubetune([*base, "--for", "ollama"]) == EXIT_CONFIG
    assert "output.formats including gguf-q8_0 or gguf-q4_0" in capsys.readouterr().err
    assert kubetune([*base[:-4], "--name", "Not_A_Label", "--endpoint", s3_endpoint, "--for", "vllm"]) == EXIT_CONFIG
    assert "a DNS label" in capsys.readouterr().err
