"""Adapter strength: chosen on validation unless the manifest sets it, evaluated and published alike."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

from kubetune.api.v1alpha1 import MethodType
from kubetune_trainer.export.merge import merge_adapter
from kubetune_trainer.plan import DEFAULTS
from kubetune_trainer.training.strength import choose_scale, publish_scale, set_scale
from tests.trainer.jobs import run_locally, write_dataset, write_job
from tests.trainer.test_training_methods import run

KUBETUNE = str(Path(sys.executable).parent / "kubetune")


def scores(table: dict[float, float]):  # type: ignore[no-untyped-def]
    asked: list[float] = []

    def score_at(scale: float) -> float:
        asked.append(scale)
        return table[scale]

    return score_at, asked


@pytest.mark.parametrize(
    ("table", "chosen", "asked"),
    [
        # within two points of the full adapter's down to 0.7, then drops: 0.7, and 0.5 is never tried
        ({1.0: 0.9, 0.9: 0.9, 0.8: 0.89, 0.7: 0.88, 0.6: 0.87, 0.5: 0.9}, 0.7, [1.0, 0.9, 0.8, 0.7, 0.6]),
        # one validation row of 46 is more than two points: full strength (a relative 5% would go on)
        ({1.0: 45 / 46, 0.9: 44 / 46, 0.8: 43 / 46}, 1.0, [1.0, 0.9]),
        # nothing is lost anywhere: the weakest candidate
        ({s: 0.5 for s in (1.0, 0.9, 0.8, 0.7, 0.6, 0.5)}, 0.5, [1.0, 0.9, 0.8, 0.7, 0.6, 0.5]),
        # a weaker adapter that scores better is kept, and the full one stays the reference
        ({1.0: 0.5, 0.9: 0.6, 0.8: 0.49, 0.7: 0.47}, 0.8, [1.0, 0.9, 0.8, 0.7]),
    ],
)
def test_the_weakest_scale_within_two_points_of_full_strength_is_chosen(
    table: dict[float, float], chosen: float, asked: list[float]
) -> None:
    score_at, seen = scores(table)
    choice = choose_scale(score_at, DEFAULTS.adapter_strengths)
    assert (choice.scale, seen, choice.how) == (chosen, asked, "validation")
    assert choice.scores == {s: table[s] for s in asked}


def test_the_published_adapter_and_merged_model_are_the_model_evaluated(tmp_path: Path, tiny_model_dir: Path) -> None:
    from transformers import AutoModelForCausalLM

    outcome = run(tmp_path, tiny_model_dir, "lora")
    model = outcome.model.eval()
    ids = torch.tensor([[1, 5, 9, 13, 17, 21]])
    with torch.no_grad():
        full = model(input_ids=ids).logits
        undo = set_scale(model, 0.6)
        scaled = model(input_ids=ids).logits
        undo()
        torch.testing.assert_close(model(input_ids=ids).logits, full, rtol=0, atol=0)
    assert not torch.allclose(scaled, full, atol=1e-3), "the scale changes the model"

    set_scale(model, 0.6)
    publish_scale(model, outcome.trained_dir, 0.6)
    assert json.loads((outcome.trained_dir / "adapter_config.json").read_text())["lora_alpha"] == pytest.approx(4.8)
    merged_dir = merge_adapter(tiny_model_dir, outcome.trained_dir, tmp_path / "merged", method=MethodType.LORA)
    merged = AutoModelForCausalLM.from_pretrained(merged_dir, dtype=torch.float32).eval()
    with torch.no_grad():
        torch.testing.assert_close(merged(input_ids=ids).logits, scaled, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize(
    ("method", "how"),
    [
        ({}, "validation"),
        ({"lora": {"scale": 0.5}}, "manifest"),
        ({"adapter": "dora", "lora": {"scaling": "rslora"}}, "validation"),
        ({"adapter": "ia3", "ia3": {"scale": 0.5}}, "manifest"),
        ({"adapter": "adalora", "adalora": {"initialRank": 6, "targetRank": 2}}, "validation"),
    ],
)
def test_a_run_says_which_strength_it_kept_and_publishes_that_adapter(
    tmp_path: Path, tiny_model_dir: Path, method: dict[str, Any], how: str
) -> None:
    adapter = method.get("adapter", "lora")
    lora = {"r": 4, "alpha": 8, "dropout": 0.0, **method.get("lora", {})}
    job = write_job(
        tmp_path / "job.yaml",
        model_dir=tiny_model_dir,
        data=write_dataset(tmp_path / "data.jsonl", 40),
        output=f"file://{tmp_path}/out/",
        # write_job's own method carries a lora block; ia3 and adalora adapters are refused with one set
        method={"type": "lora", **method, "lora": {} if adapter in ("ia3", "adalora") else lora},
        hyperparameters={"epochs": 1, "learningRate": 0.001, "batchSize": 4, "sequenceLength": 64, "seed": 7},
        dataset={"sources": [{"uri": f"file://{tmp_path}/data.jsonl"}], "replay": {"enabled": False}},
        evaluation={"forgetting": False, "maxNewTokens": 4},
    )
    result, manifest_path = run_locally(job, tmp_path)
    strength = json.loads(manifest_path.read_text())["training"]["adapterStrength"]
    assert strength["how"] == how
    if how == "validation":
        assert strength["validationScores"]["1.0"] is not None and len(strength["validationScores"]) >= 2
    assert f"adapter strength: {strength['scale']:g} ({how}" in result.stdout
    (plan_line,) = [line for line in result.stderr.splitlines() if "kubetune: plan: {" in line]
    resolved = json.loads(plan_line.split("plan: ", 1)[1])
    assert resolved["adapter"] == adapter
    config = json.loads((manifest_path.parent / "adapter" / "adapter_config.json").read_text())
    if adapter == "ia3":
        assert config["peft_type"] == "IA3" and resolved["ia3"]["strengths"] == [0.5]
        return
    if adapter == "adalora":
        # The schedule the plan resolved is the one peft ran, and the published adapter is pruned to it.
        ada = resolved["adalora"]
        assert (config["peft_type"], config["init_r"], config["target_r"]) == ("ADALORA", 6, 2)
        assert (config["total_step"], config["tinit"], config["tfinal"]) == (
            ada["totalSteps"],
            ada["warmupSteps"],
            ada["finalSteps"],
        )
        assert config["rank_pattern"] and config["lora_alpha"] == pytest.approx(ada["alpha"] * strength["scale"])
        return
    assert config["lora_alpha"] == pytest.approx(8 * strength["scale"])
    assert (config["use_dora"], config["use_rslora"]) == (adapter == "dora", "scaling" in lora)
    assert resolved["lora"]["scaling"] == lora.get("scaling", "standard")
