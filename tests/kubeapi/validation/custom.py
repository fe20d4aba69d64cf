"""Custom resources: what apiextensions-apiserver does with a CRD's openAPIV3Schema on every write.

In kube-apiserver's order:
1. ``decode``: metadata coerced to ObjectMeta; fields the schema does not know pruned (and reported,
   for ``fieldValidation``), nulls of non-nullable fields without a default dropped;
2. ``apply_defaults``: ``default`` on absent (or non-nullable null) fields, top-down;
3. ``validate``: ObjectMeta, the OpenAPI schema (kube-openapi's validator and messages), embedded
   resources, ``x-kubernetes-list-type`` set/map uniqueness, then the ``x-kubernetes-validations`` CEL
   rules, which are skipped when a blocking schema error was found (as customResourceStrategy does).

On an update, validation ratchets (CRDValidationRatcheting, on by default since 1.30): a value that is
unchanged from the stored object is not held to the schema again, and a failing non-transition CEL
rule on an unchanged value becomes a warning.
"""

from __future__ import annotations

import base64
import binascii
import copy
import ipaddress
import json
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date
from functools import cache
from typing import Any

import celpy
from celpy import celtypes
from celpy.evaluation import CELEvalError

from tests.kubeapi.model import FieldError, ResourceType
from tests.kubeapi.validation import core, meta
from tests.kubeapi.validation.meta import child, go_float, index, invalid, key, required

Schema = Mapping[str, Any]
Obj = dict[str, Any]
_MISSING: Any = object()  # no correlated old value (a create, or a part of the object that does not correlate)

# =========================================================================================== decode


def _coerce_metadata(metadata: Any, path: str, unknown: list[str]) -> Obj:
    """schemaobjectmeta: metadata is decoded as ObjectMeta, its unknown fields dropped and reported."""
    if not isinstance(metadata, Mapping):
        raise core.DecodeError(f"json: cannot unmarshal {core.json_type(metadata)} into Go value of type v1.ObjectMeta")
    node = core.object_meta_type()
    found: list[str] = []
    decoded = core.decode_value(node, dict(metadata), found)
    unknown += [child(path, name) for name in found]
    return dict(decoded)


def _prune(schema: Schema, value: Any, path: str, unknown: list[str], *, resource_root: bool = False) -> Any:
    """structuralpruning.Prune: drop what the schema does not specify, except under
    x-kubernetes-preserve-unknown-fields; an embedded resource keeps apiVersion, kind and metadata."""
    if isinstance(value, dict):
        properties = schema.get("properties") or {}
        extra = schema.get("additionalProperties")
        preserve = schema.get("x-kubernetes-preserve-unknown-fields") is True
        embedded = resource_root or schema.get("x-kubernetes-embedded-resource") is True
        out = {}
        for name, item in value.items():
            at = child(path, name)
            if embedded and name in ("apiVersion", "kind"):
                out[name] = item
            elif embedded and name == "metadata":
                out[name] = _coerce_metadata(item, at, unknown)
            elif name in properties:
                out[name] = _prune(properties[name], item, at, unknown)
            elif isinstance(extra, Mapping):
                out[name] = _prune(extra, item, at, unknown)
            elif preserve or extra is True:
                out[name] = item
            else:
                unknown.append(at)
        return out
    if isinstance(value, list) and isinstance(schema.get("items"), Mapping):
        return [_prune(schema["items"], item, index(path, i), unknown) for i, item in enumerate(value)]
    return value


def _is_non_nullable_null(value: Any, schema: Schema | None) -> bool:
    return value is None and schema is not None and not schema.get("nullable")


def _drop_non_nullable_nulls(schema: Schema, value: Any) -> None:
    """PruneNonNullableNullsWithoutDefaults: such a null is as good as absent."""
    if isinstance(value, dict):
        properties = schema.get("properties") or {}
        extra = schema.get("additionalProperties")
        for name in list(value):
            sub = properties.get(name) or (extra if isinstance(extra, Mapping) else None)
            if sub is None:
                continue
            if _is_non_nullable_null(value[name], sub) and "default" not in sub:
                del value[name]
            else:
                _drop_non_nullable_nulls(sub, value[name])
    elif isinstance(value, list) and isinstance(schema.get("items"), Mapping):
        for item in value:
            _drop_non_nullable_nulls(schema["items"], item)


def decode(rtype: ResourceType, obj: Obj) -> core.Decoded:
    unknown: list[str] = []
    if rtype.schema is None:  # a CRD this server does not know the schema of: keep all, check metadata
        decoded = dict(obj)
        decoded["metadata"] = _coerce_metadata(obj.get("metadata") or {}, "metadata", unknown)
        return core.Decoded(decoded, unknown)
    decoded = _prune(rtype.schema, obj, "", unknown, resource_root=True)
    _drop_non_nullable_nulls(rtype.schema, decoded)
    return core.Decoded(decoded, unknown)


# ========================================================================================= defaults


def apply_defaults(schema: Schema, value: Any) -> Any:
    """structuraldefaulting.Default, in place: a default fills an absent (or non-nullable null) field,
    then defaulting goes on inside it; list items and map values are defaulted too. Returns ``value``."""
    if isinstance(value, dict):
        properties = schema.get("properties") or {}
        for name, sub in properties.items():
            if "default" in sub and (name not in value or _is_non_nullable_null(value[name], sub)):
                value[name] = copy.deepcopy(sub["default"])
        extra = schema.get("additionalProperties")
        for name, item in value.items():
            if name in properties:
                apply_defaults(properties[name], item)
            elif isinstance(extra, Mapping):
                if _is_non_nullable_null(item, extra) and "default" in extra:
                    value[name] = copy.deepcopy(extra["default"])
                apply_defaults(extra, value[name])
    elif isinstance(value, list) and isinstance(schema.get("items"), Mapping):
        items = schema["items"]
        for i, item in enumerate(value):
            if _is_non_nullable_null(item, items) and "default" in items:
                value[i] = copy.deepcopy(items["default"])
            apply_defaults(items, value[i])
    return value


# =================================================================================== schema checks
# The formats a CRD schema may use that the server checks (apiextensions formats.go, at 1.33); the
# others (int32, int64, float, double, ...) are stripped from the schema and never checked.
_FORMAT_PATTERNS = {
    "bsonobjectid": r"^[0-9a-fA-F]{24}$",
    "email": r"^[^@\s]+@[^@\s]+$",
    "hostname": r"^([a-zA-Z0-9]((-?[a-zA-Z0-9]{0,62})?)|([a-zA-Z0-9](([a-zA-Z0-9-]{0,61}[a-zA-Z0-9])?)(\.)){1,}([a-zA-Z]){2,63})$",
    "uuid": r"(?i)^[0-9a-f]{8}-?[0-9a-f]{4}-?[0-9a-f]{4}-?[0-9a-f]{4}-?[0-9a-f]{12}$",
    "uuid3": r"(?i)^[0-9a-f]{8}-?[0-9a-f]{4}-?3[0-9a-f]{3}-?[0-9a-f]{4}-?[0-9a-f]{12}$",
    "uuid4": r"(?i)^[0-9a-f]{8}-?[0-9a-f]{4}-?4[0-9a-f]{3}-?[89ab][0-9a-f]{3}-?[0-9a-f]{12}$",
    "uuid5": r"(?i)^[0-9a-f]{8}-?[0-9a-f]{4}-?5[0-9a-f]{3}-?[89ab][0-9a-f]{3}-?[0-9a-f]{12}$",
    "isbn10": r"^(?:[0-9]{9}X|[0-9]{10})$",
    "isbn13": r"^(?:[0-9]{13})$",
    "isbn": r"^(?:[0-9]{9}X|[0-9]{10}|[0-9]{13})$",
    "creditcard": r"^(?:4[0-9]{12}(?:[0-9]{3})?|5[1-5][0-9]{14}|6(?:011|5[0-9][0-9])[0-9]{12}|3[47][0-9]{13}|3(?:0[0-5]|[68][0-9])[0-9]{11}|(?:2131|1800|35\d{3})\d{11})$",
    "ssn": r"^\d{3}[- ]?\d{2}[- ]?\d{4}$",
    "hexcolor": r"^#?([0-9a-fA-F]{3}|[0-9a-fA-F]{6})$",
    "rgbcolor": r"^rgb\(\s*(0|[1-9]\d?|1\d\d?|2[0-4]\d|25[0-5])\s*,\s*(0|[1-9]\d?|1\d\d?|2[0-4]\d|25[0-5])\s*,\s*(0|[1-9]\d?|1\d\d?|2[0-4]\d|25[0-5])\s*\)$",
    "datetime": r"^\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}:\d{2}(\.\d+)?([Zz]|[+-]\d{2}:?\d{2})?$",
    "duration": r"^(([+-]?\d+(\.\d+)?\s*(ns|us|µs|ms|s|m|h|d|w)\s*)+|[+-]?\d+(\.\d+)?\s*(nanoseconds?|nanos?|microseconds?|micros?|milliseconds?|millis?|seconds?|secs?|minutes?|mins?|hours?|days?|weeks?)\s*)$",
}


def _valid_format(name: str, text: str) -> bool:
    if name in ("password", ""):
        return True
    if name == "byte":
        try:
            base64.b64decode(text, validate=True)
        except (binascii.Error, ValueError):
            return False
        return True
    if name == "date":
        try:
            date.fromisoformat(text)
        except ValueError:
            return False
        return bool(re.fullmatch(r"\d{4}-\d{2}-\d{2}", text))
    if name in ("ipv4", "ipv6", "cidr"):
        try:
            parsed = ipaddress.ip_network(text, strict=False) if name == "cidr" else ipaddress.ip_address(text)
        except ValueError:
            return False
        return name == "cidr" or parsed.version == int(name[-1])
    if name == "mac":
        return bool(
            re.fullmatch(r"([0-9A-Fa-f]{2}[:-]){5,19}[0-9A-Fa-f]{2}|([0-9A-Fa-f]{4}\.){2,9}[0-9A-Fa-f]{4}", text)
        )
    if name == "uri":  # net/url.ParseRequestURI: an absolute URI or an absolute path
        return bool(re.match(r"^([a-zA-Z][a-zA-Z0-9+.-]*:|/)", text)) and " " not in text
    pattern = _FORMAT_PATTERNS.get(name)
    return pattern is None or _pattern(pattern).search(text) is not None


@cache
def _pattern(expression: str) -> re.Pattern[str]:
    return re.compile(expression)


def _bound_text(bound: float, value: Any) -> str:
    """kube-openapi prints a bound as the value's Go type: an int64 for integers, a float64 otherwise."""
    return str(int(bound)) if isinstance(value, int) else go_float(float(bound))


def _json_kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    return "array" if isinstance(value, list) else "object"


def _schema_types(schema: Schema) -> list[str]:
    if schema.get("x-kubernetes-int-or-string"):
        return ["integer", "string"]
    return [schema["type"]] if schema.get("type") else []


def _type_matches(types: list[str], value: Any) -> bool:
    kind = _json_kind(value)
    if kind in types:
        return True
    if kind == "integer" and "number" in types:
        return True
    return kind == "number" and "integer" in types and float(value).is_integer()


def _same(a: Any, b: Any) -> bool:
    """JSON equality (Go's DeepEqual of unstructured values): true is not 1."""
    if type(a) is not type(b) and not (
        isinstance(a, int | float)
        and isinstance(b, int | float)
        and not isinstance(a, bool)
        and not isinstance(b, bool)
    ):
        return False
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    return bool(a == b)


class _SchemaCheck:
    """kube-openapi's SchemaValidator over one object, with apiextensions' translation of its errors."""

    def __init__(self) -> None:
        self.errors: list[FieldError] = []

    def node(self, schema: Schema, value: Any, path: str, old: Any) -> None:
        if old is not _MISSING and _same(value, old):
            return  # ratcheting: an unchanged value is not held to the schema again
        name = path or "."
        types = _schema_types(schema)
        if value is None:
            if types and not schema.get("nullable"):
                self._type_error(path, name, ",".join(types), "null")
            self._enum(schema, value, path, name)
            return
        if types and not _type_matches(types, value):
            self._type_error(path, name, ",".join(types), _json_kind(value))
        self._value_validations(schema, value, path, name)
        if isinstance(value, str):
            self._string(schema, value, path, name)
        elif isinstance(value, int | float) and not isinstance(value, bool):
            self._number(schema, value, path, name)
        elif isinstance(value, list):
            self._array(schema, value, path, name, old)
        self._enum(schema, value, path, name)
        if isinstance(value, dict):
            self._object(schema, value, path, name, old)

    def _type_error(self, path: str, name: str, expected: str, actual: str) -> None:
        detail = f"{name} in body must be of type {expected}: {meta.go_quote(actual)}"
        self.errors.append(meta.type_invalid(path, actual, detail))

    def _value_validations(self, schema: Schema, value: Any, path: str, name: str) -> None:
        """allOf/anyOf/oneOf/not: the value validations a structural schema may nest."""
        for branch in schema.get("allOf") or ():
            self.node(branch, value, path, _MISSING)
        passing = [_passes(branch, value) for branch in schema.get("anyOf") or ()]
        if passing and not any(passing):
            self.errors.append(invalid(meta.NIL_PATH, "", f'"{name}" must validate at least one schema (anyOf)'))
        passing = [_passes(branch, value) for branch in schema.get("oneOf") or ()]
        if passing and passing.count(True) != 1:
            self.errors.append(invalid(meta.NIL_PATH, "", f'"{name}" must validate one and only one schema (oneOf)'))
        if "not" in schema and _passes(schema["not"], value):
            self.errors.append(invalid(meta.NIL_PATH, "", f'"{name}" must not validate the schema (not)'))

    def _string(self, schema: Schema, value: str, path: str, name: str) -> None:
        if "maxLength" in schema and len(value) > schema["maxLength"]:
            self.errors.append(meta.too_long_max_length(path, schema["maxLength"]))
        if "minLength" in schema and len(value) < schema["minLength"]:
            detail = f"{name} in body should be at least {schema['minLength']} chars long"
            self.errors.append(invalid(path, value, detail))
        if "pattern" in schema and not _pattern(schema["pattern"]).search(value):
            self.errors.append(invalid(path, value, f"{name} in body should match '{schema['pattern']}'"))
        format_name = str(schema.get("format") or "").replace("-", "")
        if "string" in _schema_types(schema) and not _valid_format(format_name, value):
            detail = f"{name} in body must be of type {schema['format']}: {meta.go_quote(value)}"
            self.errors.append(meta.type_invalid(path, value, detail))

    def _number(self, schema: Schema, value: float, path: str, name: str) -> None:
        if "multipleOf" in schema and (value / schema["multipleOf"]) % 1:
            detail = f"{name} in body should be a multiple of {_bound_text(schema['multipleOf'], value)}"
            self.errors.append(invalid(path, value, detail))
        if "maximum" in schema:
            bound = int(schema["maximum"]) if isinstance(value, int) else schema["maximum"]
            exclusive = schema.get("exclusiveMaximum") is True
            if value > bound or (exclusive and value == bound):
                relation = "less than" if exclusive else "less than or equal to"
                detail = f"{name} in body should be {relation} {_bound_text(schema['maximum'], value)}"
                self.errors.append(invalid(path, value, detail))
        if "minimum" in schema:
            bound = int(schema["minimum"]) if isinstance(value, int) else schema["minimum"]
            exclusive = schema.get("exclusiveMinimum") is True
            if value < bound or (exclusive and value == bound):
                relation = "greater than" if exclusive else "greater than or equal to"
                detail = f"{name} in body should be {relation} {_bound_text(schema['minimum'], value)}"
                self.errors.append(invalid(path, value, detail))

    def _array(self, schema: Schema, value: list[Any], path: str, name: str, old: Any) -> None:
        items = schema.get("items")
        if isinstance(items, Mapping):
            olds = _correlated_items(schema, value, old)
            for i, item in enumerate(value):
                self.node(items, item, index(path, i), olds[i])
        if "minItems" in schema and len(value) < schema["minItems"]:
            detail = f"{name} in body should have at least {schema['minItems']} items"
            self.errors.append(invalid(path, len(value), detail))
        if "maxItems" in schema and len(value) > schema["maxItems"]:
            self.errors.append(meta.too_many(path, len(value), schema["maxItems"]))

    def _enum(self, schema: Schema, value: Any, path: str, name: str) -> None:
        allowed = schema.get("enum")
        if allowed and not any(_same(value, option) for option in allowed):
            shown = [option if isinstance(option, str) else meta.json_text(option) for option in allowed]
            self.errors.append(meta.not_supported(path, value, shown))

    def _object(self, schema: Schema, value: Obj, path: str, name: str, old: Any) -> None:
        if "minProperties" in schema and len(value) < schema["minProperties"]:
            detail = f"{name} in body should have at least {schema['minProperties']} properties"
            self.errors.append(invalid(path, len(value), detail))
            return
        if "maxProperties" in schema and len(value) > schema["maxProperties"]:
            self.errors.append(meta.too_many(path, len(value), schema["maxProperties"]))
            return
        properties = schema.get("properties") or {}
        extra = schema.get("additionalProperties")
        old_map = old if isinstance(old, dict) and schema.get("x-kubernetes-map-type") != "atomic" else {}
        for prop, sub in properties.items():
            if prop in value:
                self.node(sub, value[prop], child(path, prop), old_map.get(prop, _MISSING))
        if isinstance(extra, Mapping):
            for prop, item in value.items():
                if prop not in properties:
                    self.node(extra, item, child(path, prop), old_map.get(prop, _MISSING))
        for prop in schema.get("required") or ():
            if prop not in value:
                self.errors.append(required(child(path, prop)))


def _passes(schema: Schema, value: Any) -> bool:
    check = _SchemaCheck()
    check.node(schema, value, "", _MISSING)
    return not check.errors


def _map_key(item: Any, keys: Sequence[str]) -> tuple[Any, ...] | None:
    if not isinstance(item, dict):
        return None
    return tuple(meta.json_text(item.get(name)) for name in keys)


def _correlated_items(schema: Schema, value: list[Any], old: Any) -> list[Any]:
    """The old item each new item is compared with: map lists by their keys, sets by value, else none."""
    if not isinstance(old, list):
        return [_MISSING] * len(value)
    list_type = schema.get("x-kubernetes-list-type")
    if list_type == "map":
        keys = schema.get("x-kubernetes-list-map-keys") or []
        by_key = {_map_key(item, keys): item for item in old}
        return [by_key.get(_map_key(item, keys), _MISSING) for item in value]
    if list_type == "set":
        return [next((o for o in old if _same(o, item)), _MISSING) for item in value]
    return [_MISSING] * len(value)


# ===================================================================== list types, embedded objects


def _walk(schema: Schema, value: Any, path: str) -> Iterator[tuple[Schema, Any, str]]:
    """Every (schema, value, path) pair of the object, for the checks that look at a whole node."""
    yield schema, value, path
    if isinstance(value, dict):
        properties = schema.get("properties") or {}
        extra = schema.get("additionalProperties")
        for name, item in value.items():
            sub = properties.get(name) or (extra if isinstance(extra, Mapping) else None)
            if sub is not None:
                yield from _walk(sub, item, child(path, name))
    elif isinstance(value, list) and isinstance(schema.get("items"), Mapping):
        for i, item in enumerate(value):
            yield from _walk(schema["items"], item, index(path, i))


def list_type_errors(schema: Schema, obj: Any) -> list[FieldError]:
    """structurallisttype.ValidateListSetsAndMaps: a set has no duplicate, a map list no duplicate key."""
    errors: list[FieldError] = []
    for node, value, path in _walk(schema, obj, ""):
        if not isinstance(value, list):
            continue
        list_type = node.get("x-kubernetes-list-type")
        if list_type == "set":
            seen: list[Any] = []
            for i, item in enumerate(value):
                if any(_same(item, other) for other in seen):
                    errors.append(meta.duplicate(index(path, i), item))
                seen.append(item)
        elif list_type == "map":
            keys = node.get("x-kubernetes-list-map-keys") or []
            found: set[tuple[Any, ...] | None] = set()
            for i, item in enumerate(value):
                item_key = _map_key(item, keys)
                if item_key in found:
                    shown = {name: item.get(name) for name in keys if isinstance(item, dict) and name in item}
                    errors.append(meta.duplicate(index(path, i), shown))
                found.add(item_key)
    return errors


def embedded_resource_errors(schema: Schema, obj: Any) -> list[FieldError]:
    """schemaobjectmeta.Validate: an x-kubernetes-embedded-resource object names its apiVersion and kind."""
    errors: list[FieldError] = []
    for node, value, path in _walk(schema, obj, ""):
        if not node.get("x-kubernetes-embedded-resource") or not isinstance(value, dict):
            continue
        for name in ("apiVersion", "kind"):
            if name not in value:
                errors.append(required(child(path, name), "must not be empty"))
            elif not isinstance(value[name], str):
                errors.append(invalid(child(path, name), value[name], "must be a string"))
            elif not value[name]:
                errors.append(invalid(child(path, name), "", "must not be empty"))
        kind = value.get("kind")
        if isinstance(kind, str) and kind and (messages := meta.is_dns1035_label(kind.lower())):
            detail = "may have mixed case, but should otherwise match: " + ",".join(messages)
            errors.append(invalid(child(path, "kind"), kind, detail))
    return errors


# ============================================================================================ CEL
class _Optional:
    """``optional.of(oldSelf)`` / ``optional.none()`` for rules with optionalOldSelf."""

    def __init__(self, value: Any) -> None:
        self.value = value


def _has_value(optional: _Optional) -> celtypes.BoolType:
    return celtypes.BoolType(optional.value is not None)


def _value(optional: _Optional) -> Any:
    if optional.value is None:
        raise ValueError("optional.none() dereference")
    return optional.value


def _or_value(optional: _Optional, fallback: Any) -> Any:
    return fallback if optional.value is None else optional.value


# The optional type's methods, for cel-python, which has no optional type of its own.
_OPTIONAL_FUNCTIONS: dict[str, Callable[..., Any]] = {"hasValue": _has_value, "value": _value, "orValue": _or_value}


# Kubernetes' CEL quantity library (k8s.io/apiserver/pkg/cel/library/quantity.go), on meta.Quantity.
def _quantity(text: Any) -> meta.Quantity:
    try:
        return meta.Quantity.parse(str(text))
    except meta.QuantityError as error:
        raise ValueError(f"invalid quantity: {error}") from None


def _is_quantity(text: Any) -> celtypes.BoolType:
    try:
        meta.Quantity.parse(str(text))
    except meta.QuantityError:
        return celtypes.BoolType(False)
    return celtypes.BoolType(True)


def _compare(left: meta.Quantity, right: meta.Quantity) -> int:
    return (left.value > right.value) - (left.value < right.value)


QUANTITY_FUNCTIONS: dict[str, Callable[..., Any]] = {
    "quantity": _quantity,
    "isQuantity": _is_quantity,
    "compareTo": lambda left, right: celtypes.IntType(_compare(left, right)),
    "isLessThan": lambda left, right: celtypes.BoolType(_compare(left, right) < 0),
    "isGreaterThan": lambda left, right: celtypes.BoolType(_compare(left, right) > 0),
    "sign": lambda quantity: celtypes.IntType((quantity.value > 0) - (quantity.value < 0)),
    "asApproximateFloat": lambda quantity: celtypes.DoubleType(float(quantity.value)),
}


@cache
def _environment() -> celpy.Environment:
    return celpy.Environment()


@cache
def _program(rule: str) -> celpy.Runner:
    environment = _environment()
    return environment.program(environment.compile(rule), functions={**_OPTIONAL_FUNCTIONS, **QUANTITY_FUNCTIONS})


def is_transition_rule(rule: str) -> bool:
    return re.search(r"\boldSelf\b", rule) is not None


_SELF_PATH = re.compile(r"\bself((?:\.[A-Za-z_][A-Za-z0-9_]*)*)(\s*\()?")


@cache
def paths_read_from_self(rule: str) -> tuple[tuple[str, ...], ...] | None:
    """The field paths a rule reads ``self`` through, when it reads it only through fields
    (``self.a.b``, ``has(self.a)``, ``self.a.all(...)``, ``self.a[0]``); None when it uses ``self`` whole
    (``self == oldSelf``, ``self.all(...)``, ``size(self)``, or ``self`` in a string literal)."""
    paths: set[tuple[str, ...]] = set()
    for found in _SELF_PATH.finditer(rule):
        segments = found.group(1).split(".")[1:]
        if found.group(2) and segments:
            segments = segments[:-1]  # a method or macro called on the value before it
        if not segments:
            return None
        paths.add(tuple(segments))
    return tuple(sorted(paths))


def _read_along(value: Any, path: tuple[str, ...]) -> list[Any]:
    """How far ``path`` leads into ``value`` and what is there (the container where it stops short):
    everything a rule can learn of ``value`` through that path."""
    for depth, segment in enumerate(path):
        if not isinstance(value, dict) or segment not in value:
            return [depth, value]
        value = value[segment]
    return [len(path), value]


def typed_like_the_server(schema: Schema, value: Any) -> Any:
    """CEL sees a ``number`` field as a double even when JSON has ``0``; CEL has no int + double."""
    if schema.get("type") == "number" and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, dict):
        properties = schema.get("properties") or {}
        extra = schema.get("additionalProperties")
        fallback = extra if isinstance(extra, Mapping) else {}
        return {name: typed_like_the_server(properties.get(name) or fallback, item) for name, item in value.items()}
    if isinstance(value, list) and isinstance(schema.get("items"), Mapping):
        return [typed_like_the_server(schema["items"], item) for item in value]
    return value


def _cel_error_text(error: CELEvalError) -> str:
    """cel-go's wording of the common runtime errors."""
    message, cause = (*error.args, None, None)[:2]
    if cause is KeyError:
        found = re.search(r"'([^']*)'", str(message))
        return f"no such key: {found.group(1) if found else message}"
    if cause is ZeroDivisionError:
        return "division by zero"
    if cause is TypeError:
        return "no such overload"
    return str(message)


def _field_path(rule_field_path: str) -> str:
    """A rule's ``fieldPath`` (``.a.b``, ``['a.b']``) as a field path suffix (``a.b``)."""
    parts = re.findall(r"\.([^.\[\]]+)|\['((?:[^'\\]|\\.)*)'\]", rule_field_path)
    return ".".join(dotted or quoted for dotted, quoted in parts)


@dataclass
class _CelOutcome:
    errors: list[FieldError] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def _rule_error(rule: Mapping[str, Any], path: str, node_type: str, detail: str) -> FieldError:
    reason = rule.get("reason") or "FieldValueInvalid"
    if reason == "FieldValueForbidden":
        return meta.forbidden(path, detail)
    if reason == "FieldValueRequired":
        return required(path, detail)
    if reason == "FieldValueDuplicate":
        return meta.duplicate(path, node_type)
    return invalid(path, node_type, detail)


def _rule_text(rule: Mapping[str, Any]) -> str:
    return str(rule.get("message") or "").strip() or str(rule["rule"]).strip()


def _message(rule: Mapping[str, Any], activation: Mapping[str, Any]) -> str:
    """messageExpression's result, or else the message, or else ``failed rule: <rule>``."""
    if expression := rule.get("messageExpression"):
        try:
            text = str(_program(str(expression)).evaluate(dict(activation))).strip()
        except CELEvalError:
            text = ""
        if text and "\n" not in text:
            return text
    message = str(rule.get("message") or "").strip()
    return message or f"failed rule: {str(rule['rule']).strip()}"


# A rule's outcome is a pure function of the rule and the values it reads, so it is kept: kube-apiserver
# compiles CEL to native code (microseconds a rule), celpy interprets it (about a millisecond), and a
# FineTuneJob's 20-odd rules ran again on every status patch, the unchanged spec each time, which made
# this double, not the operator, the bottleneck of bench/operator.py. Same verdicts, same messages.
_OUTCOMES: dict[tuple[str, bool, str, str], Any] = {}
OUTCOMES_KEPT = 100_000


@dataclass(frozen=True)
class _Raised:
    """A rule whose evaluation raised (kept apart from a rule that evaluated to an error value)."""

    error: CELEvalError


def _json_text(value: Any) -> str | None:
    """The value as canonical JSON; None when JSON cannot say it exactly (then it is evaluated every time)."""
    if value is _MISSING:
        return ""
    try:
        return json.dumps(value, sort_keys=True)
    except (TypeError, ValueError):
        return None


def _remember_outcome(memo_key: tuple[str, bool, str, str], outcome: Any) -> None:
    if len(_OUTCOMES) >= OUTCOMES_KEPT:
        _OUTCOMES.clear()
    _OUTCOMES[memo_key] = outcome


# The outcome of a whole top-level property (a FineTuneJob's spec) is kept too, by its schema, value, old
# value and path: the walk down an unchanged spec cost more than the rules it found answered above, on
# every status patch. Bounded like the rules' outcomes; a schema replaced by a CRD update never matches
# (the entry holds the schema it was computed with, compared by identity).
_PROPERTY_OUTCOMES: dict[tuple[str, bool, str, str], tuple[Schema, _CelOutcome]] = {}
PROPERTY_OUTCOMES_KEPT = 10_000


class _CelCheck:
    """The CEL Validator: rules top-down, transition rules only where an old value correlates."""

    def __init__(self) -> None:
        self.outcome = _CelOutcome()

    def node(self, schema: Schema, value: Any, path: str, old: Any, unchanged: bool) -> None:
        if value is None:
            return
        unchanged = unchanged or (old is not _MISSING and _same(value, old))
        rules = schema.get("x-kubernetes-validations") or ()
        if rules:
            self._rules(schema, rules, value, path, old, unchanged)
        if isinstance(value, dict):
            properties = schema.get("properties") or {}
            extra = schema.get("additionalProperties")
            granular = isinstance(old, dict) and schema.get("x-kubernetes-map-type") != "atomic"
            for name, item in value.items():
                old_item = old.get(name, _MISSING) if granular else _MISSING
                if name in properties and not path:
                    self._top_level_property(properties[name], item, name, old_item, unchanged)
                elif name in properties:
                    self.node(properties[name], item, child(path, name), old_item, unchanged)
                elif isinstance(extra, Mapping):
                    self.node(extra, item, key(path, name), old_item, unchanged)
        elif isinstance(value, list) and isinstance(schema.get("items"), Mapping):
            olds = _correlated_items(schema, value, old) if schema.get("x-kubernetes-list-type") == "map" else None
            for i, item in enumerate(value):
                self.node(schema["items"], item, index(path, i), olds[i] if olds else _MISSING, unchanged)

    def _top_level_property(self, schema: Schema, value: Any, path: str, old: Any, unchanged: bool) -> None:
        value_text, old_text = _json_text(value), _json_text(old)
        if value_text is None or old_text is None:
            self.node(schema, value, path, old, unchanged)
            return
        memo_key = (path, unchanged, value_text, old_text)
        kept = _PROPERTY_OUTCOMES.get(memo_key)
        if kept is None or kept[0] is not schema:
            part = _CelCheck()
            part.node(schema, value, path, old, unchanged)
            if len(_PROPERTY_OUTCOMES) >= PROPERTY_OUTCOMES_KEPT:
                _PROPERTY_OUTCOMES.clear()
            kept = _PROPERTY_OUTCOMES[memo_key] = (schema, part.outcome)
        self.outcome.errors.extend(kept[1].errors)
        self.outcome.warnings.extend(kept[1].warnings)

    def _rules(
        self, schema: Schema, rules: Sequence[Mapping[str, Any]], value: Any, path: str, old: Any, unchanged: bool
    ) -> None:
        node_type = str(schema.get("type") or "")  # the bad value the error shows is the node's type
        typed_self = typed_like_the_server(schema, value)
        typed_old = typed_like_the_server(schema, old) if old is not _MISSING else _MISSING
        converted: dict[str, Any] = {}
        self_text = _json_text(typed_self)
        old_text = _json_text(typed_old) if any(is_transition_rule(str(r["rule"])) for r in rules) else ""

        def activation_of(transition: bool, optional: bool) -> dict[str, Any]:
            if not converted:
                converted["self"] = celpy.json_to_cel(typed_self)
                converted["old"] = celpy.json_to_cel(typed_old) if typed_old is not _MISSING else None
            activation: dict[str, Any] = {"self": converted["self"]}
            if transition:
                activation["oldSelf"] = _Optional(converted["old"]) if optional else converted["old"]
            return activation

        for rule in rules:
            text = str(rule["rule"])
            transition = is_transition_rule(text)
            optional = rule.get("optionalOldSelf") is True
            if transition and typed_old is _MISSING and not optional:
                continue  # a transition rule needs an old value to compare with
            at = path
            compared = old_text if transition else ""
            read = paths_read_from_self(text) if isinstance(typed_self, dict) else None
            # A rule that reads self only through some fields is keyed by those: a FineTuneJob's spec
            # rules each read a few fields, while every job's spec differs (its dataset, its output).
            seen = self_text if read is None else _json_text([_read_along(typed_self, p) for p in read])
            memo_key = (text, optional, seen, compared) if seen is not None and compared is not None else None
            holds = _OUTCOMES.get(memo_key) if memo_key is not None else None
            if holds is None:
                try:
                    holds = _program(text).evaluate(activation_of(transition, optional))
                except CELEvalError as error:
                    holds = _Raised(error)
                if memo_key is not None:
                    _remember_outcome(memo_key, holds)
            if isinstance(holds, _Raised):
                detail = f"{_cel_error_text(holds.error)} evaluating rule: {_rule_text(rule)}"
                self._report(invalid(at, node_type, detail), transition, unchanged)
                continue
            if isinstance(holds, celtypes.BoolType) and bool(holds):
                continue
            activation = activation_of(transition, optional)
            if rule.get("fieldPath"):
                at = child(path, _field_path(str(rule["fieldPath"])))
            self._report(_rule_error(rule, at, node_type, _message(rule, activation)), transition, unchanged)

    def _report(self, error: FieldError, transition: bool, unchanged: bool) -> None:
        if unchanged and not transition:  # ratcheted: a warning, the write goes through
            self.outcome.warnings.append(f"{error.field}: {error.message}")
        else:
            self.outcome.errors.append(error)


def cel_outcome(schema: Schema, obj: Any, old: Any) -> _CelOutcome:
    check = _CelCheck()
    check.node(schema, obj, "", _MISSING if old is None else old, unchanged=False)
    return check.outcome


# ======================================================================================= validate
_BLOCKING = frozenset(
    {"FieldValueNotSupported", "FieldValueRequired", "FieldValueTooLong", "FieldValueTooMany", "FieldValueTypeInvalid"}
)
_CEL_SKIPPED = invalid(
    meta.NIL_PATH,
    None,
    "some validation rules were not checked because the object was invalid; correct the existing errors to "
    "complete validation",
)


@dataclass
class Validation:
    errors: list[FieldError]
    warnings: list[str]


def schema_errors(schema: Schema, obj: Any, old: Any = None) -> list[FieldError]:
    check = _SchemaCheck()
    check.node(schema, obj, "", _MISSING if old is None else old)
    return check.errors


def validate(rtype: ResourceType, obj: Obj, old: Obj | None) -> Validation:
    """customResourceStrategy.Validate, or ValidateUpdate when there is an ``old`` object (the status
    strategy checks the same: the whole object)."""
    metadata = obj["metadata"]
    generic = meta.validate_object_meta(metadata, namespaced=rtype.namespaced, name_rule=meta.dns_subdomain_name)
    errors = generic if old is None else generic + meta.validate_object_meta_update(metadata, old["metadata"])
    warnings = meta.finalizer_warnings(metadata, old["metadata"] if old else None)
    schema = rtype.schema
    if schema is None:
        return Validation(errors, warnings)
    errors += schema_errors(schema, obj, old)
    errors += embedded_resource_errors(schema, obj)
    if old is None or not list_type_errors(schema, old):
        errors += list_type_errors(schema, obj)
    if any(error.reason in _BLOCKING for error in errors):
        if has_rules(schema):
            errors.append(_CEL_SKIPPED)
        return Validation(errors, warnings)
    cel = cel_outcome(schema, obj, old)
    return Validation(errors + cel.errors, warnings + cel.warnings)


def has_rules(schema: Schema) -> bool:
    """Whether any node declares x-kubernetes-validations (else there is no CEL validator to skip)."""
    if schema.get("x-kubernetes-validations"):
        return True
    nested = [*(schema.get("properties") or {}).values(), schema.get("items"), schema.get("additionalProperties")]
    return any(has_rules(sub) for sub in nested if isinstance(sub, Mapping))
