"""The cluster as operator tests drive it: the test API server (tests/kubeapi) installed with the chart,
a tenant who applies FineTuneJobs, and fixtures that play the cluster's own components.

Everything goes over HTTPS with each actor's own credentials and RBAC, exactly as in a cluster:
- the tenant (``alice``, the built-in ``edit`` role in the tenant namespaces) applies and reads;
- the Job controller creates a Job's pod and writes the Job's status (what kube-controller-manager does);
- the kubelet reports the pod's container states and mints the pod's ServiceAccount token (TokenRequest);
- the trainer writes its reports with that token, so its per-job Role really is what allows them;
- the garbage collector deletes dependents whose owners are gone, honouring propagation finalizers.
"""

from __future__ import annotations

import base64
import copy
import secrets
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from kubernetes.client.rest import ApiException

from kubetune.api.contract import EXIT_DAMAGED
from kubetune.api.v1alpha1 import GROUP, PLURAL, VERSION
from kubetune.operator import children
from kubetune.operator.validation import (
    AZURE_CREDENTIALS_LABEL,
    GCS_CREDENTIALS_LABEL,
    HUB_TOKEN_LABEL,
    OCI_CREDENTIALS_LABEL,
    S3_CREDENTIALS_LABEL,
    TRAINER_IDENTITY_LABEL,
    WEBHOOK_LABEL,
)
from tests.kubeapi.cluster import Identity, TestCluster
from tests.kubeapi.model import UserInfo
from tests.kubeapi.server import Outage

COMPLETION_INDEX = "batch.kubernetes.io/job-completion-index"


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class Cluster:
    def __init__(self, test_cluster: TestCluster) -> None:
        self.test_cluster = test_cluster
        self.tenant = test_cluster.tenant
        self.core, self.batch, self.custom = self.tenant.core, self.tenant.batch, self.tenant.custom
        self._trainer_identities: dict[tuple[str, str], Identity] = {}

    @property
    def apiserver(self) -> Any:
        return self.test_cluster.apiserver

    def outage(self, outage: Outage) -> Outage:
        """Make the API server refuse matching requests (see tests.kubeapi.server.Outage)."""
        server = self.apiserver.server
        self.apiserver.call(lambda: server.outages.append(outage))
        return outage

    # ------------------------------------------------------------------ the tenant
    def apply(self, manifest: dict[str, Any], namespace: str = "default") -> dict[str, Any]:
        manifest = {**manifest, "metadata": {**manifest.get("metadata", {}), "namespace": namespace}}
        self.custom.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, manifest)
        return self.finetunejob(manifest["metadata"]["name"], namespace)

    def finetunejob(self, name: str, namespace: str = "default") -> dict[str, Any]:
        return dict(self.custom.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name))

    def patch_spec(self, name: str, spec: dict[str, Any], namespace: str = "default") -> None:
        self.custom.patch_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name, {"spec": spec})

    def delete_finetunejob(self, name: str, namespace: str = "default") -> None:
        self.custom.delete_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name)

    def job(self, name: str, namespace: str = "default") -> dict[str, Any] | None:
        try:
            return self.tenant.plain(self.batch.read_namespaced_job(name, namespace))
        except ApiException as err:
            if err.status == 404:
                return None
            raise

    def jobs(self, namespace: str = "default") -> list[dict[str, Any]]:
        return list(self.tenant.plain(self.batch.list_namespaced_job(namespace)).get("items", []))

    def events_for(self, name: str, namespace: str = "default") -> list[dict[str, Any]]:
        listing = self.tenant.plain(self.core.list_namespaced_event(namespace))
        return [e for e in listing.get("items", []) if e.get("involvedObject", {}).get("name") == name]

    def create_secret(
        self,
        name: str,
        data: dict[str, str],
        namespace: str = "default",
        *,
        s3_credentials: bool = True,
        webhook: bool = False,
        hub_token: bool = False,
        gcs_key: bool = False,
        azure_key: bool = False,
        registry_login: bool = False,
    ) -> None:
        """A Secret; by default opted in as S3 credentials, as a namespace admin labels one for FineTuneJobs
        (``webhook``: opted in as a webhook's URL and signing key instead; ``hub_token``: as a Hub token;
        ``gcs_key``: as a Cloud Storage service-account key; ``azure_key``: as an Azure storage account key; ``registry_login``: as an OCI registry login)."""
        encoded = {k: base64.b64encode(v.encode()).decode() for k, v in data.items()}
        label = (
            WEBHOOK_LABEL
            if webhook
            else HUB_TOKEN_LABEL
            if hub_token
            else GCS_CREDENTIALS_LABEL
            if gcs_key
            else AZURE_CREDENTIALS_LABEL
            if azure_key
            else OCI_CREDENTIALS_LABEL
            if registry_login
            else S3_CREDENTIALS_LABEL
            if s3_credentials
            else None
        )
        labels = {label: "true"} if label else {}
        metadata = {"name": name, "labels": labels}
        self.core.create_namespaced_secret(
            namespace, {"apiVersion": "v1", "kind": "Secret", "metadata": metadata, "data": encoded}
        )

    def create_service_account(self, name: str, namespace: str = "default", *, trainer_identity: bool = True) -> None:
        """A ServiceAccount; by default opted in as a trainer identity."""
        labels = {TRAINER_IDENTITY_LABEL: "true"} if trainer_identity else {}
        account = {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": name, "labels": labels}}
        self.core.create_namespaced_service_account(namespace, account)

    # ------------------------------------------------------------------ the Job controller and the kubelet
    def set_job_status(self, name: str, status: dict[str, Any], namespace: str = "default") -> None:
        self.test_cluster.job_controller.batch.patch_namespaced_job_status(name, namespace, {"status": status})

    def start_job(self, name: str, namespace: str = "default") -> dict[str, Any]:
        """The Job controller creates the pods (``parallelism`` of them; an Indexed Job's numbered); the
        kubelet starts them; the Job counts them ready. Returns the first pod."""
        job = self.job(name, namespace)
        assert job is not None, f"Job {name} does not exist"
        count = job["spec"].get("parallelism", 1)
        indexed = job["spec"].get("completionMode") == "Indexed"
        pods = [self._create_pod(job, index if indexed else None) for index in range(count)]
        self.set_job_status(
            name,
            {"active": count, "ready": count, "startTime": job.get("status", {}).get("startTime") or _now()},
            namespace,
        )
        return pods[0]

    def _create_pod(self, job: dict[str, Any], index: int | None = None) -> dict[str, Any]:
        """As the Job controller makes it; for an Indexed Job, pod ``index``: its index as a label and
        an annotation, in JOB_COMPLETION_INDEX, and in its hostname ``<job>-<index>``."""
        meta, template = job["metadata"], job["spec"]["template"]
        spec = copy.deepcopy(template["spec"])
        labels = dict(template["metadata"].get("labels") or {})
        annotations = dict(template["metadata"].get("annotations") or {})
        prefix = meta["name"]
        if index is not None:
            prefix = f"{meta['name']}-{index}"
            labels[COMPLETION_INDEX] = annotations[COMPLETION_INDEX] = str(index)
            spec["hostname"] = prefix
            source = {"fieldRef": {"fieldPath": f"metadata.annotations['{COMPLETION_INDEX}']"}}
            for container in spec["containers"]:
                container["env"] = [*container.get("env", []), {"name": "JOB_COMPLETION_INDEX", "valueFrom": source}]
        pod = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {
                "name": f"{prefix}-{secrets.token_hex(3)[:5]}",
                "namespace": meta["namespace"],
                "labels": labels,
                "annotations": annotations,
                "ownerReferences": [
                    {
                        "apiVersion": "batch/v1",
                        "kind": "Job",
                        "name": meta["name"],
                        "uid": meta["uid"],
                        "controller": True,
                        "blockOwnerDeletion": True,
                    }
                ],
            },
            "spec": spec,
        }
        controller = self.test_cluster.job_controller
        created = controller.plain(controller.core.create_namespaced_pod(meta["namespace"], pod))
        status = {
            "phase": "Running",
            "containerStatuses": [
                {
                    "name": c["name"],
                    "ready": True,
                    "image": c["image"],
                    "imageID": "",
                    "restartCount": 0,
                    "state": {"running": {"startedAt": _now()}},
                }
                for c in pod["spec"]["containers"]
            ],
        }
        self.test_cluster.kubelet.core.patch_namespaced_pod_status(
            created["metadata"]["name"], meta["namespace"], {"status": status}
        )
        return created

    def finish_job(
        self,
        name: str,
        *,
        succeeded: bool,
        reason: str = "",
        message: str = "",
        namespace: str = "default",
        exit_code: int | None = None,
        termination_message: str = "",
    ) -> None:
        """The pod ends (the kubelet records its exit), then the Job controller marks the Job finished.

        With ``exit_code`` and a pod failure policy rule that fails the Job on it, the condition
        carries the Job controller's own PodFailurePolicy reason and message.
        """
        now = _now()
        job = self.job(name, namespace)
        assert job is not None, f"Job {name} does not exist"
        pods = self._pods_of(job)
        code = exit_code if exit_code is not None else (0 if succeeded else 1)
        for pod in pods:
            state = {
                "terminated": {
                    "exitCode": code,
                    "reason": "Completed" if code == 0 else "Error",
                    "message": termination_message,
                    "startedAt": now,
                    "finishedAt": now,
                }
            }
            statuses = [
                {
                    "name": c["name"],
                    "ready": False,
                    "image": c["image"],
                    "imageID": "",
                    "restartCount": 0,
                    "state": state,
                }
                for c in pod["spec"]["containers"]
            ]
            phase = "Succeeded" if code == 0 else "Failed"
            self.test_cluster.kubelet.core.patch_namespaced_pod_status(
                pod["metadata"]["name"], namespace, {"status": {"phase": phase, "containerStatuses": statuses}}
            )
        if exit_code is not None and not succeeded and not reason:
            pod_name = pods[-1]["metadata"]["name"] if pods else f"{name}-xxxxx"
            rule = self._fail_job_rule(job, exit_code)
            if rule is not None:
                reason = "PodFailurePolicy"
                message = f"Container trainer for pod {namespace}/{pod_name} failed with exit code {exit_code} matching FailJob rule at index {rule}"
            else:
                reason, message = "BackoffLimitExceeded", "Job has reached the specified backoff limit"
        kind = "Complete" if succeeded else "Failed"
        condition = {
            "type": kind,
            "status": "True",
            "reason": reason or kind,
            "message": message,
            "lastTransitionTime": now,
        }
        status: dict[str, Any] = {"active": 0, "ready": 0, "conditions": [condition]}
        completions = job["spec"].get("completions", 1)
        status["succeeded" if succeeded else "failed"] = completions if succeeded else 1
        if succeeded and job["spec"].get("completionMode") == "Indexed":
            status["completedIndexes"] = "0" if completions == 1 else f"0-{completions - 1}"
        if succeeded:
            status["completionTime"] = now
        self.set_job_status(name, status, namespace)

    def verify_promotion(
        self, name: str, *, verified: bool = True, said: str = "", namespace: str = "default"
    ) -> dict[str, Any]:
        """The operator's verification Job for a reported promotion runs and ends: Complete when the
        manifest backs the report, else its pod exits 1 (EXIT_DAMAGED) saying ``said``. The Job as made."""
        job_name = f"{name}-verify"
        job = wait_for(lambda: self.job(job_name, namespace), what=f"the verification Job {job_name}")
        self.start_job(job_name, namespace)
        self.finish_job(
            job_name,
            succeeded=verified,
            exit_code=0 if verified else EXIT_DAMAGED,
            termination_message=said,
            namespace=namespace,
        )
        return dict(job)

    @staticmethod
    def _fail_job_rule(job: dict[str, Any], exit_code: int) -> int | None:
        for index, rule in enumerate((job["spec"].get("podFailurePolicy") or {}).get("rules") or []):
            codes = rule.get("onExitCodes") or {}
            if (
                rule.get("action") == "FailJob"
                and codes.get("operator") == "In"
                and exit_code in codes.get("values", [])
            ):
                return index
        return None

    def _pods_of(self, job: dict[str, Any]) -> list[dict[str, Any]]:
        controller = self.test_cluster.job_controller
        listing = controller.core.list_namespaced_pod(
            job["metadata"]["namespace"], label_selector=f"batch.kubernetes.io/controller-uid={job['metadata']['uid']}"
        )
        return list(controller.plain(listing).get("items", []))

    def delete_job(self, name: str, namespace: str = "default") -> None:
        """What the TTL-after-finished controller does (foreground deletion: pods first)."""
        self.test_cluster.job_controller.batch.delete_namespaced_job(name, namespace, propagation_policy="Foreground")
        self.collect_garbage()

    # ------------------------------------------------------------------ the trainer
    def trainer(self, name: str, namespace: str = "default") -> Identity:
        """The trainer pod's identity: its ServiceAccount's token, minted by the kubelet (TokenRequest)."""
        spec = self.finetunejob(name, namespace)["spec"]
        return self._service_account_identity(
            namespace, spec.get("serviceAccountName") or children.trainer_account_name(name)
        )

    def pod_kubeconfig(self, job: dict[str, Any]) -> Path:
        """A kubeconfig with the token the kubelet mounts into the Job's pod (its ServiceAccount's)."""
        namespace = job["metadata"]["namespace"]
        account = job["spec"]["template"]["spec"]["serviceAccountName"]
        return self._service_account_identity(namespace, account).kubeconfig

    def _service_account_identity(self, namespace: str, account: str) -> Identity:
        key = (namespace, account)
        if key not in self._trainer_identities:
            request = {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": {"audiences": []}}
            issued = self.test_cluster.kubelet.call(
                "POST", f"/api/v1/namespaces/{namespace}/serviceaccounts/{account}/token", request
            )
            user = UserInfo.service_account(namespace, account)
            path = self.test_cluster.folder / "kubeconfigs" / f"sa-{namespace}-{account}.yaml"
            self._trainer_identities[key] = Identity(
                user, self.apiserver.kubeconfig(user, path, issued["status"]["token"])
            )
        return self._trainer_identities[key]

    def trainer_reports(self, name: str, status: dict[str, Any], namespace: str = "default") -> None:
        self.trainer(name, namespace).custom.patch_namespaced_custom_object_status(
            GROUP, VERSION, namespace, PLURAL, name, {"status": status}
        )

    def as_operator(self) -> Identity:
        """The operator's own credentials: for a test that plays a write the operator made before it died."""
        return self.test_cluster.identity(self.test_cluster.operator_user)

    # ------------------------------------------------------------------ the garbage collector
    def collect_garbage(self) -> list[str]:
        """Delete dependents whose owners are gone and finish foreground and orphan deletions, until
        nothing is left to do. Returns ``plural/name`` of everything it deleted."""
        gc = self.test_cluster.garbage_collector
        removed: list[str] = []
        while True:
            objects = self._everything(gc)
            # Owners whose dependents must go: present and not in a foreground deletion.
            alive = {
                obj["metadata"]["uid"]
                for _, obj in objects
                if "foregroundDeletion" not in (obj["metadata"].get("finalizers") or [])
                or not obj["metadata"].get("deletionTimestamp")
            }
            actions = 0
            for path, obj in objects:
                meta = obj["metadata"]
                refs = meta.get("ownerReferences") or []
                if refs and not meta.get("deletionTimestamp") and all(ref.get("uid") not in alive for ref in refs):
                    gc.call("DELETE", path, {"propagationPolicy": "Background"})
                    removed.append(_short(path))
                    actions += 1
                elif meta.get("deletionTimestamp"):
                    actions += self._finish_deletion(gc, path, obj, objects)
            if not actions:
                return removed

    @staticmethod
    def _finish_deletion(
        gc: Identity, path: str, obj: dict[str, Any], objects: list[tuple[str, dict[str, Any]]]
    ) -> int:
        meta = obj["metadata"]
        finalizers = meta.get("finalizers") or []
        dependents = [
            (dep_path, dep)
            for dep_path, dep in objects
            if any(ref.get("uid") == meta["uid"] for ref in dep["metadata"].get("ownerReferences") or [])
        ]
        merge = "application/merge-patch+json"
        if "orphan" in finalizers:
            for dep_path, dep in dependents:
                kept = [ref for ref in dep["metadata"]["ownerReferences"] if ref.get("uid") != meta["uid"]]
                gc.call("PATCH", dep_path, {"metadata": {"ownerReferences": kept or None}}, merge)
            rest = [f for f in finalizers if f != "orphan"]
        elif "foregroundDeletion" in finalizers and not dependents:
            rest = [f for f in finalizers if f != "foregroundDeletion"]
        else:
            return 0
        gc.call("PATCH", path, {"metadata": {"finalizers": rest or None}}, merge)
        return 1

    @staticmethod
    def _everything(identity: Identity) -> list[tuple[str, dict[str, Any]]]:
        """(path, object) of every object of every listable resource, found by API discovery."""
        bases = ["/api/v1"] + [
            f"/apis/{version['groupVersion']}"
            for group in identity.call("GET", "/apis")["groups"]
            for version in group["versions"]
        ]
        found: list[tuple[str, dict[str, Any]]] = []
        for base in bases:
            for resource in identity.call("GET", base)["resources"]:
                if "/" in resource["name"] or "list" not in resource["verbs"]:
                    continue
                for obj in identity.call("GET", f"{base}/{resource['name']}")["items"]:
                    meta = obj["metadata"]
                    where = f"{base}/namespaces/{meta['namespace']}" if resource["namespaced"] else base
                    found.append((f"{where}/{resource['name']}/{meta['name']}", obj))
        return found


def _short(path: str) -> str:
    """``.../jobs/x`` -> ``jobs/x``."""
    return "/".join(path.rsplit("/", 2)[-2:])


def wait_for(check: Callable[[], Any], timeout: float = 20.0, interval: float = 0.1, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = check()
        except (ApiException, OSError):  # not there yet: a 404, or a server still starting
            last = None
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out waiting for {what} (last: {last!r})")
