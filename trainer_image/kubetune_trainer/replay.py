"""Self-distillation replay: which built-in replay prompts a run mixes into training.

The rows are the replay pool's prompts with the BASE model's own answers (``general_answers``), so
training on them pulls the tuned model back towards what it did before on general prompts without
teaching it anything new. Which prompts, and how many, is decided in the plan (``resolved.replay``)
from the task's size; the answers are only needed by the training pod.

Light on purpose (no torch): the CPU-only pre-flight plans with it too.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

from kubetune_trainer.general_prompts import ANSWER_MAX_NEW_TOKENS as MAX_NEW_TOKENS
from kubetune_trainer.general_prompts import GeneralPrompt, matches_known_answer

# The plan sizes training before the answers exist (the pre-flight never generates them): each replay
# row is counted as its prompt plus a full-length answer, an upper bound that keeps the memory and
# time estimates on the safe side and is the same in the pre-flight and the training pod.
PLANNED_ANSWER_TOKENS = MAX_NEW_TOKENS


def choose_replay_prompts(pool: Sequence[GeneralPrompt], count: int, seed: str) -> list[GeneralPrompt]:
    """``count`` prompts of the pool in an order fixed by the split seed (a retrain replays the same)."""

    def rank(prompt: GeneralPrompt) -> str:
        return hashlib.sha256(f"{seed}\0replay\0{prompt.id}".encode()).hexdigest()

    return sorted(pool, key=rank)[: max(0, count)]


def answers_worth_replaying(prompts: Sequence[GeneralPrompt], answers: dict[str, str]) -> list[GeneralPrompt]:
    """The drawn prompts whose base answer is worth training on: open-ended ones, and those with a
    known answer the base model got right. A wrong base answer would be taught as the answer; fewer
    rows also train faster, and the adapter strength protects the general ability (docs/defaults.md)."""
    return [p for p in prompts if p.keywords is None or matches_known_answer(answers[p.id], p.keywords)]
