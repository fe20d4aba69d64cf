"""What each pipeline stage does, in terms of the modules that do the work."""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from kubetune.api.v1alpha1 import (
    MERGED_FORMATS,
    PREFERENCE_OBJECTIVES,
    ArtifactFormat,
    CurationSpec,
    DatasetSource,
    DatasetSpec,
    DistillMode,
    MethodType,
    NearDedupSpec,
    OciPushStatus,
    PreflightReport,
    ReplaySpec,
    ResolvedAdaLoraTraining,
    ResolvedAdapterTraining,
    ResolvedDistillObjective,
    ResolvedDpoObjective,
    ResolvedIa3Training,
    ResolvedReplay,
    ResolvedTraining,
    SplitSpec,
)
from kubetune_trainer.context import Mode, RunContext
from kubetune_trainer.data.prepare import PreparedDataset, prepare_dataset
from kubetune_trainer.data.types import Example, Message
from kubetune_trainer.errors import ConfigurationError
from kubetune_trainer.evaluation.forgetting import FORGETTING_MAX_LENGTH, RegressionItem, RegressionSet
from kubetune_trainer.evaluation.report import EvaluationReport, plot_loss_curve
from kubetune_trainer.evaluation.scoring import SideScores, TokenLoss
from kubetune_trainer.evaluation.sharing import cached_on_rank0
from kubetune_trainer.general_answers import (
    AnswerKey,
    BaseAnswers,
    as_examples,
    base_answers,
    base_likelihoods,
    find_answers,
    generate_with,
)
from kubetune_trainer.general_prompts import (
    GeneralPrompt,
    GeneralPromptSet,
    load_general_prompts,
    normalise_for_matching,
)
from kubetune_trainer.hardware import Hardware, quantity_gib, training_hardware
from kubetune_trainer.models.continual import StartingVersion, published_fisher, resolve_starting_version
from kubetune_trainer.models.loading import model_checksum, resolve_model_dir
from kubetune_trainer.models.teacher import Teacher, resolve_teacher, same_vocabulary
from kubetune_trainer.plan import (
    DEFAULTS,
    MeasuredSteps,
    ModelShape,
    choose_sharding,
    preflight_estimate,
    resolve_distill_mode,
    resolve_formats,
    resolve_method,
    resolve_replay,
    resolve_training,
    sequence_limit,
)
from kubetune_trainer.publish import PublishedRun, RunRecord, lineage_manifest, publish_run
from kubetune_trainer.replay import PLANNED_ANSWER_TOKENS, answers_worth_replaying, choose_replay_prompts
from kubetune_trainer.row_cache import RowCache
from kubetune_trainer.storage import ObjectStore, StorageError
from kubetune_trainer.tensors.encode import TokenCounter
from kubetune_trainer.training.ewc import EwcPlan
from kubetune_trainer.training.loop import TrainOutcome

if TYPE_CHECKING:  # types only: the runner pulls in torch when a run evaluates
    from kubetune_trainer.evaluation.runner import BaseTestScores, ModelUnderTest

log = logging.getLogger(__name__)


@dataclass
class BaseModelInfo:
    uri: str
    path: Path
    sha256: str
    tokenizer: Any
    shape: ModelShape
    hardware: Hardware
    chat_template: str | None
    sequence_limit: int  # the longest example this run keeps (plan.sequence_limit)
    start: StartingVersion | None = None  # the version this run continues (models.continual)
    teacher_model: Teacher | None = None  # method.objective distill's teacher (models.teacher)
    teacher_same_vocabulary: bool | None = None  # whether its tokenizer has the student's vocabulary
    teacher_shape: ModelShape | None = None  # its size, for the pre-flight's estimate


def prepare_base_model(ctx: RunContext) -> BaseModelInfo:
    from transformers import AutoConfig

    from kubetune_trainer.training.model import load_tokenizer

    uri, start = ctx.spec.base_model.uri, None
    if ctx.spec.continual is not None and ctx.spec.continual.from_version is not None:
        # The version's weights stand in for the base model's everywhere.
        start = resolve_starting_version(ctx.spec, ctx.store, ctx.environment.storage_prefixes)
        uri, path = start.weights_uri, start.path
    else:
        path = resolve_model_dir(uri, ctx.store)  # a source that cannot be read: the field's error, exit 2
        uri = ctx.store.pinned(uri)  # an hf:// revision as the commit that was fetched (asked already)
    shape = ModelShape.from_config(AutoConfig.from_pretrained(path, trust_remote_code=False))
    tokenizer = load_tokenizer(path)
    teacher, vocabulary, teacher_shape = None, None, None
    if ctx.spec.method.distill is not None:
        teacher = resolve_teacher(ctx.spec.method.distill.teacher, ctx.store, ctx.environment.storage_prefixes)
        vocabulary = same_vocabulary(tokenizer, load_tokenizer(teacher.path))
        teacher_shape = ModelShape.from_config(AutoConfig.from_pretrained(teacher.path, trust_remote_code=False))
    return BaseModelInfo(
        uri=uri,
        path=path,
        sha256=model_checksum(path),
        tokenizer=tokenizer,
        shape=shape,
        hardware=training_hardware(
            ctx.spec.resources, preflight=ctx.mode == Mode.PREFLIGHT, local=ctx.mode == Mode.LOCAL
        ),
        chat_template=ctx.spec.base_model.chat_template,
        sequence_limit=sequence_limit(ctx.spec, shape),
        start=start,
        teacher_model=teacher,
        teacher_same_vocabulary=vocabulary,
        teacher_shape=teacher_shape,
    )


def _token_counter(model: BaseModelInfo) -> TokenCounter:
    return TokenCounter(model.tokenizer, model.chat_template)


def prepare_data(ctx: RunContext, model: BaseModelInfo) -> PreparedDataset:
    dataset = ctx.spec.dataset
    if model.start is not None and model.start.replay:  # earlier versions' data, at continual.replayFraction
        dataset = dataset.model_copy(update={"sources": [*dataset.sources, *model.start.replay]})
    data = prepare_dataset(
        dataset,
        ctx.store,
        _token_counter(model),
        max_tokens=model.sequence_limit,
        pairs=ctx.spec.method.objective in PREFERENCE_OBJECTIVES,
    )
    distill = ctx.spec.method.distill
    if (
        distill is not None
        and model.teacher_model is not None
        and ctx.mode != Mode.PREFLIGHT  # the pre-flight pod plans on the dataset's answers; it generates nothing
        and resolve_distill_mode(distill.mode, model.teacher_same_vocabulary) == DistillMode.SEQUENCE
    ):
        _answer_with_teacher(ctx, model, model.teacher_model, data)
    reports = ctx.workdir / "artifacts" / "reports"
    reports.mkdir(parents=True, exist_ok=True)
    (reports / "curation.json").write_text(json.dumps(data.report.to_dict(), indent=2))
    (reports / "curation.md").write_text(data.report.to_markdown())
    return data


def _answer_with_teacher(ctx: RunContext, model: BaseModelInfo, teacher: Teacher, data: PreparedDataset) -> None:
    """Sequence-level distillation: the training rows' final answers become the teacher's (distill_answers.py),
    cached in the work dir and published with the version."""
    from kubetune_trainer.distill_answers import ARTIFACT, teacher_answers
    from kubetune_trainer.evaluation.scoring import generate
    from kubetune_trainer.training.distill import load_teacher
    from kubetune_trainer.training.model import load_tokenizer

    tokenizer = load_tokenizer(teacher.path)
    if not tokenizer.chat_template:
        raise ConfigurationError(
            f"spec.method.distill.teacher: {teacher.uri}: its tokenizer has no chat template; sequence-level "
            f"distillation asks the teacher each training prompt as a conversation"
        )

    def answer(rows: Sequence[Example]) -> list[str]:
        net = load_teacher(
            teacher.path,
            resolve_method(ctx.spec, model.hardware),
            device=model.hardware.device,
            bf16=model.hardware.bf16,
        )
        try:
            answers: list[str] = generate(net, tokenizer, rows, max_new_tokens=DEFAULTS.distill_max_new_tokens)
            return answers
        finally:
            del net
            if model.hardware.device == "cuda":
                import torch

                torch.cuda.empty_cache()

    answered = teacher_answers(
        data.train,
        teacher_sha256=teacher.sha256,
        template=str(tokenizer.chat_template),
        cache_dir=ctx.workdir / "distill-answers",
        max_new_tokens=DEFAULTS.distill_max_new_tokens,
        answer=answer,
    )
    published = ctx.workdir / "artifacts" / ARTIFACT
    published.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(answered.path, published)
    count = _token_counter(model)
    data.train = answered.rows
    data.token_lengths = [count(example) for example in (*data.train, *data.validation, *data.test)]
    data.teacher_answers = answered.lineage()


BaseSubject = tuple[Any, AbstractContextManager[None]]  # a model and the context that makes it the base


def _answer_key(model: BaseModelInfo, method: MethodType, prompts: GeneralPromptSet) -> AnswerKey:
    # QLoRA's base is the 4-bit model: its answers are what the run starts from and compares against.
    return AnswerKey(
        model.sha256, prompts.version, model.chat_template, weights="nf4" if method == MethodType.QLORA else "full"
    )


def _general_answers(
    ctx: RunContext, model: BaseModelInfo, method: MethodType, load_base_subject: Callable[[], BaseSubject]
) -> tuple[GeneralPromptSet, BaseAnswers]:
    """The base model's answers to every built-in general prompt (both pools): cached, else generated
    here, in the training pod, by the model ``load_base_subject`` returns (called only then)."""
    prompts = load_general_prompts()

    def generate(asked: Sequence[GeneralPrompt]) -> list[str]:
        subject, context = load_base_subject()
        subject.eval()
        with context:
            return generate_with(subject, model.tokenizer, model.chat_template)(asked)

    everything = [*prompts.regression, *prompts.replay]
    answers = cached_on_rank0(
        lambda compute: base_answers(
            _answer_key(model, method, prompts),
            everything,
            lambda asked: compute(),
            cache_dir=ctx.environment.cache,
            store=ctx.store,
            output_uri=ctx.spec.output.uri,
        ),
        lambda: generate(everything),
    )
    return prompts, answers


def load_regression_set(
    ctx: RunContext, model: BaseModelInfo, method: MethodType, base: BaseSubject
) -> RegressionSet | None:
    """The general prompts forgetting is measured on: the manifest's regressionSet, else the built-in
    regression pool with the base model's own answers. None when the manifest opted out."""
    evaluation = ctx.spec.evaluation
    if not evaluation.forgetting:
        return None
    if evaluation.regression_set is not None:
        examples = _read_regression_set(ctx, model, evaluation.regression_set)
        return RegressionSet(evaluation.regression_set, tuple(RegressionItem(e) for e in examples))
    prompts, answers = _general_answers(ctx, model, method, lambda: base)
    rows = as_examples(prompts.regression, answers)
    items = tuple(RegressionItem(row, p.keywords) for row, p in zip(rows, prompts.regression, strict=True))

    def base_scores(compute: Callable[[], list[TokenLoss]]) -> list[TokenLoss]:
        scores, origin = base_likelihoods(
            answers.key,
            prompts.regression,
            lambda: [(loss.nll_sum, loss.tokens) for loss in compute()],
            max_length=FORGETTING_MAX_LENGTH,
            precision="bf16" if model.hardware.bf16 else "fp32",  # how load_base loaded it
            cache_dir=ctx.environment.cache,
            store=ctx.store,
            output_uri=ctx.spec.output.uri,
        )
        log.info("base model's likelihood of its general answers: %s", origin)
        return [TokenLoss(nll, tokens) for nll, tokens in scores]

    name = f"kubetune's built-in general prompts ({prompts.version}, answers {answers.origin})"
    return RegressionSet(name, items, base_scores=base_scores)


def _read_regression_set(ctx: RunContext, model: BaseModelInfo, uri: str) -> list[Example]:
    spec = DatasetSpec(
        sources=[DatasetSource(uri=uri)],
        split=SplitSpec(validation=0, test=0),
        curation=CurationSpec(dedup_exact=True, near_dedup=NearDedupSpec(enabled=False), min_tokens=1),
        replay=ReplaySpec(enabled=False),
    )
    return prepare_dataset(spec, ctx.store, _token_counter(model), max_tokens=model.sequence_limit).train


def _refuse_replayed_regression_prompts(ctx: RunContext, model: BaseModelInfo, replayed: list[GeneralPrompt]) -> None:
    """Training on a prompt forgetting is measured on hides the forgetting: a manifest's regressionSet
    must not hold a prompt this run replays."""
    uri = ctx.spec.evaluation.regression_set
    if uri is None or not replayed or not ctx.spec.evaluation.forgetting:
        return
    replayed_texts = {normalise_for_matching(p.text): p.id for p in replayed}
    for example in _read_regression_set(ctx, model, uri):
        asked = " ".join(m.content for m in example.prompt_messages() if m.role == "user")
        if (prompt_id := replayed_texts.get(normalise_for_matching(asked))) is not None:
            raise ConfigurationError(
                f"spec.evaluation.regressionSet: {example.source} row {example.row} asks the replay prompt "
                f"{prompt_id!r} this run trains on, so it cannot measure forgetting; remove it from the set "
                "or set spec.dataset.replay.enabled: false"
            )


def _replay_prompts(ctx: RunContext, replay: ResolvedReplay) -> list[GeneralPrompt]:
    if not replay.enabled:
        return []
    pool = load_general_prompts().replay
    return choose_replay_prompts(pool, replay.examples, ctx.spec.dataset.split.seed)


def _cpu_training_memory_gib(ctx: RunContext) -> float | None:
    """In a cluster a CPU-only training pod gets spec.resources.memory, whatever the pre-flight pod
    it is estimated in has; on a laptop (kubetune run) the machine's own memory is the limit."""
    if ctx.mode == Mode.LOCAL or ctx.spec.resources.gpus > 0:
        return None
    return quantity_gib(ctx.spec.resources.memory)


def plan(ctx: RunContext, model: BaseModelInfo, data: PreparedDataset) -> tuple[ResolvedTraining, PreflightReport]:
    prompts = load_general_prompts()
    replay = resolve_replay(
        ctx.spec.dataset.replay,
        task_train_examples=len(data.train),
        pool_size=len(prompts.replay),
        objective=ctx.spec.method.objective,
    )
    replayed = _replay_prompts(ctx, replay)
    _refuse_replayed_regression_prompts(ctx, model, replayed)
    count = _token_counter(model)
    replay_lengths = [
        count(Example(messages=tuple(Message(m["role"], m["content"]) for m in p.messages))) + PLANNED_ANSWER_TOKENS
        for p in replayed
    ]
    resolved = resolve_training(
        ctx.spec,
        model.hardware,
        train_examples=len(data.train) + len(replay_lengths),
        # The task's own rows set the sequence length; longer replay rows are truncated to it rather
        # than stretching every packed row (docs/defaults.md, "Sequence length").
        token_lengths=data.token_lengths,
        shape=model.shape,
        replay=replay,
        replay_token_lengths=replay_lengths,
        same_vocabulary=model.teacher_same_vocabulary,
    )
    method = MethodType(resolved.method)
    needs_answers = replay.enabled or (ctx.spec.evaluation.forgetting and not ctx.spec.evaluation.regression_set)
    cached = find_answers(
        _answer_key(model, method, prompts),
        [*prompts.regression, *prompts.replay],
        cache_dir=ctx.environment.cache,
        store=ctx.store,
        output_uri=ctx.spec.output.uri,
    )
    to_generate = len(prompts.regression) + len(prompts.replay) if needs_answers and cached is None else 0
    # Sequence distillation's answers come before training; a pre-flight pod has not generated them.
    objective = resolved.objective
    answering = isinstance(objective, ResolvedDistillObjective) and objective.mode == DistillMode.SEQUENCE
    teacher_answers = len(data.train) if answering and data.teacher_answers is None else 0
    task_tokens = sum(data.token_lengths) * len(data.train) // max(1, sum(data.report.splits.values()))
    train_tokens = task_tokens + sum(min(length, resolved.hyperparameters.sequence_length) for length in replay_lengths)

    def estimate(candidate: ResolvedTraining, measured: MeasuredSteps | None = None) -> PreflightReport:
        return preflight_estimate(
            candidate,
            model.shape,
            model.hardware,
            train_tokens=train_tokens,
            total_memory_limit_gib=_cpu_training_memory_gib(ctx),
            answers_to_generate=to_generate,
            measured=measured,
            teacher=model.teacher_shape,
            teacher_answers=teacher_answers,
        )

    resolved, report = choose_sharding(ctx.spec, resolved, model.hardware, estimate)
    if ctx.mode == Mode.LOCAL and (report.estimated_minutes or 0) >= TIME_REAL_STEPS_FROM_MINUTES:
        if replayed and cached is not None:
            # The replay rows the run will mix in are known: the cached answers worth replaying.
            kept = answers_worth_replaying(replayed, cached.answers)
            rows, planned = interleave(data.train, as_examples(kept, cached)), []
        else:  # generated after the plan: stand-ins of their planned lengths
            rows, planned = data.train, replay_lengths
        measured = _time_real_steps(model, rows, data.validation, resolved, planned)
        if measured is not None:
            report = estimate(resolved, measured)
    examples = {
        **data.report.splits,
        "replay": len(replay_lengths),
        "trainAfterMixing": len(data.train) + len(replay_lengths),
    }
    report = report.model_copy(update={"examples": examples})
    reports = ctx.workdir / "artifacts" / "reports"
    (reports / "preflight.json").write_text(report.model_dump_json(by_alias=True, exclude_none=True, indent=2))
    (reports / "resolved.json").write_text(resolved.model_dump_json(by_alias=True, exclude_none=True, indent=2))
    return resolved, report


# ``kubetune run`` trains on this machine, so its pre-flight times a few real steps of the plan
# (training/probe.py) when the formulas expect training to take this long or more: the steps cost a
# fresh process and a model load (about 10 s on 2 cores), which a shorter run is not worth. A
# pre-flight pod never runs on the training GPU and keeps the formulas.
TIME_REAL_STEPS_FROM_MINUTES = 1.0


def _time_real_steps(
    model: BaseModelInfo,
    train: list[Example],
    validation: list[Example],
    resolved: ResolvedTraining,
    replay_lengths: list[int],
) -> MeasuredSteps | None:
    from kubetune_trainer.training.probe import probe_steps

    try:
        return probe_steps(
            model.path,
            resolved,
            train,
            validation,
            replay_lengths=replay_lengths,
            device=model.hardware.device,
            bf16=model.hardware.bf16,
            chat_template=model.chat_template,
            teacher_dir=None if model.teacher_model is None else model.teacher_model.path,
        )
    except Exception as err:  # an estimate, not the run: say so and estimate from the formulas
        log.warning("could not time real training steps for the estimate (%s); using the formulas", err)
        return None


def mix_in_replay(ctx: RunContext, model: BaseModelInfo, data: PreparedDataset, resolved: ResolvedTraining) -> None:
    """Add the planned replay rows (the base model's answers, generated now if no cache has them) to the
    training split, spread evenly through it so packed rows mix task and replay."""
    chosen = _replay_prompts(ctx, resolved.replay)
    if not chosen:
        return
    from kubetune_trainer.training.model import load_base

    method = MethodType(resolved.method)

    def load_base_subject() -> BaseSubject:
        return load_base(model.path, method, device=model.hardware.device, bf16=model.hardware.bf16), nullcontext()

    prompts, answers = _general_answers(ctx, model, method, load_base_subject)
    kept = answers_worth_replaying(chosen, answers.answers)
    data.train = interleave(data.train, as_examples(kept, answers))
    data.replay = {
        "examples": len(kept),
        "withheldWrongAnswers": len(chosen) - len(kept),
        "prompts": prompts.version,
        "answers": answers.origin,
    }


def interleave(task: list[Example], replay: list[Example]) -> list[Example]:
    """``replay`` spread evenly through ``task``, both in order: replay row j follows task row
    int((j + 0.5) * len(task) / len(replay))."""
    if not task:
        return list(replay)
    after: dict[int, list[Example]] = {}
    for j, row in enumerate(replay):
        after.setdefault(int((j + 0.5) * len(task) / len(replay)), []).append(row)
    mixed: list[Example] = []
    for i, row in enumerate(task):
        mixed += [row, *after.get(i, [])]
    return mixed


def train(ctx: RunContext, model: BaseModelInfo, data: PreparedDataset, resolved: ResolvedTraining) -> TrainOutcome:
    from kubetune_trainer.training.checkpoints import CheckpointStore, run_identity
    from kubetune_trainer.training.loop import TrainConfig
    from kubetune_trainer.training.loop import train as run_training

    run = run_identity(
        job_uid=str(ctx.job.metadata.get("uid") or ""),
        spec=ctx.spec.to_manifest(),
        data_sha256=data.content_sha256,
        base_model_sha256=model.sha256,
    )

    return run_training(
        TrainConfig(
            model_dir=model.path,
            resolved=resolved,
            train=data.train,
            validation=data.validation,
            output_dir=ctx.workdir / "training",
            checkpoints=CheckpointStore(ctx.store, ctx.checkpoint_uri, run),
            checkpoint_every_steps=ctx.spec.checkpoint.every_steps,
            device=model.hardware.device,
            bf16=model.hardware.bf16,
            chat_template=model.chat_template,
            max_steps=ctx.max_steps,
            on_progress=ctx.reporters.progress,
            on_metrics=ctx.reporters.training_metrics,
            on_checkpoint=ctx.reporters.checkpoint_uploaded,
            ewc=_ewc_plan(ctx, model, data, resolved.hyperparameters.seed),
            teacher_dir=model.teacher_model.path if model.teacher_model is not None else None,
        )
    )


def discard_private_checkpoints(store: ObjectStore, checkpoint_uri: str) -> None:
    """A private run, published and reported: its checkpoints hold the states of the generators that drew
    its rows and its noise, and nothing resumes them any more, so they are deleted (docs/privacy.md).
    A storage failure here does not fail the run: a retried pod would find no pointer and train the same
    data again on fresh noise, a second release; checkpoints left behind are the lesser harm, said loudly."""
    from kubetune_trainer.training.checkpoints import CheckpointStore

    try:
        deleted = CheckpointStore(store, checkpoint_uri).discard()
    except StorageError as err:
        log.warning(
            "private run published, but its checkpoints under %s were not all deleted (%s): they hold the "
            "states of its secret random generators; delete them by hand",
            checkpoint_uri,
            err,
        )
        return
    log.info("private run published: its %d checkpoint(s) under %s deleted", deleted, checkpoint_uri)


def _ewc_plan(ctx: RunContext, model: BaseModelInfo, data: PreparedDataset, seed: int) -> EwcPlan | None:
    """``continual.ewc``: the earlier task is the training rows drawn from the replayed sources, or the
    Fisher the version published."""
    continual = ctx.spec.continual
    if continual is None or continual.ewc is None or model.start is None:
        return None
    replayed = {source.uri for source in model.start.replay}
    earlier = [example for example in data.train if _drawn_from(example.source, replayed)]
    published = published_fisher(model.start, ctx.store, ctx.workdir / "fisher")
    if not earlier and published is None:
        raise ConfigurationError(
            f"spec.continual.ewc: {model.start.version_uri} published no Fisher (continual.publishFisher) and none "
            f"of the training rows of the versions before this job is replayed to estimate it "
            f"(replayFraction {continual.replay_fraction}, {len(replayed)} sources replayed): set replayFraction "
            f"above 0, or continue from a version that trained on data of this job's kind"
        )
    return EwcPlan(
        earlier=earlier,
        new_rows=len(data.train) - len(earlier),
        lambda_=continual.ewc.lambda_,
        seed=seed,
        published=published,
        version=model.start.version_uri,
    )


def publish_fisher(
    ctx: RunContext, model: BaseModelInfo, data: PreparedDataset, resolved: ResolvedTraining, outcome: TrainOutcome
) -> None:
    """``continual.publishFisher``: this task's Fisher, for a job continuing this version (training/ewc.py)."""
    from kubetune_trainer.export.merge import merge_adapter
    from kubetune_trainer.models.continual import FISHER
    from kubetune_trainer.training.ewc import FISHER_FILE
    from kubetune_trainer.training.ewc import publish_fisher as write_fisher

    if ctx.spec.continual is None or not ctx.spec.continual.publish_fisher:
        return
    method = MethodType(resolved.method)
    # The weights a continuing job starts from: what this version publishes, or merges its adapter into.
    if method == MethodType.FULL:
        weights = outcome.trained_dir
    elif (ctx.workdir / "merged").is_dir():
        weights = ctx.workdir / "merged"
    else:
        weights = merge_adapter(model.path, outcome.trained_dir, ctx.workdir / "merged", method=method)
    own = [s.uri for s in ctx.spec.dataset.sources if not s.eval_only]
    own += [s.uri for s in model.start.replay] if model.start else []
    rows = [example for example in data.train if _drawn_from(example.source, set(own))]
    write_fisher(
        weights,
        resolved,
        rows,
        ctx.workdir / "artifacts" / FISHER / FISHER_FILE,
        device=model.hardware.device,
        bf16=model.hardware.bf16,
        chat_template=model.chat_template,
    )


def _drawn_from(row_source: str, uris: set[str]) -> bool:
    """A row's source file is one of ``uris`` or lies under one (a source may name a folder)."""
    return any(row_source == uri or row_source.startswith(uri.rstrip("/") + "/") for uri in uris)


def choose_adapter_strength(
    ctx: RunContext, model: BaseModelInfo, data: PreparedDataset, resolved: ResolvedTraining, outcome: TrainOutcome
) -> None:
    """An adapter: keep it at the strength the manifest set, else at the one the
    validation split chooses (training/strength.py); the evaluation and every artifact use it."""
    from kubetune_trainer.evaluation.gate import primary_metric
    from kubetune_trainer.evaluation.runner import task_metric
    from kubetune_trainer.training.strength import (
        VALIDATION_ROWS,
        StrengthChoice,
        choose_scale,
        publish_scale,
        set_scale,
    )

    if isinstance(resolved, ResolvedAdapterTraining):
        strengths = resolved.lora.strengths
    elif isinstance(resolved, ResolvedAdaLoraTraining):
        strengths = resolved.adalora.strengths
    elif isinstance(resolved, ResolvedIa3Training):
        strengths = resolved.ia3.strengths
    else:
        return
    validation = data.validation[:VALIDATION_ROWS]
    tuned = outcome.model
    if len(strengths) == 1:
        method = ctx.spec.method
        blocks = (method.lora, method.ia3, method.adalora)
        set_by_manifest = any(block is not None and block.scale is not None for block in blocks)
        if set_by_manifest:
            how = "manifest"
        elif ctx.spec.privacy is not None:
            how = "full strength: under spec.privacy the validation rows, outside the accounting, do not choose"
        else:
            how = "full strength: a preference run keeps the whole adapter"
        choice = StrengthChoice(scale=strengths[0], how=how)
    elif not validation:
        choice = StrengthChoice(scale=strengths[0], how="full strength: no validation split to choose on")
    else:
        metric = primary_metric([e.reference() for e in validation])
        tuned.eval()

        def score_at(scale: float) -> float:
            undo = set_scale(tuned, scale)
            try:
                return task_metric(
                    tuned,
                    model.tokenizer,
                    validation,
                    metric,
                    ctx.spec.evaluation,
                    max_length=resolved.hyperparameters.sequence_length,
                    chat_template=model.chat_template,
                )
            finally:
                undo()

        choice = choose_scale(score_at, strengths)
    set_scale(tuned, choice.scale)
    if ctx.is_main_process:  # the one that publishes (every rank chooses, in step: evaluation/sharing.py)
        publish_scale(tuned, outcome.trained_dir, choice.scale)
    outcome.strength = choice
    log.info("adapter strength %.2f (%s) %s", choice.scale, choice.how, choice.scores or "")


def evaluate(
    ctx: RunContext, model: BaseModelInfo, data: PreparedDataset, resolved: ResolvedTraining, outcome: TrainOutcome
) -> tuple[EvaluationReport, ModelUnderTest]:
    from kubetune_trainer.evaluation.runner import ModelUnderTest
    from kubetune_trainer.evaluation.runner import evaluate as run_evaluation
    from kubetune_trainer.training.model import load_base

    method = MethodType(resolved.method)
    base_model = None
    if method == MethodType.FULL:
        base_model = load_base(model.path, method, device=model.hardware.device, bf16=model.hardware.bf16)
    subject = ModelUnderTest(outcome.model, base_model=base_model)
    report = run_evaluation(
        subject,
        model.tokenizer,
        data.test,
        ctx.spec.evaluation,
        regression=load_regression_set(ctx, model, method, subject.as_base()),
        max_length=resolved.hyperparameters.sequence_length,
        chat_template=model.chat_template,
        seed=resolved.hyperparameters.seed,
        base_test_scores=_base_test_scores(ctx, model, method, resolved.hyperparameters.sequence_length),
        # DPO's implicit reward is scaled by its beta; ORPO has no reference, and its rewards are plain log ratios.
        reward_beta=resolved.objective.beta if isinstance(resolved.objective, ResolvedDpoObjective) else 1.0,
    )
    if not ctx.is_main_process:  # it took its share of the scoring (evaluation/sharing.py); rank 0 reports
        return report, subject
    reports = ctx.workdir / "artifacts" / "reports"
    report.write(reports)
    plot_loss_curve(outcome.history, reports / "loss_curve.png")
    (reports / "training_history.json").write_text(json.dumps(outcome.history, indent=2))
    return report, subject


def _base_test_scores(ctx: RunContext, model: BaseModelInfo, method: MethodType, max_length: int) -> BaseTestScores:
    """The base side of the test-split comparison, kept by what decides it (evaluation/base_cache.py)."""
    import torch
    import transformers

    from kubetune_trainer.evaluation.base_cache import FOLDER, BaseScoresKey, cached_base_scores, examples_sha256

    def scores(
        examples: Sequence[Example], max_new_tokens: int | None, compute: Callable[[], SideScores]
    ) -> SideScores:
        key = BaseScoresKey(
            model_sha256=model.sha256,
            weights="nf4" if method == MethodType.QLORA else "full",
            precision="bf16" if model.hardware.bf16 else "fp32",
            device=torch.device(model.hardware.device).type,
            libraries=f"torch {torch.__version__}, transformers {transformers.__version__}",
            chat_template=model.chat_template,
            max_length=max_length,
            max_new_tokens=max_new_tokens,
            examples_sha256=examples_sha256(examples),
        )
        cache = RowCache(FOLDER, ctx.environment.cache, ctx.store, ctx.spec.output.uri)
        found, origin = cached_base_scores(key, len(examples), compute, cache)
        log.info("base model's scores on the test split: %s (%s)", origin, key.file)
        return found

    return scores


def reference_profile(
    ctx: RunContext, model: BaseModelInfo, data: PreparedDataset, resolved: ResolvedTraining, subject: ModelUnderTest
) -> None:
    """What the task's data looked like, for drift checks of production windows against this version
    (``drift.profile``): published under ``reports/drift-profile/``."""
    from kubetune_trainer.drift.profile import build_profile
    from kubetune_trainer.evaluation.gate import is_label_like
    from kubetune_trainer.evaluation.metrics import as_label
    from kubetune_trainer.general_answers import is_general_row

    task_rows = [e for e in data.train if not is_general_row(e)]  # replay rows are not the task's data
    answers = [e.reference() for e in task_rows]
    labels = sorted({as_label(a) for a in answers}) if is_label_like(answers) else None
    seed = resolved.hyperparameters.seed
    base, base_context = subject.as_base()
    tuned, tuned_context = subject.as_tuned()
    with base_context:
        profile = build_profile(
            base, model.tokenizer, train=task_rows, labels=labels, base_model_sha256=model.sha256, seed=seed
        )
    with tuned_context:
        profile = profile.with_losses(tuned, model.tokenizer, data.test, seed=seed)
    profile.save(ctx.workdir / "artifacts" / "reports" / "drift-profile")


def export(ctx: RunContext, model: BaseModelInfo, resolved: ResolvedTraining, outcome: TrainOutcome) -> None:
    from kubetune_trainer.export.merge import copy_serving_files, merge_adapter

    formats = set(resolve_formats(ctx.spec))
    artifacts = ctx.workdir / "artifacts"
    method = MethodType(resolved.method)
    if method == MethodType.FULL:
        merged = outcome.trained_dir
        copy_serving_files(model.path, merged)
    else:
        if ArtifactFormat.ADAPTER in formats:
            shutil.copytree(outcome.trained_dir, artifacts / "adapter", dirs_exist_ok=True)
        if formats.isdisjoint(MERGED_FORMATS):
            return  # nothing made from merged weights (a prefix adapter has none)
        merged = merge_adapter(model.path, outcome.trained_dir, ctx.workdir / "merged", method=method)
    if ArtifactFormat.MERGED in formats:
        shutil.copytree(merged, artifacts / "merged", dirs_exist_ok=True)
    if ArtifactFormat.BNB_4BIT in formats:
        from kubetune_trainer.export.bnb4 import export_bnb_4bit

        export_bnb_4bit(merged, artifacts / "bnb-4bit")
    quants: tuple[tuple[ArtifactFormat, Literal["Q8_0", "Q4_0"]], ...] = (
        (ArtifactFormat.GGUF_Q8_0, "Q8_0"),
        (ArtifactFormat.GGUF_Q4_0, "Q4_0"),
    )
    for fmt, quant in quants:
        if fmt in formats:
            from kubetune_trainer.export.gguf import export_gguf

            export_gguf(merged, artifacts / "gguf" / f"{ctx.name}-{quant.lower()}.gguf", quant=quant)


def _distill_lineage(model: BaseModelInfo, data: PreparedDataset, resolved: ResolvedTraining) -> dict[str, Any] | None:
    """The teacher (uri, digest, the version it is where it is one) and how it taught."""
    objective = resolved.objective
    if model.teacher_model is None or not isinstance(objective, ResolvedDistillObjective):
        return None
    return {
        "teacher": model.teacher_model.lineage(),
        "mode": str(objective.mode),
        "temperature": objective.temperature,
        "alpha": objective.alpha,
        **({"teacherAnswers": data.teacher_answers} if data.teacher_answers else {}),
    }


def publish(
    ctx: RunContext,
    model: BaseModelInfo,
    data: PreparedDataset,
    resolved: ResolvedTraining,
    outcome: TrainOutcome,
    evaluation: EvaluationReport,
) -> PublishedRun:
    run = RunRecord(
        job=ctx.job.metadata,
        name=ctx.name,
        spec=ctx.spec.to_manifest(),
        base_model_uri=model.uri,
        base_model_sha256=model.sha256,
        continual={**model.start.lineage, **({"ewc": outcome.ewc} if outcome.ewc else {})} if model.start else None,
        distill=_distill_lineage(model, data, resolved),
        data=data,
        resolved=resolved,
        outcome=outcome,
        evaluation=evaluation,
    )
    return publish_run(ctx.workdir / "artifacts", ctx.spec.output.uri, ctx.store, lineage_manifest(run))


def push_to_registry(ctx: RunContext, published: PublishedRun) -> OciPushStatus:
    """spec.output.oci: the version just published, pushed to its registry (kubetune_trainer.ocipush).
    The registry's URL is the one the operator set (the platform's listing decides http or https);
    ``kubetune run`` on a laptop reaches it over https, or at KUBETUNE_OCI_REGISTRY."""
    from kubetune_trainer.ocipush import push_version

    oci = ctx.spec.output.oci
    assert oci is not None
    return push_version(
        ctx.workdir / "artifacts",
        ctx.store.read_bytes(published.manifest_uri),
        version=published.version,
        manifest_uri=published.manifest_uri,
        repository=oci.repository,
        registry_url=ctx.environment.oci_registry,
        in_pod=ctx.environment.job_name is not None,
        auth_file=ctx.environment.oci_auth_file,
    )
