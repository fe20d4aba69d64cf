"""Self-distillation replay on by default: how much is mixed in, which prompts, and where they go."""

from __future__ import annotations

import itertools

import pytest

from kubetune.api.manifest import parse_spec
from kubetune.api.v1alpha1 import ReplaySpec
from kubetune_trainer.data.types import Example, Message
from kubetune_trainer.general_prompts import GeneralPrompt, load_general_prompts
from kubetune_trainer.plan import DEFAULTS, preflight_estimate, resolve_replay, resolve_training
from kubetune_trainer.replay import answers_worth_replaying, choose_replay_prompts
from kubetune_trainer.steps import interleave
from tests import builders
from tests.trainer.plans import CPU, SMOL

POOL = 184


def test_a_minimal_manifest_replays() -> None:
    spec = builders.spec()
    assert spec.dataset.replay.enabled is True and spec.dataset.replay.fraction is None
    replay = resolve_replay(spec.dataset.replay, task_train_examples=300, pool_size=POOL)
    assert replay.enabled and replay.examples == round(DEFAULTS.replay_fraction * 300)


@pytest.mark.parametrize(
    ("task", "expected"),
    [
        (20, DEFAULTS.replay_min_examples),  # a tiny task still gets an anchor
        (300, 150),  # the default share
        (10_000, POOL),  # never more than the pool: a pool repeated over and over is memorised
    ],
)
def test_the_auto_amount_follows_the_data_size(task: int, expected: int) -> None:
    replay = resolve_replay(ReplaySpec(), task_train_examples=task, pool_size=POOL)
    assert replay.enabled and replay.examples == expected
    assert replay.fraction == round(expected / task, 4)


def test_an_explicit_fraction_is_used_as_given_and_off_means_none() -> None:
    replay = resolve_replay(ReplaySpec(fraction=0.1), task_train_examples=200, pool_size=POOL)
    assert replay.enabled and replay.examples == 20  # no minimum under an explicit fraction
    assert resolve_replay(ReplaySpec(enabled=False), task_train_examples=200, pool_size=POOL).enabled is False


def test_an_out_of_range_fraction_is_refused_naming_the_field() -> None:
    from kubetune.api.manifest import ManifestError

    with pytest.raises(ManifestError, match=r"spec\.dataset\.replay\.fraction"):
        parse_spec(
            {
                "dataset": {"sources": [{"uri": "s3://d/x.jsonl"}], "replay": {"fraction": 0}},
                "output": {"uri": "s3://models/x/"},
            }
        )


def test_replay_prompts_come_from_the_replay_pool_in_a_seeded_order() -> None:
    prompts = load_general_prompts()
    regression_templates = {p.template for p in prompts.regression}
    chosen = choose_replay_prompts(prompts.replay, 50, "seed-a")
    assert len(chosen) == 50 and len({p.id for p in chosen}) == 50
    assert all(p.pool == "replay" and p.template not in regression_templates for p in chosen)
    assert choose_replay_prompts(prompts.replay, 50, "seed-a") == chosen
    assert choose_replay_prompts(prompts.replay, 50, "seed-b") != chosen
    # Asking for more keeps the first choice: a larger task replays a superset.
    assert choose_replay_prompts(prompts.replay, 80, "seed-a")[:50] == chosen
    categories = {p.category for p in chosen}
    assert len(categories) >= 4, categories


def test_a_wrong_base_answer_is_not_replayed_and_an_open_ended_one_is() -> None:
    capital, product, poem = (
        GeneralPrompt(
            id=name,
            category="facts",
            pool="replay",
            template=name,
            source="test",
            messages=({"role": "user", "content": name},),
            keywords=keywords,
        )
        for name, keywords in (("capital", ("Oslo",)), ("product", ("132",)), ("poem", None))
    )
    answers = {"capital": "The capital of Norway is Oslo.", "product": "12 x 11 = 121", "poem": "Leaves fall."}
    assert answers_worth_replaying([capital, product, poem], answers) == [capital, poem]


def test_replay_rows_are_spread_evenly_through_the_task() -> None:
    task = [Example(messages=(Message("user", f"t{i}"), Message("assistant", "x"))) for i in range(10)]
    replay = [Example(messages=(Message("user", f"r{i}"), Message("assistant", "y"))) for i in range(3)]
    mixed = interleave(task, replay)
    assert sorted(e.messages[0].content for e in mixed) == sorted(e.messages[0].content for e in task + replay)
    assert [e for e in mixed if e in task] == task and [e for e in mixed if e in replay] == replay
    positions = [mixed.index(r) for r in replay]
    assert (
        positions[0] > 0
        and positions[-1] < len(mixed) - 1
        and min(b - a for a, b in itertools.pairwise(positions)) >= 3
    )
    assert interleave(task, []) == task


def test_the_plan_counts_replay_rows_and_the_estimate_includes_generating_base_answers() -> None:
    spec = builders.spec()
    replay = resolve_replay(spec.dataset.replay, task_train_examples=400, pool_size=POOL)
    resolved = resolve_training(spec, CPU, train_examples=520, token_lengths=[100] * 520, shape=SMOL, replay=replay)
    assert resolved.replay == replay
    cached = preflight_estimate(resolved, SMOL, CPU, train_tokens=52_000, total_memory_limit_gib=None)
    generating = preflight_estimate(
        resolved, SMOL, CPU, train_tokens=52_000, total_memory_limit_gib=None, answers_to_generate=372
    )
    assert generating.estimated_minutes is not None and cached.estimated_minutes is not None
    # Calibration: 372 answers of SmolLM2-135M took ~4 minutes on 2 cores.
    assert 2.5 < generating.estimated_minutes - cached.estimated_minutes < 6
    assert "372 base answers to generate" in generating.message
