"""DriftMonitor API, version v1alpha1: a promotion channel watched for drift in production inputs.

A DriftMonitor names the channel it guards (a FineTuneJob's ``output.uri`` and ``output.channel``)
and the prefix where request logs arrive. Each check compares the newest window of requests with the
reference profile of the version the channel serves (``kubetune drift check``, run as a short Job);
after ``detection.persistence`` drifted windows in a row, outside the cooldown and within the limits,
a retraining FineTuneJob is made from ``retraining.template`` with a replay of the champion's data,
and its version is promoted only if it beats the champion on the new data without losing more than
``promotion.tolerance`` on the old. Without ``retraining`` (or without labelled new data) the monitor
reports the drift and starts nothing.

The same models give the CRD (``kubetune.api.crd``), ``kubetune validate`` and the operator's
checks, as for FineTuneJob. The spec may change after creation: a monitor is long-lived and its
thresholds are tuned while it runs.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Any, ClassVar, Literal

from pydantic import AfterValidator, ConfigDict, Field

from kubetune.api.rules import Rule, rules_schema
from kubetune.api.v1alpha1 import (
    API_VERSION,
    DATA_URI_PATTERN,
    DEFAULT_REPLAY_FRACTION,
    DNS_LABEL_PATTERN,
    MAX_URI_LENGTH,
    SET_LIST,
    ApiModel,
    AzureSpec,
    Condition,
    CpuQuantity,
    FineTuneJobSpec,
    GcsSpec,
    HubSpec,
    MemoryQuantity,
    ReplayFraction,
    S3Spec,
    ScratchQuantity,
    unique_values,
)

KIND = "DriftMonitor"
PLURAL = "driftmonitors"
SINGULAR = "driftmonitor"
SHORT_NAMES = ["dm"]

# The smallest window the detectors were measured to catch a 50% shift in at least 95% of checks
# (docs/measurements/drift.md, SmolLM2 on real text; a test holds this to the recording); a smaller
# minSamples is allowed but said to be underpowered there.
DOCUMENTED_MIN_WINDOW = 50
# The default wait is larger: at 200 requests a 10% shift was found in 60-72% of windows, at 50 in
# 4-13% (the same recording), and a monitor acts only after `persistence` drifted windows anyway.
DEFAULT_MIN_SAMPLES = 200
MAX_WINDOW = 5000
MAX_HISTORY = 16


class DriftMethod(StrEnum):
    """The two-sample tests a check may run (``kubetune_trainer.drift.detectors``), all combined by Holm."""

    EMBEDDINGS = "embeddings"  # MMD on the base model's reduced prompt embeddings, permutation test
    LENGTHS = "lengths"  # Kolmogorov-Smirnov on prompt lengths in tokens
    LABELS = "labels"  # chi-square on the answer labels, where answers are labels
    LOSS = "loss"  # the tuned model's mean per-token loss on the prompts


class MonitorTarget(ApiModel):
    output_uri: Annotated[
        str,
        Field(
            pattern=DATA_URI_PATTERN,
            max_length=MAX_URI_LENGTH,
            description="The output prefix the guarded versions are published under (a FineTuneJob's output.uri).",
        ),
    ]
    channel: Annotated[
        str,
        Field(
            pattern=DNS_LABEL_PATTERN,
            max_length=63,
            description="The channel under <outputUri>/channels/ whose current version is checked and may be replaced.",
        ),
    ]


class SamplesSpec(ApiModel):
    uri: Annotated[
        str,
        Field(
            pattern=DATA_URI_PATTERN,
            max_length=MAX_URI_LENGTH,
            description=(
                "Request logs (JSONL, JSON, CSV or Parquet, optionally gzip/zstd) under this prefix; a 'label' or "
                "'feedback' field is an answer a person confirmed, compared with the training answers by the labels test."
            ),
        ),
    ]


class ScheduleSpec(ApiModel):
    interval_minutes: Annotated[
        int, Field(ge=5, le=7 * 24 * 60, description="Minutes between checks (each a short Job).")
    ] = 60


class DetectionSpec(ApiModel):
    rules: ClassVar[tuple[Rule, ...]] = (
        Rule(
            "self.minSamples <= self.maxSamples",
            "detection.minSamples must not exceed detection.maxSamples",
            ".minSamples",
            lambda s: s.min_samples <= s.max_samples,
        ),
    )
    model_config = ConfigDict(json_schema_extra=rules_schema(rules))

    methods: Annotated[
        list[DriftMethod],
        AfterValidator(unique_values),
        Field(
            min_length=1,
            max_length=4,
            json_schema_extra=SET_LIST,
            description="Tests run on each window; their p-values are Holm-corrected so alpha holds for the decision.",
        ),
    ] = Field(default_factory=lambda: list(DriftMethod))
    alpha: Annotated[
        float,
        Field(gt=0, le=0.2, description="Significance level of each check's decision, all methods together."),
    ] = 0.05
    permutations: Annotated[
        int, Field(ge=19, le=10000, description="Shufflings of each permutation test (p-values resolve to 1/(n+1)).")
    ] = 500
    min_samples: Annotated[
        int,
        Field(
            ge=20,
            le=MAX_WINDOW,
            description=(
                f"A check waits for at least this many new requests; below {DOCUMENTED_MIN_WINDOW} a 50% shift "
                "is caught less often than 95% of the time, and larger windows find smaller shifts (docs/drift.md)."
            ),
        ),
    ] = DEFAULT_MIN_SAMPLES
    max_samples: Annotated[
        int, Field(ge=20, le=MAX_WINDOW, description="A check reads at most this many of the newest requests.")
    ] = 500
    persistence: Annotated[
        int,
        Field(
            ge=1,
            le=10,
            description="Drifted checks in a row before the monitor acts: one false alarm alone never retrains.",
        ),
    ] = 2


class RetrainingSpec(ApiModel):
    template: Annotated[
        FineTuneJobSpec,
        Field(
            description=(
                "The challenger's FineTuneJob spec; its dataset.sources hold the labelled new data. It passes the "
                "same validation and tenant policy as a FineTuneJob a user applies."
            )
        ),
    ]
    replay_fraction: Annotated[
        ReplayFraction,
        Field(
            description=(
                "Share of the champion's training rows replayed with the new data (its sources' weight in the "
                "training split; 0 = none); recorded in the challenger's lineage."
            ),
        ),
    ] = DEFAULT_REPLAY_FRACTION
    max_jobs: Annotated[int, Field(ge=1, le=100, description="Retraining jobs at most per period.")] = 1
    period_hours: Annotated[int, Field(ge=1, le=365 * 24, description="The period maxJobs counts over.")] = 7 * 24


class PromotionSpec(ApiModel):
    tolerance: Annotated[
        float,
        Field(
            ge=0,
            le=1,
            description=(
                "How much of the primary metric the challenger may lose against the champion on the champion's test "
                "set and on the regression set (0.02 = 2 points); on the new data it must win (95% interval above 0)."
            ),
        ),
    ] = 0.02


class CheckResources(ApiModel):
    """What each check's pod gets: it loads the base model to embed the window, on CPU."""

    cpu: CpuQuantity = "2"
    memory: MemoryQuantity = "8Gi"
    scratch_size: Annotated[
        ScratchQuantity, Field(description="Ephemeral space for the base model and the version's adapter.")
    ] = "20Gi"


class DriftMonitorSpec(ApiModel):
    rules: ClassVar[tuple[Rule, ...]] = (
        Rule(
            "!has(self.retraining) || self.retraining.template.output.uri == self.target.outputUri",
            "retraining.template.output.uri must be target.outputUri: a challenger is published beside the champion",
            ".retraining.template.output.uri",
            lambda s: s.retraining is None or s.retraining.template.output.uri == s.target.output_uri,
        ),
    )
    model_config = ConfigDict(json_schema_extra=rules_schema(rules))

    target: MonitorTarget
    samples: SamplesSpec
    s3: Annotated[S3Spec, Field(description="How the check Jobs reach the request logs and the versions.")] = Field(
        default_factory=S3Spec
    )
    hub: Annotated[
        HubSpec,
        Field(description="How the check Jobs reach the Hub when a version's base model is an hf:// repository."),
    ] = Field(default_factory=HubSpec)
    gcs: Annotated[GcsSpec, Field(description="How the check Jobs reach gs:// request logs and versions.")] = Field(
        default_factory=GcsSpec
    )
    azure: Annotated[AzureSpec, Field(description="How the check Jobs reach az:// request logs and versions.")] = Field(
        default_factory=AzureSpec
    )
    schedule: ScheduleSpec = Field(default_factory=ScheduleSpec)
    resources: CheckResources = Field(default_factory=CheckResources)
    detection: DetectionSpec = Field(default_factory=DetectionSpec)
    cooldown_minutes: Annotated[
        int,
        Field(ge=0, le=365 * 24 * 60, description="After a retraining starts, drift starts no other for this long."),
    ] = 24 * 60
    retraining: Annotated[
        RetrainingSpec | None,
        Field(description="Unset: confirmed drift is reported (condition, Event, metric) and nothing is retrained."),
    ] = None
    promotion: PromotionSpec = Field(default_factory=PromotionSpec)
    suspend: Annotated[bool, Field(description="Stop checking (true); history and status are kept.")] = False


# --------------------------------------------------------------------------- status


class Verdict(StrEnum):
    NO_DRIFT = "NoDrift"
    DRIFTED = "Drifted"  # this window drifted, not yet `persistence` in a row
    CONFIRMED = "DriftConfirmed"
    TOO_FEW_SAMPLES = "TooFewSamples"
    CHECK_FAILED = "CheckFailed"


class Action(StrEnum):
    NONE = "None"
    RETRAINING = "RetrainingStarted"
    COOLDOWN = "Cooldown"
    LIMIT_REACHED = "LimitReached"
    NOT_CONFIGURED = "RetrainingNotConfigured"
    NO_LABELS = "NoLabelledData"


class MethodScore(ApiModel):
    method: str
    statistic: float
    p_value: float
    adjusted_p_value: Annotated[float, Field(description="Holm-corrected over the methods that ran.")]


class CheckDecision(ApiModel):
    verdict: Verdict
    action: Action = Action.NONE
    message: str = ""


class CheckRecord(ApiModel):
    job_name: str
    time: str
    version: Annotated[str, Field(description="The channel's version the window was compared with.")]
    sample_size: int
    verdict: Verdict
    min_adjusted_p_value: float | None = None


class RetrainingRecord(ApiModel):
    job_name: str
    start_time: str
    outcome: Annotated[
        Literal["Running", "Trained", "Promoted", "NotPromoted", "Failed"],
        Field(
            description="Trained: the FineTuneJob succeeded, the challenger awaits its comparison with the champion."
        ),
    ] = "Running"
    version: str | None = None
    message: str = ""


class DriftMonitorStatus(ApiModel):
    conditions: list[Condition] | None = None
    observed_generation: int | None = None
    checks: Annotated[
        int | None, Field(description="Checks decided so far; the next check Job is numbered after it.")
    ] = None
    newest_sample: Annotated[
        str | None, Field(description="The newest request-log file a decided check read; later checks read after it.")
    ] = None
    champion: Annotated[str | None, Field(description="The version the channel serves.")] = None
    last_check_time: str | None = None
    sample_size: int | None = None
    methods: list[MethodScore] | None = None
    decision: CheckDecision | None = None
    consecutive_drifted: int | None = None
    history: Annotated[
        list[CheckRecord] | None, Field(description=f"The last checks, oldest first (at most {MAX_HISTORY}).")
    ] = None
    retrainings: Annotated[
        list[RetrainingRecord] | None, Field(description="The retraining jobs this monitor started, oldest first.")
    ] = None
    promoted_version: Annotated[str | None, Field(description="The last challenger promoted by this monitor.")] = None


class DriftCheckReport(ApiModel):
    """What one check found, as ``kubetune drift check --report`` writes it (in a check Job, to the
    pod's termination message, which the operator reads): the one contract between the check pod and
    the operator. Compact: a termination message holds at most 4 KiB."""

    version: Annotated[str, Field(description="The version the window was compared with.")]
    sample_size: int
    labelled: Annotated[int, Field(description="Requests of the window with a confirmed label.")]
    newest: Annotated[
        str, Field(description="The newest request-log file read: the next check reads only files after it.")
    ]
    training_sources: Annotated[
        list[str], Field(description="The checked version's training data (its lineage), replayed by a retraining.")
    ]
    drifted: bool
    alpha: float
    methods: list[MethodScore]
    message: str = ""


class SplitComparison(ApiModel):
    examples: int
    champion: float
    challenger: float
    ci_low: Annotated[float | None, Field(description="95% paired-bootstrap interval of challenger - champion.")] = None
    ci_high: float | None = None
    passed: bool


class ChallengeReport(ApiModel):
    """What ``kubetune challenge --report`` writes: the challenger against the champion on the new data
    (a win: the interval above 0), the champion's own test rows and the general prompts (within the
    tolerance), and whether the channel moved. Compact, like :class:`DriftCheckReport`."""

    champion: str
    challenger: str
    metric: str
    new_data: SplitComparison
    old_data: SplitComparison
    general: SplitComparison | None = None
    promoted: bool
    message: str = ""


class DriftMonitor(ApiModel):
    api_version: Literal["kubetune.dev/v1alpha1"] = API_VERSION  # type: ignore[assignment]
    kind: Literal["DriftMonitor"] = KIND  # type: ignore[assignment]
    metadata: dict[str, Any] = Field(default_factory=dict)
    spec: DriftMonitorSpec
    status: DriftMonitorStatus | None = None
