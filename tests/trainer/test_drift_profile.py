"""The reference profile on a real (tiny) transformers model: masked mean-pooled embeddings and
per-prompt losses that do not depend on what a prompt was batched with, a bounded profile that
survives a save and load, and a detector check of the profile against production-like windows."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from kubetune_trainer.data.types import Example, Message
from kubetune_trainer.drift.detectors import Sample, check
from kubetune_trainer.drift.profile import (
    EMBEDDINGS_FILE,
    MAX_ROWS,
    ReferenceProfile,
    build_profile,
    embed,
    prompt_losses,
    prompt_text,
    token_lengths,
)

LABELS = ("billing", "bug", "account")
TOPICS = {
    "billing": "I was charged twice for my subscription this month, order {n}.",
    "bug": "The app crashes when I open the settings page, build {n}.",
    "account": "I cannot log in to my account after the password reset, ticket {n}.",
}
FRENCH = "Bonjour, je voudrais savoir pourquoi ma commande {n} n'est toujours pas arrivée chez moi."


def ticket(n: int) -> Example:
    """Ticket ``n``: every one from the same population (a three-digit number, whatever ``n`` is)."""
    label = LABELS[n % 3]
    number = (n * 7919) % 900 + 100
    return Example(messages=(Message("user", TOPICS[label].format(n=number)), Message("assistant", label)))


@pytest.fixture(scope="module")
def tiny(tiny_model_dir: Path) -> tuple[Any, Any]:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()
    return model, AutoTokenizer.from_pretrained(tiny_model_dir)


def test_embeddings_and_losses_do_not_depend_on_the_batch(tiny: tuple[Any, Any]) -> None:
    model, tokenizer = tiny
    short, long = "user: hi", "user: " + "a much longer prompt about a broken invoice " * 5
    side = tokenizer.padding_side
    alone, batched = embed(model, tokenizer, [short]), embed(model, tokenizer, [short, long])
    assert alone.shape == (1, model.config.hidden_size) and batched.shape == (2, model.config.hidden_size)
    np.testing.assert_allclose(alone[0], batched[0], rtol=1e-4, atol=1e-5)
    assert not np.allclose(batched[0], batched[1])
    losses = prompt_losses(model, tokenizer, [short, long])
    assert prompt_losses(model, tokenizer, [short])[0] == pytest.approx(losses[0], rel=1e-4)
    assert all(np.isfinite(losses)) and all(x > 0 for x in losses)
    assert tokenizer.padding_side == side, "the shared tokenizer is left as it was"


def test_texts_batched_by_length_come_back_in_the_order_given(tiny: tuple[Any, Any]) -> None:
    """Batches are formed in length order (less padding); each row is still the text given there."""
    model, tokenizer = tiny
    texts = [f"user: {'a refund for order 1234 please ' * n}" for n in (9, 1, 5, 3, 7)]
    one_by_one = np.concatenate([embed(model, tokenizer, [text]) for text in texts])
    np.testing.assert_allclose(embed(model, tokenizer, texts, batch_size=2), one_by_one, rtol=1e-4, atol=1e-5)
    alone = [prompt_losses(model, tokenizer, [text])[0] for text in texts]
    assert prompt_losses(model, tokenizer, texts, batch_size=2) == pytest.approx(alone, rel=1e-4)
    assert len(set(alone)) == len(texts), "distinct texts, distinct losses: a misplaced row would show"


def test_a_profile_is_bounded_and_survives_save_and_load(tiny: tuple[Any, Any], tmp_path: Path) -> None:
    model, tokenizer = tiny
    train, held_out = [ticket(n) for n in range(300)], [ticket(n) for n in range(300, 340)]
    profile = build_profile(model, tokenizer, train=train, labels=LABELS, base_model_sha256="ab" * 32, seed=1)
    profile = profile.with_losses(model, tokenizer, held_out, seed=1)
    assert profile.embeddings.shape == (MAX_ROWS, model.config.hidden_size)
    assert len(profile.lengths) == MAX_ROWS and profile.labels is not None and set(profile.labels) == set(LABELS)
    assert len(profile.losses) == 40
    profile.save(tmp_path / "profile")
    assert (tmp_path / "profile" / EMBEDDINGS_FILE).stat().st_size < 64 * 1024, "float16, bounded"
    loaded = ReferenceProfile.load(tmp_path / "profile")
    np.testing.assert_allclose(loaded.embeddings, profile.embeddings, rtol=1e-2, atol=1e-3)
    assert loaded.lengths == profile.lengths and loaded.labels == profile.labels
    # Free-text answers are not labels: no label distribution is kept.
    free = build_profile(model, tokenizer, train=train[:20], labels=None, base_model_sha256="", seed=1)
    assert free.labels is None


def test_the_profile_tells_production_like_its_data_from_production_that_moved(tiny: tuple[Any, Any]) -> None:
    model, tokenizer = tiny
    train, held_out = [ticket(n) for n in range(0, 400)], [ticket(n) for n in range(400, 460)]
    profile = build_profile(model, tokenizer, train=train, labels=LABELS, base_model_sha256="", seed=3)
    reference = profile.with_losses(model, tokenizer, held_out, seed=3).as_sample()

    def window(texts: list[str]) -> Sample:
        return Sample(
            embeddings=embed(model, tokenizer, texts),
            lengths=[float(n) for n in token_lengths(tokenizer, texts)],
            losses=prompt_losses(model, tokenizer, texts),
        )

    same = window([prompt_text(ticket(n)) for n in range(1000, 1100)])
    moved = window([f"user: {FRENCH.format(n=n + 100)}" for n in range(100)])
    assert not check(reference, same, seed=0).drifted, check(reference, same, seed=0).explain()
    decision = check(reference, moved, seed=0)
    assert decision.drifted and decision.adjusted["embeddings.mmd"] < 0.05, decision.explain()
