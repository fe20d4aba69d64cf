"""Bottleneck adapters (Houlsby et al. 2019; Pfeiffer et al. 2021), kubetune's own small implementation.

peft 0.21 has no bottleneck adapter and the ``adapters`` library requires transformers 4.x, not the
pinned 5.x, so this module is ours (measured against nothing yet; its tests are in
tests/trainer/test_bottleneck.py). Each adapter sits on the output of a sub-layer, before the
residual connection adds it back: ``h + up(relu(down(h)))`` with the up-projection starting at zero,
so an untrained adapter is the identity and the model starts as its base. ``mlp`` places one after
each layer's MLP (Pfeiffer's configuration); ``attention-and-mlp`` also one after the attention
output (Houlsby's).

:class:`BottleneckModel` wraps the causal LM the way a peft model does (``disable_adapter()``,
``get_base_model()``, ``save_pretrained()``; other attributes are the inner model's), so evaluation,
the DPO reference and the Trainer treat it like any adapter. Its ``state_dict()`` is the adapters'
alone: checkpoints hold a few megabytes, not the frozen base, and a resumed run loads them back.
The published adapter is ``bottleneck_config.json`` and ``bottleneck_model.safetensors``; only
kubetune loads it (no serving stack knows the format), and it cannot be merged: the non-linearity
between the projections is no weight change.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from torch import nn

from kubetune.api.v1alpha1 import BottleneckPlacement, ResolvedBottleneck
from kubetune_trainer.errors import ConfigurationError

CONFIG_FILE = "bottleneck_config.json"
WEIGHTS_FILE = "bottleneck_model.safetensors"
# Which linear layer's output each placement adapts (Llama-style names: the attention's output
# projection and the MLP's down projection, whose outputs the residual connections add).
PLACEMENTS: dict[BottleneckPlacement, tuple[str, ...]] = {
    BottleneckPlacement.MLP: ("mlp.down_proj",),
    BottleneckPlacement.ATTENTION_AND_MLP: ("self_attn.o_proj", "mlp.down_proj"),
}


class Bottleneck(nn.Module):
    """``h + up(relu(down(h)))``; ``up`` starts at zero, so a new adapter changes nothing."""

    def __init__(self, hidden: int, size: int) -> None:
        super().__init__()
        self.down = nn.Linear(hidden, size)
        self.up = nn.Linear(size, hidden)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)
        self.enabled = True

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        if not self.enabled:
            return hidden
        update = self.up(torch.relu(self.down(hidden.to(self.down.weight.dtype))))
        return hidden + update.to(hidden.dtype)


class WithBottleneck(nn.Module):
    """A sub-layer followed by its adapter."""

    def __init__(self, inner: nn.Module, adapter: Bottleneck) -> None:
        super().__init__()
        self.inner = inner
        self.bottleneck = adapter

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return self.bottleneck(self.inner(*args, **kwargs))


def _adapted_names(model: nn.Module, placement: BottleneckPlacement) -> list[str]:
    suffixes = PLACEMENTS[placement]
    return [name for name, _ in model.named_modules() if name.endswith(suffixes)]


def _hidden_size(module: nn.Module) -> int:
    out = getattr(module, "out_features", None)
    if out is None:
        raise ConfigurationError(
            f"spec.method.bottleneck.placement: an adapter goes after a linear layer; this model's is a "
            f"{type(module).__name__}"
        )
    return int(out)


class BottleneckModel(nn.Module):
    """A causal LM with bottleneck adapters; only the adapters are trainable."""

    # transformers' Trainer refuses to train a quantized model unless it says trainable adapters are
    # attached (its flag for adapters loaded through its peft integration): these are.
    _hf_peft_config_loaded = True

    def __init__(self, model: nn.Module, resolved: ResolvedBottleneck) -> None:
        super().__init__()
        self.base = model
        self.resolved = resolved
        for parameter in model.parameters():
            parameter.requires_grad_(False)
        names = _adapted_names(model, resolved.placement)
        if not names:
            wanted = ", ".join(PLACEMENTS[resolved.placement])
            raise ConfigurationError(
                f"spec.method.bottleneck.placement: the base model has no {wanted} module (kubetune places "
                "bottleneck adapters in Llama-style layers)"
            )
        for name in names:
            parent_name, _, child = name.rpartition(".")
            parent = model.get_submodule(parent_name)
            inner = getattr(parent, child)
            weight = next(inner.parameters())
            adapter = Bottleneck(_hidden_size(inner), resolved.size).to(weight.device)
            if weight.dtype.is_floating_point:
                adapter = adapter.to(weight.dtype)
            setattr(parent, child, WithBottleneck(inner, adapter))

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            if name == "base":  # not set yet (during __init__): no inner model to ask
                raise
            return getattr(self.base, name)

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return self.base(*args, **kwargs)

    def generate(self, *args: Any, **kwargs: Any) -> Any:
        return self.base.generate(*args, **kwargs)

    def get_base_model(self) -> nn.Module:
        return self.base

    def adapters(self) -> list[Bottleneck]:
        return [module for module in self.base.modules() if isinstance(module, Bottleneck)]

    @contextmanager
    def disable_adapter(self) -> Iterator[None]:
        """The base model, as peft's context of that name gives it."""
        adapters = self.adapters()
        for adapter in adapters:
            adapter.enabled = False
        try:
            yield
        finally:
            for adapter in adapters:
                adapter.enabled = True

    def state_dict(self, *args: Any, **kwargs: Any) -> dict[str, Any]:  # type: ignore[override]
        """The adapters' weights only (named as in the whole model): checkpoints and the published
        adapter leave out the frozen base."""
        full = super().state_dict(*args, **kwargs)
        return {name: value for name, value in full.items() if ".bottleneck." in name}

    def save_pretrained(self, folder: str | Path, **_: Any) -> None:
        from safetensors.torch import save_file

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        state = {name: tensor.detach().cpu().contiguous() for name, tensor in self.state_dict().items()}
        save_file(state, str(folder / WEIGHTS_FILE), metadata={"format": "pt"})
        (folder / CONFIG_FILE).write_text(json.dumps(self.resolved.to_manifest(), indent=2, sort_keys=True) + "\n")

    @classmethod
    def from_pretrained(cls, model: nn.Module, folder: Path) -> BottleneckModel:
        from safetensors.torch import load_file

        resolved = ResolvedBottleneck.model_validate(json.loads((folder / CONFIG_FILE).read_text()))
        wrapped = cls(model, resolved)
        missing, unexpected = wrapped.load_state_dict(load_file(str(folder / WEIGHTS_FILE)), strict=False)
        adapters = set(wrapped.state_dict())
        if unexpected or adapters & set(missing):
            raise ValueError(f"{folder / WEIGHTS_FILE} does not fit the model: {sorted(unexpected or missing)[:3]}")
        return wrapped


def is_bottleneck_adapter(folder: Path) -> bool:
    return (folder / CONFIG_FILE).exists()
