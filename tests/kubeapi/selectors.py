"""Label and field selectors as list and watch requests carry them (``?labelSelector=a=b,c in (d)``)."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from tests.kubeapi.model import ApiError

Matcher = Callable[[dict[str, Any]], bool]

_SET = re.compile(r"^\s*([^\s!=(),]+)\s+(in|notin)\s+\(([^)]*)\)\s*$")
_EQUALITY = re.compile(r"^\s*([^\s!=(),]+)\s*(==|=|!=)\s*([^\s!=(),]*)\s*$")
_EXISTS = re.compile(r"^\s*(!?)\s*([^\s!=(),]+)\s*$")


def _split(selector: str) -> list[str]:
    """Split on commas outside parentheses."""
    parts, depth, current = [], 0, ""
    for char in selector:
        if char == "(":
            depth += 1
        elif char == ")":
            depth -= 1
        if char == "," and depth == 0:
            parts.append(current)
            current = ""
        else:
            current += char
    if current.strip():
        parts.append(current)
    return parts


def _requirement(text: str) -> Callable[[dict[str, str]], bool]:
    if match := _SET.match(text):
        key, operator, raw = match.groups()
        values = {v.strip() for v in raw.split(",") if v.strip()}
        if operator == "in":
            return lambda labels: labels.get(key) in values
        return lambda labels: labels.get(key) not in values
    if match := _EQUALITY.match(text):
        key, operator, value = match.groups()
        if operator == "!=":
            return lambda labels: labels.get(key) != value
        return lambda labels: labels.get(key) == value
    if match := _EXISTS.match(text):
        negated, key = match.groups()
        if negated:
            return lambda labels: key not in labels
        return lambda labels: key in labels
    raise ApiError.bad_request(f"unable to parse requirement: {text.strip()!r}")


def label_matcher(selector: str | None) -> Matcher | None:
    if not selector:
        return None
    requirements = [_requirement(part) for part in _split(selector)]

    def matches(obj: dict[str, Any]) -> bool:
        labels = obj.get("metadata", {}).get("labels") or {}
        return all(requirement(labels) for requirement in requirements)

    return matches


# The fields every kind supports in a field selector.
_FIELDS = {
    "metadata.name": lambda obj: obj.get("metadata", {}).get("name", ""),
    "metadata.namespace": lambda obj: obj.get("metadata", {}).get("namespace", ""),
}


def field_matcher(selector: str | None) -> Matcher | None:
    if not selector:
        return None
    checks: list[Matcher] = []
    for part in _split(selector):
        match = _EQUALITY.match(part)
        if match is None or match.group(1) not in _FIELDS:
            raise ApiError.bad_request(
                f'"{part.strip()}" is not a known field selector: only "metadata.name", "metadata.namespace"'
            )
        field, operator, value = match.groups()
        read = _FIELDS[field]
        if operator == "!=":
            checks.append(lambda obj, read=read, value=value: read(obj) != value)
        else:
            checks.append(lambda obj, read=read, value=value: read(obj) == value)
    return lambda obj: all(check(obj) for check in checks)
