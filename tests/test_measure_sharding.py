"""``scripts/measure_sharding.py``: the smoke on the tiny model (both shardings through the operator's
two-node command, each rank's share and peak, the one-process throughput baseline, the auto pre-flight at
a memory between the peaks), and the
recorded SmolLM2 measurement: its page rendered from its JSON, FSDP's peaks below DDP's, and the
pre-flight choosing FSDP at a memory between them."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
import measure_sharding  # noqa: E402

RECORDED = ROOT / "docs" / "measurements" / "sharding.json"


@pytest.mark.timeout(900)
def test_the_smoke_measures_both_shardings_and_the_auto_preflight(tmp_path: Path, tiny_model_dir: Path) -> None:
    out = tmp_path / "sharding.json"
    argv = ["--smoke", "--base-model", str(tiny_model_dir), "--scratch", str(tmp_path / "s"), "--out", str(out)]
    assert measure_sharding.main(argv) == 0
    results = json.loads(out.read_text())
    replicated, sharded = results["runs"]
    assert [r["heldElements"] == r["totalElements"] for r in replicated["ranks"]] == [True, True]
    assert [round(r["heldElements"] / r["totalElements"], 1) for r in sharded["ranks"]] == [0.5, 0.5]
    assert all(r["peakBytes"] > 0 for run in results["runs"] for r in run["ranks"])
    assert replicated["estimateGiB"] > 0 and sharded["estimateGiB"] > 0
    # The throughput baseline: one process holding everything; every rank of the groups trained its share.
    single = results["single"]
    (alone,) = single["ranks"]
    assert alone["heldElements"] == alone["totalElements"] and single["threadsPerProcess"] >= 1
    for run in [*results["runs"], single]:
        assert run["tokensPerSecond"] > 0
        assert all(r["trainedTokens"] > 0 and r["trainSeconds"] > 0 for r in run["ranks"]), run["ranks"]
    # On the tiny model the runtime dominates, so the memory between the peaks may fit neither way: the
    # pre-flight's verdict and its exit code must agree either way.
    auto = results["auto"]
    assert auto["sharding"] in ("none", "fsdp") and (auto["exitCode"] == 0) == auto["report"]["passed"]
    assert out.with_suffix(".md").read_text() == measure_sharding.render_markdown(results)


def test_the_recorded_measurement_shows_fsdp_fitting_where_ddp_does_not() -> None:
    results = json.loads(RECORDED.read_text())
    assert results["model"] == "SmolLM2-135M-Instruct" and "--smoke" not in results["command"]
    replicated, sharded = (measure_sharding.peak_gib(run) for run in results["runs"])
    assert sharded < replicated
    memory_gib = int(results["auto"]["memory"].removesuffix("Mi")) / 1024
    assert sharded < memory_gib < replicated
    assert results["auto"]["sharding"] == "fsdp" and results["auto"]["report"]["passed"]
    page = RECORDED.with_suffix(".md").read_text()
    assert page == measure_sharding.render_markdown(results)
    docs = (ROOT / "docs" / "distributed.md").read_text()
    assert page.strip() in docs, "docs/distributed.md quotes the page"
    # ...and its scaling paragraph the same seconds and ratios.
    seconds = [max(r["trainSeconds"] for r in run["ranks"]) for run in [results["single"], *results["runs"]]]
    words = " ".join(docs.split())
    assert f"trains the epoch in {seconds[0]:.1f} s" in words
    for taken, how in zip(seconds[1:], ("unsharded", "sharded"), strict=True):
        assert f"{taken:.1f} s {how} ({seconds[0] / taken:.2f}" in words, how
