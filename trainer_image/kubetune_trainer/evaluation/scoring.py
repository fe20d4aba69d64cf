"""Model-facing evaluation primitives: teacher-forced NLL and greedy generation, batched.

Base and tuned models go through exactly the same code (same chat template, same decoding),
so their scores differ only by their weights.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from typing import Any

import torch

from kubetune_trainer.data.types import Example
from kubetune_trainer.tensors.encode import IGNORE_INDEX, encode_example, prompt_ids


@dataclass(frozen=True)
class TokenLoss:
    nll_sum: float  # summed negative log-likelihood (nats) over the scored tokens
    tokens: int

    @property
    def mean(self) -> float:
        return self.nll_sum / self.tokens if self.tokens else 0.0


@contextmanager
def adapter_disabled(model: Any) -> Iterator[None]:
    """Run a peft model as its base (the adapter switched off); other models unchanged."""
    disable = getattr(model, "disable_adapter", None)
    with disable() if callable(disable) else nullcontext():
        yield


def _device(model: Any) -> torch.device:
    return next(model.parameters()).device


@torch.no_grad()
def token_losses(
    model: Any,
    tokenizer: Any,
    examples: Sequence[Example],
    *,
    max_length: int,
    batch_size: int,
    chat_template: str | None = None,
) -> list[TokenLoss]:
    """Per example: NLL of its label tokens (assistant turns + EOS), teacher-forced."""
    encoded = [encode_example(e, tokenizer, max_length, chat_template) for e in examples]
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    device = _device(model)
    results: list[TokenLoss] = []
    for start in range(0, len(encoded), batch_size):
        chunk = encoded[start : start + batch_size]
        width = max(len(e) for e in chunk)
        ids = torch.tensor([e.input_ids + [pad] * (width - len(e)) for e in chunk], device=device)
        labels = torch.tensor([e.labels + [IGNORE_INDEX] * (width - len(e)) for e in chunk], device=device)
        mask = torch.tensor([[1] * len(e) + [0] * (width - len(e)) for e in chunk], device=device)
        logits = model(input_ids=ids, attention_mask=mask, use_cache=False).logits[:, :-1]
        targets = labels[:, 1:]
        valid = targets != IGNORE_INDEX
        # Cross-entropy on the scored positions only: no full-vocabulary softmax for prompts.
        nll = torch.nn.functional.cross_entropy(logits[valid].float(), targets[valid], reduction="none")
        rows = valid.nonzero()[:, 0]
        sums = torch.zeros(len(chunk), dtype=torch.float64, device=nll.device).index_add_(0, rows, nll.double())
        counts = valid.sum(dim=1)
        for row in range(len(chunk)):
            results.append(TokenLoss(float(sums[row]), int(counts[row])))
    return results


@torch.no_grad()
def generate(
    model: Any,
    tokenizer: Any,
    examples: Sequence[Example],
    *,
    max_new_tokens: int,
    batch_size: int,
    chat_template: str | None = None,
) -> list[str]:
    """Greedy answers to each example's prompt (left-padded batches, stopping at EOS)."""
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    device = _device(model)
    prompts = [prompt_ids(e, tokenizer, chat_template) for e in examples]
    outputs: list[str] = []
    for start in range(0, len(prompts), batch_size):
        chunk = prompts[start : start + batch_size]
        width = max(len(p) for p in chunk)
        ids = torch.tensor([[pad] * (width - len(p)) + p for p in chunk], device=device)
        mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in chunk], device=device)
        generated = model.generate(
            input_ids=ids,
            attention_mask=mask,
            max_new_tokens=max_new_tokens,
            do_sample=False,
            num_beams=1,
            use_cache=True,  # training turned the cache off in model.config
            pad_token_id=pad,
            eos_token_id=tokenizer.eos_token_id,
        )
        for row in generated[:, width:]:
            outputs.append(tokenizer.decode(row, skip_special_tokens=True).strip())
    return outputs
