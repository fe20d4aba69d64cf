"""The ``kubetune`` command line as users and pods call it."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.trainer.jobs import write_dataset, write_job

KUBETUNE = str(Path(sys.executable).parent / "kubetune")


def preflight(
    tmp_path: Path, tiny_model_dir: Path, env: dict[str, str] | None = None, **spec: Any
) -> subprocess.CompletedProcess[str]:
    """``kubetune preflight`` as the pre-flight pod runs it, on a 32-row dataset and the tiny model."""
    job = write_job(
        tmp_path / "job.yaml",
        model_dir=tiny_model_dir,
        data=write_dataset(tmp_path / "data.jsonl", 32),
        **{"output": f"file://{tmp_path}/out/", **spec},
    )
    return subprocess.run(
        [KUBETUNE, "preflight", "--job", str(job), "--workdir", str(tmp_path / "work")],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})},
    )


def test_preflight_refuses_a_job_that_cannot_fit_the_declared_gpu(tmp_path: Path, tiny_model_dir: Path) -> None:
    # gpuMemory reaches the pre-flight in the job file only
    result = preflight(tmp_path, tiny_model_dir, method={"type": "full"}, resources={"gpus": 1, "gpuMemory": "64Mi"})
    assert result.returncode == 2, result.stderr[-2000:]
    assert "pre-flight failed" in result.stderr and "exceeds the 0.1 GiB" in result.stderr
    assert not (tmp_path / "out").exists(), "nothing is published by a pre-flight"


def test_validate_names_the_field(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "apiVersion: kubetune.dev/v1alpha1\nkind: FineTuneJob\nmetadata: {name: x}\nspec:\n  dataset: {sources: [{uri: 'ftp://x'}]}\n  output: {uri: 's3://models/x/'}\n"
    )
    result = subprocess.run([KUBETUNE, "validate", str(bad)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert "spec.dataset.sources[0].uri" in result.stderr


def test_an_unusable_ca_bundle_is_a_configuration_error_naming_the_field(tmp_path: Path, tiny_model_dir: Path) -> None:
    """Not a retryable storage failure: exit 2, and the message names spec.s3.caBundle."""
    not_pem = tmp_path / "ca.crt"
    not_pem.write_text("this is not a certificate\n")
    for bundle in (not_pem, tmp_path / "missing.crt"):
        result = preflight(
            tmp_path,
            tiny_model_dir,
            {"KUBETUNE_S3_CA_BUNDLE": str(bundle)},
            output="s3://team-models/tiny/",
            dataset={"sources": [{"uri": "s3://team-data/data.jsonl"}]},  # the first read goes to S3
            s3={"endpoint": "https://minio.example:9000", "caBundle": {"name": "ca"}},
        )
        assert result.returncode == 2, result.stderr[-2000:]
        assert "spec.s3.caBundle" in result.stderr and str(bundle) in result.stderr
        assert "Traceback" not in result.stderr


def test_preflight_of_a_cpu_job_checks_the_memory_its_training_pod_gets(tmp_path: Path, tiny_model_dir: Path) -> None:
    """resources.memory, not the pre-flight pod's own limit, is what CPU training runs in."""
    result = preflight(tmp_path, tiny_model_dir, resources={"gpus": 0, "memory": "16Mi"}, storage={"shmSize": "16Mi"})
    assert result.returncode == 2, result.stderr[-2000:]
    assert "pre-flight failed" in result.stderr and "exceeds the 0.0 GiB" in result.stderr, result.stderr[-2000:]


def test_an_output_bucket_without_credentials_is_a_storage_error_not_a_traceback(
    tmp_path: Path, tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The pre-flight looks for cached base answers beside the output: with no credentials anywhere
    (no env, no files, no instance metadata) that lookup is a cache miss that says which object it
    could not check, not a traceback (it was botocore's NoCredentialsError, uncaught)."""
    for name in [k for k in os.environ if k.startswith("AWS_")]:
        monkeypatch.delenv(name)
    nowhere = {
        "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "none"),
        "AWS_CONFIG_FILE": str(tmp_path / "none"),
        "AWS_EC2_METADATA_DISABLED": "true",
        "KUBETUNE_CACHE": str(tmp_path / "cache"),  # nothing cached locally: the lookup goes to S3
    }
    result = preflight(tmp_path, tiny_model_dir, nowhere, output="s3://team-models/tiny/")
    assert "Traceback" not in result.stderr, result.stderr[-2000:]
    assert result.returncode == 0, result.stderr[-2000:]
    assert "cannot read the cached s3://team-models/tiny/.kubetune/general-answers/" in result.stderr
    assert "cannot check existence: Unable to locate credentials" in result.stderr


def test_s3_credentials_are_read_from_the_files_the_operator_mounts(
    tmp_path: Path,
    tiny_model_dir: Path,
    s3_endpoint: str,
    s3_bucket: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The pod's only credentials are the Secret's keys as files (no AWS_* variables): with them the
    pre-flight reads its dataset from S3; a key the Secret lacks, or an empty one, is named at the
    field that lists it (the operator never sees the Secret's keys, so this is where it is checked).
    Through the CLI's entry point in this process (the pod runs the same ``main``), to spare three
    interpreter starts."""
    import boto3

    from kubetune_trainer.cli import main as kubetune

    data = write_dataset(tmp_path / "data.jsonl", 32)
    boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1").upload_file(
        str(data), s3_bucket, "data.jsonl"
    )
    secret = {"name": "s3-creds", "accessKeyIdKey": "id", "secretAccessKeyKey": "key", "sessionTokenKey": "token"}
    job = write_job(
        tmp_path / "job.yaml",
        model_dir=tiny_model_dir,
        data=data,
        output=f"file://{tmp_path}/out/",
        dataset={"sources": [{"uri": f"s3://{s3_bucket}/data.jsonl"}], "replay": {"enabled": False}},
        s3={"endpoint": s3_endpoint, "region": "us-east-1", "credentialsSecret": secret},
    )
    mounted = tmp_path / "credentials"
    mounted.mkdir()
    caplog.set_level(logging.INFO)
    for name in [name for name in os.environ if name.startswith("AWS_")]:
        monkeypatch.delenv(name)
    for name, value in {
        "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "none"),
        "AWS_CONFIG_FILE": str(tmp_path / "none"),
        "AWS_EC2_METADATA_DISABLED": "true",
        "KUBETUNE_S3_CREDENTIALS_DIR": str(mounted),
        "KUBETUNE_CACHE": str(tmp_path / "cache"),
    }.items():
        monkeypatch.setenv(name, value)

    def run_preflight() -> tuple[int, str]:
        code = kubetune(["preflight", "--job", str(job), "--workdir", str(tmp_path / "work")])
        return code, capsys.readouterr().err

    (mounted / "access-key-id").write_text("testing")
    (mounted / "secret-access-key").write_text("testing\n")
    code, missing = run_preflight()
    assert code == 2, missing[-2000:]
    assert "spec.s3.credentialsSecret.sessionTokenKey: Secret 's3-creds' has no key 'token'" in missing
    (mounted / "session-token").write_text("")
    code, empty = run_preflight()
    assert code == 2 and "sessionTokenKey: key 'token' of Secret 's3-creds' is empty" in empty
    (mounted / "session-token").write_text("session")
    code, passed = run_preflight()
    assert code == 0, passed[-2000:]
    assert "pre-flight passed" in caplog.text  # logged (pytest holds the log handlers in this process)
    assert "Traceback" not in missing + empty + passed + caplog.text
