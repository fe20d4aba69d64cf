"""Manifests are read as kubectl reads them, and hostile YAML is refused quickly, in bounded memory."""

from __future__ import annotations

import codecs
import json
import subprocess
import time
import tracemalloc
from pathlib import Path
from typing import Any

import pytest

from kubetune.api.manifest import ManifestError, load_manifest
from kubetune.api.yamldoc import MAX_MANIFEST_BYTES, ManifestYamlError, load_documents
from tests.helm.chart import tool
from tests.kubeapi.cluster import CLUSTERWIDE, TestCluster
from tests.kubeapi.runner import ApiServerThread

# Plain scalars where YAML 1.1 (PyYAML), YAML 1.2 and go-yaml v2 (kubectl) disagree, with what kubectl
# sends the API server. Checked against the real kubectl below.
SCALARS: list[tuple[str, Any]] = [
    ("1e-4", 0.0001),
    ("1E3", 1000),
    ("5e-2", 0.05),
    ("0x1F", 31),
    ("0x_1F", 31),
    ("0o17", 15),
    ("017", 15),
    ("08", 8),
    ("09.5", 9.5),
    ("1_000", 1000),
    ("+1", 1),
    ("-0b101", -5),
    ("2.0", 2),
    ("1.", 1),
    (".5", 0.5),
    ("1e21", 1e21),
    ("1e400", "1e400"),
    ("12abc", "12abc"),
    (".e3", ".e3"),
    ("0b", "0b"),
    ("1:30", "1:30"),
    ("2024-01-01", "2024-01-01"),
    ("2001-12-14t21:59:43.10-05:00", "2001-12-14t21:59:43.10-05:00"),
    ("yes", True),
    ("Yes", True),
    ("y", True),
    ("ON", True),
    ("N", False),
    ("off", False),
    ("no", False),
    ("~", None),
    ("null", None),
    ("NULL", None),
    ("'yes'", "yes"),
    ('"1e-4"', "1e-4"),
]


KUBECTL_FLAGS = ("--validate=false", "-o", "json")


def loaded(text: str | bytes) -> list[Any]:
    return [document.data for document in load_documents(text.encode() if isinstance(text, str) else text)]


def table_document() -> str:
    items = "\n".join(f"    - {text}" for text, _ in SCALARS)
    return (
        "apiVersion: kubetune.dev/v1alpha1\nkind: FineTuneJob\nmetadata: {name: t, namespace: default}\n"
        f"spec:\n  values:\n{items}\n"
    )


@pytest.mark.parametrize(("text", "value"), SCALARS, ids=[text for text, _ in SCALARS])
def test_plain_scalars_resolve_as_kubectl_resolves_them(text: str, value: Any) -> None:
    (document,) = loaded(f"a: {text}\n")
    assert document["a"] == value and type(document["a"]) is type(value)


def test_the_scalar_table_is_what_the_real_kubectl_sends(tmp_path: Path) -> None:
    """One run of kubectl (v1.37) against the test API server, client-side dry run: its JSON is the table's."""
    server = ApiServerThread(tmp_path / "apiserver").start()
    try:
        cluster = TestCluster(server, tmp_path / "cluster", CLUSTERWIDE, kueue=False)
        manifest = tmp_path / "table.yaml"
        manifest.write_text(table_document())
        kubectl = [tool("kubectl"), "--kubeconfig", str(cluster.tenant.kubeconfig)]
        result = subprocess.run(
            [*kubectl, "create", "--dry-run=client", *KUBECTL_FLAGS, "-f", str(manifest)],
            capture_output=True,
            text=True,
            timeout=60,
        )
    finally:
        server.stop()
    assert result.returncode == 0, result.stderr
    sent = json.loads(result.stdout)["spec"]["values"]
    assert sent == [value for _, value in SCALARS]
    assert loaded(table_document())[0]["spec"]["values"] == sent


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("a: .nan\n", "NaN and infinity"),
        ("a: -.inf\n", "NaN and infinity"),
        ("a: 1\na: 2\n", "line 2, column 1: duplicate key 'a'"),
        ("a: &x\n  b: *x\n", "recursive"),
        ("? [1, 2]\n: x\n", "plain value"),
        ("~: x\n", "cannot be null"),
        ("a: !!python/name:os.system\n", "cannot be expressed in JSON"),
        ("a: !!binary aGk=\n", "cannot be expressed in JSON"),
        ("a: !!int twelve\n", "not a valid int"),
        ("a: [\n", "not valid YAML"),
        ("a: " + "[" * 200 + "]" * 200 + "\n", "nested more than 100"),
    ],
)
def test_yaml_that_has_no_json_form_is_refused_with_its_line(text: str, fragment: str) -> None:
    with pytest.raises(ManifestYamlError, match=None) as raised:
        loaded(text)
    assert fragment in str(raised.value)


def test_merge_keys_and_modest_anchors_work() -> None:
    (document,) = loaded("base: &b {cpu: '2', memory: 8Gi}\nresources:\n  <<: *b\n  memory: 16Gi\n")
    assert document["resources"] == {"cpu": "2", "memory": "16Gi"}


def billion_laughs(levels: int, width: int = 10) -> str:
    text = "a0: &a0 [" + ", ".join(["lol"] * width) + "]\n"
    for level in range(1, levels):
        text += f"a{level}: &a{level} [" + ", ".join([f"*a{level - 1}"] * width) + "]\n"
    return text


def test_an_alias_bomb_is_refused_in_well_under_a_second_and_200_mb() -> None:
    tracemalloc.start()
    started = time.perf_counter()
    with pytest.raises(ManifestYamlError, match="alias"):
        loaded(billion_laughs(9))
    elapsed = time.perf_counter() - started
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert elapsed < 0.5 and peak < 20 * 2**20, (elapsed, peak)


def test_a_manifest_over_the_etcd_limit_is_refused_before_parsing() -> None:
    with pytest.raises(ManifestYamlError, match=r"1\.5 MiB"):
        loaded(b"a: " + b"x" * MAX_MANIFEST_BYTES)


@pytest.mark.parametrize("encoding", ["utf-8-sig", "utf-16", "utf-16-be", "utf-32", "utf-32-be"])
def test_unicode_with_a_byte_order_mark_is_decoded(encoding: str) -> None:
    text = "name: café\n"
    data = text.encode(encoding)
    if encoding.endswith("-be"):
        bom = codecs.BOM_UTF16_BE if "16" in encoding else codecs.BOM_UTF32_BE
        data = bom + data
    assert loaded(data) == [{"name": "café"}]


def test_a_byte_that_is_not_utf8_is_refused_with_line_and_column() -> None:
    with pytest.raises(ManifestYamlError) as raised:
        loaded(b"a: 1\nname: caf\xe9\n")
    assert (raised.value.line, raised.value.column) == (2, 10)
    assert "0xe9" in str(raised.value)


def job(extra: str = "", name: str = "job") -> str:
    return (
        f"apiVersion: kubetune.dev/v1alpha1\nkind: FineTuneJob\nmetadata: {{name: {name}}}\n"
        "spec:\n  dataset: {sources: [{uri: 's3://team-data/x.jsonl'}]}\n  output: {uri: 's3://team-models/x/'}\n"
        + extra
    )


def test_exactly_one_finetunejob_is_read_and_other_kinds_are_ignored(tmp_path: Path) -> None:
    path = tmp_path / "job.yaml"
    path.write_text("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: c}\n---\n" + job())
    assert load_manifest(path).metadata["name"] == "job"
    path.write_text(job() + "---\n" + job(name="second"))
    with pytest.raises(ManifestError, match=r"exactly one FineTuneJob document, found 2 \(lines 1, 8\)"):
        load_manifest(path)
    path.write_text("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: c}\n")
    with pytest.raises(ManifestError, match="found 0"):
        load_manifest(path)


def test_a_yaml_error_names_the_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "job.yaml"
    path.write_text(job("  method: {type: lora\n"))
    with pytest.raises(ManifestError) as raised:
        load_manifest(path)
    assert raised.value.where.startswith(f"{path}:8:") and "not valid YAML" in str(raised.value)


def test_an_unreadable_file_is_a_manifest_error(tmp_path: Path) -> None:
    with pytest.raises(ManifestError, match="cannot read"):
        load_manifest(tmp_path / "missing.yaml")
    with pytest.raises(ManifestError, match="cannot read"):
        load_manifest(tmp_path)
