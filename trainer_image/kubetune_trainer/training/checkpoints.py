"""Checkpoints that survive the pod: every save is uploaded, then a pointer names it.

Layout under the checkpoint URI: ``checkpoint-<step>/...`` (the Trainer's own folder:
weights, optimizer, scheduler, RNG and trainer state) and ``latest.json``, written only after
a checkpoint's upload finished, so a pod killed mid-upload never resumes from half a folder.

The pointer names the run it belongs to (``run``: a digest of the job's uid, spec, data and base
model, ``run_identity``). The default checkpoint URI is keyed by the job's name, which another run
reuses (a FineTuneJob deleted and applied again with new data, a second local run of a manifest):
its checkpoints are never resumed, since they were trained on something else.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from transformers import TrainerCallback

from kubetune_trainer.errors import ConfigurationError
from kubetune_trainer.storage import ObjectStore, join_uri
from kubetune_trainer.training.sharding import written_by

log = logging.getLogger(__name__)
POINTER = "latest.json"
KEEP_REMOTE = 2


def run_identity(*, job_uid: str, spec: dict[str, Any], data_sha256: str, base_model_sha256: str) -> str:
    """What makes two runs the same run, so one may resume the other's checkpoint: the same object
    (uid; none on a laptop), the same spec, the same data and the same base model."""
    text = json.dumps([job_uid, spec, data_sha256, base_model_sha256], sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


class CheckpointStore:
    """The checkpoints of one job. The pointer is moved by conditional updates from the version
    this store last read or wrote (none: only if there is no pointer yet), so a second writer of
    the same job (an old pod still terminating beside its replacement) fails its move instead of
    interleaving checkpoints with this one."""

    def __init__(self, store: ObjectStore, uri: str, run: str = "") -> None:
        self.store = store
        self.uri = uri.rstrip("/")
        self.run = run  # this run's identity (run_identity); a pointer of another run is not resumed
        self._pointer_tag: str | None = None  # the pointer's version as this store last saw it

    def upload(self, local: Path, step: int, *, sharded: bool = False) -> str:
        """Rank 0: the checkpoint's files, then the pointer. ``sharded``: the other ranks have uploaded
        their own files (``upload_own_files``), which are not uploaded again from a shared scratch."""
        target = join_uri(self.uri, f"checkpoint-{step}")
        for path in sorted(p for p in local.rglob("*") if p.is_file()):
            if not sharded or written_by(path) in (None, 0):
                self.store.upload(path, join_uri(target, *path.relative_to(local).parts))
        pointer = json.dumps({"step": step, "uri": target, "run": self.run}).encode()
        self._pointer_tag = self.store.replace_if_unchanged(join_uri(self.uri, POINTER), pointer, self._pointer_tag)
        self._prune(step)
        return target

    def upload_own_files(self, local: Path, step: int, rank: int) -> None:
        """A rank other than 0 of a sharded run: the files it wrote itself (its shards and RNG state),
        from its own node's scratch, before rank 0 moves the pointer."""
        target = join_uri(self.uri, f"checkpoint-{step}")
        for path in sorted(p for p in local.rglob("*") if p.is_file() and written_by(p) == rank):
            self.store.upload(path, join_uri(target, *path.relative_to(local).parts))

    def _saved_steps(self) -> list[int]:
        return sorted(
            {
                int(part.split("-", 1)[1])
                for uri in self.store.list(self.uri + "/")
                for part in uri[len(self.uri) + 1 :].split("/")[:1]
                if part.startswith("checkpoint-") and part.split("-", 1)[1].isdigit()
            }
        )

    def _prune(self, newest: int) -> None:
        for step in self._saved_steps()[:-KEEP_REMOTE]:
            if step != newest:
                self.store.delete_tree(join_uri(self.uri, f"checkpoint-{step}") + "/")

    def discard(self) -> int:
        """Delete the pointer, then every ``checkpoint-<step>`` folder (nothing else under the URI, which
        the manifest may have set): a private run's, once it is published, since they hold the states of
        its secret generators (training/private.py). Returns how many checkpoints were deleted."""
        self.store.delete(join_uri(self.uri, POINTER))
        steps = self._saved_steps()
        for step in steps:
            self.store.delete_tree(join_uri(self.uri, f"checkpoint-{step}") + "/")
        return len(steps)

    def latest(self) -> tuple[int, str] | None:
        """The step and URI ``latest.json`` names, refused unless it names this store's own
        ``checkpoint-<step>`` folder: the pointer is read back from storage the tenant can write,
        and resuming reads whatever it points at."""
        pointer = join_uri(self.uri, POINTER)
        if not self.store.exists(pointer):
            return None
        raw, self._pointer_tag = self.store.read_tagged(pointer)
        try:
            data = json.loads(raw)
            step, uri = data["step"], data["uri"]
        except (ValueError, KeyError, TypeError) as err:
            raise ConfigurationError(f"{pointer}: not a checkpoint pointer ({err}); refusing to resume") from err
        if isinstance(step, bool) or not isinstance(step, int) or step < 0:
            raise ConfigurationError(f"{pointer}: step {step!r} is not a step number; refusing to resume")
        expected = join_uri(self.uri, f"checkpoint-{step}")
        if uri != expected:
            raise ConfigurationError(
                f"{pointer}: points at {uri!r}, not at this job's {expected}; refusing to resume from outside "
                f"the checkpoint prefix {self.uri}/"
            )
        if data.get("run") != self.run:
            log.warning(
                "%s: the checkpoints there belong to another run of this job name (its uid, spec, data or base "
                "model differ): not resumed, training starts from the base model",
                pointer,
            )
            return None
        return step, expected

    def download_latest(self, dest_root: Path) -> Path | None:
        found = self.latest()
        if found is None:
            return None
        step, uri = found
        local = dest_root / f"checkpoint-{step}"
        if local.exists():
            shutil.rmtree(local)
        self.store.download_tree(uri + "/", local)
        return local


class UploadCheckpoints(TrainerCallback):
    """After each local save, upload it and move the pointer (rank 0). ``sharded`` (FSDP): every rank
    wrote its own shards into its own node's scratch, so each uploads them, and rank 0 moves the pointer
    only once all have (a barrier): a pointer never names a checkpoint missing a shard."""

    def __init__(
        self,
        checkpoints: CheckpointStore,
        on_uploaded: Callable[[int], None] | None = None,
        *,
        sharded: bool = False,
    ) -> None:
        self.checkpoints = checkpoints
        self.on_uploaded = on_uploaded
        self.sharded = sharded

    def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        local = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        if self.sharded:
            import torch.distributed as dist

            if not state.is_world_process_zero and local.exists():
                self.checkpoints.upload_own_files(local, state.global_step, args.process_index)
            dist.barrier()
        if not state.is_world_process_zero or not local.exists():
            return
        uri = self.checkpoints.upload(local, state.global_step, sharded=self.sharded)
        log.info("checkpoint step %d uploaded to %s", state.global_step, uri)
        if self.on_uploaded is not None:
            self.on_uploaded(state.global_step)
