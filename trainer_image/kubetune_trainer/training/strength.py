"""Adapter strength: the trained adapter's change kept at a fraction of the size training reached.

Fine-tuning moves the weights towards the task, and the further they move, the more of the base
model's general ability is lost; the task itself is usually learned well before the full move.
Interpolating between the base and the tuned weights (WiSE-FT, Wortsman et al. 2022) keeps most
of the task and much of the general ability. For a LoRA adapter the interpolation is exact and
free: the adapter's scaling factor times ``scale``. Measured: docs/defaults.md and
docs/measurements/forgetting.md.

Unless the manifest sets ``method.lora.scale`` (``method.ia3.scale``), the scale is the smallest of the
plan's candidate strengths (``status.resolved.lora.strengths`` or ``.ia3.strengths``, from
``plan.Defaults.adapter_strengths``) whose task
metric on the validation split stays within ``TASK_POINTS_GIVEN_UP`` of the strongest one's, trying
from the strongest down and stopping at the first that falls short. Only the validation split
decides: the test split and the general prompts forgetting is measured on are never seen.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# A weaker adapter may cost the task at most two points of its primary metric (accuracy or rougeL,
# both in [0, 1]): the tolerance the minimal manifest is held to against full strength. Measured: a
# relative 5% gave up 6-11 points of test accuracy on two of three datasets (docs/defaults.md); on a
# validation split of a few dozen rows, two points means "while no validation row is lost".
TASK_POINTS_GIVEN_UP = 0.02
# Up to six generation passes over these rows; the split is already a seeded random sample.
VALIDATION_ROWS = 200


@dataclass(frozen=True)
class StrengthChoice:
    scale: float
    how: str  # "manifest", "validation" or why full strength was kept
    scores: dict[float, float] = field(default_factory=dict)  # validation metric at each scale tried

    def describe(self) -> str:
        tried = ", ".join(f"{scale:g}: {value:.3f}" for scale, value in self.scores.items())
        return f"{self.scale:g} ({self.how}{'; validation ' + tried if tried else ''})"

    def to_dict(self) -> dict[str, Any]:
        return {"scale": self.scale, "how": self.how, "validationScores": {str(k): v for k, v in self.scores.items()}}


def choose_scale(
    score_at: Callable[[float], float],
    candidates: Sequence[float],
    *,
    tolerance: float = TASK_POINTS_GIVEN_UP,
) -> StrengthChoice:
    """The smallest candidate scale whose validation score (``score_at(scale)``, higher is better) is
    at most ``tolerance`` below the strongest candidate's, walking down from the strongest and
    stopping at the first that is not."""
    strongest, *weaker = sorted(candidates, reverse=True)
    full = score_at(strongest)
    scores = {strongest: full}
    chosen = strongest
    for scale in weaker:
        value = score_at(scale)
        scores[scale] = value
        # The epsilon keeps a score exactly at the tolerance from failing on float rounding.
        if value < full - tolerance - 1e-9:
            break
        chosen = scale
    return StrengthChoice(scale=chosen, how="validation", scores=scores)


def lora_layers(model: Any) -> list[Any]:
    from peft.tuners.lora import LoraLayer

    return [module for module in model.modules() if isinstance(module, LoraLayer)]


def _base_norms(layer: Any) -> Any:
    """The base weight's norms as peft starts a DoRA magnitude from them: per output feature of a
    linear or convolution layer, per embedding dimension of an embedding."""
    import torch
    from peft.utils.integrations import dequantize_module_weight
    from peft.utils.other import transpose

    base = layer.get_base_layer()
    weight = dequantize_module_weight(base).float()
    if isinstance(base, torch.nn.Embedding):
        return torch.linalg.norm(weight, dim=0)
    if weight.ndim > 2:
        return torch.linalg.norm(weight.flatten(1), dim=1)
    return torch.linalg.norm(transpose(weight, layer.fan_in_fan_out), dim=1)


def _dora_magnitudes(layer: Any) -> list[tuple[Any, Any]]:
    """(trained magnitude, the base weight's norms) for each active DoRA adapter of a LoRA layer.

    peft starts a DoRA magnitude at the norms of the base weight (de-quantized for QLoRA), so
    moving it back towards them by the same fraction as the direction makes scale 0 the base."""
    import torch

    found = []
    for name, dora in layer.lora_magnitude_vector.items():
        if name not in layer.active_adapters:
            continue
        with torch.no_grad():
            norms = _base_norms(layer).to(device=dora.weight.device, dtype=dora.weight.dtype)
        found.append((dora.weight, norms.reshape(dora.weight.shape)))
    return found


def _ia3_vectors(model: Any) -> list[tuple[Any, Any]]:
    """(trained vector, 1) for each active IA3 vector: peft starts them at 1, the identity."""
    import torch
    from peft.tuners.ia3 import IA3Layer

    return [
        (vector, torch.ones_like(vector))
        for layer in model.modules()
        if isinstance(layer, IA3Layer)
        for name, vector in layer.ia3_l.items()
        if name in layer.active_adapters
    ]


def set_scale(model: Any, scale: float) -> Callable[[], None]:
    """Scale every adapter layer of ``model`` by ``scale``; returns the function that puts the exact
    previous state back. LoRA's update is scaled; a DoRA magnitude moves the same fraction of the way
    from the base weight's norms to its trained value, and an IA3 vector from 1 to its trained value,
    so that every scale lies between the base (0) and the tuned model (1); for LoRA and IA3 exactly
    on the line between their weights."""
    import torch

    layers = lora_layers(model)
    saved = [(layer, dict(layer.scaling)) for layer in layers]
    starts = [pair for layer in layers for pair in _dora_magnitudes(layer)] + _ia3_vectors(model)
    magnitudes = [(weight, start, weight.detach().clone()) for weight, start in starts]
    for layer, _ in saved:
        layer.scale_layer(scale)
    with torch.no_grad():
        for weight, start, trained in magnitudes:
            weight.copy_(start + scale * (trained - start))

    def undo() -> None:
        for layer, scaling in saved:
            layer.scaling.update(scaling)
        with torch.no_grad():
            for weight, _, trained in magnitudes:
                weight.copy_(trained)

    return undo


def publish_scale(model: Any, adapter_dir: Path, scale: float) -> None:
    """Write ``model``, which ``set_scale(model, scale)`` left at the chosen strength, into its saved
    adapter: the strength into ``lora_alpha``, and DoRA's magnitudes or IA3's vectors, moved, into the
    weights, so every
    consumer of the adapter, and the merged model built from it, gets the model that was evaluated."""
    if scale == 1.0:
        return
    path = adapter_dir / "adapter_config.json"
    config = json.loads(path.read_text())
    if "lora_alpha" in config:
        config["lora_alpha"] = config["lora_alpha"] * scale
        config["alpha_pattern"] = {k: v * scale for k, v in (config.get("alpha_pattern") or {}).items()}
        path.write_text(json.dumps(config, indent=2, sort_keys=True))
    if config.get("use_dora") or config.get("peft_type") == "IA3":
        from peft import get_peft_model_state_dict
        from safetensors.torch import save_file

        state = {name: tensor.detach().cpu().contiguous() for name, tensor in get_peft_model_state_dict(model).items()}
        save_file(state, str(adapter_dir / "adapter_model.safetensors"), metadata={"format": "pt"})
