"""A thin, typed layer over the Kubernetes client: just the calls the operator makes."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from kubernetes import client
from kubernetes.client.rest import ApiException

from kubetune.api.v1alpha1 import GROUP, PLURAL, VERSION

KUEUE_GROUP, KUEUE_VERSION, KUEUE_WORKLOADS = "kueue.x-k8s.io", "v1beta1", "workloads"


class NotOwned(Exception):
    """An object with the child's name exists but belongs to someone else."""


def owned_by(obj: dict[str, Any], owner_uid: str) -> dict[str, Any]:
    """``obj`` if its controller ownerReference is ``owner_uid``; otherwise :class:`NotOwned`."""
    meta = obj.get("metadata", {})
    if any(ref.get("uid") == owner_uid and ref.get("controller") for ref in meta.get("ownerReferences") or []):
        return obj
    raise NotOwned(
        f"{obj.get('kind', 'object')} {meta.get('namespace')}/{meta.get('name')} already exists and is not owned "
        "by this FineTuneJob; delete or rename it, then recreate the FineTuneJob"
    )


@dataclass
class Kube:
    api: client.ApiClient

    @classmethod
    def from_host(cls, host: str | None = None) -> Kube:
        if host:
            configuration = client.Configuration()
            configuration.host = host
            return cls(client.ApiClient(configuration))
        from kubernetes import config

        try:
            config.load_incluster_config()
        except config.ConfigException:
            config.load_kube_config()
        return cls(client.ApiClient())

    @property
    def core(self) -> client.CoreV1Api:
        return client.CoreV1Api(self.api)

    @property
    def batch(self) -> client.BatchV1Api:
        return client.BatchV1Api(self.api)

    @property
    def custom(self) -> client.CustomObjectsApi:
        return client.CustomObjectsApi(self.api)

    @property
    def rbac(self) -> client.RbacAuthorizationV1Api:
        return client.RbacAuthorizationV1Api(self.api)

    def _plain(self, obj: Any) -> dict[str, Any]:
        return dict(self.api.sanitize_for_serialization(obj))

    # ------------------------------------------------------------------ reads
    def read(self, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        readers = {
            "Secret": self.core.read_namespaced_secret,
            "ConfigMap": self.core.read_namespaced_config_map,
            "PersistentVolumeClaim": self.core.read_namespaced_persistent_volume_claim,
            "ServiceAccount": self.core.read_namespaced_service_account,
            "Job": self.batch.read_namespaced_job,
            "Role": self.rbac.read_namespaced_role,
            "RoleBinding": self.rbac.read_namespaced_role_binding,
        }
        try:
            return self._plain(readers[kind](name, namespace))
        except ApiException as err:
            if err.status == 404:
                return None
            raise

    def read_finetunejob(self, namespace: str, name: str) -> dict[str, Any] | None:
        try:
            return dict(self.custom.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name))
        except ApiException as err:
            if err.status == 404:
                return None
            raise

    def finetunejob_keys(self, namespaces: tuple[str, ...]) -> set[tuple[str, str]]:
        """(namespace, name) of every FineTuneJob in ``namespaces`` (all namespaces when empty)."""
        if namespaces:
            listings = [
                self.custom.list_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL) for namespace in namespaces
            ]
        else:
            listings = [self.custom.list_cluster_custom_object(GROUP, VERSION, PLURAL)]
        return {
            (item["metadata"]["namespace"], item["metadata"]["name"])
            for listing in listings
            for item in listing.get("items", [])
        }

    # ------------------------------------------------------------------ writes
    def create(self, manifest: dict[str, Any]) -> dict[str, Any]:
        kind = manifest["kind"]
        namespace = manifest["metadata"]["namespace"]
        creators = {
            "ConfigMap": self.core.create_namespaced_config_map,
            "ServiceAccount": self.core.create_namespaced_service_account,
            "Job": self.batch.create_namespaced_job,
            "Role": self.rbac.create_namespaced_role,
            "RoleBinding": self.rbac.create_namespaced_role_binding,
        }
        return self._plain(creators[kind](namespace, manifest))

    def ensure(self, manifest: dict[str, Any], owner_uid: str) -> dict[str, Any]:
        """The child as it exists: read first, create when missing, and adopt an existing object
        only if its controller ownerReference carries this FineTuneJob's uid.

        Reading first keeps a steady-state reconcile free of writes; a 409 (someone created it
        between our read and our create, e.g. a previous operator process) leads to the same
        ownership check.
        """
        meta = manifest["metadata"]
        existing = self.read(manifest["kind"], meta["namespace"], meta["name"])
        if existing is None:
            try:
                return self.create(manifest)
            except ApiException as err:
                if err.status != 409:
                    raise
            existing = self.read(manifest["kind"], meta["namespace"], meta["name"])
            if existing is None:  # deleted again in between: the next reconcile creates it
                raise ApiException(status=409, reason=f"{manifest['kind']} {meta['name']} is being replaced")
        return owned_by(existing, owner_uid)

    def patch_job_suspend(self, namespace: str, name: str, suspend: bool) -> None:
        self.batch.patch_namespaced_job(name, namespace, {"spec": {"suspend": suspend}})

    def patch_finetunejob_status(self, namespace: str, name: str, status: dict[str, Any]) -> None:
        self.custom.patch_namespaced_custom_object_status(GROUP, VERSION, namespace, PLURAL, name, {"status": status})

    def workload_for_job(self, namespace: str, job_uid: str) -> dict[str, Any] | None:
        try:
            listing = self.custom.list_namespaced_custom_object(KUEUE_GROUP, KUEUE_VERSION, namespace, KUEUE_WORKLOADS)
        except ApiException as err:
            if err.status == 404:  # Kueue not installed
                return None
            raise
        for item in listing.get("items", []):
            if any(ref.get("uid") == job_uid for ref in item.get("metadata", {}).get("ownerReferences") or []):
                return dict(item)
        return None

    def patch_workload_active(self, namespace: str, name: str, active: bool) -> None:
        self.custom.patch_namespaced_custom_object(
            KUEUE_GROUP, KUEUE_VERSION, namespace, KUEUE_WORKLOADS, name, {"spec": {"active": active}}
        )
