"""What every stage of a run is given: the job, where it works, where it reports, and its environment."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

from kubetune.api.v1alpha1 import FineTuneJob, FineTuneJobSpec
from kubetune_trainer.environment import TrainerEnvironment
from kubetune_trainer.errors import ConfigurationError
from kubetune_trainer.stages import StageClock
from kubetune_trainer.storage import ObjectStore, join_uri


class Mode(StrEnum):
    LOCAL = "run"
    PREFLIGHT = "preflight"
    TRAIN = "train"


@dataclass(frozen=True)
class Reproduction:
    """``kubetune reproduce``: the version run again, and what its inputs must hash to."""

    version_uri: str
    base_model_sha256: str
    data_sha256: str

    def check(self, what: str, recorded: str, now: str) -> None:
        if recorded != now:
            raise ConfigurationError(
                f"cannot reproduce {self.version_uri}: its {what} changed since it was published (SHA-256 "
                f"{now[:12]}…, recorded {recorded[:12]}…)"
            )


@dataclass
class RunContext:
    job: FineTuneJob
    mode: Mode
    workdir: Path
    store: ObjectStore
    clock: StageClock
    reporters: Any
    environment: TrainerEnvironment
    max_steps: int | None = None
    facts: dict[str, Any] = field(default_factory=dict)
    reproducing: Reproduction | None = None

    @property
    def spec(self) -> FineTuneJobSpec:
        return self.job.spec

    @property
    def name(self) -> str:
        return str(self.job.metadata.get("name") or "finetunejob")

    @property
    def is_main_process(self) -> bool:
        return self.environment.is_main_process

    @property
    def checkpoint_uri(self) -> str:
        return self.spec.checkpoint.uri or join_uri(self.spec.output.uri, "checkpoints", self.name)
