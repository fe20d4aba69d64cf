"""Elastic weight consolidation for a continued version (``spec.continual.ewc``).

Kirkpatrick et al. (2017): after task A, the posterior over the weights is approximated by a Gaussian
around A's solution whose precision is the diagonal of the Fisher information; training on task B
adds its log-density, the penalty ``lambda/2 * sum_i F_i (theta_i - theta*_i)^2``.

Here ``theta`` is what this job trains (the new adapter's weights on top of the version it started
from, or every weight for full fine-tuning) and ``theta*`` its values when training starts: the
version's function. ``F`` is the empirical Fisher: per example of the earlier task's data (the rows
replayed from the chain's versions), the squared gradient of that example's mean token loss, averaged.
Examples go one at a time because the square of a batch's gradient is not the mean of its examples'
squares. A fresh LoRA adapter starts with B = 0, so A's Fisher is zero there and the penalty holds
back B, the half that changes the function.

The penalty's gradient, ``lambda * F * (theta - theta*)``, is added to the parameters' gradients just
before each optimizer step rather than to the loss: exact once per step whatever the gradient
accumulation and loss scaling (transformers scales a micro-batch's loss differently depending on the
loss function), and not shrunk by gradient clipping, which applies to the task's gradient only.
No library in the pinned set ships EWC for transformers' Trainer; this is the paper's formula, a few
lines over torch.

A version trained with ``continual.publishFisher`` publishes its task's Fisher for the job that
continues it (``fisher/fisher.safetensors``): estimated the way that job would, on the parameters it
would train, loaded the way it loads them (its merged weights, the same method, adapter settings and
seed), with the SHA-256 of those starting values beside it. The continuing job uses it only when its
own starting values have that digest; otherwise the Fisher belongs to another starting point and the
job estimates its own on the replayed data.
"""

from __future__ import annotations

import hashlib
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import TrainerCallback

from kubetune_trainer.data.types import Example
from kubetune_trainer.errors import ConfigurationError
from kubetune_trainer.tensors.batching import RowDataset, build_rows, collator_for
from kubetune_trainer.tensors.encode import IGNORE_INDEX, encode_example

# Rows of the earlier task the Fisher is estimated on: a seeded sample beyond this. Each is one
# forward and backward pass (SmolLM2-135M with LoRA on 2 CPU cores: about 0.2 s), and the estimate's
# ranking of parameters is stable well before (Kirkpatrick et al. used a few hundred samples).
FISHER_ROWS = 200
FISHER_FILE = "fisher.safetensors"  # under the version's fisher/ folder
ANCHOR_DIGEST = "anchorSha256"  # the file's metadata key: the starting values the Fisher was estimated at


def auto_lambda(earlier_rows: int, new_rows: int) -> float:
    """The penalty weight of the Laplace approximation: the posterior after task A is its N_A rows'
    likelihood, and the loss here is a mean over task B's N_B rows, so A's quadratic weighs N_A / N_B."""
    return earlier_rows / max(new_rows, 1)


@dataclass(frozen=True)
class EwcPlan:
    earlier: list[Example]  # the earlier task's training rows (the replayed sources')
    new_rows: int  # this job's own training rows
    lambda_: float | None  # spec.continual.ewc.lambda; None: auto_lambda
    seed: int
    published: Path | None = None  # the version's fisher.safetensors, verified against its manifest
    version: str = ""  # the version continued, for messages

    def weight(self, earlier_rows: int) -> float:
        """The penalty's weight, where the earlier task counts ``earlier_rows`` rows."""
        return self.lambda_ if self.lambda_ is not None else auto_lambda(earlier_rows, self.new_rows)


def diagonal_fisher(
    model: Any,
    examples: Sequence[Example],
    tokenizer: Any,
    *,
    sequence_length: int,
    chat_template: str | None,
    device: str,
) -> dict[str, torch.Tensor]:
    """Mean over ``examples`` of each trainable parameter's squared gradient of the example's mean token loss."""
    trainable = {name: p for name, p in model.named_parameters() if p.requires_grad}
    fisher = {name: torch.zeros_like(p, dtype=torch.float32) for name, p in trainable.items()}
    collate = collator_for(tokenizer, packing=False)
    was_training = model.training
    model.eval()  # the Fisher of the function itself: no dropout noise
    used = 0
    try:
        for example in examples:
            encoded = encode_example(example, tokenizer, sequence_length, chat_template)
            row = RowDataset(build_rows([encoded], sequence_length, packing=False))[0]
            if all(label == IGNORE_INDEX for label in row["labels"][1:]):
                continue  # truncated away: no answer token left to score
            batch = collate([row])
            model.zero_grad(set_to_none=True)
            loss = model(**{k: v.to(device) for k, v in batch.items()}).loss
            loss.backward()
            for name, p in trainable.items():
                if p.grad is not None:
                    fisher[name] += p.grad.detach().float() ** 2
            used += 1
    finally:
        model.zero_grad(set_to_none=True)
        model.train(was_training)
    return {name: f / max(used, 1) for name, f in fisher.items()}


class ElasticAnchor(TrainerCallback):
    """Adds the EWC penalty's gradient before every optimizer step (module docstring)."""

    def __init__(self, model: Any, fisher: dict[str, torch.Tensor], weight: float) -> None:
        self.weight = weight
        self.parameters = {name: p for name, p in model.named_parameters() if p.requires_grad and name in fisher}
        self.anchor = {name: p.detach().clone() for name, p in self.parameters.items()}
        self.fisher = {name: fisher[name].to(p.device, p.dtype) for name, p in self.parameters.items()}

    def penalty(self) -> float:
        """lambda/2 * sum F (theta - theta*)^2 at the current weights."""
        with torch.no_grad():
            total = sum(
                float((self.fisher[n] * (p.detach() - self.anchor[n]) ** 2).sum()) for n, p in self.parameters.items()
            )
        return self.weight / 2 * total

    def on_pre_optimizer_step(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        with torch.no_grad():
            for name, p in self.parameters.items():
                pull = self.weight * self.fisher[name] * (p.detach() - self.anchor[name])
                p.grad = pull if p.grad is None else p.grad.add_(pull.to(p.grad.dtype))


def anchor_digest(model: Any) -> str:
    """SHA-256 of the trainable parameters' names and starting values (as float32)."""
    digest = hashlib.sha256()
    for name, p in sorted((n, p) for n, p in model.named_parameters() if p.requires_grad):
        digest.update(name.encode())
        digest.update(p.detach().float().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def _sample(rows: Sequence[Example], seed: int) -> list[Example]:
    return list(rows) if len(rows) <= FISHER_ROWS else random.Random(seed).sample(list(rows), FISHER_ROWS)


@dataclass(frozen=True)
class PublishedFisher:
    fisher: dict[str, torch.Tensor]
    rows: int  # the rows it was estimated on
    task_rows: int  # the rows the publishing version trained on: the earlier task's size


def _published_fisher(plan: EwcPlan, model: Any) -> PublishedFisher | None:
    """The version's Fisher where it was estimated at ``model``'s starting values; checked to hold one
    finite, non-negative value per trainable parameter (a file is read from storage: not trusted)."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    if plan.published is None:
        return None
    with safe_open(str(plan.published), framework="pt") as handle:
        metadata = handle.metadata() or {}
    if metadata.get(ANCHOR_DIGEST) != anchor_digest(model):
        return None
    fisher = load_file(str(plan.published))
    shapes = {name: tuple(p.shape) for name, p in model.named_parameters() if p.requires_grad}
    broken = sorted(set(shapes) ^ set(fisher)) or [
        name
        for name, f in fisher.items()
        if tuple(f.shape) != shapes[name] or not bool(torch.isfinite(f).all()) or bool((f < 0).any())
    ]
    rows, task_rows = metadata.get("rows", ""), metadata.get("taskRows", "")
    if broken or not (rows.isdigit() and task_rows.isdigit()):
        raise ConfigurationError(
            f"spec.continual.ewc: the Fisher published with {plan.version} is not one finite, non-negative value "
            f"per trained parameter with its row counts (first wrong: {broken[0] if broken else 'its metadata'}): "
            f"the version is damaged; continue from another"
        )
    return PublishedFisher(fisher, int(rows), int(task_rows))


def prepare_anchor(
    plan: EwcPlan, model: Any, tokenizer: Any, *, sequence_length: int, chat_template: str | None, device: str
) -> tuple[ElasticAnchor, dict[str, Any]]:
    """The callback that anchors ``model`` where it stands now, and what the lineage records of it."""
    started = time.perf_counter()
    published = _published_fisher(plan, model)
    if published is not None:  # the earlier task is the publishing version's training rows
        fisher, rows_used, earlier_rows = published.fisher, published.rows, published.task_rows
    elif plan.earlier:  # the earlier task is the rows replayed here
        rows = _sample(plan.earlier, plan.seed)
        fisher = diagonal_fisher(
            model, rows, tokenizer, sequence_length=sequence_length, chat_template=chat_template, device=device
        )
        rows_used, earlier_rows = len(rows), len(plan.earlier)
    else:
        raise ConfigurationError(
            f"spec.continual.ewc: the Fisher published with {plan.version} was estimated for another starting "
            f"point (a different method, adapter settings, seed or hardware precision), and no earlier data is "
            f"replayed to estimate it again: set continual.replayFraction above 0, or continue with the recipe "
            f"that published it"
        )
    weight = plan.weight(earlier_rows)
    anchor = ElasticAnchor(model, fisher, weight)
    record = {
        "lambda": weight,
        "lambdaAuto": plan.lambda_ is None,
        "fisher": "published" if published is not None else "estimated",
        "earlierRows": earlier_rows,
        "newRows": plan.new_rows,
        "fisherRows": rows_used,
        "fisherSeconds": round(time.perf_counter() - started, 3),
        "parameters": sum(f.numel() for f in fisher.values()),
        "fisherMean": float(sum(f.sum() for f in fisher.values()) / max(sum(f.numel() for f in fisher.values()), 1)),
    }
    return anchor, record


def publish_fisher(
    weights_dir: Path,
    resolved: Any,
    rows: Sequence[Example],
    destination: Path,
    *,
    device: str,
    bf16: bool,
    chat_template: str | None,
) -> dict[str, Any]:
    """This version's task's Fisher, for the parameters a job continuing ``weights_dir`` with the same
    ``resolved`` training trains, written to ``destination`` with the digest of their starting values."""
    from safetensors.torch import save_file
    from transformers import set_seed

    from kubetune_trainer.training.model import load_for_training

    hp = resolved.hyperparameters
    set_seed(hp.seed)  # as the continuing job's training loop does before its adapter is created
    model, tokenizer = load_for_training(weights_dir, resolved, device=device, bf16=bf16)
    sample = _sample(rows, hp.seed)
    fisher = diagonal_fisher(
        model, sample, tokenizer, sequence_length=hp.sequence_length, chat_template=chat_template, device=device
    )
    digest = anchor_digest(model)
    destination.parent.mkdir(parents=True, exist_ok=True)
    save_file(
        {name: f.contiguous() for name, f in fisher.items()},
        str(destination),
        metadata={
            ANCHOR_DIGEST: digest,
            "rows": str(len(sample)),
            "taskRows": str(len(rows)),
            "method": str(resolved.method),
        },
    )
    return {"rows": len(sample), ANCHOR_DIGEST: digest, "parameters": sum(f.numel() for f in fisher.values())}
