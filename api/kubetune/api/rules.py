"""Rules between fields: one definition gives the CRD's CEL rule and the model's own check.

The API server evaluates ``cel``; ``kubetune validate`` and the operator call ``holds`` on the
parsed model. Both report the failure at ``field`` (relative to the object the rule is on) with
the same message, so every path names the same field. ``tests/api/test_cel_rules.py`` evaluates
the CEL of every rule on the cases that test ``holds``, keeping the two in step.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel
from pydantic.json_schema import JsonDict, JsonValue


@dataclass(frozen=True)
class Rule:
    cel: str
    message: str
    field: str  # CEL fieldPath syntax: ".a.b", relative to the object the rule is declared on
    holds: Callable[[Any], bool]

    def schema(self) -> dict[str, JsonValue]:
        return {"rule": self.cel, "message": self.message, "fieldPath": self.field}


def rules_schema(rules: tuple[Rule, ...]) -> JsonDict:
    """The ``x-kubernetes-validations`` a model's schema carries for its rules."""
    return {"x-kubernetes-validations": [rule.schema() for rule in rules]}


def _children(value: Any, path: str) -> Iterator[tuple[BaseModel, str]]:
    if isinstance(value, BaseModel):
        yield value, path
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from _children(item, f"{path}[{index}]")
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from _children(item, f"{path}[{key}]")


def broken_rules(model: BaseModel, path: str) -> list[tuple[str, str]]:
    """(field path, message) for every rule of ``model`` and the models inside it that does not hold."""
    problems = [
        (path + rule.field, rule.message) for rule in getattr(type(model), "rules", ()) if not rule.holds(model)
    ]
    for name, field in type(model).model_fields.items():
        alias = field.alias or name
        for child, child_path in _children(getattr(model, name), f"{path}.{alias}"):
            problems.extend(broken_rules(child, child_path))
    return problems
