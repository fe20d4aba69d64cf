"""The defaults the API server applies from the CRD are the pydantic models' defaults."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from kubetune.api.v1alpha1 import FineTuneJobSpec
from tests.api.schema_tools import apply_defaults, spec_schema
from tests.builders import minimal_spec

MINIMAL: dict[str, Any] = minimal_spec()


@pytest.mark.parametrize(
    "spec",
    [
        MINIMAL,
        {**MINIMAL, "evaluation": {"gate": {}}},
        {**MINIMAL, "s3": {"credentialsSecret": {"name": "creds"}, "caBundle": {"name": "ca"}}},
        {**MINIMAL, "storage": {"pvc": {"claimName": "scratch"}}, "method": {"lora": {"r": 8}}},
    ],
    ids=["minimal", "gate", "s3-refs", "pvc-and-lora"],
)
def test_crd_defaults_equal_the_model_defaults(spec: dict[str, Any]) -> None:
    defaulted = apply_defaults(spec_schema(), copy.deepcopy(spec))
    assert defaulted == FineTuneJobSpec.model_validate(spec).to_manifest()


def test_defaulting_fills_nested_objects_left_out() -> None:
    defaulted = apply_defaults(spec_schema(), copy.deepcopy(MINIMAL))
    assert defaulted["dataset"]["split"] == {"validation": 0.1, "test": 0.1, "seed": "kubetune"}
    assert defaulted["dataset"]["sources"][0]["format"] == "auto"
    assert defaulted["evaluation"]["metrics"] == ["perplexity", "rougeL"]
    assert "gate" not in defaulted["evaluation"], "an optional object without a default stays absent"
