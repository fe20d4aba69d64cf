"""Personal data in a job's dataset (``dataset.curation.pii`` and each source's ``pii``): redacted by
default, or the rows dropped, or only counted; counts per kind in the curation report, which never
repeats an identifier. Through ``kubetune preflight`` (in process: the built-in tokenizer, no weights)
as the pre-flight pod runs it, and the examples training would get from the same manifest."""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path
from typing import Any

import yaml

from kubetune.api.v1alpha1 import FineTuneJob
from kubetune_trainer.cli import main as kubetune
from kubetune_trainer.data.prepare import prepare_dataset
from kubetune_trainer.storage import ObjectStore
from tests.trainer.jobs import preflight_dataset
from tests.trainer.pii_corpus import Planted, planted_set

ROWS_PER_SOURCE = 30


def write_source(path: Path, texts: list[Planted], offset: int) -> list[str]:
    """Ticket rows, every other one with a planted identifier in the question; the identifiers planted."""
    rows, planted = [], []
    for i in range(ROWS_PER_SOURCE):
        if i % 2:
            question = f"Ticket {offset + i}: my parcel arrived broken, what now?"
        else:
            text = texts[offset + i]
            question = f"Ticket {offset + i}: {text.text.strip()}"
            planted += [text.text[start:end] for start, end, _ in text.spans]
        rows.append({"messages": [{"role": "user", "content": question}, {"role": "assistant", "content": "returns"}]})
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return planted


def dataset(sources: list[dict[str, Any]]) -> dict[str, Any]:
    return {"sources": sources, "curation": {"nearDedup": {"enabled": False}}}


def test_identifiers_are_redacted_by_default_dropped_or_counted_as_each_source_says(tmp_path: Path) -> None:
    texts = planted_set(count=3 * ROWS_PER_SOURCE, seed=5)
    planted = {
        name: write_source(tmp_path / f"{name}.jsonl", texts, offset)
        for name, offset in (("default", 0), ("dropped", ROWS_PER_SOURCE), ("counted", 2 * ROWS_PER_SOURCE))
    }
    sources = [
        {"uri": f"file://{tmp_path}/default.jsonl"},
        {"uri": f"file://{tmp_path}/dropped.jsonl", "pii": "drop"},
        {"uri": f"file://{tmp_path}/counted.jsonl", "pii": "report"},
    ]
    manifest, code, said = preflight_dataset(tmp_path, dataset(sources))
    assert code == 0, said[-3000:]
    reports = tmp_path / "work" / "artifacts" / "reports"
    report = json.loads((reports / "curation.json").read_text())
    half = ROWS_PER_SOURCE // 2
    policies = [(s["personal_data"]["policy"], sum(s["personal_data"]["found"].values())) for s in report["sources"]]
    assert policies == [("redact", half), ("drop", half), ("report", half)], policies
    assert report["dropped"]["personal_data"] == half
    # The report names kinds and counts, never an identifier: not even those only counted.
    for page in ("curation.json", "curation.md"):
        written = (reports / page).read_text()
        leaked = [value for values in planted.values() for value in values if value in written]
        assert not leaked, (page, leaked[:3])
    assert f"| file://{tmp_path}/dropped.jsonl | drop | " in (reports / "curation.md").read_text()

    spec = FineTuneJob.model_validate(yaml.safe_load(manifest.read_text())).spec
    data = prepare_dataset(spec.dataset, ObjectStore(), lambda e: 10, max_tokens=512)
    trained = "\n".join(e.flat_text() for e in data.train + data.validation + data.test)
    assert not [value for value in planted["default"] + planted["dropped"] if value in trained]
    assert all(value in trained for value in planted["counted"])
    assert all(f"[{kind}]" in trained for kind in ("EMAIL", "CARD", "IP"))  # the kinds planted in even rows
    assert len(data.train + data.validation + data.test) == 3 * ROWS_PER_SOURCE - half


def test_a_policy_the_api_does_not_know_is_refused_at_the_field_by_validate_and_the_preflight(tmp_path: Path) -> None:
    manifest, code, said = preflight_dataset(tmp_path, dataset([{"uri": "file:///data/tickets.jsonl", "pii": "hide"}]))
    assert code == 2 and "spec.dataset.sources[0].pii" in said, said[-2000:]
    output = io.StringIO()
    with contextlib.redirect_stdout(output), contextlib.redirect_stderr(output):
        code = kubetune(["validate", str(manifest)])
    assert code == 2 and "spec.dataset.sources[0].pii" in output.getvalue(), output.getvalue()
    assert "Traceback" not in said + output.getvalue()
