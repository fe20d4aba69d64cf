"""FineTuneJob API, version v1alpha1: the one source of truth for the spec.

The operator validates manifests with these models, the trainer reads its job from them,
and ``kubetune.api.crd`` generates the CRD's OpenAPI schema from them, so the three cannot
drift apart (``tests/api/test_crd_sync.py`` fails if ``crds/`` is stale).

Field names are camelCase on the wire (Kubernetes convention) and snake_case in Python.
A hyperparameter left out (``None``) means ``auto``: the trainer's plan resolves it, once, and writes
the value it used back to ``status.resolved`` (:data:`ResolvedTraining`), whose fields are all
required: after the plan nobody defaults a value again.
"""

from __future__ import annotations

import re
from enum import StrEnum
from typing import Annotated, Any, ClassVar, Literal, TypeAlias

from pydantic import AfterValidator, BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel

from kubetune.api.quantity import parse_quantity
from kubetune.api.rules import Rule, rules_schema

GROUP = "kubetune.dev"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
KIND = "FineTuneJob"
PLURAL = "finetunejobs"
SINGULAR = "finetunejob"
SHORT_NAMES = ["ftj"]

BUILTIN_MODELS = ("smollm2-135m-instruct",)  # shipped with the trainer image
BUILTIN_MODEL_URI = f"builtin://{BUILTIN_MODELS[0]}"
DEFAULT_TRAINER_IMAGE = "ghcr.io/kubetune/trainer:0.1.0"

# URIs the trainer understands; the operator and `kubetune run` map them the same way. A path
# segment is never "..", and there is no query string or fragment: a presigned URL would put a
# credential into the manifest, and ".." would climb out of the prefix the platform granted.
# Written for RE2 (the API server) and Rust regex (pydantic) alike: no lookaround.
_PATH_SEGMENT = r"([^/?#.][^/?#]*|\.([^/?#.][^/?#]*)?|\.\.[^/?#]+)"
_PATH = rf"(/{_PATH_SEGMENT}?)*"
_S3_URI = rf"s3://[a-z0-9][a-z0-9.\-]{{1,61}}[a-z0-9]{_PATH}"
# Cloud Storage bucket names: 3 to 63 lower-case letters, digits, '-', '_' and '.', a letter or digit at
# each end (the dotted, domain-named buckets of up to 222 characters are not accepted).
_GCS_URI = rf"gs://[a-z0-9][a-z0-9._\-]{{1,61}}[a-z0-9]{_PATH}"
# Azure Blob Storage: az://<storage account>/<container>/<path>. An account is 3 to 24 lower-case letters
# and digits; a container 3 to 63 lower-case letters, digits and '-', a letter or digit at each end.
_AZURE_URI = rf"az://[a-z0-9]{{3,24}}/[a-z0-9][a-z0-9\-]{{1,61}}[a-z0-9]{_PATH}"
_FILE_URI = rf"file://(/{_PATH_SEGMENT}?)+"
# A Hugging Face Hub repository, as the Hub names them (owner/name), at an optional revision: a
# commit, tag or branch without '/' (a '/' would be read as the file path of a dataset URI). Read
# only: nothing is ever published to hf:// (kubetune_trainer.hub).
_HUB_NAME = r"[A-Za-z0-9_]([A-Za-z0-9_.\-]{0,94}[A-Za-z0-9_])?"
_HUB_REPO = rf"{_HUB_NAME}/{_HUB_NAME}(@[A-Za-z0-9_.\-]{{1,128}})?"
_HUB_MODEL_URI = rf"hf://{_HUB_REPO}"
_HUB_DATASET_URI = rf"hf://datasets/{_HUB_REPO}{_PATH}"
MODEL_URI_PATTERN = (
    rf"^({_S3_URI}|{_GCS_URI}|{_AZURE_URI}|{_FILE_URI}|{_HUB_MODEL_URI}|builtin://({'|'.join(BUILTIN_MODELS)}))$"
)
DATA_URI_PATTERN = rf"^({_S3_URI}|{_GCS_URI}|{_AZURE_URI}|{_FILE_URI})$"
# Where training data may come from: storage, or a dataset repository of the Hub.
SOURCE_URI_PATTERN = rf"^({_S3_URI}|{_GCS_URI}|{_AZURE_URI}|{_FILE_URI}|{_HUB_DATASET_URI})$"
MAX_URI_LENGTH = 2048
QUANTITY_PATTERN = r"^[0-9]+(\.[0-9]+)?(Ki|Mi|Gi|Ti|Pi|k|M|G|T|P)?$"
# A quantity greater than zero: a non-zero digit before the point, or after it.
POSITIVE_QUANTITY_PATTERN = r"^([0-9]*[1-9][0-9]*(\.[0-9]+)?|[0-9]+\.[0-9]*[1-9][0-9]*)(Ki|Mi|Gi|Ti|Pi|k|M|G|T|P)?$"
POSITIVE_CPU_PATTERN = POSITIVE_QUANTITY_PATTERN.replace("Ki|", "m|Ki|")
# An S3 endpoint is scheme, host and port only: credentials go in s3.credentialsSecret, never in the URL.
S3_ENDPOINT_PATTERN = r"^https?://([A-Za-z0-9]([A-Za-z0-9\-]*[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9\-]*[A-Za-z0-9])?)*|\[[0-9A-Fa-f:.]+\])(:[0-9]{1,5})?/?$"
S3_REGION_PATTERN = r"^[a-z0-9]([a-z0-9\-]{0,62}[a-z0-9])?$"
# Kubernetes' own name rules (k8s.io/apimachinery validation): label keys and values, resource names.
LABEL_VALUE_PATTERN = r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$"
QUALIFIED_NAME_PATTERN = r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$"
# An extended resource: a domain-prefixed name outside kubernetes.io (cpu, memory, hugepages-* are not).
EXTENDED_RESOURCE_PATTERN = (
    r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)+/[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$"
)
_REGISTRY_HOST = (
    r"([A-Za-z0-9]([A-Za-z0-9\-]*[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9\-]*[A-Za-z0-9])?)*|\[[0-9A-Fa-f:]+\])(:[0-9]+)?"
)
_REPOSITORY_PATH = r"[a-z0-9]+(([._]|__|-+)[a-z0-9]+)*(/[a-z0-9]+(([._]|__|-+)[a-z0-9]+)*)*"
# An image reference (distribution/reference): [registry[:port]/]path[:tag][@digest].
IMAGE_PATTERN = (
    rf"^({_REGISTRY_HOST}/)?{_REPOSITORY_PATH}(:[A-Za-z0-9_][A-Za-z0-9_.\-]{{0,127}})?(@sha256:[a-f0-9]{{64}})?$"
)
# An OCI repository to push versions to: registry[:port]/path, the registry always named, no tag or
# digest (each version is tagged with its own name).
OCI_REPOSITORY_PATTERN = rf"^{_REGISTRY_HOST}/{_REPOSITORY_PATH}$"
DATA_KEY_PATTERN = r"^[-._a-zA-Z0-9]+$"
MAX_CHAT_TEMPLATE_BYTES = 64 * 1024
DNS_LABEL_PATTERN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
DNS_SUBDOMAIN_PATTERN = r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$"


class ApiModel(BaseModel):
    """Base for every API object: camelCase aliases, unknown fields rejected."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        # Internal code builds models by field name; manifests are parsed by alias only
        # (kubetune.api.manifest passes by_name=False), as the API server knows only camelCase.
        validate_by_name=True,
        validate_by_alias=True,
        extra="forbid",
        use_enum_values=True,
        validate_default=True,
    )

    def to_manifest(self) -> dict[str, Any]:
        """The object as it is written in YAML: camelCase keys, unset fields left out."""
        return self.model_dump(by_alias=True, exclude_none=True, mode="json")


# --------------------------------------------------------------------------- enums


class DatasetFormat(StrEnum):
    AUTO = "auto"
    ALPACA = "alpaca"
    CHAT = "chat"
    PROMPT_COMPLETION = "prompt-completion"
    TEXT = "text"
    # Never detected: named on a source of a DriftMonitor's request logs (only confirmed rows train).
    REQUEST_LOG = "request-log"
    # A prompt with a chosen and a rejected answer: what method.objective dpo and orpo train on.
    PREFERENCE = "preference"


class InvalidRowPolicy(StrEnum):
    REJECT = "reject"
    DROP = "drop"


class BalanceMethod(StrEnum):
    DOWNSAMPLE = "downsample"  # fewer rows of the frequent labels
    UPSAMPLE = "upsample"  # the rare labels' rows repeated


class PersonalDataPolicy(StrEnum):
    """What curation does with personal data in a source's rows (kubetune_trainer.data.pii)."""

    REDACT = "redact"  # each identifier replaced by its kind, [EMAIL], [PHONE], ...
    DROP = "drop"  # rows holding any are left out
    REPORT = "report"  # counted in the curation report, trained on as they are
    OFF = "off"  # not looked for


class MethodType(StrEnum):
    AUTO = "auto"
    QLORA = "qlora"
    LORA = "lora"
    FULL = "full"


class Sharding(StrEnum):
    """How the model's training state is spread over a job's processes."""

    AUTO = "auto"  # none while it fits one process's memory, else fsdp where fsdp is supported
    NONE = "none"  # DDP: every process holds the whole model, its gradients and optimizer state
    FSDP = "fsdp"  # fully sharded: each process holds 1/N of them and gathers a layer at a time


class AdapterType(StrEnum):
    LORA = "lora"
    DORA = "dora"
    ADALORA = "adalora"
    IA3 = "ia3"
    PREFIX = "prefix"
    BOTTLENECK = "bottleneck"
    OSF = "osf"


class BottleneckPlacement(StrEnum):
    MLP = "mlp"
    ATTENTION_AND_MLP = "attention-and-mlp"


# The adapters resources.sharding fsdp trains (peft's LoRA layers shard like the linear layers they wrap).
FSDP_ADAPTERS = (AdapterType.LORA, AdapterType.DORA)


# The adapters that are no change of the weights: they cannot be merged into them.
UNMERGEABLE_ADAPTERS = (AdapterType.PREFIX, AdapterType.BOTTLENECK)


class Objective(StrEnum):
    SFT = "sft"
    DPO = "dpo"
    ORPO = "orpo"
    DISTILL = "distill"


# The objectives that learn from pairs of a chosen and a rejected answer.
PREFERENCE_OBJECTIVES = (Objective.DPO, Objective.ORPO)


class DpoLoss(StrEnum):
    SIGMOID = "sigmoid"
    IPO = "ipo"


class DistillMode(StrEnum):
    AUTO = "auto"
    LOGITS = "logits"
    SEQUENCE = "sequence"


class LoraScaling(StrEnum):
    STANDARD = "standard"
    RSLORA = "rslora"


class LrScheduler(StrEnum):
    COSINE = "cosine"
    LINEAR = "linear"
    CONSTANT = "constant"


class Metric(StrEnum):
    PERPLEXITY = "perplexity"
    ROUGE_L = "rougeL"
    BLEU = "bleu"
    EXACT_MATCH = "exactMatch"
    ACCURACY = "accuracy"
    F1 = "f1"


class ArtifactFormat(StrEnum):
    ADAPTER = "adapter"
    MERGED = "merged"
    BNB_4BIT = "bnb-4bit"
    GGUF_Q8_0 = "gguf-q8_0"
    GGUF_Q4_0 = "gguf-q4_0"


# The exports made from the adapter merged into the base's weights; an adapter that is no weight change
# (a prefix) has none of them.
MERGED_FORMATS = (ArtifactFormat.MERGED, ArtifactFormat.BNB_4BIT, ArtifactFormat.GGUF_Q8_0, ArtifactFormat.GGUF_Q4_0)


class Phase(StrEnum):
    PENDING = "Pending"
    VALIDATING = "Validating"
    QUEUED = "Queued"
    RUNNING = "Running"
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"
    SUSPENDED = "Suspended"


TERMINAL_PHASES = frozenset({Phase.SUCCEEDED.value, Phase.FAILED.value})

# --------------------------------------------------------------------------- spec


class BaseModelSpec(ApiModel):
    uri: Annotated[
        str,
        Field(
            pattern=MODEL_URI_PATTERN,
            max_length=MAX_URI_LENGTH,
            description=(
                "Where the base model's weights are: s3://bucket/prefix (a Hugging Face folder), "
                "file:///path inside the pod (a mounted volume or the image), hf://owner/name[@revision] "
                "(a Hugging Face Hub repository or the platform's mirror of it; the revision a commit, tag or "
                "branch, resolved to its commit in the lineage), or "
                f"{BUILTIN_MODEL_URI} (SmolLM2-135M-Instruct shipped with the trainer)."
            ),
        ),
    ] = BUILTIN_MODEL_URI
    chat_template: Annotated[
        str | None,
        Field(
            max_length=MAX_CHAT_TEMPLATE_BYTES,
            description="Jinja chat template overriding the base model's own, for chat data (at most 65536 characters).",
        ),
    ] = None


# The columns the dataset formats read (kubetune_trainer.data.formats); a column mapping renames to these.
CANONICAL_COLUMNS = (
    "messages",
    "conversations",
    "system",
    "instruction",
    "input",
    "output",
    "prompt",
    "completion",
    "text",
)


COLUMN_MAPPING_KEYS = Rule(
    f"self.all(k, k in {list(CANONICAL_COLUMNS)!r})",
    "keys must be canonical column names: " + ", ".join(CANONICAL_COLUMNS),
    "",
    lambda mapping: set(mapping) <= set(CANONICAL_COLUMNS),
)


def unique_values(values: list[Any] | None) -> list[Any] | None:
    seen: set[Any] = set()
    for value in values or []:
        if value in seen:
            raise ValueError(f"duplicate value {value!r}")
        seen.add(value)
    return values


LABEL_KEYS = Rule(
    f"self.all(k, size(k) <= 316 && k.matches(r'{QUALIFIED_NAME_PATTERN}'))",
    "keys must be label keys: [prefix/]name, name at most 63 characters of [-A-Za-z0-9_.]",
    "",
    lambda labels: all(len(key) <= 316 and re.match(QUALIFIED_NAME_PATTERN, key) for key in labels),
)
EXTENDED_RESOURCE = Rule(
    "!self.contains('kubernetes.io/') && !self.startsWith('requests.')",
    "must be an extended resource outside the kubernetes.io domain",
    "",
    lambda name: "kubernetes.io/" not in name and not name.startswith("requests."),
)


SET_LIST = {"x-kubernetes-list-type": "set"}


def _at_most(limit: str) -> Rule:
    """The upper bound of a quantity field (CEL's quantity library on the API server)."""
    return Rule(
        f"!isQuantity(self) || !quantity(self).isGreaterThan(quantity('{limit}'))",
        f"must be at most {limit}",
        "",
        lambda value: parse_quantity(value) <= parse_quantity(limit),
    )


_SIZE = Field(pattern=POSITIVE_QUANTITY_PATTERN, max_length=32)
# Upper bounds: far above any real node, low enough that a typo (16Ti for 16Gi) is caught at the field.
CpuQuantity: TypeAlias = Annotated[
    str, Field(pattern=POSITIVE_CPU_PATTERN, max_length=32), *_at_most("1024").annotations()
]
MemoryQuantity: TypeAlias = Annotated[str, _SIZE, *_at_most("16Ti").annotations()]
GpuMemoryQuantity: TypeAlias = Annotated[str, _SIZE, *_at_most("1Ti").annotations()]
ScratchQuantity: TypeAlias = Annotated[str, _SIZE, *_at_most("100Ti").annotations()]
ShmQuantity: TypeAlias = Annotated[str, _SIZE, *_at_most("1Ti").annotations()]


class DatasetSource(ApiModel):
    rules: ClassVar[tuple[Rule, ...]] = (
        Rule(
            "!(self.trainOnly && self.evalOnly)",
            "a source is trainOnly (never evaluated on) or evalOnly (never trained on), not both",
            ".evalOnly",
            lambda s: not (s.train_only and s.eval_only),
        ),
        Rule(
            "!self.evalOnly || self.weight == 1.0",
            "weight mixes training data; an evalOnly source is never trained on",
            ".weight",
            lambda s: not s.eval_only or s.weight == 1.0,
        ),
    )
    model_config = ConfigDict(json_schema_extra=rules_schema(rules))

    uri: Annotated[
        str,
        Field(
            pattern=SOURCE_URI_PATTERN,
            max_length=MAX_URI_LENGTH,
            description=(
                "A file or prefix: s3://bucket/key(.jsonl|.json|.csv|.parquet) or a prefix ending "
                "in '/', file:///path, or hf://datasets/owner/name[@revision][/path] (a dataset repository "
                "of the Hugging Face Hub: the whole repository, or a file or folder in it)."
            ),
        ),
    ]
    format: Annotated[
        DatasetFormat,
        Field(
            description=(
                "Row format; auto detects it from the columns. request-log (never detected): production requests "
                "as serving stacks log them (messages, prompt or text), of which only the rows a person labelled "
                "(a label or feedback field, the confirmed answer) are trained on; the others are counted as "
                "dropped (unlabelled_request). preference: a prompt with a chosen and a rejected answer "
                "({prompt, chosen, rejected} with strings or message lists; {chosen, rejected} conversations "
                "sharing their prompt; Human:/Assistant: text), detected by auto from chosen and rejected columns."
            )
        ),
    ] = DatasetFormat.AUTO
    weight: Annotated[
        float,
        Field(
            gt=0,
            le=100,
            description=(
                "Relative weight when several sources are mixed: a source's examples are "
                "sampled in proportion (1.0 = as is, 2.0 = repeated twice, 0.5 = half)."
            ),
        ),
    ] = 1.0
    train_only: Annotated[
        bool,
        Field(
            description=(
                "Use every example of this source for training and none for validation/test, e.g. "
                "replay data mixed in to limit forgetting, which is not part of the task being evaluated."
            )
        ),
    ] = False
    eval_only: Annotated[
        bool,
        Field(
            description=(
                "Your own test set: every example of this source is evaluated on and none is trained on. With "
                "evalOnly sources the test split is theirs alone (dataset.split.test does not apply), and any "
                "other row that repeats one of theirs, exactly or as a near-duplicate "
                "(dataset.curation.nearDedup.threshold), is removed from training and validation and counted "
                "in the curation report (test_leakage), whatever the dedup settings."
            )
        ),
    ] = False
    pii: Annotated[
        PersonalDataPolicy | None,
        Field(
            description=(
                "Personal data in this source's rows: redact, drop, report or off; "
                "dataset.curation.pii (redact) when unset."
            )
        ),
    ] = None
    column_mapping: Annotated[
        Annotated[
            dict[str, Annotated[str, Field(min_length=1, max_length=256)]],
            Field(max_length=len(CANONICAL_COLUMNS)),
            *COLUMN_MAPPING_KEYS.annotations(),
        ]
        | None,
        Field(
            description=(
                "Renames dataset columns to the format's names, e.g. {instruction: question, "
                "output: answer}: canonical name -> the dataset's column name. Canonical names: "
                + ", ".join(CANONICAL_COLUMNS)
                + "."
            ),
        ),
    ] = None


class NearDedupSpec(ApiModel):
    enabled: bool = True
    threshold: Annotated[
        float,
        Field(ge=0.5, le=1.0, description="Estimated Jaccard similarity above which two examples are near-duplicates."),
    ] = 0.9


class BalanceSpec(ApiModel):
    max_ratio: Annotated[
        float,
        Field(
            ge=1.0,
            le=1000.0,
            description=(
                "Most rows any label may have, as a multiple of the rarest label's (1 = every label as frequent "
                "as the rarest)."
            ),
        ),
    ]
    by: Annotated[
        BalanceMethod,
        Field(description="downsample (the frequent labels' rows left out) or upsample (the rare labels' repeated)."),
    ] = BalanceMethod.DOWNSAMPLE


class CurationSpec(ApiModel):
    dedup_exact: Annotated[bool, Field(description="Drop exact duplicates after normalising text.")] = True
    near_dedup: NearDedupSpec = Field(default_factory=NearDedupSpec)
    min_tokens: Annotated[int, Field(ge=1, description="Drop examples shorter than this (tokens).")] = 4
    max_tokens: Annotated[
        int | None,
        Field(ge=8, description="Drop examples longer than this (tokens); default: the sequence length."),
    ] = None
    pii: Annotated[
        PersonalDataPolicy,
        Field(
            description=(
                "Personal data in every source's rows (e-mail addresses, phone numbers, card numbers, IBANs, IP "
                "addresses, national IDs): redact (each replaced by its kind, [EMAIL], [PHONE], ...), drop the rows "
                "holding any, report (counted, trained on as they are) or off; a source's own pii overrides it. "
                "Counts per kind are in the curation report."
            )
        ),
    ] = PersonalDataPolicy.REDACT
    balance: Annotated[
        BalanceSpec | None,
        Field(
            description=(
                "For data whose answers are labels (a few short answers, as in classification): keep the most "
                "frequent label within maxRatio times the rarest, before the split, seeded by dataset.split.seed. "
                "Unset: no balancing (the curation report shows the label distribution either way)."
            )
        ),
    ] = None


class SplitSpec(ApiModel):
    validation: Annotated[
        float, Field(ge=0, le=0.5, description="Fraction held out for validation loss and early stopping.")
    ] = 0.1
    test: Annotated[
        float, Field(ge=0, le=0.5, description="Fraction held out for the final base-vs-tuned evaluation.")
    ] = 0.1
    seed: Annotated[
        str,
        Field(
            max_length=64,
            description="Salt of the hash-based split: the same seed gives the same split on every run and retrain.",
        ),
    ] = "kubetune"


class ReplaySpec(ApiModel):
    """Self-distillation replay against forgetting: the base model's answers to the built-in replay prompts."""

    # The replay pool never shares a template or a source with the regression pool forgetting is
    # measured on (kubetune_trainer.general_prompts refuses such a set).

    enabled: Annotated[
        bool, Field(description="Mix in the replay (true, the default); false trains on the task alone.")
    ] = True
    fraction: Annotated[
        float | None,
        Field(
            gt=0,
            le=1,
            description=(
                "Replay rows as a share of the task's training rows, at most the replay pool's size; "
                "auto (chosen from the data size) when unset."
            ),
        ),
    ] = None


class DatasetSpec(ApiModel):
    rules: ClassVar[tuple[Rule, ...]] = (
        Rule(
            "self.sources.exists(s, !s.evalOnly)",
            "every source is evalOnly: at least one must hold data to train on",
            ".sources",
            lambda d: any(not s.eval_only for s in d.sources),
        ),
    )
    model_config = ConfigDict(json_schema_extra=rules_schema(rules))

    sources: Annotated[list[DatasetSource], Field(min_length=1, max_length=MAX_DATASET_SOURCES)]
    replay: ReplaySpec = Field(default_factory=ReplaySpec)
    invalid_rows: Annotated[
        InvalidRowPolicy,
        Field(description="reject: any bad row fails the job; drop: bad rows are dropped and counted in the report."),
    ] = InvalidRowPolicy.REJECT
    split: SplitSpec = Field(default_factory=SplitSpec)
    curation: CurationSpec = Field(default_factory=CurationSpec)
    min_examples: Annotated[
        int,
        Field(
            ge=1,
            le=10_000_000,
            description=(
                "Fewest training examples of the task a run accepts, counted after curation and the split "
                "(trainOnly sources and replay rows do not count); the pre-flight refuses a smaller dataset."
            ),
        ),
    ] = 16


AdapterStrength: TypeAlias = Annotated[
    float | None,
    Field(
        gt=0,
        le=1,
        description=(
            "Strength the trained adapter is evaluated and published at, as a fraction of what training "
            "reached (a smaller weight change keeps more of the base model's general ability). Unset: "
            "the smallest of 0.5, 0.6, ... 1.0 that keeps the full adapter's task metric within two points "
            "on the validation split."
        ),
    ),
]
ModuleNames: TypeAlias = Annotated[
    list[Annotated[str, Field(min_length=1, max_length=128)]] | None,
    Field(min_length=1, max_length=64),
]


class LoraSpec(ApiModel):
    r: Annotated[int | None, Field(ge=1, le=1024, description="LoRA rank; auto when unset.")] = None
    alpha: Annotated[int | None, Field(ge=1, le=4096, description="LoRA alpha; auto (2 x rank) when unset.")] = None
    dropout: Annotated[float | None, Field(ge=0, le=0.9)] = None
    target_modules: Annotated[
        list[Annotated[str, Field(min_length=1, max_length=128)]] | None,
        Field(
            min_length=1,
            max_length=64,
            description="Module names to adapt, or ['all-linear']; auto when unset (an empty list is refused).",
        ),
    ] = None
    scale: AdapterStrength = None
    scaling: Annotated[
        LoraScaling | None,
        Field(
            description=(
                "How the update is scaled: standard is alpha / r; rslora is alpha / sqrt(r) (rank-stabilised "
                "LoRA), which keeps the update's size from shrinking as r grows: pick it for r of 64 and "
                "more. Unset: standard."
            ),
        ),
    ] = None


class Ia3Spec(ApiModel):
    """IA3 (Liu et al. 2022): learned vectors that rescale keys, values and the MLP's inner activations."""

    rules: ClassVar[tuple[Rule, ...]] = (
        Rule(
            "!has(self.feedforwardModules) || (has(self.targetModules) && (self.targetModules == ['all-linear'] "
            "|| self.feedforwardModules.all(m, m in self.targetModules)))",
            "feedforwardModules must be named in targetModules too (or targetModules be ['all-linear'])",
            ".feedforwardModules",
            lambda s: (
                s.feedforward_modules is None
                or (
                    s.target_modules is not None
                    and (s.target_modules == ["all-linear"] or set(s.feedforward_modules) <= set(s.target_modules))
                )
            ),
        ),
    )
    model_config = ConfigDict(json_schema_extra=rules_schema(rules))

    target_modules: Annotated[
        ModuleNames,
        Field(description="Modules whose output (or, for feedforwardModules, input) is rescaled; auto when unset."),
    ] = None
    feedforward_modules: Annotated[
        ModuleNames,
        Field(
            description="Those of targetModules rescaled at their input (the MLP's down projection); auto when unset."
        ),
    ] = None
    scale: AdapterStrength = None


class AdaLoraSpec(ApiModel):
    """AdaLoRA (Zhang et al. 2023): a LoRA in SVD form whose rank budget moves, during training, to the
    weights where it matters; unimportant singular values are pruned on a schedule."""

    rules: ClassVar[tuple[Rule, ...]] = (
        Rule(
            "!has(self.targetRank) || !has(self.initialRank) || self.targetRank <= self.initialRank",
            "targetRank is the average rank left after pruning: at most initialRank",
            ".targetRank",
            lambda s: s.target_rank is None or s.initial_rank is None or s.target_rank <= s.initial_rank,
        ),
    )
    model_config = ConfigDict(json_schema_extra=rules_schema(rules))

    initial_rank: Annotated[
        int | None,
        Field(ge=1, le=1024, description="Rank of every adapted weight before pruning. Unset: 1.5 x targetRank."),
    ] = None
    target_rank: Annotated[
        int | None,
        Field(
            ge=1,
            le=1024,
            description="Average rank per adapted weight once pruned (the budget). Unset: 8, LoRA's default rank.",
        ),
    ] = None
    alpha: Annotated[
        int | None, Field(ge=1, le=4096, description="Scaling numerator over initialRank. Unset: 2 x initialRank.")
    ] = None
    dropout: Annotated[float | None, Field(ge=0, le=0.9)] = None
    target_modules: Annotated[
        ModuleNames, Field(description="Modules to adapt, or ['all-linear']. Unset: all-linear.")
    ] = None
    scale: AdapterStrength = None


class PrefixSpec(ApiModel):
    """Prefix tuning (Li and Liang 2021): trained key and value vectors that every layer's attention sees
    before the input, as if a prompt of virtual tokens came first; the base model's weights are untouched."""

    virtual_tokens: Annotated[
        int | None,
        Field(
            ge=1,
            le=512,
            description="Positions of the prefix in every layer; they take context from the sequence. Unset: 20.",
        ),
    ] = None


class BottleneckSpec(ApiModel):
    """Bottleneck adapters (Houlsby et al. 2019): a small two-layer network with a non-linearity after a
    sub-layer's output, added back to it; the base model's weights are untouched."""

    size: Annotated[
        int | None,
        Field(ge=1, le=16384, description="Width of the bottleneck. Unset: the model's hidden size / 16 (at least 8)."),
    ] = None
    placement: Annotated[
        BottleneckPlacement | None,
        Field(
            description=(
                "mlp: one adapter after each layer's MLP (Pfeiffer et al. 2021); attention-and-mlp: also one after "
                "the attention output (Houlsby et al. 2019), twice the parameters. Unset: mlp."
            )
        ),
    ] = None


class OsfSpec(ApiModel):
    """Orthogonal subspace fine-tuning (Nayak et al. 2025, peft's ``osf``): each adapted weight is split by
    its singular value decomposition; the directions of its largest singular values are frozen (what the
    model already does) and the others are trained, with gradients kept orthogonal to the frozen ones. A
    continual-learning method: a model tuned again this way keeps more of what it learned before."""

    preserved_fraction: Annotated[
        float | None,
        Field(
            gt=0,
            lt=1,
            description=(
                "Fraction of each weight's singular directions (of its smaller dimension) frozen, from the "
                "largest singular value down; the rest are trained, so a lower value trains more. Unset: 0.5."
            ),
        ),
    ] = None
    target_modules: Annotated[
        ModuleNames,
        Field(description="Module names to adapt, or ['all-linear']; unset: every projection of each layer."),
    ] = None


class DpoSpec(ApiModel):
    """Direct preference optimisation (Rafailov et al. 2023) against the base model as the reference."""

    beta: Annotated[
        float | None,
        Field(
            gt=0,
            le=10,
            description=(
                "How far from the reference the model may move to prefer the chosen answers: smaller moves "
                "further. Unset: 0.5 (measured on the preference example: at the paper's 0.1 the model forgot past "
                "the gate's limit; docs/methods.md)."
            ),
        ),
    ] = None
    loss: Annotated[
        DpoLoss | None,
        Field(
            description=(
                "sigmoid: the DPO paper's loss; ipo (Azar et al. 2023): a squared loss on the per-token log "
                "ratio that does not push the margin without bound, for pairs whose preference is noisy or "
                "near-deterministic. Unset: sigmoid."
            )
        ),
    ] = None


class OrpoSpec(ApiModel):
    """Odds-ratio preference optimisation (Hong et al. 2024): supervised tuning on the chosen answers plus
    a penalty on the rejected answers' odds; needs no reference model."""

    beta: Annotated[
        float | None,
        Field(gt=0, le=10, description="Weight of the odds-ratio term (the paper's lambda). Unset: 0.1 (TRL's)."),
    ] = None


class DistillSpec(ApiModel):
    """Knowledge distillation (Hinton et al. 2015): the model trained (the student, spec.baseModel) learns
    from a teacher's predictions as well as the dataset's answers."""

    teacher: Annotated[
        str,
        Field(
            pattern=MODEL_URI_PATTERN,
            max_length=MAX_URI_LENGTH,
            description=(
                "The teacher: a model folder (s3://bucket/prefix or file:///path, a Hugging Face folder), "
                f"{BUILTIN_MODEL_URI}, or a version this platform published, <output.uri>/<version> (its "
                "merged weights, or its adapter merged into its base, checked against its manifest as for "
                "continual.from). Loaded frozen; its digest is recorded in the lineage."
            ),
        ),
    ]
    temperature: Annotated[
        float | None,
        Field(
            gt=0,
            le=20,
            description=(
                "Logit distillation: both distributions are softened at this temperature before the KL term, "
                "which is scaled by its square. Unset: 2.0."
            ),
        ),
    ] = None
    alpha: Annotated[
        float | None,
        Field(
            ge=0,
            le=1,
            description=(
                "Logit distillation: the KL term's weight; the dataset answers' cross-entropy gets 1 - alpha. "
                "Unset: 0.5."
            ),
        ),
    ] = None
    mode: Annotated[
        DistillMode | None,
        Field(
            description=(
                "logits: the student matches the teacher's token distributions on the dataset's answers (the "
                "tokenizers must share their vocabulary); sequence: the teacher answers the training prompts "
                "and the student is tuned on those answers (any tokenizers). Unset (auto): logits when the "
                "teacher's and student's tokenizers have the same vocabulary, else sequence."
            )
        ),
    ] = None


class MethodSpec(ApiModel):
    rules: ClassVar[tuple[Rule, ...]] = (
        Rule(
            "!has(self.distill) || (has(self.objective) && self.objective == 'distill')",
            "method.distill configures the distill objective: set method.objective: distill",
            ".distill",
            lambda m: m.distill is None or m.objective == Objective.DISTILL,
        ),
        Rule(
            "!has(self.objective) || self.objective != 'distill' || has(self.distill)",
            "method.objective distill learns from a teacher: set method.distill.teacher",
            ".distill",
            lambda m: m.objective != Objective.DISTILL or m.distill is not None,
        ),
        Rule(
            "!has(self.dpo) || (has(self.objective) && self.objective == 'dpo')",
            "method.dpo configures the dpo objective: set method.objective: dpo",
            ".dpo",
            lambda m: m.dpo is None or m.objective == Objective.DPO,
        ),
        Rule(
            "!has(self.orpo) || (has(self.objective) && self.objective == 'orpo')",
            "method.orpo configures the orpo objective: set method.objective: orpo",
            ".orpo",
            lambda m: m.orpo is None or m.objective == Objective.ORPO,
        ),
        Rule(
            "!has(self.adalora) || (has(self.adapter) && self.adapter == 'adalora')",
            "method.adalora configures an adalora adapter: set method.adapter: adalora",
            ".adalora",
            lambda m: m.adalora is None or m.adapter == AdapterType.ADALORA,
        ),
        Rule(
            "!has(self.bottleneck) || (has(self.adapter) && self.adapter == 'bottleneck')",
            "method.bottleneck configures a bottleneck adapter: set method.adapter: bottleneck",
            ".bottleneck",
            lambda m: m.bottleneck is None or m.adapter == AdapterType.BOTTLENECK,
        ),
        Rule(
            "!has(self.prefix) || (has(self.adapter) && self.adapter == 'prefix')",
            "method.prefix configures a prefix adapter: set method.adapter: prefix",
            ".prefix",
            lambda m: m.prefix is None or m.adapter == AdapterType.PREFIX,
        ),
        Rule(
            "!has(self.osf) || (has(self.adapter) && self.adapter == 'osf')",
            "method.osf configures an osf adapter: set method.adapter: osf",
            ".osf",
            lambda m: m.osf is None or m.adapter == AdapterType.OSF,
        ),
        Rule(
            "!has(self.adapter) || self.adapter != 'osf' || self.type != 'qlora'",
            "an osf adapter decomposes the 16-bit weights it trains: it runs on method.type lora (or auto), not "
            "on qlora's 4-bit base",
            ".type",
            lambda m: m.adapter != AdapterType.OSF or m.type != MethodType.QLORA,
        ),
        Rule(
            "!has(self.ia3) || (has(self.adapter) && self.adapter == 'ia3')",
            "method.ia3 configures an ia3 adapter: set method.adapter: ia3",
            ".ia3",
            lambda m: m.ia3 is None or m.adapter == AdapterType.IA3,
        ),
        Rule(
            "!has(self.adapter) || !(self.adapter in ['ia3', 'adalora', 'prefix', 'bottleneck', 'osf']) "
            "|| !(has(self.lora.r) || has(self.lora.alpha) || has(self.lora.dropout) || has(self.lora.targetModules) "
            "|| has(self.lora.scale) || has(self.lora.scaling))",
            "method.lora configures lora and dora adapters; the others are configured by their own block "
            "(method.ia3, method.adalora, method.prefix, method.bottleneck, method.osf)",
            ".lora",
            lambda m: m.adapter in (None, AdapterType.LORA, AdapterType.DORA) or not m.lora.model_fields_set,
        ),
    )
    model_config = ConfigDict(json_schema_extra=rules_schema(rules))

    type: Annotated[
        MethodType, Field(description="auto picks QLoRA on a GPU and LoRA on a CPU or with resources.sharding fsdp.")
    ] = MethodType.AUTO
    adapter: Annotated[
        AdapterType | None,
        Field(
            description=(
                "The adapter a lora or qlora run trains: lora, or dora (weight-decomposed LoRA, Liu et al. "
                "2024: a trained magnitude per output feature besides the low-rank direction; learns more like "
                "full fine-tuning at about a LoRA's parameter count, and each step is slower as it recomputes "
                "every adapted weight's norm), both configured by method.lora; adalora (a LoRA whose rank "
                "budget is moved during training to the weights that need it, pruning the rest; configured by "
                "method.adalora); ia3 (learned rescaling vectors, configured by method.ia3); or prefix (trained "
                "attention keys and values before the input, configured by method.prefix; trained unpacked, and "
                "with no merged exports: a prefix is no change of the weights); or bottleneck (a small network "
                "after each MLP, configured by method.bottleneck; no merged exports either); or osf (orthogonal "
                "subspace fine-tuning: the weights' smaller singular directions trained, the largest frozen, for "
                "continual learning; configured by method.osf; on a 16-bit base, so auto picks lora and qlora is "
                "refused). Unset: lora. Not for method.type full, which trains every weight."
            ),
        ),
    ] = None
    objective: Annotated[
        Objective | None,
        Field(
            description=(
                "What the model learns from: sft, the answers of the dataset; dpo, pairs of a chosen and a "
                "rejected answer (dataset format preference), staying close to the base model (method.dpo); orpo, "
                "the same pairs with no reference model, for less memory on a full fine-tune (method.orpo); "
                "distill, a teacher model's predictions mixed with the dataset's answers (method.distill). "
                "Unset: sft."
            )
        ),
    ] = None
    lora: LoraSpec = Field(default_factory=LoraSpec)
    adalora: AdaLoraSpec | None = None
    ia3: Ia3Spec | None = None
    prefix: PrefixSpec | None = None
    bottleneck: BottleneckSpec | None = None
    osf: OsfSpec | None = None
    dpo: DpoSpec | None = None
    orpo: OrpoSpec | None = None
    distill: DistillSpec | None = None
    allow_cpu_qlora: Annotated[
        bool,
        Field(description="Allow QLoRA without a GPU (slow; for tests and tiny models)."),
    ] = False


class HyperparametersSpec(ApiModel):
    epochs: Annotated[float | None, Field(gt=0, le=100)] = None
    learning_rate: Annotated[float | None, Field(gt=0, le=1)] = None
    lr_scheduler: LrScheduler | None = None
    warmup_ratio: Annotated[float | None, Field(ge=0, le=0.5)] = None
    batch_size: Annotated[int | None, Field(ge=1, le=1024, description="Per-device micro-batch size.")] = None
    gradient_accumulation_steps: Annotated[int | None, Field(ge=1, le=1024)] = None
    weight_decay: Annotated[float | None, Field(ge=0, le=1)] = None
    max_grad_norm: Annotated[float | None, Field(gt=0, le=1000)] = None
    sequence_length: Annotated[int | None, Field(ge=32, le=131072)] = None
    packing: Annotated[
        bool | None, Field(description="Pack short examples into full sequences (attention kept per example).")
    ] = None
    early_stopping_patience: Annotated[
        int | None,
        Field(ge=0, le=100, description="Evaluations without validation-loss improvement before stopping; 0 disables."),
    ] = None
    gradient_checkpointing: bool | None = None
    seed: Annotated[int | None, Field(ge=0, le=2**31 - 1)] = None
    eval_steps: Annotated[
        int | None, Field(ge=1, le=1_000_000, description="Optimizer steps between validation-loss evaluations.")
    ] = None


class QualityGateSpec(ApiModel):
    metric: Metric = Metric.PERPLEXITY
    min_improvement: Annotated[
        float,
        Field(
            ge=0,
            le=10,
            description=(
                "Minimum relative improvement over the base model in the metric's good direction "
                "(0.15 = 15%); absolute when the base scores 0."
            ),
        ),
    ] = 0.0


class EvaluationSpec(ApiModel):
    metrics: Annotated[
        list[Metric],
        AfterValidator(unique_values),
        Field(
            min_length=1,
            max_length=6,
            json_schema_extra=SET_LIST,
            description="Reported base vs tuned; the task's primary metric (accuracy or rougeL) is always added.",
        ),
    ] = Field(default_factory=lambda: [Metric.PERPLEXITY, Metric.ROUGE_L])
    gate: Annotated[
        QualityGateSpec | None,
        Field(
            description=(
                "Unset: the default gate promotes only a model that beats the base on the task's primary metric "
                "with a 95% interval above 0 and stays within maxRegression on general prompts."
            )
        ),
    ] = None
    forgetting: Annotated[
        bool,
        Field(
            description=(
                "Measure forgetting on general prompts (true, the default). false (or off) opts out: nothing is "
                "measured, and without an explicit gate the run is not promoted."
            )
        ),
    ] = True
    regression_set: Annotated[
        str | None,
        Field(
            pattern=DATA_URI_PATTERN,
            max_length=MAX_URI_LENGTH,
            description=(
                "General prompts with the base model's answers that measure forgetting (s3:// or file://); "
                "default: kubetune's built-in general prompts, answered by the base model."
            ),
        ),
    ] = None
    max_regression: Annotated[
        float,
        Field(ge=0, le=1, description="Largest tolerated relative loss on each forgetting measure (0.05 = 5%)."),
    ] = 0.05
    max_new_tokens: Annotated[int, Field(ge=1, le=4096)] = 64
    max_examples: Annotated[int | None, Field(ge=1, le=100000, description="Cap on test examples scored.")] = None


class OciCredentialsRef(ApiModel):
    name: Annotated[
        str,
        Field(
            pattern=DNS_SUBDOMAIN_PATTERN,
            max_length=253,
            description=(
                "A Secret of type kubernetes.io/dockerconfigjson (what `kubectl create secret docker-registry` "
                "makes) labelled kubetune.dev/oci-credentials=true by a namespace admin; its .dockerconfigjson is "
                "mounted in the training pod only."
            ),
        ),
    ]


class OciPushSpec(ApiModel):
    """Each published version also pushed to an OCI registry as an ORAS artifact: its manifest.json and
    its adapter folder (the merged folder when there is no adapter), tagged with the version's name."""

    repository: Annotated[
        str,
        Field(
            pattern=OCI_REPOSITORY_PATTERN,
            max_length=255,
            description=(
                "registry[:port]/path, e.g. ghcr.io/my-org/tickets; no tag (each version is tagged with its "
                "name). The registry must be one the platform lists (Helm value registry.oci.registries)."
            ),
        ),
    ]
    credentials_secret: Annotated[
        OciCredentialsRef | None,
        Field(description="How the push logs in; unset: anonymously (a registry that allows it)."),
    ] = None


class OutputSpec(ApiModel):
    uri: Annotated[
        str,
        Field(
            pattern=DATA_URI_PATTERN,
            max_length=MAX_URI_LENGTH,
            description="Prefix under which each run publishes a new, never-overwritten version.",
        ),
    ]
    formats: Annotated[
        Annotated[list[ArtifactFormat], AfterValidator(unique_values), Field(min_length=1, max_length=5)] | None,
        Field(
            json_schema_extra=SET_LIST,
            description=(
                "What each run publishes: adapter, merged (the adapter merged into the base's weights), bnb-4bit, "
                "gguf-q8_0, gguf-q4_0 (the last three made from the merged weights). Unset: adapter and merged; "
                "adapter alone for a prefix or bottleneck adapter, which cannot be merged."
            ),
        ),
    ] = None
    channel: Annotated[
        str | None,
        Field(
            pattern=DNS_LABEL_PATTERN,
            max_length=63,
            description=(
                "A promotion channel (e.g. prod) under <uri>/channels/ that this run's version joins when it is "
                "promoted: a create-only numbered entry whose highest number is what serving follows."
            ),
        ),
    ] = None
    oci: Annotated[
        OciPushSpec | None,
        Field(description="Also push each published version to an OCI registry (an ORAS artifact)."),
    ] = None


class CheckpointSpec(ApiModel):
    every_steps: Annotated[
        int, Field(ge=1, le=1_000_000, description="Checkpoint to storage every N optimizer steps.")
    ] = 50
    uri: Annotated[
        str | None,
        Field(
            pattern=DATA_URI_PATTERN,
            max_length=MAX_URI_LENGTH,
            description="Where checkpoints go; default: <output.uri>/checkpoints/<job>.",
        ),
    ] = None
    termination_grace_period_seconds: Annotated[
        int, Field(ge=0, le=3600, description="Time the pod gets after SIGTERM to write a last checkpoint.")
    ] = 120


class Toleration(ApiModel):
    """A pod toleration, checked as the API server checks a pod's (core validation)."""

    rules: ClassVar[tuple[Rule, ...]] = (
        Rule(
            "!has(self.operator) || self.operator != 'Exists' || !has(self.value) || self.value == ''",
            "value must be empty when operator is Exists",
            ".value",
            lambda t: t.operator != "Exists" or not t.value,
        ),
        Rule(
            "(has(self.key) && self.key != '') || (has(self.operator) && self.operator == 'Exists')",
            "operator must be Exists when key is empty (such a toleration matches every taint)",
            ".operator",
            lambda t: bool(t.key) or t.operator == "Exists",
        ),
        Rule(
            "!has(self.tolerationSeconds) || (has(self.effect) && self.effect == 'NoExecute')",
            "effect must be NoExecute when tolerationSeconds is set",
            ".effect",
            lambda t: t.toleration_seconds is None or t.effect == "NoExecute",
        ),
    )
    model_config = ConfigDict(json_schema_extra=rules_schema(rules))

    key: Annotated[str | None, Field(pattern=QUALIFIED_NAME_PATTERN, max_length=316)] = None
    operator: Literal["Exists", "Equal"] | None = None
    value: Annotated[str | None, Field(pattern=LABEL_VALUE_PATTERN, max_length=63)] = None
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = None
    toleration_seconds: Annotated[int | None, Field(ge=0, le=365 * 24 * 3600)] = None


NodeSelector: TypeAlias = Annotated[
    dict[str, Annotated[str, Field(pattern=LABEL_VALUE_PATTERN, max_length=63)]],
    Field(max_length=64),
    *LABEL_KEYS.annotations(),
]
Tolerations: TypeAlias = Annotated[list[Toleration], Field(max_length=32)]
PriorityClassName: TypeAlias = Annotated[str, Field(pattern=DNS_SUBDOMAIN_PATTERN, max_length=253)]


class PlacementProfile(ApiModel):
    """Where a job's training pod may run, as the platform team defines it (Helm value
    ``policy.placementProfiles``); tenants pick one by name in ``spec.resources.placement``."""

    node_selector: NodeSelector | None = None
    tolerations: Tolerations | None = None
    priority_class_name: PriorityClassName | None = None


class ResourcesSpec(ApiModel):
    gpus: Annotated[
        int, Field(ge=0, le=16, description="GPUs on one node; more than one runs one process per GPU (DDP).")
    ] = 1
    nodes: Annotated[
        int,
        Field(
            ge=1,
            le=64,
            description=(
                "Pods the job trains on, each with `gpus` GPUs (or one CPU process with none); more than one runs "
                "an Indexed Job whose pods rendezvous through torchrun (c10d) over a headless Service."
            ),
        ),
    ] = 1
    sharding: Annotated[
        Sharding,
        Field(
            description=(
                "none: every process holds the whole model (DDP); fsdp: weights, gradients and optimizer state "
                "sharded over the job's processes (PyTorch FSDP2; method lora or full, objective sft); auto: none "
                "while the pre-flight's memory estimate fits one process, else fsdp."
            ),
        ),
    ] = Sharding.AUTO
    gpu_resource_name: Annotated[
        str,
        Field(
            pattern=EXTENDED_RESOURCE_PATTERN,
            max_length=253,
            description="The GPU's extended resource name (vendor-domain/name); never cpu, memory or a kubernetes.io name.",
        ),
        *EXTENDED_RESOURCE.annotations(),
    ] = "nvidia.com/gpu"
    gpu_memory: Annotated[
        GpuMemoryQuantity | None,
        Field(
            description=(
                "Memory of one GPU on the target nodes (e.g. 24Gi for an L4, 80Gi for an H100), so the CPU-only "
                "pre-flight can refuse a job that will not fit before any GPU is requested."
            ),
        ),
    ] = None
    cpu: CpuQuantity = "4"
    memory: MemoryQuantity = "32Gi"
    placement: Annotated[
        str | None,
        Field(
            pattern=DNS_LABEL_PATTERN,
            max_length=63,
            description=(
                "A placement profile the platform team defines (node selector, tolerations, priority class), "
                "by name; without it the profile named 'default', if there is one."
            ),
        ),
    ] = None
    node_selector: Annotated[
        NodeSelector | None,
        Field(
            description=(
                "Node labels the pod must land on (keys and values checked as Kubernetes checks labels); "
                "only where the platform allows raw scheduling fields."
            )
        ),
    ] = None
    tolerations: Annotated[
        Tolerations | None, Field(description="Only where the platform allows raw scheduling fields.")
    ] = None
    priority_class_name: Annotated[
        PriorityClassName | None, Field(description="Only where the platform allows raw scheduling fields.")
    ] = None

    @property
    def total_gpus(self) -> int:
        return self.nodes * self.gpus


class PvcRef(ApiModel):
    claim_name: Annotated[str, Field(pattern=DNS_SUBDOMAIN_PATTERN, max_length=253)]


class StorageSpec(ApiModel):
    scratch_size: Annotated[
        ScratchQuantity,
        Field(
            description="Size of the ephemeral scratch volume for model and checkpoints.",
        ),
    ] = "50Gi"
    pvc: Annotated[PvcRef | None, Field(description="Use this PersistentVolumeClaim as scratch instead.")] = None
    shm_size: Annotated[
        ShmQuantity, Field(description="Size of /dev/shm (memory-backed: it counts against resources.memory).")
    ] = "2Gi"


# A key of a Secret or ConfigMap (IsConfigMapKey): the pod's env and volume items refuse any other.
DataKey: TypeAlias = Annotated[str, Field(pattern=DATA_KEY_PATTERN, max_length=253)]


class SecretKeyRef(ApiModel):
    name: Annotated[str, Field(pattern=DNS_SUBDOMAIN_PATTERN, max_length=253)]
    access_key_id_key: DataKey = "AWS_ACCESS_KEY_ID"
    secret_access_key_key: DataKey = "AWS_SECRET_ACCESS_KEY"
    session_token_key: DataKey | None = None


class ConfigMapKeyRef(ApiModel):
    name: Annotated[str, Field(pattern=DNS_SUBDOMAIN_PATTERN, max_length=253)]
    key: DataKey = "ca.crt"


class HubTokenRef(ApiModel):
    name: Annotated[str, Field(pattern=DNS_SUBDOMAIN_PATTERN, max_length=253)]
    key: DataKey = "token"


class HubSpec(ApiModel):
    """The Hugging Face Hub for hf:// URIs: the platform chooses the endpoint (its mirror, for an
    air-gapped cluster); a job only brings a token."""

    token_secret: Annotated[
        HubTokenRef | None,
        Field(
            description=(
                "Secret key holding a Hub access token, for gated or private repositories (the Secret labelled "
                "kubetune.dev/hub-token=true by a namespace admin); unset: anonymous reads."
            )
        ),
    ] = None


class GcsKeyRef(ApiModel):
    name: Annotated[str, Field(pattern=DNS_SUBDOMAIN_PATTERN, max_length=253)]
    key: DataKey = "key.json"


class GcsSpec(ApiModel):
    """Google Cloud Storage for gs:// URIs: the platform chooses the endpoint; a job brings a
    service-account key, or its ServiceAccount's Workload Identity."""

    credentials_secret: Annotated[
        GcsKeyRef | None,
        Field(
            description=(
                "Secret key holding a service-account key in JSON (the Secret labelled "
                "kubetune.dev/gcs-credentials=true by a namespace admin); unset: the pod's ServiceAccount "
                "identity (GKE Workload Identity Federation)."
            )
        ),
    ] = None


class AzureKeyRef(ApiModel):
    name: Annotated[str, Field(pattern=DNS_SUBDOMAIN_PATTERN, max_length=253)]
    key: DataKey = "accountKey"


class AzureSpec(ApiModel):
    """Azure Blob Storage for az://account/container/path URIs: the platform chooses the endpoint; a
    job brings a storage account key, or its ServiceAccount's Workload Identity."""

    credentials_secret: Annotated[
        AzureKeyRef | None,
        Field(
            description=(
                "Secret key holding the storage account's access key (the Secret labelled "
                "kubetune.dev/azure-credentials=true by a namespace admin); unset: the pod's ServiceAccount "
                "identity (AKS Workload Identity)."
            )
        ),
    ] = None


class S3Spec(ApiModel):
    endpoint: Annotated[
        str | None,
        Field(
            pattern=S3_ENDPOINT_PATTERN,
            max_length=512,
            description=(
                "S3-compatible endpoint (MinIO, Ceph...) as scheme://host[:port], no credentials, path or query; "
                "AWS when unset."
            ),
        ),
    ] = None
    region: Annotated[str | None, Field(pattern=S3_REGION_PATTERN, max_length=64)] = None
    credentials_secret: Annotated[
        SecretKeyRef | None,
        Field(
            description="Secret with the access keys; unset means the pod's ServiceAccount identity (IRSA, Workload Identity)."
        ),
    ] = None
    ca_bundle: Annotated[
        ConfigMapKeyRef | None, Field(description="ConfigMap key with a PEM CA bundle for a private endpoint.")
    ] = None
    force_path_style: bool = False


# Share of earlier training data replayed beside new data, for a continued version and for a drift
# retraining alike: each earlier source's weight in the training split.
DEFAULT_REPLAY_FRACTION = 0.5
# Most sources one job reads: the spec's, and with a continued version's replay, the spec's and the chain's.
MAX_DATASET_SOURCES = 32
ReplayFraction: TypeAlias = Annotated[float, Field(ge=0, le=1)]


class EwcSpec(ApiModel):
    """Elastic weight consolidation (Kirkpatrick et al. 2017): training is pulled back towards where it
    started, parameter by parameter, as strongly as the earlier task's Fisher information says the
    parameter matters to it."""

    lambda_: Annotated[
        float | None,
        Field(
            alias="lambda",
            ge=0,
            le=1e12,
            description=(
                "Weight of the penalty lambda/2 * sum F_i (theta_i - theta*_i)^2 beside the task's mean loss per "
                "example. Unset: auto, the earlier task's rows over the new task's (the weight the Laplace "
                "approximation gives the earlier data when both losses are means per example); recorded in the "
                "lineage. 0 turns the penalty off."
            ),
        ),
    ] = None


class ContinualSpec(ApiModel):
    """Continual learning: training goes on from a model this platform published, not from the base."""

    rules: ClassVar[tuple[Rule, ...]] = (
        Rule(
            "!has(self.ewc) || has(self.from)",
            "ewc anchors training at the version it starts from: set continual.from",
            ".ewc",
            lambda s: s.ewc is None or s.from_version is not None,
        ),
    )
    model_config = ConfigDict(json_schema_extra=rules_schema(rules))

    from_version: Annotated[
        str | None,
        Field(
            alias="from",
            pattern=DATA_URI_PATTERN,
            max_length=MAX_URI_LENGTH,
            description=(
                "A published version to start from: its folder, <output.uri>/<version> (s3:// or file://), "
                "holding a manifest.json and merged weights. Training starts from its merged weights, the "
                "evaluation compares against it, and the lineage manifest records the chain of versions. "
                "baseModel.uri must name the base model the chain began with. Unset: the job starts from "
                "baseModel (publishFisher may still prepare its version for a later one)."
            ),
        ),
    ] = None
    replay_fraction: Annotated[
        ReplayFraction,
        Field(
            description=(
                "Earlier training data replayed so the model keeps what it learnt: every source the versions of "
                "the chain trained on (not their evalOnly sources) is mixed in at this weight in the training "
                "split; 0 = none. Split by the same hash as the new data, so an earlier test row stays a test "
                "row when dataset.split is the same. Recorded in the lineage."
            ),
        ),
    ] = DEFAULT_REPLAY_FRACTION
    ewc: Annotated[
        EwcSpec | None,
        Field(
            description=(
                "Elastic weight consolidation on the parameters this job trains (the new adapter's, or every "
                "weight for method.type full), anchored where training starts, with a diagonal Fisher: the one "
                "published with the version (publishFisher) when it was made for this job's starting point, else "
                "estimated on the replayed rows of the earlier versions' data. Unset: no penalty (replay alone)."
            )
        ),
    ] = None
    publish_fisher: Annotated[
        bool,
        Field(
            description=(
                "Publish with this version the diagonal Fisher of its task (fisher/fisher.safetensors), estimated "
                "for the parameters a job continuing it with the same method, adapter settings and seed trains, "
                "so that job's continual.ewc needs neither this task's data nor the time to estimate it."
            )
        ),
    ] = False


class PrivacySpec(ApiModel):
    """Differentially private training (DP-SGD, Abadi et al. 2016, with Opacus): rows drawn by Poisson
    sampling, each row's gradient clipped to maxGradNorm, Gaussian noise added to their sum, and the privacy
    spent counted by an accountant. One training row is one privacy unit."""

    target_epsilon: Annotated[
        float,
        Field(
            gt=0,
            le=100,
            description=(
                "The privacy budget: training adds the noise that keeps the run's epsilon (at delta) at most "
                "this. Smaller is more private and learns less; 1 to 10 are common."
            ),
        ),
    ]
    delta: Annotated[
        float | None,
        Field(
            gt=0,
            lt=1,
            description=(
                "Probability the epsilon bound may fail; must be far below 1 / training rows. Unset: "
                "1 / (10 x training rows)."
            ),
        ),
    ] = None
    max_grad_norm: Annotated[
        float | None,
        Field(gt=0, le=1000, description="Each row's gradient is clipped to this L2 norm. Unset: 1.0."),
    ] = None


class WebhookFormat(StrEnum):
    CLOUDEVENTS = "cloudevents"
    SLACK = "slack"


# Keys of a webhook's Secret: the URL may itself be a credential (a Slack incoming webhook's is).
WEBHOOK_URL_KEY = "url"
WEBHOOK_SIGNING_KEY = "signingKey"
MAX_WEBHOOKS = 8


class WebhookSpec(ApiModel):
    """One receiver of the job's notifications: its URL and signing key are read from a Secret of the job's
    namespace, labelled ``kubetune.dev/webhook=true`` by a namespace admin."""

    name: Annotated[
        str,
        Field(pattern=DNS_LABEL_PATTERN, max_length=63, description="Names the receiver in status and Events."),
    ]
    secret_name: Annotated[
        str,
        Field(
            pattern=DNS_SUBDOMAIN_PATTERN,
            max_length=253,
            description=(
                f"Secret with key '{WEBHOOK_URL_KEY}' (where to POST) and key '{WEBHOOK_SIGNING_KEY}' (the HMAC-SHA256 "
                "key of the webhook-signature header)."
            ),
        ),
    ]
    format: Annotated[
        WebhookFormat,
        Field(description="cloudevents: a CloudEvents 1.0 JSON event; slack: a Slack-compatible message."),
    ] = WebhookFormat.CLOUDEVENTS


def _webhook_names_unique(webhooks: list[WebhookSpec]) -> bool:
    names = [webhook.name for webhook in webhooks]
    return len(names) == len(set(names))


WEBHOOK_NAMES_UNIQUE = Rule(
    "self.all(w, self.exists_one(x, x.name == w.name))",
    "webhook names must be unique",
    "",
    _webhook_names_unique,
)


class NotificationsSpec(ApiModel):
    webhooks: Annotated[
        list[WebhookSpec],
        *WEBHOOK_NAMES_UNIQUE.annotations(),
        Field(
            max_length=MAX_WEBHOOKS,
            description=(
                "Told when the job succeeds or fails and when its quality gate is judged: signed, retried with "
                "backoff, delivered at least once with a stable event id."
            ),
        ),
    ] = Field(default_factory=list)


# MLflow's own limits (its REST API refuses longer): an experiment name, a registered model name; no
# control characters, and no '/' or ':' in a model name (MLflow refuses them: its registry URIs,
# models:/<name>/<version>, split on them).
MAX_MLFLOW_NAME = 250
MLFLOW_EXPERIMENT_PATTERN = r"^[^\x00-\x1f]+$"
MLFLOW_MODEL_PATTERN = r"^[^/:\x00-\x1f]+$"


class MlflowCredentialsRef(ApiModel):
    """A Secret with a user's name and password on the platform's MLflow server (MLflow's basic auth)."""

    name: Annotated[str, Field(pattern=DNS_SUBDOMAIN_PATTERN, max_length=253)]
    username_key: DataKey = "username"
    password_key: DataKey = "password"


class MlflowTokenRef(ApiModel):
    """A Secret key holding an access token for the platform's MLflow server, sent as a bearer token."""

    name: Annotated[str, Field(pattern=DNS_SUBDOMAIN_PATTERN, max_length=253)]
    key: DataKey = "token"


class MlflowTrackingSpec(ApiModel):
    """The run reported to the platform's MLflow server (its tracking API; Helm value tracking.mlflow.uri):
    the resolved training values as parameters, the losses and throughput by step and the evaluation as
    metrics, the published version and its manifest as tags."""

    rules: ClassVar[tuple[Rule, ...]] = (
        Rule(
            "!(has(self.credentialsSecret) && has(self.tokenSecret))",
            "one login: a user name and password (credentialsSecret) or a bearer token (tokenSecret), not both",
            ".tokenSecret",
            lambda s: not (s.credentials_secret is not None and s.token_secret is not None),
        ),
    )
    model_config = ConfigDict(json_schema_extra=rules_schema(rules))

    experiment: Annotated[
        str | None,
        Field(
            min_length=1,
            max_length=MAX_MLFLOW_NAME,
            pattern=MLFLOW_EXPERIMENT_PATTERN,
            description="The experiment the run is logged under (created when missing); unset: kubetune/<namespace>.",
        ),
    ] = None
    registered_model: Annotated[
        str | None,
        Field(
            min_length=1,
            max_length=MAX_MLFLOW_NAME,
            pattern=MLFLOW_MODEL_PATTERN,
            description=(
                "Register each promoted version in MLflow's model registry under this name (created when missing): "
                "a model version whose source is the published version's folder, tagged with its manifest's URI "
                "and SHA-256. Unset: nothing is registered."
            ),
        ),
    ] = None
    credentials_secret: Annotated[
        MlflowCredentialsRef | None,
        Field(
            description=(
                "Secret with the user name and password the run reports as, for a server with MLflow's basic "
                "auth (the Secret labelled kubetune.dev/mlflow-credentials=true by a namespace admin); mounted "
                "in the training pod only. Unset: no credentials."
            )
        ),
    ] = None
    token_secret: Annotated[
        MlflowTokenRef | None,
        Field(
            description=(
                "Secret key with an access token the run reports with (Authorization: Bearer), for a server "
                "behind a token gateway or a managed MLflow (the Secret labelled kubetune.dev/mlflow-credentials=true "
                "by a namespace admin); mounted in the training pod only. Not with credentialsSecret."
            )
        ),
    ] = None


# W&B's own limits on a project, entity and group name: 128 characters, none of / \\ # ? % :
WANDB_NAME_PATTERN = r"^[^/\\#?%:\x00-\x1f]+$"


class WandbKeyRef(ApiModel):
    """A Secret key holding a W&B API key."""

    name: Annotated[str, Field(pattern=DNS_SUBDOMAIN_PATTERN, max_length=253)]
    key: DataKey = "apiKey"


class WandbTrackingSpec(ApiModel):
    """The run reported to the platform's Weights & Biases server (Helm value tracking.wandb.host): the
    resolved training values as config, the losses and throughput by step as history, the evaluation and
    the published version as the summary."""

    project: Annotated[
        str | None,
        Field(min_length=1, max_length=128, pattern=WANDB_NAME_PATTERN, description="Unset: kubetune-<namespace>."),
    ] = None
    entity: Annotated[
        str | None,
        Field(
            min_length=1,
            max_length=128,
            pattern=WANDB_NAME_PATTERN,
            description="The team or user the project belongs to; unset: the API key's default entity.",
        ),
    ] = None
    group: Annotated[
        str | None,
        Field(min_length=1, max_length=128, pattern=WANDB_NAME_PATTERN, description="Groups runs in the project."),
    ] = None
    api_key_secret: Annotated[
        WandbKeyRef | None,
        Field(
            description=(
                "Secret key with the W&B API key the run reports with (the Secret labelled "
                "kubetune.dev/wandb-credentials=true by a namespace admin); mounted in the training pod only."
            )
        ),
    ] = None


class TrackingSpec(ApiModel):
    mlflow: Annotated[
        MlflowTrackingSpec | None,
        Field(description="Report the run to the platform's MLflow server (and register promoted versions)."),
    ] = None
    wandb: Annotated[
        WandbTrackingSpec | None,
        Field(description="Report the run to the platform's Weights & Biases server."),
    ] = None


def fsdp_trains(spec: FineTuneJobSpec) -> bool:
    """Whether resources.sharding fsdp can train this job's method, adapter and objective (the rule on
    resources.sharding; the plan's auto choice asks the same)."""
    return (
        spec.method.type != MethodType.QLORA
        and spec.method.adapter in (None, *FSDP_ADAPTERS)
        and spec.method.objective in (None, Objective.SFT)
        and (spec.continual is None or spec.continual.ewc is None)
    )


class FineTuneJobSpec(ApiModel):
    # Rules between fields, each naming the field to change. The model type-checks first, so a
    # rule's check sees valid values.
    rules: ClassVar[tuple[Rule, ...]] = (
        Rule(
            "self.method.type != 'qlora' || self.resources.gpus > 0 || self.method.allowCpuQlora",
            "method.type qlora needs resources.gpus > 0 (or method.allowCpuQlora: true)",
            ".method.type",
            lambda s: s.method.type != MethodType.QLORA or s.resources.gpus > 0 or s.method.allow_cpu_qlora,
        ),
        Rule(
            "self.method.type != 'full' || !has(self.method.adapter)",
            "method.adapter names an adapter to train on a frozen base; method.type full trains every weight",
            ".method.adapter",
            lambda s: s.method.type != MethodType.FULL or s.method.adapter is None,
        ),
        Rule(
            "self.dataset.sources.all(s, !has(s.format) || s.format != 'preference') "
            "|| (has(self.method.objective) && self.method.objective in ['dpo', 'orpo'])",
            "dataset sources in format preference are pairs of answers: train them with method.objective dpo or orpo",
            ".method.objective",
            lambda s: (
                all(source.format != DatasetFormat.PREFERENCE for source in s.dataset.sources)
                or s.method.objective in PREFERENCE_OBJECTIVES
            ),
        ),
        Rule(
            "!has(self.method.objective) || !(self.method.objective in ['dpo', 'orpo']) "
            "|| self.dataset.sources.all(s, !has(s.format) || s.format in ['auto', 'preference'])",
            "method.objective dpo and orpo learn from pairs of answers: every dataset source must be in format "
            "preference (or auto)",
            ".dataset.sources",
            lambda s: (
                s.method.objective not in PREFERENCE_OBJECTIVES
                or all(source.format in (DatasetFormat.AUTO, DatasetFormat.PREFERENCE) for source in s.dataset.sources)
            ),
        ),
        Rule(
            "!has(self.continual) || !has(self.continual.ewc) || !has(self.method.objective) "
            "|| !(self.method.objective in ['dpo', 'orpo'])",
            "continual.ewc estimates the Fisher information of single answers' likelihood: it is for "
            "method.objective sft, not dpo or orpo",
            ".continual.ewc",
            lambda s: s.continual is None or s.continual.ewc is None or s.method.objective not in PREFERENCE_OBJECTIVES,
        ),
        Rule(
            "!has(self.continual) || !has(self.continual.publishFisher) || !self.continual.publishFisher "
            "|| ((!has(self.method.objective) || !(self.method.objective in ['dpo', 'orpo'])) "
            "&& (!has(self.method.adapter) || !(self.method.adapter in ['prefix', 'bottleneck'])))",
            "continual.publishFisher estimates single answers' likelihood for a job that continues this version's "
            "weights: it is for method.objective sft with an adapter that merges into them (not prefix or "
            "bottleneck)",
            ".continual.publishFisher",
            lambda s: (
                s.continual is None
                or not s.continual.publish_fisher
                or (s.method.objective not in PREFERENCE_OBJECTIVES and s.method.adapter not in UNMERGEABLE_ADAPTERS)
            ),
        ),
        Rule(
            "!has(self.method.objective) || !(self.method.objective in ['dpo', 'orpo']) "
            "|| !has(self.hyperparameters.packing) || !self.hyperparameters.packing",
            "method.objective dpo and orpo compare each pair's two answers row by row: they are not packed "
            "(leave hyperparameters.packing unset or false)",
            ".hyperparameters.packing",
            lambda s: s.method.objective not in PREFERENCE_OBJECTIVES or not s.hyperparameters.packing,
        ),
        Rule(
            "!has(self.method.adapter) || self.method.adapter != 'prefix' "
            "|| !has(self.hyperparameters.packing) || !self.hyperparameters.packing",
            "a prefix adapter passes its keys and values as a cache, which packed rows' per-example attention "
            "cannot use: leave hyperparameters.packing unset or false",
            ".hyperparameters.packing",
            lambda s: s.method.adapter != AdapterType.PREFIX or not s.hyperparameters.packing,
        ),
        Rule(
            "!has(self.method.adapter) || !(self.method.adapter in ['prefix', 'bottleneck']) "
            "|| !has(self.output.formats) || self.output.formats.all(f, f == 'adapter')",
            "prefix and bottleneck adapters are no change of the weights and cannot be merged into them: "
            "output.formats may only list adapter (merged, bnb-4bit and gguf are made from merged weights)",
            ".output.formats",
            lambda s: (
                s.method.adapter not in UNMERGEABLE_ADAPTERS
                or s.output.formats is None
                or all(f == ArtifactFormat.ADAPTER for f in s.output.formats)
            ),
        ),
        Rule(
            "!has(self.privacy) || ((!has(self.method.adapter) || self.method.adapter == 'lora') "
            "&& self.method.type != 'full')",
            "privacy trains a LoRA adapter (method.adapter lora, method.type auto, lora or qlora): its per-row "
            "gradients are computed for linear layers only",
            ".method.adapter",
            lambda s: s.privacy is None or (s.method.adapter in (None, AdapterType.LORA) and s.method.type != "full"),
        ),
        Rule(
            "!has(self.privacy) || self.resources.gpus <= 1",
            "privacy trains in one process (its sampling and accounting are per run, not per GPU): set "
            "resources.gpus to 0 or 1",
            ".resources.gpus",
            lambda s: s.privacy is None or s.resources.gpus <= 1,
        ),
        Rule(
            "!has(self.privacy) || self.resources.nodes == 1",
            "privacy trains in one process (its sampling and accounting are per run, not per node): set "
            "resources.nodes to 1",
            ".resources.nodes",
            lambda s: s.privacy is None or s.resources.nodes == 1,
        ),
        Rule(
            "!has(self.resources.sharding) || self.resources.sharding != 'fsdp' "
            "|| self.resources.nodes > 1 || self.resources.gpus > 1",
            "resources.sharding fsdp spreads the model over the job's processes: it needs more than one "
            "(resources.nodes or resources.gpus above 1)",
            ".resources.sharding",
            lambda s: s.resources.sharding != Sharding.FSDP or s.resources.nodes > 1 or s.resources.gpus > 1,
        ),
        Rule(
            "!has(self.resources.sharding) || self.resources.sharding != 'fsdp' || (self.method.type != 'qlora' "
            "&& (!has(self.method.adapter) || self.method.adapter in ['lora', 'dora']) "
            "&& (!has(self.method.objective) || self.method.objective == 'sft') "
            "&& (!has(self.continual) || !has(self.continual.ewc)))",
            "resources.sharding fsdp trains method.type lora or full (not qlora), with a lora or dora adapter, "
            "method.objective sft and no continual.ewc",
            ".resources.sharding",
            lambda s: s.resources.sharding != Sharding.FSDP or fsdp_trains(s),
        ),
        Rule(
            "!has(self.privacy) || !has(self.method.objective) || self.method.objective == 'sft'",
            "privacy counts one training row as one privacy unit: it is for method.objective sft, not dpo or orpo",
            ".method.objective",
            lambda s: s.privacy is None or s.method.objective in (None, Objective.SFT),
        ),
        Rule(
            "!has(self.privacy) || !has(self.hyperparameters.packing) || !self.hyperparameters.packing",
            "privacy counts one training row as one privacy unit: rows are not packed together (leave "
            "hyperparameters.packing unset or false)",
            ".hyperparameters.packing",
            lambda s: s.privacy is None or not s.hyperparameters.packing,
        ),
        Rule(
            "!has(self.privacy) || !has(self.hyperparameters.gradientCheckpointing) "
            "|| !self.hyperparameters.gradientCheckpointing",
            "privacy computes each row's gradient from the activations its layers saw once; recomputing them "
            "(gradient checkpointing) is not supported: leave hyperparameters.gradientCheckpointing unset or false",
            ".hyperparameters.gradientCheckpointing",
            lambda s: s.privacy is None or not s.hyperparameters.gradient_checkpointing,
        ),
        Rule(
            "!has(self.privacy) || !has(self.hyperparameters.earlyStoppingPatience) "
            "|| self.hyperparameters.earlyStoppingPatience == 0",
            "privacy: stopping on the validation loss would let rows outside the privacy accounting choose the "
            "model; leave hyperparameters.earlyStoppingPatience unset or 0",
            ".hyperparameters.earlyStoppingPatience",
            lambda s: s.privacy is None or not s.hyperparameters.early_stopping_patience,
        ),
        Rule(
            "!has(self.privacy) || !has(self.continual) || (!(self.continual.replayFraction > 0.0) "
            "&& !has(self.continual.ewc) && (!has(self.continual.publishFisher) || !self.continual.publishFisher))",
            "privacy: earlier versions' private rows (continual.replayFraction, 0.5 unless set; continual.ewc's and "
            "publishFisher's Fisher information) would be used outside this job's privacy budget: set "
            "continual.replayFraction: 0 and leave ewc and publishFisher out",
            ".continual",
            lambda s: (
                s.privacy is None
                or s.continual is None
                or (s.continual.replay_fraction == 0 and s.continual.ewc is None and not s.continual.publish_fisher)
            ),
        ),
        Rule(
            "self.dataset.split.validation + self.dataset.split.test < 0.9",
            "dataset.split.validation + dataset.split.test must leave at least 10% for training",
            ".dataset.split",
            lambda s: s.dataset.split.validation + s.dataset.split.test < 0.9,
        ),
        Rule(
            "!has(self.evaluation.gate) || self.evaluation.gate.metric in self.evaluation.metrics",
            "the gate's metric must be one of evaluation.metrics",
            ".evaluation.gate.metric",
            lambda s: s.evaluation.gate is None or s.evaluation.gate.metric in s.evaluation.metrics,
        ),
        Rule(
            "!has(self.dataset.curation.maxTokens) || self.dataset.curation.minTokens <= self.dataset.curation.maxTokens",
            "dataset.curation.minTokens must not exceed maxTokens",
            ".dataset.curation.minTokens",
            lambda s: (
                s.dataset.curation.max_tokens is None or s.dataset.curation.min_tokens <= s.dataset.curation.max_tokens
            ),
        ),
        Rule(
            "!has(self.hyperparameters.sequenceLength) || self.hyperparameters.sequenceLength >= self.dataset.curation.minTokens",
            "hyperparameters.sequenceLength must admit dataset.curation.minTokens (no example could fit)",
            ".hyperparameters.sequenceLength",
            lambda s: (
                s.hyperparameters.sequence_length is None
                or s.hyperparameters.sequence_length >= s.dataset.curation.min_tokens
            ),
        ),
        Rule(
            "!has(self.hyperparameters.earlyStoppingPatience) || self.hyperparameters.earlyStoppingPatience == 0 "
            "|| self.dataset.split.validation > 0.0",
            "early stopping needs a validation split: set dataset.split.validation above 0 or earlyStoppingPatience to 0",
            ".hyperparameters.earlyStoppingPatience",
            lambda s: not s.hyperparameters.early_stopping_patience or s.dataset.split.validation > 0,
        ),
        Rule(
            "!isQuantity(self.storage.shmSize) || !isQuantity(self.resources.memory) "
            "|| !quantity(self.storage.shmSize).isGreaterThan(quantity(self.resources.memory))",
            "storage.shmSize is memory the pod uses: it must not exceed resources.memory",
            ".storage.shmSize",
            lambda s: parse_quantity(s.storage.shm_size) <= parse_quantity(s.resources.memory),
        ),
    )
    model_config = ConfigDict(json_schema_extra=rules_schema(rules))

    base_model: BaseModelSpec = Field(default_factory=BaseModelSpec)
    continual: ContinualSpec | None = None
    dataset: DatasetSpec
    privacy: Annotated[
        PrivacySpec | None,
        Field(
            description="Train with differential privacy (DP-SGD); the epsilon spent goes to status and the lineage."
        ),
    ] = None
    method: MethodSpec = Field(default_factory=MethodSpec)
    hyperparameters: HyperparametersSpec = Field(default_factory=HyperparametersSpec)
    evaluation: EvaluationSpec = Field(default_factory=EvaluationSpec)
    output: OutputSpec
    checkpoint: CheckpointSpec = Field(default_factory=CheckpointSpec)
    resources: ResourcesSpec = Field(default_factory=ResourcesSpec)
    storage: StorageSpec = Field(default_factory=StorageSpec)
    s3: S3Spec = Field(default_factory=S3Spec)
    hub: HubSpec = Field(default_factory=HubSpec)
    gcs: GcsSpec = Field(default_factory=GcsSpec)
    azure: AzureSpec = Field(default_factory=AzureSpec)
    service_account_name: Annotated[
        str | None,
        Field(
            pattern=DNS_SUBDOMAIN_PATTERN,
            max_length=253,
            description="Pod identity for cloud credentials (IRSA/Workload Identity); default: a per-job account.",
        ),
    ] = None
    image: Annotated[
        str | None,
        Field(
            pattern=IMAGE_PATTERN,
            max_length=512,
            description="Trainer image reference; default from the operator's config.",
        ),
    ] = None
    suspend: Annotated[
        bool,
        Field(description="Suspend (true) or resume (false) the job; the only field that may change after creation."),
    ] = False
    queue_name: Annotated[
        str | None, Field(pattern=DNS_SUBDOMAIN_PATTERN, max_length=253, description="Kueue LocalQueue to submit to.")
    ] = None
    active_deadline_seconds: Annotated[int | None, Field(ge=60, le=30 * 24 * 3600)] = None
    backoff_limit: Annotated[
        int,
        Field(ge=0, le=20, description="Retries of the training pod after failures other than configuration errors."),
    ] = 3
    ttl_seconds_after_finished: Annotated[int | None, Field(ge=0, le=365 * 24 * 3600)] = None
    notifications: NotificationsSpec | None = None
    tracking: Annotated[
        TrackingSpec | None, Field(description="Experiment tracking beside the job's status and metrics.")
    ] = None


# --------------------------------------------------------------------------- status


class Condition(ApiModel):
    type: str
    status: Literal["True", "False", "Unknown"]
    reason: str
    message: str = ""
    last_transition_time: str | None = None
    observed_generation: int | None = None


class Progress(ApiModel):
    """Written by the trainer (its per-job Role allows only finetunejobs/status of its job)."""

    stage: str | None = None
    step: int | None = None
    total_steps: int | None = None
    epoch: float | None = None
    train_loss: float | None = None
    eval_loss: float | None = None
    tokens_per_second: float | None = None
    eta_seconds: Annotated[
        int | None,
        Field(ge=0, description="Training time left at the pace this pod measured so far (evaluations included)."),
    ] = None
    updated_at: str | None = None


class PreflightReport(ApiModel):
    """Written by the trainer's pre-flight run."""

    passed: bool
    message: str = ""
    examples: dict[str, int] | None = None
    train_tokens: int | None = None
    estimated_memory_gib: float | None = None
    estimated_minutes: float | None = None
    method: str | None = None


class ArtifactStatus(ApiModel):
    name: str
    uri: str
    sha256: str | None = None
    size_bytes: int | None = None


class OciPushStatus(ApiModel):
    """spec.output.oci: where the version went (reference and manifest digest), or why it did not."""

    reference: str
    digest: str | None = None
    error: str | None = None


class ResolvedReplay(ApiModel):
    enabled: Annotated[bool, Field(description="false: no replay (dataset.replay.enabled false).")]
    examples: Annotated[
        int,
        Field(
            ge=0,
            description=(
                "Replay prompts drawn from the pool. Those whose base answer fails its own known-answer check "
                "are not trained on; the lineage manifest (dataset.replay) counts the rows trained on."
            ),
        ),
    ]
    fraction: Annotated[float, Field(ge=0, description="Replay rows per task training row.")]


class ResolvedHyperparameters(ApiModel):
    """Every training value decided (the manifest's, else the plan's default). No field is optional:
    consumers take this type and never default again."""

    epochs: Annotated[float, Field(gt=0)]
    learning_rate: Annotated[float, Field(gt=0)]
    lr_scheduler: LrScheduler
    warmup_ratio: Annotated[float, Field(ge=0)]
    batch_size: Annotated[int, Field(ge=1, description="Per-device micro-batch size.")]
    gradient_accumulation_steps: Annotated[int, Field(ge=1)]
    weight_decay: Annotated[float, Field(ge=0)]
    max_grad_norm: Annotated[float, Field(gt=0)]
    sequence_length: Annotated[
        int, Field(ge=1, description="Tokens per training row; also the length evaluation scores the task at.")
    ]
    packing: bool
    early_stopping_patience: Annotated[int, Field(ge=0, description="0: no early stopping.")]
    gradient_checkpointing: bool
    sharding: Annotated[
        Literal[Sharding.NONE, Sharding.FSDP],
        Field(description="none: DDP when the job has several processes; fsdp: fully sharded (never auto)."),
    ]
    seed: Annotated[int, Field(ge=0)]
    eval_steps: Annotated[int, Field(ge=1)]


ResolvedStrengths: TypeAlias = Annotated[
    list[Annotated[float, Field(gt=0, le=1)]],
    Field(
        min_length=1,
        description=(
            "Strengths the trained adapter may be kept at, strongest first: the manifest's scale alone, or the "
            "candidates the validation split chooses from."
        ),
    ),
]


class ResolvedLora(ApiModel):
    """The adapter of a LoRA or DoRA run, every value decided."""

    scaling: Annotated[LoraScaling, Field(description="standard: alpha / r; rslora: alpha / sqrt(r).")]
    r: Annotated[int, Field(ge=1)]
    alpha: Annotated[int, Field(ge=1)]
    dropout: Annotated[float, Field(ge=0)]
    target_modules: Annotated[list[str], Field(min_length=1)]
    strengths: ResolvedStrengths


class ResolvedAdaLora(ApiModel):
    """The adapter of an AdaLoRA run and its pruning schedule in optimizer steps, every value decided."""

    initial_rank: Annotated[int, Field(ge=1)]
    target_rank: Annotated[int, Field(ge=1, description="Average rank per adapted weight once pruned.")]
    alpha: Annotated[int, Field(ge=1)]
    dropout: Annotated[float, Field(ge=0)]
    target_modules: Annotated[list[str], Field(min_length=1)]
    total_steps: Annotated[int, Field(ge=1, description="The optimizer steps the schedule is laid over.")]
    warmup_steps: Annotated[int, Field(ge=0, description="Steps trained at the initial rank before pruning.")]
    final_steps: Annotated[
        int, Field(ge=0, description="Last steps trained at the final ranks, once the budget is spent.")
    ]
    interval: Annotated[int, Field(ge=1, description="Steps between two reallocations of the budget.")]
    orthogonality_weight: Annotated[
        float, Field(ge=0, description="Weight of the penalty that keeps the singular vectors orthogonal.")
    ]
    strengths: ResolvedStrengths


class ResolvedIa3(ApiModel):
    """The vectors of an IA3 run, every value decided."""

    target_modules: Annotated[list[str], Field(min_length=1)]
    feedforward_modules: list[str]
    strengths: ResolvedStrengths


class ResolvedPrefix(ApiModel):
    """The prefix of a prefix-tuning run, every value decided."""

    virtual_tokens: Annotated[int, Field(ge=1)]


class ResolvedBottleneck(ApiModel):
    """The bottleneck adapters of a run, every value decided."""

    size: Annotated[int, Field(ge=1)]
    placement: BottleneckPlacement


class ResolvedOsf(ApiModel):
    """The subspaces of an OSF run, every value decided."""

    preserved_fraction: Annotated[float, Field(gt=0, lt=1)]
    target_modules: Annotated[list[str], Field(min_length=1)]


class ResolvedNoPrivacy(ApiModel):
    """Trained without differential privacy (no spec.privacy)."""

    mechanism: Literal["none"]


class ResolvedPrivacy(ApiModel):
    """DP-SGD, every value decided but the noise, which the trainer derives from them (and records)."""

    mechanism: Literal["dp-sgd"]
    target_epsilon: Annotated[float, Field(gt=0)]
    delta: Annotated[float, Field(gt=0, lt=1)]
    max_grad_norm: Annotated[float, Field(gt=0)]
    sample_rate: Annotated[
        float, Field(gt=0, le=1, description="Each row's chance to be in a step's batch (Poisson sampling).")
    ]
    steps: Annotated[int, Field(ge=1, description="Optimizer steps: epochs / sampleRate.")]
    accountant: Annotated[Literal["rdp"], Field(description="How epsilon is counted: Renyi DP (Mironov 2017).")]


ResolvedPrivacyMechanism = Annotated[ResolvedNoPrivacy | ResolvedPrivacy, Field(discriminator="mechanism")]


class ResolvedSftObjective(ApiModel):
    """Supervised: the loss is on the dataset's answers."""

    type: Literal[Objective.SFT]


class ResolvedDpoObjective(ApiModel):
    """DPO against the base model: its log-likelihoods of both answers are computed before training."""

    type: Literal[Objective.DPO]
    beta: Annotated[float, Field(gt=0)]
    loss: DpoLoss
    reference: Annotated[Literal["base"], Field(description="The model the log ratios are taken against.")]


class ResolvedOrpoObjective(ApiModel):
    type: Literal[Objective.ORPO]
    beta: Annotated[float, Field(gt=0, description="Weight of the odds-ratio term.")]


class ResolvedDistillObjective(ApiModel):
    """Distillation from a teacher: logits (KL at a temperature mixed with the answers' cross-entropy) or
    sequence (the student tuned on the teacher's answers to the training prompts)."""

    type: Literal[Objective.DISTILL]
    teacher: Annotated[str, Field(description="The teacher's URI, as the manifest gave it.")]
    mode: Annotated[
        Literal[DistillMode.LOGITS, DistillMode.SEQUENCE],
        Field(description="auto resolved: logits when the tokenizers share their vocabulary, else sequence."),
    ]
    temperature: Annotated[float, Field(gt=0)]
    alpha: Annotated[float, Field(ge=0, le=1, description="Weight of the KL term; the label loss gets 1 - alpha.")]


ResolvedObjective = Annotated[
    ResolvedSftObjective | ResolvedDpoObjective | ResolvedOrpoObjective | ResolvedDistillObjective,
    Field(discriminator="type"),
]


class ResolvedAdapterTraining(ApiModel):
    """A LoRA or DoRA adapter (on a 4-bit base for qlora) trained on a frozen base."""

    adapter: Literal[AdapterType.LORA, AdapterType.DORA]
    method: Literal[MethodType.LORA, MethodType.QLORA]
    lora: ResolvedLora
    hyperparameters: ResolvedHyperparameters
    replay: ResolvedReplay
    objective: ResolvedObjective
    privacy: Annotated[
        ResolvedPrivacyMechanism,
        Field(description="spec.privacy resolved: mechanism dp-sgd with its values, or none."),
    ]


class ResolvedIa3Training(ApiModel):
    """IA3 vectors (on a 4-bit base for qlora) trained on a frozen base."""

    adapter: Literal[AdapterType.IA3]
    method: Literal[MethodType.LORA, MethodType.QLORA]
    ia3: ResolvedIa3
    hyperparameters: ResolvedHyperparameters
    replay: ResolvedReplay
    objective: ResolvedObjective


class ResolvedAdaLoraTraining(ApiModel):
    """An AdaLoRA adapter (on a 4-bit base for qlora) trained on a frozen base."""

    adapter: Literal[AdapterType.ADALORA]
    method: Literal[MethodType.LORA, MethodType.QLORA]
    adalora: ResolvedAdaLora
    hyperparameters: ResolvedHyperparameters
    replay: ResolvedReplay
    objective: ResolvedObjective


class ResolvedPrefixTraining(ApiModel):
    """A trained prefix (on a 4-bit base for qlora) before a frozen base: unpacked, full strength, no merge."""

    adapter: Literal[AdapterType.PREFIX]
    method: Literal[MethodType.LORA, MethodType.QLORA]
    prefix: ResolvedPrefix
    hyperparameters: ResolvedHyperparameters
    replay: ResolvedReplay
    objective: ResolvedObjective


class ResolvedBottleneckTraining(ApiModel):
    """Bottleneck adapters (on a 4-bit base for qlora) after a frozen base's sub-layers: full strength, no merge."""

    adapter: Literal[AdapterType.BOTTLENECK]
    method: Literal[MethodType.LORA, MethodType.QLORA]
    bottleneck: ResolvedBottleneck
    hyperparameters: ResolvedHyperparameters
    replay: ResolvedReplay
    objective: ResolvedObjective


class ResolvedOsfTraining(ApiModel):
    """OSF: the smaller singular directions of a 16-bit base's weights trained, the largest frozen; full
    strength (its update is no scaled addition)."""

    adapter: Literal[AdapterType.OSF]
    method: Literal[MethodType.LORA]
    osf: ResolvedOsf
    hyperparameters: ResolvedHyperparameters
    replay: ResolvedReplay
    objective: ResolvedObjective


class ResolvedFullTraining(ApiModel):
    """A full fine-tune: every weight is trained, no adapter."""

    adapter: Literal["none"]
    method: Literal[MethodType.FULL]
    hyperparameters: ResolvedHyperparameters
    replay: ResolvedReplay
    objective: ResolvedObjective


# The plan's result, one block per adapter, told apart by ``adapter`` ("none" for a full fine-tune).
# A new adapter adds its own member here (with its own required block, like ``lora`` or ``ia3``);
# docs/architecture.md says how.
ResolvedTraining = Annotated[
    ResolvedAdapterTraining
    | ResolvedAdaLoraTraining
    | ResolvedIa3Training
    | ResolvedPrefixTraining
    | ResolvedBottleneckTraining
    | ResolvedOsfTraining
    | ResolvedFullTraining,
    Field(discriminator="adapter"),
]


class GateCheck(ApiModel):
    """One check of the quality gate, as the trainer judged it."""

    name: Annotated[str, Field(description="e.g. task, forgetting.likelihood, forgetting.knownAnswers.")]
    passed: Annotated[
        bool | None, Field(description="null: reported, not judged (it does not decide the promotion).")
    ] = None
    detail: str = ""


class PrivacySpent(ApiModel):
    """What a differentially private run spent: epsilon at delta over the steps it took."""

    epsilon: Annotated[float, Field(ge=0)]
    delta: Annotated[float, Field(gt=0, lt=1)]
    target_epsilon: Annotated[float, Field(gt=0)]
    noise_multiplier: Annotated[float, Field(ge=0)]
    sample_rate: Annotated[float, Field(gt=0, le=1)]
    steps: Annotated[int, Field(ge=0)]


class TrainerResult(ApiModel):
    """Written by the trainer when it has published: where the run went and how good it is."""

    version: str | None = None
    manifest_uri: str | None = None
    promoted: Annotated[
        bool | None,
        Field(
            description=(
                "The trainer's verdict. The operator's QualityGatePassed condition is True only when the "
                "training Job succeeded, a version and its manifest were published and every judged gate check passed."
            )
        ),
    ] = None
    quality_gate_message: str | None = None
    gate_checks: Annotated[
        list[GateCheck] | None, Field(description="Every check of the quality gate, judged or only reported.")
    ] = None
    metrics: dict[str, float] | None = None
    privacy: Annotated[
        PrivacySpent | None,
        Field(description="spec.privacy: the privacy the training spent, as its accountant counted."),
    ] = None
    artifacts: list[ArtifactStatus] | None = None
    oci: Annotated[
        OciPushStatus | None,
        Field(description="spec.output.oci: the pushed artifact's reference and digest, or the push's error."),
    ] = None


class PhaseTransition(ApiModel):
    """One recorded phase change. Its id names the phase Event posted for it, so that Event is
    posted exactly once, even across operator restarts and retried requests."""

    id: int
    phase: Phase
    previous_phase: Phase | None = None
    reason: str
    message: str = ""
    time: str


class ChallengeOutcome(ApiModel):
    """How a retraining FineTuneJob's version fared against the champion of the channel its DriftMonitor
    guards: written by the operator once the comparison ended (the monitor's status records the same)."""

    monitor: Annotated[str, Field(description="The DriftMonitor that started this retraining.")]
    channel: str
    champion: Annotated[
        str, Field(description="The version it was compared with (empty: the comparison could not run).")
    ]
    promoted: Annotated[bool, Field(description="Whether the channel moved to this job's version.")]
    message: Annotated[str, Field(description="Why: the comparison's figures, or why it could not compare.")]
    time: str


class FineTuneJobStatus(ApiModel):
    phase: Phase | None = None
    conditions: list[Condition] | None = None
    phase_history: Annotated[
        list[PhaseTransition] | None,
        Field(description="The last phase transitions, oldest first (at most 16), each with the id of its Event."),
    ] = None
    observed_generation: int | None = None
    start_time: Annotated[
        str | None, Field(description="When the trainer first ran (the training pod became ready).")
    ] = None
    completion_time: Annotated[str | None, Field(description="When the job succeeded or failed.")] = None
    job_name: str | None = None
    preflight_job_name: str | None = None
    progress_text: Annotated[str | None, Field(description="step/total, for the printer column.")] = None
    progress: Progress | None = None
    preflight: PreflightReport | None = None
    resolved: Annotated[
        ResolvedTraining | None,
        Field(
            description="The values the trainer actually used, auto ones resolved (as the OpenAI fine-tuning API reports)."
        ),
    ] = None
    result: TrainerResult | None = None
    challenge: Annotated[
        ChallengeOutcome | None,
        Field(description="Set on a DriftMonitor's retraining once its version was compared with the champion."),
    ] = None
    notifications_delivered: Annotated[
        dict[str, str] | None,
        Field(
            description=(
                "<event id>/<webhook name> of each notification a receiver acknowledged, with when: what is "
                "not here is (re)sent, so a restarted operator sends each at least once."
            )
        ),
    ] = None


class FineTuneJob(ApiModel):
    """A whole manifest. ``metadata`` is Kubernetes' own and is kept as a plain dict."""

    api_version: Literal["kubetune.dev/v1alpha1"] = API_VERSION  # type: ignore[assignment]
    kind: Literal["FineTuneJob"] = KIND  # type: ignore[assignment]
    metadata: dict[str, Any] = Field(default_factory=dict)
    spec: FineTuneJobSpec
    status: FineTuneJobStatus | None = None
