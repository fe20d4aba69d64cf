"""Train with transformers' Trainer: schedule, accumulation, validation, early stopping,
checkpoints to storage, resume after a restart, a clean stop on SIGTERM.

Under ``torchrun`` the same code runs DDP (one process per GPU; gloo on CPU in tests).
"""

from __future__ import annotations

import logging
import math
import shutil
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch.utils.data import Dataset
from transformers import PrinterCallback, TrainerCallback, TrainingArguments, set_seed

from kubetune.api.contract import EXIT_OK, EXIT_PREEMPTED
from kubetune.api.v1alpha1 import (
    PREFERENCE_OBJECTIVES,
    DistillMode,
    MethodType,
    Objective,
    PrivacySpent,
    Progress,
    ResolvedAdaLoraTraining,
    ResolvedAdapterTraining,
    ResolvedDistillObjective,
    ResolvedPrivacy,
    ResolvedTraining,
    Sharding,
)
from kubetune_trainer.data.types import Example
from kubetune_trainer.environment import TrainerEnvironment
from kubetune_trainer.reporting import TrainingMetrics
from kubetune_trainer.tensors.batching import RowDataset, TokenCounts, TokenMeter, build_rows, collator_for, padding_id
from kubetune_trainer.tensors.encode import encode_example
from kubetune_trainer.training.adalora import AdaLoraSchedule
from kubetune_trainer.training.checkpoints import CheckpointStore, UploadCheckpoints
from kubetune_trainer.training.distill import DistillTrainer, load_teacher
from kubetune_trainer.training.ewc import EwcPlan, prepare_anchor
from kubetune_trainer.training.model import load_for_training
from kubetune_trainer.training.preference import (
    PairCollator,
    PairDataset,
    PreferenceTrainer,
    encode_pairs,
    reference_logps,
)
from kubetune_trainer.training.progress import MeteredTrainer, ReportProgress, host_memory_peak_bytes
from kubetune_trainer.training.sharding import (
    copy_trained_from_rank0,
    fsdp_arguments,
    gather_full_state,
    is_sharded,
    parameter_share,
    whole_tensor,
)
from kubetune_trainer.training.strength import StrengthChoice

log = logging.getLogger(__name__)
BEST_FILE = "kubetune_best.safetensors"


@dataclass
class TrainConfig:
    model_dir: Path
    resolved: ResolvedTraining
    train: list[Example]
    validation: list[Example]
    output_dir: Path  # scratch for the Trainer's local checkpoints and the final model
    checkpoints: CheckpointStore
    checkpoint_every_steps: int
    device: str = "cpu"
    bf16: bool = False
    chat_template: str | None = None
    max_steps: int | None = None
    on_progress: Callable[[Progress], None] | None = None
    on_metrics: Callable[[TrainingMetrics], None] | None = None
    on_checkpoint: Callable[[int], None] | None = None
    ewc: EwcPlan | None = None  # spec.continual.ewc: the earlier task's rows and the penalty's weight
    teacher_dir: Path | None = None  # method.objective distill: the teacher's folder (models.teacher)
    environment: TrainerEnvironment = field(default_factory=TrainerEnvironment.from_env)


@dataclass
class TrainOutcome:
    model: Any  # the trained model in memory (peft model for LoRA/QLoRA), best weights restored
    tokenizer: Any
    trained_dir: Path  # adapter (LoRA/QLoRA) or full model, with tokenizer
    history: list[dict[str, Any]] = field(default_factory=list)
    global_step: int = 0
    total_steps: int = 0
    resumed_from_step: int | None = None
    stopped_early: bool = False
    best_eval_loss: float | None = None
    tokens_per_second: float = 0.0
    trained_tokens_per_second: float = 0.0
    token_counts: TokenCounts = field(default_factory=TokenCounts)  # this rank's training batches
    train_seconds: float = 0.0  # the training loop's wall time (in-training validation included)
    padding_fraction: float = 0.0
    peak_memory_bytes: int = 0
    preempted: bool = False
    strength: StrengthChoice | None = None  # LoRA/QLoRA: the adapter strength kept (training/strength.py)
    ewc: dict[str, Any] | None = None  # the EWC penalty as applied, for the lineage (training/ewc.py)
    privacy: PrivacySpent | None = None  # spec.privacy: what DP-SGD spent (training/private.py)

    @property
    def exit_code(self) -> int:
        return EXIT_PREEMPTED if self.preempted else EXIT_OK


class StopOnSigterm(TrainerCallback):
    """SIGTERM (preemption, eviction, suspend) → save and stop at the next step boundary."""

    def __init__(self) -> None:
        self.requested = False
        signal.signal(signal.SIGTERM, self._handle)

    def _handle(self, signum: int, frame: Any) -> None:
        log.warning("SIGTERM received: checkpointing at the next step and stopping")
        self.requested = True

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self.requested:
            control.should_save = True
            control.should_training_stop = True


class KeepBest(TrainerCallback):
    """Early stopping on validation loss, keeping the best trainable weights.

    transformers' own ``load_best_model_at_end`` ties checkpoints to evaluation steps; this
    keeps the two independent and the snapshot small (only trainable tensors). The snapshot
    travels inside each checkpoint, so a resumed run still ends on the best weights.
    """

    def __init__(self, model: Any, patience: int, *, keeps_snapshot: bool = True) -> None:
        self.model = model
        self.patience = patience
        self.keeps_snapshot = keeps_snapshot
        self.best: float | None = None
        self.bad_evals = 0
        self.snapshot: dict[str, Any] | None = None
        self.stopped_early = False

    def _trainable(self) -> dict[str, Any] | None:
        # Under FSDP a parameter is this rank's shard: every rank evaluates, so each takes part in
        # gathering the whole tensor, one at a time (all at once would hold a full copy on every rank);
        # rank 0 alone keeps them and restores them into the unsharded model at the end (the other
        # ranks neither save nor publish).
        snapshot = {}
        for name, parameter in self.model.named_parameters():
            if parameter.requires_grad:
                whole = whole_tensor(parameter).detach()
                if self.keeps_snapshot:  # a gathered tensor is already a copy of its own
                    snapshot[name] = whole.to("cpu", copy=not is_sharded(parameter))
        return snapshot if self.keeps_snapshot else None

    def on_evaluate(
        self, args: Any, state: Any, control: Any, metrics: dict[str, float] | None = None, **kw: Any
    ) -> None:
        loss = (metrics or {}).get("eval_loss")
        if loss is None or math.isnan(loss):
            return
        if self.best is None or loss < self.best:
            self.best, self.bad_evals, self.snapshot = loss, 0, self._trainable()
            return
        self.bad_evals += 1
        if self.patience > 0 and self.bad_evals >= self.patience:
            log.info("early stopping: validation loss did not improve for %d evaluations", self.bad_evals)
            self.stopped_early = True
            control.should_training_stop = True

    def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self.snapshot is None or not state.is_world_process_zero:
            return
        from safetensors.torch import save_file

        folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        if folder.exists():
            meta = {"best": repr(self.best), "bad_evals": str(self.bad_evals)}
            save_file({k: v.contiguous() for k, v in self.snapshot.items()}, str(folder / BEST_FILE), metadata=meta)

    def load_from(self, checkpoint: Path) -> None:
        path = checkpoint / BEST_FILE
        if not path.exists():
            return
        from safetensors import safe_open
        from safetensors.torch import load_file

        self.snapshot = load_file(str(path))
        with safe_open(str(path), framework="pt") as handle:
            meta = handle.metadata() or {}
        self.best = float(meta.get("best", "inf"))
        self.bad_evals = int(meta.get("bad_evals", "0"))

    def restore(self) -> None:
        if self.snapshot is None:
            return
        params = dict(self.model.named_parameters())
        for name, value in self.snapshot.items():
            params[name].data.copy_(value.to(params[name].device, params[name].dtype))


class TraceMicroSteps(TrainerCallback):
    """With ``KUBETUNE_TRACE_MICROSTEPS=1``: one stderr line per micro-batch (debugging and the
    kill-and-resume test, which must interrupt a run in the middle of an accumulation cycle)."""

    def __init__(self) -> None:
        self.substep = 0

    def on_substep_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.substep += 1
        print(f"kubetune-microstep step={state.global_step} substep={self.substep}", file=sys.stderr, flush=True)

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.substep = 0
        print(f"kubetune-microstep step={state.global_step} substep=end", file=sys.stderr, flush=True)


def _arguments(config: TrainConfig, has_validation: bool, model: Any) -> TrainingArguments:
    hp = config.resolved.hyperparameters
    distributed = config.environment.distributed
    sharding = fsdp_arguments(model) if hp.sharding == Sharding.FSDP else {}
    return TrainingArguments(
        output_dir=str(config.output_dir / "trainer"),
        num_train_epochs=hp.epochs,
        max_steps=config.max_steps if config.max_steps is not None else -1,  # -1: the epochs decide
        per_device_train_batch_size=hp.batch_size,
        per_device_eval_batch_size=hp.batch_size,
        gradient_accumulation_steps=hp.gradient_accumulation_steps,
        learning_rate=hp.learning_rate,
        lr_scheduler_type=str(hp.lr_scheduler),
        # A float below 1 is a fraction of the total steps (transformers >= 5, the floor in pyproject.toml).
        warmup_steps=hp.warmup_ratio,
        weight_decay=hp.weight_decay,
        max_grad_norm=hp.max_grad_norm,
        seed=hp.seed,
        logging_steps=1,
        eval_strategy="steps" if has_validation else "no",
        eval_steps=hp.eval_steps,
        save_strategy="steps",
        save_steps=config.checkpoint_every_steps,
        save_total_limit=2,
        bf16=config.device == "cuda" and config.bf16,
        use_cpu=config.device == "cpu",
        ddp_backend=("gloo" if config.device == "cpu" else "nccl") if distributed else None,
        report_to="none",
        disable_tqdm=True,
        remove_unused_columns=False,
        dataloader_num_workers=0,
        dataloader_pin_memory=config.device == "cuda",
        include_num_input_tokens_seen="all",
        train_sampling_strategy="random" if hp.packing else "group_by_length",
        label_names=["labels"],
        prediction_loss_only=True,  # validation needs the loss only, not every logit gathered
        **sharding,
    )


def _peak_memory(device: str) -> int:
    if device == "cuda":
        import torch

        return int(torch.cuda.max_memory_allocated())
    return host_memory_peak_bytes()


def _pair_datasets(
    config: TrainConfig, model: Any, tokenizer: Any
) -> tuple[PairDataset, PairDataset | None, PairCollator]:
    """A preference run's pairs, each with its reference log-likelihoods (DPO: the model as loaded is the base)."""
    seq_len = config.resolved.hyperparameters.sequence_length
    collator = PairCollator(pad_token_id=padding_id(tokenizer))
    needs_reference = config.resolved.objective.type == Objective.DPO

    def dataset(examples: list[Example]) -> PairDataset:
        pairs = encode_pairs(examples, tokenizer, seq_len, config.chat_template)
        return PairDataset(pairs, reference_logps(model, pairs, collator) if needs_reference else None)

    return dataset(config.train), dataset(config.validation) if config.validation else None, collator


def _train_privately(
    config: TrainConfig, model: Any, tokenizer: Any, rows: Any, collator: Any, privacy: ResolvedPrivacy
) -> TrainOutcome:
    """spec.privacy: Opacus's DP-SGD loop instead of the Trainer (training/private.py says why), one
    process, no validation during training; its own checkpoints in the job's checkpoint store."""
    from kubetune_trainer.training.private import Checkpointing, read_state, train_private, write_state

    if config.environment.distributed:
        raise RuntimeError("spec.privacy trains in one process: the plan never distributes it")

    def save(step: int, state: dict[str, Any]) -> None:
        local = config.output_dir / f"checkpoint-{step}"
        write_state(local, state)
        uri = config.checkpoints.upload(local, step)
        shutil.rmtree(local)
        log.info("checkpoint step %d uploaded to %s", step, uri)
        if config.on_checkpoint is not None:
            config.on_checkpoint(step)

    resume = config.checkpoints.download_latest(config.output_dir / "resume")
    if resume is not None:
        log.info("resuming from %s", resume)
    sigterm = StopOnSigterm()
    run = train_private(
        model,
        rows,
        collator,
        privacy=privacy,
        hyperparameters=config.resolved.hyperparameters,
        device=config.device,
        max_steps=config.max_steps,
        checkpointing=Checkpointing(
            every_steps=config.checkpoint_every_steps,
            save=save,
            resume=read_state(resume) if resume is not None else None,
            stop_requested=lambda: sigterm.requested,
            trace_microsteps=config.environment.trace_microsteps,
        ),
        on_progress=config.on_progress,
    )
    outcome = TrainOutcome(
        model=model,
        tokenizer=tokenizer,
        trained_dir=config.output_dir / "trained",
        history=[{k: v for k, v in entry.items() if k != "rows"} for entry in run.history],
        global_step=run.spent.steps,
        total_steps=privacy.steps,
        resumed_from_step=run.resumed_from_step,
        padding_fraction=run.counts.padding_ratio,
        peak_memory_bytes=_peak_memory(config.device),
        preempted=run.preempted,
        token_counts=run.counts,
        train_seconds=run.seconds,
        privacy=run.spent,
    )
    outcome.tokens_per_second = run.counts.tokens / max(run.seconds, 1e-9)
    outcome.trained_tokens_per_second = run.counts.trained / max(run.seconds, 1e-9)
    if run.preempted:
        return outcome
    outcome.trained_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(outcome.trained_dir, safe_serialization=True)
    tokenizer.save_pretrained(outcome.trained_dir)
    model.eval()
    return outcome


def _unsharded(trainer: Any, config: TrainConfig) -> Any:
    """FSDP's trained weights as an ordinary model: rank 0 loads the gathered full state; the other
    ranks build the same model, whose trained weights rank 0 sends them next (``copy_trained_from_rank0``),
    to take their share of the evaluation (a model sized for inference: no optimizer state, no gradients).
    The optimizer's state, stored with the last checkpoint and needed no more, is dropped first: rank 0
    is about to hold the full weights twice (gathered, and the model rebuilt from them)."""
    trainer.optimizer.state.clear()
    full = gather_full_state(trainer.model, main=config.environment.is_main_process)
    model, _ = load_for_training(config.model_dir, config.resolved, device=config.device, bf16=config.bf16)
    if full is not None:
        model.load_state_dict(full)
    return model


def train(config: TrainConfig) -> TrainOutcome:
    resolved = config.resolved
    hp = resolved.hyperparameters
    # Seed before the adapter is created: LoRA's initial weights come from the global RNG,
    # and a run must be reproducible from its seed (a fresh run and a resumed one agree).
    set_seed(hp.seed)
    model, tokenizer = load_for_training(config.model_dir, resolved, device=config.device, bf16=config.bf16)
    seq_len = hp.sequence_length
    packing = hp.packing

    trainer_class: type[MeteredTrainer] = MeteredTrainer
    trainer_options: dict[str, Any] = {}
    collator: Any = collator_for(tokenizer, packing=packing)
    train_rows: Dataset[Any]
    eval_rows: Dataset[Any] | None = None
    if resolved.objective.type in PREFERENCE_OBJECTIVES:
        train_rows, eval_rows, collator = _pair_datasets(config, model, tokenizer)
        trainer_class, trainer_options = PreferenceTrainer, {"objective": resolved.objective}
    else:

        def rows_for(examples: list[Example]) -> RowDataset:
            encoded = [encode_example(e, tokenizer, seq_len, config.chat_template) for e in examples]
            return RowDataset(build_rows(encoded, seq_len, packing=packing))

        train_rows = rows_for(config.train)
        eval_rows = rows_for(config.validation) if config.validation else None
        objective = resolved.objective
        if isinstance(objective, ResolvedDistillObjective) and objective.mode == DistillMode.LOGITS:
            if config.teacher_dir is None:
                raise ValueError("logit distillation needs the teacher's folder (TrainConfig.teacher_dir)")
            teacher = load_teacher(
                config.teacher_dir, MethodType(resolved.method), device=config.device, bf16=config.bf16
            )
            trainer_class, trainer_options = DistillTrainer, {"objective": objective, "teacher": teacher}
    if isinstance(resolved, ResolvedAdapterTraining) and isinstance(resolved.privacy, ResolvedPrivacy):
        return _train_privately(config, model, tokenizer, train_rows, collator, resolved.privacy)
    anchor, ewc_record = None, None
    if config.ewc is not None:  # anchored here: the weights this job starts from, before any step
        anchor, ewc_record = prepare_anchor(
            config.ewc,
            model,
            tokenizer,
            sequence_length=seq_len,
            chat_template=config.chat_template,
            device=config.device,
        )
    meter = TokenMeter()
    world_size = config.environment.world_size

    keep_best = KeepBest(model, hp.early_stopping_patience, keeps_snapshot=config.environment.is_main_process)
    sigterm = StopOnSigterm()
    adalora = (
        AdaLoraSchedule(model, resolved.adalora.orthogonality_weight)
        if isinstance(resolved, ResolvedAdaLoraTraining)
        else None
    )
    # Callbacks that write into a checkpoint come before the one that uploads it.
    writers: list[TrainerCallback] = [keep_best] if adalora is None else [keep_best, adalora]
    callbacks = [
        *writers,
        UploadCheckpoints(config.checkpoints, config.on_checkpoint, sharded=hp.sharding == Sharding.FSDP),
        sigterm,
    ]
    if anchor is not None:
        callbacks.append(anchor)
    if config.on_progress is not None or config.on_metrics is not None:
        callbacks.append(
            ReportProgress(
                meter,
                device=config.device,
                world_size=world_size,
                on_progress=config.on_progress,
                on_metrics=config.on_metrics,
            )
        )
    if config.environment.trace_microsteps:
        callbacks.append(TraceMicroSteps())
    trainer = trainer_class(
        meter=meter,
        model=model,
        args=_arguments(config, eval_rows is not None, model),
        train_dataset=train_rows,
        eval_dataset=eval_rows,
        data_collator=collator,
        processing_class=tokenizer,
        callbacks=callbacks,
        **trainer_options,
    )
    trainer.remove_callback(PrinterCallback)  # progress goes to the reporters instead
    resume = config.checkpoints.download_latest(config.output_dir / "resume")
    if resume is not None:
        log.info("resuming from %s", resume)
        keep_best.load_from(resume)
        if adalora is not None:
            adalora.load_from(resume)
    log.info(
        "training: process %s of %s, %d rows of up to %d tokens, %s",
        config.environment.rank,
        config.environment.world_size,
        len(train_rows),
        seq_len,
        "packed" if packing else "padded",
    )
    started = time.perf_counter()
    trainer.train(resume_from_checkpoint=str(resume) if resume is not None else None)
    runtime = max(time.perf_counter() - started, 1e-9)
    held, total = parameter_share(trainer.model)
    peak = _peak_memory(config.device)
    log.info(
        "parameters held by process %s: %d of %d elements; peak memory %d bytes; %d tokens trained in %.2f s",
        config.environment.rank,
        held,
        total,
        peak,
        meter.counts.trained,
        runtime,
    )
    state = trainer.state
    resumed_step = int(resume.name.split("-")[1]) if resume is not None else None

    outcome = TrainOutcome(
        model=trainer.model,
        tokenizer=tokenizer,
        trained_dir=config.output_dir / "trained",
        history=list(state.log_history),
        global_step=state.global_step,
        total_steps=state.max_steps,
        resumed_from_step=resumed_step,
        stopped_early=keep_best.stopped_early,
        best_eval_loss=keep_best.best,
        padding_fraction=meter.counts.padding_ratio,
        peak_memory_bytes=peak,
        preempted=sigterm.requested,
        token_counts=meter.counts,
        train_seconds=runtime,
    )
    # Measured on this rank's batches; ranks see equal shares.
    outcome.tokens_per_second = world_size * meter.counts.tokens / runtime
    outcome.trained_tokens_per_second = world_size * meter.counts.trained / runtime
    if sigterm.requested:
        return outcome

    unwrapped = trainer.model
    if hp.sharding == Sharding.FSDP:
        unwrapped = _unsharded(trainer, config)
        outcome.model = keep_best.model = unwrapped
    # Rank 0's model is the one published; the other ranks, which take a share of the evaluation, get
    # its final weights (under FSDP theirs is a fresh model, built for that).
    main = config.environment.is_main_process
    keep_best.restore()
    if adalora is not None and main:
        adalora.finish()
    if anchor is not None and ewc_record is not None and main:
        outcome.ewc = {**ewc_record, "penaltyAtEnd": anchor.penalty()}
    if world_size > 1:
        copy_trained_from_rank0(unwrapped)
    if main:
        outcome.trained_dir.mkdir(parents=True, exist_ok=True)
        unwrapped.save_pretrained(outcome.trained_dir, safe_serialization=True)
        tokenizer.save_pretrained(outcome.trained_dir)
    if MethodType(resolved.method) != MethodType.FULL:
        unwrapped.eval()
    return outcome
