"""Fixtures shared by the whole suite: a real S3 server on loopback and a tiny real model."""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.azurite import ACCOUNT as AZURITE_ACCOUNT
from tests.azurite import AzuriteServer
from tests.gcsdouble import GcsServer
from tests.hubdouble import HubServer
from tests.kubeapi.cluster import CLUSTERWIDE, TestCluster
from tests.kubeapi.runner import ApiServerThread
from tests.mlflowserver import MlflowServer
from tests.ociregistry import RegistryServer
from tests.s3double import S3Server

# Tests never reach a model hub; everything is offline.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Under pytest-xdist (scripts/test.sh) the workers share the machine's cores: each worker's torch, in this
# process and in the trainer processes it starts, gets its share. Two workers each running torch on every
# core measured 2-3 times slower on real-model tests than one worker alone (spinning threads, not work).
if workers := int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "0")):
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, len(os.sched_getaffinity(0)) // workers)))


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Files holding a slow test go first, the one allowed the longest first of all, each file kept whole:
    under two workers (scripts/test.sh) a long test starts at once, not when the other worker has run out."""
    slow_files: dict[Path, float] = {}
    for item in items:
        if item.get_closest_marker("slow"):
            timeout = item.get_closest_marker("timeout")
            allowed = float(timeout.args[0]) if timeout and timeout.args else 0.0
            slow_files[item.path] = max(allowed, slow_files.get(item.path, 0.0))
    items.sort(key=lambda item: (item.path not in slow_files, -slow_files.get(item.path, 0.0)))


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="session")
def s3_server() -> Iterator[S3Server]:
    """A moto S3 server on loopback (real HTTP, reached through boto3 like production) that
    refuses a body not matching its SHA-256 checksum, as S3 does (tests/s3double.py)."""
    server = S3Server(_free_port()).start()
    previous = {k: os.environ.get(k) for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_REGION")}
    os.environ.update(AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing", AWS_REGION="us-east-1")
    try:
        yield server
    finally:
        server.stop()
        for key, value in previous.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@pytest.fixture(scope="session")
def s3_endpoint(s3_server: S3Server) -> str:
    return s3_server.endpoint


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MlflowServer]:
    """A real MLflow server (tracking and registry) on loopback, from .venv-mlflow (tests/mlflowserver.py)."""
    server = MlflowServer(tmp_path_factory.mktemp("mlflow"), _free_port())
    try:
        yield server.wait_until_ready()
    finally:
        server.stop()


@pytest.fixture(scope="session")
def mlflow_auth_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MlflowServer]:
    """A real MLflow server behind its own basic-auth app: a request without a known login gets 401."""
    server = MlflowServer(tmp_path_factory.mktemp("mlflow-auth"), _free_port(), auth=True)
    try:
        yield server.wait_until_ready()
    finally:
        server.stop()


@pytest.fixture()
def hub_server(monkeypatch: pytest.MonkeyPatch) -> Iterator[HubServer]:
    """An empty Hugging Face Hub on loopback (tests/hubdouble.py), reached through huggingface_hub's
    own client like production; each test pushes the repositories it needs. The suite runs offline
    (HF_HUB_OFFLINE above); a test with this Hub is online, in this process (huggingface_hub read the
    variable at import) and in the processes it starts, as a pod of a job that reads hf:// is."""
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    server = HubServer(_free_port()).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture()
def s3_bucket(s3_endpoint: str) -> str:
    """A fresh, empty bucket per test (its name is returned)."""
    import boto3

    name = f"test-{uuid.uuid4().hex[:12]}"
    boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1").create_bucket(Bucket=name)
    return name


@pytest.fixture()
def s3_spec(s3_endpoint: str):  # type: ignore[no-untyped-def]
    from kubetune.api.v1alpha1 import S3Spec

    return S3Spec(endpoint=s3_endpoint, region="us-east-1")


@pytest.fixture()
def apiserver(tmp_path: Path) -> Iterator[ApiServerThread]:
    """The test Kubernetes API server (tests/kubeapi) on loopback, over TLS, empty but for its bootstrap policy."""
    server = ApiServerThread(tmp_path / "apiserver").start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def installed_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestCluster]:
    """One test API server installed with the chart (cluster-wide, no Kueue), shared by the tests that
    only need a tenant to create what a user would: the corpora, the lifecycle commands."""
    folder = tmp_path_factory.mktemp("installed-cluster")
    server = ApiServerThread(folder / "apiserver").start()
    try:
        yield TestCluster(server, folder / "cluster", CLUSTERWIDE, kueue=False)
    finally:
        server.stop()


@pytest.fixture(scope="session")
def tokenizer_dir() -> Path:
    """The built-in model's real tokenizer (chat template included), cached after first use."""
    from kubetune_trainer.models.builtin import builtin_tokenizer_dir

    return builtin_tokenizer_dir()


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory, tokenizer_dir: Path) -> Path:
    """A tiny Llama (2 layers, hidden 64) with the real tokenizer, saved as safetensors.

    Real transformers/peft/bitsandbytes code runs on it in milliseconds per step. Hidden
    sizes are multiples of 64 so bitsandbytes' 4-bit blocks fit.
    """
    import shutil

    import torch
    from transformers import AutoTokenizer, GenerationConfig, LlamaConfig, LlamaForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    model = LlamaForCausalLM(config)
    model.generation_config = GenerationConfig(
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        do_sample=False,
    )
    out = tmp_path_factory.mktemp("tiny-model")
    model.save_pretrained(out, safe_serialization=True)
    for item in tokenizer_dir.iterdir():
        if item.is_file():
            shutil.copy(item, out / item.name)
    return out


@pytest.fixture(scope="session")
def gcs_server() -> Iterator[GcsServer]:
    """Cloud Storage on loopback: gcp-storage-emulator behind service-account OAuth and generation
    preconditions, as Cloud Storage answers (tests/gcsdouble.py); reached through google-cloud-storage."""
    server = GcsServer(_free_port()).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture()
def gcs_bucket(gcs_server: GcsServer) -> str:
    """A fresh, empty Cloud Storage bucket per test (its name is returned)."""
    name = f"test-{uuid.uuid4().hex[:12]}"
    gcs_server.create_bucket(name)
    return name


@pytest.fixture(scope="session")
def azurite(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AzuriteServer]:
    """Azure Blob Storage on loopback: Azurite, Microsoft's emulator (tests/azurite.py)."""
    server = AzuriteServer(tmp_path_factory.mktemp("azurite"), _free_port())
    try:
        yield server.wait_until_ready()
    finally:
        server.stop()


@pytest.fixture()
def azure_container(azurite: AzuriteServer) -> str:
    """A fresh, empty container per test, as the az:// URI of its root (az://account/container)."""
    name = f"test-{uuid.uuid4().hex[:12]}"
    azurite.create_container(name)
    return f"az://{AZURITE_ACCOUNT}/{name}"


@pytest.fixture(scope="session")
def oci_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RegistryServer]:
    """An OCI registry on loopback behind basic auth: CNCF Distribution (tests/ociregistry.py)."""
    server = RegistryServer(tmp_path_factory.mktemp("registry"), _free_port())
    try:
        yield server.wait_until_ready()
    finally:
        server.stop()
