"""Publish a run's artifacts under a new, never-overwritten version, manifest last.

Layout: ``<output>/<version>/...artifacts...`` and ``<output>/<version>/manifest.json``. The
manifest is written only after every artifact uploaded, with a conditional write, so a
version without a manifest is by definition incomplete and :func:`list_versions` skips it.
"""

from __future__ import annotations

import json
import secrets
import subprocess
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import kubetune.api
from kubetune.api.v1alpha1 import ResolvedTraining
from kubetune_trainer.errors import ConfigurationError
from kubetune_trainer.storage import ObjectStore, StorageError, join_uri, safe_relative_key

if TYPE_CHECKING:  # types only: publishing needs neither torch nor the evaluation code
    from kubetune_trainer.data.prepare import PreparedDataset
    from kubetune_trainer.evaluation.report import EvaluationReport
    from kubetune_trainer.training.loop import TrainOutcome

MANIFEST = "manifest.json"


@dataclass(frozen=True)
class RunRecord:
    """What a finished run tells its lineage manifest."""

    job: dict[str, Any]  # the FineTuneJob's metadata
    name: str
    spec: dict[str, Any]  # the FineTuneJob's spec as the run read it (camelCase): what `kubetune reproduce` runs again
    base_model_uri: str
    base_model_sha256: str
    data: PreparedDataset
    resolved: ResolvedTraining
    outcome: TrainOutcome
    evaluation: EvaluationReport
    continual: dict[str, Any] | None = None  # the versions this run continued (models.continual)
    distill: dict[str, Any] | None = None  # method.objective distill: the teacher and how it taught


def lineage_manifest(run: RunRecord) -> dict[str, Any]:
    """The version's manifest: where it came from (job, base model, data), how it was made (the
    resolved plan, training), how good it is (evaluation) and whether it was promoted."""
    return {
        "job": {"name": run.name, "namespace": run.job.get("namespace"), "uid": run.job.get("uid")},
        "spec": run.spec,
        "baseModel": {"uri": run.base_model_uri, "sha256": run.base_model_sha256},
        **({"continual": run.continual} if run.continual else {}),
        **({"distill": run.distill} if run.distill else {}),
        "dataset": {
            "sources": run.data.source_uris,
            # How the sources were mixed (a retraining's replay of its champion's data shows here).
            "mix": [
                {
                    "uri": source.uri,
                    "format": source.format,
                    "weight": source.weight,
                    "role": source.role,
                    "examples": source.rows_valid,
                }
                for source in run.data.report.sources
            ],
            "contentSha256": run.data.content_sha256,
            "splits": run.data.report.splits,
            **({"replay": run.data.replay} if run.data.replay else {}),
        },
        "resolved": run.resolved.to_manifest(),
        **({"privacy": run.outcome.privacy.to_manifest()} if run.outcome.privacy else {}),
        "training": {
            "globalStep": run.outcome.global_step,
            "stoppedEarly": run.outcome.stopped_early,
            "bestEvalLoss": run.outcome.best_eval_loss,
            "tokensPerSecond": round(run.outcome.tokens_per_second, 1),
            "trainedTokensPerSecond": round(run.outcome.trained_tokens_per_second, 1),
            "paddingFraction": round(run.outcome.padding_fraction, 4),
            "peakMemoryBytes": run.outcome.peak_memory_bytes,
            "resumedFromStep": run.outcome.resumed_from_step,
            **({"adapterStrength": run.outcome.strength.to_dict()} if run.outcome.strength else {}),
        },
        "curation": "reports/curation.json",
        "driftProfile": "reports/drift-profile",  # profile.json and embeddings.npy (kubetune_trainer.drift.profile)
        "evaluation": run.evaluation.to_dict(),
        "promoted": run.evaluation.gate.passed,
    }


@dataclass(frozen=True)
class PublishedArtifact:
    name: str  # path relative to the version prefix
    uri: str
    sha256: str
    size_bytes: int


@dataclass(frozen=True)
class PublishedRun:
    version: str
    version_uri: str
    manifest_uri: str
    artifacts: list[PublishedArtifact]


def new_version(now: datetime | None = None) -> str:
    stamp = (now or datetime.now(UTC)).strftime("%Y%m%d-%H%M%S")
    return f"v{stamp}-{secrets.token_hex(3)}"


def code_version() -> dict[str, str]:
    version = {"kubetune": kubetune.api.__version__}
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
            timeout=5,
            cwd=Path(__file__).parent,
        ).stdout.strip()
        version["gitCommit"] = commit
    except (OSError, subprocess.SubprocessError):
        pass
    return version


def publish_run(local_dir: Path, output_uri: str, store: ObjectStore, manifest: dict[str, Any]) -> PublishedRun:
    """Upload everything under ``local_dir`` to a fresh version, then the manifest."""
    version = new_version()
    version_uri = join_uri(output_uri, version)
    if store.list(version_uri + "/"):
        raise StorageError(f"{version_uri}: already exists; refusing to overwrite a published version")
    files = sorted(p for p in local_dir.rglob("*") if p.is_file())
    artifacts = []
    for path in files:
        relative = path.relative_to(local_dir).as_posix()
        uri = join_uri(version_uri, *relative.split("/"))
        sha256 = store.upload(path, uri, if_absent=True)
        artifacts.append(PublishedArtifact(relative, uri, sha256, path.stat().st_size))
    document = {
        **manifest,
        "apiVersion": "kubetune.dev/v1alpha1",
        "kind": "ModelVersion",
        "version": version,
        "publishedAt": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "code": code_version(),
        "artifacts": [{"path": a.name, "sha256": a.sha256, "sizeBytes": a.size_bytes} for a in artifacts],
    }
    manifest_uri = join_uri(version_uri, MANIFEST)
    store.write_bytes(manifest_uri, json.dumps(document, indent=2, sort_keys=True).encode(), if_absent=True)
    return PublishedRun(version, version_uri, manifest_uri, artifacts)


def read_manifest(version_uri: str, store: ObjectStore) -> dict[str, Any]:
    return dict(json.loads(store.read_bytes(join_uri(version_uri, MANIFEST))))


def verify_version(version_uri: str, store: ObjectStore) -> tuple[list[str], list[str]]:
    """Re-check a published version against its manifest: ``(intact, problems)``, one line each.

    Every artifact the manifest lists must exist with its recorded size and SHA-256, at a path
    inside the version; every object under the version must be listed (or be the manifest).
    Raises :class:`StorageError` when the manifest itself cannot be read.
    """
    version_uri = version_uri.rstrip("/")
    try:
        artifacts = read_manifest(version_uri, store)["artifacts"]
        listed = {str(entry["path"]): entry for entry in artifacts}
    except (ValueError, KeyError, TypeError) as err:
        raise StorageError(f"{join_uri(version_uri, MANIFEST)}: not a version manifest ({err})") from err
    intact, problems = [], []
    for path, entry in sorted(listed.items()):
        try:
            uri = join_uri(version_uri, *safe_relative_key(path, join_uri(version_uri, MANIFEST)).parts)
        except ConfigurationError as err:
            problems.append(str(err))
            continue
        if not store.exists(uri):
            problems.append(f"{uri}: missing (the manifest lists it)")
            continue
        sha256, size = store.digest(uri)
        if sha256 != entry.get("sha256") or size != entry.get("sizeBytes"):
            problems.append(
                f"{uri}: sha256 {sha256[:12]}…, {size} bytes; the manifest says "
                f"{str(entry.get('sha256'))[:12]}…, {entry.get('sizeBytes')} bytes"
            )
        else:
            intact.append(f"{uri}: sha256 {sha256[:12]}…, {size} bytes")
    prefix = version_uri + "/"
    for uri in store.list(prefix):
        relative = uri[len(prefix) :]
        if relative != MANIFEST and relative not in listed:
            problems.append(f"{uri}: not in the manifest")
    return intact, problems


def promotion_mismatches(
    manifest: dict[str, Any], *, job_uid: str | None, claimed_checks: dict[str, bool | None]
) -> list[str]:
    """Where a version's manifest disagrees with a trainer's report that it was promoted (empty when
    it agrees): the manifest must belong to this FineTuneJob (its uid), say ``promoted``, and list
    exactly the gate checks reported, each with the same verdict, every judged one passed."""
    problems = []
    made_by = (manifest.get("job") or {}).get("uid")
    if job_uid and made_by != job_uid:
        problems.append(f"the manifest was written by FineTuneJob uid {made_by!r}, not this one ({job_uid})")
    if manifest.get("promoted") is not True:
        problems.append(f"the manifest says promoted: {json.dumps(manifest.get('promoted'))}")
    gate = (manifest.get("evaluation") or {}).get("gate") or {}
    recorded = {
        str(check.get("name")): check.get("passed") for check in gate.get("checks") or [] if isinstance(check, dict)
    }
    for name in sorted(set(recorded) | set(claimed_checks)):
        if name not in recorded:
            problems.append(f"gate check {name!r} was reported but the manifest has no such check")
        elif name not in claimed_checks:
            problems.append(f"the manifest's gate check {name!r} was not reported")
        elif recorded[name] != claimed_checks[name]:
            problems.append(
                f"gate check {name!r}: reported passed={json.dumps(claimed_checks[name])}, "
                f"the manifest says passed={json.dumps(recorded[name])}"
            )
    failed = sorted(name for name, passed in recorded.items() if passed is False)
    if failed:
        problems.append(f"the manifest's gate checks {', '.join(failed)} did not pass")
    return problems


def list_versions(output_uri: str, store: ObjectStore) -> list[str]:
    """Complete versions only (those with a manifest), oldest first."""
    prefix = output_uri.rstrip("/") + "/"
    versions = set()
    for uri in store.list(prefix):
        relative = uri[len(prefix) :]
        parts = relative.split("/")
        if len(parts) == 2 and parts[1] == MANIFEST and parts[0].startswith("v"):
            versions.add(parts[0])
    return sorted(versions)
