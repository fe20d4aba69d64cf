"""The test API server's vocabulary: who is calling, what kind of object, and how a refusal looks.

Refusals are Kubernetes ``Status`` objects with the codes and reasons kube-apiserver uses, so
clients (the kubernetes Python client, kopf, kubectl) react to them exactly as to the real thing.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

# The Kubernetes release whose behaviour (OpenAPI schemas, validation rules) the server mirrors:
# the oldest release the chart supports (helm/kubetune/Chart.yaml kubeVersion).
KUBERNETES_VERSION = "1.33.0"

# Groups every authenticated user is in, and the group that bypasses authorization.
AUTHENTICATED = "system:authenticated"
MASTERS = "system:masters"


@dataclass(frozen=True)
class UserInfo:
    """An authenticated identity, as kube-apiserver's authenticators produce it."""

    name: str
    groups: tuple[str, ...] = ()

    @classmethod
    def service_account(cls, namespace: str, name: str) -> UserInfo:
        return cls(
            f"system:serviceaccount:{namespace}:{name}",
            ("system:serviceaccounts", f"system:serviceaccounts:{namespace}", AUTHENTICATED),
        )

    @classmethod
    def user(cls, name: str, *groups: str) -> UserInfo:
        return cls(name, (*groups, AUTHENTICATED))


@dataclass(frozen=True)
class ResourceType:
    """One served resource (``group/version/plural``), core or custom."""

    group: str  # "" for the core group
    version: str
    plural: str
    kind: str
    namespaced: bool
    subresources: frozenset[str] = frozenset()
    singular: str = ""
    short_names: tuple[str, ...] = ()
    # For custom resources: the openAPIV3Schema of this version, from the CRD object the server
    # stores (never from the project's pydantic models), and the CRD's name.
    schema: dict[str, Any] | None = field(default=None, compare=False, hash=False)
    crd_name: str | None = None

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def has_status(self) -> bool:
        return "status" in self.subresources

    @property
    def is_custom(self) -> bool:
        return self.crd_name is not None

    def qualified_kind(self) -> str:
        """``Job.batch``, ``ConfigMap``, ``FineTuneJob.kubetune.dev``: how error messages name a kind."""
        return f"{self.kind}.{self.group}" if self.group else self.kind


@dataclass(frozen=True)
class FieldError:
    """One field-level problem, as in ``details.causes`` of a 422 (``field.Error`` in Go)."""

    field: str  # e.g. "metadata.labels", "spec.template.spec.containers[0].name"
    reason: str  # FieldValueInvalid, FieldValueRequired, FieldValueTooLong, FieldValueForbidden, ...
    message: str  # e.g. 'Invalid value: "x": must be no more than 63 characters'

    def render(self) -> str:
        return f"{self.field}: {self.message}" if self.field else self.message


class ApiError(Exception):
    """A refusal, rendered as the ``Status`` body kube-apiserver sends."""

    def __init__(
        self,
        code: int,
        reason: str,
        message: str,
        details: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.reason = reason
        self.message = message
        self.details = details
        self.headers = headers

    def status(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code,
        }
        if self.details is not None:
            body["details"] = self.details
        return body

    # ------------------------------------------------------------------ the kinds of refusal
    @classmethod
    def invalid(cls, rtype: ResourceType, name: str, errors: list[FieldError]) -> ApiError:
        """422: ``Job.batch "x" is invalid: [a: ..., b: ...]`` with one cause per field."""
        rendered = [error.render() for error in errors]
        summary = rendered[0] if len(rendered) == 1 else f"[{', '.join(rendered)}]"
        details = {
            "name": name,
            "group": rtype.group,
            "kind": rtype.kind,
            "causes": [{"reason": e.reason, "message": e.message, "field": e.field} for e in errors],
        }
        return cls(422, "Invalid", f'{rtype.qualified_kind()} "{name}" is invalid: {summary}', details)

    @classmethod
    def bad_request(cls, message: str) -> ApiError:
        return cls(400, "BadRequest", message)

    @classmethod
    def unauthorized(cls) -> ApiError:
        return cls(401, "Unauthorized", "Unauthorized")

    @classmethod
    def forbidden(cls, message: str, rtype: ResourceType | None = None, name: str = "") -> ApiError:
        details = {"name": name, "group": rtype.group, "kind": rtype.plural} if rtype is not None else None
        return cls(403, "Forbidden", message, details)

    @classmethod
    def not_found(cls, rtype: ResourceType, name: str) -> ApiError:
        details = {"name": name, "group": rtype.group, "kind": rtype.plural}
        return cls(
            404, "NotFound", f'{rtype.plural}{"." + rtype.group if rtype.group else ""} "{name}" not found', details
        )

    @classmethod
    def already_exists(cls, rtype: ResourceType, name: str) -> ApiError:
        details = {"name": name, "group": rtype.group, "kind": rtype.plural}
        resource = f"{rtype.plural}{'.' + rtype.group if rtype.group else ''}"
        return cls(409, "AlreadyExists", f'{resource} "{name}" already exists', details)

    @classmethod
    def conflict(cls, rtype: ResourceType, name: str, why: str) -> ApiError:
        details = {"name": name, "group": rtype.group, "kind": rtype.plural}
        resource = f"{rtype.plural}{'.' + rtype.group if rtype.group else ''}"
        return cls(409, "Conflict", f'Operation cannot be fulfilled on {resource} "{name}": {why}', details)

    @classmethod
    def gone(cls, message: str) -> ApiError:
        return cls(410, "Expired", message)

    @classmethod
    def unsupported_media_type(cls, content_type: str) -> ApiError:
        return cls(
            415,
            "UnsupportedMediaType",
            f'the body of the request was in an unknown format - accepted media types include: application/json-patch+json, application/merge-patch+json, application/apply-patch+yaml; got "{content_type}"',
        )
