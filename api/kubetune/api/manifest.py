"""Read FineTuneJob (and DriftMonitor) manifests with errors that say which field is wrong and why.

Every path a manifest takes (``kubetune validate``, ``kubetune run``, the trainer pod, the
operator) goes through :func:`parse_manifest` or :func:`parse_spec`, and the CRD is generated from
the same models, so each refuses the same manifests at the same fields. Field names are read by
their camelCase alias only, as the API server knows them.
"""

from __future__ import annotations

import difflib
import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar, get_args

from pydantic import BaseModel, ValidationError
from pydantic.alias_generators import to_camel

from kubetune.api import driftmonitor as monitor
from kubetune.api import v1alpha1 as api
from kubetune.api.driftmonitor import DriftMonitor, DriftMonitorSpec
from kubetune.api.rules import broken_rules
from kubetune.api.v1alpha1 import FineTuneJob, FineTuneJobSpec
from kubetune.api.yamldoc import MAX_MANIFEST_BYTES, Document, ManifestYamlError, load_documents


class ManifestError(ValueError):
    """A manifest that does not match the API. ``problems`` holds (field path, message) pairs; the
    path is empty for a problem of the file itself (its encoding, its YAML)."""

    def __init__(self, where: str, problems: list[tuple[str, str]], kind: str = api.KIND) -> None:
        self.where = where
        self.problems = problems
        lines = "\n".join(f"  {path}: {message}" if path else f"  {message}" for path, message in problems)
        super().__init__(f"{where}: invalid {kind}\n{lines}")


# What a pattern means, for the people who do not read regular expressions.
_STORAGE_URIS = "s3://bucket/path, gs://bucket/path, az://account/container/path"
_NO_PRESIGNED = (
    "with no '..' segment, query string (no presigned URLs or SAS tokens: credentials go in s3.credentialsSecret, "
    "gcs.credentialsSecret or azure.credentialsSecret) or fragment"
)
_PATTERN_MEANINGS = {
    api.MODEL_URI_PATTERN: (
        f"must be {_STORAGE_URIS}, file:///path, hf://owner/name[@revision] or one of "
        f"{', '.join('builtin://' + m for m in api.BUILTIN_MODELS)}, with no '..' segment, query string or fragment"
    ),
    api.SOURCE_URI_PATTERN: (
        f"must be {_STORAGE_URIS}, file:///path or hf://datasets/owner/name[@revision][/path], {_NO_PRESIGNED}"
    ),
    api.DATA_URI_PATTERN: f"must be {_STORAGE_URIS} or file:///path, {_NO_PRESIGNED}",
    api.WANDB_NAME_PATTERN: "must not contain / \\ # ? % : or control characters (W&B refuses them in names)",
    api.OCI_REPOSITORY_PATTERN: (
        "must be registry[:port]/path, the path in lower case (e.g. ghcr.io/my-org/tickets), with no scheme, tag "
        "or digest: each version is tagged with its own name"
    ),
    api.S3_ENDPOINT_PATTERN: (
        "must be http(s)://host[:port] with no user name, password, path or query "
        "(credentials go in s3.credentialsSecret)"
    ),
    api.MLFLOW_EXPERIMENT_PATTERN: "must be an MLflow experiment name: no control characters",
    api.MLFLOW_MODEL_PATTERN: "must be an MLflow registered model name: no '/', ':' or control characters",
    api.S3_REGION_PATTERN: "must be a region name such as us-east-1 (lower-case letters, digits and '-')",
    api.POSITIVE_QUANTITY_PATTERN: "must be a quantity greater than zero, such as 16Gi or 500M",
    api.POSITIVE_CPU_PATTERN: "must be a CPU quantity greater than zero, such as 4 or 500m",
    api.QUANTITY_PATTERN: "must be a quantity such as 16Gi",
    api.DNS_SUBDOMAIN_PATTERN: "must be a lower-case DNS name: letters, digits, '-' and '.'",
    api.DNS_LABEL_PATTERN: "must be a DNS label: lower-case letters, digits and '-', a letter or digit at both ends",
    api.LABEL_VALUE_PATTERN: "must be a label value: at most 63 characters of [-A-Za-z0-9_.], alphanumeric at both ends",
    api.QUALIFIED_NAME_PATTERN: "must be a label key: [prefix/]name, name at most 63 characters of [-A-Za-z0-9_.]",
    api.EXTENDED_RESOURCE_PATTERN: "must be an extended resource name such as nvidia.com/gpu (vendor domain/name)",
    api.IMAGE_PATTERN: "must be an image reference: [registry[:port]/]repository[:tag][@sha256:digest]",
    api.DATA_KEY_PATTERN: "must be a Secret or ConfigMap key: letters, digits, '-', '_' and '.'",
}
_DNS_SUBDOMAIN = re.compile(api.DNS_SUBDOMAIN_PATTERN)
_DNS_LABEL = re.compile(api.DNS_LABEL_PATTERN)
_LABEL_VALUE = re.compile(api.LABEL_VALUE_PATTERN)
_QUALIFIED_NAME = re.compile(api.QUALIFIED_NAME_PATTERN)
MAX_ANNOTATIONS_BYTES = 256 * 1024  # the API server's limit on all annotations of an object


def _as_json(document: Any) -> str:
    """Strict JSON-mode validation, like the API server's: "2" is not a number, "yes" not a
    boolean (lax mode would coerce both), while enums and quantities may be strings."""
    return json.dumps(document, default=str)


def _field_path(prefix: str, loc: tuple[int | str, ...]) -> str:
    path = prefix
    for part in loc:
        path += f"[{part}]" if isinstance(part, int) else f".{part}"
    return path.lstrip(".")


def _models_in(annotation: Any) -> list[type[BaseModel]]:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    found: list[type[BaseModel]] = []
    for arg in get_args(annotation):
        found.extend(_models_in(arg))
    return found


def _model_at(root: type[BaseModel], loc: tuple[int | str, ...]) -> type[BaseModel] | None:
    """The model class that validates the object at ``loc`` (list indexes and map keys skipped)."""
    model: type[BaseModel] | None = root
    for part in loc:
        if model is None:
            return None
        if isinstance(part, int) or part not in {f.alias or n for n, f in model.model_fields.items()}:
            continue
        field = next(f for n, f in model.model_fields.items() if (f.alias or n) == part)
        candidates = _models_in(field.annotation)
        model = candidates[0] if len(candidates) == 1 else None
    return model


def _unknown_field_message(root: type[BaseModel], loc: tuple[int | str, ...]) -> str:
    name = str(loc[-1])
    model = _model_at(root, loc[:-1])
    if model is None:
        return "unknown field"
    known = [field.alias or key for key, field in model.model_fields.items()]
    if to_camel(name) in known and to_camel(name) != name:
        return f"unknown field; the API spells it {to_camel(name)!r} (camelCase)"
    close = difflib.get_close_matches(name, known, n=1, cutoff=0.6)
    close = close or [k for k in known if k.lower() == name.lower()]
    hint = f"did you mean {close[0]!r}? " if close else ""
    return f"unknown field; {hint}known fields: {', '.join(known)}"


def _message(root: type[BaseModel], error: Any) -> str:
    if error["type"] == "extra_forbidden":
        return _unknown_field_message(root, tuple(error["loc"]))
    if error["type"] == "string_pattern_mismatch":
        meaning = _PATTERN_MEANINGS.get(str((error.get("ctx") or {}).get("pattern")))
        if meaning:
            return meaning
    return str(error["msg"]).removeprefix("Value error, ")


def validation_problems(err: ValidationError, prefix: str, root: type[BaseModel]) -> list[tuple[str, str]]:
    return [(_field_path(prefix, tuple(e["loc"])), _message(root, e)) for e in err.errors()]


Spec = TypeVar("Spec", FineTuneJobSpec, DriftMonitorSpec)


def _parse_spec(spec: Any, where: str, model: type[Spec], kind: str) -> Spec:
    if not isinstance(spec, dict):
        raise ManifestError(where, [("spec", "must be a mapping")], kind)
    try:
        parsed = model.model_validate_json(_as_json(spec), strict=True, by_alias=True, by_name=False)
    except ValidationError as err:
        raise ManifestError(where, validation_problems(err, "spec", model), kind) from err
    if problems := broken_rules(parsed, "spec"):
        raise ManifestError(where, problems, kind)
    return parsed


def parse_spec(spec: Any, where: str = "spec") -> FineTuneJobSpec:
    """Validate a FineTuneJob's ``spec`` as the operator receives it from the API server."""
    return _parse_spec(spec, where, FineTuneJobSpec, api.KIND)


def parse_monitor_spec(spec: Any, where: str = "spec") -> DriftMonitorSpec:
    """Validate a DriftMonitor's ``spec`` as the operator receives it from the API server."""
    return _parse_spec(spec, where, DriftMonitorSpec, monitor.KIND)


def _dns_problems(path: str, value: Any, *, label: bool) -> list[tuple[str, str]]:
    limit = 63 if label else 253
    pattern = _DNS_LABEL if label else _DNS_SUBDOMAIN
    if not isinstance(value, str):
        return [(path, "must be a string")]
    if not value or len(value) > limit or not pattern.match(value):
        kind = "a DNS label" if label else "a DNS subdomain"
        return [(path, f"must be {kind}: lower-case letters, digits and '-', at most {limit} characters")]
    return []


def _label_problems(path: str, labels: Any, *, values: bool) -> list[tuple[str, str]]:
    if labels is None:
        return []
    if not isinstance(labels, dict):
        return [(path, "must be a mapping")]
    problems: list[tuple[str, str]] = []
    for key, value in labels.items():
        if len(key) > 316 or not _QUALIFIED_NAME.match(key):  # a bad key is the map's problem, as for the API server
            problems.append((path, f"{key!r} {_PATTERN_MEANINGS[api.QUALIFIED_NAME_PATTERN]}"))
        if not isinstance(value, str):
            problems.append((path, f"the value of {key!r} must be a string"))
        elif values and (len(value) > 63 or not _LABEL_VALUE.match(value)):
            problems.append((path, f"{value!r} {_PATTERN_MEANINGS[api.LABEL_VALUE_PATTERN]}"))
    if not values and len(json.dumps(labels)) > MAX_ANNOTATIONS_BYTES:
        problems.append((path, f"annotations may hold at most {MAX_ANNOTATIONS_BYTES} bytes in all"))
    return problems


def metadata_problems(metadata: Any) -> list[tuple[str, str]]:
    """What the API server refuses in a FineTuneJob's metadata (its name, namespace, labels, annotations)."""
    if not isinstance(metadata, dict):
        return [("metadata", "must be a mapping with at least a name")]
    problems: list[tuple[str, str]] = []
    if "name" in metadata:
        problems += _dns_problems("metadata.name", metadata["name"], label=False)
    elif "generateName" in metadata:
        # The server appends five characters to the prefix and checks the result as a name.
        prefix = metadata["generateName"]
        problems += _dns_problems(
            "metadata.generateName", f"{prefix}x" if isinstance(prefix, str) else prefix, label=False
        )
    else:
        problems.append(("metadata.name", "required"))
    if "namespace" in metadata:
        problems += _dns_problems("metadata.namespace", metadata["namespace"], label=True)
    problems += _label_problems("metadata.labels", metadata.get("labels"), values=True)
    problems += _label_problems("metadata.annotations", metadata.get("annotations"), values=False)
    return problems


Object = TypeVar("Object", FineTuneJob, DriftMonitor)


def _parse_object(document: Any, where: str, model: type[Object]) -> Object:
    """A whole kubetune object: its metadata as the API server checks it, its spec with every rule."""
    kind = model.model_fields["kind"].default
    if not isinstance(document, dict):
        raise ManifestError(where, [("", "expected a YAML mapping with apiVersion, kind, metadata and spec")], kind)
    if "apiVersion" not in document:  # the model has a default for building objects in code; kubectl has none
        raise ManifestError(where, [("apiVersion", f"required: {api.API_VERSION}")], kind)
    try:
        parsed = model.model_validate_json(_as_json(document), strict=True, by_alias=True, by_name=False)
    except ValidationError as err:
        problems = validation_problems(err, "", model)
        problems += [p for p in metadata_problems(document.get("metadata")) if p[0] not in dict(problems)]
        raise ManifestError(where, problems, kind) from err
    problems = metadata_problems(document.get("metadata")) + broken_rules(parsed.spec, "spec")
    if problems:
        raise ManifestError(where, problems, kind)
    return parsed


def parse_manifest(document: Any, where: str = "<manifest>") -> FineTuneJob:
    return _parse_object(document, where, FineTuneJob)


def parse_drift_monitor(document: Any, where: str = "<manifest>") -> DriftMonitor:
    return _parse_object(document, where, DriftMonitor)


_PARSERS: dict[str, Callable[[Any, str], FineTuneJob | DriftMonitor]] = {
    api.KIND: parse_manifest,
    monitor.KIND: parse_drift_monitor,
}


def _read_documents(path: Path) -> list[Document]:
    try:
        with path.open("rb") as stream:
            data = stream.read(MAX_MANIFEST_BYTES + 1)
    except OSError as err:
        raise ManifestError(str(path), [("", f"cannot read: {err.strerror or err}")]) from err
    try:
        documents = list(load_documents(data))
    except ManifestYamlError as err:
        where = f"{path}:{err.line}" + (f":{err.column}" if err.column else "") if err.line else str(path)
        raise ManifestError(where, [("", str(err).split(": ", 1)[-1] if err.line else str(err))]) from err
    for document in documents:
        if not isinstance(document.data, dict):
            raise ManifestError(
                f"{path}:{document.line}", [("", "a document must be a Kubernetes object (a mapping with kind)")]
            )
    return documents


def _the_one(path: Path, kinds: tuple[str, ...]) -> tuple[dict[str, Any], str]:
    """The one document of ``kinds`` in the file, and where it is (the file, with its line when the
    file holds several documents)."""
    documents = _read_documents(path)
    found = [d for d in documents if d.data.get("kind") in kinds]
    if len(found) != 1:
        listed = f"found {len(found)}" + (f" (lines {', '.join(str(d.line) for d in found)})" if found else "")
        raise ManifestError(str(path), [("kind", f"expected exactly one {' or '.join(kinds)} document, {listed}")])
    (document,) = found
    return document.data, f"{path}:{document.line}" if len(documents) > 1 else str(path)


def load_manifest(path: Path) -> FineTuneJob:
    """Load the single FineTuneJob of a YAML file; other kinds beside it are ignored."""
    return parse_manifest(*_the_one(path, (api.KIND,)))


def load_object(path: Path) -> FineTuneJob | DriftMonitor:
    """Load the single kubetune object (a FineTuneJob or a DriftMonitor) of a YAML file."""
    return load_document(path)[1]


def load_document(path: Path) -> tuple[dict[str, Any], FineTuneJob | DriftMonitor]:
    """The single kubetune object of a YAML file as written (what ``kubetune submit`` sends: the API server
    applies the defaults) and as validated."""
    document, where = _the_one(path, tuple(_PARSERS))
    return document, _PARSERS[document["kind"]](document, where)
