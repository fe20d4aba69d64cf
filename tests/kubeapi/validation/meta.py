"""Object metadata and the syntax rules every kind shares, worded as kube-apiserver words them.

Mirrors, for Kubernetes 1.33:
- k8s.io/apimachinery/pkg/util/validation (names, qualified names, label values, config keys, ports,
  environment variable names) and .../validation/field (how a field error renders);
- k8s.io/apimachinery/pkg/api/validation/objectmeta.go (ObjectMeta on create and update, owner
  references, finalizers, annotation size) and .../path (path-segment names);
- k8s.io/apimachinery/pkg/api/resource (the quantity grammar and its canonical form, which is what a
  client reads back: ``0.5`` is stored as ``500m``, ``1024Mi`` as ``1Gi``).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from fractions import Fraction
from typing import Any

from tests.kubeapi.model import FieldError

# ------------------------------------------------------------------------------------------ paths


def child(path: str, name: str) -> str:
    return f"{path}.{name}" if path else name


def index(path: str, position: int) -> str:
    return f"{path}[{position}]"


def key(path: str, name: str) -> str:
    return f"{path}[{name}]"


# How field.Path renders an empty path (``field.NewPath("")``) and a nil one.
EMPTY_PATH = "[]"
NIL_PATH = "<nil>"

# ------------------------------------------------------------------------------- rendering values


class GoText(str):
    """A bad value already rendered as Go prints it (a ``fmt.Stringer`` or a ``%#v`` struct)."""


class _Omit:
    """``field.OmitValueType``: the error prints no value."""


OMIT = _Omit()

_GO_ESCAPES = {"\a": r"\a", "\b": r"\b", "\f": r"\f", "\n": r"\n", "\r": r"\r", "\t": r"\t", "\v": r"\v"}


def go_quote(text: str) -> str:
    """``strconv.Quote``: printable characters as they are, the rest escaped."""
    out = ['"']
    for char in text:
        if char in ('"', "\\"):
            out.append("\\" + char)
        elif char in _GO_ESCAPES:
            out.append(_GO_ESCAPES[char])
        elif char.isprintable():
            out.append(char)
        elif ord(char) < 0x80:
            out.append(f"\\x{ord(char):02x}")
        elif ord(char) <= 0xFFFF:
            out.append(f"\\u{ord(char):04x}")
        else:
            out.append(f"\\U{ord(char):08x}")
    out.append('"')
    return "".join(out)


def go_float(number: float) -> str:
    """Go's ``%v`` of a float64: the shortest digits, in exponent form below 1e-4 and from 1e6."""
    if math.isnan(number):
        return "NaN"
    if math.isinf(number):
        return "+Inf" if number > 0 else "-Inf"
    if number == 0:
        return "0"
    sign, digits, exponent = Decimal(repr(number)).normalize().as_tuple()
    assert isinstance(exponent, int)
    scientific = len(digits) - 1 + exponent
    text = "".join(map(str, digits))
    if scientific < -4 or scientific >= 6:
        mantissa = text[0] + ("." + text[1:] if len(text) > 1 else "")
        return f"{'-' if sign else ''}{mantissa}e{'+' if scientific >= 0 else '-'}{abs(scientific):02d}"
    return format(Decimal(repr(number)).normalize(), "f")


def go_sharp(value: Any) -> str:
    """Go's ``%#v`` of an unstructured JSON value (``map[string]interface {}{...}``)."""
    if value is None:
        return "interface {}(nil)"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return go_float(value)
    if isinstance(value, str):
        return go_quote(value)
    if isinstance(value, Mapping):
        items = ", ".join(f"{go_quote(k)}:{go_sharp(value[k])}" for k in sorted(value))
        return f"map[string]interface {{}}{{{items}}}"
    items = ", ".join(go_sharp(item) for item in value)
    return f"[]interface {{}}{{{items}}}"


def go_struct(type_name: str, fields: Sequence[tuple[str, Any]]) -> GoText:
    """``%#v`` of a flat Go struct, e.g. ``core.Toleration{Key:"a", ...}``."""
    rendered = []
    for name, value in fields:
        if isinstance(value, GoText):
            rendered.append(f"{name}:{value}")
        elif isinstance(value, str):
            rendered.append(f"{name}:{go_quote(value)}")
        else:
            rendered.append(f"{name}:{go_sharp(value)}")
    return GoText(f"{type_name}{{{', '.join(rendered)}}}")


def render_value(value: Any) -> str:
    """How ``field.Error.ErrorBody`` prints a bad value: strings quoted, nil as "null"."""
    if isinstance(value, GoText):
        return str(value)
    if value is None:
        return '"null"'
    return go_sharp(value)


# --------------------------------------------------------------------------------- field errors


def _with_detail(body: str, detail: str) -> str:
    return f"{body}: {detail}" if detail else body


def invalid(path: str, value: Any, detail: str) -> FieldError:
    if value is OMIT:
        return FieldError(path, "FieldValueInvalid", _with_detail("Invalid value", detail))
    return FieldError(path, "FieldValueInvalid", _with_detail(f"Invalid value: {render_value(value)}", detail))


def type_invalid(path: str, value: Any, detail: str) -> FieldError:
    return FieldError(path, "FieldValueTypeInvalid", _with_detail(f"Invalid value: {render_value(value)}", detail))


def required(path: str, detail: str = "") -> FieldError:
    return FieldError(path, "FieldValueRequired", _with_detail("Required value", detail))


def forbidden(path: str, detail: str) -> FieldError:
    return FieldError(path, "FieldValueForbidden", _with_detail("Forbidden", detail))


def duplicate(path: str, value: Any) -> FieldError:
    return FieldError(path, "FieldValueDuplicate", f"Duplicate value: {render_value(value)}")


def not_found(path: str, value: Any) -> FieldError:
    return FieldError(path, "FieldValueNotFound", f"Not found: {render_value(value)}")


def not_supported(path: str, value: Any, supported: Sequence[str]) -> FieldError:
    detail = "supported values: " + ", ".join(go_quote(v) for v in supported) if supported else ""
    return FieldError(path, "FieldValueNotSupported", _with_detail(f"Unsupported value: {render_value(value)}", detail))


def too_long(path: str, max_bytes: int) -> FieldError:
    """``field.TooLong``: the value is never printed."""
    return FieldError(path, "FieldValueTooLong", f"Too long: must have at most {max_bytes} bytes")


def too_long_max_length(path: str, max_length: int) -> FieldError:
    return FieldError(path, "FieldValueTooLong", f"Too long: may not be longer than {max_length}")


def too_many(path: str, actual: int, max_items: int) -> FieldError:
    return FieldError(path, "FieldValueTooMany", f"Too many: {actual}: must have at most {max_items} items")


def immutable(path: str, new: Any, old: Any, shown: Any = None) -> list[FieldError]:
    """``ValidateImmutableField``: ``shown`` is the new value as the error prints it (default: itself)."""
    if new == old:
        return []
    return [invalid(path, new if shown is None else shown, "field is immutable")]


def nonnegative(value: int, path: str) -> list[FieldError]:
    return [invalid(path, value, "must be greater than or equal to 0")] if value < 0 else []


# ------------------------------------------------------------------------------- syntax checks
EMPTY_ERROR = "must be non-empty"


def max_len_error(length: int) -> str:
    return f"must be no more than {length} characters"


def regex_error(message: str, pattern: str, *examples: str) -> str:
    if not examples:
        return f"{message} (regex used for validation is '{pattern}')"
    shown = " or ".join(f"'{example}', " for example in examples)
    return f"{message} (e.g. {shown}regex used for validation is '{pattern}')"


def inclusive_range_error(low: int, high: int) -> str:
    return f"must be between {low} and {high}, inclusive"


DNS1123_LABEL_FMT = "[a-z0-9]([-a-z0-9]*[a-z0-9])?"
DNS1123_SUBDOMAIN_FMT = DNS1123_LABEL_FMT + r"(\." + DNS1123_LABEL_FMT + ")*"
DNS1035_LABEL_FMT = "[a-z]([-a-z0-9]*[a-z0-9])?"
QUALIFIED_NAME_FMT = "([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]"
LABEL_VALUE_FMT = f"({QUALIFIED_NAME_FMT})?"
CONFIG_KEY_FMT = "[-._a-zA-Z0-9]+"

_DNS1123_LABEL = re.compile(f"^{DNS1123_LABEL_FMT}$")
_DNS1123_SUBDOMAIN = re.compile(f"^{DNS1123_SUBDOMAIN_FMT}$")
_DNS1035_LABEL = re.compile(f"^{DNS1035_LABEL_FMT}$")
_QUALIFIED_NAME = re.compile(f"^{QUALIFIED_NAME_FMT}$")
_LABEL_VALUE = re.compile(f"^{LABEL_VALUE_FMT}$")
_CONFIG_KEY = re.compile(f"^{CONFIG_KEY_FMT}$")
_PORT_NAME_CHARSET = re.compile("^[-a-z0-9]+$")
_PORT_NAME_LETTER = re.compile("[a-z]")

_DNS1123_LABEL_MSG = (
    "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start "
    "and end with an alphanumeric character"
)
_DNS1123_SUBDOMAIN_MSG = (
    "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must "
    "start and end with an alphanumeric character"
)
_DNS1035_LABEL_MSG = (
    "a DNS-1035 label must consist of lower case alphanumeric characters or '-', start with an alphabetic "
    "character, and end with an alphanumeric character"
)
_QUALIFIED_NAME_MSG = (
    "must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character"
)
_LABEL_VALUE_MSG = (
    "a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.', and must "
    "start and end with an alphanumeric character"
)
_CONFIG_KEY_MSG = "a valid config key must consist of alphanumeric characters, '-', '_' or '.'"
# Kubernetes 1.33 validates env var names with the RelaxedEnvironmentVariableValidation gate, beta and on by
# default since 1.32 (IsRelaxedEnvVarName): any printable ASCII character except '='.
_RELAXED_ENV_VAR_MSG = (
    "a valid environment variable name must consist only of printable ASCII characters other than '='"
)


def is_dns1123_label(value: str) -> list[str]:
    errors = [max_len_error(63)] if len(value) > 63 else []
    if not _DNS1123_LABEL.match(value):
        if _DNS1123_SUBDOMAIN.match(value):
            errors.append("must not contain dots")  # a valid subdomain of the right length: it has dots
        else:
            errors.append(regex_error(_DNS1123_LABEL_MSG, DNS1123_LABEL_FMT, "my-name", "123-abc"))
    return errors


def is_dns1123_subdomain(value: str) -> list[str]:
    errors = [max_len_error(253)] if len(value) > 253 else []
    if not _DNS1123_SUBDOMAIN.match(value):
        errors.append(regex_error(_DNS1123_SUBDOMAIN_MSG, DNS1123_SUBDOMAIN_FMT, "example.com"))
    return errors


def is_dns1035_label(value: str) -> list[str]:
    errors = [max_len_error(63)] if len(value) > 63 else []
    if not _DNS1035_LABEL.match(value):
        errors.append(regex_error(_DNS1035_LABEL_MSG, DNS1035_LABEL_FMT, "my-name", "abc-123"))
    return errors


def is_qualified_name(value: str) -> list[str]:
    """``IsQualifiedName``: an optional DNS-subdomain prefix and '/', then a name of at most 63 characters."""
    parts = value.split("/")
    errors: list[str] = []
    if len(parts) == 1:
        name = parts[0]
    elif len(parts) == 2:
        prefix, name = parts
        if not prefix:
            errors.append("prefix part " + EMPTY_ERROR)
        else:
            errors += ["prefix part " + message for message in is_dns1123_subdomain(prefix)]
    else:
        return [
            "a qualified name "
            + regex_error(_QUALIFIED_NAME_MSG, QUALIFIED_NAME_FMT, "MyName", "my.name", "123-abc")
            + " with an optional DNS subdomain prefix and '/' (e.g. 'example.com/MyName')"
        ]
    if not name:
        errors.append("name part " + EMPTY_ERROR)
    elif len(name) > 63:
        errors.append("name part " + max_len_error(63))
    if not _QUALIFIED_NAME.match(name):
        errors.append(
            "name part " + regex_error(_QUALIFIED_NAME_MSG, QUALIFIED_NAME_FMT, "MyName", "my.name", "123-abc")
        )
    return errors


def is_valid_label_value(value: str) -> list[str]:
    errors = [max_len_error(63)] if len(value) > 63 else []
    if not _LABEL_VALUE.match(value):
        errors.append(regex_error(_LABEL_VALUE_MSG, LABEL_VALUE_FMT, "MyValue", "my_value", "12345"))
    return errors


def _chdir_prefix(value: str) -> list[str]:
    if value == ".":
        return ["must not be '.'"]
    if value == "..":
        return ["must not be '..'"]
    if value.startswith(".."):
        return ["must not start with '..'"]
    return []


def is_config_map_key(value: str) -> list[str]:
    errors = [max_len_error(253)] if len(value) > 253 else []
    if not _CONFIG_KEY.match(value):
        errors.append(regex_error(_CONFIG_KEY_MSG, CONFIG_KEY_FMT, "key.name", "KEY_NAME", "key-name"))
    return errors + _chdir_prefix(value)


def is_relaxed_env_var_name(value: str) -> list[str]:
    errors = ["environment variable name " + EMPTY_ERROR] if not value else []
    if any(ord(char) > 0x7E or ord(char) < 0x20 or char == "=" for char in value):
        errors.append(_RELAXED_ENV_VAR_MSG)
    return errors


def is_valid_port_name(port: str) -> list[str]:
    """IANA_SVC_NAME: at most 15 characters, lowercase alphanumerics and '-', with at least one letter."""
    errors = [max_len_error(15)] if len(port) > 15 else []
    if not _PORT_NAME_CHARSET.match(port):
        errors.append("must contain only alpha-numeric characters (a-z, 0-9), and hyphens (-)")
    if not _PORT_NAME_LETTER.search(port):
        errors.append("must contain at least one letter (a-z)")
    if "--" in port:
        errors.append("must not contain consecutive hyphens")
    if port and (port[0] == "-" or port[-1] == "-"):
        errors.append("must not begin or end with a hyphen")
    return errors


def is_valid_port_num(port: int) -> list[str]:
    return [] if 1 <= port <= 65535 else [inclusive_range_error(1, 65535)]


# A name rule as ``ValidateNameFunc``: (name, is it a generateName prefix) -> messages.
NameRule = Callable[[str, bool], list[str]]


def _mask_trailing_dash(name: str) -> str:
    """A generateName prefix may end in '-': the random suffix follows it."""
    return name[:-1] + "a" if len(name) > 1 and name.endswith("-") else name


def dns_subdomain_name(name: str, prefix: bool) -> list[str]:
    return is_dns1123_subdomain(_mask_trailing_dash(name) if prefix else name)


def dns_label_name(name: str, prefix: bool) -> list[str]:
    return is_dns1123_label(_mask_trailing_dash(name) if prefix else name)


def dns1035_name(name: str, prefix: bool) -> list[str]:
    return is_dns1035_label(_mask_trailing_dash(name) if prefix else name)


def path_segment_name(name: str, prefix: bool) -> list[str]:
    """``path.ValidatePathSegmentName``: the name is a URL path segment (RBAC kinds, and every kind's floor)."""
    if not prefix and name in (".", ".."):
        return [f"may not be '{name}'"]
    return [f"may not contain '{illegal}'" for illegal in ("/", "%") if illegal in name]


# ------------------------------------------------------------------------------------ quantities
_QUANTITY_REGEX = "^([+-]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)$"
QUANTITY_FORMAT_ERROR = f"quantities must match the regular expression '{_QUANTITY_REGEX}'"
_QUANTITY = re.compile(r"^([+-]?)([0-9]*)(?:\.([0-9]*))?(.*)$")
_BINARY_SUFFIXES = {"Ki": 10, "Mi": 20, "Gi": 30, "Ti": 40, "Pi": 50, "Ei": 60}
_DECIMAL_SUFFIXES = {"n": -9, "u": -6, "m": -3, "": 0, "k": 3, "M": 6, "G": 9, "T": 12, "P": 15, "E": 18}
_DECIMAL_BY_EXPONENT = {exponent: suffix for suffix, exponent in _DECIMAL_SUFFIXES.items()}
_EXPONENT_SUFFIX = re.compile(r"^[eE]([-+]?[0-9]+)$")
_NANO = Fraction(1, 10**9)


class QuantityError(ValueError):
    pass


@dataclass(frozen=True)
class Quantity:
    """A ``resource.Quantity``: an exact value and the notation it was written in."""

    value: Fraction
    notation: str  # "DecimalSI", "BinarySI" or "DecimalExponent"

    @classmethod
    def parse(cls, text: str) -> Quantity:
        match = _QUANTITY.match(text)
        if not text or match is None:
            raise QuantityError(QUANTITY_FORMAT_ERROR)
        sign, whole, fraction, suffix = match.groups()
        if not whole and not fraction:
            raise QuantityError(QUANTITY_FORMAT_ERROR)
        number = Fraction(int(whole or "0")) + (Fraction(int(fraction), 10 ** len(fraction)) if fraction else 0)
        if suffix in _BINARY_SUFFIXES:
            notation, number = "BinarySI", number * 2 ** _BINARY_SUFFIXES[suffix]
        elif suffix in _DECIMAL_SUFFIXES:
            notation, number = "DecimalSI", number * Fraction(10) ** _DECIMAL_SUFFIXES[suffix]
        elif exponent := _EXPONENT_SUFFIX.match(suffix):
            notation, number = "DecimalExponent", number * Fraction(10) ** int(exponent.group(1))
        elif re.match(r"^[eEinumkKMGTP]*[-+]?[0-9]*$", suffix):
            raise QuantityError("unable to parse quantity's suffix")
        else:
            raise QuantityError(QUANTITY_FORMAT_ERROR)
        if sign == "-":
            number = -number
        # Quantities keep at most nanounits: anything finer rounds up, away from zero.
        if (number / _NANO).denominator != 1:
            nanos = math.ceil(abs(number) / _NANO)
            number = Fraction(nanos if number > 0 else -nanos) * _NANO
        return cls(number, notation)

    def __str__(self) -> str:
        """``Quantity.String``: the canonical form the server stores."""
        if self.value == 0:
            return "0"
        sign = "-" if self.value < 0 else ""
        magnitude = abs(self.value)
        if self.notation == "BinarySI" and magnitude >= 1024 and magnitude.denominator == 1:
            amount, power = int(magnitude), 0
            while amount % 1024 == 0 and power < 6:
                amount, power = amount // 1024, power + 1
            suffix = {0: "", 1: "Ki", 2: "Mi", 3: "Gi", 4: "Ti", 5: "Pi", 6: "Ei"}[power]
            return f"{sign}{amount}{suffix}"
        mantissa, exponent = int(magnitude / _NANO), -9
        while mantissa % 10 == 0:
            mantissa, exponent = mantissa // 10, exponent + 1
        remainder = exponent % 3  # lower the exponent to a multiple of three
        mantissa, exponent = mantissa * 10**remainder, exponent - remainder
        if self.notation == "DecimalExponent" or exponent not in _DECIMAL_BY_EXPONENT:
            return f"{sign}{mantissa}" + (f"e{exponent}" if exponent else "")
        return f"{sign}{mantissa}{_DECIMAL_BY_EXPONENT[exponent]}"

    def is_integer(self) -> bool:
        return self.value.denominator == 1


# --------------------------------------------------------------------------------- object meta
TOTAL_ANNOTATION_SIZE_LIMIT = 256 * 1024
_STANDARD_FINALIZERS = frozenset({"kubernetes", "orphan", "foregroundDeletion"})
_BANNED_OWNERS = frozenset({("", "v1", "Event"), ("events.k8s.io", "v1", "Event")})


def validate_labels(labels: Mapping[str, str] | None, path: str) -> list[FieldError]:
    errors = []
    for name, value in (labels or {}).items():
        errors += [invalid(path, name, message) for message in is_qualified_name(name)]
        errors += [invalid(path, value, message) for message in is_valid_label_value(value)]
    return errors


def validate_annotations(annotations: Mapping[str, str] | None, path: str) -> list[FieldError]:
    errors = []
    for name in annotations or {}:
        # The rule is a qualified name, except that case does not matter.
        errors += [invalid(path, name, message) for message in is_qualified_name(name.lower())]
    size = sum(len(k.encode()) + len(v.encode()) for k, v in (annotations or {}).items())
    if size > TOTAL_ANNOTATION_SIZE_LIMIT:
        errors.append(too_long(path, TOTAL_ANNOTATION_SIZE_LIMIT))
    return errors


def _group_version(api_version: str) -> tuple[str, str] | None:
    """``schema.ParseGroupVersion``: None when it has more than one '/'."""
    if not api_version:
        return "", ""
    parts = api_version.split("/")
    if len(parts) == 1:
        return "", parts[0]
    if len(parts) == 2:
        return parts[0], parts[1]
    return None


def _owner_reference(ref: Mapping[str, Any], path: str) -> list[FieldError]:
    errors = []
    api_version, kind = str(ref.get("apiVersion") or ""), str(ref.get("kind") or "")
    group_version = _group_version(api_version) or ("", "")
    if not group_version[1]:
        errors.append(invalid(child(path, "apiVersion"), api_version, "version must not be empty"))
    if not kind:
        errors.append(invalid(child(path, "kind"), kind, "must not be empty"))
    if not ref.get("name"):
        errors.append(invalid(child(path, "name"), str(ref.get("name") or ""), "must not be empty"))
    if not ref.get("uid"):
        errors.append(invalid(child(path, "uid"), str(ref.get("uid") or ""), "must not be empty"))
    if (*group_version, kind) in _BANNED_OWNERS:
        group, version = group_version
        errors.append(invalid(path, OMIT, f"{group}/{version}, Kind={kind} is disallowed from being an owner"))
    return errors


def validate_owner_references(refs: Sequence[Mapping[str, Any]] | None, path: str) -> list[FieldError]:
    """Every reference complete; at most one controller. Paths carry no index, as in Go."""
    errors: list[FieldError] = []
    first_controller = ""
    for ref in refs or ():
        errors += _owner_reference(ref, path)
        if ref.get("controller") is True:
            current = f"{ref.get('kind', '')}/{ref.get('name', '')}"
            if first_controller:
                detail = (
                    'Only one reference can have Controller set to true. Found "true" in references for '
                    f"{first_controller} and {current}"
                )
                errors.append(invalid(path, GoText(_owner_references_text(refs or ())), detail))
            else:
                first_controller = current
    return errors


_OWNER_REFERENCE_FIELDS = (("APIVersion", "apiVersion"), ("Kind", "kind"), ("Name", "name"), ("UID", "uid"))


def _owner_references_text(refs: Sequence[Mapping[str, Any]]) -> str:
    """``%#v`` of the references; Go prints a set *bool as an address, shown here as ``&true``."""
    shown = []
    for ref in refs:
        fields: list[tuple[str, Any]] = [(go, str(ref.get(json_name, ""))) for go, json_name in _OWNER_REFERENCE_FIELDS]
        for go, json_name in (("Controller", "controller"), ("BlockOwnerDeletion", "blockOwnerDeletion")):
            value = ref.get(json_name)
            fields.append((go, GoText("(*bool)(nil)" if value is None else f"&{str(value).lower()}")))
        shown.append(go_struct("v1.OwnerReference", fields))
    return "[]v1.OwnerReference{" + ", ".join(shown) + "}"


def validate_finalizers(finalizers: Sequence[str] | None, path: str) -> list[FieldError]:
    errors = []
    for finalizer in finalizers or ():
        errors += [invalid(path, finalizer, message) for message in is_qualified_name(finalizer)]
    names = set(finalizers or ())
    if {"orphan", "foregroundDeletion"} <= names:
        detail = "finalizer orphan and foregroundDeletion cannot be both set"
        errors.append(invalid(path, GoText(_string_slice(finalizers or ())), detail))
    return errors


def _string_slice(items: Sequence[str]) -> str:
    return "[]string{" + ", ".join(go_quote(item) for item in items) + "}"


def finalizer_warnings(meta: Mapping[str, Any], old: Mapping[str, Any] | None = None) -> list[str]:
    """A finalizer added without a domain and path draws a warning (a conflict risk), unless it is one of
    Kubernetes' own."""
    before = set((old or {}).get("finalizers") or ())
    return [
        f"metadata.finalizers: {go_quote(name)}: prefer a domain-qualified finalizer name including a path (/) "
        "to avoid accidental conflicts with other finalizer writers"
        for name in meta.get("finalizers") or ()
        if "/" not in name and name not in _STANDARD_FINALIZERS and name not in before
    ]


def validate_object_meta(meta: Mapping[str, Any], *, namespaced: bool, name_rule: NameRule) -> list[FieldError]:
    """``ValidateObjectMetaAccessor``: what every object's metadata must satisfy when it is created."""
    errors: list[FieldError] = []
    generate_name = str(meta.get("generateName") or "")
    if generate_name:
        errors += [invalid("metadata.generateName", generate_name, m) for m in name_rule(generate_name, True)]
    name = str(meta.get("name") or "")
    if not name:
        errors.append(required("metadata.name", "name or generateName is required"))
    else:
        errors += [invalid("metadata.name", name, message) for message in name_rule(name, False)]
    namespace = str(meta.get("namespace") or "")
    if namespaced:
        if not namespace:
            errors.append(required("metadata.namespace"))
        else:
            errors += [invalid("metadata.namespace", namespace, m) for m in dns_label_name(namespace, False)]
    elif namespace:
        errors.append(forbidden("metadata.namespace", "not allowed on this type"))
    errors += nonnegative(int(meta.get("generation") or 0), "metadata.generation")
    errors += validate_labels(meta.get("labels"), "metadata.labels")
    errors += validate_annotations(meta.get("annotations"), "metadata.annotations")
    errors += validate_owner_references(meta.get("ownerReferences"), "metadata.ownerReferences")
    errors += validate_finalizers(meta.get("finalizers"), "metadata.finalizers")
    return errors


def validate_object_meta_update(new: Mapping[str, Any], old: Mapping[str, Any]) -> list[FieldError]:
    """``ValidateObjectMetaAccessorUpdate``: identity fixed; labels, annotations and owners still valid."""
    errors: list[FieldError] = []
    if old.get("deletionTimestamp"):
        added = [f for f in new.get("finalizers") or () if f not in (old.get("finalizers") or ())]
        if added:
            errors.append(
                forbidden(
                    "metadata.finalizers",
                    f"no new finalizers can be added if the object is being deleted, found new finalizers "
                    f"{_string_slice(sorted(set(added)))}",
                )
            )
    if int(new.get("generation") or 0) < int(old.get("generation") or 0):
        errors.append(invalid("metadata.generation", int(new.get("generation") or 0), "must not be decremented"))
    for name in ("name", "namespace", "uid"):
        errors += immutable(f"metadata.{name}", str(new.get(name) or ""), str(old.get(name) or ""))
    for name in ("creationTimestamp", "deletionTimestamp", "deletionGracePeriodSeconds"):
        errors += immutable(f"metadata.{name}", new.get(name), old.get(name))
    errors += validate_labels(new.get("labels"), "metadata.labels")
    errors += validate_annotations(new.get("annotations"), "metadata.annotations")
    errors += validate_owner_references(new.get("ownerReferences"), "metadata.ownerReferences")
    return errors


def json_text(value: Any) -> str:
    """``json.Marshal``: compact, keys sorted."""
    return json.dumps(value, separators=(",", ":"), sort_keys=True, ensure_ascii=False)
