"""Test builders for the objects many tests need: a minimal FineTuneJob spec, as a dict or parsed."""

from __future__ import annotations

import copy
from typing import Any

from kubetune.api.manifest import parse_spec
from kubetune.api.v1alpha1 import FineTuneJobSpec

_MINIMAL_SPEC: dict[str, Any] = {
    "dataset": {"sources": [{"uri": "s3://data/x.jsonl"}]},
    "output": {"uri": "s3://models/x/"},
}


def minimal_spec(**fields: Any) -> dict[str, Any]:
    """The smallest valid spec (camelCase, as in a manifest), a fresh copy, with ``fields`` set on top."""
    return {**copy.deepcopy(_MINIMAL_SPEC), **copy.deepcopy(fields)}


def spec(**fields: Any) -> FineTuneJobSpec:
    """:func:`minimal_spec` parsed as the API parses a manifest."""
    return parse_spec(minimal_spec(**fields))


VERSION = "v20261204-101500-0a1b2c"
"""A version name as the trainer makes them (``kubetune.api.contract.VERSION_PATTERN``)."""


def trainer_result(version: str = VERSION, *, promoted: bool = True) -> dict[str, Any]:
    """``status.result`` as a trainer writes it when it has published ``version`` (camelCase): every
    gate check passed when ``promoted``, the task check missed otherwise."""
    task = {
        "name": "task",
        "passed": promoted,
        "detail": "accuracy 0.40 -> 0.90: " + ("passed" if promoted else "missed"),
    }
    checks = [task, {"name": "forgetting.knownAnswers", "passed": True, "detail": "known answers 41% -> 42%"}]
    return {
        "version": version,
        "manifestUri": f"s3://models/x/{version}/manifest.json",
        "promoted": promoted,
        "qualityGateMessage": ("promoted: " if promoted else "not promoted: ") + task["detail"],
        "gateChecks": checks,
    }
