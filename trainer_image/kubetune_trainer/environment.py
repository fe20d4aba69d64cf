"""The trainer's process environment, read in one place (the mirror of the operator's config
loader): what the operator set on the pod (``kubetune.api.contract``) and what torchrun sets for each
rank. A run reads it once, at start-up (``RunContext.environment``); helpers used outside a run (the
built-in model's cache, a model's device) call :meth:`TrainerEnvironment.from_env` themselves.
Nothing else in the trainer reads ``os.environ`` for these names.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from kubetune.api import contract

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainerEnvironment:
    job_name: str | None  # the FineTuneJob the operator runs this pod for; None locally
    job_namespace: str | None
    report_status: bool  # write progress and results to the FineTuneJob status (in a pod)
    scratch: Path
    cache: Path
    system_cache: Path | None  # read-only, baked into the image
    termination_log: Path | None
    s3_ca_bundle: Path | None  # spec.s3.caBundle, mounted by the operator
    s3_credentials_dir: Path | None  # spec.s3.credentialsSecret, mounted as files by the operator
    # spec.s3.endpoint passed only as a public endpoint: refuse connections that reach a non-public address
    s3_public_endpoint_only: bool
    mlflow_tracking_uri: str | None  # the MLflow server spec.tracking.mlflow reports to
    mlflow_credentials_dir: Path | None  # spec.tracking.mlflow.credentialsSecret, mounted as files by the operator
    hub_endpoint: str | None  # the platform's Hub endpoint (HF_ENDPOINT); None: huggingface.co
    hub_token_file: Path | None  # spec.hub.tokenSecret, mounted as a file by the operator
    gcs_endpoint: str | None  # the platform's Cloud Storage endpoint; None: Google's
    gcs_key_file: Path | None  # spec.gcs.credentialsSecret, mounted as a file by the operator
    azure_endpoint: str | None  # the platform's Blob Storage URL template ({account}); None: Azure's
    azure_key_file: Path | None  # spec.azure.credentialsSecret, mounted as a file by the operator
    wandb_base_url: str | None  # the platform's W&B server (WANDB_BASE_URL); None: W&B's own setting
    wandb_key_file: Path | None  # spec.tracking.wandb.apiKeySecret, mounted as a file by the operator
    oci_registry: str | None  # spec.output.oci's registry as the platform lists it; None: https://<its host>
    oci_auth_file: Path | None  # spec.output.oci.credentialsSecret's .dockerconfigjson, mounted by the operator
    # policy.allowedStoragePrefixes for this namespace: URIs found at run time stay under them (empty: any)
    storage_prefixes: tuple[str, ...]
    metrics_port: int | None
    pushgateway_url: str | None
    push_interval_seconds: int
    trace_microsteps: bool
    # torchrun's per-process variables: one process per GPU, rank 0 reports and publishes.
    rank: int
    local_rank: int
    world_size: int
    # MLflow's own login variables (kubetune run): a user name and password, else a bearer token; never
    # printed with the rest
    mlflow_login: tuple[str, str] | str | None = field(default=None, repr=False)

    @property
    def is_main_process(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> TrainerEnvironment:
        env = os.environ if env is None else env

        def text(name: str) -> str | None:
            return env.get(name, "").strip() or None

        def path(name: str) -> Path | None:
            value = text(name)
            return Path(value) if value is not None else None

        def number(name: str) -> int | None:
            """A whole number; a bad one is logged and ignored, never fatal to a run."""
            raw = text(name)
            if raw is None:
                return None
            if raw.isdigit():
                return int(raw)
            log.warning("ignoring %s=%r: expected a whole number", name, raw)
            return None

        return cls(
            job_name=text(contract.ENV_JOB_NAME),
            job_namespace=text(contract.ENV_JOB_NAMESPACE),
            report_status=(text(contract.ENV_REPORT_STATUS) or "").lower() == "true",
            scratch=Path(text(contract.ENV_SCRATCH) or contract.SCRATCH),
            cache=Path(text(contract.ENV_CACHE) or Path.home() / ".cache" / "kubetune"),
            system_cache=path(contract.ENV_SYSTEM_CACHE),
            termination_log=path(contract.ENV_TERMINATION_LOG),
            s3_ca_bundle=path(contract.ENV_S3_CA_BUNDLE),
            s3_credentials_dir=path(contract.ENV_S3_CREDENTIALS_DIR),
            s3_public_endpoint_only=(text(contract.ENV_S3_PUBLIC_ENDPOINT_ONLY) or "").lower() == "true",
            mlflow_tracking_uri=text(contract.ENV_MLFLOW_TRACKING_URI),
            mlflow_credentials_dir=path(contract.ENV_MLFLOW_CREDENTIALS_DIR),
            mlflow_login=_login(text(contract.ENV_MLFLOW_USERNAME), text(contract.ENV_MLFLOW_PASSWORD))
            or text(contract.ENV_MLFLOW_TOKEN),
            hub_endpoint=text(contract.ENV_HUB_ENDPOINT),
            hub_token_file=path(contract.ENV_HUB_TOKEN_FILE),
            gcs_endpoint=text(contract.ENV_GCS_ENDPOINT),
            gcs_key_file=path(contract.ENV_GCS_KEY_FILE),
            azure_endpoint=text(contract.ENV_AZURE_ENDPOINT),
            azure_key_file=path(contract.ENV_AZURE_KEY_FILE),
            wandb_base_url=text(contract.ENV_WANDB_BASE_URL),
            wandb_key_file=path(contract.ENV_WANDB_KEY_FILE),
            oci_registry=text(contract.ENV_OCI_REGISTRY),
            oci_auth_file=path(contract.ENV_OCI_AUTH_FILE),
            storage_prefixes=tuple(p for p in (text(contract.ENV_STORAGE_PREFIXES) or "").split(",") if p),
            metrics_port=number(contract.ENV_METRICS_PORT),
            pushgateway_url=text(contract.ENV_PUSHGATEWAY_URL),
            push_interval_seconds=number(contract.ENV_PUSH_INTERVAL) or contract.DEFAULT_PUSH_INTERVAL_SECONDS,
            trace_microsteps=text(contract.ENV_TRACE_MICROSTEPS) == "1",
            rank=number("RANK") or 0,
            local_rank=number("LOCAL_RANK") or 0,
            world_size=number("WORLD_SIZE") or 1,
        )


def _login(username: str | None, password: str | None) -> tuple[str, str] | None:
    """MLflow's login variables, when both are set (MLflow's client reads them the same way)."""
    return (username, password) if username and password else None
