"""Render the Helm chart with the real helm binary; helpers shared by the chart tests."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "helm" / "kubetune"
ALL_FEATURES_VALUES = Path(__file__).with_name("values-all-features.yaml")
# What a platform team sets for the examples (their placement profile).
EXAMPLE_PLATFORM_VALUES = Path(__file__).resolve().parents[2] / "examples" / "platform" / "values.yaml"
RELEASE = "kt"
RELEASE_NAMESPACE = "kubetune-system"
# A cluster-wide install: opted into, and the default watchNamespaces ([default]) removed.
CLUSTER_WIDE = ("clusterWide=true", "watchNamespaces=null")

Manifest = dict[str, Any]


def tool(name: str) -> str:
    """A binary on PATH or beside this Python (the venv's bin/); a missing one fails the test."""
    found = shutil.which(name) or str(Path(sys.executable).parent / name)
    if not Path(found).is_file():
        pytest.fail(f"{name} is not installed: scripts/test.sh (scripts/install-helm.sh) puts it into .venv/bin")
    return found


def helm(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([tool("helm"), *args], capture_output=True, text=True, timeout=60)


def value_args(sets: tuple[str, ...] = (), values_file: Path | None = None) -> list[str]:
    args = ["--values", str(values_file)] if values_file else []
    for assignment in sets:
        args += ["--set", assignment]
    return args


def render(*sets: str, values_file: Path | None = None, api_versions: tuple[str, ...] = ()) -> list[Manifest]:
    """`helm template` output as parsed documents (hooks included, CRDs not); ``api_versions`` are
    the APIs the pretended cluster serves (e.g. ``monitoring.coreos.com/v1/ServiceMonitor``)."""
    apis = [arg for api in api_versions for arg in ("--api-versions", api)]
    result = helm(
        "template", RELEASE, str(CHART), "--namespace", RELEASE_NAMESPACE, *apis, *value_args(sets, values_file)
    )
    assert result.returncode == 0, result.stderr
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


def render_error(*sets: str) -> str:
    """The error of a `helm template` that must fail."""
    result = helm("template", RELEASE, str(CHART), *value_args(sets))
    assert result.returncode != 0, f"helm accepted --set {' '.join(sets)}"
    return result.stderr


def of_kind(docs: list[Manifest], kind: str) -> list[Manifest]:
    return [doc for doc in docs if doc["kind"] == kind]


def only(docs: list[Manifest], kind: str) -> Manifest:
    found = of_kind(docs, kind)
    assert len(found) == 1, f"expected one {kind}, rendered {len(found)}"
    return found[0]


def operator_container(docs: list[Manifest]) -> Manifest:
    containers = only(docs, "Deployment")["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    return dict(containers[0])


def container_env(docs: list[Manifest]) -> dict[str, str]:
    """Literal values, and ``fieldRef:<path>`` for what the downward API fills in."""
    return {
        item["name"]: item["value"] if "value" in item else f"fieldRef:{item['valueFrom']['fieldRef']['fieldPath']}"
        for item in operator_container(docs)["env"]
    }


def dashboard_configmap(docs: list[Manifest]) -> Manifest:
    (configmap,) = [d for d in of_kind(docs, "ConfigMap") if d["metadata"]["name"].endswith("-dashboard")]
    return configmap
