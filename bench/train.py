"""Training throughput: kubetune's trainer against what users would otherwise run, in the same run.

    python bench/train.py                      # CPU, the README example, every run (~45 min on 2 cores)
    python bench/train.py --device cuda        # GPU mode: bf16, MFU against the measured matmul peak
    python bench/train.py --smoke --base-model file:///path/to/tiny-model   # CI: seconds, planted case

Every run trains the same model (the built-in SmolLM2-135M-Instruct unless ``--base-model``) on
the same curated examples (the README example's tickets, read and curated by the production data
stage; replay off, so every trainer sees exactly these rows), with the same LoRA configuration,
optimiser settings and epochs, all as kubetune's plan resolves them for that manifest:

- ``ours``: ``kubetune_trainer.training.loop.train``, the function the training pod runs.
- ``a-defaults`` / ``a-tuned``: the common recipe, transformers ``Trainer`` + peft, each example
  padded to the longest of its batch, no packing. Defaults: the library's batch of 8 examples;
  tuned: the same tokens per optimizer step as ours, batches grouped by length.
- ``b-defaults`` / ``b-tuned``: TRL's ``SFTTrainer``. Defaults: the library's (batch 8, no packing,
  bf16 autocast and activation checkpointing, which TRL turns on by default); tuned: TRL's best
  packing (best-fit decreasing into rows of our sequence length, padding-free: one flattened
  sequence per batch with restarting position ids), our tokens per step, fp32 like ours,
  checkpointing off. The report also says whether two packed examples attend to each other, in
  TRL's rows and in ours (``packing_isolation``, with a control that does).

Ours and the tuned baselines run with three seeds (``--seeds``); ratios are taken against the
faster of each baseline's two runs among those at equal validation loss (within 1% or the seeds'
spread) that trained the same tokens. Then the levers, one at a time on ours for 10 steps, and
QLoRA and full fine-tuning for the same steps. Each run is a child process (its
peak memory is its own), cached under ``--work`` by its configuration so an interrupted run
resumes. In-training validation is off for every run; the bench scores each trained model's
validation loss itself, with one function, so speed is never bought with quality unseen.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import hashlib
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))

from measurement import code_digest, cpu_model, git  # noqa: E402

EXAMPLE = ROOT / "examples" / "support-tickets.yaml"
RESULTS = ROOT / "docs" / "measurements" / "train.json"
BASELINES = {"a": ("a-defaults", "a-tuned"), "b": ("b-defaults", "b-tuned")}
RUNS = ("ours", *BASELINES["a"], *BASELINES["b"])
TARGETS = {"a": 1.5, "b": 1.2}  # issue 14: trained tokens per second, ours over the better baseline run
LOSS_TOLERANCE = 0.01  # "equal validation loss": within 1% relative
PLANTED = "planted-truncated"  # smoke only: a run that trains on less; the comparison must flag it


# --------------------------------------------------------------------------- the shared data


@dataclass
class BenchData:
    model_dir: Path
    tokenizer: Any
    train: list[Any]  # kubetune Examples, curated
    validation: list[Any]
    resolved: Any  # ResolvedAdapterTraining for the manifest (what "ours" trains with)
    chat_template: str | None


def bench_data(base_model: str, epochs: float, examples: int | None, method: str) -> BenchData:
    """The README example's curated splits and kubetune's plan for them, through the production code."""
    import yaml

    from kubetune.api.manifest import parse_manifest
    from kubetune_trainer.data.prepare import prepare_dataset
    from kubetune_trainer.hardware import Hardware
    from kubetune_trainer.localrun import default_mappings, localize
    from kubetune_trainer.models.loading import resolve_model_dir
    from kubetune_trainer.plan import ModelShape, resolve_replay, resolve_training, sequence_limit
    from kubetune_trainer.storage import ObjectStore
    from kubetune_trainer.tensors.encode import count_tokens
    from kubetune_trainer.training.model import load_tokenizer

    document = yaml.safe_load(EXAMPLE.read_text())
    spec = document["spec"]
    spec["baseModel"] = {"uri": base_model}
    spec.setdefault("dataset", {})["replay"] = {"enabled": False}
    # QLoRA on a CPU is refused unless asked for: it is slower there, but its memory is what is measured.
    spec["method"] = {"type": method, **({"allowCpuQlora": True} if method == "qlora" else {})}
    spec["hyperparameters"] = {"epochs": epochs}
    job = localize(parse_manifest(document, str(EXAMPLE)), default_mappings(EXAMPLE), None)
    store = ObjectStore()
    model_dir = resolve_model_dir(job.spec.base_model.uri, store)
    from transformers import AutoConfig

    shape = ModelShape.from_config(AutoConfig.from_pretrained(model_dir))
    tokenizer = load_tokenizer(model_dir)
    template = job.spec.base_model.chat_template
    data = prepare_dataset(
        job.spec.dataset,
        store,
        lambda e: count_tokens(e, tokenizer, template),
        max_tokens=sequence_limit(job.spec, shape),
    )
    # Validation loss is scored on the validation and test splits together: a label-only task has a few
    # labelled tokens per example, and twice the tokens halve the loss's noise between runs.
    train, validation, lengths = data.train, data.validation + data.test, data.token_lengths
    if examples is not None:  # the smoke's small slice
        train, validation = train[:examples], validation[: max(4, examples // 4)]
    replay = resolve_replay(job.spec.dataset.replay, task_train_examples=len(train), pool_size=0)
    resolved = resolve_training(
        job.spec,
        Hardware.detect(),
        train_examples=len(train),
        token_lengths=lengths,
        shape=shape,
        replay=replay,
    )
    return BenchData(model_dir, tokenizer, train, validation, resolved, template)


def encoded(data: BenchData, examples: Sequence[Any]) -> list[Any]:
    from kubetune_trainer.tensors.encode import encode_example

    seq_len = data.resolved.hyperparameters.sequence_length
    return [encode_example(e, data.tokenizer, seq_len, data.chat_template) for e in examples]


# --------------------------------------------------------------------------- one run, in a child


def trained_count(labels: Any) -> int:
    """Tokens a causal-LM loss is taken on: labelled targets after the one-position shift."""
    return int((labels[:, 1:] != -100).sum())


class CountingCollator:
    """Wraps a baseline's collator and counts what its batches hold, the way ours meters its own."""

    def __init__(self, collate: Any, pad_token_id: int) -> None:
        self.collate = collate
        self.pad_token_id = pad_token_id
        self.positions = self.tokens = self.trained = 0

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, Any]:
        batch = self.collate(features)
        self.positions += batch["input_ids"].numel()
        self.tokens += sum(len(f["input_ids"]) for f in features)
        self.trained += trained_count(batch["labels"])
        return batch


def validation_loss(model: Any, examples: list[Any], pad_token_id: int, device: str) -> float:
    """Token-mean cross-entropy on the validation split, one padded batch of 8 at a time: the same
    function for every run, whatever its trainer computed during training."""
    import torch
    import torch.nn.functional as F

    model.eval()
    total, count = 0.0, 0
    with torch.no_grad():
        for start in range(0, len(examples), 8):
            chunk = examples[start : start + 8]
            width = max(len(e.input_ids) for e in chunk)
            ids = torch.tensor([e.input_ids + [pad_token_id] * (width - len(e)) for e in chunk], device=device)
            labels = torch.tensor([e.labels + [-100] * (width - len(e)) for e in chunk], device=device)
            mask = (
                torch.arange(width, device=device)[None, :]
                < torch.tensor([len(e) for e in chunk], device=device)[:, None]
            ).long()
            logits = model(input_ids=ids, attention_mask=mask).logits[:, :-1].float()
            targets = labels[:, 1:]
            total += float(F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), reduction="sum"))
            count += int((targets != -100).sum())
    return total / max(count, 1)


def lora_config(resolved: Any) -> Any:
    from kubetune_trainer.training.model import adapter_config

    return adapter_config(resolved)


def optimiser_arguments(resolved: Any) -> dict[str, Any]:
    """The optimisation every run shares: kubetune's resolved values, so losses are comparable."""
    hp = resolved.hyperparameters
    return {
        "num_train_epochs": hp.epochs,
        "learning_rate": hp.learning_rate,
        "lr_scheduler_type": str(hp.lr_scheduler),
        "warmup_steps": hp.warmup_ratio,
        "weight_decay": hp.weight_decay,
        "max_grad_norm": hp.max_grad_norm,
        "seed": hp.seed,
        "report_to": "none",
        "disable_tqdm": True,
        "save_strategy": "no",
        "eval_strategy": "no",
        "logging_steps": 10,
    }


LEVERS = {
    # name: what the run changes, one lever at a time, against ours as it ships.
    "labelled-positions loss off": "every position projected onto the vocabulary (transformers' loss)",
    "packing off": "one example per row, padded per batch, batches grouped by length",
    "gradient checkpointing on": "activations recomputed in the backward pass",
    "1 thread": "torch.set_num_threads(1)",
    "integer-mask dropout on": "LoRA dropout masks from 16-bit integers (training/dropout.py), not yet the default",
    "bf16 autocast on": "TrainingArguments(bf16=True) on the CPU (AMX); fp32 master weights",
}


@contextlib.contextmanager
def ablated(lever: str | None, resolved: Any) -> Iterator[Any]:
    """One lever of ours turned off (or a not-default one on) while the block runs; yields the plan.
    Functions swapped for the ablation are put back afterwards (the smoke runs in one process)."""
    import peft

    import kubetune_trainer.training.dropout as dropout
    import kubetune_trainer.training.loop as loop
    import kubetune_trainer.training.loss as loss

    saved = (peft.get_peft_model, loss.keeps_selected_logits, loop._arguments)
    hp = resolved.hyperparameters
    if lever == "integer-mask dropout on":
        plain_peft = peft.get_peft_model

        def with_integer_masks(*args: Any, **kwargs: Any) -> Any:
            model = plain_peft(*args, **kwargs)
            dropout.use_integer_mask_dropout(model)
            return model

        peft.get_peft_model = with_integer_masks
    elif lever == "labelled-positions loss off":
        loss.keeps_selected_logits = lambda model: False  # type: ignore[assignment]
    elif lever == "packing off":
        hp = hp.model_copy(update={"packing": False})
    elif lever == "gradient checkpointing on":
        hp = hp.model_copy(update={"gradient_checkpointing": True})
    elif lever == "bf16 autocast on":
        plain = loop._arguments

        def changed(config: Any, has_validation: bool, model: Any) -> Any:
            return dataclasses.replace(plain(config, has_validation, model), bf16=True)

        loop._arguments = changed  # type: ignore[assignment]
    try:
        yield resolved.model_copy(update={"hyperparameters": hp})
    finally:
        peft.get_peft_model, loss.keeps_selected_logits, loop._arguments = saved  # type: ignore[assignment]


def run_ours(data: BenchData, config: dict[str, Any], scratch: Path) -> tuple[Any, dict[str, float]]:
    from kubetune_trainer.environment import TrainerEnvironment
    from kubetune_trainer.storage import ObjectStore
    from kubetune_trainer.training.checkpoints import CheckpointStore
    from kubetune_trainer.training.loop import TrainConfig, train

    with ablated(config.get("lever"), data.resolved) as resolved:
        if config.get("truncate"):  # the planted run: examples cut short, so it trains on less
            hp = resolved.hyperparameters.model_copy(update={"sequence_length": config["truncate"]})
            resolved = resolved.model_copy(update={"hyperparameters": hp})
        outcome = train(
            TrainConfig(
                model_dir=data.model_dir,
                resolved=resolved,
                train=data.train,
                validation=[],
                output_dir=scratch,
                checkpoints=CheckpointStore(ObjectStore(), f"file://{scratch}/checkpoints"),
                checkpoint_every_steps=10**9,
                device=config["device"],
                bf16=config["device"] == "cuda",
                chat_template=data.chat_template,
                max_steps=config.get("maxSteps"),
                environment=TrainerEnvironment.from_env(),
            )
        )
    counts = outcome.token_counts
    base = outcome.model.get_base_model() if hasattr(outcome.model, "get_base_model") else outcome.model
    return outcome.model, {
        "positions": counts.positions,
        "tokens": counts.tokens,
        "trained": counts.trained,
        "trainSeconds": outcome.train_seconds,
        "steps": outcome.global_step,
        # The frozen or trained weights as loaded (4-bit for QLoRA), for the methods table.
        "weightBytes": int(base.get_memory_footprint()),
        "trainableParameters": sum(p.numel() for p in outcome.model.parameters() if p.requires_grad),
    }


def run_transformers(data: BenchData, config: dict[str, Any], scratch: Path) -> tuple[Any, dict[str, float]]:
    """Baseline A: the transformers + peft recipe of the docs and most tutorials."""
    import torch
    from peft import get_peft_model
    from transformers import AutoModelForCausalLM, DataCollatorForSeq2Seq, Trainer, TrainingArguments

    rows = [{"input_ids": e.input_ids, "labels": e.labels} for e in encoded(data, data.train)]
    model = AutoModelForCausalLM.from_pretrained(data.model_dir, dtype=torch.float32)
    model = get_peft_model(model, lora_config(data.resolved))
    pad = int(data.tokenizer.pad_token_id)
    collator = CountingCollator(DataCollatorForSeq2Seq(data.tokenizer, padding="longest", label_pad_token_id=-100), pad)
    tuned = config["name"].endswith("tuned")
    arguments: dict[str, Any] = {**optimiser_arguments(data.resolved), "use_cpu": config["device"] == "cpu"}
    if tuned:
        arguments.update(
            per_device_train_batch_size=config["batchSize"],
            gradient_accumulation_steps=config["accumulation"],
            train_sampling_strategy="group_by_length",
            bf16=config["device"] == "cuda",
        )
    trainer = Trainer(
        model=model,
        args=TrainingArguments(output_dir=str(scratch), remove_unused_columns=False, **arguments),
        train_dataset=rows,
        data_collator=collator,
    )
    started = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - started
    figures = {"positions": collator.positions, "tokens": collator.tokens, "trained": collator.trained}
    return trainer.model, {**figures, "trainSeconds": seconds, "steps": trainer.state.global_step}


def run_trl(data: BenchData, config: dict[str, Any], scratch: Path) -> tuple[Any, dict[str, float]]:
    """Baseline B: TRL's SFTTrainer on the same tokenised examples (completion mask = our labels)."""
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM
    from trl import SFTConfig, SFTTrainer

    rows = [
        {"input_ids": e.input_ids, "completion_mask": [int(label != -100) for label in e.labels]}
        for e in encoded(data, data.train)
    ]
    model = AutoModelForCausalLM.from_pretrained(data.model_dir, dtype=torch.float32)
    tuned = config["name"].endswith("tuned")
    arguments: dict[str, Any] = {
        **optimiser_arguments(data.resolved),
        "use_cpu": config["device"] == "cpu",
        "completion_only_loss": True,
        "max_length": data.resolved.hyperparameters.sequence_length,
    }
    if tuned:
        arguments.update(
            packing=True,
            per_device_train_batch_size=config["batchSize"],
            gradient_accumulation_steps=config["accumulation"],
            bf16=config["device"] == "cuda",
            gradient_checkpointing=False,
        )
    trainer = SFTTrainer(
        model=model,
        args=SFTConfig(output_dir=str(scratch), **arguments),
        train_dataset=Dataset.from_list(rows),
        peft_config=lora_config(data.resolved),
        processing_class=data.tokenizer,
    )
    collator = CountingCollator(trainer.data_collator, int(data.tokenizer.pad_token_id))
    trainer.data_collator = collator
    started = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - started
    figures = {"positions": collator.positions, "tokens": collator.tokens, "trained": collator.trained}
    return trainer.model, {**figures, "trainSeconds": seconds, "steps": trainer.state.global_step}


TRAINERS = {"ours": run_ours, "planted": run_ours, "a": run_transformers, "b": run_trl}


def measure_one(config: dict[str, Any]) -> dict[str, Any]:
    """One run, in this process: its figures and the trained model's validation loss."""
    import torch

    if config.get("threads"):
        torch.set_num_threads(int(config["threads"]))
    started = time.perf_counter()
    data = bench_data(config["baseModel"], config["epochs"], config.get("examples"), config.get("method", "lora"))
    if "seed" in config:
        hp = data.resolved.hyperparameters.model_copy(update={"seed": config["seed"]})
        data.resolved = data.resolved.model_copy(update={"hyperparameters": hp})
    if config["device"] == "cuda":
        torch.cuda.reset_peak_memory_stats()
    with tempfile.TemporaryDirectory() as scratch:
        model, figures = TRAINERS[config["trainer"]](data, config, Path(scratch))
    # Training's peak, before the bench's own validation pass (the same for every run) adds its logits.
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    if config["device"] == "cuda":
        peak = int(torch.cuda.max_memory_allocated())
    loss = validation_loss(model, encoded(data, data.validation), int(data.tokenizer.pad_token_id), config["device"])
    seconds = figures["trainSeconds"]
    return {
        **figures,
        "validationLoss": loss,
        "peakMemoryBytes": peak,
        "wallSeconds": time.perf_counter() - started,
        "trainedTokensPerSecond": figures["trained"] / seconds,
        "tokensPerSecond": figures["tokens"] / seconds,
        "positionsPerSecond": figures["positions"] / seconds,
        "threads": torch.get_num_threads(),
    }


def packing_isolation(model_dir: Path, tokenizer: Any, device: str) -> dict[str, float]:
    """Whether two examples packed into one row attend to each other, for TRL's padding-free batches
    and for ours: the second example's logits packed behind the first, against the same example
    alone (the largest absolute difference; float noise is about 1e-5, leakage is orders larger)."""
    import torch
    from transformers import AutoModelForCausalLM
    from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

    from kubetune_trainer.tensors.batching import RowCollator, pack_examples
    from kubetune_trainer.tensors.encode import EncodedExample

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).to(device).eval()
    model.config.use_cache = False
    first = tokenizer("The first example talks about invoices and refunds at length.")["input_ids"]
    second = tokenizer("A second, unrelated example about passwords.")["input_ids"]
    with torch.no_grad():
        alone = model(input_ids=torch.tensor([second], device=device)).logits[0]
        trl_batch = DataCollatorForLanguageModeling(pad_token_id=int(tokenizer.pad_token_id), padding_free=True)(
            [{"input_ids": first}, {"input_ids": second}]
        )
        inputs = {
            k: v.to(device) if hasattr(v, "to") else v for k, v in trl_batch.items() if k not in ("labels", "seq_idx")
        }
        trl_logits = model(**inputs).logits[0, len(first) :]
        rows = pack_examples([EncodedExample(first, first), EncodedExample(second, second)], len(first) + len(second))
        ours_batch = RowCollator(int(tokenizer.pad_token_id), packed=True)(
            [{"input_ids": r.input_ids, "labels": r.labels, "position_ids": r.position_ids} for r in rows]
        )
        order = rows[0].position_ids.index(0, 1)  # where the second packed example starts
        packed = model(input_ids=ours_batch["input_ids"].to(device), position_ids=ours_batch["position_ids"].to(device))
        ours_logits = packed.logits[0, order:]
        # pack_examples puts the longer example first; compare whichever example comes second.
        second_alone = (
            alone
            if rows[0].input_ids[order:] == second
            else model(input_ids=torch.tensor([first], device=device)).logits[0]
        )
        # The control: the same concatenation read as one sequence does attend across, so the check can fail.
        joined = model(input_ids=torch.tensor([first + second], device=device)).logits[0, len(first) :]
    return {
        "control": float((joined - alone).abs().max()),
        "trlPaddingFree": float((trl_logits - alone).abs().max()),
        "ours": float((ours_logits - second_alone).abs().max()),
    }


# --------------------------------------------------------------------------- the parent


def configurations(args: argparse.Namespace, data: BenchData) -> list[dict[str, Any]]:
    """Each run's full configuration: printed, recorded, and the key of its cached result."""
    from kubetune_trainer.tensors.batching import build_rows

    hp = data.resolved.hyperparameters
    # The padded baselines' batches carry ours' tokens per step when each holds as many examples as
    # ours packs into its micro-batch of rows (the mean over the epoch); the same accumulation.
    rows = build_rows(encoded(data, data.train), hp.sequence_length, packing=hp.packing)
    padded_batch = max(1, round(hp.batch_size * len(data.train) / len(rows)))
    common = common_settings(args)
    runs = [
        {**common, "name": "ours", "trainer": "ours"},
        {**common, "name": "a-defaults", "trainer": "a"},
        {
            **common,
            "name": "a-tuned",
            "trainer": "a",
            "batchSize": padded_batch,
            "accumulation": hp.gradient_accumulation_steps,
        },
        {**common, "name": "b-defaults", "trainer": "b"},
        {
            **common,
            "name": "b-tuned",
            "trainer": "b",
            "batchSize": hp.batch_size,
            "accumulation": hp.gradient_accumulation_steps,
        },
    ]
    if args.smoke:
        # TRL's defaults (bf16 autocast, activation checkpointing) are the slowest run and share every
        # code path with b-tuned but their arguments: left out of the smoke to keep CI short.
        runs = [r for r in runs if r["name"] != "b-defaults"]
        runs.append({**common, "name": PLANTED, "trainer": "planted", "truncate": 16})
    wanted = set(args.runs.split(",")) if args.runs else None
    chosen = [r for r in runs if wanted is None or r["name"] in wanted]
    # Ours and the tuned baselines, which the ratios and the equal-loss check rest on, for every seed.
    return [{**r, "seed": seed} for r in chosen for seed in (seeds(args) if r["name"] in SEEDED else seeds(args)[:1])]


SEEDED = ("ours", "a-tuned", "b-tuned")


def seeds(args: argparse.Namespace) -> list[int]:
    from kubetune_trainer.plan import DEFAULTS

    return [DEFAULTS.seed + i for i in range(args.seeds)]


def common_settings(args: argparse.Namespace) -> dict[str, Any]:
    return {
        "baseModel": args.base_model,
        "epochs": args.epochs,
        "examples": args.examples,
        "device": args.device,
        "threads": args.threads,
    }


REFERENCE = "ours as it ships"


def lever_configurations(args: argparse.Namespace) -> list[dict[str, Any]]:
    """Ours for a fixed number of steps, then the same with one lever changed at a time: speed only."""
    common = {**common_settings(args), "trainer": "ours", "maxSteps": args.lever_steps}
    levers = SMOKE_LEVERS if args.smoke else tuple(LEVERS)
    if args.device == "cuda":  # CPU levers; on a GPU torch's own dropout and bf16 are the defaults
        levers = tuple(
            lever for lever in levers if lever not in ("integer-mask dropout on", "bf16 autocast on", "1 thread")
        )
    runs = [{**common, "name": REFERENCE}]
    for lever in levers:
        runs.append({**common, "name": lever, "lever": lever, **({"threads": 1} if lever == "1 thread" else {})})
    return runs


def method_configurations(args: argparse.Namespace) -> list[dict[str, Any]]:
    """QLoRA and full fine-tuning for the same steps as the lever reference (which is LoRA)."""
    common = {**common_settings(args), "trainer": "ours", "maxSteps": args.lever_steps}
    methods = ("qlora",) if args.smoke else ("qlora", "full")
    return [{**common, "name": method, "method": method} for method in methods]


SMOKE_LEVERS = ("packing off",)


def cached_run(config: dict[str, Any], work: Path, *, in_process: bool = False) -> dict[str, Any]:
    """A finished run's figures: measured now, or read back when this configuration (and, for ours,
    this trainer source) already ran. Each run is its own child process so its peak memory is its
    own; ``in_process`` (the smoke) saves the imports and leaves peak memory meaningless."""
    identity = (
        {**config, "source": code_digest(("trainer_image/kubetune_trainer",))}
        if config["trainer"] in ("ours", "planted")
        else config
    )
    key = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]
    result = work / f"{config['name']}-{key}.json"
    if not result.exists():
        print(f"▶ {config['name']}: {json.dumps(config)}", flush=True)
        partial = result.with_suffix(".partial")
        if in_process:
            partial.write_text(json.dumps(measure_one(config)))
            partial.rename(result)
            return json.loads(result.read_text())
        subprocess.run(
            [sys.executable, __file__, "--child", json.dumps(config), "--result", str(partial)],
            check=True,
            env={**os.environ, "TOKENIZERS_PARALLELISM": "false"},
        )
        partial.rename(result)
    return json.loads(result.read_text())


def aggregate(name: str, per_seed: list[dict[str, Any]]) -> dict[str, Any]:
    """A run over its seeds: mean speeds and loss, the loss's spread (max - min), the largest peak."""
    first = per_seed[0]

    def mean(key: str) -> float:
        return statistics.fmean(run[key] for run in per_seed)

    losses = [run["validationLoss"] for run in per_seed]
    return {
        "config": {k: v for k, v in first["config"].items() if k != "seed"},
        "seeds": {
            str(run["config"].get("seed", "plan")): {k: v for k, v in run.items() if k != "config"} for run in per_seed
        },
        **{key: first[key] for key in ("positions", "tokens", "trained", "steps")},
        **{key: mean(key) for key in ("trainedTokensPerSecond", "tokensPerSecond", "trainSeconds", "wallSeconds")},
        "peakMemoryBytes": max(run["peakMemoryBytes"] for run in per_seed),
        "validationLoss": statistics.fmean(losses),
        "validationLossSpread": max(losses) - min(losses),
        **{key: first[key] for key in ("weightBytes", "trainableParameters") if key in first},
    }


def compare(runs: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Ratios of ours against the better run of each baseline, and every run whose work or quality
    differs from ours (flagged: its speed is not comparable). Equal validation loss: within 1%
    relative, or within the larger seed spread of the two runs."""
    ours = runs["ours"]
    flags = {}
    for name, run in runs.items():
        if name == "ours":
            continue
        problems = []
        # The same examples for the same epochs: within 2% of ours (packing drops a row's first label).
        if abs(run["trained"] - ours["trained"]) > 0.02 * ours["trained"]:
            problems.append(f"trained {run['trained']} tokens, ours {ours['trained']}")
        gap = abs(run["validationLoss"] - ours["validationLoss"])
        allowed = max(
            LOSS_TOLERANCE * ours["validationLoss"], ours["validationLossSpread"], run["validationLossSpread"]
        )
        if gap > allowed:
            problems.append(
                f"validation loss {run['validationLoss']:.4f} vs ours {ours['validationLoss']:.4f} "
                f"(apart {gap:.4f}, more than 1% and either's seed spread)"
            )
        if problems:
            flags[name] = "; ".join(problems)
    ratios = {}
    for baseline, names in BASELINES.items():
        present = [n for n in names if n in runs]
        if not present:
            continue
        # The better run among those that did the same work at the same quality; a flagged run's
        # speed is not comparable (bought with quality, or with less work), unless all are flagged.
        comparable = [n for n in present if n not in flags] or present
        best = max(comparable, key=lambda n: runs[n]["trainedTokensPerSecond"])
        ratios[baseline] = {
            "against": best,
            "comparable": best not in flags,
            "trainedTokensPerSecond": ours["trainedTokensPerSecond"] / runs[best]["trainedTokensPerSecond"],
            "peakMemory": ours["peakMemoryBytes"] / runs[best]["peakMemoryBytes"],
            "target": TARGETS[baseline],
        }
    return {"ratios": ratios, "flagged": flags}


def machine() -> dict[str, Any]:
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return {
        "cpu": cpu_model(),
        "cores": len(os.sched_getaffinity(0)),
        "memoryGiB": round(memory / 2**30, 1),
        "python": platform.python_version(),
    }


def matmul_peak(device: str) -> dict[str, float]:
    """The accelerator's measured bf16 matmul throughput (FLOP/s): the denominator of MFU."""
    import torch

    size, repeats = 8192, 20
    a = torch.randn(size, size, device=device, dtype=torch.bfloat16)
    b = torch.randn(size, size, device=device, dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    torch.cuda.synchronize()
    started = time.perf_counter()
    for _ in range(repeats):
        a @ b
    torch.cuda.synchronize()
    seconds = time.perf_counter() - started
    return {"flops": 2 * size**3 * repeats / seconds, "name": torch.cuda.get_device_name(0)}  # type: ignore[dict-item]


def model_flops_utilisation(run: dict[str, Any], non_embedding_params: float, peak: float) -> float:
    """Model FLOPs per second over the measured peak: 6N per token for full fine-tuning, 4N for
    adapters (no weight gradients for the frozen base), every non-padding token counted."""
    per_token = (6 if run["config"].get("method") == "full" else 4) * non_embedding_params
    return run["tokensPerSecond"] * per_token / peak


def non_embedding_parameters(model_dir: Path) -> float:
    from transformers import AutoConfig

    from kubetune_trainer.plan import ModelShape

    shape = ModelShape.from_config(AutoConfig.from_pretrained(model_dir))
    return shape.params - shape.vocab_size * shape.hidden_size * (1 if shape.tied_embeddings else 2)


def measure(configs: list[dict[str, Any]], work: Path, *, in_process: bool) -> dict[str, dict[str, Any]]:
    by_name: dict[str, list[dict[str, Any]]] = {}
    for config in configs:
        by_name.setdefault(config["name"], []).append(
            {"config": config, **cached_run(config, work, in_process=in_process)}
        )
    return {name: aggregate(name, per_seed) for name, per_seed in by_name.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--smoke", action="store_true", help="a few examples on a tiny model, plus the planted run (CI)"
    )
    parser.add_argument("--base-model", default="builtin://smollm2-135m-instruct")
    parser.add_argument("--epochs", type=float, default=1.0)
    parser.add_argument("--examples", type=int, default=None, help="train on the first N curated examples only")
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--seeds", type=int, default=None, help=f"seeds of {', '.join(SEEDED)} (default 3; smoke 1)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's own)")
    parser.add_argument("--runs", default=None, help=f"comma-separated subset of {', '.join(RUNS)}")
    parser.add_argument(
        "--lever-steps",
        type=int,
        default=None,
        help="optimizer steps of each lever and method run (default 12; smoke 2)",
    )
    parser.add_argument("--no-levers", action="store_true", help="skip the lever and method tables")
    parser.add_argument("--work", type=Path, default=ROOT / ".bench" / "train", help="finished runs, for resuming")
    parser.add_argument(
        "--results",
        type=Path,
        default=None,
        help=f"JSON written here (default {RESULTS.relative_to(ROOT)}; smoke: none)",
    )
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--result", type=Path, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.runs is not None:
        asked = args.runs.split(",")
        if unknown := sorted(set(asked) - set(RUNS)):
            parser.error(f"--runs: unknown {', '.join(unknown)}; the runs are {', '.join(RUNS)}")
        if "ours" not in asked:
            parser.error("--runs: include ours (every ratio and check compares a baseline with it)")
    for option in ("seeds", "lever_steps", "epochs", "examples", "threads"):
        value = getattr(args, option)
        if value is not None and value <= 0:
            parser.error(f"--{option.replace('_', '-')}: must be positive, got {value}")
    if args.child:
        args.result.write_text(json.dumps(measure_one(json.loads(args.child)), indent=2))
        return 0
    if args.smoke and args.examples is None:
        args.examples = 24
    if args.lever_steps is None:
        args.lever_steps = 2 if args.smoke else 10
    if args.seeds is None:
        args.seeds = 1 if args.smoke else 3
    args.work.mkdir(parents=True, exist_ok=True)
    data = bench_data(args.base_model, args.epochs, args.examples, "lora")
    in_process = args.smoke
    runs = measure(configurations(args, data), args.work, in_process=in_process)
    levers = {} if args.no_levers else measure(lever_configurations(args), args.work, in_process=in_process)
    methods = {} if args.no_levers else measure(method_configurations(args), args.work, in_process=in_process)
    report = {
        "command": "python bench/train.py" + (" " + " ".join(argv if argv is not None else sys.argv[1:])).rstrip(),
        "commit": git("rev-parse", "HEAD"),
        "machine": machine(),
        "plan": data.resolved.model_dump(by_alias=True, mode="json"),
        "trainExamples": len(data.train),
        "validationExamples": len(data.validation),
        "packingIsolation": packing_isolation(data.model_dir, data.tokenizer, args.device),
        "runs": runs,
        **compare(runs),
        "levers": levers,
        "methods": methods,
    }
    if args.device == "cuda":
        peak = matmul_peak(args.device)
        params = non_embedding_parameters(data.model_dir)
        report["gpu"] = {
            "matmulPeak": peak,
            "nonEmbeddingParameters": params,
            "mfu": {
                name: model_flops_utilisation(run, params, float(peak["flops"]))
                for name, run in {**runs, **levers, **methods}.items()
            },
        }
    print(render_markdown(report))
    results = args.results or (None if args.smoke else RESULTS)
    if results is not None:
        results.parent.mkdir(parents=True, exist_ok=True)
        results.write_text(json.dumps(report, indent=2) + "\n")
        results.with_suffix(".md").write_text(render_markdown(report))
    if args.smoke and PLANTED in runs and PLANTED not in report["flagged"]:
        print(f"the planted run ({PLANTED}) was not flagged", file=sys.stderr)
        return 1
    return 0


def quoted_figures(report: dict[str, Any]) -> list[str]:
    """The figures docs/benchmarks.md quotes, as it words them (a test checks the page holds each)."""
    runs, ratios = report["runs"], report["ratios"]
    figures = [
        f"ours {runs['ours']['trainedTokensPerSecond']:.1f} trained tokens/s ({runs['ours']['tokensPerSecond']:.1f} all)",
    ]
    for ratio in ratios.values():
        figures.append(f"{ratio['trainedTokensPerSecond']:.2f}x {ratio['against']}")
    figures.append(f"validation loss {runs['ours']['validationLoss']:.4f}")
    if report["levers"]:
        reference = report["levers"][REFERENCE]["trainedTokensPerSecond"]
        for name, run in report["levers"].items():
            if name != REFERENCE:
                figures.append(f"{name}: {run['trainedTokensPerSecond'] / reference:.2f}x")
    return figures


def loss_cell(run: dict[str, Any]) -> str:
    seeds = len(run["seeds"])
    return f"{run['validationLoss']:.4f}" + (
        f" (spread {run['validationLossSpread']:.4f}, {seeds} seeds)" if seeds > 1 else ""
    )


def mib(value: float) -> str:
    return f"{value / 2**20:.0f} MiB"


def table(title: str, header: str, separator: str, rows: list[str]) -> list[str]:
    """A titled markdown table of render_markdown's."""
    return ["", f"## {title}", "", header, separator, *rows]


def render_markdown(report: dict[str, Any]) -> str:
    """docs/measurements/train.md: every figure of the JSON, as tables (a test holds the two equal)."""
    plan = report["plan"]
    hp = plan["hyperparameters"]
    lines = [
        "# Training throughput: kubetune against transformers + peft and TRL",
        "",
        f"`{report['command']}` at commit `{report['commit'][:12]}` on {report['machine']['cpu']} "
        f"({report['machine']['cores']} cores, {report['machine']['memoryGiB']} GiB). "
        f"{report['trainExamples']} curated training examples, {report['validationExamples']} for validation; "
        f"LoRA r={plan['lora']['r']} alpha={plan['lora']['alpha']} dropout={plan['lora']['dropout']} on "
        f"{', '.join(plan['lora']['targetModules'])}, lr {hp['learningRate']}, {hp['epochs']:g} epoch(s), "
        f"sequence length {hp['sequenceLength']}, {hp['batchSize']} x {hp['gradientAccumulationSteps']} rows per step.",
        "",
        "| run | trained tokens/s | all tokens/s | padding | steps | train s | wall s | peak memory | validation loss (mean) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, run in report["runs"].items():
        padding = 1 - run["tokens"] / run["positions"] if run["positions"] else 0.0
        lines.append(
            f"| {name} | {run['trainedTokensPerSecond']:.1f} | {run['tokensPerSecond']:.1f} | {padding:.1%} | "
            f"{run['steps']} | {run['trainSeconds']:.0f} | {run['wallSeconds']:.0f} | {mib(run['peakMemoryBytes'])} | "
            f"{loss_cell(run)} |"
        )
    lines.append("")
    for baseline, ratio in report["ratios"].items():
        met = "met" if ratio["trainedTokensPerSecond"] >= ratio["target"] else "not met"
        if not ratio.get("comparable", True):
            met += "; every run of this baseline is flagged below, so the ratio does not count"
        lines.append(
            f"- ours / {ratio['against']} (the better {baseline.upper()} run): "
            f"**{ratio['trainedTokensPerSecond']:.2f}x** trained tokens/s (target {ratio['target']}x: {met}), "
            f"peak memory {ratio['peakMemory']:.2f}x"
        )
    for name, why in report["flagged"].items():
        lines.append(f"- not comparable: {name}: {why}")
    isolation = report["packingIsolation"]
    lines += [
        "",
        "Packed examples attend to each other? Largest |logit difference| of a second example packed behind a "
        f"first against the same example alone: TRL padding-free {isolation['trlPaddingFree']:.1e}, ours "
        f"{isolation['ours']:.1e}; the same two examples read as one sequence (the control) {isolation['control']:.1e}.",
    ]
    if report["levers"]:
        reference = report["levers"][REFERENCE]
        lines += table(
            f"Levers, one at a time ({reference['steps']} steps each)",
            "| run | what changes | trained tokens/s | vs every lever on | peak memory |",
            "|---|---|---:|---:|---:|",
            [
                f"| {name} | {LEVERS.get(name, 'the defaults')} | {run['trainedTokensPerSecond']:.1f} | "
                f"{run['trainedTokensPerSecond'] / reference['trainedTokensPerSecond']:.2f}x | "
                f"{mib(run['peakMemoryBytes'])} |"
                for name, run in report["levers"].items()
            ],
        )
    if report["methods"]:
        lora = report["levers"][REFERENCE]
        lines += table(
            f"LoRA, QLoRA and full fine-tuning ({lora['steps']} steps each)",
            "| method | weights as loaded | trainable parameters | peak memory | trained tokens/s |",
            "|---|---:|---:|---:|---:|",
            [
                f"| {name} | {mib(run['weightBytes'])} | {run['trainableParameters']:,} | "
                f"{mib(run['peakMemoryBytes'])} | {run['trainedTokensPerSecond']:.1f} |"
                for name, run in {"lora": lora, **report["methods"]}.items()
            ],
        )
    if "gpu" in report:
        gpu = report["gpu"]
        lines += [
            "",
            f"## GPU: {gpu['matmulPeak']['name']}, measured bf16 matmul peak {gpu['matmulPeak']['flops'] / 1e12:.1f} TFLOP/s",
            "",
        ]
        lines += [f"- {name}: MFU {value:.1%}" for name, value in gpu["mfu"].items()]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
