"""The data stage: sources → validated examples → curated → split → mixed, with a report.

Order matters: validation, exact dedup, near dedup and the length filter run over all
sources together (so duplicates across sources are caught and near-duplicate pairs cannot
straddle splits); the hash split comes next; source weights apply to the train split only,
so validation and test stay clean.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field, replace

from kubetune.api.v1alpha1 import DatasetFormat, DatasetSource, DatasetSpec, InvalidRowPolicy
from kubetune_trainer.data import curation
from kubetune_trainer.data.formats import RowProblem, apply_column_mapping, detect_format, to_example
from kubetune_trainer.data.readers import RawRow, is_supported, read_rows
from kubetune_trainer.data.report import CurationReport, SourceStats
from kubetune_trainer.data.types import Example
from kubetune_trainer.errors import ConfigurationError
from kubetune_trainer.storage import ObjectStore, StorageError

MAX_LISTED_PROBLEMS = 20


class DatasetError(ConfigurationError):
    """The dataset cannot be used as the spec says; the message names file, line and field."""


@dataclass
class PreparedDataset:
    train: list[Example]
    validation: list[Example]
    test: list[Example]
    report: CurationReport
    content_sha256: str
    source_uris: list[str] = field(default_factory=list)
    token_lengths: list[int] = field(default_factory=list)  # of the curated examples, all splits
    # Set once replay rows are mixed into ``train``: what was replayed, for the lineage manifest.
    replay: dict[str, str | int] | None = None


@dataclass
class _Problems:
    policy: InvalidRowPolicy
    report: CurationReport
    messages: list[str] = field(default_factory=list)

    def add(self, where: str, unit: str, problem: str, reason: str) -> None:
        message = f"{where}: {problem}" if unit else problem
        self.messages.append(message)
        self.report.invalid_rows[reason] += 1
        if len(self.report.invalid_samples) < MAX_LISTED_PROBLEMS:
            self.report.invalid_samples.append(message)

    def raise_if_rejecting(self) -> None:
        if self.policy == InvalidRowPolicy.REJECT and self.messages:
            shown = "\n  ".join(self.messages[:MAX_LISTED_PROBLEMS])
            more = len(self.messages) - MAX_LISTED_PROBLEMS
            tail = f"\n  ... and {more} more" if more > 0 else ""
            raise DatasetError(
                f"{len(self.messages)} invalid row(s) and spec.dataset.invalidRows is 'reject' "
                f"(set it to 'drop' to skip them):\n  {shown}{tail}"
            )


def _source_files(source: DatasetSource, store: ObjectStore, index: int) -> list[str]:
    try:
        found = store.list(source.uri)
    except StorageError as err:
        raise DatasetError(f"spec.dataset.sources[{index}].uri: {err}") from err
    files = [uri for uri in found if is_supported(uri)]
    if not files:
        detail = f"found only {', '.join(found[:3])}" if found else "nothing found"
        raise DatasetError(
            f"spec.dataset.sources[{index}].uri: {source.uri}: no .jsonl/.json/.csv/.parquet files ({detail})"
        )
    return files


def _read_source(
    source: DatasetSource, index: int, store: ObjectStore, problems: _Problems, digest: hashlib._Hash
) -> tuple[list[Example], SourceStats]:
    files = _source_files(source, store, index)
    stats = SourceStats(uri=source.uri, files=files, format=str(source.format), weight=source.weight)
    examples: list[Example] = []
    formats_seen: set[str] = set()
    for uri in files:
        try:
            payload = store.read_bytes(uri)
        except StorageError as err:
            raise DatasetError(f"spec.dataset.sources[{index}]: {err}") from err
        digest.update(uri.encode() + b"\x00" + hashlib.sha256(payload).digest())
        try:
            rows = list(read_rows(uri, payload))
        except ValueError as err:
            raise DatasetError(str(err)) from err
        fmt = DatasetFormat(source.format)
        for row in rows:
            stats.rows_read += 1
            example = _convert(row, source, fmt, problems, formats_seen)
            if example is not None:
                stats.rows_valid += 1
                examples.append(example)
    if source.format == DatasetFormat.AUTO:
        stats.format = "auto: " + ", ".join(sorted(formats_seen)) if formats_seen else "auto: none"
    return examples, stats


def _convert(
    row: RawRow, source: DatasetSource, fmt: DatasetFormat, problems: _Problems, formats_seen: set[str]
) -> Example | None:
    if row.error is not None or row.data is None:
        problems.add(row.where, row.unit, row.error or "unreadable", "malformed")
        return None
    data = apply_column_mapping(row.data, source.column_mapping)
    if fmt == DatasetFormat.AUTO:
        detected = detect_format(set(data))
        if detected is None:
            columns = ", ".join(sorted(data)) or "none"
            problems.add(
                row.where,
                row.unit,
                f"cannot detect the format from columns ({columns}); expected messages/conversations, "
                "instruction+output, prompt+completion or text (or set format/columnMapping)",
                "unknown_format",
            )
            return None
        fmt = detected
    formats_seen.add(str(fmt))
    try:
        example = to_example(data, fmt)
    except RowProblem as problem:
        problems.add(row.where, row.unit, str(problem), problem.reason)
        return None
    return replace(example, source=row.source, row=row.number)


def prepare_dataset(
    spec: DatasetSpec, store: ObjectStore, count_tokens: Callable[[Example], int], *, max_tokens: int
) -> PreparedDataset:
    report = CurationReport()
    problems = _Problems(InvalidRowPolicy(spec.invalid_rows), report)
    digest = hashlib.sha256()
    per_source: list[tuple[DatasetSource, list[Example]]] = []
    for index, source in enumerate(spec.sources):
        examples, stats = _read_source(source, index, store, problems, digest)
        report.sources.append(stats)
        per_source.append((source, examples))
    problems.raise_if_rejecting()

    origin = {id(e): source for source, examples in per_source for e in examples}
    pool = [e for _, examples in per_source for e in examples]
    curate = spec.curation
    if curate.dedup_exact:
        pool, dropped = curation.drop_exact_duplicates(pool)
        report.add_dropped(dropped)
    if curate.near_dedup.enabled:
        pool, dropped = curation.drop_near_duplicates(pool, curate.near_dedup.threshold)
        report.add_dropped(dropped)
    pool, dropped, lengths = curation.filter_length(
        pool, count_tokens, curate.min_tokens, curate.max_tokens or max_tokens
    )
    report.add_dropped(dropped)
    report.token_lengths = lengths
    if not pool:
        raise DatasetError(
            "no usable examples left after validation and curation: " + report.to_markdown().replace("\n", " ")[:600]
        )

    split = spec.split
    buckets: dict[str, list[Example]] = {"train": [], "validation": [], "test": []}
    for example in pool:
        if origin[id(example)].train_only:
            buckets["train"].append(example)
            continue
        buckets[curation.assign_split(example, split.seed, split.validation, split.test)].append(example)
    report.splits = {name: len(items) for name, items in buckets.items()}
    if not buckets["train"]:
        raise DatasetError("the train split is empty: the dataset is too small for spec.dataset.split")

    train: list[Example] = []
    for source, _ in per_source:
        members = [e for e in buckets["train"] if origin[id(e)] is source]
        train += curation.apply_weight(members, source.weight, split.seed)
    report.train_after_mixing = len(train)
    return PreparedDataset(
        train=train,
        validation=buckets["validation"],
        test=buckets["test"],
        report=report,
        content_sha256=digest.hexdigest(),
        source_uris=[uri for s in report.sources for uri in s.files],
        token_lengths=lengths,
    )
