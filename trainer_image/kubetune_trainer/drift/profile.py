"""The reference profile a version carries: what its training data looked like, in the terms the
drift detectors compare production windows with (``drift.detectors``).

- ``embeddings``: the *base* model's mean-pooled last hidden states of up to MAX_ROWS prompts (the
  base model, so a profile means the same thing for every version tuned from it), float16;
- ``lengths``: the prompts' token counts;
- ``labels``: the answers, where answers are labels (the task's label set), else none;
- ``losses``: the *tuned* model's mean per-token loss on held-out prompts (the test split: prompts
  it was trained on would look easier than any production prompt and make every window "harder").

A prompt is everything a model is asked (the conversation before the final answer, as
``role: content`` lines, or a plain text): request logs are read into the same form, so both sides
are measured alike. Bounded: at most MAX_ROWS rows of each, a few hundred kilobytes for a 1B model.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from kubetune_trainer.data.types import Example
from kubetune_trainer.drift.detectors import Array, Sample
from kubetune_trainer.evaluation.metrics import as_label

MAX_ROWS = 256
MAX_PROMPT_TOKENS = 256  # longer prompts are embedded and scored on their first tokens
PROFILE_FILE = "profile.json"
EMBEDDINGS_FILE = "embeddings.npy"
FORMAT_VERSION = 1


def prompt_text(example: Example) -> str:
    """What the model is asked, as one text."""
    if example.messages:
        return "\n".join(f"{m.role}: {m.content}" for m in example.prompt_messages())
    return example.text or ""


@dataclass(frozen=True)
class ReferenceProfile:
    embeddings: Array  # (rows, hidden), float16 as stored
    lengths: list[int]
    labels: list[str] | None
    losses: list[float]
    base_model_sha256: str

    def with_losses(self, tuned: Any, tokenizer: Any, held_out: Sequence[Example], *, seed: int) -> ReferenceProfile:
        """The profile with the tuned model's losses on (up to MAX_ROWS of) the held-out prompts."""
        texts = [prompt_text(e) for e in sample_rows(held_out, seed)]
        return replace(self, losses=prompt_losses(tuned, tokenizer, texts))

    def as_sample(self) -> Sample:
        return Sample(
            embeddings=self.embeddings.astype(np.float64),
            lengths=[float(n) for n in self.lengths],
            labels=self.labels,
            losses=self.losses,
        )

    def save(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        np.save(folder / EMBEDDINGS_FILE, self.embeddings.astype(np.float16), allow_pickle=False)
        document = {
            "formatVersion": FORMAT_VERSION,
            "baseModelSha256": self.base_model_sha256,
            "rows": {"embeddings": int(self.embeddings.shape[0]), "losses": len(self.losses)},
            "embeddingDims": int(self.embeddings.shape[1]),
            "lengths": self.lengths,
            "labels": self.labels,
            "losses": [round(x, 5) for x in self.losses],
        }
        (folder / PROFILE_FILE).write_text(json.dumps(document, indent=1) + "\n")

    @classmethod
    def load(cls, folder: Path) -> ReferenceProfile:
        document = json.loads((folder / PROFILE_FILE).read_text())
        if document.get("formatVersion") != FORMAT_VERSION:
            raise ValueError(
                f"{folder / PROFILE_FILE}: format {document.get('formatVersion')}, expected {FORMAT_VERSION}"
            )
        embeddings = np.load(folder / EMBEDDINGS_FILE, allow_pickle=False)
        if embeddings.ndim != 2 or embeddings.shape[0] != len(document["lengths"]):
            raise ValueError(f"{folder / EMBEDDINGS_FILE}: shape {embeddings.shape} does not match {PROFILE_FILE}")
        return cls(
            embeddings=embeddings,
            lengths=[int(n) for n in document["lengths"]],
            labels=document.get("labels"),
            losses=[float(x) for x in document["losses"]],
            base_model_sha256=str(document.get("baseModelSha256", "")),
        )


def embed(model: Any, tokenizer: Any, texts: Sequence[str], *, batch_size: int = 16) -> Array:
    """Mean of the last hidden states over each text's tokens (padding left out), one row per text."""
    import torch

    width = int(model.config.hidden_size)
    rows = np.zeros((len(texts), width))
    device = next(model.parameters()).device
    with torch.no_grad():
        for order in _batches_by_length(tokenizer, texts, batch_size):
            batch = _tokenize(tokenizer, [texts[i] for i in order], device)
            # One position of logits, not a vocabulary's worth for every token (49k x 256 x 16 floats).
            hidden = model(**batch, output_hidden_states=True, logits_to_keep=1).hidden_states[-1].float()
            mask = batch["attention_mask"].unsqueeze(-1).float()
            rows[order] = ((hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1)).cpu().numpy()
    return rows


def prompt_losses(model: Any, tokenizer: Any, texts: Sequence[str], *, batch_size: int = 4) -> list[float]:
    """Each text's mean per-token negative log-likelihood under ``model`` (padding left out). Small
    batches: every position's logits are needed, a vocabulary's worth each."""
    import torch

    losses = [0.0] * len(texts)
    device = next(model.parameters()).device
    with torch.no_grad():
        for order in _batches_by_length(tokenizer, texts, batch_size):
            batch = _tokenize(tokenizer, [texts[i] for i in order], device)
            logits = model(**batch).logits[:, :-1].float()
            targets = batch["input_ids"][:, 1:]
            mask = batch["attention_mask"][:, 1:].float()
            nll = torch.nn.functional.cross_entropy(logits.transpose(1, 2), targets, reduction="none")
            per_text = (nll * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1)
            for i, loss in zip(order, per_text.cpu(), strict=True):
                losses[i] = float(loss)
    return losses


def _batches_by_length(tokenizer: Any, texts: Sequence[str], batch_size: int) -> list[list[int]]:
    """The texts' positions in batches of similar token counts, so a batch pads little: on kubetune's
    drift calibration texts (tickets and general prompts) a batch of 16 in the given order is 18%
    padding, in length order 2% (a row's states do not depend on its batch: right padding, causal)."""
    lengths = [min(n, MAX_PROMPT_TOKENS) for n in token_lengths(tokenizer, texts)]
    ordered = sorted(range(len(texts)), key=lambda i: lengths[i])
    return [ordered[start : start + batch_size] for start in range(0, len(ordered), batch_size)]


def token_lengths(tokenizer: Any, texts: Sequence[str]) -> list[int]:
    return [len(tokenizer(text, add_special_tokens=True)["input_ids"]) for text in texts]


def _tokenize(tokenizer: Any, texts: Sequence[str], device: Any) -> dict[str, Any]:
    """Right-padded (with a causal model, a row's states do not depend on the padding after it), the
    shared tokenizer's own settings left as they were (generation elsewhere pads on the left)."""
    side, pad = tokenizer.padding_side, tokenizer.pad_token
    try:
        tokenizer.padding_side = "right"
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token
        batch = tokenizer(list(texts), return_tensors="pt", padding=True, truncation=True, max_length=MAX_PROMPT_TOKENS)
    finally:
        tokenizer.padding_side, tokenizer.pad_token = side, pad
    return {key: value.to(device) for key, value in batch.items() if key in ("input_ids", "attention_mask")}


def sample_rows(examples: Sequence[Example], seed: int, limit: int = MAX_ROWS) -> list[Example]:
    """Up to ``limit`` examples, a fixed random choice by ``seed`` (the same rows on a rerun)."""
    if len(examples) <= limit:
        return list(examples)
    chosen = np.random.default_rng(seed).choice(len(examples), size=limit, replace=False)
    return [examples[i] for i in sorted(chosen)]


def build_profile(
    base: Any,
    tokenizer: Any,
    *,
    train: Sequence[Example],
    labels: Sequence[str] | None,
    base_model_sha256: str,
    seed: int,
) -> ReferenceProfile:
    """The base model's side of a profile (``base`` already with any adapter off); ``labels``: the
    task's label set when answers are labels (kept only if every sampled answer is one). The tuned
    model's losses come after, from :meth:`ReferenceProfile.with_losses`."""
    rows = sample_rows(train, seed)
    texts = [prompt_text(e) for e in rows]
    label_set = set(labels or ())
    answers = [as_label(e.reference()) for e in rows] if label_set else None
    kept = answers if answers is not None and all(a in label_set for a in answers) else None
    return ReferenceProfile(
        embeddings=embed(base, tokenizer, texts),
        lengths=token_lengths(tokenizer, texts),
        labels=kept,
        losses=[],
        base_model_sha256=base_model_sha256,
    )
