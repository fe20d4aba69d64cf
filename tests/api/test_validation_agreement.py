"""The CRD's OpenAPI schema and the pydantic models accept and reject the same specs, at the same fields."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml

from kubetune.api.manifest import ManifestError, load_manifest, parse_spec
from tests.api.schema_tools import ROOT, apply_defaults, cel_violations, root_schema, schema_errors, spec_schema
from tests.builders import minimal_spec

EXAMPLES = sorted((ROOT / "examples").glob("*.yaml"))
MINIMAL: dict[str, Any] = minimal_spec()
GOOD_CHANGES: dict[str, dict[str, Any]] = {
    "minimal": {},
    "builtin-lora-cpu": {"method": {"type": "lora"}, "resources": {"gpus": 0, "cpu": "500m", "memory": "4Gi"}},
    "everything-auto-spelled-out": {
        "hyperparameters": {"epochs": 1.5, "learningRate": 0.0002, "lrScheduler": "linear", "packing": True},
        "evaluation": {"metrics": ["bleu", "f1"], "gate": {"metric": "f1", "minImprovement": 0}, "maxExamples": 10},
        "checkpoint": {"everySteps": 1, "uri": "file:///scratch/ckpt"},
        "storage": {"pvc": {"claimName": "scratch"}, "shmSize": "1Gi"},
        "s3": {"endpoint": "http://minio:9000", "forcePathStyle": True, "credentialsSecret": {"name": "s3"}},
        "dataset": {
            "sources": [{"uri": "s3://data/x.csv", "columnMapping": {"prompt": "q"}, "weight": 0.5}],
            "split": {"validation": 0.0, "test": 0.5},
        },
    },
}
BAD_CHANGES: dict[str, tuple[dict[str, Any], set[str]]] = {
    "unknown-method": ({"method": {"type": "ppo"}}, {"method.type"}),
    "zero-learning-rate": ({"hyperparameters": {"learningRate": 0}}, {"hyperparameters.learningRate"}),
    "zero-batch": ({"hyperparameters": {"batchSize": 0}}, {"hyperparameters.batchSize"}),
    "no-sources": ({"dataset": {"sources": []}}, {"dataset.sources"}),
    "ftp-source": ({"dataset": {"sources": [{"uri": "ftp://x/y"}]}}, {"dataset.sources[0].uri"}),
    "source-without-uri": ({"dataset": {"sources": [{"format": "chat"}]}}, {"dataset.sources[0].uri"}),
    "xml-format": (
        {"dataset": {"sources": [{"uri": "s3://data/x", "format": "xml"}]}},
        {"dataset.sources[0].format"},
    ),
    "onnx-output": ({"output": {"uri": "s3://models/x/", "formats": ["onnx"]}}, {"output.formats[0]"}),
    "no-output": ({"output": None}, {"output"}),
    "negative-gpus": ({"resources": {"gpus": -1}}, {"resources.gpus"}),
    "memory-words": ({"resources": {"memory": "lots"}}, {"resources.memory"}),
    "bad-toleration": ({"resources": {"tolerations": [{"operator": "Maybe"}]}}, {"resources.tolerations[0].operator"}),
    "negative-gate": (
        {"evaluation": {"gate": {"metric": "perplexity", "minImprovement": -0.1}}},
        {"evaluation.gate.minImprovement"},
    ),
    "no-metrics": ({"evaluation": {"metrics": []}}, {"evaluation.metrics"}),
    "secret-name": ({"s3": {"credentialsSecret": {"name": "Not_A_Name"}}}, {"s3.credentialsSecret.name"}),
    "long-seed": (
        {"dataset": {"sources": [{"uri": "s3://data/x"}], "split": {"seed": "s" * 65}}},
        {"dataset.split.seed"},
    ),
    "short-deadline": ({"activeDeadlineSeconds": 10}, {"activeDeadlineSeconds"}),
    "unknown-field": ({"unknownField": 1}, {"unknownField"}),
    "unknown-nested-field": ({"method": {"loraa": {"r": 8}}}, {"method.loraa"}),
    "two-bad-fields": (
        {"backoffLimit": 99, "checkpoint": {"everySteps": 0}},
        {"backoffLimit", "checkpoint.everySteps"},
    ),
}
# Pydantic's lax mode turns "2" into 2.0 and "yes" into true; the API server refuses both.
COERCED_CHANGES: dict[str, tuple[dict[str, Any], set[str]]] = {
    "epochs-as-text": ({"hyperparameters": {"epochs": "2"}}, {"hyperparameters.epochs"}),
    "suspend-as-text": ({"suspend": "yes"}, {"suspend"}),
    "integer-as-text": ({"backoffLimit": "3"}, {"backoffLimit"}),
}


def spec_with(change: dict[str, Any]) -> dict[str, Any]:
    spec = {**copy.deepcopy(MINIMAL), **change}
    return {key: value for key, value in spec.items() if value is not None}


def model_error_paths(spec: dict[str, Any]) -> set[str]:
    try:
        parse_spec(spec)
    except ManifestError as err:
        return {path.removeprefix("spec").lstrip(".") for path, _ in err.problems}
    return set()


@pytest.mark.parametrize("name", GOOD_CHANGES)
def test_good_specs_are_accepted_by_both(name: str) -> None:
    spec = spec_with(GOOD_CHANGES[name])
    assert schema_errors(spec_schema(), spec) == {}
    assert cel_violations(spec_schema(), apply_defaults(spec_schema(), spec)) == []
    assert model_error_paths(spec) == set()


def assert_rejected_by_both_at(spec: dict[str, Any], fields: set[str]) -> None:
    assert model_error_paths(spec) == fields, "pydantic"
    assert set(schema_errors(spec_schema(), spec)) == fields, "CRD schema"


@pytest.mark.parametrize("name", BAD_CHANGES)
def test_bad_specs_are_rejected_by_both_at_the_same_fields(name: str) -> None:
    change, fields = BAD_CHANGES[name]
    assert_rejected_by_both_at(spec_with(change), fields)


@pytest.mark.parametrize("name", COERCED_CHANGES)
def test_mistyped_scalars_are_rejected_by_both(name: str) -> None:
    change, fields = COERCED_CHANGES[name]
    assert_rejected_by_both_at(spec_with(change), fields)


def example_document(path: Path) -> dict[str, Any]:
    documents = [doc for doc in yaml.safe_load_all(path.read_text()) if doc]
    (job,) = [doc for doc in documents if doc.get("kind") == "FineTuneJob"]
    return dict(job)


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.name for p in EXAMPLES])
def test_example_manifest_is_accepted_by_model_crd_and_cel(path: Path) -> None:
    document = example_document(path)
    assert schema_errors(root_schema(), document) == {}
    defaulted = apply_defaults(root_schema(), document)
    assert cel_violations(root_schema(), defaulted) == []
    model_spec = load_manifest(path).spec.to_manifest()
    assert parse_spec(defaulted["spec"]).to_manifest() == model_spec, "the server's defaults change the job"


def test_there_are_examples() -> None:
    assert EXAMPLES, "examples/ must hold at least one FineTuneJob manifest"
