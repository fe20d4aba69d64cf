"""Generate the CRDs (FineTuneJob, DriftMonitor) from the pydantic models of the API.

Kubernetes wants a *structural* OpenAPI v3 schema: every node typed, no ``$ref``, no
``anyOf`` unions, ``exclusiveMinimum`` as a boolean. Pydantic emits JSON Schema 2020-12, so
this module rewrites one into the other. Run ``python -m kubetune.api.crd`` to refresh
``crds/`` and the Helm chart's copy; a test fails when either is stale.
"""

from __future__ import annotations

import argparse
import copy
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel

from kubetune.api import driftmonitor as monitor
from kubetune.api import v1alpha1 as api

CRD_FILENAME = "kubetune.dev_finetunejobs.yaml"  # the FineTuneJob CRD
# Spec fields that may change after creation; all others are immutable (CEL transition rules).
MUTABLE_SPEC_FIELDS = frozenset({"suspend"})

PRINTER_COLUMNS: list[dict[str, Any]] = [
    {"name": "Phase", "type": "string", "jsonPath": ".status.phase"},
    {"name": "Progress", "type": "string", "jsonPath": ".status.progressText"},
    {"name": "Loss", "type": "number", "jsonPath": ".status.progress.trainLoss"},
    {"name": "ETA-Seconds", "type": "integer", "jsonPath": ".status.progress.etaSeconds"},
    {"name": "Eval-Loss", "type": "number", "jsonPath": ".status.progress.evalLoss", "priority": 1},
    {"name": "Job", "type": "string", "jsonPath": ".status.jobName", "priority": 1},
    {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
]

_DROPPED_KEYS = {"title", "$defs", "additionalProperties", "const", "exclusiveMinimum", "exclusiveMaximum"}


def _defaults_from_factories(model: type[BaseModel]) -> dict[str, Any]:
    """Defaults that pydantic leaves out of its schema because they come from a factory.

    A nested object defaults to ``{}`` so that the API server recurses into it and applies
    the inner fields' defaults when the user leaves the whole object out.
    """
    defaults: dict[str, Any] = {}
    for name, field in model.model_fields.items():
        if field.default_factory is None:
            continue
        value = field.default_factory()  # type: ignore[call-arg]
        alias = field.alias or name
        if isinstance(value, BaseModel):
            defaults[alias] = {}
        else:
            defaults[alias] = [v.value if hasattr(v, "value") else v for v in value]
    return defaults


def _structural(node: dict[str, Any], defs: dict[str, Any], models: dict[str, type[BaseModel]]) -> dict[str, Any]:
    """Rewrite one pydantic JSON-schema node into a structural Kubernetes schema node."""
    if "$ref" in node:
        name = node["$ref"].rsplit("/", 1)[-1]
        merged = {**copy.deepcopy(defs[name]), **{k: v for k, v in node.items() if k != "$ref"}}
        merged["__model__"] = name
        return _structural(merged, defs, models)

    if "oneOf" in node and "discriminator" in node:
        return _merged_union(node, defs, models)

    if "anyOf" in node:
        # Optional[X] is anyOf [X, null]: the field is simply optional in Kubernetes.
        variants = [v for v in node["anyOf"] if v.get("type") != "null"]
        if len(variants) != 1:
            raise ValueError(f"untyped union cannot be made structural: {node}")
        rest = {k: v for k, v in node.items() if k != "anyOf"}
        if rest.get("default", 0) is None:
            rest.pop("default")
        return _structural({**variants[0], **rest}, defs, models)

    out: dict[str, Any] = {}
    if "const" in node:
        out["type"] = "string"
        out["enum"] = [node["const"]]
    for key, value in node.items():
        if key in _DROPPED_KEYS or key.startswith("__"):
            continue
        out[key] = value
    if "exclusiveMinimum" in node:
        out["minimum"] = node["exclusiveMinimum"]
        out["exclusiveMinimum"] = True
    if "exclusiveMaximum" in node:
        out["maximum"] = node["exclusiveMaximum"]
        out["exclusiveMaximum"] = True

    node_type = node.get("type")
    if node_type == "object":
        if "properties" in node:
            out["properties"] = {k: _structural(v, defs, models) for k, v in node["properties"].items()}
            model = models.get(node.get("__model__", ""))
            if model is not None:
                for alias, default in _defaults_from_factories(model).items():
                    out["properties"][alias].setdefault("default", default)
        extra = node.get("additionalProperties")
        if isinstance(extra, dict) and extra:
            out["additionalProperties"] = _structural(extra, defs, models)
        elif extra is True or (isinstance(extra, dict) and not extra) or ("properties" not in node and extra is None):
            out["x-kubernetes-preserve-unknown-fields"] = True
    elif node_type == "array":
        out["items"] = _structural(node["items"], defs, models)
    elif node_type is None and "enum" not in out:
        raise ValueError(f"schema node without a type cannot be structural: {node}")
    return out


def _merged_union(node: dict[str, Any], defs: dict[str, Any], models: dict[str, type[BaseModel]]) -> dict[str, Any]:
    """A union told apart by a discriminator field, as one structural object: every member's
    properties, required where every member requires them, and a CEL rule per property only some
    members have (present exactly when the discriminator names one of those members)."""
    key = node["discriminator"]["propertyName"]
    members = [_structural(variant, defs, models) for variant in node["oneOf"]]
    values_of = [member["properties"][key]["enum"] for member in members]
    properties: dict[str, Any] = {}
    for member in members:
        for name, schema in member["properties"].items():
            known = properties.setdefault(name, schema)
            if known is not schema and "enum" in known and "enum" in schema:
                # The same enumerated field in several members (``method``): any member's value is valid.
                properties[name] = {**known, "enum": list(dict.fromkeys([*known["enum"], *schema["enum"]]))}
    properties[key] = {**properties[key], "enum": [v for values in values_of for v in values]}
    required = [name for name in properties if all(name in m.get("required", []) for m in members)]
    rules = []
    for name in properties:
        having = [
            v for member, values in zip(members, values_of, strict=True) if name in member["properties"] for v in values
        ]
        if len(having) < len(properties[key]["enum"]):
            rules.append(
                {
                    "rule": f"has(self.{name}) == (self.{key} in {having!r})",
                    "message": f"{name} is set exactly when {key} is one of {', '.join(having)}",
                }
            )
    merged: dict[str, Any] = {"type": "object", "properties": properties, "required": required}
    if "description" in node:
        merged["description"] = node["description"]
    if rules:
        merged["x-kubernetes-validations"] = rules
    return merged


def _all_models(root: type[BaseModel]) -> dict[str, type[BaseModel]]:
    """Every pydantic model reachable from ``root``, by the name its schema ``$defs`` use."""
    seen: dict[str, type[BaseModel]] = {}
    stack = [root]
    while stack:
        model = stack.pop()
        if model.__name__ in seen:
            continue
        seen[model.__name__] = model
        for field in model.model_fields.values():
            for arg in _type_args(field.annotation):
                if isinstance(arg, type) and issubclass(arg, BaseModel):
                    stack.append(arg)
    return seen


def _type_args(annotation: Any) -> list[Any]:
    args = [annotation]
    for sub in getattr(annotation, "__args__", ()) or ():
        args.extend(_type_args(sub))
    return args


def model_schema(model: type[BaseModel]) -> dict[str, Any]:
    """The structural schema of one API model, as the CRD embeds it."""
    raw = model.model_json_schema(by_alias=True, mode="validation")
    defs = raw.get("$defs", {})
    raw["__model__"] = model.__name__
    return _structural(raw, defs, _all_models(model))


@dataclass(frozen=True)
class Kind:
    """One custom resource kubetune serves: its models, names and how ``kubectl get`` shows it."""

    kind: str
    plural: str
    singular: str
    short_names: tuple[str, ...]
    spec: type[BaseModel]
    status: type[BaseModel]
    description: str
    printer_columns: list[dict[str, Any]]
    # Spec fields that may change after creation (CEL transition rules keep the others); None: all may.
    mutable_spec_fields: frozenset[str] | None

    @property
    def filename(self) -> str:
        return f"{api.GROUP}_{self.plural}.yaml"


FINETUNEJOB = Kind(
    kind=api.KIND,
    plural=api.PLURAL,
    singular=api.SINGULAR,
    short_names=tuple(api.SHORT_NAMES),
    spec=api.FineTuneJobSpec,
    status=api.FineTuneJobStatus,
    description="A fine-tuning run: base model + dataset + method in, evaluated and published model out.",
    printer_columns=PRINTER_COLUMNS,
    mutable_spec_fields=MUTABLE_SPEC_FIELDS,
)
DRIFTMONITOR = Kind(
    kind=monitor.KIND,
    plural=monitor.PLURAL,
    singular=monitor.SINGULAR,
    short_names=tuple(monitor.SHORT_NAMES),
    spec=monitor.DriftMonitorSpec,
    status=monitor.DriftMonitorStatus,
    description="A promotion channel watched for drift in production inputs, retrained and promoted on real drift.",
    printer_columns=[
        {"name": "Channel", "type": "string", "jsonPath": ".spec.target.channel"},
        {"name": "Champion", "type": "string", "jsonPath": ".status.champion"},
        {"name": "Verdict", "type": "string", "jsonPath": ".status.decision.verdict"},
        {"name": "Last-Check", "type": "date", "jsonPath": ".status.lastCheckTime"},
        {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
    ],
    mutable_spec_fields=None,
)
KINDS = (FINETUNEJOB, DRIFTMONITOR)


def _immutability_rules(spec_schema: dict[str, Any], mutable: frozenset[str]) -> None:
    """Spec is immutable after creation except ``mutable`` (CEL transition rules)."""
    allowed = ", ".join(f"spec.{name}" for name in sorted(mutable)) or "nothing"
    required = set(spec_schema.get("required", []))
    optional_checks = []
    for name, prop in spec_schema["properties"].items():
        if name in mutable:
            continue
        prop.setdefault("x-kubernetes-validations", []).append(
            {"rule": "self == oldSelf", "message": f"spec.{name} is immutable; only {allowed} may change"}
        )
        if name not in required and "default" not in prop:
            optional_checks.append(f"has(self.{name}) == has(oldSelf.{name})")
    if optional_checks:
        spec_schema.setdefault("x-kubernetes-validations", []).append(
            {
                "rule": " && ".join(optional_checks),
                "message": f"optional spec fields cannot be added or removed after creation; only {allowed} may change",
            }
        )


def build_crd(kind: Kind = FINETUNEJOB) -> dict[str, Any]:
    spec_schema = model_schema(kind.spec)
    if kind.mutable_spec_fields is not None:
        _immutability_rules(spec_schema, kind.mutable_spec_fields)
    status_schema = model_schema(kind.status)
    conditions = status_schema["properties"]["conditions"]
    conditions["x-kubernetes-list-type"] = "map"
    conditions["x-kubernetes-list-map-keys"] = ["type"]
    # kopf keeps its own bookkeeping under status.kopf; let it through pruning.
    status_schema["x-kubernetes-preserve-unknown-fields"] = True
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {
            "name": f"{kind.plural}.{api.GROUP}",
            "labels": {"app.kubernetes.io/name": "kubetune", "app.kubernetes.io/part-of": "kubetune"},
        },
        "spec": {
            "group": api.GROUP,
            "scope": "Namespaced",
            "names": {
                "kind": kind.kind,
                "listKind": f"{kind.kind}List",
                "plural": kind.plural,
                "singular": kind.singular,
                "shortNames": list(kind.short_names),
                "categories": ["kubetune"],
            },
            "versions": [
                {
                    "name": api.VERSION,
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": kind.printer_columns,
                    "schema": {
                        "openAPIV3Schema": {
                            "type": "object",
                            "description": kind.description,
                            "required": ["spec"],
                            "properties": {
                                "apiVersion": {"type": "string"},
                                "kind": {"type": "string"},
                                "metadata": {"type": "object"},
                                "spec": spec_schema,
                                "status": status_schema,
                            },
                        }
                    },
                }
            ],
        },
    }


def render_crd_yaml(kind: Kind = FINETUNEJOB) -> str:
    source = "api/" + kind.spec.__module__.replace(".", "/") + ".py"
    header = f"# Generated by `python -m kubetune.api.crd` from {source}. Do not edit.\n"
    return header + yaml.safe_dump(build_crd(kind), sort_keys=False, width=120)


def crd_paths(repo_root: Path, kind: Kind = FINETUNEJOB) -> list[Path]:
    return [repo_root / "crds" / kind.filename, repo_root / "helm" / "kubetune" / "crds" / kind.filename]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Write the CRDs generated from the API models.")
    parser.add_argument("--repo-root", type=Path, default=Path.cwd())
    parser.add_argument("--check", action="store_true", help="exit 1 if a written CRD differs instead of writing")
    args = parser.parse_args(argv)
    stale = []
    for kind in KINDS:
        text = render_crd_yaml(kind)
        for path in crd_paths(args.repo_root, kind):
            if args.check:
                if not path.exists() or path.read_text() != text:
                    stale.append(path)
                continue
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
    for path in stale:
        print(f"stale: {path} (run python -m kubetune.api.crd)", file=sys.stderr)
    return 1 if stale else 0


if __name__ == "__main__":
    raise SystemExit(main())
