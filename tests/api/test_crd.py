"""The CRD in crds/ and the pydantic API models cannot drift apart.

CRD schemas are OpenAPI v3.0, whose keywords follow JSON Schema draft 4 (boolean
``exclusiveMinimum``), hence ``Draft4Validator``.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from kubetune.api.crd import build_crd, crd_paths, render_crd_yaml
from kubetune.api.manifest import ManifestError, load_manifest, parse_spec
from kubetune.api.v1alpha1 import FineTuneJobSpec

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = sorted((ROOT / "examples").glob("*.yaml"))
MINIMAL = {"dataset": {"sources": [{"uri": "s3://data/x.jsonl"}]}, "output": {"uri": "s3://models/x/"}}


def crd_schema(part: str = "spec") -> dict[str, Any]:
    crd = yaml.safe_load((ROOT / "crds" / "kubetune.dev_finetunejobs.yaml").read_text())
    return dict(crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"][part])


def test_committed_crds_are_generated_from_the_models() -> None:
    for path in crd_paths(ROOT):
        assert path.read_text() == render_crd_yaml(), f"{path} is stale: run python -m kubetune.api.crd"


def walk(node: dict[str, Any], path: str = "") -> list[tuple[str, dict[str, Any]]]:
    found = [(path, node)]
    for name, child in (node.get("properties") or {}).items():
        found += walk(child, f"{path}.{name}")
    if isinstance(node.get("items"), dict):
        found += walk(node["items"], f"{path}[]")
    if isinstance(node.get("additionalProperties"), dict):
        found += walk(node["additionalProperties"], f"{path}{{}}")
    return found


def test_schema_is_structural() -> None:
    schema = build_crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    for path, node in walk(schema):
        assert "$ref" not in node, path
        for union in ("anyOf", "oneOf", "allOf"):
            assert union not in node, f"{path}: {union} is not structural"
        assert (
            "type" in node or node.get("x-kubernetes-preserve-unknown-fields") or node.get("x-kubernetes-int-or-string")
        ), f"{path} has no type"
        assert not ("properties" in node and "additionalProperties" in node), path
        if "default" in node and node["type"] != "object":
            jsonschema.Draft4Validator({k: v for k, v in node.items() if not k.startswith("x-")}).validate(
                node["default"]
            )


def apply_defaults(node: dict[str, Any], value: Any) -> Any:
    """What the API server's defaulting does: fill absent properties with their defaults, recursively."""
    if node.get("type") == "object" and isinstance(value, dict):
        value = dict(value)
        for name, child in (node.get("properties") or {}).items():
            if name not in value and "default" in child:
                value[name] = copy.deepcopy(child["default"])
            if name in value:
                value[name] = apply_defaults(child, value[name])
    if node.get("type") == "array" and isinstance(value, list):
        return [apply_defaults(node["items"], item) for item in value]
    return value


def test_crd_defaults_equal_the_model_defaults() -> None:
    defaulted = apply_defaults(crd_schema(), MINIMAL)
    assert defaulted == FineTuneJobSpec.model_validate(MINIMAL).to_manifest()


BAD_SPECS: list[tuple[dict[str, Any], str]] = [
    ({"method": {"type": "ppo"}}, "method.type"),
    ({"hyperparameters": {"learningRate": 0}}, "hyperparameters.learningRate"),
    ({"hyperparameters": {"batchSize": 0}}, "hyperparameters.batchSize"),
    ({"dataset": {"sources": []}}, "dataset.sources"),
    ({"dataset": {"sources": [{"uri": "ftp://x/y"}]}}, "dataset.sources[0].uri"),
    ({"dataset": {"sources": [{"uri": "s3://data/x", "format": "xml"}]}}, "dataset.sources[0].format"),
    ({"output": {"uri": "s3://models/x/", "formats": ["onnx"]}}, "output.formats[0]"),
    ({"resources": {"gpus": -1}}, "resources.gpus"),
    ({"resources": {"memory": "lots"}}, "resources.memory"),
    ({"evaluation": {"gate": {"metric": "perplexity", "minImprovement": -0.1}}}, "evaluation.gate.minImprovement"),
    ({"s3": {"credentialsSecret": {"name": "Not_A_Name"}}}, "s3.credentialsSecret.name"),
    ({"unknownField": 1}, "unknownField"),
]


def json_path(error: jsonschema.ValidationError) -> str:
    text = ""
    for part in error.absolute_path:
        text += f"[{part}]" if isinstance(part, int) else f".{part}"
    return text.lstrip(".")


@pytest.mark.parametrize(("change", "field"), BAD_SPECS)
def test_bad_specs_are_rejected_by_both_at_the_same_field(change: dict[str, Any], field: str) -> None:
    spec = {**copy.deepcopy(MINIMAL), **change}
    with pytest.raises(ManifestError) as raised:
        parse_spec(spec)
    assert any(path.startswith(f"spec.{field}") for path, _ in raised.value.problems), raised.value.problems
    schema = {**crd_schema(), "additionalProperties": False}  # the API server prunes/rejects unknown fields
    errors = list(jsonschema.Draft4Validator(schema).iter_errors(spec))
    assert errors, "the CRD schema accepted a spec the model rejects"
    assert any(json_path(e).startswith(field) or field in e.message for e in errors), [json_path(e) for e in errors]


def test_every_example_validates_against_model_and_crd() -> None:
    assert EXAMPLES, "examples/ must hold at least one FineTuneJob"
    validator = jsonschema.Draft4Validator(crd_schema())
    for path in EXAMPLES:
        job = load_manifest(path)
        document = next(d for d in yaml.safe_load_all(path.read_text()) if d)
        errors = [f"{json_path(e)}: {e.message}" for e in validator.iter_errors(document["spec"])]
        assert not errors, f"{path}: {errors}"
        assert (
            job.spec.to_manifest()
            == FineTuneJobSpec.model_validate(apply_defaults(crd_schema(), document["spec"])).to_manifest()
        )


# ----------------------------------------------------------------------------- CEL rules


def cel(rule: str, self_value: Any, old_value: Any = None) -> bool:
    import celpy

    env = celpy.Environment()
    program = env.program(env.compile(rule))
    activation = {"self": celpy.json_to_cel(self_value)}
    if old_value is not None:
        activation["oldSelf"] = celpy.json_to_cel(old_value)
    return bool(program.evaluate(activation))


def spec_rules() -> list[dict[str, str]]:
    return [r for r in crd_schema().get("x-kubernetes-validations", []) if "oldSelf" not in r["rule"]]


@pytest.mark.parametrize(
    "change",
    [
        {},
        {"method": {"type": "qlora"}, "resources": {"gpus": 0}},
        {"method": {"type": "qlora", "allowCpuQlora": True}, "resources": {"gpus": 0}},
        {"method": {"type": "qlora"}, "resources": {"gpus": 1}},
        {"dataset": {"sources": [{"uri": "s3://data/x"}], "split": {"validation": 0.45, "test": 0.45}}},
        {"dataset": {"sources": [{"uri": "s3://data/x"}], "split": {"validation": 0.3, "test": 0.3}}},
    ],
)
def test_cel_cross_field_rules_agree_with_the_model(change: dict[str, Any]) -> None:
    spec = apply_defaults(crd_schema(), {**copy.deepcopy(MINIMAL), **change})
    cel_ok = all(cel(rule["rule"], spec) for rule in spec_rules())
    try:
        parse_spec(spec)
        model_ok = True
    except ManifestError:
        model_ok = False
    assert cel_ok == model_ok


def transition_ok(old: dict[str, Any], new: dict[str, Any]) -> bool:
    """Evaluate every transition rule (on spec and each of its properties) as the API server would."""
    schema = crd_schema()
    old = apply_defaults(schema, old)
    new = apply_defaults(schema, new)
    for rule in schema.get("x-kubernetes-validations", []):
        if "oldSelf" in rule["rule"] and not cel(rule["rule"], new, old):
            return False
    for name, prop in schema["properties"].items():
        for rule in prop.get("x-kubernetes-validations", []):
            if name in old and name in new and not cel(rule["rule"], new[name], old[name]):
                return False
    return True


def test_spec_is_immutable_except_suspend() -> None:
    base = copy.deepcopy(MINIMAL)
    assert transition_ok(base, {**base, "suspend": True})
    changed_data = {**base, "dataset": {"sources": [{"uri": "s3://data/other.jsonl"}]}}
    assert not transition_ok(base, changed_data)
    assert not transition_ok(base, {**base, "hyperparameters": {"epochs": 5}})
    assert not transition_ok(base, {**base, "queueName": "late-queue"}), "adding an optional field is a change too"
