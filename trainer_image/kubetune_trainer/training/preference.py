"""Preference objectives: DPO (sigmoid or IPO loss) and ORPO, on pairs of a chosen and a rejected answer.

Each pair is encoded twice, prompt + chosen and prompt + rejected, with the loss positions SFT
uses (the answer and the template's closing token). A batch stacks the chosen rows, then the
rejected rows, padded together: one forward for both. An answer's log-likelihood is the sum over
its labelled tokens, with only those positions projected onto the vocabulary (tensors/positions.py).

DPO's reference is the base model, and the model before its first step *is* the base: LoRA's B
and DoRA's direction update start at zero, IA3's vectors at one, and a full fine-tune has not
moved. So the reference log-likelihoods of every pair are computed once, before training, with
dropout off, and travel with the pairs (TRL's ``precompute_ref_log_probs``): no second model in
memory, for a full fine-tune either, and a resumed run computes the same values again.

The losses are written here rather than taken from TRL's DPOTrainer, whose data pipeline and
collator would replace kubetune's (chat-template spans, token metering, checkpoint sync); each is
checked against TRL's own formula on a tiny batch (tests/trainer/test_preference_loss.py).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from kubetune.api.v1alpha1 import DpoLoss, ResolvedDpoObjective, ResolvedObjective, ResolvedOrpoObjective
from kubetune_trainer.data.types import Example
from kubetune_trainer.evaluation.scoring import adapter_disabled
from kubetune_trainer.tensors.encode import IGNORE_INDEX, EncodedExample, encode_example
from kubetune_trainer.tensors.positions import keeps_selected_logits, labelled_positions
from kubetune_trainer.training.progress import MeteredTrainer

REFERENCE_BATCH_PAIRS = 8


@dataclass(frozen=True)
class EncodedPair:
    chosen: EncodedExample
    rejected: EncodedExample


def encode_pairs(
    examples: Sequence[Example], tokenizer: Any, max_length: int, chat_template: str | None
) -> list[EncodedPair]:
    return [
        EncodedPair(
            chosen=encode_example(e, tokenizer, max_length, chat_template),
            rejected=encode_example(e.with_rejected_answer(), tokenizer, max_length, chat_template),
        )
        for e in examples
    ]


class PairDataset(Dataset[dict[str, Any]]):
    """Pairs as the Trainer's dataset; ``input_ids`` (the chosen row) is what length grouping reads."""

    def __init__(self, pairs: Sequence[EncodedPair], reference: Sequence[tuple[float, float]] | None = None) -> None:
        self.pairs = list(pairs)
        self.reference = list(reference) if reference is not None else [(0.0, 0.0)] * len(self.pairs)

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, index: int) -> dict[str, Any]:
        pair = self.pairs[index]
        return {
            "input_ids": pair.chosen.input_ids,
            "labels": pair.chosen.labels,
            "rejected_input_ids": pair.rejected.input_ids,
            "rejected_labels": pair.rejected.labels,
            "reference_logps": list(self.reference[index]),
        }


@dataclass
class PairCollator:
    """Chosen rows then rejected rows, right-padded to one width, with an attention mask."""

    pad_token_id: int

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        rows = [(f["input_ids"], f["labels"]) for f in features]
        rows += [(f["rejected_input_ids"], f["rejected_labels"]) for f in features]
        width = max(len(ids) for ids, _ in rows)
        return {
            "input_ids": torch.tensor([ids + [self.pad_token_id] * (width - len(ids)) for ids, _ in rows]),
            "labels": torch.tensor([labels + [IGNORE_INDEX] * (width - len(labels)) for _, labels in rows]),
            "attention_mask": torch.tensor([[1] * len(ids) + [0] * (width - len(ids)) for ids, _ in rows]),
            "reference_logps": torch.tensor([f["reference_logps"] for f in features], dtype=torch.float32),
        }


def answer_logps(model: Any, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row of ``batch``: the summed log-likelihood of its labelled tokens, and how many there are."""
    labels = batch["labels"]
    keep, targets = labelled_positions(labels)
    inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"], "use_cache": False}
    if keeps_selected_logits(model):
        logits = model(**inputs, logits_to_keep=keep).logits
    else:
        logits = model(**inputs).logits[keep]
    token_logps = -F.cross_entropy(
        logits.reshape(-1, logits.shape[-1]).float(), targets.reshape(-1).to(logits.device), reduction="none"
    )
    rows = keep.nonzero()[:, 0].to(token_logps.device)
    sums = torch.zeros(labels.shape[0], dtype=token_logps.dtype, device=token_logps.device).index_add(
        0, rows, token_logps
    )
    return sums, keep.sum(dim=1).to(sums.device)


def dpo_losses(
    chosen: torch.Tensor,
    rejected: torch.Tensor,
    reference_chosen: torch.Tensor,
    reference_rejected: torch.Tensor,
    *,
    beta: float,
    loss: DpoLoss,
    chosen_tokens: torch.Tensor,
    rejected_tokens: torch.Tensor,
) -> torch.Tensor:
    """Per pair. sigmoid: -log sigmoid(β((c - c_ref) - (r - r_ref))) (Rafailov et al. 2023). ipo: the squared
    distance of the per-token log-ratio difference from 1/(2β) (Azar et al. 2023, normalised per token
    as TRL does with the IPO authors' agreement)."""
    chosen_ratio, rejected_ratio = chosen - reference_chosen, rejected - reference_rejected
    if loss == DpoLoss.IPO:
        difference = chosen_ratio / chosen_tokens.clamp(min=1) - rejected_ratio / rejected_tokens.clamp(min=1)
        return (difference - 1 / (2 * beta)) ** 2
    return -F.logsigmoid(beta * (chosen_ratio - rejected_ratio))


def _log1mexp(x: torch.Tensor) -> torch.Tensor:
    """log(1 - eˣ) for x < 0, accurate at both ends (Maechler 2012)."""
    return torch.where(x > -0.6931, torch.log(-torch.expm1(x)), torch.log1p(-torch.exp(x)))


def orpo_odds_ratio_losses(chosen_mean: torch.Tensor, rejected_mean: torch.Tensor, *, beta: float) -> torch.Tensor:
    """Per pair: -β log sigmoid(log odds(chosen) - log odds(rejected)), odds from the mean per-token
    likelihood (Hong et al. 2024, eq. 7); ORPO adds the chosen answers' NLL."""
    log_odds = (chosen_mean - rejected_mean) - (_log1mexp(chosen_mean) - _log1mexp(rejected_mean))
    return -beta * F.logsigmoid(log_odds)


@torch.no_grad()
def reference_logps(model: Any, pairs: Sequence[EncodedPair], collator: PairCollator) -> list[tuple[float, float]]:
    """Each pair's (chosen, rejected) log-likelihood under ``model`` before training, dropout off. A new
    adapter is an identity, so it is switched off: the same values, without its cost."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    values: list[tuple[float, float]] = []
    try:
        with adapter_disabled(model):
            for start in range(0, len(pairs), REFERENCE_BATCH_PAIRS):
                dataset = PairDataset(pairs[start : start + REFERENCE_BATCH_PAIRS])
                batch = collator([dataset[i] for i in range(len(dataset))])
                sums, _ = answer_logps(model, {k: v.to(device) for k, v in batch.items()})
                half = len(dataset)
                values += list(zip(sums[:half].tolist(), sums[half:].tolist(), strict=True))
    finally:
        model.train(was_training)
    return values


class PreferenceTrainer(MeteredTrainer):
    """The training loop with a preference loss in place of the supervised one.

    The loss is a mean over the micro-batch's pairs, so the Trainer divides it by the accumulation
    steps itself (``loss_is_scaled_for_ga``)."""

    def __init__(self, *args: Any, objective: ResolvedObjective, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.objective = objective
        self.loss_is_scaled_for_ga = False

    def compute_loss(
        self, model: Any, inputs: dict[str, Any], return_outputs: bool = False, num_items_in_batch: Any = None
    ) -> Any:
        sums, tokens = answer_logps(model, inputs)
        half = sums.shape[0] // 2
        chosen, rejected = sums[:half], sums[half:]
        chosen_tokens, rejected_tokens = tokens[:half], tokens[half:]
        objective = self.objective
        reference = inputs["reference_logps"].to(sums.device, sums.dtype)
        if isinstance(objective, ResolvedDpoObjective):
            losses = dpo_losses(
                chosen,
                rejected,
                reference[:, 0],
                reference[:, 1],
                beta=objective.beta,
                loss=objective.loss,
                chosen_tokens=chosen_tokens,
                rejected_tokens=rejected_tokens,
            )
            loss = losses.mean()
        elif isinstance(objective, ResolvedOrpoObjective):
            chosen_mean = chosen / chosen_tokens.clamp(min=1)
            rejected_mean = rejected / rejected_tokens.clamp(min=1)
            # The chosen answers' NLL per token over the micro-batch, as ORPO's supervised term.
            nll = -chosen.sum() / chosen_tokens.sum().clamp(min=1)
            loss = nll + orpo_odds_ratio_losses(chosen_mean, rejected_mean, beta=objective.beta).mean()
        else:
            raise TypeError(f"not a preference objective: {objective.type}")
        margins = (chosen - reference[:, 0]) - (rejected - reference[:, 1])
        return (loss, {"margins": margins.detach()}) if return_outputs else loss
