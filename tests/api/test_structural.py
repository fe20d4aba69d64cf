"""The generated CRD schema is structural, and the checker that says so catches what it should."""

from __future__ import annotations

import pytest

from kubetune.api.crd import KINDS, Kind, build_crd
from tests.api.schema_tools import Schema, crd_document, root_schema, structural_problems


@pytest.mark.parametrize("kind", KINDS, ids=[k.kind for k in KINDS])
def test_generated_schema_is_structural(kind: Kind) -> None:
    schema = build_crd(kind)["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    assert structural_problems(schema) == []


def test_committed_crd_serves_one_storage_version_with_a_status_subresource() -> None:
    (version,) = crd_document()["spec"]["versions"]
    assert version["served"] and version["storage"] and version["subresources"] == {"status": {}}
    assert root_schema()["properties"]["metadata"] == {"type": "object"}, "metadata may only restrict name"


def obj(**properties: Schema) -> Schema:
    return {"type": "object", "properties": properties}


@pytest.mark.parametrize(
    ("schema", "complaint"),
    [
        (obj(a={"description": "untyped"}), ".a: type is None"),
        (obj(a={"$ref": "#/definitions/A", "type": "object"}), ".a: $ref is not allowed"),
        (obj(a={"type": "string", "anyOf": [{"type": "string"}, {"type": "null"}]}), ".a: type inside anyOf"),
        (obj(a={"type": "object", "properties": {}, "additionalProperties": {"type": "string"}}), "mutually exclusive"),
        (obj(a={"type": "array"}), ".a: an array needs one items schema"),
        (obj(a={"type": "integer", "minimum": 1, "default": 0}), ".a: default 0 is invalid"),
        (obj(a={"type": "object", "properties": {"b": {"type": "string"}}, "default": {"c": 1}}), "default"),
        (obj(a={"type": "string", "pattern": "^(?!x)"}), "not RE2"),
        (obj(a={"type": "array", "items": {"type": "string"}, "uniqueItems": True}), "uniqueItems"),
        (
            obj(
                a={
                    "type": "array",
                    "x-kubernetes-list-type": "map",
                    "x-kubernetes-list-map-keys": ["name"],
                    "items": obj(name={"type": "string"}),
                }
            ),
            "list map key 'name' must be required or defaulted",
        ),
    ],
)
def test_checker_reports_each_non_structural_construct(schema: Schema, complaint: str) -> None:
    problems = structural_problems(schema)
    assert any(complaint in problem for problem in problems), problems


def test_checker_accepts_the_escape_hatches() -> None:
    schema = obj(
        anything={"x-kubernetes-preserve-unknown-fields": True},
        port={"x-kubernetes-int-or-string": True},
        labels={"type": "object", "additionalProperties": {"type": "string"}},
        nested={"type": "object", "default": {}, "properties": {"n": {"type": "integer", "default": 1}}},
    )
    assert structural_problems(schema) == []
