"""The chart lints strictly and renders valid Kubernetes objects in every configuration."""

from __future__ import annotations

from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from tests.helm.chart import (
    ALL_FEATURES_VALUES,
    CHART,
    CLUSTER_WIDE,
    ROOT,
    Manifest,
    container_env,
    helm,
    only,
    operator_container,
    render,
    render_error,
)
from tests.kubeapi.model import KUBERNETES_VERSION

K8S_VERSION = "1.33.0"
APP_VERSION = yaml.safe_load((CHART / "Chart.yaml").read_text())["appVersion"]
DIGEST = "sha256:" + "0123456789abcdef" * 4  # a well-formed digest for rendering; no registry is asked
# Kinds that are not part of Kubernetes' own OpenAPI schemas; each is checked by its own test.
CUSTOM_KINDS = {"ServiceMonitor", "PodMonitor", "PrometheusRule"}

CONFIGURATIONS: dict[str, tuple[tuple[str, ...], Path | None]] = {
    "defaults": ((), None),  # namespaced, watching `default`
    "namespaced": (("watchNamespaces={ml,research}",), None),
    "cluster-wide": (CLUSTER_WIDE, None),
    "all-features": ((), ALL_FEATURES_VALUES),
    "minimal": (("metrics.service.enabled=false", "serviceAccount.create=false", "serviceAccount.name=ops"), None),
}


@pytest.mark.parametrize("values_file", [None, ALL_FEATURES_VALUES], ids=["defaults", "all-features"])
def test_helm_lint_strict(values_file: Path | None) -> None:
    extra = ["--values", str(values_file)] if values_file else []
    result = helm("lint", "--strict", str(CHART), *extra)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("configuration", CONFIGURATIONS)
def test_rendered_objects_validate_against_kubernetes_schemas(configuration: str) -> None:
    sets, values_file = CONFIGURATIONS[configuration]
    docs = render(*sets, values_file=values_file)
    assert only(docs, "Deployment")
    for doc in docs:
        if doc["kind"] in CUSTOM_KINDS:
            continue
        try:
            kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
        except kubernetes_validate.ValidationError as err:
            pytest.fail(f"{doc['kind']}/{doc['metadata']['name']}: {err}")


def test_all_features_render_the_optional_objects() -> None:
    docs = render(values_file=ALL_FEATURES_VALUES)
    pod = only(docs, "Deployment")["spec"]["template"]
    assert pod["metadata"]["annotations"] == {"example.com/team": "ml-platform"}
    assert pod["metadata"]["labels"]["example.com/cost-center"] == "ml"
    assert pod["spec"]["nodeSelector"] == {"kubernetes.io/os": "linux"}
    assert pod["spec"]["tolerations"][0]["key"] == "dedicated"
    assert "nodeAffinity" in pod["spec"]["affinity"]
    assert pod["spec"]["priorityClassName"] == "system-cluster-critical"
    assert pod["spec"]["imagePullSecrets"] == [{"name": "regcred"}]
    assert pod["spec"]["containers"][0]["image"] == "registry.example.com/kubetune/operator:1.2.3"
    account = only(docs, "ServiceAccount")
    assert account["metadata"]["name"] == pod["spec"]["serviceAccountName"] == "kubetune-operator"
    assert account["metadata"]["annotations"]["eks.amazonaws.com/role-arn"].startswith("arn:aws:iam::")


def test_chart_crds_are_byte_identical_to_the_generated_ones() -> None:
    generated = sorted((ROOT / "crds").glob("*.yaml"))
    in_chart = sorted((CHART / "crds").glob("*.yaml"))
    assert generated, "crds/ is empty: run python -m kubetune.api.crd"
    assert [p.name for p in in_chart] == [p.name for p in generated]
    for path in in_chart:
        assert path.read_bytes() == (ROOT / "crds" / path.name).read_bytes(), f"{path}: run python -m kubetune.api.crd"


def test_chart_crd_is_a_valid_custom_resource_definition() -> None:
    for path in sorted((CHART / "crds").glob("*.yaml")):
        crd: Manifest = yaml.safe_load(path.read_text())
        kubernetes_validate.validate(crd, K8S_VERSION, strict=True)


@pytest.mark.parametrize(
    ("assignment", "complaint"),
    [
        ("image.pullPolicy=Sometimes", "/image/pullPolicy"),
        ("trainerImage.repository=", "/trainerImage/repository"),
        ("watchNamespaces={ML_Team}", "/watchNamespaces/0"),
        ("clusterWide=yes", "/clusterWide"),
        ("metrics.port=70000", "/metrics/port"),
        ("s3.endpoint=minio:9000", "/s3/endpoint"),
        ("imagge.tag=typo", "imagge"),
        ("metrics.trainer.podMonitor.enabled=yes", "/metrics/trainer/podMonitor/enabled"),
        ("metrics.prometheusRule.throughputDropRatio=1.5", "/metrics/prometheusRule/throughputDropRatio"),
        ("metrics.trainer.pushgatewayUrl=pushgateway:9091", "/metrics/trainer/pushgatewayUrl"),
        ("trainerImage.digest=latest", "/trainerImage/digest"),
        ("networkPolicy.trainerEgress.s3Cidrs={s3.amazonaws.com}", "/networkPolicy/trainerEgress/s3Cidrs/0"),
        ("networkPolicy.trainerEgress.apiServerPorts={}", "/networkPolicy/trainerEgress/apiServerPorts"),
    ],
)
def test_values_schema_names_the_bad_value(assignment: str, complaint: str) -> None:
    assert complaint in render_error(assignment)


@pytest.mark.parametrize(
    ("sets", "complaint"),
    [
        (("healthPort=8080",), "metrics.port and healthPort must differ"),
        (("metrics.serviceMonitor.enabled=true", "metrics.service.enabled=false"), "needs metrics.service.enabled"),
        (("serviceAccount.create=false",), "serviceAccount.name is required"),
        (("clusterWide=true",), "clusterWide: true watches every namespace, but watchNamespaces lists default"),
        (("clusterWide=true", "watchNamespaces={ml,research}"), "but watchNamespaces lists ml, research"),
        (("watchNamespaces=null",), "watchNamespaces is empty and clusterWide is false"),
        (("release.requireDigests=true",), "release.requireDigests: image.digest is empty"),
        (
            ("release.requireDigests=true", f"image.digest={DIGEST}"),
            "release.requireDigests: trainerImage.digest is empty",
        ),
    ],
)
def test_inconsistent_values_fail_with_the_keys_to_fix(sets: tuple[str, ...], complaint: str) -> None:
    assert complaint in render_error(*sets)


def test_the_chart_refuses_kubernetes_releases_older_than_the_one_its_tests_mirror() -> None:
    """tests/kubeapi mirrors Kubernetes 1.33's API server (KUBERNETES_VERSION): the chart's floor."""
    major, minor, _ = KUBERNETES_VERSION.split(".")
    refused = helm("template", "kt", str(CHART), "--kube-version", f"{major}.{int(minor) - 1}.0")
    assert refused.returncode != 0 and "requires kubeVersion" in refused.stderr
    assert helm("template", "kt", str(CHART), "--kube-version", KUBERNETES_VERSION).returncode == 0


def test_digests_pin_both_images_and_the_release_profile_renders_with_them() -> None:
    """Digests are values (empty by default: tags); set, the operator runs by digest and hands the
    trainer image by digest to every Job, and the default allow-list admits exactly that image."""
    assert "@" not in operator_container(render())["image"]
    docs = render("release.requireDigests=true", f"image.digest={DIGEST}", f"trainerImage.digest={DIGEST}")
    assert operator_container(docs)["image"].endswith(f":{APP_VERSION}@{DIGEST}")
    assert container_env(docs)["KUBETUNE_TRAINER_IMAGE"] == f"ghcr.io/kubetune/trainer:{APP_VERSION}@{DIGEST}"
