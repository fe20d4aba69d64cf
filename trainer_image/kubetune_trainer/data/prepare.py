"""The data stage: sources → validated examples → curated → split → mixed, with a report.

Order matters: validation, exact dedup, near dedup and the length filter run over all
sources together (so duplicates across sources are caught and near-duplicate pairs cannot
straddle splits); the hash split comes next; source weights apply to the train split only,
so validation and test stay clean. A user's own test set (``evalOnly`` sources) is the whole
test split: before anything else, every other row that repeats one of its rows, exactly or
nearly, is removed (``test_leakage``), whatever the dedup settings.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field, replace

from kubetune.api.v1alpha1 import DatasetFormat, DatasetSource, DatasetSpec, InvalidRowPolicy, PersonalDataPolicy
from kubetune_trainer.data import curation, pii
from kubetune_trainer.data.balance import MAX_LABEL_CHARS, MAX_LABELS, balance, label_counts
from kubetune_trainer.data.formats import (
    PREFERENCE_SHAPES,
    RowProblem,
    apply_column_mapping,
    detect_format,
    request_log,
    to_example,
)
from kubetune_trainer.data.readers import DecompressionBomb, FileProblem, RawRow, is_supported, read_rows
from kubetune_trainer.data.report import CurationReport, SourceStats
from kubetune_trainer.data.types import Example
from kubetune_trainer.errors import ConfigurationError
from kubetune_trainer.storage import ObjectStore, StorageError

MAX_LISTED_PROBLEMS = 20


class DatasetError(ConfigurationError):
    """The dataset cannot be used as the spec says; the message names file, line and field."""


UNLABELLED = "unlabelled_request"  # the curation report's reason for a request-log row without a label


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
    # Set when a distill objective's teacher answered the training prompts (distill_answers.py): for the lineage.
    teacher_answers: dict[str, str | int] | None = None


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
                f"{len(self.messages)} invalid row(s) or file(s) and spec.dataset.invalidRows is 'reject' "
                f"(set it to 'drop' to skip them):\n  {shown}{tail}"
            )


def _source_files(source: DatasetSource, store: ObjectStore, index: int) -> list[str]:
    try:
        found = store.list(source.uri)
    except StorageError as err:
        raise DatasetError(f"spec.dataset.sources[{index}].uri: {err}") from err
    files = [uri for uri in found if is_supported(uri)]
    try:
        store.prefetch(files)  # a Hub dataset's files through snapshot_download, then read as any other
    except StorageError as err:
        raise DatasetError(f"spec.dataset.sources[{index}].uri: {err}") from err
    if not files:
        detail = f"found only {', '.join(found[:3])}" if found else "nothing found"
        raise DatasetError(
            f"spec.dataset.sources[{index}].uri: {source.uri}: no .jsonl/.json/.csv/.parquet files, "
            f"optionally .gz or .zst ({detail})"
        )
    return files


def _read_source(
    source: DatasetSource, index: int, store: ObjectStore, problems: _Problems, digest: hashlib._Hash, *, pairs: bool
) -> tuple[list[Example], SourceStats]:
    files = _source_files(source, store, index)
    role = "evalOnly" if source.eval_only else "trainOnly" if source.train_only else "task"
    stats = SourceStats(uri=source.uri, files=files, format=str(source.format), weight=source.weight, role=role)
    examples: list[Example] = []
    formats_seen: set[str] = set()
    columns_seen: set[str] = set()
    for uri in files:
        try:
            payload = store.read_bytes(uri)
        except StorageError as err:
            raise DatasetError(f"spec.dataset.sources[{index}]: {err}") from err
        digest.update(uri.encode() + b"\x00" + hashlib.sha256(payload).digest())
        try:
            rows = list(read_rows(uri, payload))
        except DecompressionBomb as err:
            raise DatasetError(f"spec.dataset.sources[{index}]: {err}") from err
        except FileProblem as err:  # the whole file, under the same policy as a bad row
            problems.add(str(err), "", str(err), err.reason)
            continue
        file_format = _FileFormat(DatasetFormat(source.format))
        for row in rows:
            stats.rows_read += 1
            columns_seen.update(row.data or ())
            example = _convert(row, source, file_format, problems)
            if example is not None:
                stats.rows_valid += 1
                examples.append(example)
        formats_seen.update(file_format.seen)
    _check_column_mapping(source, index, columns_seen)
    if source.format == DatasetFormat.REQUEST_LOG and stats.rows_read and not stats.rows_valid:
        raise DatasetError(
            f"spec.dataset.sources[{index}]: {source.uri}: none of its {stats.rows_read} logged requests carries a "
            "confirmed answer (a label or feedback field); there is nothing to train on"
        )
    if source.format == DatasetFormat.AUTO:
        stats.format = "auto: " + ", ".join(sorted(formats_seen)) if formats_seen else "auto: none"
    _check_pairs(source, index, examples, pairs=pairs)
    return examples, stats


def _check_pairs(source: DatasetSource, index: int, examples: list[Example], *, pairs: bool) -> None:
    """A preference objective learns from pairs only, and the others never silently drop a pair's rejected answer."""
    unfit = next((e for e in examples if e.is_pair != pairs), None)
    if unfit is None:
        return
    where = f"spec.dataset.sources[{index}]: {unfit.source}:{unfit.row}"
    if pairs:
        raise DatasetError(
            f"{where}: method.objective dpo and orpo learn from preference pairs ({PREFERENCE_SHAPES}); "
            "this row is not one"
        )
    raise DatasetError(
        f"{where}: the row is a preference pair (chosen and rejected answers): train pairs with "
        "method.objective dpo or orpo"
    )


@dataclass
class _FileFormat:
    """One format per file: with format auto, the first row that has one decides it for the file,
    and a row in another format is an invalid row, not silently read another way."""

    requested: DatasetFormat
    decided: DatasetFormat | None = None
    decided_at: int = 0
    seen: set[str] = field(default_factory=set)


def _check_column_mapping(source: DatasetSource, index: int, columns_seen: set[str]) -> None:
    mapped = set((source.column_mapping or {}).values())
    if mapped and columns_seen and not mapped & columns_seen:
        raise DatasetError(
            f"spec.dataset.sources[{index}].columnMapping: no row has any of the columns "
            f"{', '.join(sorted(mapped))}; the rows have {', '.join(sorted(columns_seen)[:12])}"
        )


def _convert(row: RawRow, source: DatasetSource, file_format: _FileFormat, problems: _Problems) -> Example | None:
    if row.error is not None or row.data is None:
        problems.add(row.where, row.unit, row.error or "unreadable", row.reason)
        return None
    data = apply_column_mapping(row.data, source.column_mapping)
    fmt = file_format.requested
    if fmt == DatasetFormat.AUTO:
        detected = detect_format(set(data))
        if detected is None:
            columns = ", ".join(sorted(data)) or "none"
            problems.add(
                row.where,
                row.unit,
                f"cannot detect the format from columns ({columns}); expected messages/conversations, "
                "instruction+output, prompt+completion, text or chosen+rejected (or set format/columnMapping)",
                "unknown_format",
            )
            return None
        if file_format.decided is None:
            file_format.decided, file_format.decided_at = detected, row.number
        elif detected != file_format.decided:
            problems.add(
                row.where,
                row.unit,
                f"a row in {detected} format in a file of {file_format.decided} rows (from {row.unit} "
                f"{file_format.decided_at}); one format per file",
                "mixed_formats",
            )
            return None
        fmt = detected
    file_format.seen.add(str(fmt))
    try:
        if fmt == DatasetFormat.REQUEST_LOG:
            request, confirmed = request_log(data)
            if not confirmed:  # a production request nobody labelled: nothing to learn, nothing wrong
                unlabelled = replace(request, source=row.source, row=row.number)
                problems.report.add_dropped([curation.Dropped(unlabelled, UNLABELLED, "no label or feedback field")])
                return None
            example = request
        else:
            example = to_example(data, fmt)
    except RowProblem as problem:
        problems.add(row.where, row.unit, str(problem), problem.reason)
        return None
    return replace(example, source=row.source, row=row.number)


def _counts(report: CurationReport) -> str:
    read = sum(s.rows_read for s in report.sources)
    valid = sum(s.rows_valid for s in report.sources)
    dropped = ", ".join(f"{count} {reason}" for reason, count in report.dropped.items() if count) or "none"
    splits = ", ".join(f"{name} {count}" for name, count in report.splits.items())
    return f"{read} rows read, {valid} valid, dropped in curation: {dropped}; split: {splits}"


def _shown(counts: Counter[str]) -> dict[str, int]:
    """Label counts for the report, most frequent first, each label redacted: a source whose personal
    data is only reported may have identifiers for answers, and the report repeats none."""
    shown: Counter[str] = Counter()
    for label, count in counts.most_common():
        shown[pii.redact(label)[0]] += count
    return dict(shown)


def _balance_labels(
    pool: list[Example],
    lengths: list[int],
    spec: DatasetSpec,
    origin: dict[int, DatasetSource],
    report: CurationReport,
) -> tuple[list[Example], list[int]]:
    """The task's examples (not trainOnly, not evalOnly) balanced by label when the manifest asks; their
    label distribution into the report whenever the answers are labels."""
    is_task = [not (origin[id(e)].train_only or origin[id(e)].eval_only) for e in pool]
    task = [e for e, keep in zip(pool, is_task, strict=True) if keep]
    counts = label_counts(task)
    wanted = spec.curation.balance
    if counts is None:
        if wanted is not None:
            raise DatasetError(
                "spec.dataset.curation.balance: the answers are not labels (balancing needs 2 to "
                f"{MAX_LABELS} distinct final answers of at most {MAX_LABEL_CHARS} characters, single answers "
                "rather than preference pairs); remove the balance block"
            )
        return pool, lengths
    report.labels = {"before": _shown(counts)}
    if wanted is None:
        return pool, lengths
    balanced = balance(task, [n for n, keep in zip(lengths, is_task, strict=True) if keep], wanted, spec.split.seed)
    report.add_dropped(balanced.dropped)
    after = label_counts(balanced.examples) or Counter()
    report.labels |= {"after": _shown(after), "repeated": balanced.repeated, "by": str(wanted.by)}
    others = [(e, n) for e, n, keep in zip(pool, lengths, is_task, strict=True) if not keep]
    return [e for e, _ in others] + balanced.examples, [n for _, n in others] + balanced.lengths


def prepare_dataset(
    spec: DatasetSpec,
    store: ObjectStore,
    count_tokens: Callable[[Example], int],
    *,
    max_tokens: int,
    pairs: bool = False,
) -> PreparedDataset:
    """``pairs``: the run learns from preference pairs (method.objective dpo or orpo), and every row must be one."""
    report = CurationReport()
    problems = _Problems(InvalidRowPolicy(spec.invalid_rows), report)
    digest = hashlib.sha256()
    per_source: list[tuple[DatasetSource, list[Example]]] = []
    for index, source in enumerate(spec.sources):
        examples, stats = _read_source(source, index, store, problems, digest, pairs=pairs)
        policy = PersonalDataPolicy(source.pii or spec.curation.pii)
        screened = pii.screen(examples, policy)
        stats.personal_data = {"policy": policy.value, "found": dict(screened.found)}
        report.add_dropped(screened.dropped)
        report.sources.append(stats)
        per_source.append((source, screened.examples))
    problems.raise_if_rejecting()

    origin = {id(e): source for source, examples in per_source for e in examples}
    # The user's own test set comes first: the rules below keep the first of duplicates.
    held_out = [e for source, examples in per_source if source.eval_only for e in examples]
    pool = held_out + [e for source, examples in per_source if not source.eval_only for e in examples]
    curate = spec.curation
    keys = curation.ExampleKeys(pool)  # each example normalised once, for every rule and the split
    if held_out:
        rest, leaked = curation.drop_leaked(held_out, pool[len(held_out) :], curate.near_dedup.threshold, key=keys)
        report.add_dropped(leaked)
        pool = held_out + rest
    if curate.dedup_exact:
        pool, dropped = curation.drop_exact_duplicates(pool, key=keys)
        report.add_dropped(dropped)
    if curate.near_dedup.enabled:
        pool, dropped = curation.drop_near_duplicates(pool, curate.near_dedup.threshold, key=keys)
        report.add_dropped(dropped)
    pool, dropped, lengths = curation.filter_length(
        pool, count_tokens, curate.min_tokens, curate.max_tokens or max_tokens
    )
    report.add_dropped(dropped)
    pool, lengths = _balance_labels(pool, lengths, spec, origin, report)
    report.token_lengths = lengths
    if not pool:
        raise DatasetError(
            "no usable examples left after validation and curation: " + report.to_markdown().replace("\n", " ")[:600]
        )

    split = spec.split
    buckets: dict[str, list[Example]] = {"train": [], "validation": [], "test": []}
    # With evalOnly sources the test split is theirs alone, and split.test does not apply.
    test_fraction = 0.0 if held_out else split.test
    for example in pool:
        source = origin[id(example)]
        if source.train_only or source.eval_only:
            buckets["test" if source.eval_only else "train"].append(example)
            continue
        buckets[curation.assign_split(example, split.seed, split.validation, test_fraction, key=keys)].append(example)
    report.splits = {name: len(items) for name, items in buckets.items()}
    task_train = sum(1 for e in buckets["train"] if not origin[id(e)].train_only)
    if task_train < spec.min_examples:
        raise DatasetError(
            f"spec.dataset.minExamples: {task_train} training example(s) of the task after curation and the "
            f"split, at least {spec.min_examples} needed ({_counts(report)}; trainOnly sources and replay "
            "rows do not count). Add data, lower the validation/test split, or set spec.dataset.minExamples."
        )

    train: list[Example] = []
    for source, _ in per_source:
        members = [e for e in buckets["train"] if origin[id(e)] is source]
        train += curation.apply_weight(members, source.weight, split.seed, key=keys)
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
