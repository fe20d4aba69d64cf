"""A Kubernetes API for tests: kmock's emulator over real HTTP, plus the parts a cluster plays.

kmock stores objects as sent; a real API server also assigns ``uid``, ``resourceVersion``,
``generation`` and ``creationTimestamp``. :class:`HonestApiServer` does that, so ownership
checks (which compare uids) are meaningful. What controllers do in a real cluster (the Job
controller, the garbage collector, the trainer writing its status) the test does explicitly
through :class:`Cluster`, over HTTP, like any other client.
"""

from __future__ import annotations

import asyncio
import base64
import itertools
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import aiohttp.web
import kmock
from kubernetes import client
from kubernetes.client.rest import ApiException

from kubetune.api.v1alpha1 import GROUP, PLURAL, VERSION

VERBS = {"get", "list", "watch", "create", "patch", "update", "delete"}
RESOURCES = {
    f"{GROUP}/{VERSION}/{PLURAL}": kmock.ResourceInfo(
        kind="FineTuneJob", namespaced=True, subresources={"status"}, verbs=VERBS
    ),
    "batch/v1/jobs": kmock.ResourceInfo(kind="Job", namespaced=True, subresources={"status"}, verbs=VERBS),
    "v1/configmaps": kmock.ResourceInfo(kind="ConfigMap", namespaced=True, verbs=VERBS),
    "v1/secrets": kmock.ResourceInfo(kind="Secret", namespaced=True, verbs=VERBS),
    "v1/serviceaccounts": kmock.ResourceInfo(kind="ServiceAccount", namespaced=True, verbs=VERBS),
    "v1/persistentvolumeclaims": kmock.ResourceInfo(kind="PersistentVolumeClaim", namespaced=True, verbs=VERBS),
    "v1/events": kmock.ResourceInfo(kind="Event", namespaced=True, verbs=VERBS),
    "v1/namespaces": kmock.ResourceInfo(kind="Namespace", namespaced=False, verbs=VERBS),
    "events.k8s.io/v1/events": kmock.ResourceInfo(kind="Event", namespaced=True, verbs=VERBS),
    "rbac.authorization.k8s.io/v1/roles": kmock.ResourceInfo(kind="Role", namespaced=True, verbs=VERBS),
    "rbac.authorization.k8s.io/v1/rolebindings": kmock.ResourceInfo(kind="RoleBinding", namespaced=True, verbs=VERBS),
}
KUEUE_WORKLOADS = "kueue.x-k8s.io/v1beta1/workloads"


@dataclass
class Outage:
    """Answer ``count`` matching requests with HTTP ``status`` before they reach storage."""

    action: Any  # a kmock.action
    plural: str
    name: str
    count: int = 1
    status: int = 500
    refused: int = 0

    def matches(self, request: Any) -> bool:
        data = request.data if isinstance(request.data, dict) else {}
        name = request.name or data.get("metadata", {}).get("name")
        return (
            self.refused < self.count
            and request.action == self.action
            and request.resource is not None
            and request.resource.plural == self.plural
            and name == self.name
        )


class HonestApiServer(kmock.KubernetesEmulator):
    """The emulator, plus the metadata a real API server assigns, and outages on demand."""

    _versions = itertools.count(1)

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.outages: list[Outage] = []

    def refuse(self, outage: Outage) -> Outage:
        self.outages.append(outage)
        return outage

    async def _handle(self, request: Any) -> Any:
        for outage in self.outages:
            if outage.matches(request):
                outage.refused += 1
                status = {"kind": "Status", "apiVersion": "v1", "status": "Failure", "code": outage.status}
                return aiohttp.web.json_response(
                    {**status, "message": "etcdserver: request timed out"}, status=outage.status
                )
        data = request.data
        if request.resource is not None and isinstance(data, dict):
            meta = data.setdefault("metadata", {})
            if request.action == kmock.action.CREATE:
                if not meta.get("name") and meta.get("generateName"):
                    meta["name"] = meta["generateName"] + uuid.uuid4().hex[:5]
                meta["uid"] = str(uuid.uuid4())
                meta["generation"] = 1
                meta["creationTimestamp"] = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
                meta["resourceVersion"] = str(next(self._versions))
                if request.namespace and not meta.get("namespace"):
                    meta["namespace"] = request.namespace
            elif request.action == kmock.action.UPDATE and request.name is not None:
                meta["resourceVersion"] = str(next(self._versions))
                key = (request.resource, request.namespace, request.name)
                if "spec" in data and request.subresource is None and key in self.objects:
                    current = self.objects[key]
                    if not current.deleted:
                        generation = int(current.get("metadata", {}).get("generation", 1))
                        meta["generation"] = generation + 1
        return await super()._handle(request)


class EmulatorThread:
    """Runs the emulator's HTTP server on loopback in a background event loop."""

    def __init__(self, with_kueue: bool = True) -> None:
        self.with_kueue = with_kueue
        self.url = ""
        self.emulator: HonestApiServer | None = None
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=self._main, daemon=True)

    def _main(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._loop.run_until_complete(self._serve())

    async def _serve(self) -> None:
        self._stop = asyncio.Event()
        async with HonestApiServer() as emulator, kmock.Server(emulator) as server:
            for key, info in RESOURCES.items():
                emulator.resources[key] = info
            if self.with_kueue:
                emulator.resources[KUEUE_WORKLOADS] = kmock.ResourceInfo(kind="Workload", namespaced=True, verbs=VERBS)
            self.emulator = emulator
            self.url = str(server.url).rstrip("/")
            self._ready.set()
            await self._stop.wait()

    def start(self) -> EmulatorThread:
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("the Kubernetes emulator did not start")
        return self

    def stop(self) -> None:
        if self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)


class Cluster:
    """Plays the cluster's own controllers, over HTTP like any other client."""

    def __init__(self, url: str) -> None:
        configuration = client.Configuration()
        configuration.host = url
        self.api_client = client.ApiClient(configuration)
        self.core = client.CoreV1Api(self.api_client)
        self.batch = client.BatchV1Api(self.api_client)
        self.custom = client.CustomObjectsApi(self.api_client)
        self.rbac = client.RbacAuthorizationV1Api(self.api_client)

    # ------------------------------------------------------------------ users
    def apply(self, manifest: dict[str, Any], namespace: str = "default") -> dict[str, Any]:
        manifest = {**manifest, "metadata": {**manifest.get("metadata", {}), "namespace": namespace}}
        self.custom.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, manifest)
        return self.finetunejob(manifest["metadata"]["name"], namespace)

    def finetunejob(self, name: str, namespace: str = "default") -> dict[str, Any]:
        return dict(self.custom.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name))

    def patch_spec(self, name: str, spec: dict[str, Any], namespace: str = "default") -> None:
        self.custom.patch_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name, {"spec": spec})

    def job(self, name: str, namespace: str = "default") -> dict[str, Any] | None:
        try:
            return dict(self.api_client.sanitize_for_serialization(self.batch.read_namespaced_job(name, namespace)))
        except ApiException as err:
            if err.status == 404:
                return None
            raise

    def jobs(self, namespace: str = "default") -> list[dict[str, Any]]:
        listing = self.api_client.sanitize_for_serialization(self.batch.list_namespaced_job(namespace))
        return list(listing.get("items", []))

    def events_for(self, name: str, namespace: str = "default") -> list[dict[str, Any]]:
        listing = self.api_client.sanitize_for_serialization(self.core.list_namespaced_event(namespace))
        return [e for e in listing.get("items", []) if e.get("involvedObject", {}).get("name") == name]

    def create_secret(self, name: str, data: dict[str, str], namespace: str = "default") -> None:
        encoded = {k: base64.b64encode(v.encode()).decode() for k, v in data.items()}
        self.core.create_namespaced_secret(
            namespace, {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name}, "data": encoded}
        )

    # ------------------------------------------------------------------ the Job controller
    def set_job_status(self, name: str, status: dict[str, Any], namespace: str = "default") -> None:
        self.batch.patch_namespaced_job_status(name, namespace, {"status": status})

    def start_job(self, name: str, namespace: str = "default") -> None:
        now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        self.set_job_status(name, {"active": 1, "ready": 1, "startTime": now}, namespace)

    def finish_job(
        self, name: str, *, succeeded: bool, reason: str = "", message: str = "", namespace: str = "default"
    ) -> None:
        now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        kind = "Complete" if succeeded else "Failed"
        condition = {
            "type": kind,
            "status": "True",
            "reason": reason or kind,
            "message": message,
            "lastTransitionTime": now,
        }
        status: dict[str, Any] = {"active": 0, "ready": 0, "conditions": [condition]}
        status["succeeded" if succeeded else "failed"] = 1
        if succeeded:
            status["completionTime"] = now
        self.set_job_status(name, status, namespace)

    def delete_job(self, name: str, namespace: str = "default") -> None:
        """What the TTL-after-finished controller (or a user with kubectl) does."""
        self.batch.delete_namespaced_job(name, namespace)

    # ------------------------------------------------------------------ the trainer
    def trainer_reports(self, name: str, status: dict[str, Any], namespace: str = "default") -> None:
        self.custom.patch_namespaced_custom_object_status(GROUP, VERSION, namespace, PLURAL, name, {"status": status})

    # ------------------------------------------------------------------ the garbage collector
    def collect_garbage(self, emulator: HonestApiServer) -> list[str]:
        """Delete objects whose owners are gone (only those whose ownerReference uid matches)."""
        removed: list[str] = []
        while True:
            alive = {obj.get("metadata", {}).get("uid") for obj in emulator.objects.values() if not obj.deleted}
            orphans = [
                (key, obj)
                for key, obj in emulator.objects.items()
                if not obj.deleted
                and (refs := obj.get("metadata", {}).get("ownerReferences"))
                and all(ref.get("uid") not in alive for ref in refs)
            ]
            if not orphans:
                return removed
            for (resource, namespace, name), _obj in orphans:
                path = f"/apis/{resource.group}/{resource.version}" if resource.group else f"/api/{resource.version}"
                path += f"/namespaces/{namespace}/{resource.plural}/{name}"
                self.api_client.call_api(path, "DELETE", auth_settings=[], _preload_content=False)
                removed.append(f"{resource.plural}/{name}")


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
