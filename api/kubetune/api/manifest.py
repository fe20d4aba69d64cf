"""Read FineTuneJob manifests with errors that say which field is wrong and why."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from kubetune.api.v1alpha1 import FineTuneJob, FineTuneJobSpec


class ManifestError(ValueError):
    """A manifest that does not match the API. ``problems`` holds (field path, message) pairs."""

    def __init__(self, where: str, problems: list[tuple[str, str]]) -> None:
        self.where = where
        self.problems = problems
        lines = "\n".join(f"  {path}: {message}" for path, message in problems)
        super().__init__(f"{where}: invalid FineTuneJob\n{lines}")


def _as_json(document: Any) -> str:
    """Strict JSON-mode validation, like the API server's: "2" is not a number, "yes" not a
    boolean (lax mode would coerce both), while enums and quantities may be strings.
    YAML dates and the like are stringified first, as kubectl would."""
    return json.dumps(document, default=str)


def _field_path(prefix: str, loc: tuple[int | str, ...]) -> str:
    path = prefix
    for part in loc:
        path += f"[{part}]" if isinstance(part, int) else f".{part}"
    return path


def validation_problems(err: ValidationError, prefix: str) -> list[tuple[str, str]]:
    return [(_field_path(prefix, tuple(e["loc"])), e["msg"]) for e in err.errors()]


def parse_spec(spec: dict[str, Any], where: str = "spec") -> FineTuneJobSpec:
    """Validate a ``spec`` dict as the operator receives it from the API server."""
    try:
        return FineTuneJobSpec.model_validate_json(_as_json(spec), strict=True)
    except ValidationError as err:
        raise ManifestError(where, validation_problems(err, "spec")) from err


def parse_manifest(document: Any, where: str = "<manifest>") -> FineTuneJob:
    if not isinstance(document, dict):
        raise ManifestError(where, [("", "expected a YAML mapping with apiVersion, kind, metadata and spec")])
    try:
        return FineTuneJob.model_validate_json(_as_json(document), strict=True)
    except ValidationError as err:
        raise ManifestError(where, validation_problems(err, "")) from err


def load_manifest(path: Path) -> FineTuneJob:
    """Load the single FineTuneJob in a YAML file."""
    try:
        documents = [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
    except OSError as err:
        raise ManifestError(str(path), [("", f"cannot read: {err.strerror}")]) from err
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark is not None else str(path)
        raise ManifestError(where, [("", f"not valid YAML: {err}")]) from err
    jobs = [d for d in documents if isinstance(d, dict) and d.get("kind") == "FineTuneJob"]
    if len(jobs) != 1:
        raise ManifestError(str(path), [("kind", f"expected exactly one FineTuneJob document, found {len(jobs)}")])
    return parse_manifest(jobs[0], str(path))
