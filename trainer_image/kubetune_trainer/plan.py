"""Resolve ``auto`` for the hardware at hand, and estimate memory and time before training.

Defaults follow common QLoRA/LoRA practice (Axolotl, TRL, the QLoRA paper) but lean
conservative on learning rate and rank: a small model tuned hard on a narrow task forgets
general ability fast, and kubetune's default must lose at most 5% on a general regression set.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from kubetune.api.v1alpha1 import (
    PREFERENCE_OBJECTIVES,
    UNMERGEABLE_ADAPTERS,
    AdaLoraSpec,
    AdapterType,
    ArtifactFormat,
    BottleneckPlacement,
    BottleneckSpec,
    DistillMode,
    DpoLoss,
    DpoSpec,
    FineTuneJobSpec,
    LoraScaling,
    LrScheduler,
    MethodSpec,
    MethodType,
    Objective,
    OrpoSpec,
    OsfSpec,
    PrefixSpec,
    PreflightReport,
    PrivacySpec,
    ReplaySpec,
    ResolvedAdaLora,
    ResolvedAdaLoraTraining,
    ResolvedAdapterTraining,
    ResolvedBottleneck,
    ResolvedBottleneckTraining,
    ResolvedDistillObjective,
    ResolvedDpoObjective,
    ResolvedFullTraining,
    ResolvedHyperparameters,
    ResolvedIa3,
    ResolvedIa3Training,
    ResolvedLora,
    ResolvedNoPrivacy,
    ResolvedObjective,
    ResolvedOrpoObjective,
    ResolvedOsf,
    ResolvedOsfTraining,
    ResolvedPrefix,
    ResolvedPrefixTraining,
    ResolvedPrivacy,
    ResolvedReplay,
    ResolvedSftObjective,
    ResolvedTraining,
    Sharding,
    fsdp_trains,
)
from kubetune_trainer.errors import ConfigurationError
from kubetune_trainer.general_prompts import ANSWER_MAX_NEW_TOKENS
from kubetune_trainer.hardware import Hardware

T = TypeVar("T")
LLAMA_LINEAR_MODULES = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


@dataclass(frozen=True)
class Defaults:
    """Every auto value in one place, with the reason next to it."""

    lora_r: int = 8  # small rank: enough for task adaptation, less capacity to overwrite general skills
    lora_alpha_per_r: int = 2  # alpha = 2r, the common scaling
    lora_dropout: float = 0.05
    # Plain LoRA: the method the defaults below (rate, strengths) were measured with (docs/defaults.md).
    adapter: AdapterType = AdapterType.LORA
    # alpha / r: at the default r = 8 and alpha = 2r rsLoRA's alpha / sqrt(r) would be a 2.8x larger
    # update than the rate was measured with; rsLoRA is for high ranks, where alpha / r shrinks it.
    lora_scaling: LoraScaling = LoraScaling.STANDARD
    # Small models tuned on small datasets need a higher LoRA rate than the 1e-4..2e-4 common
    # for 7B+ models: measured on the example tickets (SmolLM2-135M), 2e-4 for 30 steps only
    # taught the label format (accuracy 0.12 -> 0.22); forgetting is held in check by replay
    # data and the regression gate, not by a timid rate.
    lr_lora: float = 5e-4
    lr_qlora: float = 2e-4  # QLoRA paper uses 1e-4..2e-4
    lr_full: float = 1e-5
    # IA3's vectors rescale activations from 1 and hold a fortieth of a rank-8 LoRA's parameters: the T-Few
    # paper (Liu et al. 2022) trains them at 3e-3, six times the LoRA rate above.
    lr_ia3: float = 3e-3
    # AdaLoRA starts each weight at 1.5x the rank it ends with on average (the paper's and peft's 12 for a
    # budget of 8, LoRA's default rank above), and trains at LoRA's rate: alpha over the initial rank is
    # LoRA's alpha / r. Its schedule, in fractions of the run's optimizer steps: no pruning during the first
    # tenth (the singular values must learn something to be judged), the budget spent by 70%, and the last
    # 30% trained at the final ranks; peft's default of reallocating after every step (deltaT = 1).
    adalora_rank_growth: float = 1.5
    adalora_warmup_fraction: float = 0.1
    adalora_final_fraction: float = 0.3
    adalora_interval: int = 1
    adalora_orthogonality_weight: float = 0.5  # the paper's and peft's
    # Prefix tuning: 20 virtual tokens, as peft's prefix-tuning guides use for causal LMs (the paper found
    # 10 enough for table-to-text and 200 best for summarisation); trained at peft's guides' 1e-2, since
    # the prefix is fed to attention directly, without the paper's MLP reparametrisation (whose rate is
    # 5e-5). Neither is measured on the example yet.
    prefix_virtual_tokens: int = 20
    lr_prefix: float = 1e-2
    # Bottleneck adapters: AdapterHub's default configuration (Pfeiffer: one after each MLP, a reduction
    # factor of 16, ReLU), trained at LoRA's rate (the LLM-Adapters study, Hu et al. 2023, trains its series
    # adapters at LoRA's). Not measured on the example yet.
    bottleneck_reduction: int = 16
    bottleneck_min_size: int = 8
    bottleneck_placement: BottleneckPlacement = BottleneckPlacement.MLP
    # OSF: peft's default split, half of each weight's singular directions frozen; its adapted modules are
    # LoRA's defaults (every linear layer but the output head). OSF trains real components of the weights, about half the model's parameters, so it
    # trains at full fine-tuning's rate, not an adapter's (the paper's continual runs use full fine-tuning
    # rates). Measured against replay and EWC by scripts/measure_continual.py (docs/methods.md).
    osf_preserved_fraction: float = 0.5
    # Without output.formats: the adapter and the model merged with it (what serving stacks load).
    formats: tuple[ArtifactFormat, ...] = (ArtifactFormat.ADAPTER, ArtifactFormat.MERGED)
    # Preference objectives train at a tenth of the supervised rate above: their loss moves log ratios
    # against a reference, and the alignment-handbook recipes (Zephyr) train DPO at a tenth to a
    # fortieth of their SFT rate. Not measured on the example yet (docs/methods.md).
    preference_lr_divisor: float = 10.0
    # DPO's pull towards the base. Measured on the preference example (docs/methods.md): at the paper's
    # and TRL's 0.1, three epochs forgot past the gate's limit; at 0.5 they kept the general ability,
    # learned the preference (reward margin +7.0) and were promoted.
    dpo_beta: float = 0.5
    dpo_loss: DpoLoss = DpoLoss.SIGMOID
    orpo_beta: float = 0.1  # TRL's ORPO default (the paper's lambda)
    # Logit distillation: Hinton et al. (2015) soften both distributions at T in 1..20 and find the higher
    # values help only when the student is much smaller; 2.0 is TRL's GKD and the MiniLLM/DistilBERT-style
    # recipes' common choice for LLMs, and the KL term is scaled by T^2 so its gradients keep the label
    # loss's magnitude. alpha 0.5 weighs the teacher and the dataset's answers equally (Hinton et al.'s
    # advice: the hard labels still help). Neither is measured on the example yet (docs/methods.md).
    distill_temperature: float = 2.0
    distill_alpha: float = 0.5
    # Sequence-level distillation: the teacher's greedy answers to the training prompts are at most this
    # long, twice the general answers' bound (general_prompts.ANSWER_MAX_NEW_TOKENS): a task answer of a few
    # sentences fits, and a teacher that never stops costs bounded time. Not measured on the example yet.
    distill_max_new_tokens: int = 192
    scheduler: LrScheduler = LrScheduler.COSINE
    warmup_ratio: float = 0.05
    weight_decay: float = 0.0  # LoRA adapters rarely benefit; full fine-tunes get it via spec
    max_grad_norm: float = 1.0
    # DP-SGD (spec.privacy): per-row clipping at 1.0, Opacus's and the DP fine-tuning papers' usual norm
    # (Li et al. 2022 find the result insensitive to it when the rate is tuned); delta an order of magnitude
    # below 1 / rows, the usual bar for a meaningful epsilon; epsilon counted by Renyi DP.
    privacy_max_grad_norm: float = 1.0
    privacy_delta_rows_factor: float = 10.0
    # DP-SGD's expected batch: the budget fixes the noise each step adds, so a larger expected batch
    # (fewer, larger steps) divides it among more clipped gradients. At epsilon 4 on the example's 561
    # rows, 8 steps an epoch lower the noise on the mean gradient from 0.084 to 0.015 per weight against
    # the non-private batch of 8 (docs/privacy.md, "The default recipe"). Capped so that large datasets
    # still take many steps (Li et al. 2022 train at 1,024; Ponomareva et al. 2023, section 5.4).
    privacy_steps_per_epoch: int = 8
    privacy_max_expected_batch: int = 1024
    # Fewer steps each averaging more rows: a higher rate than lr_lora (Li et al. 2022 scale it with the batch).
    lr_private: float = 2e-3
    effective_batch: int = 8  # packed rows per optimizer step: enough updates on small datasets
    early_stopping_patience: int = 2
    evaluations_per_run: int = 5  # each costs a validation pass; early stopping needs a few
    seed: int = 42
    # Self-distillation replay rows per task training row. On the example tickets 0.3 kept the
    # likelihood of the base's answers (+21%) but lost 18% of the known answers; docs/defaults.md has
    # the measurements behind 0.5 (docs/measurements/forgetting.json: three datasets, replay on and off).
    replay_fraction: float = 0.5
    # A small task still gets enough replay to anchor the model: its few rows are seen every epoch.
    replay_min_examples: int = 48
    # The longest example a run keeps, whatever the model supports: longer rows cost quadratic
    # attention memory on every step for the few examples that need them.
    max_sequence_length: int = 2048
    checkpointing_min_params: float = 1e9  # gradient checkpointing pays off on bigger models
    lora_target_modules: tuple[str, ...] = ("all-linear",)  # every linear layer: QLoRA paper, Axolotl, TRL
    # Strengths the adapter may be kept at, strongest first (training/strength.py walks down them on
    # the validation split; WiSE-FT style interpolation towards the base model).
    adapter_strengths: tuple[float, ...] = (1.0, 0.9, 0.8, 0.7, 0.6, 0.5)


DEFAULTS = Defaults()


def _epochs_for(train_examples: int) -> float:
    if train_examples < 1000:
        return 3.0
    if train_examples < 10000:
        return 2.0
    return 1.0


@dataclass(frozen=True)
class ModelShape:
    """The base model's dimensions, read from its config once (estimates and limits use them)."""

    hidden_size: int
    layers: int
    intermediate_size: int
    vocab_size: int
    attention_heads: int
    kv_heads: int
    tied_embeddings: bool
    max_positions: int
    model_type: str  # transformers' name of the architecture ("llama"): which modules an IA3 default adapts

    @classmethod
    def from_config(cls, config: Any) -> ModelShape:
        def number(name: str, fallback: int) -> int:
            return int(getattr(config, name, fallback) or fallback)

        hidden = number("hidden_size", 0)
        heads = number("num_attention_heads", 1)
        return cls(
            hidden_size=hidden,
            layers=number("num_hidden_layers", 0),
            intermediate_size=number("intermediate_size", 4 * hidden),
            vocab_size=number("vocab_size", 0),
            attention_heads=heads,
            kv_heads=number("num_key_value_heads", heads),
            tied_embeddings=bool(getattr(config, "tie_word_embeddings", True)),
            # Transformers' own default when a config leaves it out.
            max_positions=number("max_position_embeddings", 2048),
            model_type=str(getattr(config, "model_type", "") or ""),
        )

    @property
    def kv_dim(self) -> int:
        return self.hidden_size * self.kv_heads // self.attention_heads

    @property
    def params(self) -> float:
        hidden, kv_dim = self.hidden_size, self.kv_dim
        per_layer = 2 * hidden * hidden + 2 * hidden * kv_dim + 3 * hidden * self.intermediate_size
        return float(self.layers * per_layer + self.vocab_size * hidden * (1 if self.tied_embeddings else 2))

    def lora_params(self, r: int) -> float:
        hidden, kv_dim = self.hidden_size, self.kv_dim
        per_layer = r * ((hidden + hidden) * 2 + (hidden + kv_dim) * 2 + (hidden + self.intermediate_size) * 3)
        return float(self.layers * per_layer)

    def ia3_params(self, ia3: ResolvedIa3) -> float:
        """IA3's vectors: one value per output feature of each target, per input feature of a feed-forward one."""
        sizes = self.projection_sizes()  # unknown names count as hidden x hidden
        targets = list(sizes) if ia3.target_modules == ["all-linear"] else ia3.target_modules
        per_layer = 0
        for name in targets:
            size_in, size_out = sizes.get(name, (self.hidden_size, self.hidden_size))
            per_layer += size_in if name in ia3.feedforward_modules else size_out
        return float(self.layers * per_layer)

    def adalora_params(self, initial_rank: int) -> float:
        """AdaLoRA's factors at their initial rank (pruning masks, it never frees them) and one singular
        value per rank of each of a layer's seven projections."""
        return self.lora_params(initial_rank) + float(self.layers * 7 * initial_rank)

    def bottleneck_params(self, bottleneck: ResolvedBottleneck) -> float:
        """Down and up projections with their biases, after each MLP (and each attention output)."""
        per_adapter = 2 * self.hidden_size * bottleneck.size + bottleneck.size + self.hidden_size
        per_layer = 2 if bottleneck.placement == BottleneckPlacement.ATTENTION_AND_MLP else 1
        return float(self.layers * per_layer * per_adapter)

    def prefix_params(self, virtual_tokens: int) -> float:
        """A key and a value vector per virtual token and layer (of the key/value heads' width)."""
        return float(virtual_tokens * self.layers * 2 * self.kv_dim)

    def projection_sizes(self) -> dict[str, tuple[int, int]]:
        """(input, output) size of each projection of a Llama-style layer."""
        hidden, kv_dim, inner = self.hidden_size, self.kv_dim, self.intermediate_size
        return {
            "q_proj": (hidden, hidden),
            "k_proj": (hidden, kv_dim),
            "v_proj": (hidden, kv_dim),
            "o_proj": (hidden, hidden),
            "gate_proj": (hidden, inner),
            "up_proj": (hidden, inner),
            "down_proj": (inner, hidden),
        }

    def osf_params(self, osf: ResolvedOsf) -> float:
        """OSF's trained singular vectors and values: of each target's smaller dimension m, the
        m - floor(m x preserved) directions not frozen, each a left vector, a right vector and a value
        (peft rounds the frozen count down). Unknown module names count as hidden x hidden."""
        sizes = self.projection_sizes()
        targets = list(sizes) if osf.target_modules == ["all-linear"] else osf.target_modules
        per_layer = 0
        for name in targets:
            size_in, size_out = sizes.get(name, (self.hidden_size, self.hidden_size))
            smaller = min(size_in, size_out)
            trained = smaller - int(smaller * osf.preserved_fraction)
            per_layer += trained * (size_in + size_out + 1)
        return float(self.layers * per_layer)

    def dora_magnitude_params(self) -> float:
        """DoRA's trained magnitudes: one per output feature of every adapted linear layer."""
        per_layer = 3 * self.hidden_size + 2 * self.kv_dim + 2 * self.intermediate_size
        return float(self.layers * per_layer)


def sequence_limit(spec: FineTuneJobSpec, shape: ModelShape) -> int:
    """The longest example a run keeps (curation, a regression set) and the most an auto sequence
    length may reach: the manifest's ``sequenceLength``, else what the model supports, at most
    ``DEFAULTS.max_sequence_length``. Decided once, before the data is read."""
    requested = spec.hyperparameters.sequence_length
    return requested if requested is not None else min(shape.max_positions, DEFAULTS.max_sequence_length)


def _sequence_length(token_lengths: list[int], limit: int) -> int:
    """The 99th percentile of the task examples' lengths, rounded up to 64, within ``limit``."""
    if not token_lengths:
        return limit
    ordered = sorted(token_lengths)
    p99 = ordered[min(len(ordered) - 1, math.ceil(0.99 * len(ordered)) - 1)]
    return max(64, min(limit, 64 * math.ceil(p99 / 64)))


def resolve_replay(
    spec: ReplaySpec, *, task_train_examples: int, pool_size: int, objective: Objective | None = None
) -> ResolvedReplay:
    """How many replay rows to mix in: a share of the task's training rows, at least
    ``replay_min_examples`` and never more than the pool (a pool repeated many times over would be
    memorised rather than replayed). Preference objectives replay nothing: replay rows are single
    answers, not pairs, and DPO's pull towards its reference is its own guard against forgetting
    (which the evaluation still measures and gates)."""
    if not spec.enabled or objective in PREFERENCE_OBJECTIVES:
        return ResolvedReplay(enabled=False, examples=0, fraction=0.0)
    fraction = spec.fraction if spec.fraction is not None else DEFAULTS.replay_fraction
    wanted = round(fraction * task_train_examples)
    if spec.fraction is None:
        wanted = max(wanted, DEFAULTS.replay_min_examples)
    examples = min(pool_size, wanted)
    return ResolvedReplay(enabled=True, examples=examples, fraction=round(examples / max(1, task_train_examples), 4))


def chosen(value: T | None, default: T) -> T:
    """The manifest's value when it gave one, else the default (``or`` would also replace 0 and False)."""
    return value if value is not None else default


def resolve_distill_mode(requested: DistillMode | None, same_vocabulary: bool | None) -> DistillMode:
    """auto: logits when the teacher's tokenizer has the student's vocabulary (its token distributions are
    over the same tokens), else sequence. ``same_vocabulary`` is None where the teacher was not looked at."""
    mode = DistillMode(chosen(requested, DistillMode.AUTO))
    if mode == DistillMode.AUTO:
        if same_vocabulary is None:
            raise ValueError("method.distill.mode auto needs the teacher's and student's tokenizers compared")
        return DistillMode.LOGITS if same_vocabulary else DistillMode.SEQUENCE
    if mode == DistillMode.LOGITS and same_vocabulary is False:
        raise ConfigurationError(
            "spec.method.distill.mode: logits compares the teacher's and student's distributions token by token, "
            "but their tokenizers have different vocabularies: use mode sequence (or leave mode unset)"
        )
    return mode


def resolve_objective(spec: MethodSpec, *, same_vocabulary: bool | None = None) -> ResolvedObjective:
    """``same_vocabulary``: whether a distill objective's teacher shares the student's vocabulary."""
    objective = chosen(spec.objective, Objective.SFT)
    if objective == Objective.DISTILL:
        if spec.distill is None:  # the API's rules refuse it; a spec built in code could still lack it
            raise ConfigurationError("spec.method.distill: method.objective distill needs method.distill.teacher")
        distill = spec.distill
        return ResolvedDistillObjective(
            type=objective,
            teacher=distill.teacher,
            mode=resolve_distill_mode(distill.mode, same_vocabulary),
            temperature=chosen(distill.temperature, DEFAULTS.distill_temperature),
            alpha=chosen(distill.alpha, DEFAULTS.distill_alpha),
        )
    if objective == Objective.DPO:
        dpo = spec.dpo or DpoSpec()
        return ResolvedDpoObjective(
            type=objective,
            beta=chosen(dpo.beta, DEFAULTS.dpo_beta),
            loss=chosen(dpo.loss, DEFAULTS.dpo_loss),
            reference="base",
        )
    if objective == Objective.ORPO:
        return ResolvedOrpoObjective(type=objective, beta=chosen((spec.orpo or OrpoSpec()).beta, DEFAULTS.orpo_beta))
    return ResolvedSftObjective(type=objective)


def resolve_method(spec: FineTuneJobSpec, hardware: Hardware) -> MethodType:
    requested = MethodType(spec.method.type)
    if requested != MethodType.AUTO:
        return requested
    if spec.method.adapter == AdapterType.OSF:
        return MethodType.LORA  # OSF decomposes 16-bit weights; a 4-bit base has none to decompose
    if spec.resources.sharding == Sharding.FSDP:
        return MethodType.LORA  # kubetune does not shard QLoRA's 4-bit weights (docs/distributed.md)
    # QLoRA needs bitsandbytes' CUDA kernels to be worth it; on a CPU plain LoRA is faster.
    return MethodType.QLORA if hardware.device == "cuda" else MethodType.LORA


def resolve_training(
    spec: FineTuneJobSpec,
    hardware: Hardware,
    *,
    train_examples: int,
    token_lengths: list[int],
    shape: ModelShape,
    replay: ResolvedReplay,
    replay_token_lengths: Sequence[int] = (),
    same_vocabulary: bool | None = None,
) -> ResolvedTraining:
    """Every auto value filled in, once; the user's own values always win. ``train_examples`` includes
    the replay rows; ``token_lengths`` are the task's examples and ``replay_token_lengths`` the replay
    rows' planned lengths.

    The sequence length is the task's: replay rows longer than it are truncated rather than
    stretching every packed row for them (docs/defaults.md, "Sequence length"). ``same_vocabulary``:
    whether a distill objective's teacher shares the student's vocabulary (resolves its mode)."""
    method = resolve_method(spec, hardware)
    objective = resolve_objective(spec.method, same_vocabulary=same_vocabulary)
    preference = objective.type in PREFERENCE_OBJECTIVES
    user = spec.hyperparameters

    seq_len = chosen(user.sequence_length, _sequence_length(token_lengths, sequence_limit(spec, shape)))
    trained_lengths = [*token_lengths, *(min(length, seq_len) for length in replay_token_lengths)]
    micro = chosen(user.batch_size, 4 if hardware.device == "cpu" else _gpu_micro_batch(hardware, seq_len))
    world = hardware.processes
    expected_batch = DEFAULTS.effective_batch if spec.privacy is None else _private_expected_batch(train_examples)
    accumulation = chosen(user.gradient_accumulation_steps, max(1, round(expected_batch / (micro * world))))
    epochs = chosen(user.epochs, _epochs_for(train_examples))
    adapter = chosen(spec.method.adapter, DEFAULTS.adapter)
    # A pair's answers are compared row by row; a prefix is a key/value cache, which packed rows'
    # per-example attention cannot combine with.
    # Under spec.privacy one row is one privacy unit: never packed.
    packing = chosen(user.packing, not preference and adapter != AdapterType.PREFIX and spec.privacy is None)
    rows = train_examples
    if packing and trained_lengths:
        # Packed rows hold several examples: count rows, not examples, or evaluations end up
        # spaced for a run several times longer than the real one.
        mean_tokens = sum(trained_lengths) / len(trained_lengths)
        rows = max(1, math.ceil(train_examples * mean_tokens / (seq_len * 0.9)))
    total_steps = max(1, math.ceil(rows / (micro * accumulation * world)) * math.ceil(epochs))
    default_lr = {
        MethodType.QLORA: DEFAULTS.lr_qlora,
        MethodType.LORA: DEFAULTS.lr_lora,
        MethodType.FULL: DEFAULTS.lr_full,
    }[method]
    if adapter == AdapterType.IA3:
        default_lr = DEFAULTS.lr_ia3
    if adapter == AdapterType.PREFIX:
        default_lr = DEFAULTS.lr_prefix
    if adapter == AdapterType.OSF:
        default_lr = DEFAULTS.lr_full
    if preference:
        default_lr /= DEFAULTS.preference_lr_divisor
    if spec.privacy is not None:
        default_lr = DEFAULTS.lr_private
    hyper = ResolvedHyperparameters(
        epochs=epochs,
        learning_rate=chosen(user.learning_rate, default_lr),
        lr_scheduler=chosen(user.lr_scheduler, DEFAULTS.scheduler),
        warmup_ratio=chosen(user.warmup_ratio, DEFAULTS.warmup_ratio),
        batch_size=micro,
        gradient_accumulation_steps=accumulation,
        weight_decay=chosen(user.weight_decay, DEFAULTS.weight_decay),
        max_grad_norm=chosen(user.max_grad_norm, DEFAULTS.max_grad_norm),
        sequence_length=seq_len,
        packing=packing,
        # Under spec.privacy the validation rows, outside the privacy accounting, must not pick the model.
        early_stopping_patience=chosen(
            user.early_stopping_patience, 0 if spec.privacy is not None else DEFAULTS.early_stopping_patience
        ),
        gradient_checkpointing=chosen(
            user.gradient_checkpointing,
            hardware.device == "cuda" and shape.params > DEFAULTS.checkpointing_min_params and spec.privacy is None,
        ),
        # One process has nothing to shard over (kubetune run plans one node); auto starts unsharded and
        # choose_sharding shards it if the pre-flight's estimate says it must.
        sharding=Sharding.FSDP if spec.resources.sharding == Sharding.FSDP and world > 1 else Sharding.NONE,
        seed=chosen(user.seed, DEFAULTS.seed),
        eval_steps=chosen(user.eval_steps, max(1, total_steps // DEFAULTS.evaluations_per_run)),
    )
    if method == MethodType.FULL:
        return ResolvedFullTraining(
            adapter="none", method=method, hyperparameters=hyper, replay=replay, objective=objective
        )
    if adapter == AdapterType.ADALORA:
        adalora = resolve_adalora(spec, objective.type, total_steps)
        return ResolvedAdaLoraTraining(
            adapter=adapter, method=method, adalora=adalora, hyperparameters=hyper, replay=replay, objective=objective
        )
    if adapter == AdapterType.BOTTLENECK:
        wanted = spec.method.bottleneck or BottleneckSpec()
        bottleneck = ResolvedBottleneck(
            size=chosen(
                wanted.size, max(DEFAULTS.bottleneck_min_size, shape.hidden_size // DEFAULTS.bottleneck_reduction)
            ),
            placement=chosen(wanted.placement, DEFAULTS.bottleneck_placement),
        )
        return ResolvedBottleneckTraining(
            adapter=adapter,
            method=method,
            bottleneck=bottleneck,
            hyperparameters=hyper,
            replay=replay,
            objective=objective,
        )
    if adapter == AdapterType.PREFIX:
        prefix = ResolvedPrefix(
            virtual_tokens=chosen((spec.method.prefix or PrefixSpec()).virtual_tokens, DEFAULTS.prefix_virtual_tokens)
        )
        return ResolvedPrefixTraining(
            adapter=adapter, method=method, prefix=prefix, hyperparameters=hyper, replay=replay, objective=objective
        )
    if adapter == AdapterType.OSF:
        wanted_osf = spec.method.osf or OsfSpec()
        osf = ResolvedOsf(
            preserved_fraction=chosen(wanted_osf.preserved_fraction, DEFAULTS.osf_preserved_fraction),
            target_modules=chosen(wanted_osf.target_modules, list(DEFAULTS.lora_target_modules)),
        )
        return ResolvedOsfTraining(
            adapter=adapter, method=MethodType.LORA, osf=osf, hyperparameters=hyper, replay=replay, objective=objective
        )
    if adapter == AdapterType.IA3:
        ia3 = resolve_ia3(spec, shape, objective.type)
        return ResolvedIa3Training(
            adapter=adapter, method=method, ia3=ia3, hyperparameters=hyper, replay=replay, objective=objective
        )
    requested = spec.method.lora
    r = chosen(requested.r, DEFAULTS.lora_r)
    lora = ResolvedLora(
        scaling=chosen(requested.scaling, DEFAULTS.lora_scaling),
        r=r,
        alpha=chosen(requested.alpha, DEFAULTS.lora_alpha_per_r * r),
        dropout=chosen(requested.dropout, DEFAULTS.lora_dropout),
        target_modules=chosen(requested.target_modules, list(DEFAULTS.lora_target_modules)),
        strengths=[1.0] if spec.privacy is not None else strengths(requested.scale, objective.type),
    )
    return ResolvedAdapterTraining(
        adapter=adapter,
        method=method,
        lora=lora,
        hyperparameters=hyper,
        replay=replay,
        objective=objective,
        privacy=(
            resolve_privacy(spec.privacy, hyper, train_examples)
            if spec.privacy is not None
            else ResolvedNoPrivacy(mechanism="none")
        ),
    )


def _private_expected_batch(train_examples: int) -> int:
    """DP-SGD's auto batch: ``privacy_steps_per_epoch`` steps an epoch, at least the non-private batch and
    at most ``privacy_max_expected_batch`` rows."""
    per_epoch = math.ceil(max(1, train_examples) / DEFAULTS.privacy_steps_per_epoch)
    return min(DEFAULTS.privacy_max_expected_batch, max(DEFAULTS.effective_batch, per_epoch))


def resolve_privacy(spec: PrivacySpec, hyper: ResolvedHyperparameters, train_examples: int) -> ResolvedPrivacy:
    """DP-SGD's sampling: each step draws every row with probability (batch x accumulation) / rows, the
    expected batch the plan chose, and ``epochs / sampleRate`` steps see each row ``epochs`` times on
    average (Opacus's Poisson loader does the same)."""
    rows = max(1, train_examples)
    sample_rate = min(1.0, hyper.batch_size * hyper.gradient_accumulation_steps / rows)
    return ResolvedPrivacy(
        mechanism="dp-sgd",
        target_epsilon=spec.target_epsilon,
        delta=chosen(spec.delta, 1.0 / (DEFAULTS.privacy_delta_rows_factor * rows)),
        max_grad_norm=chosen(spec.max_grad_norm, DEFAULTS.privacy_max_grad_norm),
        sample_rate=sample_rate,
        steps=max(1, math.ceil(hyper.epochs / sample_rate)),
        accountant="rdp",
    )


def resolve_formats(spec: FineTuneJobSpec) -> list[ArtifactFormat]:
    """The manifest's output formats, else the default; a prefix or bottleneck adapter has only itself to
    publish."""
    if spec.output.formats is not None:
        return list(spec.output.formats)
    if spec.method.adapter in UNMERGEABLE_ADAPTERS:
        return [ArtifactFormat.ADAPTER]
    return list(DEFAULTS.formats)


def strengths(scale: float | None, objective: Objective) -> list[float]:
    """The manifest's strength, else the candidates the validation split chooses from after training.
    A preference run keeps full strength: the search scores generated answers against one reference
    answer, and a pair has two (its rewards are what the gate judges)."""
    if scale is not None:
        return [scale]
    return [1.0] if objective in PREFERENCE_OBJECTIVES else list(DEFAULTS.adapter_strengths)


def resolve_adalora(spec: FineTuneJobSpec, objective: Objective, total_steps: int) -> ResolvedAdaLora:
    """AdaLoRA's ranks and its pruning schedule laid over the plan's optimizer steps (peft needs at least
    one step between the warm-up and the final phase; a run of a step or two prunes at its last)."""
    requested = spec.method.adalora or AdaLoraSpec()
    target = chosen(requested.target_rank, DEFAULTS.lora_r)
    initial = chosen(requested.initial_rank, max(target, round(target * DEFAULTS.adalora_rank_growth)))
    warmup = round(total_steps * DEFAULTS.adalora_warmup_fraction)
    final = round(total_steps * DEFAULTS.adalora_final_fraction)
    if warmup >= total_steps - final:
        warmup, final = 0, max(0, total_steps - 1)
    return ResolvedAdaLora(
        initial_rank=initial,
        target_rank=target,
        alpha=chosen(requested.alpha, DEFAULTS.lora_alpha_per_r * initial),
        dropout=chosen(requested.dropout, DEFAULTS.lora_dropout),
        target_modules=chosen(requested.target_modules, list(DEFAULTS.lora_target_modules)),
        total_steps=total_steps,
        warmup_steps=warmup,
        final_steps=final,
        interval=DEFAULTS.adalora_interval,
        orthogonality_weight=DEFAULTS.adalora_orthogonality_weight,
        strengths=strengths(requested.scale, objective),
    )


def resolve_ia3(spec: FineTuneJobSpec, shape: ModelShape, objective: Objective) -> ResolvedIa3:
    """IA3's modules: the manifest's, else peft's for the architecture (for Llama: keys, values and the
    MLP's down projection, rescaled at its input), as in the IA3 paper."""
    from peft.utils import (
        TRANSFORMERS_MODELS_TO_IA3_FEEDFORWARD_MODULES_MAPPING,
        TRANSFORMERS_MODELS_TO_IA3_TARGET_MODULES_MAPPING,
    )

    requested = spec.method.ia3
    targets = requested.target_modules if requested else None
    if targets is None:
        known = TRANSFORMERS_MODELS_TO_IA3_TARGET_MODULES_MAPPING.get(shape.model_type)
        if known is None:
            raise ConfigurationError(
                f"spec.method.ia3.targetModules: kubetune has no IA3 default for model type "
                f"'{shape.model_type or 'unknown'}'; name the modules to rescale"
            )
        targets = list(known)
        feedforward = list(TRANSFORMERS_MODELS_TO_IA3_FEEDFORWARD_MODULES_MAPPING.get(shape.model_type, []))
    else:
        feedforward = list(requested.feedforward_modules or []) if requested else []
    return ResolvedIa3(
        target_modules=list(targets),
        # peft's defaults may name a feed-forward module the manifest's targets leave out.
        feedforward_modules=[m for m in feedforward if targets == ["all-linear"] or m in targets],
        strengths=strengths(requested.scale if requested else None, objective),
    )


def _gpu_micro_batch(hardware: Hardware, seq_len: int) -> int:
    budget = 8 if hardware.gpu_memory_gib < 30 else 16
    return max(1, budget * 1024 // max(seq_len, 1024))


# A CPU training process's memory before any model: Python, torch, transformers, the tokenizer and the
# data. Measured: the tiny test model's training processes peak at 0.70-0.74 GiB (scripts/measure_sharding.py
# --smoke), whose tensors are a few MiB.
CPU_RUNTIME_GIB = 0.7
# Sustained training throughput assumed by the time estimate, in model FLOPs per second.
# CPU: calibrated on 2 cores (SmolLM2-135M LoRA: ~200 tokens/s = 6 x 135e6 x 200 ≈ 1.6e11).
CPU_FLOPS_PER_CORE = 8e10
GPU_FLOPS = 1.5e14  # ~40% MFU of a bf16 datacenter GPU; a deliberately rough prior
# Greedy decoding in small batches uses a fraction of the training throughput, and a batch runs until
# its longest answer ends. Calibrated on 2 cores: 372 general answers of SmolLM2-135M, up to 96 new
# tokens each, took 4 minutes (scripts/make_builtin_general_answers.py).
GENERATION_EFFICIENCY = 0.25


@dataclass(frozen=True)
class MeasuredSteps:
    """Real optimizer steps of the plan timed on the machine that will train (``kubetune run``;
    training/probe.py): the estimate then scales what was measured instead of a FLOPs prior."""

    seconds_per_step: float  # an optimizer step once warm (the steps after the first)
    setup_seconds: float  # loading the model and building its rows, and the first step's extra
    total_steps: int  # the optimizer steps the run will take (its real rows, batch, accumulation, epochs)
    validation_seconds: float  # one pass of the in-training validation, timed
    validations: int  # the passes the run will make
    peak_memory_bytes: int  # the process's peak while stepping


def _memory_hint(method: MethodType, hardware: Hardware, sharded: bool) -> str:
    """The fields that would make a plan fit, most effective first."""
    more = "spec.resources.gpuMemory (a larger GPU)" if hardware.device == "cuda" else "spec.resources.memory"
    hints = [f"raise {more}"]
    if sharded:
        hints.append("add processes (spec.resources.nodes or spec.resources.gpus)")
    elif hardware.processes > 1 and method != MethodType.QLORA:
        hints.append("set spec.resources.sharding to fsdp")
    if hardware.device == "cuda" and method != MethodType.QLORA:
        # kubetune does not shard 4-bit weights (a CEL rule refuses qlora with fsdp)
        hints.append("set spec.method.type to qlora" + (" with spec.resources.sharding none" if sharded else ""))
    elif method == MethodType.FULL:
        hints.append("set spec.method.type to lora")
    hints.append("lower spec.hyperparameters.batchSize or sequenceLength")
    return "; ".join(hints)


def choose_sharding(
    spec: FineTuneJobSpec,
    resolved: ResolvedTraining,
    hardware: Hardware,
    estimate: Callable[[ResolvedTraining], PreflightReport],
) -> tuple[ResolvedTraining, PreflightReport]:
    """resources.sharding auto: unsharded (DDP) while the estimate fits one process's memory, else fully
    sharded when the job has several processes and fsdp trains its method; a plan that fits neither way
    is reported sharded (the closer miss) so its message names what to add."""
    report = estimate(resolved)
    if (
        report.passed
        or spec.resources.sharding != Sharding.AUTO
        or hardware.processes < 2
        or resolved.method == MethodType.QLORA
        or not fsdp_trains(spec)
    ):
        return resolved, report
    hyper = resolved.hyperparameters.model_copy(update={"sharding": Sharding.FSDP})
    sharded = resolved.model_copy(update={"hyperparameters": hyper})
    sharded_report = estimate(sharded)
    note = f"sharding auto chose fsdp: unsharded it needs ~{report.estimated_memory_gib:.1f} GiB per process; "
    return sharded, sharded_report.model_copy(update={"message": note + sharded_report.message})


def measured_training_seconds(measured: MeasuredSteps) -> float:
    return (
        measured.setup_seconds
        + measured.total_steps * measured.seconds_per_step
        + measured.validations * measured.validation_seconds
    )


def preflight_estimate(
    resolved: ResolvedTraining,
    shape: ModelShape,
    hardware: Hardware,
    *,
    train_tokens: int,
    total_memory_limit_gib: float | None,
    answers_to_generate: int = 0,
    measured: MeasuredSteps | None = None,
    teacher: ModelShape | None = None,
    teacher_answers: int = 0,
) -> PreflightReport:
    """Peak memory and wall time for the plan, and whether it fits the machine it will run on.

    ``answers_to_generate``: base-model answers to general prompts the training pod must generate
    first (none when they are cached); their time is part of the estimate. ``measured``: real steps
    timed on the machine that trains (``kubetune run``); without them (a pre-flight pod, which never
    runs on the training GPU), memory and time come from the formulas below. ``teacher``: a distill
    objective's teacher; ``teacher_answers``: the training prompts it must answer first (sequence mode)."""
    params = shape.params
    hyper = resolved.hyperparameters
    method = MethodType(resolved.method)
    on_gpu = hardware.device == "cuda"
    weight_bytes = {
        MethodType.QLORA: 0.55,
        MethodType.LORA: 2.0 if on_gpu else 4.0,
        MethodType.FULL: 2.0 if on_gpu else 4.0,
    }[method]
    trainable = params
    if isinstance(resolved, ResolvedAdapterTraining):
        trainable = shape.lora_params(resolved.lora.r)
        if resolved.adapter == AdapterType.DORA:
            trainable += shape.dora_magnitude_params()
    elif isinstance(resolved, ResolvedAdaLoraTraining):
        trainable = shape.adalora_params(resolved.adalora.initial_rank)
    elif isinstance(resolved, ResolvedIa3Training):
        trainable = shape.ia3_params(resolved.ia3)
    elif isinstance(resolved, ResolvedPrefixTraining):
        trainable = shape.prefix_params(resolved.prefix.virtual_tokens)
    elif isinstance(resolved, ResolvedBottleneckTraining):
        trainable = shape.bottleneck_params(resolved.bottleneck)
    elif isinstance(resolved, ResolvedOsfTraining):
        trainable = shape.osf_params(resolved.osf)
    # fp32 master copy + Adam's two moments + gradient for each trainable parameter.
    optimizer_bytes = trainable * (4 + 8 + 4)
    if isinstance(resolved, ResolvedOsfTraining):
        optimizer_bytes += trainable * weight_bytes  # the frozen copy of the trained components' start
    hidden, layers, vocab = shape.hidden_size, shape.layers, shape.vocab_size
    # A preference batch holds each pair's two answers as two rows.
    rows_per_example = 2 if resolved.objective.type in PREFERENCE_OBJECTIVES else 1
    tokens_in_flight = hyper.batch_size * hyper.sequence_length * rows_per_example
    activation_factor = 4 if hyper.gradient_checkpointing else 34  # bytes·layer per hidden unit per token
    activations = tokens_in_flight * hidden * layers * activation_factor + tokens_in_flight * vocab * 4 * 2
    logit_teacher = (
        teacher
        if isinstance(resolved.objective, ResolvedDistillObjective) and resolved.objective.mode == DistillMode.LOGITS
        else None
    )
    # Logit distillation holds the teacher beside the student, frozen at the base's precision, and its logits.
    teacher_bytes = (
        logit_teacher.params * weight_bytes + tokens_in_flight * logit_teacher.vocab_size * 4 if logit_teacher else 0.0
    )
    state = params * weight_bytes + optimizer_bytes
    if hyper.sharding == Sharding.FSDP:
        # Each process holds 1/N of the weights, gradients and optimizer state, plus the unit being
        # all-gathered and the next one prefetched (a decoder layer, or the root's embeddings and head).
        unit = max((params - vocab * hidden) / max(1, layers), vocab * hidden)
        state = state / hardware.processes + 2 * unit * weight_bytes
    peak_gib = (state + activations + teacher_bytes) / 2**30 * 1.2  # 20% slack
    if not on_gpu:
        # Host memory is what a CPU process trains in: also the runtime, and rank 0's copy of the best
        # trained weights so far (training/loop.py, KeepBest). Sharded, rank 0 ends holding the full
        # weights twice beside its shard (gathered, and the model rebuilt from them for evaluation).
        gathered = params * weight_bytes * (2 + 1 / hardware.processes) if hyper.sharding == Sharding.FSDP else 0
        peak_gib = max(peak_gib + trainable * 4 / 2**30, gathered * 1.2 / 2**30) + CPU_RUNTIME_GIB
    if measured is not None:
        peak_gib = measured.peak_memory_bytes / 2**30

    flops_per_token = 6 * params if method == MethodType.FULL else 4 * params  # no weight grads for frozen base
    if resolved.objective.type in PREFERENCE_OBJECTIVES:
        # Tokens are counted per example with its chosen answer; each step runs it again with the rejected one,
        # and DPO first runs the reference forward (2N per token) over both.
        flops_per_token = 2 * flops_per_token + (4 * params if resolved.objective.type == Objective.DPO else 0)
    if logit_teacher is not None:
        flops_per_token += 2 * logit_teacher.params  # the teacher's forward over every row
    per_node = GPU_FLOPS * max(1, hardware.gpu_count) if on_gpu else CPU_FLOPS_PER_CORE * max(1, hardware.cpu_count)
    throughput = per_node * hardware.nodes
    seconds = (
        measured_training_seconds(measured)
        if measured is not None
        else train_tokens * hyper.epochs * flops_per_token / throughput
    )
    generated_tokens = answers_to_generate * ANSWER_MAX_NEW_TOKENS
    seconds += generated_tokens * 2 * params / (throughput * GENERATION_EFFICIENCY)
    if teacher is not None and teacher_answers:
        teacher_tokens = teacher_answers * DEFAULTS.distill_max_new_tokens
        seconds += teacher_tokens * 2 * teacher.params / (throughput * GENERATION_EFFICIENCY)

    where = f"'{hardware.gpu_name}' ({hardware.gpu_memory_gib:.1f} GiB)" if on_gpu else "host memory"
    available = hardware.gpu_memory_gib if on_gpu else (total_memory_limit_gib or hardware.host_memory_gib)
    passed = available <= 0 or peak_gib <= available
    sharded = hyper.sharding == Sharding.FSDP
    per_process = f" per process (sharded over {hardware.processes})" if sharded else ""
    if passed:
        message = (
            f"{method} fits: ~{peak_gib:.1f} GiB peak {'GPU' if on_gpu else 'host'} memory{per_process}"
            + (f" of {available:.1f} GiB" if available > 0 else "")
            + f", ~{seconds / 60:.1f} min for {train_tokens} tokens x {hyper.epochs:g} epochs"
            + (f" and {answers_to_generate} base answers to generate" if answers_to_generate else "")
            + (
                f" (from real steps on this machine: {measured.total_steps} of {measured.seconds_per_step:.2f} s)"
                if measured
                else ""
            )
        )
    else:
        message = (
            f"estimated {peak_gib:.1f} GiB peak memory{per_process} for {method} of {params / 1e9:.2f} B params "
            f"exceeds the {available:.1f} GiB of {where}; {_memory_hint(method, hardware, sharded)}"
        )
    return PreflightReport(
        passed=passed,
        message=message,
        train_tokens=train_tokens,
        estimated_memory_gib=round(peak_gib, 2),
        estimated_minutes=round(seconds / 60, 1),
        method=str(method),
    )
