"""A Kubernetes API server for tests that refuses what kube-apiserver refuses.

Every request goes through what a real API server does, in the same order: TLS, authentication
(bearer tokens; 401 otherwise), RBAC authorization from the Role/ClusterRole/RoleBinding/
ClusterRoleBinding objects it stores (403 otherwise), decoding, defaulting and validation
(422 with the field), admission (namespace lifecycle, RBAC escalation prevention,
OwnerReferencesPermissionEnforcement, ValidatingAdmissionPolicies), then indexed storage with
resourceVersions, optimistic concurrency (409) and watches that resume without gaps (410 when
too old). ``docs/testing.md`` lists each rule next to the Kubernetes behaviour it mirrors, and
what only a real cluster can show.

kmock's emulator was the starting point; it keeps every request in memory and scans all objects
for each one, so a test server serving an operator with 1,000 jobs became slower than the
operator. This one is indexed and keeps only bounded logs (measured in tests/kubeapi).
"""

from __future__ import annotations

import asyncio
import copy
import json
import re
import time
import uuid
from collections import Counter, deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import aiohttp.web as web

from tests.kubeapi import validation
from tests.kubeapi.admission import AdmissionPolicies
from tests.kubeapi.audit import Audit
from tests.kubeapi.authn import TokenAuthenticator
from tests.kubeapi.bootstrap import bootstrap_objects
from tests.kubeapi.model import KUBERNETES_VERSION, MASTERS, ApiError, FieldError, ResourceType, UserInfo
from tests.kubeapi.patch import apply_patch
from tests.kubeapi.rbac import Attributes, Authorizer, Decision
from tests.kubeapi.registry import ADMISSION_KINDS, RBAC_KINDS, Registry, types_of_crd
from tests.kubeapi.selectors import field_matcher, label_matcher
from tests.kubeapi.store import Event, Store, Watcher
from tests.kubeapi.validation import custom

# etcd's default request limit is 1.5 MiB; kube-apiserver refuses bodies over 3 MiB outright.
MAX_BODY = 3 * 1024 * 1024
SYSTEM = UserInfo("system:apiserver", (MASTERS,))
BOOKMARK_INTERVAL = 60.0
# Accept: application/json;as=PartialObjectMetadata;g=meta.k8s.io;v=v1 asks for the metadata only.
METADATA_ONLY = re.compile(r"\bas=PartialObjectMetadata\b")


def version_info() -> dict[str, str]:
    """GET /version, every field the real server fills (typed clients refuse a partial one)."""
    major, minor, _ = KUBERNETES_VERSION.split(".")
    return {
        "major": major,
        "minor": minor,
        "gitVersion": f"v{KUBERNETES_VERSION}",
        "gitCommit": "0" * 40,
        "gitTreeState": "clean",
        "buildDate": "2026-01-01T00:00:00Z",
        "goVersion": "go1.24.0",
        "compiler": "gc",
        "platform": "linux/amd64",
    }


def now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass
class Outage:
    """Fault injection: answer matching requests with ``status`` (before or after the write commits)."""

    verb: str | None = None  # create, update, patch, delete, get, list; None: any but watch
    plural: str | None = None
    name: str | None = None
    user: str | None = None
    subresource: str | None = None  # e.g. "status"; None matches the main resource and subresources
    count: int = 1  # how many requests to refuse; with ``until`` set, unlimited until then
    status: int = 500
    after_write: bool = False  # commit the write, then answer the error (a lost response)
    retry_after: int | None = None  # seconds, sent as Retry-After (with 429)
    until: float | None = None  # time.monotonic() deadline instead of a count
    refused: int = 0

    def active(self) -> bool:
        if self.until is not None:
            return time.monotonic() < self.until
        return self.refused < self.count

    def matches(self, verb: str, plural: str, name: str, user: str, subresource: str = "") -> bool:
        return (
            self.active()
            and (self.subresource is None or self.subresource == subresource)
            and ((self.verb is None and verb != "watch") or self.verb == verb)
            and (self.plural is None or self.plural == plural)
            and (self.name is None or self.name == name)
            and (self.user is None or self.user == user)
        )

    def answer(self) -> Answer:
        self.refused += 1
        reasons = {429: "TooManyRequests", 500: "InternalError", 503: "ServiceUnavailable", 504: "Timeout"}
        error = ApiError(self.status, reasons.get(self.status, "InternalError"), "etcdserver: request timed out")
        headers = {"Retry-After": str(self.retry_after)} if self.retry_after is not None else None
        return Answer(self.status, error.status(), headers)


@dataclass(frozen=True)
class Call:
    """One request as the server sees it, whatever transport carried it."""

    authorization: str | None
    method: str
    path: str
    query: Mapping[str, str]
    body: bytes = b""
    content_type: str = "application/json"
    accept: str = "application/json"


@dataclass(frozen=True)
class Answer:
    status: int
    body: dict[str, Any]
    headers: dict[str, str] | None = None


class NonResource(Exception):
    """A discovery path's document (raised past the resource handling that does not apply to it)."""

    def __init__(self, document: dict[str, Any]) -> None:
        super().__init__()
        self.document = document


@dataclass(frozen=True)
class Route:
    """Where a request points: a non-resource path, or a resource (collection, object, subresource)."""

    path: str
    group: str = ""
    version: str = ""
    plural: str = ""
    namespace: str = ""
    name: str = ""
    subresource: str = ""
    resource_request: bool = False


def parse_route(path: str) -> Route:
    parts = [part for part in path.split("/") if part]
    if parts[:1] == ["api"] and len(parts) >= 3:
        group, version, rest = "", parts[1], parts[2:]
    elif parts[:1] == ["apis"] and len(parts) >= 4:
        group, version, rest = parts[1], parts[2], parts[3:]
    else:
        return Route(path)
    namespace = ""
    if rest[0] == "namespaces" and len(rest) >= 3 and rest[2] not in ("status", "finalize"):
        namespace, rest = rest[1], rest[2:]
    plural = rest[0]
    name = rest[1] if len(rest) > 1 else ""
    sub = "/".join(rest[2:])
    return Route(path, group, version, plural, namespace, name, sub, True)


def _verb(method: str, route: Route, watch: bool) -> str:
    if method == "GET":
        return "watch" if watch else ("get" if route.name else "list")
    if method == "DELETE":
        return "delete" if route.name else "deletecollection"
    return {"POST": "create", "PUT": "update", "PATCH": "patch"}.get(method, method.lower())


def _spec_of(obj: dict[str, Any]) -> dict[str, Any]:
    """What a generation counts: everything except metadata and status."""
    return {k: v for k, v in obj.items() if k not in ("metadata", "status", "apiVersion", "kind")}


def _clone(obj: dict[str, Any]) -> dict[str, Any]:
    return dict(json.loads(json.dumps(obj)))


class ApiServer:
    """The state and the request handling; :class:`tests.kubeapi.runner.ApiServerThread` serves it over TLS."""

    def __init__(self, *, history_capacity: int = 2000, owner_reference_enforcement: bool = True) -> None:
        self.store = Store(history_capacity)
        self.registry = Registry()
        self.authn = TokenAuthenticator()
        self.audit = Audit()
        self.authorizer = Authorizer(self._objects_of_kind, on_decision=self._audit_decision)
        self.admission = AdmissionPolicies(self._objects_of_kind)
        self.owner_reference_enforcement = owner_reference_enforcement
        self.outages: list[Outage] = []
        self.request_cpu: deque[float] = deque(maxlen=20_000)  # the latest requests' own CPU seconds
        self.requests_served = 0
        # Every authenticated request, watches included, by (user, verb, resource): what each client costs.
        self.requests_by_user: Counter[tuple[str, str, str]] = Counter()
        self.watches_expired = 0  # watches answered 410 Gone: clients had to list again
        # (user, namespace, name or "" for a list): every answer that carried Secrets' contents.
        self.secret_contents_served: list[tuple[str, str, str]] = []
        # What each container wrote to stdout/stderr, as the kubelet keeps it: (namespace, pod, container).
        self.container_logs: dict[tuple[str, str, str], str] = {}
        for obj in bootstrap_objects():
            rtype = self.registry.by_kind(obj["apiVersion"], obj["kind"])
            assert rtype is not None, obj["kind"]
            self._create(SYSTEM, rtype, obj, namespace=obj["metadata"].get("namespace", ""))

    # ------------------------------------------------------------------ helpers for the other parts
    def _objects_of_kind(self, kind: str, namespace: str | None = None, /) -> Iterable[dict[str, Any]]:
        rtype = next((t for t in self.registry if t.kind == kind and not t.is_custom), None)
        if rtype is None:
            return ()
        return list(self.store.resource((rtype.group, rtype.plural)).items(namespace))

    def _audit_decision(self, attributes: Attributes, decision: Decision) -> None:
        resource = f"{attributes.resource}/{attributes.subresource}" if attributes.subresource else attributes.resource
        if not attributes.resource_request:
            resource = attributes.path
        self.audit.record(
            attributes.user.name,
            attributes.verb,
            attributes.api_group,
            resource,
            bool(attributes.namespace),
            decision.allowed,
        )

    def _authorize(self, attributes: Attributes) -> None:
        if not self.authorizer.authorize(attributes).allowed:
            raise self.authorizer.forbidden(attributes)

    # ------------------------------------------------------------------ HTTP
    def app(self) -> web.Application:
        application = web.Application(client_max_size=MAX_BODY)
        application.router.add_route("*", "/{tail:.*}", self.handle)
        return application

    async def handle(self, request: web.Request) -> web.StreamResponse:
        """aiohttp's entry point: a watch streams; everything else is answered by :meth:`respond`."""
        if request.query.get("watch", "").lower() in ("1", "true"):
            try:
                user, rtype, route = self._admit_request(
                    request.headers.get("Authorization"), "GET", request.path, request.query
                )
            except ApiError as err:
                return web.json_response(err.status(), status=err.code)
            outage = next((o for o in self.outages if o.matches("watch", rtype.plural, route.name, user.name)), None)
            if outage is not None:
                answer = outage.answer()
                return web.json_response(answer.body, status=answer.status, headers=answer.headers)
            return await self._watch(request, rtype, route)
        if request.method == "GET" and request.path.endswith("/log"):
            try:
                _, rtype, route = self._admit_request(
                    request.headers.get("Authorization"), "GET", request.path, request.query
                )
                if rtype.plural == "pods" and route.subresource == "log":
                    return await self._pod_log(request, route)
            except ApiError as err:
                return web.json_response(err.status(), status=err.code)
        try:
            body = await request.read() if request.method in ("POST", "PUT", "PATCH", "DELETE") else b""
        except web.HTTPRequestEntityTooLarge:
            error = ApiError(413, "RequestEntityTooLarge", "the request body is too large")
            return web.json_response(error.status(), status=413)
        call = Call(
            request.headers.get("Authorization"),
            request.method,
            request.path,
            request.query,
            body,
            request.content_type,
            request.headers.get("Accept", "application/json"),
        )
        answer = self.respond(call)
        return web.json_response(answer.body, status=answer.status, headers=answer.headers)

    def respond(self, call: Call) -> Answer:
        """Answer one request, whatever carried it (timed: the server's own cost per request)."""
        started = time.thread_time()
        try:
            return self._respond(call)
        except ApiError as err:
            return Answer(err.code, err.status(), err.headers)
        finally:
            self.requests_served += 1
            self.request_cpu.append(time.thread_time() - started)

    def _admit_request(
        self, authorization: str | None, method: str, path: str, query: Mapping[str, str]
    ) -> tuple[UserInfo, ResourceType, Route]:
        """Authenticate and authorize a resource request; discovery paths raise their answer as NonResource."""
        user = self.authn.authenticate(authorization)
        if user is None:
            raise ApiError.unauthorized()
        route = parse_route(path)
        if not route.resource_request:
            self.requests_by_user[(user.name, "get", route.path)] += 1
            self._authorize(Attributes(user, "get", path=route.path, resource_request=False))
            raise NonResource(self._discovery(route.path))
        rtype = self.registry.lookup(route.group, route.version, route.plural)
        if rtype is None:
            raise ApiError(404, "NotFound", "the server could not find the requested resource")
        watch = query.get("watch", "").lower() in ("1", "true")
        verb = _verb(method, route, watch)
        if route.subresource and route.subresource not in rtype.subresources:
            raise ApiError(404, "NotFound", "the server could not find the requested resource")
        if rtype.namespaced and not route.namespace and route.name:
            raise ApiError(404, "NotFound", "the server could not find the requested resource")
        resource = f"{rtype.plural}/{route.subresource}" if route.subresource else rtype.plural
        self.requests_by_user[(user.name, verb, resource)] += 1
        self._authorize(
            Attributes(
                user, verb, rtype.group, rtype.plural, route.subresource, route.namespace, route.name, route.path
            )
        )
        return user, rtype, route

    def _respond(self, call: Call) -> Answer:
        try:
            user, rtype, route = self._admit_request(call.authorization, call.method, call.path, call.query)
        except NonResource as found:
            return Answer(200, found.document)
        query, body = call.query, call.body
        verb = _verb(call.method, route, False)
        target = route.name or (_name_in(body) if verb == "create" else "")
        outage = next(
            (o for o in self.outages if o.matches(verb, rtype.plural, target, user.name, route.subresource)), None
        )
        if outage is not None and not outage.after_write:
            return outage.answer()
        dry_run = query.get("dryRun") == "All"
        field_validation = query.get("fieldValidation", "Warn")
        warnings: list[str] = []
        if verb == "get":
            result, code = self._get(rtype, route), 200
            if METADATA_ONLY.search(call.accept):
                result = {
                    "apiVersion": "meta.k8s.io/v1",
                    "kind": "PartialObjectMetadata",
                    "metadata": result["metadata"],
                }
            elif rtype.plural == "secrets":
                self.secret_contents_served.append((user.name, route.namespace, route.name))
        elif verb == "list":
            result, code = self._list(rtype, route, query), 200
            if rtype.plural == "secrets":
                self.secret_contents_served.append((user.name, route.namespace, ""))
        elif verb == "create":
            obj = self._decode(body)
            if route.subresource == "token":
                result, code = self._token_request(rtype, route), 201
            else:
                result, warnings = self._create(
                    user, rtype, obj, route.namespace, field_validation=field_validation, dry_run=dry_run
                )
                code = 201
        elif verb in ("update", "patch"):
            current = self._get(rtype, route)
            if verb == "update":
                new = self._decode(body)
            else:
                new = apply_patch(call.content_type, current, body, custom=rtype.is_custom)
            result, warnings = self._update(
                user,
                rtype,
                route,
                current,
                new,
                is_put=verb == "update",
                field_validation=field_validation,
                dry_run=dry_run,
            )
            code = 200
        elif verb == "delete":
            # DeleteOptions come in the body or as query parameters (what client libraries send); the body wins.
            from_query = {"propagationPolicy": query["propagationPolicy"]} if "propagationPolicy" in query else {}
            options = {**from_query, **(self._decode(body) if body else {})}
            result, code = self._delete(user, rtype, route, options, dry_run=dry_run), 200
        else:
            raise ApiError(405, "MethodNotAllowed", f"{verb} is not supported by the test API server")
        if outage is not None:  # the write committed, the response is lost
            return outage.answer()
        for text in warnings:
            self.audit.warn(user.name, text)
        headers = {"Warning": ", ".join(f'299 - "{w}"' for w in warnings)} if warnings else None
        return Answer(code, result, headers)

    @staticmethod
    def _decode(body: bytes) -> dict[str, Any]:
        try:
            obj = json.loads(body or b"{}")
        except ValueError as err:
            raise ApiError.bad_request(f"error decoding request body: {err}") from err
        if not isinstance(obj, dict):
            raise ApiError.bad_request("error decoding request body: expected a JSON object")
        return obj

    # ------------------------------------------------------------------ discovery
    def _discovery(self, path: str) -> dict[str, Any]:
        parts = [part for part in path.split("/") if part]
        if parts == ["version"]:
            return version_info()
        if parts == ["api"]:
            return {"kind": "APIVersions", "versions": ["v1"], "serverAddressByClientCIDRs": []}
        if parts == ["apis"]:
            groups = [self.registry.api_group(g, v) for g, v in sorted(self.registry.group_versions().items())]
            return {"kind": "APIGroupList", "apiVersion": "v1", "groups": groups}
        if parts[:1] == ["apis"] and len(parts) == 2:
            versions = self.registry.group_versions().get(parts[1])
            if versions:
                return self.registry.api_group(parts[1], versions)
        if parts[:1] == ["api"] and len(parts) == 2:
            found = self.registry.resource_list("", parts[1])
            if found:
                return found
        if parts[:1] == ["apis"] and len(parts) == 3:
            found = self.registry.resource_list(parts[1], parts[2])
            if found:
                return found
        if parts in (["healthz"], ["livez"], ["readyz"]):
            return {"status": "ok"}
        raise ApiError(404, "NotFound", "the server could not find the requested resource")

    # ------------------------------------------------------------------ reads
    def _get(self, rtype: ResourceType, route: Route) -> dict[str, Any]:
        obj = self.store.resource((rtype.group, rtype.plural)).get(route.namespace, route.name)
        if obj is None:
            raise ApiError.not_found(rtype, route.name)
        return obj

    def _list(self, rtype: ResourceType, route: Route, query: Any) -> dict[str, Any]:
        labels, fields = label_matcher(query.get("labelSelector")), field_matcher(query.get("fieldSelector"))
        items = [
            obj
            for obj in self.store.resource((rtype.group, rtype.plural)).items(route.namespace or None)
            if (labels is None or labels(obj)) and (fields is None or fields(obj))
        ]
        return {
            "kind": f"{rtype.kind}List",
            "apiVersion": rtype.api_version,
            "metadata": {"resourceVersion": str(self.store.resource_version)},
            "items": items,
        }

    async def _watch(self, request: web.Request, rtype: ResourceType, route: Route) -> web.StreamResponse:
        query = request.query
        store = self.store.resource((rtype.group, rtype.plural))
        watcher = Watcher(
            route.namespace or None,
            label_matcher(query.get("labelSelector")),
            field_matcher(query.get("fieldSelector")),
        )
        since = query.get("resourceVersion", "")
        response = web.StreamResponse(status=200, headers={"Content-Type": "application/json"})
        response.enable_chunked_encoding()
        await response.prepare(request)
        initial: list[Event] | None
        if since in ("", "0"):
            # "Get state and start at most recent": synthetic ADDED events for what exists now.
            initial = [
                Event(int(o["metadata"]["resourceVersion"]), "ADDED", o, None)
                for o in store.items(route.namespace or None)
            ]
            initial = [e for e in initial if watcher.translate(e) is not None]
        else:
            try:
                version = int(since)
            except ValueError:
                version = -1
            initial = store.events_since(version) if version >= 0 else None
            if initial is None:
                self.watches_expired += 1
                gone = ApiError.gone(f"too old resource version: {since} ({store.compacted_rv + 1})")
                await response.write(json.dumps({"type": "ERROR", "object": gone.status()}).encode() + b"\n")
                return response
            initial = [seen for e in initial if (seen := watcher.translate(e)) is not None]
        store.watchers.add(watcher)
        timeout = float(query.get("timeoutSeconds") or 1800)
        bookmarks = query.get("allowWatchBookmarks", "").lower() in ("1", "true")
        deadline = time.monotonic() + timeout
        try:
            for event in initial:
                await self._send(response, event.type, event.obj)
            while True:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                try:
                    event = await asyncio.wait_for(watcher.queue.get(), timeout=min(left, BOOKMARK_INTERVAL))
                except TimeoutError:
                    if bookmarks:
                        await self._bookmark(response, rtype)
                    continue
                if event is None:  # the server is stopping
                    break
                await self._send(response, event.type, event.obj)
            if bookmarks:
                await self._bookmark(response, rtype)
        except (ConnectionResetError, asyncio.CancelledError):
            pass
        finally:
            store.watchers.discard(watcher)
        return response

    async def _pod_log(self, request: web.Request, route: Route) -> web.StreamResponse:
        """``pods/log`` as the kubelet serves it through the API server: one container's output as text,
        refused (400) while it waits to start or when the pod has several and none is named; with
        ``follow``, streamed until the container has terminated."""
        pods = self.registry.lookup("", "v1", "pods")
        assert pods is not None
        pod = self._get(pods, route)
        containers = [c["name"] for c in pod["spec"]["containers"]]
        name = request.query.get("container") or (containers[0] if len(containers) == 1 else "")
        if not name:
            raise ApiError.bad_request(
                f"a container name must be specified for pod {route.name}, choose one of: [{' '.join(containers)}]"
            )
        if name not in containers:
            raise ApiError.bad_request(f"container {name} is not valid for pod {route.name}")
        state = self._container_state(route, name)
        if state is None or "waiting" in state:
            why = (state or {}).get("waiting", {}).get("reason", "ContainerCreating")
            raise ApiError.bad_request(f'container "{name}" in pod "{route.name}" is waiting to start: {why}')
        key = (route.namespace, route.name, name)
        text = self.container_logs.get(key, "")
        if tail := request.query.get("tailLines"):
            if not tail.isdigit():
                raise ApiError.bad_request(f"invalid tailLines {tail!r}: must be a whole number")
            text = "".join(text.splitlines(keepends=True)[-int(tail) :]) if int(tail) > 0 else ""
        if request.query.get("follow", "").lower() not in ("1", "true"):
            return web.Response(text=text, content_type="text/plain")
        response = web.StreamResponse(status=200, headers={"Content-Type": "text/plain"})
        response.enable_chunked_encoding()
        await response.prepare(request)
        sent = len(self.container_logs.get(key, ""))
        try:
            await response.write(text.encode())
            while True:
                written = self.container_logs.get(key, "")
                if len(written) > sent:
                    await response.write(written[sent:].encode())
                    sent = len(written)
                state = self._container_state(route, name)
                if state is None or "terminated" in state:  # the pod is gone or the container ended
                    break
                await asyncio.sleep(0.05)
        except (ConnectionResetError, asyncio.CancelledError):
            pass
        return response

    def _container_state(self, route: Route, container: str) -> dict[str, Any] | None:
        """The container's ``state`` in its pod's status (None: no such pod, or no status for it yet)."""
        pods = self.registry.lookup("", "v1", "pods")
        assert pods is not None
        pod = self.store.resource((pods.group, pods.plural)).get(route.namespace, route.name)
        statuses = ((pod or {}).get("status") or {}).get("containerStatuses") or []
        return next((s.get("state") or {} for s in statuses if s.get("name") == container), None)

    @staticmethod
    async def _send(response: web.StreamResponse, event_type: str, obj: dict[str, Any]) -> None:
        await response.write(json.dumps({"type": event_type, "object": obj}).encode() + b"\n")

    async def _bookmark(self, response: web.StreamResponse, rtype: ResourceType) -> None:
        marker = {
            "kind": rtype.kind,
            "apiVersion": rtype.api_version,
            "metadata": {"resourceVersion": str(self.store.resource_version)},
        }
        await self._send(response, "BOOKMARK", marker)

    # ------------------------------------------------------------------ writes
    def _check_namespace(self, rtype: ResourceType, obj: dict[str, Any], namespace: str) -> None:
        meta = obj.setdefault("metadata", {})
        if not rtype.namespaced:
            meta.pop("namespace", None)
            return
        if meta.get("namespace") and meta["namespace"] != namespace:
            raise ApiError.bad_request(
                "the namespace of the provided object does not match the namespace sent on the request"
            )
        meta["namespace"] = namespace
        ns = self.store.resource(("", "namespaces")).get("", namespace)
        if ns is None:
            raise ApiError(
                404, "NotFound", f'namespaces "{namespace}" not found', {"name": namespace, "kind": "namespaces"}
            )
        if ns["metadata"].get("deletionTimestamp"):
            raise ApiError.forbidden(
                f"unable to create new content in namespace {namespace} because it is being terminated"
            )

    def _check_kind(self, rtype: ResourceType, obj: dict[str, Any]) -> None:
        if obj.get("apiVersion") != rtype.api_version or obj.get("kind") != rtype.kind:
            raise ApiError.bad_request(
                f"the API version in the data ({obj.get('apiVersion')}) and kind ({obj.get('kind')}) do not match "
                f"the expected {rtype.api_version} {rtype.kind}"
            )

    def _owner_references_permitted(
        self, user: UserInfo, rtype: ResourceType, obj: dict[str, Any], old: dict[str, Any] | None
    ) -> None:
        """OwnerReferencesPermissionEnforcement: blocking an owner's deletion needs update on its finalizers."""
        if not self.owner_reference_enforcement:
            return
        before = {
            ref.get("uid")
            for ref in (old or {}).get("metadata", {}).get("ownerReferences") or []
            if ref.get("blockOwnerDeletion")
        }
        for ref in obj["metadata"].get("ownerReferences") or []:
            if not ref.get("blockOwnerDeletion") or ref.get("uid") in before:
                continue
            owner = self.registry.by_kind(ref.get("apiVersion", ""), ref.get("kind", ""))
            if owner is None:
                raise ApiError(
                    422,
                    "Invalid",
                    f"cannot set blockOwnerDeletion in this case because cannot find RESTMapping for APIVersion {ref.get('apiVersion')} Kind {ref.get('kind')}",
                )
            attributes = Attributes(
                user,
                "update",
                owner.group,
                owner.plural,
                "finalizers",
                obj["metadata"].get("namespace", "") if owner.namespaced else "",
                ref.get("name", ""),
            )
            if not self.authorizer.authorize(attributes).allowed:
                raise ApiError(
                    422,
                    "Invalid",
                    f'{rtype.qualified_kind()} "{obj["metadata"].get("name", "")}" is forbidden: cannot set blockOwnerDeletion '
                    f'if an ownerReference refers to a resource you can\'t set finalizers on: User "{user.name}" cannot update '
                    f'resource "{owner.plural}/finalizers" in API group "{owner.group}" in the namespace "{attributes.namespace}"',
                )

    def _admit(
        self,
        user: UserInfo,
        rtype: ResourceType,
        operation: str,
        obj: dict[str, Any],
        old: dict[str, Any] | None,
        *,
        subresource: str = "",
        field_validation: str = "Warn",
    ) -> tuple[dict[str, Any], list[str]]:
        obj, warnings = validation.admit(
            rtype, operation, obj, old, subresource=subresource or None, field_validation=field_validation
        )
        if user is not SYSTEM:
            if rtype.kind in RBAC_KINDS and not rtype.is_custom and not subresource:
                refusal = self.authorizer.check_escalation(user, obj, obj["metadata"].get("namespace", ""), old=old)
                if refusal is not None:
                    raise refusal
            if not subresource:
                self._owner_references_permitted(user, rtype, obj, old)
            refused, policy_warnings = self.admission.validate(
                operation=operation,
                rtype=rtype,
                obj=obj,
                old=old,
                user=user,
                namespace=obj["metadata"].get("namespace", ""),
                name=obj["metadata"].get("name", ""),
                subresource=subresource,
            )
            if refused is not None:
                raise refused
            warnings = [*warnings, *policy_warnings]
        return obj, warnings

    def _create(
        self,
        user: UserInfo,
        rtype: ResourceType,
        obj: dict[str, Any],
        namespace: str,
        *,
        field_validation: str = "Warn",
        dry_run: bool = False,
    ) -> tuple[dict[str, Any], list[str]]:
        obj = _clone(obj)
        self._check_kind(rtype, obj)
        meta = obj.setdefault("metadata", {})
        if not meta.get("name") and meta.get("generateName"):
            meta["name"] = f"{meta['generateName']}{uuid.uuid4().hex[:5]}"
        if not meta.get("name"):
            raise ApiError(
                422,
                "Invalid",
                f'{rtype.kind} in version "{rtype.version}" cannot be handled: name or generateName is required',
                {
                    "causes": [
                        {
                            "reason": "FieldValueRequired",
                            "message": "Required value: name or generateName is required",
                            "field": "metadata.name",
                        }
                    ]
                },
            )
        self._check_namespace(rtype, obj, namespace)
        store = self.store.resource((rtype.group, rtype.plural))
        for system_field in ("resourceVersion", "deletionTimestamp", "deletionGracePeriodSeconds", "managedFields"):
            meta.pop(system_field, None)
        meta["uid"] = str(uuid.uuid4())
        meta["creationTimestamp"] = now()
        if rtype.has_status or rtype.is_custom:
            meta["generation"] = 1
        if rtype.has_status:
            obj.pop("status", None)
        obj, warnings = self._admit(user, rtype, "CREATE", obj, None, field_validation=field_validation)
        if store.get(obj["metadata"].get("namespace", ""), obj["metadata"]["name"]) is not None:
            raise ApiError.already_exists(rtype, obj["metadata"]["name"])
        if dry_run:
            return obj, warnings
        if rtype.kind == "CustomResourceDefinition":
            obj = self._establish(obj)
        obj["metadata"]["resourceVersion"] = str(self.store.next_version())
        self.store.write((rtype.group, rtype.plural), "ADDED", obj, None)
        self._after_write(rtype, obj, None)
        return obj, warnings

    def _update(
        self,
        user: UserInfo,
        rtype: ResourceType,
        route: Route,
        current: dict[str, Any],
        new: dict[str, Any],
        *,
        is_put: bool,
        field_validation: str = "Warn",
        dry_run: bool = False,
    ) -> tuple[dict[str, Any], list[str]]:
        """PUT or PATCH (``new`` is then the patched object): a write conditional on the resourceVersion it
        carries, which a patch carries only when its author put one in."""
        new = _clone(new)
        self._check_kind(rtype, new)
        meta = new.setdefault("metadata", {})
        current_meta = current["metadata"]
        if meta.get("name", route.name) != route.name:
            raise ApiError.bad_request("the name of the object does not match the name on the URL")
        sent = meta.get("resourceVersion")
        if is_put and not sent and rtype.is_custom:
            raise ApiError.invalid(
                rtype,
                route.name,
                [
                    FieldError(
                        "metadata.resourceVersion",
                        "FieldValueInvalid",
                        "Invalid value: 0x0: must be specified for an update",
                    )
                ],
            )
        if sent and sent != current_meta["resourceVersion"]:
            raise ApiError.conflict(
                rtype,
                route.name,
                "the object has been modified; please apply your changes to the latest version and try again",
            )
        if route.subresource == "status":
            merged = _clone(current)
            merged["status"] = new.get("status")
            if merged["status"] is None:
                merged.pop("status")
            new = merged
        else:
            for system_field in (
                "uid",
                "creationTimestamp",
                "deletionTimestamp",
                "deletionGracePeriodSeconds",
                "generation",
            ):
                if system_field in current_meta:
                    meta[system_field] = current_meta[system_field]
                else:
                    meta.pop(system_field, None)
            meta["name"] = current_meta["name"]
            if rtype.namespaced:
                meta["namespace"] = current_meta["namespace"]
            if rtype.has_status:
                if "status" in current:
                    new["status"] = current["status"]
                else:
                    new.pop("status", None)
            if current_meta.get("deletionTimestamp"):
                added = set(meta.get("finalizers") or []) - set(current_meta.get("finalizers") or [])
                if added:
                    raise ApiError.invalid(
                        rtype,
                        route.name,
                        [
                            FieldError(
                                "metadata.finalizers",
                                "FieldValueForbidden",
                                f"Forbidden: no new finalizers can be added if the object is being deleted, found new finalizers {sorted(added)}",
                            )
                        ],
                    )
            if (rtype.has_status or rtype.is_custom) and _spec_of(new) != _spec_of(current):
                meta["generation"] = int(current_meta.get("generation") or 1) + 1
        meta["resourceVersion"] = current_meta["resourceVersion"]
        new, warnings = self._admit(
            user, rtype, "UPDATE", new, current, subresource=route.subresource, field_validation=field_validation
        )
        if new == current or dry_run:  # a no-op write changes nothing and tells no watcher
            return current if not dry_run else new, warnings
        new["metadata"]["resourceVersion"] = str(self.store.next_version())
        if new["metadata"].get("deletionTimestamp") and not new["metadata"].get("finalizers"):
            self.store.write((rtype.group, rtype.plural), "DELETED", new, current)
            self._after_delete(rtype, new)
            return new, warnings
        self.store.write((rtype.group, rtype.plural), "MODIFIED", new, current)
        self._after_write(rtype, new, current)
        return new, warnings

    def _delete(
        self, user: UserInfo, rtype: ResourceType, route: Route, options: dict[str, Any], *, dry_run: bool = False
    ) -> dict[str, Any]:
        current = self._get(rtype, route)
        meta = current["metadata"]
        preconditions = options.get("preconditions") or {}
        if preconditions.get("uid") and preconditions["uid"] != meta["uid"]:
            raise ApiError.conflict(
                rtype,
                route.name,
                f"Precondition failed: UID in precondition: {preconditions['uid']}, UID in object meta: {meta['uid']}",
            )
        if preconditions.get("resourceVersion") and preconditions["resourceVersion"] != meta["resourceVersion"]:
            raise ApiError.conflict(
                rtype,
                route.name,
                "the object has been modified; please apply your changes to the latest version and try again",
            )
        self.admission.validate(
            operation="DELETE",
            rtype=rtype,
            obj=None,
            old=current,
            user=user,
            namespace=route.namespace,
            name=route.name,
        )
        policy = options.get("propagationPolicy") or ("Orphan" if rtype.kind == "Job" else "Background")
        finalizers = list(meta.get("finalizers") or [])
        if policy == "Foreground" and "foregroundDeletion" not in finalizers:
            finalizers.append("foregroundDeletion")
        if policy == "Orphan" and "orphan" not in finalizers:
            finalizers.append("orphan")
        if dry_run:
            return current
        if not finalizers:
            gone = _clone(current)
            gone["metadata"]["resourceVersion"] = str(self.store.next_version())
            self.store.write((rtype.group, rtype.plural), "DELETED", gone, current)
            self._after_delete(rtype, gone)
            return gone
        if meta.get("deletionTimestamp"):
            return current
        marked = _clone(current)
        marked["metadata"].update(deletionTimestamp=now(), deletionGracePeriodSeconds=0, finalizers=finalizers)
        if rtype.has_status or rtype.is_custom:
            marked["metadata"]["generation"] = int(meta.get("generation") or 1) + 1
        marked["metadata"]["resourceVersion"] = str(self.store.next_version())
        self.store.write((rtype.group, rtype.plural), "MODIFIED", marked, current)
        return marked

    def _token_request(self, rtype: ResourceType, route: Route) -> dict[str, Any]:
        """TokenRequest: a token for an existing ServiceAccount (what the kubelet mounts into a pod)."""
        self._get(rtype, route)
        token = self.authn.issue(UserInfo.service_account(route.namespace, route.name))
        return {
            "kind": "TokenRequest",
            "apiVersion": "authentication.k8s.io/v1",
            "metadata": {"name": route.name, "namespace": route.namespace, "creationTimestamp": None},
            "spec": {"audiences": ["https://kubernetes.default.svc"]},
            "status": {"token": token, "expirationTimestamp": now()},
        }

    # ------------------------------------------------------------------ side effects of writes
    def _establish(self, crd: dict[str, Any]) -> dict[str, Any]:
        """What the apiextensions controllers do at once: accept the names, mark the CRD established."""
        for rtype in types_of_crd(crd):
            clash = self.registry.lookup(rtype.group, rtype.version, rtype.plural)
            if clash is not None and clash.crd_name != rtype.crd_name:
                raise ApiError.invalid(
                    rtype,
                    crd["metadata"]["name"],
                    [FieldError("spec.names.plural", "FieldValueInvalid", "Invalid value: already in use")],
                )
        stamp = now()
        crd["status"] = {
            "conditions": [
                {
                    "type": "NamesAccepted",
                    "status": "True",
                    "reason": "NoConflicts",
                    "message": "no conflicts found",
                    "lastTransitionTime": stamp,
                },
                {
                    "type": "Established",
                    "status": "True",
                    "reason": "InitialNamesAccepted",
                    "message": "the initial names have been accepted",
                    "lastTransitionTime": stamp,
                },
            ],
            "acceptedNames": crd["spec"]["names"],
            "storedVersions": [v["name"] for v in crd["spec"].get("versions", []) if v.get("storage")],
        }
        return crd

    def _after_write(
        self, rtype: ResourceType, obj: dict[str, Any], old: dict[str, Any] | None, *, deleted: bool = False
    ) -> None:
        if rtype.kind == "CustomResourceDefinition" and not rtype.is_custom:
            if old is not None:
                self.registry.remove_crd(obj["metadata"]["name"])
            for served in types_of_crd(obj):
                self.registry.add(served)
                if old is not None and served.schema is not None:
                    self._default_stored(served)
        if rtype.kind in RBAC_KINDS and not rtype.is_custom:
            self.authorizer.changed(rtype.kind, obj, deleted=deleted)
        if rtype.kind in ADMISSION_KINDS and not rtype.is_custom:
            self.admission.invalidate()

    def _default_stored(self, rtype: ResourceType) -> None:
        """kube-apiserver applies a CRD's current defaults to objects as it reads them from etcd, so
        objects stored under an older schema read (and are compared in transition rules) defaulted.
        Here they are defaulted once when the schema changes: the same for every reader."""
        assert rtype.schema is not None
        store = self.store.resource((rtype.group, rtype.plural))
        for key, obj in list(store.objects.items()):
            defaulted = custom.apply_defaults(rtype.schema, _clone(obj))
            if defaulted != obj:
                store.objects[key] = defaulted
                store.by_namespace[key[0]][key[1]] = defaulted

    def _after_delete(self, rtype: ResourceType, obj: dict[str, Any]) -> None:
        if rtype.kind == "CustomResourceDefinition" and not rtype.is_custom:
            for gone in self.registry.remove_crd(obj["metadata"]["name"]):
                store = self.store.resource((gone.group, gone.plural))
                for item in list(store.items(None)):
                    dead = _clone(item)
                    dead["metadata"]["resourceVersion"] = str(self.store.next_version())
                    self.store.write((gone.group, gone.plural), "DELETED", dead, item)
        elif rtype.kind in RBAC_KINDS or rtype.kind in ADMISSION_KINDS:
            self._after_write(rtype, obj, None, deleted=True)

    # ------------------------------------------------------------------ direct use by fixtures
    def end_watches(self) -> None:
        """Close every open watch (the server is stopping); clients see the stream end and reconnect."""
        for rtype in self.registry:
            for watcher in self.store.resource((rtype.group, rtype.plural)).watchers:
                watcher.queue.put_nowait(None)

    def write_container_log(self, namespace: str, pod: str, container: str, text: str) -> None:
        """A container writes to its output (the kubelet keeps it; ``pods/log`` serves it)."""
        key = (namespace, pod, container)
        self.container_logs[key] = self.container_logs.get(key, "") + text

    def seed(self, obj: dict[str, Any]) -> dict[str, Any]:
        """Create ``obj`` as the cluster's own bootstrap would (no RBAC, still validated)."""
        rtype = self.registry.by_kind(obj["apiVersion"], obj["kind"])
        if rtype is None:
            raise ApiError.bad_request(f"no such kind: {obj['apiVersion']} {obj['kind']}")
        created, _ = self._create(SYSTEM, rtype, copy.deepcopy(obj), obj.get("metadata", {}).get("namespace", ""))
        return created


def _name_in(body: bytes) -> str:
    try:
        return str(json.loads(body or b"{}").get("metadata", {}).get("name") or "")
    except (ValueError, AttributeError):
        return ""
