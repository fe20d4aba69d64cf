"""AdaLoRA's schedule inside kubetune's training loop.

peft prunes an AdaLoRA adapter from ``update_and_allocate(step)``, which must run after each optimizer
step while the gradients are still there; transformers' Trainer never calls it, so this callback does,
from ``on_optimizer_step`` (after ``optimizer.step()``, before ``zero_grad()``). peft adds AdaLoRA's
orthogonality penalty only to a loss the model's own forward computes from labels; kubetune computes its
losses outside the forward (labelled positions, preference pairs), so the penalty's gradient is added
here once per optimizer step, before the step: the same gradient peft's per-micro-batch term sums to.

Checkpoints and resume: peft writes an adapter with a rank pattern resized to the surviving ranks and
resizes the live modules when it loads one, which would leave the optimizer holding the old
parameters. So during training the pattern stays out of peft's config (a checkpoint holds full-size,
masked weights) and travels, with the rank allocator's importance averages, in a file of its own
inside each checkpoint; the finished adapter is saved pruned.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from transformers import TrainerCallback

STATE_FILE = "kubetune_adalora.pt"


def _adalora_model(model: Any) -> Any:
    """peft's AdaLoraModel under the PeftModel (unwrapped from DDP where it is wrapped)."""
    from peft.tuners.adalora import AdaLoraModel

    model = getattr(model, "module", model)
    tuner = model.base_model
    if not isinstance(tuner, AdaLoraModel):
        raise TypeError(f"not an AdaLoRA model: {type(tuner).__name__}")
    return tuner


def orthogonality_penalty(model: Any) -> Any:
    """Mean Frobenius distance of P Pᵀ (rows of A) and Qᵀ Q (columns of B) from the identity over the
    adapter's factors: AdaLoRA's regulariser, as peft's forward computes it."""
    import torch

    tuner = _adalora_model(model)
    adapter = tuner.trainable_adapter_name
    distances = []
    for name, factor in tuner.model.named_parameters():
        if not factor.requires_grad or f".{adapter}" not in name or factor.numel() == 0:
            continue
        if "lora_A" in name:
            gram = factor @ factor.T
        elif "lora_B" in name:
            gram = factor.T @ factor
        else:
            continue
        distances.append(torch.linalg.matrix_norm(gram - torch.eye(*gram.shape, device=gram.device, dtype=gram.dtype)))
    return torch.stack(distances).mean() if distances else None


class AdaLoraSchedule(TrainerCallback):
    """Runs peft's rank allocation after every optimizer step and carries its state through checkpoints."""

    def __init__(self, model: Any, orthogonality_weight: float) -> None:
        self.tuner = _adalora_model(model)
        self.model = model
        self.weight = orthogonality_weight
        self.rank_pattern: dict[str, list[bool]] | None = None

    @property
    def _config(self) -> Any:
        return self.tuner.peft_config[self.tuner.trainable_adapter_name]

    def on_pre_optimizer_step(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self.weight <= 0:
            return
        penalty = orthogonality_penalty(self.model)
        if penalty is not None:
            (self.weight * penalty).backward()

    def on_optimizer_step(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        config = self._config
        config.rank_pattern = self.rank_pattern
        self.tuner.update_and_allocate(state.global_step)  # the step just taken, counted from 0 as peft's
        self.rank_pattern, config.rank_pattern = config.rank_pattern, None

    def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if not state.is_world_process_zero:
            return
        import torch

        folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        if folder.exists():
            torch.save(self._state(), folder / STATE_FILE)

    def _state(self) -> dict[str, Any]:
        allocator = self.tuner.rankallocator
        averages = {name: dict(getattr(allocator, name)) for name in ("ipt", "exp_avg_ipt", "exp_avg_unc")}
        return {"rank_pattern": self.rank_pattern, **averages}

    def load_from(self, checkpoint: Path) -> None:
        """The schedule's state where an interrupted run left it (checkpoints it did not write have none)."""
        import torch

        path = checkpoint / STATE_FILE
        if not path.exists():
            return
        saved = torch.load(path, map_location="cpu", weights_only=True)
        self.rank_pattern = saved.pop("rank_pattern")
        allocator = self.tuner.rankallocator
        devices = {name: parameter.device for name, parameter in self.tuner.model.named_parameters()}
        for name, values in saved.items():
            getattr(allocator, name).update({key: value.to(devices[key]) for key, value in values.items()})

    def finish(self) -> None:
        """Before the adapter is saved: the final ranks in peft's config (the saved adapter is pruned to
        them) and applied to the weights, which the best-weights snapshot may have restored unpruned."""
        if self.rank_pattern is None:
            return  # never pruned (a run stopped in the warm-up): every rank is kept
        self._config.rank_pattern = self.rank_pattern
        self.tuner.rankallocator.mask_using_rank_pattern(self.tuner.model, self.rank_pattern)


def kept_ranks(model: Any) -> dict[str, int]:
    """The ranks each adapted weight keeps: the nonzero singular values of its ``lora_E``."""
    tuner = _adalora_model(model)
    adapter = tuner.trainable_adapter_name
    return {
        name.removesuffix(f".lora_E.{adapter}"): int((values != 0).sum())
        for name, values in tuner.model.named_parameters()
        if name.endswith(f".lora_E.{adapter}")
    }
