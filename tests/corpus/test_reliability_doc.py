"""docs/reliability.md lists the whole corpus: its tables are generated from it, a stale copy fails."""

from __future__ import annotations

from scripts.reliability_table import main as reliability_table


def test_the_reliability_document_lists_the_whole_corpus() -> None:
    assert reliability_table(["--check"]) == 0, "run: python scripts/reliability_table.py"
