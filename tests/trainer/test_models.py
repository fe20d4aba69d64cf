"""Base model sources: only Hugging Face folders with safetensors weights are accepted."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from kubetune.api.v1alpha1 import S3Spec
from kubetune_trainer.errors import ConfigurationError
from kubetune_trainer.models.loading import ModelSourceError, resolve_model_dir
from kubetune_trainer.storage import ObjectStore


def test_pickled_weights_are_refused(tmp_path: Path, tiny_model_dir: Path) -> None:
    folder = tmp_path / "pickled"
    shutil.copytree(tiny_model_dir, folder)
    for weights in folder.glob("*.safetensors"):
        weights.rename(folder / "pytorch_model.bin")
    with pytest.raises(
        ModelSourceError,
        match=r"spec.baseModel.uri: .*no \*.safetensors weights.*pytorch_model.bin: pickled weights are refused",
    ):
        resolve_model_dir(f"file://{folder}", ObjectStore())
    assert issubclass(ModelSourceError, ConfigurationError), "a bad model source fails fast (exit 2)"


def test_model_from_s3_prefix_is_downloaded_and_cached(
    tmp_path: Path, tiny_model_dir: Path, s3_spec: S3Spec, s3_bucket: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KUBETUNE_CACHE", str(tmp_path / "cache"))
    store = ObjectStore(s3_spec)
    store.upload_tree(tiny_model_dir, f"s3://{s3_bucket}/models/tiny")
    local = resolve_model_dir(f"s3://{s3_bucket}/models/tiny/", store)
    assert (local / "config.json").exists() and any(local.glob("*.safetensors"))
    assert resolve_model_dir(f"s3://{s3_bucket}/models/tiny/", store) == local


def test_unknown_builtin_and_missing_folder(tmp_path: Path) -> None:
    with pytest.raises(ModelSourceError, match="unknown built-in model"):
        resolve_model_dir("builtin://gpt-5", ObjectStore())
    with pytest.raises(ModelSourceError, match=r"no config\.json"):
        resolve_model_dir(f"file://{tmp_path}/nothing", ObjectStore())
