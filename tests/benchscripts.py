"""What the tests of ``bench/*.py`` share: loading a script as a module, and checking that
docs/benchmarks.md quotes a script's rendered section exactly."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
PAGE = ROOT / "docs" / "benchmarks.md"


def load(name: str) -> ModuleType:
    """``bench/<name>.py`` as a module (the bench folder is not a package)."""
    spec = importlib.util.spec_from_file_location(f"bench_{name}", ROOT / "bench" / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def assert_page_quotes(section: str) -> None:
    """docs/benchmarks.md holds ``section`` unchanged, from its heading to the next one."""
    heading = section.splitlines()[0]
    page = PAGE.read_text()
    assert heading in page, f"{PAGE} has no section '{heading}'"
    start = page.index(heading)
    following = page.find("\n## ", start + len(heading))
    quoted = page[start : following + 1 if following >= 0 else len(page)]
    assert quoted.strip() == section.strip()


def run_smoke(name: str, folder: Path) -> tuple[subprocess.CompletedProcess[str], dict[str, Any]]:
    """``python bench/<name>.py --smoke`` in a subprocess, as CI runs it: its output and its recorded JSON."""
    results = folder / f"{name}.json"
    run = subprocess.run(
        [sys.executable, str(ROOT / "bench" / f"{name}.py"), "--smoke", "--results", str(results)],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=ROOT,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    return run, json.loads(results.read_text())


def recorded(name: str) -> dict[str, Any]:
    """The full measurement recorded in docs/measurements/<name>.json."""
    return dict(json.loads((ROOT / "docs" / "measurements" / f"{name}.json").read_text()))
