"""YAML documents read the way kubectl reads them, and bounded so hostile input cannot exhaust a machine.

kubectl turns YAML into JSON with sigs.k8s.io/yaml, which resolves plain scalars with go-yaml v2's
rules, not PyYAML's: ``1e-4`` and ``0o17`` are numbers, ``y``/``n`` booleans, a date stays the
text it was, ``1:30`` is text (no base-60), ``.nan`` and ``.inf`` cannot become JSON and are refused.
This module gives PyYAML (its libyaml parser when present) those rules, so ``kubetune validate``
sees the object the API server would receive. It also refuses what kubectl refuses or what no
manifest needs: duplicate keys, keys JSON cannot hold, bytes that are not UTF-8 (UTF-16 and UTF-32
with a byte-order mark are decoded first), files over :data:`MAX_MANIFEST_BYTES`, and aliases that
expand to more than :data:`MAX_EXPANDED_NODES` nodes (a "billion laughs" is refused before it is
built).
"""

from __future__ import annotations

import codecs
import math
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

# What etcd stores by default (--max-request-bytes 1.5 MiB): a bigger object cannot be created.
MAX_MANIFEST_BYTES = 1536 * 1024
# A real manifest has a few hundred nodes; aliases may repeat a block, not multiply it a millionfold.
MAX_EXPANDED_NODES = 100_000
# Mappings and lists inside each other; the FineTuneJob API is a few levels deep.
MAX_DEPTH = 100

_STR = "tag:yaml.org,2002:str"
_INT = "tag:yaml.org,2002:int"
_FLOAT = "tag:yaml.org,2002:float"
_BOOL = "tag:yaml.org,2002:bool"
_NULL = "tag:yaml.org,2002:null"
_MERGE = "tag:yaml.org,2002:merge"

# go-yaml v2's resolve table (resolve.go): the words it reads as booleans, null and special floats.
_WORDS: dict[str, tuple[str, Any]] = {
    **{word: (_BOOL, True) for word in ("y", "Y", "yes", "Yes", "YES", "true", "True", "TRUE", "on", "On", "ON")},
    **{word: (_BOOL, False) for word in ("n", "N", "no", "No", "NO", "false", "False", "FALSE", "off", "Off", "OFF")},
    **{word: (_NULL, None) for word in ("", "~", "null", "Null", "NULL")},
    **{word: (_FLOAT, math.nan) for word in (".nan", ".NaN", ".NAN")},
    **{word: (_FLOAT, math.inf) for word in (".inf", ".Inf", ".INF", "+.inf", "+.Inf", "+.INF")},
    **{word: (_FLOAT, -math.inf) for word in ("-.inf", "-.Inf", "-.INF")},
    "<<": (_MERGE, "<<"),
}
_GO_FLOAT = re.compile(r"^[-+]?(\.[0-9]+|[0-9]+(\.[0-9]*)?)([eE][-+]?[0-9]+)?$")
# Go's strconv.ParseInt(s, 0, 64) syntax: a sign, then 0x/0o/0b or a leading 0 (octal), or decimal.
_GO_INT = re.compile(r"^[-+]?(0[xX][0-9a-fA-F]+|0[oO]?[0-7]*|0[bB][01]+|[1-9][0-9]*)$")
_INT64 = (-(2**63), 2**64 - 1)  # ParseInt, then ParseUint


def _go_int(plain: str) -> int | None:
    if not _GO_INT.match(plain):
        return None
    sign = -1 if plain.startswith("-") else 1
    digits = plain.lstrip("+-")
    lower = digits.lower()
    if lower.startswith("0x"):
        value = int(lower[2:], 16)
    elif lower.startswith("0b"):
        value = int(lower[2:], 2)
    elif lower.startswith("0o"):
        if len(lower) == 2:
            return None
        value = int(lower[2:], 8)
    elif len(digits) > 1 and digits.startswith("0"):
        value = int(digits[1:], 8)
    else:
        value = int(digits)
    value *= sign
    return value if _INT64[0] <= value <= _INT64[1] else None


def resolve_plain(text: str) -> tuple[str, Any]:
    """The tag and value go-yaml v2 gives an unquoted scalar (resolve.go), as sigs.k8s.io/yaml
    then hands it to JSON. Timestamps stay strings: go-yaml keeps them as text in an untyped value."""
    if text in _WORDS:
        return _WORDS[text]
    if not text or text[0] not in "+-.0123456789":
        return _STR, text
    plain = text if text[0] == "." else text.replace("_", "")
    integer = None if text[0] == "." else _go_int(plain)
    if integer is not None:
        return _INT, integer
    if _GO_FLOAT.match(plain) and math.isfinite(value := float(plain)):  # ParseFloat refuses overflow: text
        # encoding/json writes an integral float64 without a fraction ("8", not "8.0"), so the API
        # server reads it as an integer: 2.0 is a valid replica count through kubectl.
        return (_INT, int(value)) if value.is_integer() and abs(value) < 1e21 else (_FLOAT, value)
    return _STR, text


class ManifestYamlError(ValueError):
    """YAML a manifest cannot be made of; ``line`` and ``column`` are 1-based when known."""

    def __init__(self, message: str, line: int | None = None, column: int | None = None) -> None:
        self.line = line
        self.column = column
        at = f"line {line}" + (f", column {column}" if column is not None else "") + ": " if line else ""
        super().__init__(f"{at}{message}")


def _at(node: Node) -> dict[str, int]:
    return {"line": node.start_mark.line + 1, "column": node.start_mark.column + 1}


_Base: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class _KubectlLoader(_Base):
    """libyaml's parser with go-yaml v2's scalar resolution and JSON's value space."""

    def resolve(self, kind: type[Node], value: str, implicit: tuple[bool, bool]) -> str:
        if kind is ScalarNode and implicit[0]:
            return resolve_plain(value)[0]
        return str(super().resolve(kind, value, implicit))

    def construct_scalar_value(self, node: ScalarNode) -> Any:
        if node.tag == _STR:
            return node.value
        if node.tag in (_INT, _FLOAT, _BOOL, _NULL):
            tag, value = resolve_plain(node.value)
            if tag != node.tag and not (node.tag == _FLOAT and tag == _INT):
                raise ManifestYamlError(f"{node.value!r} is not a valid {node.tag.rsplit(':', 1)[-1]}", **_at(node))
            if isinstance(value, float) and not math.isfinite(value):
                raise ManifestYamlError(
                    f"{node.value!r} is not a number JSON can hold (NaN and infinity are refused)", **_at(node)
                )
            return value
        raise ManifestYamlError(f"the tag {node.tag} cannot be expressed in JSON", **_at(node))

    def construct_object(self, node: Node, deep: bool = False) -> Any:
        if isinstance(node, ScalarNode):
            return self.construct_scalar_value(node)
        if isinstance(node, SequenceNode):
            if node.tag != "tag:yaml.org,2002:seq":
                raise ManifestYamlError(f"the tag {node.tag} cannot be expressed in JSON", **_at(node))
            return [self.construct_object(child) for child in node.value]
        if isinstance(node, MappingNode):
            if node.tag != "tag:yaml.org,2002:map":
                raise ManifestYamlError(f"the tag {node.tag} cannot be expressed in JSON", **_at(node))
            return self._mapping(node)
        raise ManifestYamlError("unsupported YAML node", **_at(node))

    def _mapping(self, node: MappingNode) -> dict[str, Any]:
        merged: dict[str, Any] = {}
        own: dict[str, Any] = {}
        for key_node, value_node in node.value:
            if isinstance(key_node, ScalarNode) and key_node.tag == _MERGE:
                for source in value_node.value if isinstance(value_node, SequenceNode) else [value_node]:
                    value = self.construct_object(source)
                    if not isinstance(value, dict):
                        raise ManifestYamlError("a merge key (<<) must point at a mapping", **_at(source))
                    merged = {**value, **merged}
                continue
            key = self._key(key_node)
            if key in own:
                raise ManifestYamlError(f"duplicate key {key!r}", **_at(key_node))
            own[key] = self.construct_object(value_node)
        return {**merged, **own}

    def _key(self, node: Node) -> str:
        """JSON keys are strings: numbers and booleans become their text as sigs.k8s.io/yaml writes it."""
        if not isinstance(node, ScalarNode):
            raise ManifestYamlError("a mapping key must be a plain value, not a list or mapping", **_at(node))
        value = self.construct_scalar_value(node)
        if value is None:
            raise ManifestYamlError("a mapping key cannot be null", **_at(node))
        if isinstance(value, bool):
            return "true" if value else "false"
        if isinstance(value, float):
            return f"{value:.7g}".replace("e+0", "e+").replace("e-0", "e-")
        return str(value)


def _expanded_size(root: Node) -> int:
    """Nodes the document becomes once every alias is expanded, without expanding it; refuses a
    cycle (an alias inside its own anchor)."""
    sizes: dict[int, int] = {}
    open_nodes: set[int] = set()

    def size(node: Node, depth: int) -> int:
        if depth > MAX_DEPTH:
            raise ManifestYamlError(f"nested more than {MAX_DEPTH} levels deep", **_at(node))
        key = id(node)
        if key in sizes:
            return sizes[key]
        if key in open_nodes:
            raise ManifestYamlError("an alias refers to the node that contains it (a recursive structure)", **_at(node))
        open_nodes.add(key)
        children: list[Node] = []
        if isinstance(node, SequenceNode):
            children = list(node.value)
        elif isinstance(node, MappingNode):
            children = [part for pair in node.value for part in pair]
        total = 1
        for child in children:
            total += size(child, depth + 1)
            if total > MAX_EXPANDED_NODES:
                raise ManifestYamlError(
                    f"expands to more than {MAX_EXPANDED_NODES} values through aliases; "
                    "a manifest does not need that many (is this a YAML alias bomb?)",
                    **_at(node),
                )
        open_nodes.discard(key)
        sizes[key] = total
        return total

    size(root, 0)
    return sizes[id(root)]


_BOMS = (
    (codecs.BOM_UTF32_LE, "utf-32-le"),
    (codecs.BOM_UTF32_BE, "utf-32-be"),
    (codecs.BOM_UTF8, "utf-8"),
    (codecs.BOM_UTF16_LE, "utf-16-le"),
    (codecs.BOM_UTF16_BE, "utf-16-be"),
)


def decode(data: bytes) -> str:
    """The text of a manifest: UTF-8 (a byte-order mark allowed), or UTF-16/UTF-32 with their mark.
    Any other byte that is not UTF-8 is refused with its line and column."""
    for bom, encoding in _BOMS:  # UTF-32-LE's mark starts with UTF-16-LE's: longest first
        if data.startswith(bom):
            try:
                return data[len(bom) :].decode(encoding)
            except UnicodeDecodeError as err:
                raise ManifestYamlError(f"not valid {encoding.upper()} (byte-order mark found): {err.reason}") from err
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        before = data[: err.start]
        line = before.count(b"\n") + 1
        column = len(before.rsplit(b"\n", 1)[-1].decode("utf-8", errors="replace")) + 1
        raise ManifestYamlError(
            f"byte 0x{data[err.start]:02x} is not UTF-8 (save the file as UTF-8)", line, column
        ) from err


@dataclass(frozen=True)
class Document:
    data: Any
    line: int  # where the document starts, 1-based


def load_documents(data: bytes) -> Iterator[Document]:
    """Every non-empty document of a YAML stream, as JSON-compatible values. Raises ManifestYamlError."""
    if len(data) > MAX_MANIFEST_BYTES:
        raise ManifestYamlError(
            f"{len(data)} bytes is more than the {MAX_MANIFEST_BYTES} bytes (1.5 MiB) the API server stores"
        )
    text = decode(data)
    loader = _KubectlLoader(text)
    try:
        while True:
            try:
                if not loader.check_node():
                    return
                node = loader.get_node()
            except yaml.MarkedYAMLError as err:
                mark = err.problem_mark or err.context_mark
                problem = err.problem or err.context or "not valid YAML"
                raise ManifestYamlError(
                    f"not valid YAML: {problem}",
                    mark.line + 1 if mark else None,
                    mark.column + 1 if mark else None,
                ) from err
            except yaml.YAMLError as err:
                raise ManifestYamlError(f"not valid YAML: {err}") from err
            except RecursionError as err:  # libyaml's composer recurses once per nesting level
                raise ManifestYamlError(f"nested more than {MAX_DEPTH} levels deep") from err
            if node is None:
                continue
            _expanded_size(node)
            value = loader.construct_object(node)
            if value is not None:
                yield Document(value, node.start_mark.line + 1)
    finally:
        loader.dispose()
