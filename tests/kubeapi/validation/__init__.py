"""Write-time validation for the test API server: what kube-apiserver does with an object between
decoding a request and storing it, refusing what it refuses with the same codes, reasons and fields.

For a built-in kind (``core``): decoding into the Go struct (a wrong JSON type is a 400), unknown
fields handled as ``fieldValidation`` says, the kind's defaulting, then its REST strategy's
validation. For a custom resource (``custom``): pruning and defaulting from the CRD's
openAPIV3Schema, then metadata, schema and CEL validation. Either way every field error found is
returned at once, as a 422 Invalid.
"""

from __future__ import annotations

from typing import Any

from tests.kubeapi.model import ApiError, FieldError, ResourceType
from tests.kubeapi.validation import core, custom, meta

__all__ = ["admit"]

_DIRECTIVES = ("", "Ignore", "Strict", "Warn")


def admit(
    rtype: ResourceType,
    operation: str,
    obj: dict[str, Any],
    old: dict[str, Any] | None,
    *,
    subresource: str | None = None,
    field_validation: str = "Warn",
) -> tuple[dict[str, Any], list[str]]:
    """Defaulting/pruning then validation of one write, as kube-apiserver does it for this kind.

    operation: "CREATE" or "UPDATE" (``old`` is then the stored object). subresource: None, or
    "status" for a write to the status subresource. field_validation: the request's
    ``?fieldValidation=`` (Ignore, Warn or Strict). Returns the object to store and the texts of the
    ``Warning:`` headers. Raises ApiError: 422 Invalid with every field error, or 400 BadRequest for a
    body that does not decode (a built-in field of the wrong JSON type, a malformed quantity) and for
    unknown fields under Strict.
    """
    _check_directive(operation, field_validation)
    previous = old if operation == "UPDATE" else None
    try:
        decoded = custom.decode(rtype, obj) if rtype.is_custom else core.decode(rtype, obj)
    except core.DecodeError as error:
        raise _undecodable(rtype, str(error)) from None
    warnings = _unknown_fields(rtype, decoded.unknown_fields, field_validation)
    obj = decoded.obj
    if rtype.is_custom:
        if rtype.schema is not None:
            custom.apply_defaults(rtype.schema, obj)
        outcome = custom.validate(rtype, obj, previous)
        errors, warnings = outcome.errors, warnings + outcome.warnings
    else:
        core.default(rtype, operation, obj)
        errors = core.validate(rtype, operation, obj, previous, subresource)
        warnings += meta.finalizer_warnings(obj["metadata"], (previous or {}).get("metadata"))
    if errors:
        raise ApiError.invalid(rtype, str(obj["metadata"].get("name", "")), _distinct(errors))
    if not rtype.is_custom:
        core.finish(rtype, obj)
    return obj, warnings


def _check_directive(operation: str, directive: str) -> None:
    """ValidateFieldValidation: the request's options are refused before the object is looked at."""
    if directive in _DIRECTIVES:
        return
    options = "CreateOptions" if operation == "CREATE" else "UpdateOptions"
    error = meta.not_supported("fieldValidation", directive, _DIRECTIVES)
    details = {
        "name": "",
        "group": "meta.k8s.io",
        "kind": options,
        "causes": [{"reason": error.reason, "message": error.message, "field": error.field}],
    }
    raise ApiError(422, "Invalid", f'{options}.meta.k8s.io "" is invalid: {error.render()}', details)


def _undecodable(rtype: ResourceType, detail: str) -> ApiError:
    return ApiError.bad_request(
        f'{rtype.kind} in version "{rtype.version}" cannot be handled as a {rtype.kind}: {detail}'
    )


def _unknown_fields(rtype: ResourceType, paths: list[str], directive: str) -> list[str]:
    """Unknown fields are dropped: silently (Ignore), with a warning each (Warn), or the write is refused."""
    found = [f"unknown field {meta.go_quote(path)}" for path in paths]
    if directive == "Strict" and found:
        raise _undecodable(rtype, "strict decoding error: " + ", ".join(found))
    return found if directive in ("Warn", "") else []


def _distinct(errors: list[FieldError]) -> list[FieldError]:
    """``ErrorList.ToAggregate`` reports an error once however many times it was found."""
    seen: set[tuple[str, str]] = set()
    kept = []
    for error in errors:
        if (error.field, error.message) not in seen:
            seen.add((error.field, error.message))
            kept.append(error)
    return kept
