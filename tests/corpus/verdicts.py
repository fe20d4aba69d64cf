"""The verdicts a corpus file gets on each path: what it expects, what the CLI and the API server say."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from kubernetes.client.exceptions import ApiException

from kubetune.api.yamldoc import ManifestYamlError, load_documents
from kubetune_trainer.cli import main as kubetune
from tests.kubeapi.cluster import Identity

EXIT_CONFIG = 2
NAMESPACE = "default"


@dataclass(frozen=True)
class Expected:
    field: str
    message: str


def expected(path: Path) -> Expected:
    header = path.read_bytes()[:4096].decode("utf-8", errors="replace")
    field = re.search(r"^# expect-field: ?(.*)$", header, re.M)
    message = re.search(r"^# expect-message: ?(.*)$", header, re.M)
    assert field and message, f"{path.name} must name its expect-field and expect-message"
    return Expected(field.group(1).strip(), message.group(1).strip())


def the_object(path: Path, kind: str) -> dict[str, Any] | None:
    """The object of ``kind`` as kubectl would send it, or None when kubectl could not decode the file."""
    try:
        documents = [d.data for d in load_documents(path.read_bytes())]
    except ManifestYamlError:
        return None
    found = [d for d in documents if isinstance(d, dict) and d.get("kind") == kind]
    return found[0] if len(found) == 1 and all(isinstance(d, dict) for d in documents) else None


def api_server_verdict(identity: Identity, document: dict[str, Any], plural: str) -> tuple[int, str]:
    """(HTTP status, the refusal's text with every cause's field) of a create, dry-run, strict."""
    body = (
        {**document, "metadata": {**document["metadata"], "namespace": NAMESPACE}}
        if isinstance(document.get("metadata"), dict)
        else document
    )
    api_version = str(document.get("apiVersion"))
    path = f"/apis/{api_version}/namespaces/{NAMESPACE}/{plural}?fieldValidation=Strict&dryRun=All"
    try:
        identity.call("POST", path, body)
    except ApiException as err:
        return int(err.status), str(err.body)
    return 201, ""


def cli_verdict(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    code = kubetune(args)
    out, err = capsys.readouterr()
    return code, out + err
