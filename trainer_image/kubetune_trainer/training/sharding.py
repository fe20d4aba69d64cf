"""Fully sharded data parallelism (``resources.sharding: fsdp``): transformers' FSDP2 option through
accelerate, also on CPU with gloo, and the whole model back on every rank for evaluation (shared
between them, evaluation/sharing.py) and on rank 0 for export.

Checkpoints are sharded (PyTorch distributed checkpoint: each rank writes its own shard files and
uploads them, training/checkpoints.py) and resume on any number of processes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

FSDP_STATE_DICT = "SHARDED_STATE_DICT"


def fsdp_arguments(model: Any) -> dict[str, Any]:
    """TrainingArguments for FSDP2: each decoder layer (the model's own no-split modules), then the root,
    sharded over all ranks and resharded after each forward."""
    layers = sorted(getattr(model, "_no_split_modules", None) or [])
    config: dict[str, Any] = {"version": 2, "reshard_after_forward": True, "state_dict_type": FSDP_STATE_DICT}
    if layers:  # else accelerate wraps by its default policy
        config["transformer_layer_cls_to_wrap"] = layers
    return {"fsdp": True, "fsdp_config": config}


def shard_on_cpu(trainer: Any) -> None:
    """accelerate 1.x turns FSDP on for accelerator devices only and runs a CPU process group as DDP,
    silently, though FSDP2 (``fully_shard``) and distributed checkpoints work with gloo on the pinned
    torch (tests/trainer/test_fsdp_runtime.py). On CPU, with FSDP asked for, switch the shared
    accelerator state to FSDP with the same plugin transformers built: ``prepare`` then shards the
    model instead of wrapping it in DDP (tests/trainer/test_multinode_training.py checks each rank
    holds half the parameters)."""
    from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin

    state = trainer.accelerator.state
    if trainer.args.fsdp_plugin_args is None or state.distributed_type != DistributedType.MULTI_CPU:
        return
    state.fsdp_plugin = FullyShardedDataParallelPlugin(**trainer.args.fsdp_plugin_args)
    state.distributed_type = DistributedType.FSDP
    trainer.is_fsdp_enabled = True


def is_sharded(tensor: Any) -> bool:
    """An FSDP parameter: this rank's shard of it (a DTensor)."""
    from torch.distributed.tensor import DTensor

    return isinstance(tensor, DTensor)


def whole_tensor(tensor: Any) -> Any:
    """A parameter as one tensor: an FSDP shard gathered from every rank (a collective), a new tensor."""
    return tensor.full_tensor() if is_sharded(tensor) else tensor


def parameter_share(model: Any) -> tuple[int, int]:
    """(elements of the model's parameters this process holds, elements in all): every one unsharded,
    about 1/N of them under FSDP over N processes."""
    held = total = 0
    for parameter in model.parameters():
        total += parameter.numel()
        held += parameter.to_local().numel() if is_sharded(parameter) else parameter.numel()
    return held, total


def gather_full_state(sharded: Any, *, main: bool) -> dict[str, Any] | None:
    """Every rank takes part in gathering the full state dict into rank 0's host memory; rank 0 gets it,
    the others None."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    full = get_model_state_dict(sharded, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    return full if main else None


def copy_trained_from_rank0(model: Any) -> None:
    """Give every rank rank 0's trained weights (a collective): the evaluation that follows is shared
    between the ranks and must score one model. Only trainable tensors travel (LoRA's adapter, or every
    weight in full fine-tuning); the frozen ones were read from the same files on every rank. Rank 0's
    may differ from the others' after training: it alone keeps the early-stopping snapshot it restores."""
    import torch.distributed as dist

    for parameter in model.parameters():
        if parameter.requires_grad:
            dist.broadcast(parameter.data, src=0)


def written_by(path: Path) -> int | None:
    """The rank that wrote a checkpoint file itself (its distributed-checkpoint shard or its RNG state),
    or None for a file of the whole checkpoint (rank 0's)."""
    name = path.name
    if name.startswith("__") and name.endswith(".distcp"):
        rank = name[2:].split("_", 1)[0]
    elif name.startswith("rng_state_") and name.endswith(".pth"):
        rank = name[len("rng_state_") : -len(".pth")]
    else:
        return None
    return int(rank) if rank.isdigit() else None
