"""The Helm chart, rendered by the real helm binary and checked against Kubernetes' schemas."""

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
K8S_VERSION = "1.33.0"


def helm() -> str:
    found = shutil.which("helm") or str(Path(sys.executable).parent / "helm")
    if not Path(found).exists():
        pytest.fail("helm is not installed: run scripts/install-helm.sh (scripts/test.sh does)")
    return found


def render(*sets: str) -> list[dict[str, Any]]:
    args = [helm(), "template", "kt", str(CHART), "--namespace", "kubetune-system"]
    for value in sets:
        args += ["--set", value]
    out = subprocess.run(args, capture_output=True, text=True, check=True).stdout
    return [d for d in yaml.safe_load_all(out) if d]


def by_kind(docs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] == kind]


EXPECTED_NAMESPACED_RULES = {
    ("kubetune.dev", "finetunejobs"): {"get", "list", "watch", "patch"},
    ("kubetune.dev", "finetunejobs/status"): {"get", "patch"},
    ("batch", "jobs"): {"get", "list", "watch", "create", "patch", "delete"},
    ("", "configmaps"): {"get", "create"},
    ("", "serviceaccounts"): {"get", "create"},
    ("rbac.authorization.k8s.io", "roles"): {"get", "create"},
    ("rbac.authorization.k8s.io", "rolebindings"): {"get", "create"},
    ("", "secrets"): {"get"},
    ("", "persistentvolumeclaims"): {"get"},
    ("", "events"): {"create", "patch"},
    ("events.k8s.io", "events"): {"create", "patch"},
    ("kueue.x-k8s.io", "workloads"): {"get", "list", "watch", "patch"},
}
EXPECTED_CLUSTER_RULES = {
    ("apiextensions.k8s.io", "customresourcedefinitions"): {"get", "list", "watch"},
    ("", "namespaces"): {"list", "watch"},
}


def flatten(rules: list[dict[str, Any]]) -> dict[tuple[str, str], set[str]]:
    grants: dict[tuple[str, str], set[str]] = {}
    for rule in rules:
        assert "*" not in rule["verbs"] and "*" not in rule["resources"] and "*" not in rule["apiGroups"]
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                grants.setdefault((group, resource), set()).update(rule["verbs"])
    return grants


def test_helm_lint_strict() -> None:
    result = subprocess.run([helm(), "lint", "--strict", str(CHART)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize(
    "sets",
    [
        (),
        ("watchNamespaces={ml,research}",),
        ("metrics.service.enabled=false", "serviceAccount.create=false", "serviceAccount.name=custom"),
    ],
)
def test_rendered_manifests_are_valid_kubernetes(sets: tuple[str, ...]) -> None:
    import kubernetes_validate

    docs = render(*sets)
    assert by_kind(docs, "Deployment")
    for doc in docs:
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


def test_clusterwide_rbac_is_exactly_least_privilege() -> None:
    docs = render()
    (role,) = by_kind(docs, "ClusterRole")
    assert flatten(role["rules"]) == {**EXPECTED_NAMESPACED_RULES, **EXPECTED_CLUSTER_RULES}
    assert not by_kind(docs, "Role")


def test_namespaced_watch_gets_roles_per_namespace() -> None:
    docs = render("watchNamespaces={ml,research}")
    roles = by_kind(docs, "Role")
    assert sorted(r["metadata"]["namespace"] for r in roles) == ["ml", "research"]
    for role in roles:
        assert flatten(role["rules"]) == EXPECTED_NAMESPACED_RULES
    (cluster_role,) = by_kind(docs, "ClusterRole")
    assert flatten(cluster_role["rules"]) == EXPECTED_CLUSTER_RULES
    deployment = by_kind(docs, "Deployment")[0]
    env = {e["name"]: e.get("value") for e in deployment["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["KUBETUNE_NAMESPACES"] == "ml,research"
    assert sorted(b["metadata"]["namespace"] for b in by_kind(docs, "RoleBinding")) == ["ml", "research"]


def test_deployment_is_single_active_probed_and_restricted() -> None:
    deployment = by_kind(render(), "Deployment")[0]
    spec = deployment["spec"]
    assert spec["replicas"] == 1 and spec["strategy"] == {"type": "Recreate"}
    pod = spec["template"]["spec"]
    container = pod["containers"][0]
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["readinessProbe"]["httpGet"]["path"] == "/healthz"
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    labels = deployment["metadata"]["labels"]
    for key in (
        "app.kubernetes.io/name",
        "app.kubernetes.io/instance",
        "app.kubernetes.io/version",
        "app.kubernetes.io/managed-by",
        "helm.sh/chart",
    ):
        assert key in labels


def test_chart_crds_are_the_generated_ones() -> None:
    chart_crds = sorted((CHART / "crds").glob("*.yaml"))
    assert [p.name for p in chart_crds] == [p.name for p in sorted((ROOT / "crds").glob("*.yaml"))]
    for path in chart_crds:
        assert path.read_bytes() == (ROOT / "crds" / path.name).read_bytes()


def test_notes_and_helm_test_hook() -> None:
    result = subprocess.run(
        [helm(), "install", "kt", str(CHART), "--dry-run=client", "--namespace", "x"], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    assert "kubectl apply -f" in result.stdout and "kubectl get finetunejobs" in result.stdout
    hooks = [
        d for d in yaml.safe_load_all(result.stdout.split("NOTES:")[0].split("HOOKS:")[-1].split("MANIFEST:")[0]) if d
    ]
    assert any(h.get("metadata", {}).get("annotations", {}).get("helm.sh/hook") == "test" for h in hooks)


@pytest.mark.parametrize("dockerfile", ["Dockerfile", "trainer_image/Dockerfile"])
def test_dockerfiles_pass_hadolint(dockerfile: str) -> None:
    hadolint = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")
    result = subprocess.run([hadolint, str(ROOT / dockerfile)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_operator_image_installs_no_ml_packages() -> None:
    import re
    import tomllib

    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    names = {re.split(r"[<>=\[ ]", req)[0].lower() for req in extras["operator"]}
    assert not names & {"torch", "transformers", "peft", "bitsandbytes", "accelerate", "datasets"}
    installs = [line for line in (ROOT / "Dockerfile").read_text().splitlines() if "pip install" in line]
    assert installs and all('".[operator]"' in line for line in installs)
