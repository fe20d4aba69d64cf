"""Rules the OpenAPI schema cannot say: one definition gives the CRD's CEL rule and the model's check.

The API server evaluates ``cel``; ``kubetune validate`` and the operator call ``holds``. A rule
between fields sits on a model (its ``rules``) and reports at ``field``, relative to that model; a
rule on one field's value (``field`` empty) sits in the field's annotation through
:meth:`Rule.annotations`. Either way every path reports the same field with the same message.
``tests/api/test_cel_rules.py`` evaluates the CEL of the model rules on the cases that test
``holds``; the corpus (``tests/corpus``) runs the field rules through the API server and the model.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from pydantic import AfterValidator, BaseModel, Field
from pydantic.json_schema import JsonDict, JsonValue


@dataclass(frozen=True)
class Rule:
    cel: str
    message: str
    field: str  # CEL fieldPath syntax: ".a.b", relative to the object the rule is declared on; "" for the value itself
    holds: Callable[[Any], bool]

    def schema(self) -> dict[str, JsonValue]:
        rule: dict[str, JsonValue] = {"rule": self.cel, "message": self.message}
        return {**rule, "fieldPath": self.field} if self.field else rule

    def annotations(self) -> tuple[Any, AfterValidator]:
        """``Annotated[T, *rule.annotations()]``: the CEL rule in the field's schema, the same check on its value."""

        def check(value: Any) -> Any:
            if not self.holds(value):
                raise ValueError(self.message)
            return value

        return Field(json_schema_extra=rules_schema((self,))), AfterValidator(check)


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
