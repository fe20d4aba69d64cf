"""Serving hand-off: what a serving stack applies to run a promotion channel's current version.

``kubetune serving OUTPUT_URI --channel prod --for vllm|llama-cpp|kserve|ollama`` renders it from the
channel's current entry and that version's manifest (which artifact it published decides what can serve
it). How each follows the channel:

- ``vllm`` and ``llama-cpp``: a Deployment and a Service whose init container runs ``kubetune fetch`` on
  the channel (the version's artifact downloaded and checked file by file against its manifest), so a
  pod started after a promotion serves the new version: ``kubectl rollout restart`` follows it. vLLM
  serves the merged weights; llama.cpp's server a GGUF file.
- ``kserve``: an InferenceService whose ``storageUri`` is the version's merged folder, pinned: KServe's
  storage initializer downloads it without kubetune's checks, with the S3 credentials of the predictor's
  service account (KServe's own convention). It follows the channel by being rendered again after each
  promotion and applied (a new revision rolls out).
- ``ollama``: a Modelfile, to put in the folder ``kubetune fetch --artifact gguf --dest DIR`` filled, then
  ``ollama create NAME -f DIR/Modelfile``; again after each promotion.

Deployments and Services are plain Kubernetes (the tests validate them against the API's schema); the
InferenceService's schema (KServe's CRD) is not available offline, so only its shape is tested.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Any

import yaml

from kubetune.api import __version__
from kubetune_trainer.channels import current
from kubetune_trainer.errors import ConfigurationError
from kubetune_trainer.publish import read_manifest
from kubetune_trainer.storage import ObjectStore, join_uri

SERVERS = ("vllm", "llama-cpp", "kserve", "ollama")
# The artifact folder each server loads, and the output.formats value that publishes it.
ARTIFACT = {"vllm": "merged", "kserve": "merged", "llama-cpp": "gguf", "ollama": "gguf"}
FORMAT_FOR = {"merged": "merged", "gguf": "gguf-q8_0 or gguf-q4_0"}
TRAINER_IMAGE = f"ghcr.io/kubetune/trainer:{__version__}"
VLLM_IMAGE = "vllm/vllm-openai:v0.11.0"
LLAMA_CPP_IMAGE = "ghcr.io/ggml-org/llama.cpp:server-b6500"
PORT = {"vllm": 8000, "llama-cpp": 8080}
MODELS = "/models"  # the shared volume; the fetched version is the link /models/current
DNS_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")


@dataclass(frozen=True)
class ServedVersion:
    """A channel's current version and the artifact files it published."""

    output_uri: str
    channel: str
    version: str
    version_uri: str
    files: tuple[str, ...]  # paths inside the version, as its manifest lists them

    def files_under(self, folder: str) -> list[str]:
        return sorted(path for path in self.files if PurePosixPath(path).parts[0] == folder)


@dataclass(frozen=True)
class Placement:
    """Where and how the rendered objects run: their name, namespace and storage access."""

    name: str
    namespace: str | None = None
    secret: str | None = None  # a Secret with access-key-id and secret-access-key; None: workload identity
    endpoint: str | None = None  # the S3 endpoint the pods use; None: AWS
    region: str | None = None


def served_version(store: ObjectStore, output_uri: str, channel: str) -> ServedVersion:
    entry = current(store, output_uri, channel)
    if entry is None:
        raise ConfigurationError(f"{output_uri}: channel {channel!r} names no version yet (kubetune promote)")
    manifest = read_manifest(entry.version_uri, store)
    files = tuple(str(artifact["path"]) for artifact in manifest.get("artifacts") or [])
    return ServedVersion(output_uri, channel, entry.version, entry.version_uri, files)


def render(server: str, served: ServedVersion, placement: Placement) -> str:
    """The manifest (YAML documents, or a Modelfile for ollama) serving ``served`` with ``server``."""
    made = _make(server, served, placement)
    return made if isinstance(made, str) else _yaml(made)


def hand_off(server: str, served: ServedVersion, placement: Placement) -> dict[str, Any]:
    """What ``render`` renders, as data (``kubetune serving -o json|yaml``): the version served, and
    the Kubernetes objects or, for ollama, the Modelfile's text."""
    made = _make(server, served, placement)
    return {
        "server": server,
        "outputUri": served.output_uri,
        "channel": served.channel,
        "version": served.version,
        "versionUri": served.version_uri,
        "objects": [] if isinstance(made, str) else made,
        "modelfile": made if isinstance(made, str) else None,
    }


def _make(server: str, served: ServedVersion, placement: Placement) -> list[dict[str, Any]] | str:
    """The objects serving ``served`` with ``server``, or ollama's Modelfile."""
    if server not in SERVERS:
        raise ConfigurationError(f"--for {server!r}: one of {', '.join(SERVERS)}")
    if not DNS_LABEL.fullmatch(placement.name):
        raise ConfigurationError(f"--name {placement.name!r}: a DNS label (lowercase letters, digits, '-'; 63 at most)")
    folder = ARTIFACT[server]
    files = served.files_under(folder)
    if not files:
        raise ConfigurationError(
            f"{served.version_uri} (channel {served.channel!r}) published no {folder} artifact, which {server} "
            f"serves: publish versions with output.formats including {FORMAT_FOR[folder]}"
        )
    if server == "kserve":
        return [_inference_service(served, placement)]
    gguf = _gguf_file(files) if folder == "gguf" else None
    if server == "ollama":
        return _modelfile(served, placement, str(gguf))
    return [_deployment(server, served, placement, gguf), _service(server, placement)]


def _yaml(documents: list[dict[str, Any]]) -> str:
    return "---\n".join(yaml.safe_dump(document, sort_keys=False) for document in documents)


def _gguf_file(files: list[str]) -> str:
    """The GGUF file to serve: 8-bit where both were published (closer to the merged model)."""
    names = [PurePosixPath(path).name for path in files if path.endswith(".gguf")]
    if not names:
        raise ConfigurationError("the version's gguf folder holds no .gguf file")
    return sorted(names, key=lambda name: (not name.endswith("-q8_0.gguf"), name))[0]


def _metadata(placement: Placement, served: ServedVersion, *, pinned: bool) -> dict[str, Any]:
    annotations = {"kubetune.dev/output": served.output_uri, "kubetune.dev/channel": served.channel}
    if pinned:
        annotations["kubetune.dev/version"] = served.version
    return {
        "name": placement.name,
        **({"namespace": placement.namespace} if placement.namespace else {}),
        "labels": {"app.kubernetes.io/name": placement.name, "app.kubernetes.io/managed-by": "kubetune"},
        "annotations": annotations,
    }


def _storage_env(placement: Placement) -> list[dict[str, Any]]:
    env: list[dict[str, Any]] = []
    if placement.secret:
        for variable, key in (("AWS_ACCESS_KEY_ID", "access-key-id"), ("AWS_SECRET_ACCESS_KEY", "secret-access-key")):
            env.append({"name": variable, "valueFrom": {"secretKeyRef": {"name": placement.secret, "key": key}}})
    if placement.endpoint:
        env.append({"name": "AWS_ENDPOINT_URL_S3", "value": placement.endpoint})
    if placement.region:  # unset: the fetch's own default decides, once
        env.append({"name": "AWS_REGION", "value": placement.region})
    env.append({"name": "HOME", "value": "/tmp"})
    return env


RESTRICTED: dict[str, Any] = {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}}


def _deployment(server: str, served: ServedVersion, placement: Placement, gguf: str | None) -> dict[str, Any]:
    folder = ARTIFACT[server]
    fetch = {
        "name": "fetch",
        "image": TRAINER_IMAGE,
        "command": [
            "kubetune",
            "fetch",
            served.output_uri,
            "--channel",
            served.channel,
            "--artifact",
            folder,
            "--dest",
            f"{MODELS}/current",
        ],
        "env": _storage_env(placement),
        "resources": {"requests": {"cpu": "500m", "memory": "512Mi"}, "limits": {"memory": "1Gi"}},
        "securityContext": {**RESTRICTED, "readOnlyRootFilesystem": True},
        "volumeMounts": [{"name": "models", "mountPath": MODELS}, {"name": "tmp", "mountPath": "/tmp"}],
    }
    port = PORT[server]
    if server == "vllm":
        container: dict[str, Any] = {
            "name": "vllm",
            "image": VLLM_IMAGE,
            "args": ["--model", f"{MODELS}/current", "--served-model-name", placement.name, "--port", str(port)],
            "readinessProbe": {"httpGet": {"path": "/health", "port": "http"}, "periodSeconds": 10},
            "resources": {
                "requests": {"cpu": "2", "memory": "8Gi", "nvidia.com/gpu": "1"},
                "limits": {"memory": "8Gi", "nvidia.com/gpu": "1"},
            },
        }
    else:
        container = {
            "name": "llama-cpp",
            "image": LLAMA_CPP_IMAGE,
            "args": [
                "-m",
                f"{MODELS}/current/{gguf}",
                "--host",
                "0.0.0.0",
                "--port",
                str(port),
                "--alias",
                placement.name,
            ],
            "readinessProbe": {"httpGet": {"path": "/health", "port": "http"}, "periodSeconds": 10},
            "resources": {"requests": {"cpu": "2", "memory": "2Gi"}, "limits": {"memory": "4Gi"}},
        }
    container |= {
        "ports": [{"name": "http", "containerPort": port}],
        "securityContext": RESTRICTED,
        "volumeMounts": [{"name": "models", "mountPath": MODELS, "readOnly": True}],
    }
    labels = {"app.kubernetes.io/name": placement.name}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": _metadata(placement, served, pinned=False),
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": {"labels": labels},
                "spec": {
                    "automountServiceAccountToken": False,
                    "securityContext": {
                        "runAsNonRoot": True,
                        "runAsUser": 1000,
                        "runAsGroup": 1000,
                        "fsGroup": 1000,
                        "seccompProfile": {"type": "RuntimeDefault"},
                    },
                    "initContainers": [fetch],
                    "containers": [container],
                    "volumes": [
                        {"name": "models", "emptyDir": {"sizeLimit": "20Gi"}},
                        {"name": "tmp", "emptyDir": {"sizeLimit": "1Gi"}},
                    ],
                },
            },
        },
    }


def _service(server: str, placement: Placement) -> dict[str, Any]:
    metadata = {"name": placement.name, **({"namespace": placement.namespace} if placement.namespace else {})}
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": metadata,
        "spec": {
            "selector": {"app.kubernetes.io/name": placement.name},
            "ports": [{"name": "http", "port": PORT[server], "targetPort": "http"}],
        },
    }


def _inference_service(served: ServedVersion, placement: Placement) -> dict[str, Any]:
    return {
        "apiVersion": "serving.kserve.io/v1beta1",
        "kind": "InferenceService",
        "metadata": _metadata(placement, served, pinned=True),
        "spec": {
            "predictor": {
                "model": {
                    "modelFormat": {"name": "huggingface"},
                    "storageUri": join_uri(served.version_uri, "merged"),
                    "args": [f"--model_name={placement.name}"],
                    "resources": {
                        "requests": {"cpu": "2", "memory": "8Gi", "nvidia.com/gpu": "1"},
                        "limits": {"memory": "8Gi", "nvidia.com/gpu": "1"},
                    },
                },
            }
        },
    }


def _modelfile(served: ServedVersion, placement: Placement, gguf: str) -> str:
    return (
        f"# {placement.name}: {served.version_uri} (channel {served.channel} of {served.output_uri}).\n"
        "# Put this file in the folder the GGUF is fetched to, then create the model:\n"
        f"#   kubetune fetch {served.output_uri} --channel {served.channel} --artifact gguf --dest DIR\n"
        f"#   ollama create {placement.name} -f DIR/Modelfile\n"
        "# The chat template comes from the GGUF file's own metadata.\n"
        f"FROM ./{gguf}\n"
    )
