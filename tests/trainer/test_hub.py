"""hf:// sources: a base model and datasets from the Hugging Face Hub, read with huggingface_hub's own
client from the suite's local Hub (tests/hubdouble.py), pinned to a commit, each file checked."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from kubetune_trainer.errors import ConfigurationError
from kubetune_trainer.hub import HubClient
from kubetune_trainer.models.loading import ModelSourceError, resolve_model_dir
from kubetune_trainer.storage import ObjectStore, StorageError
from tests.hubdouble import HubServer
from tests.trainer.jobs import kubetune_process, write_dataset, write_job

TOKEN = "hf_readertoken"


def _model_files(model_dir: Path) -> dict[str, bytes]:
    files = {item.name: item.read_bytes() for item in model_dir.iterdir() if item.is_file()}
    # What a Hub repository often holds beside the weights, none of which a run may fetch: pickled
    # weights, code, other formats' copies in a subfolder.
    files["pytorch_model.bin"] = b"pickled weights"
    files["modeling_custom.py"] = b"import os\n"
    files["onnx/config.json"] = b"{}"
    return files


def _store(hub_server: HubServer, tmp_path: Path, token: str | None = None) -> ObjectStore:
    token_file = None
    if token is not None:
        token_file = tmp_path / "token"
        token_file.write_text(token + "\n")  # as a Secret key often holds it: with a newline
    return ObjectStore(hub=HubClient(hub_server.endpoint, token_file=token_file, cache_dir=tmp_path / "hf"))


def test_a_job_trains_on_a_hub_model_and_dataset_pinned_to_their_commits(
    tmp_path: Path, tiny_model_dir: Path, hub_server: HubServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    hub = hub_server.hub
    model_commit = hub.push("model", "tiny-org/tiny-llama", _model_files(tiny_model_dir))
    rows = write_dataset(tmp_path / "rows.jsonl").read_bytes()
    data_commit = hub.push("dataset", "tiny-org/tickets", {"data/train.jsonl": rows, "README.md": b"# tickets\n"})
    job = write_job(
        tmp_path / "job.yaml",
        model_dir=tiny_model_dir,
        data=tmp_path / "unused.jsonl",
        output=f"file://{tmp_path}/published",
        baseModel={"uri": "hf://tiny-org/tiny-llama"},
        dataset={"sources": [{"uri": "hf://datasets/tiny-org/tickets@main/data/"}]},
    )
    monkeypatch.setenv("HF_ENDPOINT", hub_server.endpoint)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("KUBETUNE_CACHE", str(tmp_path / "cache"))

    result = kubetune_process("run", str(job), tmp_path)

    assert result.returncode == 0, result.stderr[-3000:]
    (manifest_path,) = (tmp_path / "runs").glob("*/v*/manifest.json")
    manifest = json.loads(manifest_path.read_text())
    # The lineage names the exact commits that trained, not "main".
    assert manifest["baseModel"]["uri"] == f"hf://tiny-org/tiny-llama@{model_commit}"
    assert manifest["dataset"]["sources"] == [f"hf://datasets/tiny-org/tickets@{data_commit}/data/train.jsonl"]
    fetched = sorted(path.rsplit("/", 1)[-1] for path in hub.downloads())
    assert "pytorch_model.bin" not in fetched and "modeling_custom.py" not in fetched, fetched
    assert "model.safetensors" in fetched and "train.jsonl" in fetched and "README.md" not in fetched
    assert not any("/onnx/" in path for path in hub.downloads())


def test_a_revision_is_resolved_once_and_a_commit_stays_what_it_was(
    tmp_path: Path, tiny_model_dir: Path, hub_server: HubServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KUBETUNE_CACHE", str(tmp_path / "cache"))
    hub = hub_server.hub
    first = hub.push("model", "org/m", _model_files(tiny_model_dir))
    store = _store(hub_server, tmp_path)
    assert store.pinned("hf://org/m") == f"hf://org/m@{first}"
    files = _model_files(tiny_model_dir)
    files["config.json"] = files["config.json"].replace(b'"num_hidden_layers": 2', b'"num_hidden_layers": 1')
    second = hub.push("model", "org/m", files)
    # The same run keeps reading the commit it started with; a new run sees the branch move.
    assert store.pinned("hf://org/m") == f"hf://org/m@{first}"
    assert _store(hub_server, tmp_path).pinned("hf://org/m") == f"hf://org/m@{second}"
    old = resolve_model_dir(f"hf://org/m@{first}", store)
    assert json.loads((old / "config.json").read_text())["num_hidden_layers"] == 2


def test_a_file_that_is_not_the_one_listed_is_refused(
    tmp_path: Path, tiny_model_dir: Path, hub_server: HubServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KUBETUNE_CACHE", str(tmp_path / "cache"))
    hub = hub_server.hub
    hub.push("model", "org/m", _model_files(tiny_model_dir))
    hub.push("dataset", "org/d", {"train.jsonl": b'{"text": "a"}\n'})
    hub.corrupt("model", "org/m", "main", "model.safetensors")  # an LFS file: checked by SHA-256
    hub.corrupt("dataset", "org/d", "main", "train.jsonl")  # a git file: checked by its blob id
    store = _store(hub_server, tmp_path)
    with pytest.raises(
        ModelSourceError, match=r"model.safetensors: the downloaded file is not the one listed: .*SHA-256"
    ):
        resolve_model_dir("hf://org/m", store)
    with pytest.raises(StorageError, match=r"train.jsonl: the downloaded file is not the one listed: .*git blob id"):
        store.read_bytes("hf://datasets/org/d/train.jsonl")
    assert not (tmp_path / "cache" / "hub-models").exists() or not any(
        (tmp_path / "cache" / "hub-models").rglob(".complete")
    )


@pytest.mark.parametrize(
    ("repo_options", "token", "message"),
    [
        (
            {"private": True},
            None,
            r"repository not found, or private and not readable with the token given \(spec.hub.tokenSecret\)",
        ),
        ({"gated": True}, None, r"the repository is gated: accept its terms .* spec.hub.tokenSecret"),
        ({"gated": True}, "hf_othertoken", r"the repository is gated"),
        ({}, "hf_unknowntoken", r"refused the token in spec.hub.tokenSecret"),
    ],
    ids=["private-anonymous", "gated-anonymous", "gated-token-without-access", "unknown-token"],
)
def test_what_the_hub_refuses_is_said_in_the_users_terms(
    tmp_path: Path, hub_server: HubServer, repo_options: dict[str, bool], token: str | None, message: str
) -> None:
    hub = hub_server.hub
    hub.tokens.update({TOKEN, "hf_othertoken"})
    hub.push("model", "org/m", {"config.json": b"{}", "model.safetensors": b"w"}, readers={TOKEN}, **repo_options)
    with pytest.raises(StorageError, match=message):
        _store(hub_server, tmp_path, token).pinned("hf://org/m")
    if repo_options:  # the reader's token opens it
        assert _store(hub_server, tmp_path, TOKEN).pinned("hf://org/m").startswith("hf://org/m@")
    sent = {token for _, _, token in hub.requests}
    assert sent <= {None, TOKEN, "hf_othertoken", "hf_unknowntoken"}


def test_missing_revision_file_and_pickled_only_weights(tmp_path: Path, hub_server: HubServer) -> None:
    hub = hub_server.hub
    hub.push("model", "org/pickled", {"config.json": b"{}", "pytorch_model.bin": b"p", "tokenizer.json": b"{}"})
    hub.push("dataset", "org/d", {"train.jsonl": b"{}\n"})
    store = _store(hub_server, tmp_path)
    with pytest.raises(
        ModelSourceError, match=r"no \*.safetensors weights \(found pytorch_model.bin: pickled weights are refused\)"
    ):
        resolve_model_dir("hf://org/pickled", store)
    with pytest.raises(StorageError, match=r"hf://org/pickled@v9: no such revision"):
        store.pinned("hf://org/pickled@v9")
    assert store.list("hf://datasets/org/d/missing/") == []
    with pytest.raises(StorageError, match=r"no such file"):
        store.read_bytes("hf://datasets/org/d/missing.jsonl")
    with pytest.raises(StorageError, match=r"hf:// is read only here"):
        store.write_bytes("hf://datasets/org/d/new.jsonl", b"{}")


def test_an_empty_token_file_is_the_fields_error(tmp_path: Path, hub_server: HubServer) -> None:
    hub_server.hub.push("model", "org/m", {"config.json": b"{}", "model.safetensors": b"w"})
    with pytest.raises(ConfigurationError, match=r"spec.hub.tokenSecret.key: the token is empty"):
        _store(hub_server, tmp_path, "").pinned("hf://org/m")


def test_a_hub_model_the_job_may_not_read_fails_the_run_at_its_field_not_as_a_retry(
    tmp_path: Path, tiny_model_dir: Path, hub_server: HubServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    from kubetune.api.contract import EXIT_CONFIG

    hub_server.hub.push("model", "org/private", _model_files(tiny_model_dir), private=True)
    rows = write_dataset(tmp_path / "rows.jsonl")
    job = write_job(
        tmp_path / "job.yaml",
        model_dir=tiny_model_dir,
        data=rows,
        output=f"file://{tmp_path}/out",
        baseModel={"uri": "hf://org/private"},
    )
    monkeypatch.setenv("HF_ENDPOINT", hub_server.endpoint)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("KUBETUNE_CACHE", str(tmp_path / "cache"))

    result = kubetune_process("run", str(job), tmp_path)

    assert result.returncode == EXIT_CONFIG, result.stderr[-3000:]
    assert "spec.baseModel.uri: hf://org/private: repository not found" in result.stderr
    assert "Traceback" not in result.stderr
