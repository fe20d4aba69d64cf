"""The plan decides each value once: the resolved plan has no optional field and no consumer defaults again."""

from __future__ import annotations

import ast
import types
import typing
from pathlib import Path

import pytest
from pydantic import BaseModel, TypeAdapter, ValidationError

from kubetune.api.v1alpha1 import (
    FineTuneJobStatus,
    ResolvedAdapterTraining,
    ResolvedFullTraining,
    ResolvedTraining,
)
from tests.trainer.plans import tiny_plan

TRAINER = Path(__file__).resolve().parents[2] / "trainer_image" / "kubetune_trainer"
# Where values are decided; everything else consumes them.
DECIDERS = {TRAINER / "plan.py"}


def _models(model: type[BaseModel]) -> list[type[BaseModel]]:
    found = [model]
    for field in model.model_fields.values():
        for arg in typing.get_args(field.annotation) or (field.annotation,):
            if isinstance(arg, type) and issubclass(arg, BaseModel) and arg not in found:
                found += _models(arg)
    return found


# Every member of the union and every block under it.
RESOLVED_MODELS = sorted(
    {m for root in typing.get_args(typing.get_args(ResolvedTraining)[0]) for m in _models(root)},
    key=lambda m: m.__name__,
)


def _resolved_field_names() -> set[str]:
    return {name for model in RESOLVED_MODELS for name in model.model_fields}


@pytest.mark.parametrize("model", RESOLVED_MODELS, ids=lambda m: m.__name__)
def test_every_resolved_field_is_required_and_never_none(model: type[BaseModel]) -> None:
    for name, field in model.model_fields.items():
        assert field.is_required(), f"{model.__name__}.{name} has a default: the plan must decide it"
        annotation = field.annotation
        members = (
            typing.get_args(annotation) if typing.get_origin(annotation) in (typing.Union, types.UnionType) else ()
        )
        assert type(None) not in members, f"{model.__name__}.{name} is Optional"


def test_the_union_is_told_apart_by_method_and_each_method_has_its_block() -> None:
    adapter = tiny_plan("lora")
    full = tiny_plan("full")
    assert isinstance(adapter, ResolvedAdapterTraining) and isinstance(full, ResolvedFullTraining)
    assert adapter.lora.r == 4 and adapter.lora.strengths[0] == 1.0
    reader = TypeAdapter(ResolvedTraining)
    assert reader.validate_python(adapter.to_manifest()) == adapter
    assert reader.validate_python(full.to_manifest()) == full
    broken = adapter.to_manifest()
    del broken["lora"]
    with pytest.raises(ValidationError, match="lora"):
        reader.validate_python(broken)
    missing = full.to_manifest()
    del missing["hyperparameters"]["learningRate"]
    with pytest.raises(ValidationError, match="learningRate"):
        FineTuneJobStatus.model_validate({"resolved": missing})


def re_defaults(source: str, fields: set[str]) -> list[str]:
    """Where ``source`` gives a resolved field a fallback: ``x.field or d`` or ``x.field if x.field is not None else d``."""

    def names_field(node: ast.AST) -> str | None:
        return node.attr if isinstance(node, ast.Attribute) and node.attr in fields else None

    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.BoolOp) and isinstance(node.op, ast.Or) and (name := names_field(node.values[0])):
            found.append(f"line {node.lineno}: .{name} or ...")
        if isinstance(node, ast.IfExp) and isinstance(node.test, ast.Compare):
            compared = node.test.left
            if (name := names_field(compared)) and isinstance(node.test.ops[0], ast.IsNot | ast.Is):
                found.append(f"line {node.lineno}: .{name} if ... is (not) None else ...")
    return found


def test_the_re_default_check_catches_both_spellings() -> None:
    fields = {"sequence_length", "seed"}
    planted = "a = hp.sequence_length or 512\nb = hp.seed if hp.seed is not None else 0\nc = hp.other or 1\n"
    assert re_defaults(planted, fields) == [
        "line 1: .sequence_length or ...",
        "line 2: .seed if ... is (not) None else ...",
    ]


def test_no_consumer_re_defaults_a_resolved_value() -> None:
    # Names shared with spec fields that legitimately default elsewhere (a spec's own sub-objects).
    fields = _resolved_field_names() - {"method", "enabled", "examples"}
    offenders = {
        str(path.relative_to(TRAINER)): hits
        for path in sorted(TRAINER.rglob("*.py"))
        if path not in DECIDERS and (hits := re_defaults(path.read_text(), fields))
    }
    assert not offenders, offenders
