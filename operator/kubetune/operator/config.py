"""Operator configuration: ``KUBETUNE_*`` environment variables, validated once at startup."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import urlparse

from pydantic import ValidationError

from kubetune.api.contract import DEFAULT_PUSH_INTERVAL_SECONDS, NAMESPACE_PLACEHOLDER
from kubetune.api.v1alpha1 import DEFAULT_TRAINER_IMAGE, NotificationsSpec, WebhookSpec
from kubetune.operator.imagepolicy import ImagePolicy
from kubetune.operator.networkpolicy import HELM_VALUE as TRAINER_EGRESS_VALUE
from kubetune.operator.networkpolicy import TrainerEgress
from kubetune.operator.placement import PlacementPolicy
from kubetune.operator.privacypolicy import HELM_VALUE as PERSONAL_DATA_VALUE
from kubetune.operator.privacypolicy import PersonalDataFloor
from kubetune.operator.registrypolicy import HELM_VALUE as OCI_REGISTRIES_VALUE
from kubetune.operator.registrypolicy import NO_REGISTRIES, RegistryPolicy
from kubetune.operator.storagepolicy import ANY_PUBLIC_ENDPOINT, StoragePolicy
from kubetune.operator.webhookpolicy import HELM_VALUE as WEBHOOK_ENDPOINTS_VALUE
from kubetune.operator.webhookpolicy import WebhookPolicy

# Each default once: the dataclass and the environment loader both use these.
DEFAULT_METRICS_PORT = 8080
DEFAULT_HEALTH_PORT = 8081
DEFAULT_TRAINER_METRICS_PORT = 9090  # where each training pod serves /metrics
DEFAULT_IMAGE_PULL_POLICY = "IfNotPresent"


class ConfigError(ValueError):
    pass


@dataclass(frozen=True)
class OperatorConfig:
    namespaces: tuple[str, ...]  # empty: every namespace (cluster-wide)
    trainer_image: str
    image_pull_policy: str
    default_s3_endpoint: str | None
    default_s3_region: str | None
    metrics_port: int
    health_port: int
    # Images a FineTuneJob's spec.image may name; by default only the trainer image (decided in from_env).
    image_policy: ImagePolicy
    # Where the operator itself runs (the chart sets it by the downward API): it takes no FineTuneJobs.
    # None out of a cluster, where only the system namespaces are refused.
    operator_namespace: str | None
    # Whether trainer pods may fall back to the node's cloud identity (instance metadata): off unless
    # the platform team runs node-identity setups (Helm value policy.allowInstanceMetadata).
    allow_instance_metadata: bool
    # Placement profiles tenants pick by name, and whether raw scheduling fields are allowed at all.
    placement: PlacementPolicy
    # S3 endpoints and bucket prefixes FineTuneJobs may use.
    storage: StoragePolicy
    # Hard caps for clusters without Kueue (None: no cap): GPUs one job may ask for (every node's), the
    # nodes it may train on, and FineTuneJobs a namespace trains at once (the rest wait in Queued,
    # reason NamespaceQuota).
    max_gpus_per_job: int | None
    max_nodes_per_job: int | None
    max_jobs_per_namespace: int | None
    # The weakest personal-data policy (dataset.curation.pii, sources[].pii) a job may choose.
    personal_data: PersonalDataFloor
    # Where FineTuneJobs' webhooks may send (Helm value policy.allowedWebhookEndpoints).
    webhooks: WebhookPolicy
    # Receivers told about every FineTuneJob (Helm value notifications.webhooks), their Secrets in the
    # operator's own namespace.
    platform_webhooks: tuple[WebhookSpec, ...]
    trainer_metrics_port: int = DEFAULT_TRAINER_METRICS_PORT
    # Trainers push here; the operator deletes a deleted job's group. May hold NAMESPACE_PLACEHOLDER:
    # one Pushgateway per namespace, so no tenant's pushes land where another's are scraped.
    pushgateway_url: str | None = None
    push_interval_seconds: int = DEFAULT_PUSH_INTERVAL_SECONDS
    # A NetworkPolicy per FineTuneJob limiting its pods' egress (Helm value networkPolicy.trainerEgress);
    # None: none is created.
    trainer_egress: TrainerEgress | None = None
    # The Hugging Face Hub endpoint hf:// URIs are read from (Helm value hub.endpoint: the platform's
    # mirror in an air-gapped cluster); None: huggingface_hub's default, https://huggingface.co.
    hub_endpoint: str | None = None
    # The Cloud Storage endpoint gs:// URIs are reached at (Helm value gcs.endpoint: Private Service
    # Connect, an emulator); None: Google's.
    gcs_endpoint: str | None = None
    # The Blob Storage URL az:// URIs are reached at, {account} replaced by the URI's storage account
    # (Helm value azure.endpoint: a sovereign cloud, a private endpoint, an emulator); None: Azure's.
    azure_endpoint: str | None = None
    # The MLflow server jobs with spec.tracking.mlflow report to (Helm value tracking.mlflow.uri);
    # None: such jobs are refused (TrackingNotAvailable).
    mlflow_uri: str | None = None
    # The W&B server jobs with spec.tracking.wandb report to (Helm value tracking.wandb.host); None:
    # such jobs are refused (TrackingNotAvailable).
    wandb_host: str | None = None
    # The OCI registries spec.output.oci may push to (Helm value registry.oci.registries); none: no pushes.
    oci_registries: RegistryPolicy = NO_REGISTRIES
    # Serve reads of FineTuneJobs and Jobs from the operator's watches (cache.py). Off only to compare
    # (bench/operator.py) or to rule the cache out when diagnosing: every read is then a GET.
    read_cache: bool = True

    def pushgateway_url_for(self, namespace: str) -> str | None:
        """The Pushgateway of a FineTuneJob in ``namespace`` (None: trainers do not push)."""
        if not self.pushgateway_url:
            return None
        return self.pushgateway_url.replace(NAMESPACE_PLACEHOLDER, namespace)

    @property
    def clusterwide(self) -> bool:
        return not self.namespaces

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> OperatorConfig:
        env = os.environ if env is None else env

        def port(name: str, default: int) -> int:
            raw = env.get(name, str(default))
            if not raw.isdigit() or not 0 < int(raw) < 65536:
                raise ConfigError(f"{name}={raw!r}: expected a TCP port number")
            return int(raw)

        def pushgateway() -> str | None:
            raw = env.get("KUBETUNE_PUSHGATEWAY_URL", "").strip()
            if not raw:
                return None
            example = raw.replace(NAMESPACE_PLACEHOLDER, "namespace")
            parsed = urlparse(example)
            if parsed.scheme not in ("http", "https") or not parsed.hostname or "{" in example or "}" in example:
                raise ConfigError(
                    f"KUBETUNE_PUSHGATEWAY_URL={raw!r}: expected http(s)://host[:port], e.g. "
                    f"http://pushgateway.monitoring:9091, or one per namespace with {NAMESPACE_PLACEHOLDER}: "
                    f"http://prometheus-pushgateway.{NAMESPACE_PLACEHOLDER}.svc:9091"
                )
            return raw.rstrip("/")

        def entries(name: str, default: str = "") -> list[str]:
            return [entry.strip() for entry in env.get(name, default).split(",") if entry.strip()]

        def cap(name: str, helm_value: str) -> int | None:
            raw = env.get(name, "").strip()
            if not raw or raw == "0":
                return None
            if not raw.isdigit():
                raise ConfigError(f"{name}={raw!r} (Helm value {helm_value}): expected a whole number, 0 for no cap")
            return int(raw)

        def flag(name: str, default: bool = False) -> bool:
            raw = env.get(name, str(default).lower()).strip().lower() or str(default).lower()
            if raw not in ("true", "false"):
                raise ConfigError(f"{name}={raw!r}: expected true or false")
            return raw == "true"

        interval = env.get("KUBETUNE_PUSH_INTERVAL_SECONDS", str(DEFAULT_PUSH_INTERVAL_SECONDS))
        if not interval.isdigit() or not 1 <= int(interval) <= 3600:
            raise ConfigError(f"KUBETUNE_PUSH_INTERVAL_SECONDS={interval!r}: expected whole seconds from 1 to 3600")
        policy = env.get("KUBETUNE_IMAGE_PULL_POLICY", DEFAULT_IMAGE_PULL_POLICY)
        if policy not in ("Always", "IfNotPresent", "Never"):
            raise ConfigError(f"KUBETUNE_IMAGE_PULL_POLICY={policy!r}: expected Always, IfNotPresent or Never")
        namespaces = tuple(n.strip() for n in env.get("KUBETUNE_NAMESPACES", "").split(",") if n.strip())
        trainer_image = env.get("KUBETUNE_TRAINER_IMAGE", DEFAULT_TRAINER_IMAGE)
        allowed = entries("KUBETUNE_ALLOWED_IMAGES")
        require_digests = flag("KUBETUNE_REQUIRE_IMAGE_DIGESTS")
        try:
            image_policy = ImagePolicy.parse(allowed or [trainer_image], require_digest=require_digests)
        except ValueError as err:
            source = (
                "KUBETUNE_ALLOWED_IMAGES (Helm value policy.allowedImages)" if allowed else "KUBETUNE_TRAINER_IMAGE"
            )
            raise ConfigError(f"{source}: {err}") from err
        if require_digests and (why := ImagePolicy((), require_digest=True).digest_refusal(trainer_image)):
            raise ConfigError(f"KUBETUNE_TRAINER_IMAGE (Helm value trainerImage.digest): {why}")
        try:
            placement = PlacementPolicy.parse(
                env.get("KUBETUNE_PLACEMENT_PROFILES", ""), allow_raw=flag("KUBETUNE_ALLOW_RAW_SCHEDULING")
            )
        except ValueError as err:
            raise ConfigError(f"KUBETUNE_PLACEMENT_PROFILES (Helm value policy.placementProfiles): {err}") from err
        try:
            storage = StoragePolicy.parse(
                entries("KUBETUNE_ALLOWED_S3_ENDPOINTS", ANY_PUBLIC_ENDPOINT),
                entries("KUBETUNE_ALLOWED_STORAGE_PREFIXES"),
                platform_endpoint=env.get("KUBETUNE_DEFAULT_S3_ENDPOINT") or None,
            )
        except ValueError as err:
            raise ConfigError(
                f"KUBETUNE_ALLOWED_S3_ENDPOINTS / KUBETUNE_ALLOWED_STORAGE_PREFIXES (Helm values "
                f"policy.allowedS3Endpoints / policy.allowedStoragePrefixes): {err}"
            ) from err
        try:
            personal_data = PersonalDataFloor.parse(env.get("KUBETUNE_MIN_PERSONAL_DATA_PROTECTION", ""))
        except ValueError as err:
            raise ConfigError(
                f"KUBETUNE_MIN_PERSONAL_DATA_PROTECTION (Helm value {PERSONAL_DATA_VALUE}): {err}"
            ) from err
        try:
            webhooks = WebhookPolicy.parse(entries("KUBETUNE_ALLOWED_WEBHOOK_ENDPOINTS", ANY_PUBLIC_ENDPOINT))
        except ValueError as err:
            raise ConfigError(
                f"KUBETUNE_ALLOWED_WEBHOOK_ENDPOINTS (Helm value {WEBHOOK_ENDPOINTS_VALUE}): {err}"
            ) from err
        platform_webhooks = _platform_webhooks(env.get("KUBETUNE_PLATFORM_WEBHOOKS", ""))
        if platform_webhooks and not env.get("KUBETUNE_OPERATOR_NAMESPACE"):
            raise ConfigError(
                "KUBETUNE_PLATFORM_WEBHOOKS needs KUBETUNE_OPERATOR_NAMESPACE: their Secrets live in the operator's namespace"
            )
        hub_endpoint = _service_url(env, "KUBETUNE_HUB_ENDPOINT", "hub.endpoint", "https://hf-mirror.example.com")
        gcs_endpoint = _service_url(env, "KUBETUNE_GCS_ENDPOINT", "gcs.endpoint", "https://storage.example.com")
        azure_endpoint = _service_url(
            env, "KUBETUNE_AZURE_ENDPOINT", "azure.endpoint", "https://{account}.privatelink.blob.core.windows.net"
        )
        if azure_endpoint is not None and "{account}" not in azure_endpoint:
            raise ConfigError(
                f"KUBETUNE_AZURE_ENDPOINT={azure_endpoint!r} (Helm value azure.endpoint): must hold {{account}}, "
                "where each az:// URI's storage account goes, e.g. https://{account}.blob.core.windows.net"
            )
        mlflow_uri = _service_url(env, "KUBETUNE_MLFLOW_URI", "tracking.mlflow.uri", "http://mlflow.mlflow.svc:5000")
        wandb_host = _service_url(env, "KUBETUNE_WANDB_HOST", "tracking.wandb.host", "https://api.wandb.ai")
        try:
            oci_registries = RegistryPolicy.parse(entries("KUBETUNE_OCI_REGISTRIES"))
        except ValueError as err:
            raise ConfigError(f"KUBETUNE_OCI_REGISTRIES (Helm value {OCI_REGISTRIES_VALUE}): {err}") from err
        try:
            trainer_egress = TrainerEgress.parse(env.get("KUBETUNE_TRAINER_EGRESS", ""))
        except ValueError as err:
            raise ConfigError(f"KUBETUNE_TRAINER_EGRESS (Helm value {TRAINER_EGRESS_VALUE}): {err}") from err
        return cls(
            namespaces=namespaces,
            trainer_image=trainer_image,
            image_pull_policy=policy,
            default_s3_endpoint=env.get("KUBETUNE_DEFAULT_S3_ENDPOINT") or None,
            default_s3_region=env.get("KUBETUNE_DEFAULT_S3_REGION") or None,
            metrics_port=port("KUBETUNE_METRICS_PORT", DEFAULT_METRICS_PORT),
            health_port=port("KUBETUNE_HEALTH_PORT", DEFAULT_HEALTH_PORT),
            trainer_metrics_port=port("KUBETUNE_TRAINER_METRICS_PORT", DEFAULT_TRAINER_METRICS_PORT),
            pushgateway_url=pushgateway(),
            push_interval_seconds=int(interval),
            image_policy=image_policy,
            operator_namespace=env.get("KUBETUNE_OPERATOR_NAMESPACE") or None,
            allow_instance_metadata=flag("KUBETUNE_ALLOW_INSTANCE_METADATA"),
            read_cache=flag("KUBETUNE_READ_CACHE", default=cls.read_cache),
            placement=placement,
            storage=storage,
            max_gpus_per_job=cap("KUBETUNE_MAX_GPUS_PER_JOB", "policy.maxGpusPerJob"),
            max_nodes_per_job=cap("KUBETUNE_MAX_NODES_PER_JOB", "policy.maxNodesPerJob"),
            max_jobs_per_namespace=cap("KUBETUNE_MAX_JOBS_PER_NAMESPACE", "policy.maxJobsPerNamespace"),
            trainer_egress=trainer_egress,
            hub_endpoint=hub_endpoint,
            gcs_endpoint=gcs_endpoint,
            azure_endpoint=azure_endpoint,
            mlflow_uri=mlflow_uri,
            wandb_host=wandb_host,
            oci_registries=oci_registries,
            personal_data=personal_data,
            webhooks=webhooks,
            platform_webhooks=platform_webhooks,
        )


def _service_url(env: Mapping[str, str], name: str, helm_value: str, example: str) -> str | None:
    """A platform service's base URL from ``name`` (None when unset): http(s), a host, maybe a port and
    a path; no user name (credentials never go in a URL), query or fragment."""
    raw = env.get(name, "").strip()
    if not raw:
        return None
    parsed = urlparse(raw)
    if (
        parsed.scheme not in ("http", "https")
        or not parsed.hostname
        or parsed.username
        or parsed.query
        or parsed.fragment
    ):
        raise ConfigError(
            f"{name}={raw!r} (Helm value {helm_value}): expected http(s)://host[:port][/path] with no user name, "
            f"query or fragment, e.g. {example}"
        )
    return raw.rstrip("/")


def _platform_webhooks(raw: str) -> tuple[WebhookSpec, ...]:
    """``KUBETUNE_PLATFORM_WEBHOOKS``: a JSON list of webhooks as a FineTuneJob names them."""
    if not raw.strip():
        return ()
    try:
        parsed = NotificationsSpec.model_validate({"webhooks": json.loads(raw)})
    except (ValueError, ValidationError) as err:
        raise ConfigError(
            f"KUBETUNE_PLATFORM_WEBHOOKS (Helm value notifications.webhooks): expected a list of "
            f"{{name, secretName, format}}: {err}"
        ) from err
    return tuple(parsed.webhooks)
