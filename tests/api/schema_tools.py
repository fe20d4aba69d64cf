"""What the Kubernetes API server does with a CRD schema, re-done in Python for the API tests.

- ``structural_problems``: Kubernetes' rules for a *structural* schema (plus the keywords a CRD
  may not use), as a checker that lists every problem with its path.
- ``apply_defaults``: the server's defaulting of absent fields, top-down (shared with the test API
  server, tests/kubeapi/validation/custom.py, as are the CEL typing and transition-rule detection).
- ``schema_errors``: OpenAPI validation with unknown fields rejected (kubectl's strict field
  validation), reported as field paths like the pydantic models report theirs.
- ``cel_violations``: every ``x-kubernetes-validations`` rule evaluated with cel-python, transition
  rules (``oldSelf``) only where an old value exists, as on an update.

CRD schemas are OpenAPI v3.0, whose validation keywords follow JSON Schema draft 4 (boolean
``exclusiveMinimum``), hence ``Draft4Validator``.
"""

from __future__ import annotations

import copy
import re
from functools import cache
from pathlib import Path
from typing import Any

import celpy
import jsonschema
import yaml

from tests.kubeapi.validation import custom
from tests.kubeapi.validation.custom import QUANTITY_FUNCTIONS, is_transition_rule, typed_like_the_server

ROOT = Path(__file__).resolve().parents[2]
CRD_FILE = ROOT / "crds" / "kubetune.dev_finetunejobs.yaml"

Schema = dict[str, Any]

# Keywords Kubernetes rejects in a CRD's openAPIV3Schema.
FORBIDDEN_KEYWORDS = ("$ref", "$schema", "definitions", "dependencies", "patternProperties", "id", "additionalItems")
UNION_KEYWORDS = ("anyOf", "oneOf", "allOf", "not")
# Inside a union only value validations may appear, never these.
NOT_IN_UNIONS = ("type", "description", "default", "additionalProperties", "nullable")
TYPES = {"object", "array", "string", "integer", "number", "boolean"}
# Go's RE2 has no lookaround and no backreferences.
NON_RE2 = re.compile(r"\(\?[=!<]|\\[1-9]")


@cache
def crd_document() -> dict[str, Any]:
    return dict(yaml.safe_load(CRD_FILE.read_text()))


def root_schema() -> Schema:
    return copy.deepcopy(crd_document()["spec"]["versions"][0]["schema"]["openAPIV3Schema"])


def spec_schema() -> Schema:
    return dict(root_schema()["properties"]["spec"])


def children(node: Schema, path: str) -> list[tuple[str, Schema]]:
    found = [(f"{path}.{name}", child) for name, child in (node.get("properties") or {}).items()]
    if isinstance(node.get("items"), dict):
        found.append((f"{path}[]", node["items"]))
    if isinstance(node.get("additionalProperties"), dict):
        found.append((f"{path}{{}}", node["additionalProperties"]))
    return found


def structural_problems(node: Schema, path: str = "") -> list[str]:
    """Every way ``node`` (recursively) breaks Kubernetes' structural-schema rules."""
    where = path or "<root>"
    problems = [f"{where}: {key} is not allowed in a CRD schema" for key in FORBIDDEN_KEYWORDS if key in node]
    preserves = node.get("x-kubernetes-preserve-unknown-fields") is True
    if node.get("type") not in TYPES and not preserves and node.get("x-kubernetes-int-or-string") is not True:
        problems.append(f"{where}: type is {node.get('type')!r}; every node needs one of {sorted(TYPES)}")
    for union in UNION_KEYWORDS:
        branches = node.get(union)
        for branch in branches if isinstance(branches, list) else [branches] if branches else []:
            problems += [f"{where}: {key} inside {union} is not structural" for key in NOT_IN_UNIONS if key in branch]
    if "properties" in node and "additionalProperties" in node:
        problems.append(f"{where}: properties and additionalProperties are mutually exclusive")
    if ("properties" in node or "additionalProperties" in node) and node.get("type") != "object" and not preserves:
        problems.append(f"{where}: properties need type object")
    if node.get("type") == "array" and not isinstance(node.get("items"), dict):
        problems.append(f"{where}: an array needs one items schema")
    if node.get("uniqueItems"):
        problems.append(f"{where}: uniqueItems: true is not allowed (use x-kubernetes-list-type: set)")
    if "pattern" in node and NON_RE2.search(node["pattern"]):
        problems.append(f"{where}: pattern {node['pattern']!r} uses lookaround or backreferences (not RE2)")
    problems += _list_map_problems(node, where)
    problems += _default_problems(node, where)
    for child_path, child in children(node, path):
        problems += structural_problems(child, child_path)
    return problems


def _list_map_problems(node: Schema, where: str) -> list[str]:
    if node.get("x-kubernetes-list-type") != "map":
        return []
    items = node.get("items") or {}
    keys = node.get("x-kubernetes-list-map-keys") or []
    if items.get("type") != "object" or not keys:
        return [f"{where}: a map list needs object items and x-kubernetes-list-map-keys"]
    required = set(items.get("required", []))
    properties = items.get("properties", {})
    return [
        f"{where}: list map key {key!r} must be required or defaulted"
        for key in keys
        if key not in required and "default" not in properties.get(key, {})
    ]


def _default_problems(node: Schema, where: str) -> list[str]:
    """The server validates a default after defaulting inside it, with unknown fields pruned."""
    if "default" not in node:
        return []
    defaulted = apply_defaults(node, copy.deepcopy(node["default"]))
    return [f"{where}: default {node['default']!r} is invalid: {error}" for error in schema_errors(node, defaulted)]


def apply_defaults(node: Schema, value: Any) -> Any:
    """The API server's defaulting of absent fields, top-down, on a copy (the test API server's own)."""
    return custom.apply_defaults(node, copy.deepcopy(value))


def rejecting_unknown_fields(node: Schema) -> Schema:
    """The schema with additionalProperties: false wherever the server would refuse unknown fields."""
    strict = dict(node)
    if "properties" in node:
        strict["properties"] = {name: rejecting_unknown_fields(child) for name, child in node["properties"].items()}
        if not node.get("x-kubernetes-preserve-unknown-fields"):
            strict["additionalProperties"] = False
    for key in ("items", "additionalProperties"):
        if isinstance(node.get(key), dict):
            strict[key] = rejecting_unknown_fields(node[key])
    return strict


def _path(parts: Any) -> str:
    text = ""
    for part in parts:
        text += f"[{part}]" if isinstance(part, int) else f".{part}"
    return text.lstrip(".")


def _join(parent: str, name: str) -> str:
    return f"{parent}.{name}" if parent else name


def schema_errors(node: Schema, value: Any) -> dict[str, str]:
    """Field path -> message for everything the schema rejects (unknown fields as their own path)."""
    errors: dict[str, str] = {}
    for error in jsonschema.Draft4Validator(rejecting_unknown_fields(node)).iter_errors(value):
        parent = _path(error.absolute_path)
        if error.validator == "additionalProperties":
            known = set(error.schema.get("properties", {}))
            for name in set(error.instance) - known:
                errors[_join(parent, name)] = "unknown field"
        elif error.validator == "required":
            name = re.match(r"'([^']+)'", error.message)
            errors[_join(parent, name.group(1) if name else "?")] = error.message
        else:
            errors[parent] = error.message
    return errors


def _holds(rule: str, self_value: Any, old_value: Any = None) -> bool:
    environment = celpy.Environment()
    activation = {"self": celpy.json_to_cel(self_value)}
    if old_value is not None:
        activation["oldSelf"] = celpy.json_to_cel(old_value)
    try:
        result = environment.program(environment.compile(rule), functions=QUANTITY_FUNCTIONS).evaluate(activation)
    except celpy.CELEvalError:
        return False  # the server reports an evaluation error as a failed rule
    return isinstance(result, celpy.celtypes.BoolType) and bool(result)


def cel_violations(node: Schema, value: Any, old: Any = None, path: str = "") -> list[tuple[str, str]]:
    """(path, message) of each rule that fails. Without ``old`` (a create) transition rules are skipped."""
    violations = []
    value, old = typed_like_the_server(node, value), typed_like_the_server(node, old)
    for rule in node.get("x-kubernetes-validations", []):
        # The server reports a failed rule at its fieldPath, under the object the rule is on.
        where = _join(path, rule["fieldPath"].lstrip(".")) if rule.get("fieldPath") else path
        if is_transition_rule(rule["rule"]):
            if old is not None and not _holds(rule["rule"], value, old):
                violations.append((where, rule["message"]))
        elif not _holds(rule["rule"], value):
            violations.append((where, rule["message"]))
    if isinstance(value, dict):
        for name, child in (node.get("properties") or {}).items():
            if name in value:
                old_child = old.get(name) if isinstance(old, dict) else None
                violations += cel_violations(child, value[name], old_child, _join(path, name))
    if isinstance(value, list) and isinstance(node.get("items"), dict):
        for index, item in enumerate(value):
            violations += cel_violations(node["items"], item, None, f"{path}[{index}]")
    return violations


def all_rules(node: Schema) -> list[str]:
    rules = [rule["rule"] for rule in node.get("x-kubernetes-validations", [])]
    for _, child in children(node, ""):
        rules += all_rules(child)
    return rules
