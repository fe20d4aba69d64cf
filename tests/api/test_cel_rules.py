"""The CRD's CEL rules, evaluated with cel-python: cross-field rules agree with the model, and
the spec is immutable after creation except ``suspend``."""

from __future__ import annotations

import copy
from typing import Any

import celpy
import pytest

from kubetune.api.manifest import ManifestError, parse_spec
from kubetune.api.v1alpha1 import (
    AdaLoraSpec,
    ContinualSpec,
    DatasetSource,
    DatasetSpec,
    FineTuneJobSpec,
    Ia3Spec,
    MethodSpec,
    Toleration,
)
from tests.api.schema_tools import all_rules, apply_defaults, cel_violations, root_schema, spec_schema
from tests.builders import minimal_spec

MINIMAL: dict[str, Any] = minimal_spec()
SPEC_RULES = [(rule.field.lstrip("."), rule.message) for rule in FineTuneJobSpec.rules]
TOLERATION_RULES = {rule.field.lstrip("."): rule.message for rule in Toleration.rules}
SOURCE_RULES = {rule.field.lstrip("."): rule.message for rule in DatasetSource.rules}
DATASET_RULES = {rule.field.lstrip("."): rule.message for rule in DatasetSpec.rules}
METHOD_RULES = [
    *[(f"method.{rule.field.lstrip('.')}", rule.message) for rule in MethodSpec.rules],
    *[(f"method.ia3.{rule.field.lstrip('.')}", rule.message) for rule in Ia3Spec.rules],
    *[(f"method.adalora.{rule.field.lstrip('.')}", rule.message) for rule in AdaLoraSpec.rules],
]


def defaulted(spec: dict[str, Any]) -> dict[str, Any]:
    return dict(apply_defaults(spec_schema(), copy.deepcopy(spec)))


def test_every_rule_compiles() -> None:
    rules = all_rules(root_schema())
    assert len(rules) > len(FineTuneJobSpec.rules) + len(Toleration.rules)
    environment = celpy.Environment()
    for rule in rules:
        environment.compile(rule)


def model_problems(spec: dict[str, Any]) -> set[tuple[str, str]]:
    try:
        parse_spec(spec)
    except ManifestError as err:
        return {(path.removeprefix("spec."), message) for path, message in err.problems}
    return set()


def split(validation: float, test: float) -> dict[str, Any]:
    return {"dataset": {"sources": [{"uri": "s3://data/x"}], "split": {"validation": validation, "test": test}}}


CONTINUAL_RULES = {rule.field: rule.message for rule in ContinualSpec.rules}


def continual(**fields: Any) -> dict[str, Any]:
    return {"continual": {"from": "s3://models/x/v1", **fields}}


def data(**extra: Any) -> dict[str, Any]:
    return {"dataset": {"sources": [{"uri": "s3://data/x"}], **extra}}


def spec_rule(field: str, saying: str = "") -> set[tuple[str, str]]:
    """The one rule at ``field`` whose message says ``saying`` (several rules may guard one field)."""
    (message,) = [message for at, message in SPEC_RULES if at == field and saying in message]
    return {(field, message)}


def method_rule(field: str, saying: str = "") -> set[tuple[str, str]]:
    """The one method rule at ``field`` whose message says ``saying``."""
    (message,) = [message for at, message in METHOD_RULES if at == field and saying in message]
    return {(field, message)}


def sources(*items: dict[str, Any]) -> dict[str, Any]:
    return {"dataset": {"sources": [{"uri": f"s3://data/{i}", **item} for i, item in enumerate(items)]}}


def source_rule(index: int, field: str) -> set[tuple[str, str]]:
    return {(f"dataset.sources[{index}].{field}", SOURCE_RULES[field])}


def toleration_rule(index: int, field: str) -> set[tuple[str, str]]:
    return {(f"resources.tolerations[{index}].{field}", TOLERATION_RULES[field])}


def tolerations(*items: dict[str, Any]) -> dict[str, Any]:
    return {"resources": {"tolerations": list(items)}}


@pytest.mark.parametrize(
    ("change", "broken"),
    [
        ({}, set()),
        ({"method": {"type": "qlora"}, "resources": {"gpus": 0}}, spec_rule("method.type")),
        ({"method": {"type": "qlora", "allowCpuQlora": True}, "resources": {"gpus": 0}}, set()),
        ({"method": {"type": "qlora"}}, set()),  # one GPU by default
        ({"method": {"type": "lora"}, "resources": {"gpus": 0}}, set()),
        ({"method": {"type": "full", "adapter": "dora"}}, spec_rule("method.adapter", "frozen base")),
        ({"method": {"type": "full", "adapter": "lora"}}, spec_rule("method.adapter", "frozen base")),
        ({"method": {"type": "full"}}, set()),
        ({"method": {"adapter": "dora"}}, set()),  # auto: an adapter method either way
        ({"method": {"type": "qlora", "adapter": "dora", "lora": {"scaling": "rslora"}}}, set()),
        ({"method": {"adapter": "ia3"}}, set()),
        ({"method": {"adapter": "adalora", "adalora": {"initialRank": 12, "targetRank": 12}}}, set()),
        ({"method": {"adapter": "adalora", "adalora": {"targetRank": 64}}}, set()),  # the initial rank follows
        (
            {"method": {"adapter": "adalora", "adalora": {"initialRank": 4, "targetRank": 8}}},
            method_rule("method.adalora.targetRank"),
        ),
        ({"method": {"adalora": {"targetRank": 4}}}, method_rule("method.adalora")),
        ({"method": {"adapter": "adalora", "lora": {"r": 4}}}, method_rule("method.lora")),
        ({"method": {"type": "full", "adapter": "adalora"}}, spec_rule("method.adapter", "frozen base")),
        ({"method": {"adapter": "prefix", "prefix": {"virtualTokens": 8}}}, set()),
        ({"method": {"adapter": "bottleneck", "bottleneck": {"size": 16, "placement": "mlp"}}}, set()),
        ({"method": {"bottleneck": {"size": 16}}}, method_rule("method.bottleneck")),
        ({"method": {"adapter": "bottleneck", "lora": {"r": 4}}}, method_rule("method.lora")),
        (
            {"method": {"adapter": "bottleneck"}, "output": {"uri": "s3://models/x/", "formats": ["bnb-4bit"]}},
            spec_rule("output.formats"),
        ),
        ({"method": {"adapter": "bottleneck"}, "hyperparameters": {"packing": True}}, set()),  # position-wise
        ({"method": {"adapter": "osf", "osf": {"preservedFraction": 0.75, "targetModules": ["q_proj"]}}}, set()),
        ({"method": {"adapter": "osf", "type": "lora"}}, set()),
        ({"method": {"adapter": "osf", "type": "qlora"}}, method_rule("method.type")),
        ({"method": {"osf": {"preservedFraction": 0.5}}}, method_rule("method.osf")),
        ({"method": {"adapter": "osf", "lora": {"r": 4}}}, method_rule("method.lora")),
        ({"method": {"type": "full", "adapter": "osf"}}, spec_rule("method.adapter", "frozen base")),
        ({"method": {"adapter": "osf"}, "continual": {"from": "s3://models/x/v1", "ewc": {}}}, set()),
        ({"method": {"prefix": {}}}, method_rule("method.prefix")),
        ({"method": {"adapter": "prefix", "lora": {"alpha": 4}}}, method_rule("method.lora")),
        (
            {"method": {"adapter": "prefix"}, "hyperparameters": {"packing": True}},
            spec_rule("hyperparameters.packing", "prefix"),
        ),
        ({"method": {"adapter": "prefix"}, "hyperparameters": {"packing": False}}, set()),
        ({"method": {"adapter": "prefix"}, "output": {"uri": "s3://models/x/", "formats": ["adapter"]}}, set()),
        (
            {"method": {"adapter": "prefix"}, "output": {"uri": "s3://models/x/", "formats": ["adapter", "merged"]}},
            spec_rule("output.formats"),
        ),
        ({"method": {"adapter": "lora"}, "output": {"uri": "s3://models/x/", "formats": ["gguf-q8_0"]}}, set()),
        ({"method": {"adapter": "ia3", "lora": {}}}, set()),
        ({"method": {"ia3": {"scale": 0.5}}}, method_rule("method.ia3")),
        ({"method": {"adapter": "dora", "ia3": {}}}, method_rule("method.ia3")),
        ({"method": {"adapter": "ia3", "lora": {"r": 4}}}, method_rule("method.lora")),
        ({"method": {"adapter": "ia3", "lora": {"scaling": "rslora"}}}, method_rule("method.lora")),
        (
            {"method": {"adapter": "ia3", "ia3": {"feedforwardModules": ["down_proj"]}}},
            method_rule("method.ia3.feedforwardModules"),
        ),
        (
            {"method": {"adapter": "ia3", "ia3": {"targetModules": ["k_proj"], "feedforwardModules": ["down_proj"]}}},
            method_rule("method.ia3.feedforwardModules"),
        ),
        (
            {"method": {"adapter": "ia3", "ia3": {"targetModules": ["k_proj", "fc"], "feedforwardModules": ["fc"]}}},
            set(),
        ),
        (
            {"method": {"adapter": "ia3", "ia3": {"targetModules": ["all-linear"], "feedforwardModules": ["fc"]}}},
            set(),
        ),
        ({"method": {"objective": "dpo", "dpo": {"beta": 0.2, "loss": "ipo"}}}, set()),
        ({"method": {"objective": "orpo", "orpo": {"beta": 0.2}}}, set()),
        ({"method": {"dpo": {"beta": 0.2}}}, method_rule("method.dpo")),
        ({"method": {"objective": "orpo", "dpo": {}}}, method_rule("method.dpo")),
        ({"method": {"objective": "sft", "orpo": {}}}, method_rule("method.orpo")),
        ({"method": {"objective": "dpo"}, **sources({"format": "preference"}, {"evalOnly": True})}, set()),
        (sources({"format": "preference"}), spec_rule("method.objective", "pairs")),
        (
            {"method": {"objective": "sft"}, **sources({}, {"format": "preference"})},
            spec_rule("method.objective", "pairs"),
        ),
        ({"method": {"objective": "dpo"}, **sources({}, {"format": "chat"})}, spec_rule("dataset.sources")),
        (
            {"method": {"objective": "orpo"}, "hyperparameters": {"packing": True}},
            spec_rule("hyperparameters.packing", "dpo and orpo"),
        ),
        ({"method": {"objective": "orpo"}, "hyperparameters": {"packing": False}}, set()),
        ({"method": {"objective": "distill", "distill": {"teacher": "builtin://smollm2-135m-instruct"}}}, set()),
        (
            {
                "method": {
                    "objective": "distill",
                    "distill": {"teacher": "s3://models/x/v1", "temperature": 4, "alpha": 1, "mode": "sequence"},
                },
                "hyperparameters": {"packing": True},
            },
            set(),
        ),
        (
            {"method": {"distill": {"teacher": "s3://models/teacher"}}},
            method_rule("method.distill", "set method.objective"),
        ),
        (
            {"method": {"objective": "sft", "distill": {"teacher": "s3://models/teacher"}}},
            method_rule("method.distill", "set method.objective"),
        ),
        ({"method": {"objective": "distill"}}, method_rule("method.distill", "set method.distill.teacher")),
        (
            {
                "method": {"objective": "distill", "distill": {"teacher": "s3://models/teacher"}},
                **sources({"format": "preference"}),
            },
            spec_rule("method.objective", "pairs of answers"),
        ),
        (
            {
                "method": {"objective": "distill", "distill": {"teacher": "s3://models/teacher"}},
                **sources({"format": "auto"}),
            },
            set(),
        ),
        (continual(ewc={}), set()),
        (continual(ewc={"lambda": 50}, replayFraction=0.1), set()),
        (continual(replayFraction=0), set()),
        (continual(ewc={}, replayFraction=0), set()),  # a published Fisher needs no replay: checked at run time
        ({"continual": {"ewc": {}}}, {("continual.ewc", CONTINUAL_RULES[".ewc"])}),
        ({"privacy": {"targetEpsilon": 8}}, set()),
        ({"privacy": {"targetEpsilon": 1, "delta": 1e-6, "maxGradNorm": 0.5}, "method": {"type": "qlora"}}, set()),
        ({"privacy": {"targetEpsilon": 8}, "method": {"adapter": "dora"}}, spec_rule("method.adapter", "privacy")),
        ({"privacy": {"targetEpsilon": 8}, "method": {"type": "full"}}, spec_rule("method.adapter", "privacy")),
        ({"privacy": {"targetEpsilon": 8}, "resources": {"gpus": 2}}, spec_rule("resources.gpus", "privacy")),
        (
            {"privacy": {"targetEpsilon": 8}, "hyperparameters": {"packing": True}},
            spec_rule("hyperparameters.packing", "privacy"),
        ),
        ({"privacy": {"targetEpsilon": 8}, "hyperparameters": {"packing": False, "earlyStoppingPatience": 0}}, set()),
        (
            {"privacy": {"targetEpsilon": 8}, "hyperparameters": {"gradientCheckpointing": True}},
            spec_rule("hyperparameters.gradientCheckpointing", "privacy"),
        ),
        (
            {"privacy": {"targetEpsilon": 8}, "hyperparameters": {"earlyStoppingPatience": 2}},
            spec_rule("hyperparameters.earlyStoppingPatience", "privacy"),
        ),
        (
            {"privacy": {"targetEpsilon": 8}, "method": {"objective": "dpo"}, **sources({"format": "preference"})},
            spec_rule("method.objective", "privacy"),
        ),
        (
            {"privacy": {"targetEpsilon": 8}, "continual": {"from": "s3://models/x/v1"}},
            spec_rule("continual", "privacy"),
        ),
        ({"privacy": {"targetEpsilon": 8}, "continual": {"from": "s3://models/x/v1", "replayFraction": 0}}, set()),
        (
            {
                "privacy": {"targetEpsilon": 8},
                "continual": {"from": "s3://models/x/v1", "replayFraction": 0, "ewc": {}},
            },
            spec_rule("continual", "privacy"),
        ),
        (
            {"privacy": {"targetEpsilon": 8}, "continual": {"publishFisher": True, "replayFraction": 0}},
            spec_rule("continual", "privacy"),
        ),
        ({"continual": {"publishFisher": True}}, set()),
        ({"continual": {"publishFisher": True}, "method": {"adapter": "dora"}}, set()),
        (
            {"continual": {"publishFisher": True}, "method": {"adapter": "bottleneck"}},
            spec_rule("continual.publishFisher"),
        ),
        (
            {
                "continual": {"publishFisher": True},
                "method": {"objective": "orpo"},
                **sources({"format": "preference"}),
            },
            spec_rule("continual.publishFisher"),
        ),
        (
            {**continual(ewc={}), "method": {"objective": "dpo"}, **sources({"format": "preference"})},
            spec_rule("continual.ewc"),
        ),
        ({**continual(), "method": {"objective": "dpo"}, **sources({"format": "preference"})}, set()),
        ({"method": {"objective": "sft"}, "hyperparameters": {"packing": True}}, set()),
        (sources({}, {"evalOnly": True}), set()),
        (sources({"trainOnly": True}, {"evalOnly": True}), set()),
        (sources({}, {"evalOnly": True, "trainOnly": True}), source_rule(1, "evalOnly")),
        (sources({}, {"evalOnly": True, "weight": 2.0}), source_rule(1, "weight")),
        (sources({"weight": 2.0}, {"evalOnly": True, "weight": 1}), set()),
        (sources({"evalOnly": True}), {("dataset.sources", DATASET_RULES["sources"])}),
        (split(0.45, 0.45), spec_rule("dataset.split")),
        (split(0.5, 0.4), spec_rule("dataset.split")),
        (split(0.4, 0.4), set()),
        (split(0.0, 0.0), set()),
        (split(0, 0.5), set()),  # a YAML integer in a number field
        ({"evaluation": {"gate": {"metric": "bleu"}}}, spec_rule("evaluation.gate.metric")),
        ({"evaluation": {"gate": {"metric": "rougeL"}}}, set()),  # among the default metrics
        ({"evaluation": {"metrics": ["bleu"], "gate": {"metric": "bleu"}}}, set()),
        (data(curation={"minTokens": 100, "maxTokens": 50}), spec_rule("dataset.curation.minTokens")),
        (data(curation={"minTokens": 50, "maxTokens": 50}), set()),
        (
            {"hyperparameters": {"sequenceLength": 32}, **data(curation={"minTokens": 33})},
            spec_rule("hyperparameters.sequenceLength"),
        ),
        ({"hyperparameters": {"sequenceLength": 32}}, set()),
        (
            {"hyperparameters": {"earlyStoppingPatience": 2}, **split(0, 0.1)},
            spec_rule("hyperparameters.earlyStoppingPatience", "validation split"),
        ),
        ({"hyperparameters": {"earlyStoppingPatience": 0}, **split(0, 0.1)}, set()),
        ({"hyperparameters": {"earlyStoppingPatience": 2}}, set()),
        (tolerations({"key": "gpu", "operator": "Exists", "value": "x"}), toleration_rule(0, "value")),
        (tolerations({"key": "gpu", "operator": "Exists"}, {"value": "x"}), toleration_rule(1, "operator")),
        (tolerations({"operator": "Exists"}), set()),
        (tolerations({"key": "a", "tolerationSeconds": 5}), toleration_rule(0, "effect")),
        (tolerations({"key": "a", "effect": "NoExecute", "tolerationSeconds": 5}), set()),
        ({"resources": {"memory": "8Gi"}, "storage": {"shmSize": "8Gi"}}, set()),
        ({"resources": {"memory": "8Gi"}, "storage": {"shmSize": "8193Mi"}}, spec_rule("storage.shmSize")),
        ({"resources": {"memory": "8G"}, "storage": {"shmSize": "7.5Gi"}}, spec_rule("storage.shmSize")),
    ],
)
def test_cross_field_rules_agree_with_the_model(change: dict[str, Any], broken: set[tuple[str, str]]) -> None:
    spec = {**copy.deepcopy(MINIMAL), **change}
    assert set(cel_violations(spec_schema(), defaulted(spec))) == broken, "CEL"
    assert model_problems(spec) == broken, "pydantic"


def update_violations(old: dict[str, Any], new: dict[str, Any]) -> list[tuple[str, str]]:
    return cel_violations(spec_schema(), defaulted(new), defaulted(old))


def test_changing_suspend_is_allowed() -> None:
    assert update_violations(MINIMAL, {**MINIMAL, "suspend": True}) == []
    assert update_violations({**MINIMAL, "suspend": True}, {**MINIMAL, "suspend": False}) == []
    assert update_violations(MINIMAL, copy.deepcopy(MINIMAL)) == [], "an unchanged spec passes"


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"dataset": {"sources": [{"uri": "s3://data/other.jsonl"}]}}, "dataset"),
        ({"hyperparameters": {"epochs": 5}}, "hyperparameters"),
        ({"output": {"uri": "s3://models/elsewhere/"}}, "output"),
        ({"backoffLimit": 0}, "backoffLimit"),
    ],
)
def test_changing_any_other_field_is_refused_at_that_field(change: dict[str, Any], field: str) -> None:
    violations = update_violations(MINIMAL, {**MINIMAL, **change, "suspend": True})
    assert violations == [(field, f"spec.{field} is immutable; only spec.suspend may change")]


@pytest.mark.parametrize("field", ["queueName", "image", "serviceAccountName"])
def test_adding_or_removing_an_optional_field_is_refused(field: str) -> None:
    with_field = {**MINIMAL, field: "late-addition"}
    for old, new in ((MINIMAL, with_field), (with_field, MINIMAL)):
        violations = update_violations(old, new)
        assert [path for path, _ in violations] == [""], violations
        assert "cannot be added or removed" in violations[0][1]
