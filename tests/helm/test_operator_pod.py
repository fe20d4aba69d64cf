"""The operator Deployment, its metrics Service, the helm test hook and NOTES.txt."""

from __future__ import annotations

import json
import textwrap

import yaml

from kubetune.api.manifest import parse_manifest
from tests.helm.chart import (
    ALL_FEATURES_VALUES,
    CHART,
    CLUSTER_WIDE,
    EXAMPLE_PLATFORM_VALUES,
    RELEASE,
    container_env,
    helm,
    of_kind,
    only,
    operator_container,
    render,
)

STANDARD_LABELS = (
    "helm.sh/chart",
    "app.kubernetes.io/name",
    "app.kubernetes.io/instance",
    "app.kubernetes.io/version",
    "app.kubernetes.io/managed-by",
    "app.kubernetes.io/component",
    "app.kubernetes.io/part-of",
)


def test_one_active_operator_at_a_time() -> None:
    spec = only(render(), "Deployment")["spec"]
    assert spec["replicas"] == 1
    assert spec["strategy"] == {"type": "Recreate"}, "a rolling update would run two operators at once"


def test_operator_runs_restricted() -> None:
    pod = only(render(), "Deployment")["spec"]["template"]["spec"]
    assert pod["securityContext"] == {
        "runAsNonRoot": True,
        "runAsUser": 1000,
        "runAsGroup": 1000,
        "seccompProfile": {"type": "RuntimeDefault"},
    }
    container = pod["containers"][0]
    assert container["securityContext"] == {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "capabilities": {"drop": ["ALL"]},
    }
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert mounts == {"tmp": "/tmp"} and volumes["tmp"] == {"name": "tmp", "emptyDir": {}}


def test_operator_command_probes_and_ports() -> None:
    container = operator_container(render())
    assert container["command"] == ["kubetune-operator"]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"metrics": 8080, "health": 8081}
    for probe in ("livenessProbe", "readinessProbe"):
        assert container[probe]["httpGet"] == {"path": "/healthz", "port": "health"}, probe


def test_environment_carries_the_operator_configuration() -> None:
    assert container_env(render()) == {
        "KUBETUNE_NAMESPACES": "default",  # namespaced by default
        "KUBETUNE_OPERATOR_NAMESPACE": "fieldRef:metadata.namespace",
        "KUBETUNE_TRAINER_IMAGE": "ghcr.io/kubetune/trainer:0.1.0",
        "KUBETUNE_ALLOWED_IMAGES": "",
        "KUBETUNE_REQUIRE_IMAGE_DIGESTS": "false",
        "KUBETUNE_ALLOW_INSTANCE_METADATA": "false",
        "KUBETUNE_PLACEMENT_PROFILES": "{}",
        "KUBETUNE_ALLOW_RAW_SCHEDULING": "false",
        "KUBETUNE_ALLOWED_S3_ENDPOINTS": "*",
        "KUBETUNE_ALLOWED_STORAGE_PREFIXES": "",
        "KUBETUNE_ALLOWED_WEBHOOK_ENDPOINTS": "*",
        "KUBETUNE_PLATFORM_WEBHOOKS": "[]",
        "KUBETUNE_MAX_GPUS_PER_JOB": "0",
        "KUBETUNE_MAX_NODES_PER_JOB": "0",
        "KUBETUNE_MAX_JOBS_PER_NAMESPACE": "0",
        "KUBETUNE_MIN_PERSONAL_DATA_PROTECTION": "redact",
        "KUBETUNE_TRAINER_EGRESS": json.dumps(
            {
                "apiServerCidrs": [],
                "apiServerPorts": [443, 6443],
                "dns": {"namespace": "kube-system", "podLabels": {"k8s-app": "kube-dns"}},
                "enabled": False,
                "hubCidrs": [],
                "hubPorts": [443],
                "s3Cidrs": [],
                "s3Ports": [443, 80],
                "trackingCidrs": [],
                "trackingPorts": [443, 80, 5000],
            },
            separators=(",", ":"),
        ),
        "KUBETUNE_IMAGE_PULL_POLICY": "IfNotPresent",
        "KUBETUNE_MLFLOW_URI": "",
        "KUBETUNE_WANDB_HOST": "",
        "KUBETUNE_OCI_REGISTRIES": "",
        "KUBETUNE_HUB_ENDPOINT": "",
        "KUBETUNE_GCS_ENDPOINT": "",
        "KUBETUNE_AZURE_ENDPOINT": "",
        "KUBETUNE_DEFAULT_S3_ENDPOINT": "",
        "KUBETUNE_DEFAULT_S3_REGION": "",
        "KUBETUNE_METRICS_PORT": "8080",
        "KUBETUNE_HEALTH_PORT": "8081",
        "KUBETUNE_TRAINER_METRICS_PORT": "9090",
        "KUBETUNE_PUSHGATEWAY_URL": "",
        "KUBETUNE_PUSH_INTERVAL_SECONDS": "15",
    }
    assert container_env(render(values_file=ALL_FEATURES_VALUES)) == {
        "KUBETUNE_NAMESPACES": "ml-team,research",
        "KUBETUNE_OPERATOR_NAMESPACE": "fieldRef:metadata.namespace",
        "KUBETUNE_TRAINER_IMAGE": "registry.example.com/kubetune/trainer:1.2.3-cu128",
        "KUBETUNE_ALLOWED_IMAGES": "registry.example.com/kubetune/trainer,registry.example.com/ml-team/*",
        "KUBETUNE_REQUIRE_IMAGE_DIGESTS": "false",
        "KUBETUNE_ALLOW_INSTANCE_METADATA": "true",
        "KUBETUNE_PLACEMENT_PROFILES": json.dumps(
            {
                "default": {"nodeSelector": {"pool": "shared-gpu"}},
                "gpu-a100": {
                    "nodeSelector": {"gpu": "a100"},
                    "priorityClassName": "batch-training",
                    "tolerations": [{"effect": "NoSchedule", "key": "nvidia.com/gpu", "operator": "Exists"}],
                },
            },
            separators=(",", ":"),
        ),
        "KUBETUNE_ALLOW_RAW_SCHEDULING": "true",
        "KUBETUNE_ALLOWED_S3_ENDPOINTS": "*,minio.minio.svc:9000",
        "KUBETUNE_ALLOWED_STORAGE_PREFIXES": "s3://ml-{namespace}/,s3://shared-models/",
        "KUBETUNE_ALLOWED_WEBHOOK_ENDPOINTS": "hooks.slack.com,alerts.ml-platform.svc:8080",
        "KUBETUNE_PLATFORM_WEBHOOKS": json.dumps(
            [
                {"name": "platform-ci", "secretName": "ci-hook"},
                {"format": "slack", "name": "ops-chat", "secretName": "slack-hook"},
            ],
            separators=(",", ":"),
        ),
        "KUBETUNE_MAX_GPUS_PER_JOB": "8",
        "KUBETUNE_MAX_NODES_PER_JOB": "4",
        "KUBETUNE_MAX_JOBS_PER_NAMESPACE": "3",
        "KUBETUNE_MIN_PERSONAL_DATA_PROTECTION": "report",
        "KUBETUNE_TRAINER_EGRESS": json.dumps(
            {
                "apiServerCidrs": ["10.96.0.1/32", "172.18.0.2/32"],
                "apiServerPorts": [443, 6443],
                "dns": {"namespace": "kube-system", "podLabels": {"k8s-app": "kube-dns"}},
                "enabled": True,
                "hubCidrs": ["0.0.0.0/0"],
                "hubPorts": [443],
                "s3Cidrs": ["0.0.0.0/0", "10.20.0.0/16"],
                "s3Ports": [443, 9000],
                "trackingCidrs": ["10.40.0.0/16"],
                "trackingPorts": [5000],
            },
            separators=(",", ":"),
        ),
        "KUBETUNE_IMAGE_PULL_POLICY": "Always",
        "KUBETUNE_MLFLOW_URI": "http://mlflow.mlflow.svc:5000",
        "KUBETUNE_WANDB_HOST": "https://wandb.ml-platform.example.com",
        "KUBETUNE_OCI_REGISTRIES": "https://ghcr.io,http://registry.registry.svc:5000",
        "KUBETUNE_HUB_ENDPOINT": "https://hf-mirror.example.com",
        "KUBETUNE_GCS_ENDPOINT": "https://storage-ml.p.googleapis.com",
        "KUBETUNE_AZURE_ENDPOINT": "https://{account}.privatelink.blob.core.windows.net",
        "KUBETUNE_DEFAULT_S3_ENDPOINT": "http://minio.minio.svc:9000",
        "KUBETUNE_DEFAULT_S3_REGION": "eu-west-1",
        "KUBETUNE_METRICS_PORT": "9090",
        "KUBETUNE_HEALTH_PORT": "9091",
        "KUBETUNE_TRAINER_METRICS_PORT": "9400",
        "KUBETUNE_PUSHGATEWAY_URL": "http://prometheus-pushgateway.{namespace}.svc:9091",
        "KUBETUNE_PUSH_INTERVAL_SECONDS": "30",
    }
    assert container_env(render(*CLUSTER_WIDE))["KUBETUNE_NAMESPACES"] == "", "empty: every namespace"


def test_resources_come_from_values() -> None:
    assert operator_container(render())["resources"] == {
        "requests": {"cpu": "100m", "memory": "256Mi"},
        "limits": {"memory": "512Mi"},
    }
    custom = operator_container(render("resources.limits.memory=2Gi", "resources.requests.cpu=1"))
    assert custom["resources"]["limits"] == {"memory": "2Gi"} and custom["resources"]["requests"]["cpu"] == 1


def test_standard_labels_and_selector() -> None:
    docs = render()
    deployment = only(docs, "Deployment")
    for doc in docs:
        missing = [key for key in STANDARD_LABELS if key not in doc["metadata"]["labels"]]
        assert not missing, f"{doc['kind']}/{doc['metadata']['name']} lacks {missing}"
    selector = deployment["spec"]["selector"]["matchLabels"]
    assert selector.items() <= deployment["spec"]["template"]["metadata"]["labels"].items()
    (hook,) = [d for d in docs if d["kind"] == "Pod"]
    assert not selector.items() <= hook["metadata"]["labels"].items(), "the test pod must not join the operator's pods"


def test_metrics_service_targets_the_metrics_port() -> None:
    docs = render()
    service = only(docs, "Service")
    assert service["spec"]["ports"] == [{"name": "metrics", "port": 8080, "targetPort": "metrics"}]
    pod_labels = only(docs, "Deployment")["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= pod_labels.items()
    assert not of_kind(render("metrics.service.enabled=false"), "Service")


def test_helm_test_hook_checks_the_operator_account_where_it_watches() -> None:
    clusterwide = only(render(*CLUSTER_WIDE), "Pod")
    assert clusterwide["metadata"]["annotations"]["helm.sh/hook"] == "test"
    assert clusterwide["spec"]["serviceAccountName"] == only(render(), "ServiceAccount")["metadata"]["name"]
    script = clusterwide["spec"]["containers"][0]["args"][0]
    assert "list_cluster_custom_object" in script and "/metrics" in script
    namespaced_script = only(render("watchNamespaces={ml}"), "Pod")["spec"]["containers"][0]["args"][0]
    assert 'list_namespaced_custom_object("kubetune.dev", "v1alpha1", "ml", "finetunejobs")' in namespaced_script
    default_script = only(render(), "Pod")["spec"]["containers"][0]["args"][0]
    assert 'list_namespaced_custom_object("kubetune.dev", "v1alpha1", "default", "finetunejobs")' in default_script
    compile(script, "helm-test", "exec")
    compile(namespaced_script, "helm-test", "exec")


def notes(*sets: str, namespace: str = "kubetune-system") -> str:
    args = ["install", RELEASE, str(CHART), "--dry-run=client", "--namespace", namespace]
    for assignment in sets:
        args += ["--set", assignment]
    result = helm(*args)
    assert result.returncode == 0, result.stderr
    assert "NOTES:" in result.stdout
    return result.stdout.split("NOTES:", 1)[1]


def test_notes_show_a_first_job_that_the_api_accepts() -> None:
    text = notes("watchNamespaces={ml}")
    assert "kubectl apply -n ml -f -" in text and "kubectl get finetunejobs -n ml" in text
    assert f"helm test {RELEASE} -n kubetune-system" in text
    heredoc = text.split("<<'YAML'\n", 1)[1].split("\n  YAML\n", 1)[0]
    job = parse_manifest(yaml.safe_load(textwrap.dedent(heredoc)), "NOTES.txt")
    assert job.spec.dataset.sources[0].uri.startswith("file:///opt/kubetune/examples/")
    assert "in every namespace" in notes(*CLUSTER_WIDE) and "kubectl apply -n default -f -" in notes(*CLUSTER_WIDE)
    assert "watches FineTuneJobs in: default" in notes() and "kubectl apply -n default -f -" in notes()
    assert "WARNING" not in notes(), "installed into its own namespace"


def test_notes_warn_when_the_operators_own_namespace_is_the_only_one_watched() -> None:
    """The operator takes no FineTuneJobs where it runs: `helm install` without -n would give no working install."""
    text = notes(namespace="default")
    assert "WARNING: default is the operator's own namespace, where it takes no FineTuneJobs" in text


def test_the_policy_values_start_an_operator_that_enforces_them() -> None:
    """What the chart renders is what the operator validates at startup: every guardrail value parses,
    and the example platform's values (examples/platform/values.yaml) too."""
    from kubetune.operator.config import OperatorConfig

    config = OperatorConfig.from_env(container_env(render(values_file=ALL_FEATURES_VALUES)))
    assert config.storage.prefixes == ("s3://ml-{namespace}/", "s3://shared-models/")
    assert "minio.minio.svc:9000" in config.storage.endpoints and config.placement.allow_raw
    assert sorted(config.placement.profiles) == ["default", "gpu-a100"]
    assert (config.max_gpus_per_job, config.max_nodes_per_job, config.max_jobs_per_namespace) == (8, 4, 3)
    assert [(w.name, w.secret_name, w.format) for w in config.platform_webhooks] == [
        ("platform-ci", "ci-hook", "cloudevents"),
        ("ops-chat", "slack-hook", "slack"),
    ]
    assert config.webhooks.endpoints == ("hooks.slack.com", "alerts.ml-platform.svc:8080")
    assert config.hub_endpoint == "https://hf-mirror.example.com"
    assert config.gcs_endpoint == "https://storage-ml.p.googleapis.com"
    assert config.wandb_host == "https://wandb.ml-platform.example.com"
    assert config.oci_registries.urls == ("https://ghcr.io", "http://registry.registry.svc:5000")
    assert config.azure_endpoint == "https://{account}.privatelink.blob.core.windows.net"
    assert config.mlflow_uri == "http://mlflow.mlflow.svc:5000"
    assert config.trainer_egress is not None and [str(c) for c in config.trainer_egress.hub_cidrs] == ["0.0.0.0/0"]
    assert config.personal_data.allowed == ("report", "redact", "drop")
    assert config.trainer_egress is not None and [str(c) for c in config.trainer_egress.s3_cidrs] == [
        "0.0.0.0/0",
        "10.20.0.0/16",
    ]
    defaults = OperatorConfig.from_env(container_env(render()))
    assert defaults.trainer_egress is None, "no egress NetworkPolicy unless asked"
    assert defaults.personal_data.weakest == "redact", "tenants cannot turn redaction off unless allowed"
    assert (defaults.storage.endpoints, defaults.placement.allow_raw, defaults.allow_instance_metadata) == (
        ("*",),
        False,
        False,
    )
    platform = OperatorConfig.from_env(container_env(render(values_file=EXAMPLE_PLATFORM_VALUES)))
    assert sorted(platform.placement.profiles) == ["gpu-g6e"]
