"""Prefix tuning: trained keys and values before every layer's attention, and nothing else; unpacked,
with no attention across the examples of a batch; saved, reloaded equal, published without a merge."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from kubetune.api.v1alpha1 import ArtifactFormat, MethodType, ResolvedPrefixTraining
from kubetune_trainer.plan import ModelShape, resolve_formats
from kubetune_trainer.training.model import load_for_training, load_tuned
from tests.builders import spec
from tests.trainer.jobs import run_unmergeable_adapter
from tests.trainer.plans import tiny_plan
from tests.trainer.test_adapters import logits
from tests.trainer.test_training_methods import losses, run

PREFIX = "prompt_encoder"


def test_the_plan_trains_a_prefix_unpacked_and_publishes_it_alone() -> None:
    plan = tiny_plan("lora", adapter="prefix")
    assert isinstance(plan, ResolvedPrefixTraining)
    assert (plan.prefix.virtual_tokens, plan.hyperparameters.packing) == (20, False)
    # tiny_plan sets its own rate; the default is the prefix's, not LoRA's
    default = spec(method={"adapter": "prefix"}, resources={"gpus": 0})
    assert resolve_formats(default) == [ArtifactFormat.ADAPTER]
    assert resolve_formats(spec()) == [ArtifactFormat.ADAPTER, ArtifactFormat.MERGED]


@pytest.mark.parametrize("method", [MethodType.LORA, MethodType.QLORA])
def test_a_prefix_trains_its_keys_and_values_and_nothing_else_and_reloads_equal(
    tmp_path: Path, tiny_model_dir: Path, method: MethodType
) -> None:
    from transformers import AutoConfig

    untrained, _ = load_for_training(tiny_model_dir, tiny_plan(str(method), adapter="prefix"), "cpu")
    start = {n: p.detach().clone() for n, p in untrained.named_parameters() if p.requires_grad}
    outcome = run(tmp_path, tiny_model_dir, str(method), lr=0.05, adapter="prefix", prefix={"virtualTokens": 4})
    first, last = losses(outcome)[0], losses(outcome)[-1]
    assert last < first * 0.98, (first, last)
    trainable = {n: p for n, p in outcome.model.named_parameters() if p.requires_grad}
    assert trainable and all(PREFIX in name for name in trainable), sorted(trainable)
    shape = ModelShape.from_config(AutoConfig.from_pretrained(tiny_model_dir))
    assert sum(p.numel() for p in trainable.values()) == shape.prefix_params(4)
    (name,) = trainable
    assert trainable[name].shape[0] == 4 and not torch.allclose(trainable[name], start[name][:4], atol=1e-3)
    config = json.loads((outcome.trained_dir / "adapter_config.json").read_text())
    assert (config["peft_type"], config["num_virtual_tokens"]) == ("PREFIX_TUNING", 4)

    reloaded = load_tuned(tiny_model_dir, outcome.trained_dir, method, device="cpu", bf16=False)
    torch.testing.assert_close(logits(reloaded), logits(outcome.model), atol=1e-5, rtol=1e-5)


def test_no_example_attends_to_another_in_a_batch(tiny_model_dir: Path) -> None:
    """Each row of a padded batch scores as it does alone: the prefix's keys are every row's own, and
    padding is masked beside them."""
    model, _ = load_for_training(tiny_model_dir, tiny_plan("lora", adapter="prefix"), "cpu")
    with torch.no_grad():
        for parameter in model.parameters():
            if parameter.requires_grad:
                parameter.normal_(std=1.0)  # a prefix that changes the outputs
    model.eval()
    short, long = [3, 8, 21, 40], [5, 9, 14, 2, 33, 17, 60]
    batch = torch.tensor([short + [0] * 3, long])
    mask = torch.tensor([[1] * 4 + [0] * 3, [1] * 7])
    with torch.no_grad():
        together = model(input_ids=batch, attention_mask=mask).logits
        alone = [model(input_ids=torch.tensor([row])).logits[0] for row in (short, long)]
        base = model.get_base_model()(input_ids=torch.tensor([short])).logits[0]
    torch.testing.assert_close(together[0, :4], alone[0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(together[1], alone[1], atol=1e-5, rtol=1e-5)
    assert not torch.allclose(alone[0], base, atol=1e-3), "the prefix took part"


def test_kubetune_run_publishes_a_prefix_adapter_and_no_merged_model(tmp_path: Path, tiny_model_dir: Path) -> None:
    resolved, lineage, version = run_unmergeable_adapter(
        tmp_path, tiny_model_dir, {"adapter": "prefix", "prefix": {"virtualTokens": 8}}
    )
    assert (resolved["adapter"], resolved["prefix"], resolved["hyperparameters"]["packing"]) == (
        "prefix",
        {"virtualTokens": 8},
        False,
    )
    published = {artifact["path"].split("/")[0] for artifact in lineage["artifacts"]}
    assert "adapter" in published and "merged" not in published, published
    config = json.loads((version / "adapter" / "adapter_config.json").read_text())
    assert config["peft_type"] == "PREFIX_TUNING"
    # Evaluated base vs tuned like every adapter: the prefix lowered the test split's perplexity.
    (perplexity,) = [m for m in lineage["evaluation"]["metrics"] if m["name"] == "perplexity"]
    assert perplexity["tuned"] < perplexity["base"], perplexity
