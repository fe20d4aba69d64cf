"""Built-in kinds: decoding into the typed Go structs, defaulting, and kube-apiserver's Go-level rules.

A built-in object reaches kube-apiserver's validation only after it has been decoded into the kind's
Go struct. That decoding is where a wrong JSON type fails (400 BadRequest, ``json: cannot unmarshal
...``), where unknown fields are dropped (or refused under ``fieldValidation=Strict``), and where a
quantity or a timestamp is parsed and re-encoded in its canonical form. ``decode`` mirrors it from the
Kubernetes OpenAPI schema shipped with ``kubernetes_validate`` (one compiled type tree per kind,
built once). ``default`` mirrors the v1 defaulting functions and the strategies' PrepareForCreate,
``validate`` the strategies' Validate/ValidateUpdate (pkg/apis/core/validation, pkg/apis/batch/validation,
pkg/apis/rbac/validation, pkg/apis/networking/validation), for the kinds kubetune writes; other kinds
get the metadata rules only.
"""

from __future__ import annotations

import base64
import binascii
import copy
import ipaddress
import itertools
import json
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import cache
from pathlib import Path
from typing import Any

import kubernetes_validate

from tests.kubeapi.model import KUBERNETES_VERSION, FieldError, ResourceType
from tests.kubeapi.validation import meta
from tests.kubeapi.validation.meta import (
    OMIT,
    GoText,
    Quantity,
    QuantityError,
    child,
    duplicate,
    forbidden,
    immutable,
    index,
    invalid,
    key,
    nonnegative,
    not_found,
    not_supported,
    required,
)

Obj = dict[str, Any]
_SCHEMA_DIR = Path(kubernetes_validate.__file__).parent / "kubernetes-json-schema" / f"v{KUBERNETES_VERSION}-local"


class DecodeError(Exception):
    """The body does not decode into the kind's Go struct: kube-apiserver answers 400 with this text."""


# ========================================================================================= types
STRUCT, MAP, LIST, STRING, INT32, INT64, FLOAT, BOOL, QUANTITY, INT_OR_STRING, TIME, MICROTIME, BYTES, FREE = range(14)
_INT_RANGES = {INT32: (-(2**31), 2**31 - 1), INT64: (-(2**63), 2**63 - 1)}
_SPECIAL_DEFINITIONS = {
    "io.k8s.apimachinery.pkg.api.resource.Quantity": (QUANTITY, "resource.Quantity"),
    "io.k8s.apimachinery.pkg.util.intstr.IntOrString": (INT_OR_STRING, "intstr.IntOrString"),
    "io.k8s.apimachinery.pkg.apis.meta.v1.Time": (TIME, "v1.Time"),
    "io.k8s.apimachinery.pkg.apis.meta.v1.MicroTime": (MICROTIME, "v1.MicroTime"),
}


@dataclass(eq=False)
class GoType:
    """One node of a kind's Go type tree, as much of it as decoding needs."""

    shape: int
    go_name: str  # how encoding/json names the type in an error: "int32", "v1.JobSpec", "[]v1.Container"
    struct: str = ""  # STRUCT: the Go struct's name, which prefixes a field in an error ("JobSpec.spec.x")
    fields: dict[str, GoType] = field(default_factory=dict)
    elem: GoType | None = None
    required: tuple[str, ...] = ()


@cache
def _definitions() -> dict[str, Any]:
    return dict(json.loads((_SCHEMA_DIR / "_definitions.json").read_text())["$defs"])


@cache
def _kinds() -> dict[tuple[str, str, str], str]:
    """(group, version, kind) -> the definition of that kind's top-level object."""
    found = {}
    for name, definition in _definitions().items():
        for gvk in definition.get("x-kubernetes-group-version-kind") or ():
            found[(gvk.get("group", ""), gvk["version"], gvk["kind"])] = name
    return found


class _Compiler:
    """Turns OpenAPI definitions into GoType trees; recursive definitions (JSONSchemaProps) share nodes."""

    def __init__(self) -> None:
        self.named: dict[str, GoType] = {}

    def definition(self, name: str) -> GoType:
        if name in self.named:
            return self.named[name]
        if name in _SPECIAL_DEFINITIONS:
            shape, go_name = _SPECIAL_DEFINITIONS[name]
            self.named[name] = GoType(shape, go_name)
            return self.named[name]
        package, struct = name.split(".")[-2:]
        node = GoType(FREE, f"{package}.{struct}", struct)
        self.named[name] = node  # registered before filling, for recursive definitions
        self._fill(node, _definitions()[name])
        return node

    def schema(self, schema: Mapping[str, Any]) -> GoType:
        if "$ref" in schema:
            return self.definition(str(schema["$ref"]).rsplit("/", 1)[-1])
        node = GoType(FREE, "interface {}")
        self._fill(node, schema)
        return node

    def _fill(self, node: GoType, schema: Mapping[str, Any]) -> None:
        types = schema.get("type") or []
        types = [types] if isinstance(types, str) else types
        if "object" in types and "properties" in schema:
            node.shape, node.required = STRUCT, tuple(schema.get("required") or ())
            node.fields = {name: self.schema(sub) for name, sub in schema["properties"].items()}
        elif "object" in types and isinstance(schema.get("additionalProperties"), Mapping):
            node.elem = self.schema(schema["additionalProperties"])
            node.shape, node.go_name = MAP, f"map[string]{node.elem.go_name}"
        elif "array" in types and isinstance(schema.get("items"), Mapping):
            node.elem = self.schema(schema["items"])
            node.shape, node.go_name = LIST, f"[]{node.elem.go_name}"
        elif "string" in types:
            node.shape, node.go_name = {
                "byte": (BYTES, "[]uint8"),
                "date-time": (TIME, "v1.Time"),
            }.get(str(schema.get("format")), (STRING, "string"))
        elif "integer" in types:
            node.shape, node.go_name = (INT32, "int32") if schema.get("format") == "int32" else (INT64, "int64")
        elif "number" in types:
            node.shape, node.go_name = FLOAT, "float64"
        elif "boolean" in types:
            node.shape, node.go_name = BOOL, "bool"


@cache
def kind_type(group: str, version: str, kind: str) -> GoType | None:
    """The compiled type of a built-in kind, built once per kind; None if the schema does not know it."""
    name = _kinds().get((group, version, kind))
    return _compiler().definition(name) if name else None


@cache
def _compiler() -> _Compiler:
    return _Compiler()


# ====================================================================================== decoding
def json_type(value: Any) -> str:
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    return "object" if isinstance(value, Mapping) else "array"


def _type_error(value: Any, node: GoType, struct: str, fields: str, literal: bool = False) -> DecodeError:
    shown = f"number {value!r}" if literal else json_type(value)
    where = f"Go struct field {struct}.{fields}" if struct else "Go value"
    return DecodeError(f"json: cannot unmarshal {shown} into {where} of type {node.go_name}")


_RFC3339 = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?(Z|[+-]\d{2}:\d{2})$")


def _timestamp(value: Any, micro: bool) -> str:
    """metav1.Time/MicroTime: RFC 3339 in, UTC out (seconds, or microseconds for MicroTime)."""
    if not isinstance(value, str):
        raise DecodeError(f"json: cannot unmarshal {json_type(value)} into Go value of type string")
    if not _RFC3339.match(value):
        layout = "2006-01-02T15:04:05.000000Z07:00" if micro else "2006-01-02T15:04:05Z07:00"
        raise DecodeError(f'parsing time "{value}" as "{layout}": cannot parse "{value}" as "2006"')
    moment = datetime.fromisoformat(value.replace("Z", "+00:00")).astimezone(UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ" if micro else "%Y-%m-%dT%H:%M:%SZ")


def _base64(value: str) -> str:
    text = value.replace("\n", "").replace("\r", "")
    try:
        return base64.b64encode(base64.b64decode(text, validate=True)).decode()
    except (binascii.Error, ValueError):
        alphabet = set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/=")
        position = next((i for i, c in enumerate(text) if c not in alphabet), len(text) - len(text) % 4)
        raise DecodeError(f"illegal base64 data at input byte {position}") from None


def _zero(node: GoType) -> Any:
    """The value a JSON null leaves in a list element or map value of this type."""
    return {STRING: "", INT32: 0, INT64: 0, FLOAT: 0, BOOL: False, STRUCT: {}, QUANTITY: "0"}.get(node.shape)


def _decode(node: GoType, value: Any, path: str, fields: str, struct: str, unknown: list[str]) -> Any:
    shape = node.shape
    if shape == STRUCT:
        if not isinstance(value, dict):
            raise _type_error(value, node, struct, fields)
        out = {}
        for name, item in value.items():
            sub = node.fields.get(name)
            if sub is None:
                unknown.append(child(path, name))
            elif item is not None:  # a null leaves the Go zero value, which omitempty drops
                out[name] = _decode(sub, item, child(path, name), child(fields, name), node.struct, unknown)
        return out
    if shape == MAP:
        assert node.elem is not None
        if not isinstance(value, dict):
            raise _type_error(value, node, struct, fields)
        return {
            name: _zero(node.elem)
            if item is None
            else _decode(node.elem, item, f"{path}.{name}", fields, struct, unknown)
            for name, item in value.items()
        }
    if shape == LIST:
        assert node.elem is not None
        if not isinstance(value, list):
            raise _type_error(value, node, struct, fields)
        return [
            _zero(node.elem) if item is None else _decode(node.elem, item, index(path, i), fields, struct, unknown)
            for i, item in enumerate(value)
        ]
    return _decode_scalar(node, value, fields, struct)


def _decode_scalar(node: GoType, value: Any, fields: str, struct: str) -> Any:
    shape = node.shape
    if shape == STRING:
        if not isinstance(value, str):
            raise _type_error(value, node, struct, fields)
        return value
    if shape in (INT32, INT64):
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise _type_error(value, node, struct, fields)
        low, high = _INT_RANGES[shape]
        if isinstance(value, float) or not low <= value <= high:
            raise _type_error(value, node, struct, fields, literal=True)
        return value
    if shape == FLOAT:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise _type_error(value, node, struct, fields)
        return value
    if shape == BOOL:
        if not isinstance(value, bool):
            raise _type_error(value, node, struct, fields)
        return value
    if shape == QUANTITY:
        text = value if isinstance(value, str) else json.dumps(value)
        try:
            return str(Quantity.parse(text.strip()))
        except QuantityError as error:
            raise DecodeError(str(error)) from None
    if shape == INT_OR_STRING:
        if isinstance(value, str):
            return value
        if isinstance(value, bool) or not isinstance(value, int) or not -(2**31) <= value < 2**31:
            shown = f"number {value!r}" if isinstance(value, int | float) and not isinstance(value, bool) else None
            raise DecodeError(f"json: cannot unmarshal {shown or json_type(value)} into Go value of type int32")
        return value
    if shape in (TIME, MICROTIME):
        return _timestamp(value, micro=shape == MICROTIME)
    if shape == BYTES:
        if not isinstance(value, str):
            raise _type_error(value, node, struct, fields)
        return _base64(value)
    return value  # FREE: RawExtension, FieldsV1, JSON: kept as sent


def decode_value(node: GoType, value: Any, unknown: list[str]) -> Any:
    """``value`` decoded as ``node`` (errors name ``<Struct>.<field>``); its unknown fields go to ``unknown``."""
    return _decode(node, value, "", "", "", unknown)


def object_meta_type() -> GoType:
    return _compiler().definition("io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta")


@dataclass
class Decoded:
    obj: Obj
    unknown_fields: list[str]


def decode(rtype: ResourceType, obj: Obj) -> Decoded:
    """The object as the kind's Go struct holds it: unknown fields listed and dropped, scalars canonical."""
    node = kind_type(rtype.group, rtype.version, rtype.kind)
    if node is None:
        return Decoded(obj, [])
    unknown: list[str] = []
    decoded = _decode(node, obj, "", "", "", unknown)
    return Decoded(decoded, unknown)


# ===================================================================================== defaulting
def _image_tag(image: str) -> str:
    """The tag ``parsers.ParseImageName`` finds: "latest" when there is neither tag nor digest."""
    without_digest, _, digest = image.partition("@")
    last = without_digest.rsplit("/", 1)[-1]
    if ":" in last:
        return last.rsplit(":", 1)[1]
    return "" if digest else "latest"


def _default_probe(probe: Obj | None) -> None:
    if probe is None:
        return
    for name, value in (("timeoutSeconds", 1), ("periodSeconds", 10), ("successThreshold", 1), ("failureThreshold", 3)):
        probe.setdefault(name, value)
    if "httpGet" in probe:
        probe["httpGet"].setdefault("path", "/")
        probe["httpGet"].setdefault("scheme", "HTTP")


def _default_container(container: Obj) -> None:
    """SetDefaults_Container and its parts: pull policy from the tag, termination message, port protocol."""
    if not container.get("imagePullPolicy"):
        container["imagePullPolicy"] = (
            "Always" if _image_tag(container.get("image", "")) == "latest" else "IfNotPresent"
        )
    container.setdefault("terminationMessagePath", "/dev/termination-log")
    container.setdefault("terminationMessagePolicy", "File")
    for port in container.get("ports") or ():
        port.setdefault("protocol", "TCP")
    for env in container.get("env") or ():
        field_ref = (env.get("valueFrom") or {}).get("fieldRef")
        if field_ref is not None:
            field_ref.setdefault("apiVersion", "v1")
    for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
        _default_probe(container.get(probe))


def default_pod_spec(spec: Obj, *, restart_policy: bool) -> None:
    """SetDefaults_PodSpec and the volume/container defaults. ``restart_policy``: default it to Always
    (a Pod's; a Job's template keeps it unset, and Job validation then asks for Never or OnFailure)."""
    spec.setdefault("dnsPolicy", "ClusterFirst")
    if restart_policy:
        spec.setdefault("restartPolicy", "Always")
    spec.setdefault("securityContext", {})
    spec.setdefault("terminationGracePeriodSeconds", 30)
    spec.setdefault("schedulerName", "default-scheduler")
    for volume in spec.get("volumes") or ():
        for source in ("secret", "configMap", "downwardAPI", "projected"):
            if source in volume:
                volume[source].setdefault("defaultMode", 0o644)
    for container in (*(spec.get("initContainers") or ()), *(spec.get("containers") or ())):
        _default_container(container)


def _default_job(job: Obj, operation: str) -> None:
    """SetDefaults_Job on every write; on create, the strategy's generated selector and pod labels."""
    spec = job.setdefault("spec", {})
    if "completions" not in spec and "parallelism" not in spec:
        spec["completions"] = 1
    spec.setdefault("parallelism", 1)
    spec.setdefault("backoffLimit", 2**31 - 1 if "backoffLimitPerIndex" in spec else 6)
    spec.setdefault("completionMode", "NonIndexed")
    spec.setdefault("suspend", False)
    spec.setdefault("podReplacementPolicy", "Failed" if "podFailurePolicy" in spec else "TerminatingOrFailed")
    for rule in (spec.get("podFailurePolicy") or {}).get("rules") or ():
        for pattern in rule.get("onPodConditions") or ():
            pattern.setdefault("status", "True")
    template = spec.setdefault("template", {})
    default_pod_spec(template.setdefault("spec", {}), restart_policy=False)
    if operation == "CREATE" and spec.get("manualSelector") is not True:
        name, uid = job["metadata"].get("name", ""), job["metadata"].get("uid", "")
        labels = template.setdefault("metadata", {}).setdefault("labels", {})
        for label in ("job-name", "batch.kubernetes.io/job-name"):
            labels.setdefault(label, name)
        for label in ("controller-uid", "batch.kubernetes.io/controller-uid"):
            labels.setdefault(label, uid)
        selector = spec.setdefault("selector", {})
        selector.setdefault("matchLabels", {}).setdefault("batch.kubernetes.io/controller-uid", uid)


def _copy_template_labels(job: Obj) -> None:
    """A Job without labels reads back with its pod template's: SetDefaults_Job runs again when the
    stored object is decoded, after the selector labels were generated."""
    labels = ((job.get("spec") or {}).get("template") or {}).get("metadata", {}).get("labels")
    if labels and not job["metadata"].get("labels"):
        job["metadata"]["labels"] = dict(labels)


def _default_secret(secret: Obj, operation: str) -> None:
    """stringData is write-only: it is merged into data (base64) by the v1 conversion."""
    secret.setdefault("type", "Opaque")
    string_data = secret.pop("stringData", None) or {}
    if string_data:
        data = secret.setdefault("data", {})
        for name, value in string_data.items():
            data[name] = base64.b64encode(value.encode()).decode()


def _default_binding(binding: Obj, operation: str) -> None:
    role_ref = binding.setdefault("roleRef", {})
    if not role_ref.get("apiGroup"):
        role_ref["apiGroup"] = "rbac.authorization.k8s.io"
    for subject in binding.get("subjects") or ():
        if not subject.get("apiGroup") and subject.get("kind") in ("User", "Group"):
            subject["apiGroup"] = "rbac.authorization.k8s.io"


def _default_pvc(claim: Obj, operation: str) -> None:
    claim.setdefault("spec", {}).setdefault("volumeMode", "Filesystem")
    if operation == "CREATE":
        claim["status"] = {"phase": "Pending"}


def _default_namespace(namespace: Obj, operation: str) -> None:
    labels = namespace["metadata"].setdefault("labels", {})
    labels["kubernetes.io/metadata.name"] = namespace["metadata"].get("name", "")
    if operation == "CREATE":
        namespace.setdefault("spec", {}).setdefault("finalizers", ["kubernetes"])
        namespace["status"] = {"phase": "Active"}


def _default_pod(pod: Obj, operation: str) -> None:
    spec = pod.setdefault("spec", {})
    default_pod_spec(spec, restart_policy=True)
    spec.setdefault("enableServiceLinks", True)
    for container in spec.get("containers") or ():
        resources = container.get("resources") or {}
        if resources.get("limits"):  # SetDefaults_Pod: unset requests default to the limits
            requests = resources.setdefault("requests", {})
            for name, value in resources["limits"].items():
                requests.setdefault(name, value)
    if operation == "CREATE":
        pod["status"] = {"phase": "Pending", "qosClass": _qos_class(spec)}


def _qos_class(spec: Obj) -> str:
    requests, limits = [], []
    for container in spec.get("containers") or ():
        resources = container.get("resources") or {}
        requests.append({k: v for k, v in (resources.get("requests") or {}).items() if k in ("cpu", "memory")})
        limits.append({k: v for k, v in (resources.get("limits") or {}).items() if k in ("cpu", "memory")})
    if not any(requests) and not any(limits):
        return "BestEffort"
    guaranteed = all(len(lim) == 2 and req == lim for req, lim in zip(requests, limits, strict=True))
    return "Guaranteed" if guaranteed else "Burstable"


# ================================================================================ the pod template
_STANDARD_CONTAINER_RESOURCES = frozenset({"cpu", "memory", "ephemeral-storage"})
_STANDARD_RESOURCES = _STANDARD_CONTAINER_RESOURCES | {"storage", "pods", "services", "secrets", "configmaps"}
_TAINT_EFFECTS = ("NoSchedule", "PreferNoSchedule", "NoExecute")
_VOLUME_SOURCES_WITH_NAME = {"configMap": "name", "secret": "secretName", "persistentVolumeClaim": "claimName"}
_ENV_FIELD_PATHS = (
    "metadata.annotations",
    "metadata.labels",
    "metadata.name",
    "metadata.namespace",
    "metadata.uid",
    "spec.nodeName",
    "spec.serviceAccountName",
    "status.hostIP",
    "status.hostIPs",
    "status.podIP",
    "status.podIPs",
)
_ENV_RESOURCE_FIELDS = (
    "limits.cpu",
    "limits.ephemeral-storage",
    "limits.memory",
    "requests.cpu",
    "requests.ephemeral-storage",
    "requests.memory",
)


def _is_hugepages(name: str) -> bool:
    return name.startswith("hugepages-")


def _is_native(name: str) -> bool:
    return "/" not in name or "kubernetes.io/" in name


def _is_extended(name: str) -> bool:
    """An extended resource (``nvidia.com/gpu``): domain-prefixed, not native, not a quota name."""
    return not _is_native(name) and not name.startswith("requests.") and not meta.is_qualified_name("requests." + name)


def _resource_name_errors(name: str, path: str) -> list[FieldError]:
    """validateContainerResourceName: a standard container resource, or a valid extended resource."""
    errors = [invalid(path, name, message) for message in meta.is_qualified_name(name)]
    if errors:
        return errors
    if "/" not in name:
        if name not in _STANDARD_RESOURCES and not _is_hugepages(name):
            errors.append(invalid(path, name, "must be a standard resource type or fully qualified"))
        if name not in _STANDARD_CONTAINER_RESOURCES and not _is_hugepages(name):
            errors.append(invalid(path, name, "must be a standard resource for containers"))
    elif not _is_native(name) and not _is_extended(name):
        errors.append(invalid(path, name, "doesn't follow extended resource name standard"))
    return errors


def _quantity_errors(name: str, quantity: Quantity, path: str) -> list[FieldError]:
    """ValidateResourceQuantityValue: non-negative, and whole for integer (extended) resources."""
    errors = []
    if quantity.value < 0:
        errors.append(invalid(path, str(quantity), "must be greater than or equal to 0"))
    if _is_extended(name) and not quantity.is_integer():
        errors.append(invalid(path, GoText(str(quantity)), "must be an integer"))
    return errors


def _resources_errors(resources: Obj, path: str) -> list[FieldError]:
    errors: list[FieldError] = []
    limits, requests = resources.get("limits") or {}, resources.get("requests") or {}
    limits_path, requests_path = child(path, "limits"), child(path, "requests")
    cpu_or_memory, hugepages = False, False
    for name, text in limits.items():
        errors += _resource_name_errors(name, key(limits_path, name))
        errors += _quantity_errors(name, Quantity.parse(text), key(limits_path, name))
        cpu_or_memory |= name in ("cpu", "memory")
        hugepages |= _is_hugepages(name)
    for name, text in requests.items():
        errors += _resource_name_errors(name, key(requests_path, name))
        quantity = Quantity.parse(text)
        errors += _quantity_errors(name, quantity, key(requests_path, name))
        overcommittable = _is_native(name) and not _is_hugepages(name)  # helper.IsOvercommitAllowed
        if name in limits:
            limit = Quantity.parse(limits[name])
            if quantity.value != limit.value and not overcommittable:
                errors.append(invalid(requests_path, str(quantity), f"must be equal to {name} limit of {limit}"))
            elif quantity.value > limit.value:
                errors.append(
                    invalid(requests_path, str(quantity), f"must be less than or equal to {name} limit of {limit}")
                )
        elif not overcommittable:
            errors.append(required(limits_path, "Limit must be set for non overcommitable resources"))
        cpu_or_memory |= name in ("cpu", "memory")
        hugepages |= _is_hugepages(name)
    if hugepages and not cpu_or_memory:
        errors.append(forbidden(path, "HugePages require cpu or memory"))
    return errors


def _env_errors(env: Sequence[Obj], path: str) -> list[FieldError]:
    errors: list[FieldError] = []
    for i, var in enumerate(env):
        at = index(path, i)
        name = var.get("name", "")
        if not name:
            errors.append(required(child(at, "name")))
        errors += [invalid(child(at, "name"), name, message) for message in meta.is_relaxed_env_var_name(name)]
        errors += _env_value_from_errors(var, child(at, "valueFrom"))
    return errors


def _env_value_from_errors(var: Obj, path: str) -> list[FieldError]:
    """validateEnvVarValueFrom: exactly one source, and not together with ``value``."""
    source = var.get("valueFrom")
    if source is None:
        return []
    errors: list[FieldError] = []
    if "fieldRef" in source:
        ref, at = source["fieldRef"], child(path, "fieldRef")
        field_path = ref.get("fieldPath", "")
        if not field_path:
            errors.append(required(child(at, "fieldPath")))
        elif not (
            field_path in _ENV_FIELD_PATHS[2:] or re.match(r"^metadata\.(labels|annotations)\['[^']+'\]$", field_path)
        ):
            errors.append(not_supported(child(at, "fieldPath"), field_path, _ENV_FIELD_PATHS))
    if "resourceFieldRef" in source:
        ref, at = source["resourceFieldRef"], child(path, "resourceFieldRef")
        if ref.get("resource", "") not in _ENV_RESOURCE_FIELDS:
            errors.append(not_supported(child(at, "resource"), ref.get("resource", ""), _ENV_RESOURCE_FIELDS))
    for ref_name in ("configMapKeyRef", "secretKeyRef"):
        if ref_name in source:
            ref, at = source[ref_name], child(path, ref_name)
            name = ref.get("name", "")
            errors += [invalid(child(at, "name"), name, m) for m in meta.dns_subdomain_name(name, False)]
            if not ref.get("key"):
                errors.append(required(child(at, "key")))
            else:
                errors += [invalid(child(at, "key"), ref["key"], m) for m in meta.is_config_map_key(ref["key"])]
    sources = sum(name in source for name in ("fieldRef", "resourceFieldRef", "configMapKeyRef", "secretKeyRef"))
    if sources == 0:
        detail = "must specify one of: `fieldRef`, `resourceFieldRef`, `configMapKeyRef` or `secretKeyRef`"
        errors.append(invalid(path, "", detail))
    elif var.get("value"):
        errors.append(invalid(path, "", "may not be specified when `value` is not empty"))
    elif sources > 1:
        errors.append(invalid(path, "", "may not have more than one field specified at a time"))
    return errors


def _mount_errors(mounts: Sequence[Obj], volumes: set[str], path: str) -> list[FieldError]:
    errors: list[FieldError] = []
    mount_paths: set[str] = set()
    for i, mount in enumerate(mounts):
        at = index(path, i)
        name, mount_path = mount.get("name", ""), mount.get("mountPath", "")
        if not name:
            errors.append(required(child(at, "name")))
        if name not in volumes:
            errors.append(not_found(child(at, "name"), name))
        if not mount_path:
            errors.append(required(child(at, "mountPath")))
        if mount_path in mount_paths:
            errors.append(invalid(child(at, "mountPath"), mount_path, "must be unique"))
        mount_paths.add(mount_path)
        for sub in ("subPath", "subPathExpr"):
            # Go reports these at volumeMounts.subPath, without the index.
            errors += _descending_path_errors(mount.get(sub, ""), child(path, sub))
        if mount.get("subPath") and mount.get("subPathExpr"):
            detail = "subPathExpr and subPath are mutually exclusive"
            errors.append(invalid(child(at, "subPathExpr"), mount["subPathExpr"], detail))
    return errors


def _descending_path_errors(target: str, path: str) -> list[FieldError]:
    if not target:
        return []
    errors = [invalid(path, target, "must be a relative path")] if target.startswith("/") else []
    if ".." in target.replace("\\", "/").split("/"):
        errors.append(invalid(path, target, "must not contain '..'"))
    return errors


def _port_errors(ports: Sequence[Obj], path: str) -> list[FieldError]:
    errors: list[FieldError] = []
    names: set[str] = set()
    for i, port in enumerate(ports):
        at = index(path, i)
        if name := port.get("name", ""):
            messages = meta.is_valid_port_name(name)
            errors += [invalid(child(at, "name"), name, message) for message in messages]
            if not messages and name in names:
                errors.append(duplicate(child(at, "name"), name))
            names.add(name)
        number = port.get("containerPort", 0)
        if number == 0:
            errors.append(required(child(at, "containerPort")))
        errors += [invalid(child(at, "containerPort"), number, m) for m in meta.is_valid_port_num(number) if number]
        if host := port.get("hostPort", 0):
            errors += [invalid(child(at, "hostPort"), host, m) for m in meta.is_valid_port_num(host)]
        protocol = port.get("protocol", "")
        if not protocol:
            errors.append(required(child(at, "protocol")))
        elif protocol not in ("SCTP", "TCP", "UDP"):
            errors.append(not_supported(child(at, "protocol"), protocol, ("SCTP", "TCP", "UDP")))
    return errors


def _unique_label_name_errors(name: str, path: str, seen: set[str]) -> list[FieldError]:
    """A container's or volume's name: required, a DNS-1123 label, not one ``seen`` already."""
    errors: list[FieldError] = []
    if not name:
        errors.append(required(path))
    else:
        errors += [invalid(path, name, message) for message in meta.is_dns1123_label(name)]
    if name in seen:
        errors.append(duplicate(path, name))
    return errors


def _container_errors(container: Obj, path: str, names: set[str], volumes: set[str]) -> list[FieldError]:
    name = container.get("name", "")
    errors = _unique_label_name_errors(name, child(path, "name"), names)
    names.add(name)
    image = container.get("image", "")
    if not image:
        errors.append(required(child(path, "image")))
    elif image != image.strip():
        errors.append(invalid(child(path, "image"), image, "must not have leading or trailing whitespace"))
    policy = container.get("imagePullPolicy", "")
    if policy not in ("Always", "IfNotPresent", "Never"):
        errors.append(not_supported(child(path, "imagePullPolicy"), policy, ("Always", "IfNotPresent", "Never")))
    message_policy = container.get("terminationMessagePolicy", "")
    if message_policy not in ("File", "FallbackToLogsOnError"):
        supported = ("File", "FallbackToLogsOnError")
        errors.append(not_supported(child(path, "terminationMessagePolicy"), message_policy, supported))
    errors += _port_errors(container.get("ports") or (), child(path, "ports"))
    errors += _env_errors(container.get("env") or (), child(path, "env"))
    for i, source in enumerate(container.get("envFrom") or ()):
        prefix = source.get("prefix", "")
        at = child(index(child(path, "envFrom"), i), "prefix")
        errors += [invalid(at, prefix, message) for message in meta.is_relaxed_env_var_name(prefix) if prefix]
    errors += _mount_errors(container.get("volumeMounts") or (), volumes, child(path, "volumeMounts"))
    errors += _resources_errors(container.get("resources") or {}, child(path, "resources"))
    return errors


def _volume_errors(volumes: Sequence[Obj], path: str) -> tuple[list[FieldError], set[str]]:
    errors: list[FieldError] = []
    names: set[str] = set()
    for i, volume in enumerate(volumes):
        at = index(path, i)
        found: list[FieldError] = []
        sources = [source for source in volume if source != "name"]
        if not sources:
            found.append(required(at, "must specify a volume type"))
        found += [forbidden(child(at, extra), "may not specify more than 1 volume type") for extra in sources[1:]]
        for source, name_field in _VOLUME_SOURCES_WITH_NAME.items():
            if source in volume and not volume[source].get(name_field):
                found.append(required(child(child(at, source), name_field)))
        size = (volume.get("emptyDir") or {}).get("sizeLimit")
        if size is not None and Quantity.parse(size).value < 0:
            detail = "SizeLimit field must be a valid resource quantity"
            found.append(forbidden(child(child(at, "emptyDir"), "sizeLimit"), detail))
        name = volume.get("name", "")
        found += _unique_label_name_errors(name, child(at, "name"), names)
        if not found:  # a volume with errors is not there for its mounts (validateVolumes)
            names.add(name)
        errors += found
    return errors, names


def toleration_errors(tolerations: Sequence[Obj], path: str) -> list[FieldError]:
    """ValidateTolerations (pkg/apis/core/validation)."""
    errors: list[FieldError] = []
    for i, toleration in enumerate(tolerations):
        at = index(path, i)
        toleration_key, operator = toleration.get("key", ""), toleration.get("operator", "")
        value, effect = toleration.get("value", ""), toleration.get("effect", "")
        if toleration_key:
            errors += [invalid(child(at, "key"), toleration_key, m) for m in meta.is_qualified_name(toleration_key)]
        if not toleration_key and operator != "Exists":
            detail = 'operator must be Exists when `key` is empty, which means "match all values and all keys"'
            errors.append(invalid(child(at, "operator"), operator, detail))
        if "tolerationSeconds" in toleration and effect != "NoExecute":
            detail = "effect must be 'NoExecute' when `tolerationSeconds` is set"
            errors.append(invalid(child(at, "effect"), effect, detail))
        if operator in ("", "Equal"):
            messages = meta.is_valid_label_value(value)
            if messages:
                errors.append(invalid(child(at, "operator"), value, ";".join(messages)))
        elif operator == "Exists":
            if value:
                detail = "value must be empty when `operator` is 'Exists'"
                errors.append(invalid(child(at, "operator"), _toleration_struct(toleration), detail))
        else:
            errors.append(not_supported(child(at, "operator"), operator, ("Equal", "Exists")))
        if effect and effect not in _TAINT_EFFECTS:
            errors.append(not_supported(child(at, "effect"), effect, _TAINT_EFFECTS))
    return errors


def _toleration_struct(toleration: Obj) -> GoText:
    """Go reports the whole core.Toleration here, as ``%#v`` prints it."""
    seconds = toleration.get("tolerationSeconds")
    return meta.go_struct(
        "core.Toleration",
        [
            ("Key", toleration.get("key", "")),
            ("Operator", toleration.get("operator", "")),
            ("Value", toleration.get("value", "")),
            ("Effect", toleration.get("effect", "")),
            ("TolerationSeconds", GoText("(*int64)(nil)" if seconds is None else f"&{seconds}")),
        ],
    )


def pod_spec_errors(spec: Obj, path: str) -> list[FieldError]:
    """ValidatePodSpec, for the fields kubetune's pods use."""
    volume_errors, volumes = _volume_errors(spec.get("volumes") or (), child(path, "volumes"))
    errors = volume_errors
    containers = spec.get("containers") or []
    if not containers:
        errors.append(required(child(path, "containers")))
    names: set[str] = set()  # containers first, then init containers against them (validateInitContainers)
    for kind in ("containers", "initContainers"):
        for i, container in enumerate(spec.get(kind) or ()):
            errors += _container_errors(container, index(child(path, kind), i), names, volumes)
    restart = spec.get("restartPolicy", "Always")  # a template's unset policy counts as the default
    if restart not in ("Always", "OnFailure", "Never"):
        errors.append(not_supported(child(path, "restartPolicy"), restart, ("Always", "OnFailure", "Never")))
    dns = spec.get("dnsPolicy", "ClusterFirst")
    dns_policies = ("ClusterFirstWithHostNet", "ClusterFirst", "Default", "None")
    if dns not in dns_policies:
        errors.append(not_supported(child(path, "dnsPolicy"), dns, dns_policies))
    errors += meta.validate_labels(spec.get("nodeSelector"), child(path, "nodeSelector"))
    for name, rule in (("serviceAccountName", meta.dns_subdomain_name), ("priorityClassName", meta.dns_subdomain_name)):
        if value := spec.get(name):
            errors += [invalid(child(path, name), value, message) for message in rule(value, False)]
    for name in ("hostname", "subdomain"):
        if value := spec.get(name):
            errors += [invalid(child(path, name), value, message) for message in meta.is_dns1123_label(value)]
    if (deadline := spec.get("activeDeadlineSeconds")) is not None and not 1 <= deadline <= 2**31 - 1:
        errors.append(invalid(child(path, "activeDeadlineSeconds"), deadline, meta.inclusive_range_error(1, 2**31 - 1)))
    errors += toleration_errors(spec.get("tolerations") or (), child(path, "tolerations"))
    for i, gate in enumerate(spec.get("schedulingGates") or ()):
        name = gate.get("name", "")
        at = child(index(child(path, "schedulingGates"), i), "name")
        errors += [invalid(at, name, message) for message in meta.is_qualified_name(name)]
    return errors


def pod_template_errors(template: Obj, path: str) -> list[FieldError]:
    """ValidatePodTemplateSpec: the template's labels are checked at ``<path>.labels``."""
    template_meta = template.get("metadata") or {}
    errors = meta.validate_labels(template_meta.get("labels"), child(path, "labels"))
    errors += meta.validate_annotations(template_meta.get("annotations"), child(path, "annotations"))
    errors += pod_spec_errors(template.get("spec") or {}, child(path, "spec"))
    if (template.get("spec") or {}).get("ephemeralContainers"):
        errors.append(
            forbidden(child(path, "spec.ephemeralContainers"), "ephemeral containers not allowed in pod template")
        )
    return errors


# ================================================================================ label selectors
def _go_string_map(labels: Mapping[str, str] | None) -> GoText:
    shown = labels or {}
    items = ", ".join(f"{meta.go_quote(k)}:{meta.go_quote(shown[k])}" for k in sorted(shown))
    return GoText(f"map[string]string{{{items}}}")


def _selector_text(selector: Obj) -> GoText:
    expressions = selector.get("matchExpressions")
    shown = "[]v1.LabelSelectorRequirement(nil)" if not expressions else json.dumps(expressions)
    return GoText(
        f"&v1.LabelSelector{{MatchLabels:{_go_string_map(selector.get('matchLabels'))}, MatchExpressions:{shown}}}"
    )


def selector_errors(selector: Obj, path: str) -> list[FieldError]:
    """ValidateLabelSelector."""
    errors = meta.validate_labels(selector.get("matchLabels"), child(path, "matchLabels"))
    for i, expression in enumerate(selector.get("matchExpressions") or ()):
        at = index(child(path, "matchExpressions"), i)
        operator, values = expression.get("operator", ""), expression.get("values") or []
        if operator in ("In", "NotIn"):
            if not values:
                errors.append(required(child(at, "values"), "must be specified when `operator` is 'In' or 'NotIn'"))
        elif operator in ("Exists", "DoesNotExist"):
            if values:
                detail = "may not be specified when `operator` is 'Exists' or 'DoesNotExist'"
                errors.append(forbidden(child(at, "values"), detail))
        else:
            errors.append(invalid(child(at, "operator"), operator, "not a valid selector operator"))
        label = expression.get("key", "")
        errors += [invalid(child(at, "key"), label, message) for message in meta.is_qualified_name(label)]
        for j, value in enumerate(values):
            errors += [invalid(index(child(at, "values"), j), value, m) for m in meta.is_valid_label_value(value)]
    return errors


def selector_matches(selector: Obj, labels: Mapping[str, str]) -> bool:
    if any(labels.get(k) != v for k, v in (selector.get("matchLabels") or {}).items()):
        return False
    for expression in selector.get("matchExpressions") or ():
        present, value = expression.get("key") in labels, labels.get(expression.get("key", ""))
        values = expression.get("values") or []
        operator = expression.get("operator")
        if (
            (operator == "In" and value not in values)
            or (operator == "NotIn" and present and value in values)
            or (operator == "Exists" and not present)
            or (operator == "DoesNotExist" and present)
        ):
            return False
    return True  # an empty selector selects everything


# ============================================================================================ Job
_FAILURE_ACTIONS = ("Count", "FailIndex", "FailJob", "Ignore")


def _job_generated_selector_errors(job: Obj) -> list[FieldError]:
    """validateGeneratedSelector: the selector and the template labels the strategy generated are intact."""
    spec = job.get("spec") or {}
    if spec.get("manualSelector") is True or "selector" not in spec:
        return []
    job_meta = job["metadata"]
    uid, name = job_meta.get("uid", ""), job_meta.get("name", "")
    errors = [] if uid else [required("metadata.uid")]
    labels = ((spec.get("template") or {}).get("metadata") or {}).get("labels") or {}
    for label, expected in (
        ("controller-uid", uid),
        ("job-name", name),
        ("batch.kubernetes.io/controller-uid", uid),
        ("batch.kubernetes.io/job-name", name),
    ):
        at = key("spec.template.metadata.labels", label)
        if label not in labels:
            errors.append(required(at, expected))
        elif labels[label] != expected:
            errors.append(invalid(at, _go_string_map(labels), f"must be '{expected}'"))
    expected_labels = {
        "controller-uid": uid,
        "job-name": name,
        "batch.kubernetes.io/controller-uid": uid,
        "batch.kubernetes.io/job-name": name,
    }
    if not selector_matches(spec["selector"], expected_labels):
        errors.append(invalid("spec.selector", _selector_text(spec["selector"]), "`selector` not auto-generated"))
    return errors


def _pod_failure_policy_errors(spec: Obj, path: str) -> list[FieldError]:
    template_spec = (spec.get("template") or {}).get("spec") or {}
    containers = {c.get("name") for kind in ("containers", "initContainers") for c in template_spec.get(kind) or ()}
    errors: list[FieldError] = []
    rules = (spec.get("podFailurePolicy") or {}).get("rules") or []
    if len(rules) > 20:
        errors.append(meta.too_many(child(path, "rules"), len(rules), 20))
    for i, rule in enumerate(rules):
        at = index(child(path, "rules"), i)
        action = rule.get("action", "")
        if not action:
            errors.append(required(child(at, "action"), f"valid values: {_go_slice(_FAILURE_ACTIONS)}"))
        elif action == "FailIndex":
            if "backoffLimitPerIndex" not in spec:
                errors.append(invalid(child(at, "action"), action, "requires the backoffLimitPerIndex to be set"))
        elif action not in _FAILURE_ACTIONS:
            errors.append(not_supported(child(at, "action"), action, _FAILURE_ACTIONS))
        exit_codes, conditions = rule.get("onExitCodes"), rule.get("onPodConditions") or []
        if exit_codes is not None:
            errors += _exit_code_errors(exit_codes, child(at, "onExitCodes"), containers)
        for j, pattern in enumerate(conditions):
            pattern_path = index(child(at, "onPodConditions"), j)
            condition = pattern.get("type", "")
            errors += [invalid(child(pattern_path, "type"), condition, m) for m in meta.is_qualified_name(condition)]
            status = pattern.get("status", "")
            if status not in ("False", "True", "Unknown"):
                errors.append(not_supported(child(pattern_path, "status"), status, ("False", "True", "Unknown")))
        if exit_codes is not None and conditions:
            errors.append(invalid(at, OMIT, "specifying both OnExitCodes and OnPodConditions is not supported"))
        if exit_codes is None and not conditions:
            errors.append(invalid(at, OMIT, "specifying one of OnExitCodes and OnPodConditions is required"))
    return errors


def _go_slice(values: Sequence[str]) -> str:
    return "[" + " ".join(meta.go_quote(v) for v in values) + "]"


def _exit_code_errors(requirement: Obj, path: str, containers: set[Any]) -> list[FieldError]:
    errors: list[FieldError] = []
    operator = requirement.get("operator", "")
    if not operator:
        errors.append(required(child(path, "operator"), f"valid values: {_go_slice(('In', 'NotIn'))}"))
    elif operator not in ("In", "NotIn"):
        errors.append(not_supported(child(path, "operator"), operator, ("In", "NotIn")))
    if "containerName" in requirement and requirement["containerName"] not in containers:
        detail = "must be one of the container or initContainer names in the pod template"
        errors.append(invalid(child(path, "containerName"), requirement["containerName"], detail))
    values = requirement.get("values") or []
    values_path = child(path, "values")
    if not values:
        errors.append(invalid(values_path, GoText("[]int32{}"), "at least one value is required"))
    elif len(values) > 255:
        errors.append(meta.too_many(values_path, len(values), 255))
    seen: set[int] = set()
    for j, value in enumerate(values):
        if operator == "In" and value == 0:
            errors.append(invalid(index(values_path, j), value, "must not be 0 for the In operator"))
        if value in seen:
            errors.append(duplicate(index(values_path, j), value))
        seen.add(value)
    if any(a > b for a, b in itertools.pairwise(values)):
        shown = GoText("[]int32{" + ", ".join(str(v) for v in values) + "}")
        errors.append(invalid(values_path, shown, "must be ordered"))
    return errors


def _job_spec_errors(spec: Obj) -> list[FieldError]:
    """ValidateJobSpec (validateJobSpec and the selector checks)."""
    errors: list[FieldError] = []
    for name in (
        "parallelism",
        "completions",
        "activeDeadlineSeconds",
        "backoffLimit",
        "ttlSecondsAfterFinished",
        "backoffLimitPerIndex",
        "maxFailedIndexes",
    ):
        if name in spec:
            errors += nonnegative(spec[name], f"spec.{name}")
    mode = spec.get("completionMode", "NonIndexed")
    if mode not in ("NonIndexed", "Indexed"):
        errors.append(not_supported("spec.completionMode", mode, ("NonIndexed", "Indexed")))
    if mode == "Indexed" and "completions" not in spec:
        errors.append(required("spec.completions", "when completion mode is Indexed"))
    if mode != "Indexed":
        for name in ("backoffLimitPerIndex", "maxFailedIndexes"):
            if name in spec:
                errors.append(invalid(f"spec.{name}", spec[name], "requires indexed completion mode"))
    if "podFailurePolicy" in spec:
        errors += _pod_failure_policy_errors(spec, "spec.podFailurePolicy")
    replacement = spec.get("podReplacementPolicy")
    allowed = ("Failed",) if "podFailurePolicy" in spec else ("Failed", "TerminatingOrFailed")
    if replacement is not None and replacement not in allowed:
        errors.append(not_supported("spec.podReplacementPolicy", replacement, allowed))
    template = spec.get("template") or {}
    errors += pod_template_errors(template, "spec.template")
    restart = (template.get("spec") or {}).get("restartPolicy", "")
    restart_path = "spec.template.spec.restartPolicy"
    if restart in ("", "Always"):
        errors.append(required(restart_path, 'valid values: "OnFailure", "Never"'))
    elif restart not in ("OnFailure", "Never"):
        errors.append(not_supported(restart_path, restart, ("OnFailure", "Never")))
    elif "podFailurePolicy" in spec and restart != "Never":
        errors.append(invalid(restart_path, restart, 'only "Never" is supported when podFailurePolicy is specified'))
    if "selector" not in spec:
        errors.append(required("spec.selector"))
    else:
        errors += selector_errors(spec["selector"], "spec.selector")
        labels = (template.get("metadata") or {}).get("labels") or {}
        if not selector_matches(spec["selector"], labels):
            detail = "`selector` does not match template `labels`"
            errors.append(invalid("spec.template.metadata.labels", _go_string_map(labels), detail))
    return errors


def _validate_job(job: Obj) -> list[FieldError]:
    errors = meta.validate_object_meta(job["metadata"], namespaced=True, name_rule=meta.dns_subdomain_name)
    errors += _job_generated_selector_errors(job)
    spec = job.get("spec") or {}
    errors += _job_spec_errors(spec)
    if spec.get("completionMode") == "Indexed" and spec.get("completions", 0) > 0:
        hostname = f"{job['metadata'].get('name', '')}-{spec['completions'] - 1}"
        if meta.is_dns1123_label(hostname):
            detail = f"will not able to create pod with invalid DNS label: {hostname}"
            errors.append(invalid("metadata.name", job["metadata"].get("name", ""), detail))
    return errors


def _template_immutability_errors(spec: Obj, old_spec: Obj, old_job: Obj) -> list[FieldError]:
    """validatePodTemplateUpdate: while the old Job is suspended and never started, the scheduling
    directives (node selector and affinity, tolerations, scheduling gates, labels, annotations) may change."""
    template, old_template = spec.get("template") or {}, copy.deepcopy(old_spec.get("template") or {})
    suspended = (old_job.get("spec") or {}).get("suspend") is True
    never_started = not (old_job.get("status") or {}).get("startTime")
    if suspended and never_started:
        new_pod, old_pod = template.get("spec") or {}, old_template.setdefault("spec", {})
        affinity, old_affinity = new_pod.get("affinity"), old_pod.get("affinity")
        if affinity is None and old_affinity is not None:
            old_affinity.pop("nodeAffinity", None)
            if not old_affinity:
                old_pod.pop("affinity")
        elif affinity is not None:
            rest = {k: v for k, v in (old_affinity or {}).items() if k != "nodeAffinity"}
            if "nodeAffinity" in affinity:
                rest["nodeAffinity"] = affinity["nodeAffinity"]
            old_pod["affinity"] = rest
        for name in ("nodeSelector", "tolerations", "schedulingGates"):
            _copy_key(new_pod, old_pod, name)
        old_meta = old_template.setdefault("metadata", {})
        for name in ("labels", "annotations"):
            _copy_key(template.get("metadata") or {}, old_meta, name)
        if not old_meta and not (template.get("metadata")):
            old_template.pop("metadata")
    shown = GoText(json.dumps(template, sort_keys=True, separators=(",", ":")))
    return immutable("spec.template", template, old_template, shown)


def _copy_key(source: Obj, target: Obj, name: str) -> None:
    if name in source:
        target[name] = source[name]
    else:
        target.pop(name, None)


def _validate_job_update(job: Obj, old: Obj) -> list[FieldError]:
    spec, old_spec = job.get("spec") or {}, old.get("spec") or {}
    errors = _job_spec_errors(spec)
    errors += immutable("spec.completions", spec.get("completions"), old_spec.get("completions"))
    errors += immutable(
        "spec.selector", spec.get("selector"), old_spec.get("selector"), _selector_text(spec.get("selector") or {})
    )
    errors += _template_immutability_errors(spec, old_spec, old)
    for name in ("completionMode", "podFailurePolicy", "backoffLimitPerIndex", "managedBy", "successPolicy"):
        errors += immutable(f"spec.{name}", spec.get(name), old_spec.get(name))
    return errors


def _validate_job_status(job: Obj, old: Obj) -> list[FieldError]:
    status = job.get("status") or {}
    errors: list[FieldError] = []
    for name in ("active", "succeeded", "failed", "ready", "terminating"):
        if name in status:
            errors += nonnegative(status[name], f"status.{name}")
    return errors


# ===================================================================================== other kinds
MAX_SECRET_SIZE = 1024 * 1024
_IMMUTABLE_WHEN_SET = "field is immutable when `immutable` is set"


def _data_errors(obj: Obj, text_bag: str | None, byte_bags: Sequence[str]) -> tuple[list[FieldError], int]:
    """Config keys in each bag, no key in two bags; returns the total size of the values in bytes
    (a text bag holds strings, a byte bag base64, counted decoded)."""
    bags = [bag for bag in (text_bag, *byte_bags) if bag]
    errors: list[FieldError] = []
    size = 0
    for bag in bags:
        others = [other for other in bags if other != bag]
        for name, value in (obj.get(bag) or {}).items():
            errors += [invalid(key(bag, name), name, message) for message in meta.is_config_map_key(name)]
            for other in others:
                if name in (obj.get(other) or {}):
                    errors.append(invalid(key(bag, name), name, f"duplicate of key present in {other}"))
            size += len(value.encode()) if bag == text_bag else len(base64.b64decode(value))
    return errors, size


def _validate_config_map(config_map: Obj) -> list[FieldError]:
    errors = meta.validate_object_meta(config_map["metadata"], namespaced=True, name_rule=meta.dns_subdomain_name)
    data_errors, size = _data_errors(config_map, "data", ("binaryData",))
    errors += data_errors
    if size > MAX_SECRET_SIZE:
        errors.append(meta.too_long(meta.EMPTY_PATH, MAX_SECRET_SIZE))
    return errors


def _immutable_data_errors(new: Obj, old: Obj, bags: Sequence[str]) -> list[FieldError]:
    if old.get("immutable") is not True:
        return []
    errors = [] if new.get("immutable") is True else [forbidden("immutable", _IMMUTABLE_WHEN_SET)]
    return errors + [forbidden(bag, _IMMUTABLE_WHEN_SET) for bag in bags if new.get(bag) != old.get(bag)]


def _validate_config_map_update(new: Obj, old: Obj) -> list[FieldError]:
    return _immutable_data_errors(new, old, ("data", "binaryData")) + _validate_config_map(new)


_SECRET_REQUIRED_KEYS = {
    "kubernetes.io/dockercfg": (".dockercfg",),
    "kubernetes.io/dockerconfigjson": (".dockerconfigjson",),
    "kubernetes.io/ssh-auth": ("ssh-privatekey",),
    "kubernetes.io/tls": ("tls.crt", "tls.key"),
}


def _validate_secret(secret: Obj) -> list[FieldError]:
    errors = meta.validate_object_meta(secret["metadata"], namespaced=True, name_rule=meta.dns_subdomain_name)
    data_errors, size = _data_errors(secret, None, ("data",))
    errors += data_errors
    if size > MAX_SECRET_SIZE:
        errors.append(meta.too_long("data", MAX_SECRET_SIZE))
    data = secret.get("data") or {}
    secret_type = secret.get("type", "Opaque")
    if secret_type == "kubernetes.io/service-account-token":
        annotation = "kubernetes.io/service-account.name"
        if not (secret["metadata"].get("annotations") or {}).get(annotation):
            errors.append(required(key("metadata.annotations", annotation)))
    elif secret_type == "kubernetes.io/basic-auth" and "username" not in data and "password" not in data:
        errors += [required(key("data", "username")), required(key("data", "password"))]
    for name in _SECRET_REQUIRED_KEYS.get(secret_type, ()):
        if name not in data:
            errors.append(required(key("data", name)))
    return errors


def _validate_secret_update(new: Obj, old: Obj) -> list[FieldError]:
    errors = immutable("type", new.get("type", ""), old.get("type", ""))
    return errors + _immutable_data_errors(new, old, ("data",)) + _validate_secret(new)


_ACCESS_MODES = ("ReadOnlyMany", "ReadWriteMany", "ReadWriteOnce", "ReadWriteOncePod")


def _validate_pvc(claim: Obj) -> list[FieldError]:
    errors = meta.validate_object_meta(claim["metadata"], namespaced=True, name_rule=meta.dns_subdomain_name)
    spec = claim.get("spec") or {}
    modes = spec.get("accessModes") or []
    if not modes:
        errors.append(required("spec.accessModes", "at least 1 access mode is required"))
    errors += [not_supported("spec.accessModes", mode, _ACCESS_MODES) for mode in modes if mode not in _ACCESS_MODES]
    if "ReadWriteOncePod" in modes and len(set(modes)) > 1:
        errors.append(forbidden("spec.accessModes", "may not use ReadWriteOncePod with other access modes"))
    if "selector" in spec:
        errors += selector_errors(spec["selector"], "spec.selector")
    storage_path = key("spec.resources", "storage")
    storage = ((spec.get("resources") or {}).get("requests") or {}).get("storage")
    if storage is None:
        errors.append(required(storage_path))
    elif Quantity.parse(storage).value <= 0:
        errors.append(invalid(storage_path, storage, "must be greater than zero"))
    if class_name := spec.get("storageClassName"):
        errors += [invalid("spec.storageClassName", class_name, m) for m in meta.dns_subdomain_name(class_name, False)]
    mode = spec.get("volumeMode", "Filesystem")
    if mode not in ("Block", "Filesystem"):
        errors.append(not_supported("spec.volumeMode", mode, ("Block", "Filesystem")))
    return errors


def _validate_pvc_update(new: Obj, old: Obj) -> list[FieldError]:
    errors = _validate_pvc(new)
    spec, old_spec = new.get("spec") or {}, old.get("spec") or {}

    def without_requests(claim_spec: Obj) -> Obj:
        rest = {k: v for k, v in claim_spec.items() if k not in ("resources", "volumeAttributesClassName")}
        return {**rest, "limits": (claim_spec.get("resources") or {}).get("limits")}

    if without_requests(spec) != without_requests(old_spec):
        detail = (
            "spec is immutable after creation except resources.requests and volumeAttributesClassName for bound claims"
        )
        errors.append(forbidden("spec", detail))
    new_size = ((spec.get("resources") or {}).get("requests") or {}).get("storage")
    old_size = ((old_spec.get("resources") or {}).get("requests") or {}).get("storage")
    if new_size and old_size and Quantity.parse(new_size).value < Quantity.parse(old_size).value:
        errors.append(forbidden("spec.resources.requests.storage", "field can not be less than previous value"))
    return errors


def _validate_pod(pod: Obj) -> list[FieldError]:
    errors = meta.validate_object_meta(pod["metadata"], namespaced=True, name_rule=meta.dns_subdomain_name)
    return errors + pod_spec_errors(pod.get("spec") or {}, "spec")


_POD_MUTABLE = (
    "pod updates may not change fields other than `spec.containers[*].image`,`spec.initContainers[*].image`,"
    "`spec.activeDeadlineSeconds`,`spec.tolerations` (only additions to existing tolerations),"
    "`spec.terminationGracePeriodSeconds` (allow it to be set to 1 if it was previously negative)"
)


def _validate_pod_update(new: Obj, old: Obj) -> list[FieldError]:
    errors = pod_spec_errors(new.get("spec") or {}, "spec")

    def fixed_part(spec: Obj) -> Obj:
        rest = {k: v for k, v in spec.items() if k not in ("activeDeadlineSeconds", "tolerations", "schedulingGates")}
        for kind in ("containers", "initContainers"):
            rest[kind] = [{k: v for k, v in c.items() if k != "image"} for c in spec.get(kind) or ()]
        return rest

    spec, old_spec = new.get("spec") or {}, old.get("spec") or {}
    if fixed_part(spec) != fixed_part(old_spec):
        errors.append(forbidden("spec", _POD_MUTABLE))
    old_tolerations = old_spec.get("tolerations") or []
    if (spec.get("tolerations") or [])[: len(old_tolerations)] != old_tolerations:
        errors.append(forbidden("spec", _POD_MUTABLE))
    return errors


def _validate_event(event: Obj) -> list[FieldError]:
    """legacyValidateEvent: the only rules a core/v1 Event gets (its metadata is not checked by the strategy)."""
    errors: list[FieldError] = []
    namespace = event["metadata"].get("namespace", "")
    involved = str((event.get("involvedObject") or {}).get("namespace", ""))
    if not event.get("eventTime"):
        if (not involved and namespace not in ("", "default")) or (involved and namespace != involved):
            errors.append(invalid("involvedObject.namespace", involved, "does not match event.namespace"))
    else:
        if not involved and namespace not in ("default", "kube-system"):
            errors.append(invalid("involvedObject.namespace", involved, "does not match event.namespace"))
        controller = event.get("reportingComponent", "")
        if not controller:
            errors.append(required("source"))
        errors += [invalid("source", controller, message) for message in meta.is_qualified_name(controller)]
        for name, limit in (("reportingInstance", 128), ("action", 128), ("reason", 128)):
            value = event.get(name, "")
            if not value:
                errors.append(required(name))
            elif len(value) > limit:
                errors.append(invalid(name, "", f"can have at most {limit} characters"))
        if len(event.get("message", "")) > 1024:
            errors.append(invalid("message", "", "can have at most 1024 characters"))
    errors += [invalid("namespace", namespace, message) for message in meta.is_dns1123_subdomain(namespace)]
    return errors


def _policy_rule_errors(rule: Obj, namespaced: bool, path: str) -> list[FieldError]:
    errors: list[FieldError] = []
    if not rule.get("verbs"):
        errors.append(required(child(path, "verbs"), "verbs must contain at least one value"))
    urls = rule.get("nonResourceURLs") or []
    if urls:
        shown = GoText("[]string{" + ", ".join(meta.go_quote(u) for u in urls) + "}")
        if namespaced:
            errors.append(
                invalid(child(path, "nonResourceURLs"), shown, "namespaced rules cannot apply to non-resource URLs")
            )
        if rule.get("apiGroups") or rule.get("resources") or rule.get("resourceNames"):
            detail = "rules cannot apply to both regular resources and non-resource URLs"
            errors.append(invalid(child(path, "nonResourceURLs"), shown, detail))
        return errors
    if not rule.get("apiGroups"):
        errors.append(required(child(path, "apiGroups"), "resource rules must supply at least one api group"))
    if not rule.get("resources"):
        errors.append(required(child(path, "resources"), "resource rules must supply at least one resource"))
    return errors


def _role_validator(namespaced: bool) -> Callable[[Obj], list[FieldError]]:
    def validate(role: Obj) -> list[FieldError]:
        errors = meta.validate_object_meta(role["metadata"], namespaced=namespaced, name_rule=meta.path_segment_name)
        for i, rule in enumerate(role.get("rules") or ()):
            errors += _policy_rule_errors(rule, namespaced, index("rules", i))
        aggregation = role.get("aggregationRule")
        if aggregation is not None:
            selectors = aggregation.get("clusterRoleSelectors") or []
            if not selectors:
                detail = "at least one clusterRoleSelector required if aggregationRule is non-nil"
                errors.append(required("aggregationRule.clusterRoleSelectors", detail))
            for i, selector in enumerate(selectors):
                errors += selector_errors(selector, index("aggregationRule.clusterRoleSelectors", i))
        return errors

    return validate


def _subject_errors(subject: Obj, namespaced: bool, path: str) -> list[FieldError]:
    errors: list[FieldError] = []
    name, kind, group = subject.get("name", ""), subject.get("kind", ""), subject.get("apiGroup", "")
    if not name:
        errors.append(required(child(path, "name")))
    if kind == "ServiceAccount":
        if name:
            errors += [invalid(child(path, "name"), name, m) for m in meta.dns_subdomain_name(name, False)]
        if group:
            errors.append(not_supported(child(path, "apiGroup"), group, ("",)))
        if not namespaced and not subject.get("namespace"):
            errors.append(required(child(path, "namespace")))
    elif kind in ("User", "Group"):
        if group != "rbac.authorization.k8s.io":
            errors.append(not_supported(child(path, "apiGroup"), group, ("rbac.authorization.k8s.io",)))
    else:
        errors.append(not_supported(child(path, "kind"), kind, ("ServiceAccount", "User", "Group")))
    return errors


def _binding_validator(namespaced: bool) -> Callable[[Obj], list[FieldError]]:
    role_kinds = ("Role", "ClusterRole") if namespaced else ("ClusterRole",)

    def validate(binding: Obj) -> list[FieldError]:
        errors = meta.validate_object_meta(binding["metadata"], namespaced=namespaced, name_rule=meta.path_segment_name)
        role_ref = binding.get("roleRef") or {}
        if role_ref.get("apiGroup", "") != "rbac.authorization.k8s.io":
            errors.append(
                not_supported("roleRef.apiGroup", role_ref.get("apiGroup", ""), ("rbac.authorization.k8s.io",))
            )
        if role_ref.get("kind", "") not in role_kinds:
            errors.append(not_supported("roleRef.kind", role_ref.get("kind", ""), role_kinds))
        name = role_ref.get("name", "")
        if not name:
            errors.append(required("roleRef.name"))
        errors += [invalid("roleRef.name", name, message) for message in meta.path_segment_name(name, False) if name]
        for i, subject in enumerate(binding.get("subjects") or ()):
            errors += _subject_errors(subject, namespaced, index("subjects", i))
        return errors

    return validate


def _binding_update(namespaced: bool) -> Callable[[Obj, Obj], list[FieldError]]:
    validate = _binding_validator(namespaced)

    def validate_update(new: Obj, old: Obj) -> list[FieldError]:
        role_ref = new.get("roleRef") or {}
        errors = validate(new)
        if role_ref != (old.get("roleRef") or {}):
            shown = meta.go_struct(
                "rbac.RoleRef",
                [
                    ("APIGroup", role_ref.get("apiGroup", "")),
                    ("Kind", role_ref.get("kind", "")),
                    ("Name", role_ref.get("name", "")),
                ],
            )
            errors.append(invalid("roleRef", shown, "cannot change roleRef"))
        return errors

    return validate_update


# ================================================================ networking.k8s.io/v1 NetworkPolicy
# pkg/apis/networking/validation: ValidateNetworkPolicy / ValidateNetworkPolicyUpdate, and the v1 defaults.
_POLICY_TYPES = ("Ingress", "Egress")
_PORT_PROTOCOLS = ("TCP", "UDP", "SCTP")
_CIDR_MESSAGE = "must be a valid CIDR value, (e.g. 10.9.8.0/24 or 2001:db8::/64)"


def _default_network_policy(policy: Obj, operation: str) -> None:
    """SetDefaults_NetworkPolicyPort (protocol TCP) and SetDefaults_NetworkPolicy (policyTypes: Ingress,
    plus Egress when there are egress rules); podSelector is a struct, so it is always there."""
    spec = policy.setdefault("spec", {})
    spec.setdefault("podSelector", {})
    for rule in (spec.get("ingress") or []) + (spec.get("egress") or []):
        for port in rule.get("ports") or []:
            port.setdefault("protocol", "TCP")
    if not spec.get("policyTypes"):
        spec["policyTypes"] = ["Ingress", "Egress"] if spec.get("egress") else ["Ingress"]


def parse_cidr_sloppy(text: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network | None:
    """netutils.ParseCIDRSloppy: ``address/length``, host bits allowed, IPv4 octets with leading zeros
    allowed; None when ``text`` is not a CIDR."""
    address, slash, length = text.partition("/")
    if not slash or not length.isdigit():
        return None
    octets = address.split(".")
    if len(octets) == 4 and all(octet.isdigit() for octet in octets):
        address = ".".join(str(int(octet)) for octet in octets)
    try:
        return ipaddress.ip_network(f"{address}/{int(length)}", strict=False)
    except ValueError:
        return None


def _ip_block_errors(block: Obj, path: str) -> list[FieldError]:
    """ValidateIPBlock: a CIDR, and each ``except`` a CIDR strictly inside it."""
    cidr = block.get("cidr", "")
    if not cidr:
        return [required(child(path, "cidr"))]
    network = parse_cidr_sloppy(cidr)
    if network is None:
        return [invalid(child(path, "cidr"), cidr, _CIDR_MESSAGE)]
    errors: list[FieldError] = []
    for i, text in enumerate(block.get("except") or ()):
        at = index(child(path, "except"), i)
        excepted = parse_cidr_sloppy(text)
        if excepted is None:
            errors.append(invalid(at, text, _CIDR_MESSAGE))
        elif excepted.network_address not in network or network.prefixlen >= excepted.prefixlen:
            errors.append(invalid(at, text, "must be a strict subset of `cidr`"))
    return errors


def _network_policy_peer_errors(peer: Obj, path: str) -> list[FieldError]:
    errors: list[FieldError] = []
    peers = 0
    for name in ("podSelector", "namespaceSelector"):
        if peer.get(name) is not None:
            peers += 1
            errors += selector_errors(peer[name], child(path, name))
    if peer.get("ipBlock") is not None:
        peers += 1
        errors += _ip_block_errors(peer["ipBlock"], child(path, "ipBlock"))
    if peers == 0:
        errors.append(required(path, "must specify a peer"))
    elif peers > 1 and peer.get("ipBlock") is not None:
        errors.append(forbidden(path, "may not specify both ipBlock and another peer"))
    return errors


def _network_policy_port_errors(port: Obj, path: str) -> list[FieldError]:
    errors: list[FieldError] = []
    protocol = port.get("protocol")
    if protocol is not None and protocol not in _PORT_PROTOCOLS:
        errors.append(not_supported(child(path, "protocol"), protocol, _PORT_PROTOCOLS))
    number, end = port.get("port"), port.get("endPort")
    if number is None:
        if end is not None:
            errors.append(invalid(child(path, "endPort"), end, "may not be specified when `port` is not specified"))
    elif isinstance(number, int):
        errors += [invalid(child(path, "port"), number, m) for m in meta.is_valid_port_num(number)]
        if end is not None:
            if end < number:
                errors.append(invalid(child(path, "endPort"), number, "must be greater than or equal to `port`"))
            errors += [invalid(child(path, "endPort"), end, m) for m in meta.is_valid_port_num(end)]
    else:
        if end is not None:
            errors.append(invalid(child(path, "endPort"), end, "may not be specified when `port` is non-numeric"))
        errors += [invalid(child(path, "port"), number, m) for m in meta.is_valid_port_name(number)]
    return errors


def _network_policy_spec_errors(spec: Obj, path: str) -> list[FieldError]:
    """ValidateNetworkPolicySpec, in its order: podSelector, ingress, egress, policyTypes."""
    errors = selector_errors(spec.get("podSelector") or {}, child(path, "podSelector"))
    for i, rule in enumerate(spec.get("ingress") or ()):
        at = index(child(path, "ingress"), i)
        for j, port in enumerate(rule.get("ports") or ()):
            errors += _network_policy_port_errors(port, index(child(at, "ports"), j))
        for j, peer in enumerate(rule.get("from") or ()):
            errors += _network_policy_peer_errors(peer, index(child(at, "from"), j))
    for i, rule in enumerate(spec.get("egress") or ()):
        at = index(child(path, "egress"), i)
        for j, peer in enumerate(rule.get("to") or ()):
            errors += _network_policy_peer_errors(peer, index(child(at, "to"), j))
        for j, port in enumerate(rule.get("ports") or ()):
            errors += _network_policy_port_errors(port, index(child(at, "ports"), j))
    types = spec.get("policyTypes") or []
    if len(types) > len(_POLICY_TYPES):
        shown = GoText("[]networking.PolicyType{" + ", ".join(meta.go_quote(t) for t in types) + "}")
        return [*errors, invalid(child(path, "policyTypes"), shown, "may not specify more than two policyTypes")]
    for i, kind in enumerate(types):
        if kind not in _POLICY_TYPES:
            errors.append(not_supported(index(child(path, "policyTypes"), i), kind, _POLICY_TYPES))
    return errors


def _validate_network_policy(policy: Obj) -> list[FieldError]:
    errors = meta.validate_object_meta(policy["metadata"], namespaced=True, name_rule=meta.dns_subdomain_name)
    return errors + _network_policy_spec_errors(policy.get("spec") or {}, "spec")


def _validate_network_policy_update(new: Obj, old: Obj) -> list[FieldError]:
    """The spec is mutable; it is validated as on create (the metadata update rules run before)."""
    return _network_policy_spec_errors(new.get("spec") or {}, "spec")


SERVICE_PROTOCOLS = ("TCP", "UDP", "SCTP")


def _service_port_errors(ports: Sequence[Obj], path: str) -> list[FieldError]:
    """ValidateService's port rules: a number in range, a supported protocol, and a name (a DNS label,
    unique) required once there is more than one port."""
    errors: list[FieldError] = []
    names: set[str] = set()
    for position, port in enumerate(ports):
        at = index(path, position)
        name = port.get("name", "")
        if len(ports) > 1 and not name:
            errors.append(required(child(at, "name")))
        elif name:
            errors += [invalid(child(at, "name"), name, m) for m in meta.is_dns1123_label(name)]
            if name in names:
                errors.append(duplicate(child(at, "name"), name))
            names.add(name)
        errors += [
            invalid(child(at, "port"), port.get("port", 0), m) for m in meta.is_valid_port_num(port.get("port", 0))
        ]
        protocol = port.get("protocol", "")
        if protocol not in SERVICE_PROTOCOLS:
            errors.append(not_supported(child(at, "protocol"), protocol, SERVICE_PROTOCOLS))
        target = port.get("targetPort", 0)
        if isinstance(target, int) and target:
            errors += [invalid(child(at, "targetPort"), target, m) for m in meta.is_valid_port_num(target)]
        elif isinstance(target, str):
            errors += [invalid(child(at, "targetPort"), target, m) for m in meta.is_valid_port_name(target)]
    return errors


def _default_service(service: Obj, operation: str) -> None:
    """SetDefaults_Service: type ClusterIP, each port's protocol TCP and targetPort its port."""
    spec = service.setdefault("spec", {})
    spec.setdefault("type", "ClusterIP")
    spec.setdefault("sessionAffinity", "None")
    for port in spec.get("ports") or []:
        port.setdefault("protocol", "TCP")
        port.setdefault("targetPort", port.get("port", 0))


def _validate_service(service: Obj) -> list[FieldError]:
    errors = meta.validate_object_meta(service["metadata"], namespaced=True, name_rule=meta.dns1035_name)
    spec = service.get("spec") or {}
    service_type = spec.get("type", "ClusterIP")
    if service_type not in ("ClusterIP", "NodePort", "LoadBalancer", "ExternalName"):
        errors.append(
            not_supported("spec.type", service_type, ("ClusterIP", "ExternalName", "LoadBalancer", "NodePort"))
        )
    headless = spec.get("clusterIP") == "None"
    ports = spec.get("ports") or []
    if not ports and service_type != "ExternalName" and not headless:
        errors.append(required("spec.ports"))
    errors += _service_port_errors(ports, "spec.ports")
    errors += meta.validate_labels(spec.get("selector"), "spec.selector")
    return errors


def _required_fields_errors(node: GoType, value: Any, path: str) -> list[FieldError]:
    """For kinds validated by schema only: fields the OpenAPI schema marks required must be present."""
    errors: list[FieldError] = []
    if node.shape == STRUCT and isinstance(value, Mapping):
        errors += [required(child(path, name)) for name in node.required if name not in value]
        for name, item in value.items():
            if name in node.fields:
                errors += _required_fields_errors(node.fields[name], item, child(path, name))
    elif node.shape == LIST and isinstance(value, list) and node.elem is not None:
        for i, item in enumerate(value):
            errors += _required_fields_errors(node.elem, item, index(path, i))
    return errors


def _schema_only_validator(namespaced: bool, kind: tuple[str, str, str]) -> Callable[[Obj], list[FieldError]]:
    def validate(obj: Obj) -> list[FieldError]:
        errors = meta.validate_object_meta(obj["metadata"], namespaced=namespaced, name_rule=meta.dns_subdomain_name)
        node = kind_type(*kind)
        if node is not None:
            errors += _required_fields_errors(node, {k: v for k, v in obj.items() if k != "metadata"}, "")
        return errors

    return validate


def _validate_crd(crd: Obj) -> list[FieldError]:
    errors = _schema_only_validator(False, ("apiextensions.k8s.io", "v1", "CustomResourceDefinition"))(crd)
    spec = crd.get("spec") or {}
    expected = f"{(spec.get('names') or {}).get('plural', '')}.{spec.get('group', '')}"
    if crd["metadata"].get("name") != expected:
        errors.append(
            invalid("metadata.name", crd["metadata"].get("name", ""), 'must be spec.names.plural+"."+spec.group')
        )
    return errors


# ========================================================================================= kinds
Validate = Callable[[Obj], list[FieldError]]
ValidateUpdate = Callable[[Obj, Obj], list[FieldError]]
Default = Callable[[Obj, str], None]


@dataclass(frozen=True)
class KindRules:
    """What a kind's REST strategy does beyond the generic metadata rules."""

    validate: Validate
    validate_update: ValidateUpdate | None = None  # None: re-validate as on create
    validate_status: ValidateUpdate | None = None  # a write to the status subresource; None: metadata only
    default: Default | None = None


def _meta_only(name_rule: meta.NameRule, namespaced: bool) -> Validate:
    return lambda obj: meta.validate_object_meta(obj["metadata"], namespaced=namespaced, name_rule=name_rule)


_RULES: dict[tuple[str, str], KindRules] = {
    ("batch", "Job"): KindRules(_validate_job, _validate_job_update, _validate_job_status, _default_job),
    ("", "Pod"): KindRules(_validate_pod, _validate_pod_update, default=_default_pod),
    ("", "ConfigMap"): KindRules(_validate_config_map, _validate_config_map_update),
    ("", "Secret"): KindRules(_validate_secret, _validate_secret_update, default=_default_secret),
    ("", "ServiceAccount"): KindRules(_meta_only(meta.dns_subdomain_name, True)),
    ("", "PersistentVolumeClaim"): KindRules(_validate_pvc, _validate_pvc_update, default=_default_pvc),
    ("", "Namespace"): KindRules(_meta_only(meta.dns_label_name, False), default=_default_namespace),
    ("", "Service"): KindRules(_validate_service, default=_default_service),
    ("", "Event"): KindRules(_validate_event),
    ("networking.k8s.io", "NetworkPolicy"): KindRules(
        _validate_network_policy, _validate_network_policy_update, default=_default_network_policy
    ),
    ("rbac.authorization.k8s.io", "Role"): KindRules(_role_validator(True)),
    ("rbac.authorization.k8s.io", "ClusterRole"): KindRules(_role_validator(False)),
    ("rbac.authorization.k8s.io", "RoleBinding"): KindRules(
        _binding_validator(True), _binding_update(True), default=_default_binding
    ),
    ("rbac.authorization.k8s.io", "ClusterRoleBinding"): KindRules(
        _binding_validator(False), _binding_update(False), default=_default_binding
    ),
    ("apiextensions.k8s.io", "CustomResourceDefinition"): KindRules(_validate_crd),
    ("admissionregistration.k8s.io", "ValidatingAdmissionPolicy"): KindRules(
        _schema_only_validator(False, ("admissionregistration.k8s.io", "v1", "ValidatingAdmissionPolicy"))
    ),
    ("admissionregistration.k8s.io", "ValidatingAdmissionPolicyBinding"): KindRules(
        _schema_only_validator(False, ("admissionregistration.k8s.io", "v1", "ValidatingAdmissionPolicyBinding"))
    ),
}


def _rules(rtype: ResourceType) -> KindRules:
    found = _RULES.get((rtype.group, rtype.kind))
    return found or KindRules(_meta_only(meta.dns_subdomain_name, rtype.namespaced))


def default(rtype: ResourceType, operation: str, obj: Obj) -> None:
    rules = _rules(rtype)
    if rules.default is not None:
        rules.default(obj, operation)


def finish(rtype: ResourceType, obj: Obj) -> None:
    """What a client reads back that validation never sees (defaulting on the next decode)."""
    if (rtype.group, rtype.kind) == ("batch", "Job"):
        _copy_template_labels(obj)


def validate(
    rtype: ResourceType, operation: str, obj: Obj, old: Obj | None, subresource: str | None
) -> list[FieldError]:
    """The strategy's Validate/ValidateUpdate, then the generic metadata rules every kind gets
    (rest.BeforeCreate runs them only once the strategy found nothing)."""
    rules = _rules(rtype)
    generic = meta.validate_object_meta(obj["metadata"], namespaced=rtype.namespaced, name_rule=meta.path_segment_name)
    if operation == "CREATE" or old is None:
        errors = rules.validate(obj)
        return errors or generic
    errors = generic + meta.validate_object_meta_update(obj["metadata"], old["metadata"])
    if subresource == "status":
        return errors + (rules.validate_status(obj, old) if rules.validate_status else [])
    if rules.validate_update is not None:
        return errors + rules.validate_update(obj, old)
    return errors + rules.validate(obj)
