"""A thin, typed layer over the Kubernetes client: just the calls the operator makes."""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass, field
from typing import Any

from kubernetes import client
from kubernetes.client.rest import ApiException

from kubetune.api.driftmonitor import PLURAL as MONITOR_PLURAL
from kubetune.api.v1alpha1 import GROUP, KIND, PLURAL, VERSION
from kubetune.kubeclient import ReauthenticatingApiClient
from kubetune.operator.cache import Ensured, ObjectCache

KUEUE_GROUP, KUEUE_VERSION, KUEUE_WORKLOADS = "kueue.x-k8s.io", "v1beta1", "workloads"
# (connect, read) seconds: a hung API call must not hold a reconcile worker for ever.
REQUEST_TIMEOUT = (5.0, 30.0)
# Refusals of a write that no retry can heal: the object itself is wrong (400, 422), too large
# (413), in a format the server refuses (415), or forbidden by RBAC or an admission policy (403).
PERMANENT_REFUSALS = (400, 403, 413, 415, 422)
# The API server answers a GET with this Accept header with the object's metadata only.
METADATA_ONLY = "application/json;as=PartialObjectMetadata;g=meta.k8s.io;v=v1"


def api_message(err: ApiException) -> str:
    """The API server's own words: the ``message`` of the Status body, else the HTTP reason."""
    try:
        message = json.loads(err.body or "{}").get("message")
    except (ValueError, AttributeError):
        message = None
    return f"HTTP {err.status} {err.reason}: {message or err.body or ''}".rstrip(": ")


class ChildRefused(Exception):
    """The API server refused to create a child for good (see PERMANENT_REFUSALS)."""

    def __init__(self, kind: str, name: str, err: ApiException) -> None:
        self.status = err.status
        super().__init__(f"the API server refused to create {kind} {name}: {api_message(err)}")


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


# Children made once per FineTuneJob that nobody but the operator changes: once seen, not checked again
# by this process (cache.Ensured).
ENSURED_ONCE = frozenset({"ConfigMap", "ServiceAccount", "Role", "RoleBinding"})


@dataclass
class Kube:
    api: client.ApiClient
    # Reads of the kinds it serves come from the operator's watches (cache.py); None: every read is a GET.
    cache: ObjectCache | None = None
    ensured: Ensured | None = field(default=None)
    # (kind, namespace, name) -> the resourceVersion of this process's last write of a watched object.
    _written: dict[tuple[str, str, str], str] = field(default_factory=dict, repr=False)

    @classmethod
    def from_environment(cls, *, cache: ObjectCache | None = None) -> Kube:
        """In-cluster credentials in a pod, else the kubeconfig (kubetune.kubeclient)."""
        return cls(ReauthenticatingApiClient(), cache, Ensured() if cache is not None else None)

    def _cached(self, kind: str) -> ObjectCache | None:
        return self.cache if self.cache is not None and self.cache.serves(kind) else None

    def _wrote(self, kind: str, body: dict[str, Any], *, echo_known: bool = False) -> dict[str, Any]:
        """The API server's answer to a write: what the cache holds from now on. ``echo_known``: the
        writer is the reconcile that acts on the object's events, so the watch event this write causes
        is recognised as its echo (:meth:`wrote_this`); never so for a FineTuneJob a monitor creates,
        whose first event is its first reconcile."""
        if echo_known:
            meta = body.get("metadata", {})
            self._written[(kind, meta.get("namespace", ""), meta.get("name", ""))] = meta.get("resourceVersion", "")
        if (cache := self._cached(kind)) is not None:
            cache.observe(kind, body)
        return body

    def wrote_this(self, kind: str, body: dict[str, Any]) -> bool:
        """Whether ``body`` (a watch event's) is exactly what this process's last write of it made."""
        meta = body.get("metadata", {})
        version = meta.get("resourceVersion")
        return bool(version) and self._written.get((kind, meta.get("namespace", ""), meta.get("name", ""))) == version

    def forget_written(self, kind: str, body: dict[str, Any]) -> None:
        meta = body.get("metadata", {})
        self._written.pop((kind, meta.get("namespace", ""), meta.get("name", "")), None)

    def ensured_already(self, kind: str, namespace: str, name: str, owner_uid: str) -> bool:
        """Whether this process saw the child exist for this owner (so building it again is not needed)."""
        return self.ensured is not None and self.ensured.get(kind, namespace, name, owner_uid) is not None

    def forget_owner(self, owner_uid: str) -> None:
        if self.ensured is not None:
            self.ensured.forget_owner(owner_uid)

    # Made once: the generated API classes are costly to make on every call.
    @functools.cached_property
    def core(self) -> client.CoreV1Api:
        return client.CoreV1Api(self.api)

    @functools.cached_property
    def batch(self) -> client.BatchV1Api:
        return client.BatchV1Api(self.api)

    @functools.cached_property
    def custom(self) -> client.CustomObjectsApi:
        return client.CustomObjectsApi(self.api)

    @functools.cached_property
    def rbac(self) -> client.RbacAuthorizationV1Api:
        return client.RbacAuthorizationV1Api(self.api)

    @functools.cached_property
    def networking(self) -> client.NetworkingV1Api:
        return client.NetworkingV1Api(self.api)

    def load_api_classes(self) -> None:
        """Make every generated API class now: the client imports their modules on first use (seconds
        of CPU), which would otherwise fall on the first reconciles and hold back the first jobs."""
        _ = (self.core, self.batch, self.custom, self.rbac, self.networking)

    @staticmethod
    def _plain(response: Any) -> dict[str, Any]:
        """The API server's JSON answer to a call made with ``_preload_content=False``. The generated
        client's models are skipped: building them from the JSON and turning them back into dicts was
        most of the operator's CPU per request (bench/operator.py)."""
        try:
            return dict(json.loads(response.data))
        finally:
            response.release_conn()  # back to the pool: an unreleased connection is a new TLS handshake

    # ------------------------------------------------------------------ reads
    def read(self, kind: str, namespace: str, name: str, *, cached: bool = True) -> dict[str, Any] | None:
        """The object, or None if there is none; a Secret as its metadata only (``read_metadata``). From the
        cache for the kinds it serves, unless ``cached`` is false."""
        if kind == "Secret":
            return self.read_metadata(kind, namespace, name)
        if cached and (cache := self._cached(kind)) is not None:
            return cache.get(kind, namespace, name)
        if kind == KIND:
            return self.read_finetunejob(namespace, name, fresh=True)
        readers = {
            "ConfigMap": self.core.read_namespaced_config_map,
            "PersistentVolumeClaim": self.core.read_namespaced_persistent_volume_claim,
            "ServiceAccount": self.core.read_namespaced_service_account,
            "Job": self.batch.read_namespaced_job,
            "Service": self.core.read_namespaced_service,
            "Role": self.rbac.read_namespaced_role,
            "RoleBinding": self.rbac.read_namespaced_role_binding,
            "NetworkPolicy": self.networking.read_namespaced_network_policy,
        }
        try:
            return self._plain(readers[kind](name, namespace, _preload_content=False, _request_timeout=REQUEST_TIMEOUT))
        except ApiException as err:
            if err.status == 404:
                return None
            raise

    def read_metadata(self, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        """The object's metadata only (a PartialObjectMetadata): what a Secret holds never reaches
        the operator, so it cannot leak it into status, Events or logs."""
        readers = {"Secret": self.core.read_namespaced_secret}
        try:
            response = readers[kind](
                name,
                namespace,
                _preload_content=False,
                _headers={"Accept": METADATA_ONLY},
                _request_timeout=REQUEST_TIMEOUT,
            )
        except ApiException as err:
            if err.status == 404:
                return None
            raise
        try:
            return dict(json.loads(response.data))
        finally:
            response.release_conn()  # back to the pool: an unreleased connection is a new TLS handshake

    def read_webhook_secret(self, namespace: str, name: str) -> dict[str, Any] | None:
        """A whole Secret, data included: only for a webhook's URL and signing key, which the operator
        itself must use (webhooks.py reads them at each delivery and never writes them anywhere)."""
        try:
            return self._plain(
                self.core.read_namespaced_secret(
                    name, namespace, _preload_content=False, _request_timeout=REQUEST_TIMEOUT
                )
            )
        except ApiException as err:
            if err.status == 404:
                return None
            raise

    def read_finetunejob(self, namespace: str, name: str, *, fresh: bool = False) -> dict[str, Any] | None:
        """From the cache; with ``fresh``, from the API server (and the cache updated with it)."""
        cache = self._cached(KIND)
        if cache is not None and not fresh:
            return cache.get(KIND, namespace, name)
        body = self._read_custom(PLURAL, namespace, name)
        if cache is not None and body is not None:
            cache.observe(KIND, body)
        return body

    def read_driftmonitor(self, namespace: str, name: str) -> dict[str, Any] | None:
        return self._read_custom(MONITOR_PLURAL, namespace, name)

    def _read_custom(self, plural: str, namespace: str, name: str) -> dict[str, Any] | None:
        try:
            return dict(
                self.custom.get_namespaced_custom_object(
                    GROUP, VERSION, namespace, plural, name, _request_timeout=REQUEST_TIMEOUT
                )
            )
        except ApiException as err:
            if err.status == 404:
                return None
            raise

    def list_finetunejobs(self, namespace: str) -> list[dict[str, Any]]:
        if (cache := self._cached(KIND)) is not None:
            return cache.list(KIND, namespace)
        listing = self.custom.list_namespaced_custom_object(
            GROUP, VERSION, namespace, PLURAL, _request_timeout=REQUEST_TIMEOUT
        )
        return list(listing.get("items", []))

    def list_jobs(self, namespace: str, label_selector: str) -> list[dict[str, Any]]:
        """Jobs matching an equality selector (``key=value,...``): the cache holds the operator's own."""
        if (cache := self._cached("Job")) is not None:
            return cache.list("Job", namespace, dict(term.split("=", 1) for term in label_selector.split(",")))
        listing = self.batch.list_namespaced_job(
            namespace, label_selector=label_selector, _preload_content=False, _request_timeout=REQUEST_TIMEOUT
        )
        return list(self._plain(listing).get("items", []))

    def finetunejob_keys(self, namespaces: tuple[str, ...]) -> set[tuple[str, str]]:
        """(namespace, name) of every FineTuneJob in ``namespaces`` (all namespaces when empty)."""
        if namespaces:
            listings = [
                self.custom.list_namespaced_custom_object(
                    GROUP, VERSION, namespace, PLURAL, _request_timeout=REQUEST_TIMEOUT
                )
                for namespace in namespaces
            ]
        else:
            listings = [
                self.custom.list_cluster_custom_object(GROUP, VERSION, PLURAL, _request_timeout=REQUEST_TIMEOUT)
            ]
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
            "Service": self.core.create_namespaced_service,
            "Role": self.rbac.create_namespaced_role,
            "RoleBinding": self.rbac.create_namespaced_role_binding,
            "NetworkPolicy": self.networking.create_namespaced_network_policy,
            KIND: lambda namespace, body, **kwargs: self.custom.create_namespaced_custom_object(
                GROUP, VERSION, namespace, PLURAL, body, **kwargs
            ),
        }
        try:
            return self._wrote(
                kind,
                self._plain(
                    creators[kind](namespace, manifest, _preload_content=False, _request_timeout=REQUEST_TIMEOUT)
                ),
                echo_known=kind == "Job",
            )
        except ApiException as err:
            if err.status in PERMANENT_REFUSALS:
                raise ChildRefused(kind, manifest["metadata"]["name"], err) from err
            raise

    def ensure(self, manifest: dict[str, Any], owner_uid: str, *, likely_new: bool = False) -> dict[str, Any]:
        """The child as it exists: read first, create when missing, and adopt an existing object
        only if its controller ownerReference carries this FineTuneJob's uid.

        Reading first keeps a steady-state reconcile free of writes; a 409 (someone created it
        between our read and our create, e.g. a previous operator process) leads to the same
        ownership check. With ``likely_new`` (the owner was never reconciled) a child the cache does
        not serve is created without reading first: a read would almost always find nothing.
        """
        meta, kind = manifest["metadata"], manifest["kind"]
        ensured = self.ensured if kind in ENSURED_ONCE else None
        if ensured is not None and (seen := ensured.get(kind, meta["namespace"], meta["name"], owner_uid)) is not None:
            return seen
        skip_read = likely_new and ensured is not None
        existing = None if skip_read else self.read(kind, meta["namespace"], meta["name"])
        if existing is None:
            try:
                existing = self.create(manifest)
            except ApiException as err:
                if err.status != 409:
                    raise
                # Not in the cache but there: another owner's object (the cache holds only ours), or ours
                # made by a previous process before its watch event arrived. The API server decides.
                existing = self.read(kind, meta["namespace"], meta["name"], cached=False)
                if existing is None:  # deleted again in between: the next reconcile creates it
                    raise ApiException(status=409, reason=f"{kind} {meta['name']} is being replaced") from err
        owned = owned_by(existing, owner_uid)
        if ensured is not None:
            ensured.remember(kind, owned, owner_uid)
        return owned

    def ensure_spec(self, manifest: dict[str, Any], owner_uid: str) -> dict[str, Any]:
        """:meth:`ensure`, then the spec put back as built when it differs: for a child whose spec is a
        guardrail (the trainer egress NetworkPolicy), changed by hand or by a new operator configuration.
        A JSON patch replaces the whole spec: nothing of the old one is merged in."""
        existing = self.ensure(manifest, owner_uid)
        if existing.get("spec") == manifest["spec"]:
            return existing
        meta = manifest["metadata"]
        patchers = {"NetworkPolicy": self.networking.patch_namespaced_network_policy}
        replaced = patchers[manifest["kind"]](
            meta["name"],
            meta["namespace"],
            [{"op": "replace", "path": "/spec", "value": manifest["spec"]}],
            _preload_content=False,
            _request_timeout=REQUEST_TIMEOUT,
        )
        return self._plain(replaced)

    def patch_job_suspend(self, namespace: str, name: str, suspend: bool) -> None:
        patched = self.batch.patch_namespaced_job(
            name, namespace, {"spec": {"suspend": suspend}}, _preload_content=False, _request_timeout=REQUEST_TIMEOUT
        )
        self._wrote("Job", self._plain(patched), echo_known=True)

    def patch_finetunejob_status(self, namespace: str, name: str, status: dict[str, Any]) -> None:
        patched = self._plain(
            self.custom.patch_namespaced_custom_object_status(
                GROUP,
                VERSION,
                namespace,
                PLURAL,
                name,
                {"status": status},
                _preload_content=False,
                _request_timeout=REQUEST_TIMEOUT,
            )
        )
        self._wrote(KIND, patched, echo_known=True)

    def workload_for_job(self, namespace: str, job_uid: str) -> dict[str, Any] | None:
        try:
            listing = self.custom.list_namespaced_custom_object(
                KUEUE_GROUP, KUEUE_VERSION, namespace, KUEUE_WORKLOADS, _request_timeout=REQUEST_TIMEOUT
            )
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
            KUEUE_GROUP,
            KUEUE_VERSION,
            namespace,
            KUEUE_WORKLOADS,
            name,
            {"spec": {"active": active}},
            _request_timeout=REQUEST_TIMEOUT,
        )

    def patch_driftmonitor_status(self, namespace: str, name: str, status: dict[str, Any]) -> None:
        self.custom.patch_namespaced_custom_object_status(
            GROUP, VERSION, namespace, MONITOR_PLURAL, name, {"status": status}, _request_timeout=REQUEST_TIMEOUT
        )

    def trainer_termination(
        self, namespace: str, job: dict[str, Any], container: str, *, successful: bool = False
    ) -> tuple[int, str] | None:
        """(exit code, termination message) of ``container`` in the Job's most recent failed pod (or, with
        ``successful``, its most recent ended pod), if any is left."""
        uid = job["metadata"].get("uid", "")
        pods = self.core.list_namespaced_pod(
            namespace,
            label_selector=f"batch.kubernetes.io/controller-uid={uid}",
            _preload_content=False,
            _request_timeout=REQUEST_TIMEOUT,
        )
        found: list[tuple[str, int, str]] = []
        for pod in self._plain(pods).get("items", []):
            for status in (pod.get("status") or {}).get("containerStatuses") or []:
                terminated = (status.get("state") or {}).get("terminated") or {}
                if status.get("name") == container and (terminated.get("exitCode") or (successful and terminated)):
                    finished = terminated.get("finishedAt") or ""
                    found.append((finished, int(terminated["exitCode"]), terminated.get("message") or ""))
        if not found:
            return None
        _, code, message = max(found)
        return code, message.strip()

    def create_event(self, event: dict[str, Any]) -> bool:
        """Post an Event; False when one of that name exists already (a retried post, or posted before a restart)."""
        try:
            self._plain(
                self.core.create_namespaced_event(
                    event["metadata"]["namespace"], event, _preload_content=False, _request_timeout=REQUEST_TIMEOUT
                )
            )
        except ApiException as err:
            if err.status == 409:
                return False
            raise
        return True
