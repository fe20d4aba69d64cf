"""Fuzzing the manifest loader through ``kubetune validate``: any input ends in exit 0 or 2, never a
traceback, each in well under a second and 200 MB."""

from __future__ import annotations

import contextlib
import io
import json
import tempfile
import tracemalloc
from pathlib import Path
from typing import Any

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kubetune.api.yamldoc import ManifestYamlError, load_documents
from kubetune_trainer.cli import main as kubetune
from tests.builders import minimal_spec

FUZZ = settings(
    max_examples=500,  # of each property: 1000 cost CI 2.5 minutes for three properties
    deadline=1000,  # milliseconds per example
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    derandomize=True,  # the same examples on every run: CI is reproducible
)
MEMORY_LIMIT = 200 * 2**20
_FOLDER = Path(tempfile.mkdtemp(prefix="kubetune-fuzz-"))


def validate(data: bytes) -> tuple[int, str]:
    """``kubetune validate`` on a file holding ``data``: the exit code and what it printed, with the
    peak memory it allocated checked."""
    path = _FOLDER / "manifest.yaml"
    path.write_bytes(data)
    output = io.StringIO()
    tracemalloc.start()
    try:
        with contextlib.redirect_stdout(output), contextlib.redirect_stderr(output):
            code = kubetune(["validate", str(path)])
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < MEMORY_LIMIT, peak
    return code, output.getvalue()


# Scalars as people write them, including the ones YAML resolvers disagree on.
SCALAR_TEXT = st.sampled_from(
    ["1", "0x1F", "017", "1e-4", ".nan", "-.inf", "yes", "off", "~", "''", "'text'", "2024-01-01", "1:30", "lora"]
) | st.text(alphabet=st.characters(codec="utf-8", exclude_categories=["Cs"]), max_size=12).map(json.dumps)
KEYS = st.sampled_from(
    ["apiVersion", "kind", "metadata", "name", "spec", "dataset", "sources", "uri", "output", "epochs", "<<", "a"]
)


@st.composite
def yaml_with_anchors(draw: st.DrawFn) -> str:
    """A YAML mapping of nested blocks where later values may alias earlier anchors (billion-laughs
    shapes included), written as text so anchors, aliases and merge keys are real YAML."""
    anchors: list[str] = []
    lines: list[str] = []
    for index in range(draw(st.integers(1, 12))):
        key = draw(KEYS)
        kind = draw(st.sampled_from(["scalar", "flow", "alias", "alias-list"]))
        anchor = f"&a{index} " if draw(st.booleans()) else ""
        if kind == "alias" and anchors:
            value = f"*{draw(st.sampled_from(anchors))}"
            anchor = ""
        elif kind == "alias-list" and anchors:
            value = "[" + ", ".join(f"*{draw(st.sampled_from(anchors))}" for _ in range(draw(st.integers(1, 12)))) + "]"
        elif kind == "flow":
            value = "[" + ", ".join(draw(st.lists(SCALAR_TEXT, max_size=6))) + "]"
        else:
            value = draw(SCALAR_TEXT)
        if anchor:
            anchors.append(f"a{index}")
        lines.append(f"{key}: {anchor}{value}")
    return "\n".join(lines) + "\n"


@FUZZ
@given(st.binary(max_size=2048))
def test_arbitrary_bytes_are_a_verdict_not_a_crash(data: bytes) -> None:
    code, output = validate(data)
    assert code in (0, 2) and "Traceback" not in output


@FUZZ
@given(yaml_with_anchors())
def test_anchors_and_aliases_are_bounded(text: str) -> None:
    code, output = validate(text.encode())
    assert code in (0, 2) and "Traceback" not in output
    try:
        documents = list(load_documents(text.encode()))
    except ManifestYamlError:
        return
    assert len(json.dumps([d.data for d in documents])) < 50 * 2**20  # what was accepted stays small


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=10), children, max_size=3),
    max_leaves=8,
)
SPEC_PATHS = st.sampled_from(
    [
        ("hyperparameters", "epochs"),
        ("hyperparameters", "learningRate"),
        ("method", "type"),
        ("method", "lora"),
        ("resources", "tolerations"),
        ("resources", "nodeSelector"),
        ("resources", "gpuResourceName"),
        ("s3", "endpoint"),
        ("dataset", "sources"),
        ("dataset", "split"),
        ("output", "formats"),
        ("evaluation", "gate"),
        ("storage", "shmSize"),
        ("image",),
        ("suspend",),
    ]
)


def with_value(spec: dict[str, Any], path: tuple[str, ...], value: Any) -> dict[str, Any]:
    node = spec
    for part in path[:-1]:
        child = node.get(part)
        node[part] = child = child if isinstance(child, dict) else {}
        node = child
    node[path[-1]] = value
    return spec


@FUZZ
@given(st.lists(st.tuples(SPEC_PATHS, JSON_VALUES), min_size=1, max_size=4))
def test_any_values_in_a_manifest_get_a_verdict(changes: list[tuple[tuple[str, ...], Any]]) -> None:
    spec = minimal_spec()
    for path, value in changes:
        spec = with_value(spec, path, value)
    manifest = {"apiVersion": "kubetune.dev/v1alpha1", "kind": "FineTuneJob", "metadata": {"name": "f"}, "spec": spec}
    code, output = validate(yaml.safe_dump(manifest).encode())
    assert code in (0, 2) and "Traceback" not in output
    assert code == 0 or "spec" in output
