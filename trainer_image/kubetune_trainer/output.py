"""The ``kubetune`` CLI's output convention (issue 18): every verb that reports something takes
``-o/--output``, whose default is the human form (text, or a table) and whose ``json`` and ``yaml``
print one document of plain data: the structure each verb documents in docs/cli.md.

In json or yaml mode stdout holds that document and nothing else, so ``kubetune X -o json | jq`` always
parses; errors and progress still go to stderr and the exit codes do not change. JSON is indented by 2
with the keys in the order the verb built them (stable from run to run); YAML keeps that order too.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any, TextIO

import yaml

JSON = "json"
YAML = "yaml"
DOCUMENT_FORMATS = (JSON, YAML)


def add_output_option(parser: argparse.ArgumentParser, *, human: str = "text", json_flag: bool = False) -> None:
    """``-o/--output`` with ``human`` (the default) and the document formats. ``json_flag`` keeps an
    older ``--json`` working as a hidden alias of ``-o json``: scripts written against it still run."""
    parser.add_argument(
        "-o",
        "--output",
        choices=(human, *DOCUMENT_FORMATS),
        default=human,
        help=f"{human} (default), or one {JSON} or {YAML} document on stdout",
    )
    if json_flag:
        parser.add_argument("--json", dest="output", action="store_const", const=JSON, help=argparse.SUPPRESS)


def wants_document(args: argparse.Namespace) -> bool:
    """Whether the verb prints a document rather than its human form."""
    return str(args.output) in DOCUMENT_FORMATS


def render(document: Any, output: str) -> str:
    """``document`` (dicts, lists, strings, numbers, booleans, None) as ``output``, ending in a newline."""
    if output == JSON:
        return json.dumps(document, indent=2) + "\n"
    if output == YAML:
        return str(yaml.safe_dump(document, sort_keys=False))
    raise ValueError(f"{output!r} is not one of {', '.join(DOCUMENT_FORMATS)}")


def emit(document: Any, output: str, stream: TextIO | None = None) -> None:
    (stream or sys.stdout).write(render(document, output))
