"""What the pinned torch and transformers do with fully sharded data parallelism on CPU (gloo), run
under torchrun by ``test_fsdp_runtime.py``: one JSON line from rank 0 with the loss of every step and
a checksum of the full weights.

    fsdp_probe.py loop  fsdp|single|resume CHECKPOINT   # FSDP2 (fully_shard) + distributed checkpoint
    fsdp_probe.py trainer fsdp|accelerate|single OUTPUT # transformers' Trainer with its FSDP2 option

``loop fsdp`` shards a tiny Llama with a LoRA adapter (each decoder layer, then the root), trains 8 steps
of a global batch split over the ranks, and saves model and optimizer as a distributed checkpoint after
step 4; ``loop single`` trains the same steps unsharded in one process; ``loop resume`` loads the
checkpoint into however many processes run it and trains steps 5-8. ``trainer fsdp`` runs the Trainer
with FSDP2 as kubetune does (``kubetune_trainer.training.sharding``), ``trainer accelerate`` with the
option alone, as accelerate then decides; both report the share of the parameters rank 0 holds.
"""

from __future__ import annotations

import json
import os
import sys

import torch
import torch.distributed as dist
from transformers import LlamaConfig, LlamaForCausalLM

STEPS, CHECKPOINT_AFTER, GLOBAL_BATCH, LENGTH, VOCAB = 8, 4, 4, 32, 512


def tiny_model() -> LlamaForCausalLM:
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
        tie_word_embeddings=True,
    )
    return LlamaForCausalLM(config)


def batches() -> torch.Tensor:
    return torch.randint(0, VOCAB, (STEPS, GLOBAL_BATCH, LENGTH), generator=torch.Generator().manual_seed(1))


def report(losses: list[float], weights: dict[str, torch.Tensor], share: float = 1.0) -> None:
    if int(os.environ.get("RANK", "0")) == 0:
        checksum = sum(float(value.double().sum()) for value in weights.values())
        world = int(os.environ.get("WORLD_SIZE", "1"))
        print(json.dumps({"losses": losses, "checksum": checksum, "world": world, "share": share}))


def loop(mode: str, checkpoint: str) -> None:
    import torch.distributed.checkpoint as dcp
    from peft import LoraConfig, get_peft_model
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        get_model_state_dict,
        get_state_dict,
        set_state_dict,
    )
    from torch.distributed.fsdp import fully_shard

    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    model = get_peft_model(tiny_model(), LoraConfig(r=8, target_modules="all-linear", init_lora_weights="gaussian"))
    if mode != "single":
        for layer in model.base_model.model.model.layers:
            fully_shard(layer)
        fully_shard(model)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    first = 0
    if mode == "resume":
        model_state, optimizer_state = get_state_dict(model, optimizer)
        state = {"model": model_state, "optimizer": optimizer_state}
        dcp.load(state, checkpoint_id=checkpoint)
        set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optimizer"])
        first = CHECKPOINT_AFTER
    data, losses = batches(), []
    for step in range(first, STEPS):
        share = GLOBAL_BATCH // world
        rows = data[step][rank * share : (rank + 1) * share]
        loss = model(input_ids=rows, labels=rows).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        mean = loss.detach().clone()
        dist.all_reduce(mean)
        losses.append(mean.item() / world)
        if mode == "fsdp" and step + 1 == CHECKPOINT_AFTER:
            model_state, optimizer_state = get_state_dict(model, optimizer)
            dcp.save({"model": model_state, "optimizer": optimizer_state}, checkpoint_id=checkpoint)
    report(losses, get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True)))
    dist.destroy_process_group()


def trainer(mode: str, output: str) -> None:
    from torch.utils.data import Dataset
    from transformers import Trainer, TrainingArguments

    data = batches().reshape(STEPS * GLOBAL_BATCH, LENGTH)

    class Rows(Dataset[dict[str, torch.Tensor]]):
        def __len__(self) -> int:
            return len(data)

        def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
            return {"input_ids": data[index], "labels": data[index]}

    from kubetune_trainer.training.sharding import fsdp_arguments, parameter_share, shard_on_cpu

    world = int(os.environ.get("WORLD_SIZE", "1"))
    model = tiny_model()
    sharding = fsdp_arguments(model) if mode in ("fsdp", "accelerate") else {}
    arguments = TrainingArguments(
        output_dir=output,
        per_device_train_batch_size=GLOBAL_BATCH // world,
        max_steps=STEPS,
        learning_rate=1e-3,
        logging_steps=1,
        use_cpu=True,
        ddp_backend="gloo" if world > 1 else None,
        report_to=[],
        save_strategy="no",
        seed=0,
        data_seed=0,
        **sharding,
    )

    class ShardedOnCpu(Trainer):
        def create_accelerator_and_postprocess(self) -> None:
            super().create_accelerator_and_postprocess()
            shard_on_cpu(self)

    run = (ShardedOnCpu if mode == "fsdp" else Trainer)(model=model, args=arguments, train_dataset=Rows())
    run.train()
    held, total = parameter_share(run.model)
    losses = [entry["loss"] for entry in run.state.log_history if "loss" in entry]
    if not dist.is_initialized():
        report(losses, dict(run.model.state_dict()))
        return
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    # Every rank takes part in gathering the sharded weights, and every rank leaves the process group
    # before exiting: a rank that exits with the group's threads still running aborts
    # ("terminate called without an active exception"), which failed CI once.
    state = get_model_state_dict(run.model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    report(losses, state, held / total)
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    {"loop": loop, "trainer": trainer}[sys.argv[1]](sys.argv[2], sys.argv[3])
