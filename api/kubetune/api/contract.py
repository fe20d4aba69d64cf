"""The operator→pod contract: everything that crosses from the control plane into a trainer pod
and back, named once. Both planes import this module, so no name, path or number can drift apart.

- Environment: the variables the operator sets on a trainer container (the trainer reads them all
  once, in ``kubetune_trainer.environment.TrainerEnvironment.from_env``).
- Files: where the job's manifest is mounted, the scratch volume, the termination message.
- Exit codes: how the trainer says why it stopped; the Jobs' ``podFailurePolicy`` acts on them.
- Labels and annotations: how the operator marks its children and how both planes label metrics.

Exit codes 3 and 4 were free: Python itself exits with 1 (uncaught exception) and 2 (command-line
usage errors, which are bad input too), the shell with 126/127, and signals give 128 + N
(137 SIGKILL/OOMKilled, 143 SIGTERM). Nothing in the trainer's stack exits with 3 or 4.

Before any non-zero exit the trainer writes one line saying why to the file named by
:data:`ENV_TERMINATION_LOG` (the container's ``terminationMessagePath``), so ``kubectl describe
pod`` and the operator can show it. The line starts with a reason, ``<Reason>: <detail>``, e.g.
``TrainerCannotReport: HTTP 403 Forbidden: <the API's message>``.
"""

from __future__ import annotations

# --- A job on more than one node ---------------------------------------------------------------
RENDEZVOUS_PORT = 29400
"""The port of torchrun's c10d rendezvous store, which the agent on pod 0 of a multi-node job hosts."""
GROUP_RESTARTS = 3
"""How often torchrun's elastic agents restart the whole group after a process fails, before the pod
fails and the Job's per-index backoff takes over (a new pod for that index)."""
GROUP_ENV = {"TORCH_DISABLE_SHARE_RDZV_TCP_STORE": "1"}
"""What the agents of a multi-node group need besides their command. By default torchrun's agents share
one TCP store between the rendezvous and the training processes' own process group, kept across the
group's restarts with the keys of the last round still in it; an agent that restarts for another node's
failure does not count a restart, so the new processes can read the dead ones' addresses (gloo then
fails to connect, or waits on them: a hang seen in tests/trainer/test_multinode_training.py).
Unshared, rank 0's process hosts a fresh store every round."""


def group_launch(nodes: int, processes_per_node: int, *, endpoint: str, run_id: str) -> list[str]:
    """torchrun's options for one node of a multi-node group: c10d rendezvous at ``endpoint`` (the host
    of node 0 and :data:`RENDEZVOUS_PORT` in a cluster), a fixed node count, and the elastic agent
    restarting the whole group when a process fails. The same for the operator's pods and for
    ``kubetune run --nodes``."""
    return [
        f"--nnodes={nodes}",
        f"--nproc-per-node={processes_per_node}",
        "--rdzv-backend=c10d",
        f"--rdzv-endpoint={endpoint}",
        f"--rdzv-id={run_id}",
        f"--max-restarts={GROUP_RESTARTS}",
    ]


# --- Environment of a trainer container -----------------------------------------------------
ENV_JOB_NAME = "KUBETUNE_JOB_NAME"
"""The FineTuneJob's name: the status the trainer patches and the job label of its metrics."""
ENV_JOB_NAMESPACE = "KUBETUNE_JOB_NAMESPACE"
ENV_REPORT_STATUS = "KUBETUNE_REPORT_STATUS"
"""``true`` in a pod: write progress and results to the FineTuneJob status. Unset locally."""
ENV_SCRATCH = "KUBETUNE_SCRATCH"
"""The pod's writable scratch volume; the work folder is ``<scratch>/work``."""
ENV_CACHE = "KUBETUNE_CACHE"
"""Where downloaded models and generated base answers are cached (writable)."""
ENV_SYSTEM_CACHE = "KUBETUNE_SYSTEM_CACHE"
"""A read-only cache baked into the trainer image (the built-in model), consulted after ENV_CACHE."""
ENV_TERMINATION_LOG = "KUBETUNE_TERMINATION_LOG"
"""Where the trainer writes its termination message (the container's ``terminationMessagePath``)."""
ENV_S3_CA_BUNDLE = "KUBETUNE_S3_CA_BUNDLE"
"""The CA bundle (``spec.s3.caBundle``) as a file in the pod, for TLS to a private S3 endpoint."""
ENV_S3_CREDENTIALS_DIR = "KUBETUNE_S3_CREDENTIALS_DIR"
"""The folder where ``spec.s3.credentialsSecret`` is mounted as files (S3_CREDENTIAL_FILES); the
trainer builds its S3 client from them. Files, not environment variables: a process listing, a crash
dump or a child process never sees them, and a missing key is the trainer's clear error, not a pod
stuck in CreateContainerConfigError."""
ENV_S3_PUBLIC_ENDPOINT_ONLY = "KUBETUNE_S3_PUBLIC_ENDPOINT_ONLY"
"""``true`` when ``spec.s3.endpoint`` was admitted only as a public endpoint (the ``*`` entry of
``policy.allowedS3Endpoints``), not listed by the platform: its name was checked, not what it resolves
to, so the trainer refuses every S3 connection whose peer address (the socket's, not a separate
lookup) is loopback, link-local, private or reserved (``kubetune.api.addresses``). Unset: the endpoint
is the platform's own or listed by it, and reached wherever it resolves."""
ENV_STORAGE_PREFIXES = "KUBETUNE_STORAGE_PREFIXES"
"""The ``s3://`` prefixes (comma-separated, the job's namespace filled in) the platform lets this job's
storage stay under (``policy.allowedStoragePrefixes``). The operator checked every URI of the spec; the
trainer holds URIs it finds only at run time to them too: those a continued version's manifests name
as its training data (``kubetune_trainer.models.continual``). Unset: any bucket."""
ENV_HUB_ENDPOINT = "HF_ENDPOINT"
"""The Hugging Face Hub endpoint for ``hf://`` URIs: the platform's (Helm value ``hub.endpoint``, a
mirror in an air-gapped cluster), never the job's. huggingface_hub's own variable, so the library
reads the same value. Unset: huggingface_hub's default, https://huggingface.co."""
ENV_HUB_OFFLINE = "HF_HUB_OFFLINE"
"""huggingface_hub's switch: ``1`` in every pod of a job that names no ``hf://`` URI, so nothing in the
trainer reaches for the Hub; ``0`` in a job that reads from it."""
ENV_HUB_TOKEN_FILE = "KUBETUNE_HUB_TOKEN_FILE"
"""The file holding ``spec.hub.tokenSecret``'s key, mounted by the operator (HUB_TOKEN_DIR); a file for
the reasons ENV_S3_CREDENTIALS_DIR gives. Unset: anonymous reads in a pod, the user's own login
(``HF_TOKEN`` or ``hf auth login``) with ``kubetune run``."""
ENV_GCS_ENDPOINT = "KUBETUNE_GCS_ENDPOINT"
"""The Cloud Storage endpoint for ``gs://`` URIs: the platform's (Helm value ``gcs.endpoint``: Private
Service Connect, an emulator), never the job's. Unset: Google's, https://storage.googleapis.com."""
ENV_GCS_KEY_FILE = "KUBETUNE_GCS_KEY_FILE"
"""The file holding ``spec.gcs.credentialsSecret``'s key (a service-account key in JSON), mounted by the
operator (GCS_CREDENTIALS_DIR). Unset: Application Default Credentials (Workload Identity in a pod,
``gcloud auth application-default login`` with ``kubetune run``)."""
ENV_AZURE_ENDPOINT = "KUBETUNE_AZURE_ENDPOINT"
"""The Blob Storage URL of an ``az://`` URI's account, with ``{account}`` in it: the platform's (Helm value
``azure.endpoint``: a sovereign cloud, a private endpoint, an emulator), never the job's. Unset: Azure's
public cloud, https://{account}.blob.core.windows.net."""
ENV_AZURE_KEY_FILE = "KUBETUNE_AZURE_KEY_FILE"
"""The file holding ``spec.azure.credentialsSecret``'s key (a storage account key), mounted by the operator
(AZURE_CREDENTIALS_DIR). Unset: DefaultAzureCredential (AKS Workload Identity in a pod, ``az login`` with
``kubetune run``)."""
ENV_WANDB_BASE_URL = "WANDB_BASE_URL"
"""The W&B server a job with ``spec.tracking.wandb`` reports to: the platform's (Helm value
``tracking.wandb.host``), set only on such a job's training pod. W&B's own variable."""
ENV_WANDB_KEY_FILE = "KUBETUNE_WANDB_KEY_FILE"
"""The file holding ``spec.tracking.wandb.apiKeySecret``'s key, mounted by the operator (WANDB_CREDENTIALS_DIR);
a file, so no child process inherits the key. Unset: W&B's own login (``WANDB_API_KEY``, ``wandb login``)."""
ENV_OCI_REGISTRY = "KUBETUNE_OCI_REGISTRY"
"""The URL of the registry ``spec.output.oci.repository`` names, as the platform lists it (Helm value
``registry.oci.registries``: https://ghcr.io, http://registry.registry.svc:5000): the platform decides
plain HTTP, never the job. Set on the training pod of a job with ``spec.output.oci`` only."""
ENV_OCI_AUTH_FILE = "KUBETUNE_OCI_AUTH_FILE"
"""The file holding ``spec.output.oci.credentialsSecret``'s ``.dockerconfigjson`` (a Docker config with
``auths``), mounted by the operator (OCI_CREDENTIALS_DIR). Unset: anonymous pushes."""
ENV_MLFLOW_TRACKING_URI = "MLFLOW_TRACKING_URI"
"""The MLflow server a job with ``spec.tracking.mlflow`` reports to: the platform's (Helm value
``tracking.mlflow.uri``), set only on such a job's pods. MLflow's own variable, so a user's
``kubetune run`` reports where their other tools do."""
ENV_MLFLOW_CREDENTIALS_DIR = "KUBETUNE_MLFLOW_CREDENTIALS_DIR"
"""Where ``spec.tracking.mlflow.credentialsSecret``'s keys (or ``tokenSecret``'s) are mounted
(MLFLOW_CREDENTIALS_DIR), on the training pod only. Unset: no credentials in a pod; with ``kubetune
run``, MLflow's own ``MLFLOW_TRACKING_USERNAME`` and ``MLFLOW_TRACKING_PASSWORD`` when both are set, else
``MLFLOW_TRACKING_TOKEN``."""
ENV_MLFLOW_USERNAME = "MLFLOW_TRACKING_USERNAME"
ENV_MLFLOW_PASSWORD = "MLFLOW_TRACKING_PASSWORD"
ENV_MLFLOW_TOKEN = "MLFLOW_TRACKING_TOKEN"
"""MLflow's own login variables (a user name and password, or a bearer token): honoured by ``kubetune
run`` (never set by the operator, which mounts the job's Secret instead, ENV_MLFLOW_CREDENTIALS_DIR)."""
ENV_METRICS_PORT = "KUBETUNE_METRICS_PORT"
"""The port the trainer serves ``/metrics`` on (also honoured by ``kubetune run``)."""
ENV_PUSHGATEWAY_URL = "KUBETUNE_PUSHGATEWAY_URL"
ENV_PUSH_INTERVAL = "KUBETUNE_PUSH_INTERVAL_SECONDS"
DEFAULT_PUSH_INTERVAL_SECONDS = 15
"""Seconds between a trainer's pushes when ENV_PUSH_INTERVAL is unset (the operator's default too)."""
ENV_TRACE_MICROSTEPS = "KUBETUNE_TRACE_MICROSTEPS"
"""``1``: log every micro-batch's tokens (tests of gradient accumulation read it). Never set by the operator."""

# --- Files and folders in a trainer pod --------------------------------------------------------
JOB_FILE = "/etc/kubetune/job.yaml"
"""The FineTuneJob manifest (a ConfigMap key mounted read-only): ``kubetune train --job JOB_FILE``."""
JOB_FILE_KEY = "job.yaml"
"""The key of the job's ConfigMap that is mounted as JOB_FILE."""
SCRATCH = "/scratch"
"""The scratch volume in a pod; also the trainer's default when ENV_SCRATCH is unset."""
CACHE = f"{SCRATCH}/cache"
S3_CREDENTIALS_DIR = "/var/run/secrets/kubetune/s3"
"""Where the operator mounts the S3 credentials Secret (the value of ENV_S3_CREDENTIALS_DIR)."""
S3_ACCESS_KEY_ID_FILE = "access-key-id"
S3_SECRET_ACCESS_KEY_FILE = "secret-access-key"
S3_SESSION_TOKEN_FILE = "session-token"
"""File names in S3_CREDENTIALS_DIR; the Secret's keys (``spec.s3.credentialsSecret.*Key``) are
mapped onto them, and a key the Secret lacks is simply absent (the volume is ``optional``)."""
HUB_TOKEN_DIR = "/var/run/secrets/kubetune/hub"
HUB_TOKEN_FILE = "token"
"""Where the operator mounts ``spec.hub.tokenSecret``'s key: ``HUB_TOKEN_DIR/HUB_TOKEN_FILE``."""
GCS_CREDENTIALS_DIR = "/var/run/secrets/kubetune/gcs"
GCS_KEY_FILE = "key.json"
"""Where the operator mounts ``spec.gcs.credentialsSecret``'s key: ``GCS_CREDENTIALS_DIR/GCS_KEY_FILE``."""
AZURE_CREDENTIALS_DIR = "/var/run/secrets/kubetune/azure"
AZURE_KEY_FILE = "account-key"
"""Where the operator mounts ``spec.azure.credentialsSecret``'s key: ``AZURE_CREDENTIALS_DIR/AZURE_KEY_FILE``."""
WANDB_CREDENTIALS_DIR = "/var/run/secrets/kubetune/wandb"
WANDB_KEY_FILE = "api-key"
"""Where the operator mounts ``spec.tracking.wandb.apiKeySecret``'s key: ``WANDB_CREDENTIALS_DIR/WANDB_KEY_FILE``."""
OCI_CREDENTIALS_DIR = "/var/run/secrets/kubetune/oci"
OCI_AUTH_FILE = "config.json"
OCI_SECRET_KEY = ".dockerconfigjson"
"""Where the operator mounts ``spec.output.oci.credentialsSecret``'s ``OCI_SECRET_KEY``:
``OCI_CREDENTIALS_DIR/OCI_AUTH_FILE``."""
MLFLOW_CREDENTIALS_DIR = "/var/run/secrets/kubetune/mlflow"
MLFLOW_USERNAME_FILE = "username"
MLFLOW_PASSWORD_FILE = "password"
MLFLOW_TOKEN_FILE = "token"
"""File names in MLFLOW_CREDENTIALS_DIR; the Secret's keys (``credentialsSecret.usernameKey`` and
``passwordKey``, or ``tokenSecret.key``) are mapped onto them, and a key the Secret lacks is absent (the
volume is ``optional``)."""
TERMINATION_LOG_PATH = "/dev/termination-log"
"""The trainer container's ``terminationMessagePath`` (the Kubernetes default, set explicitly)."""
TERMINATION_MESSAGE_LIMIT = 4096
"""Bytes of a termination message the kubelet keeps; the trainer writes no more than this."""
TRAINER_CONTAINER = "trainer"
"""The container whose exit code and termination message the operator reads."""

# --- Exit codes ----------------------------------------------------------------------------------
EXIT_OK = 0
"""Done: published (also when the quality gate is missed: published, not promoted), or pre-flight passed."""

EXIT_RETRYABLE = 1
"""A failure another pod may not repeat (storage unreachable, out of memory, a crash): the Job retries."""

EXIT_CONFIG = 2
"""Bad manifest, bad dataset, failed pre-flight: a retry cannot fix it. FailJob at once."""

EXIT_CANNOT_REPORT = 3
"""The trainer cannot write its FineTuneJob status (credentials refused, API unreachable for the
whole first-write window), so it stopped before doing any work: training that nobody can follow
must not run for hours. A retried pod would have the same ServiceAccount and Role. FailJob at once."""

EXIT_RESULT_NOT_REPORTED = 4
"""The run was trained and published (its artifacts are in storage and stay there) but the final
result could not be written to the FineTuneJob status. Retrying would train again for hours.
FailJob at once; the termination message names the version and manifest URI."""

EXIT_PREEMPTED = 143
"""SIGTERM (node drain, preemption): a checkpoint was written and the next pod resumes from it."""

EXIT_CODE_MEANINGS = {
    EXIT_OK: "ok",
    EXIT_RETRYABLE: "retryable",
    EXIT_CONFIG: "bad input",
    EXIT_CANNOT_REPORT: "status not writable",
    EXIT_RESULT_NOT_REPORTED: "result not reported",
    EXIT_PREEMPTED: "preempted",
}
"""Each code in a few words: the trainer's exit-code metric explains itself with these."""

EXIT_DAMAGED = 1
"""``kubetune verify``: the version differs from its manifest, or (in the verification Job) the
manifest differs from what the trainer reported. 2 (EXIT_CONFIG) there means it could not be checked."""

FAIL_JOB_EXIT_CODES = (EXIT_CONFIG, EXIT_CANNOT_REPORT, EXIT_RESULT_NOT_REPORTED)
"""The codes the pod failure policy fails the Job on at once (retrying cannot help)."""

REPORTING_FAILURES = (EXIT_CANNOT_REPORT, EXIT_RESULT_NOT_REPORTED)
"""The codes meaning "could not write the FineTuneJob status": the trainer's termination message
(read from the pod) is then the only place where it could leave the reason."""

VERIFICATION_FAIL_JOB_EXIT_CODES = (EXIT_DAMAGED, EXIT_CONFIG)
"""The verification Job fails at once on a mismatch or when the version cannot be read: a retry would
read the same objects. Only a crash or a disruption is retried."""

# --- Published versions ---------------------------------------------------------------------------
VERSION_PATTERN = r"v[0-9]{8}-[0-9]{6}-[0-9a-f]{6}"
"""How the trainer names a version (``v<UTC date>-<time>-<6 hex>``); the operator builds a version's
URI from a reported name only when it matches this, whole."""

# --- Labels and annotations -------------------------------------------------------------------
MANAGED_BY = "kubetune-operator"
"""``app.kubernetes.io/managed-by`` of every child; the operator watches Jobs with it."""
MANAGED_BY_LABEL = "app.kubernetes.io/managed-by"
JOB_LABEL = "kubetune.dev/job"
COMPONENT_LABEL = "app.kubernetes.io/component"
FINETUNEJOB_ANNOTATION = "kubetune.dev/finetunejob"
"""The FineTuneJob's full name: a label value is at most 63 characters, a name up to 253."""
MONITOR_LABEL = "kubetune.dev/drift-monitor"
"""On a DriftMonitor's children (check Jobs, retraining FineTuneJobs): the monitor's name, hash-shortened
to a label value. Not ``JOB_LABEL``: a FineTuneJob of the same name must not select a monitor's pods."""
DRIFT_CHECK_COMPONENT = "drift-check"
DRIFT_COMPARE_COMPONENT = "drift-compare"
RETRAINING_COMPONENT = "retraining"

# Every per-job metric series, from the operator or a trainer, names its FineTuneJob with these two
# labels. Not ``job``: Prometheus owns that label (the scrape job) and would rename ours.
NAMESPACE_LABEL = "namespace"
FINETUNEJOB_LABEL = "finetunejob"
DRIFTMONITOR_LABEL = "driftmonitor"  # the same, for a DriftMonitor's series

PUSHGATEWAY_JOB = "kubetune-trainer"
"""A trainer pushes under this group key, so its final values outlive the pod and the operator can
delete exactly that group when the FineTuneJob is deleted."""


def pushgateway_grouping_key(namespace: str, finetunejob: str) -> dict[str, str]:
    return {NAMESPACE_LABEL: namespace, FINETUNEJOB_LABEL: finetunejob}


NAMESPACE_PLACEHOLDER = "{namespace}"
"""In the Pushgateway URL (``metrics.trainer.pushgatewayUrl``): the FineTuneJob's namespace, for one
Pushgateway per namespace (``http://prometheus-pushgateway.{namespace}.svc:9091``)."""

# --- What the trainer reports in status.result.metrics ---------------------------------------
# Keys are ``<model>.<metric>``: the evaluation metrics the job asked for (v1alpha1.Metric) and the
# forgetting measures, for the base and the tuned model. The operator re-exports exactly these (a key
# outside them is not a metric it knows, and would be an unbounded label value).
RESULT_MODELS = ("base", "tuned")
FORGETTING_METRICS = ("regressionLikelihood", "generalKnownAnswers", "generalLabelCollapse")
# Preference runs (method.objective dpo or orpo), on the held-out pairs: the share of pairs whose chosen
# answer the tuned model prefers more than the base does (the base side is chance, 0.5), the mean
# margin of the implicit rewards (the base side is 0) and, when answers are generated, the share of
# prompts where the tuned model's answer is nearer the chosen answer than the base's (0.5 for the base).
PREFERENCE_METRICS = ("rewardAccuracy", "rewardMargin", "pairWinRate")
