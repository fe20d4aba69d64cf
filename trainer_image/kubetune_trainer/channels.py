"""Promotion channels: which published version a serving stack should run, and every change of it.

A channel (``prod``, ``staging``) lives under a job's output prefix as numbered JSON entries,
``<output>/channels/<channel>/000042.json``, each written create-only. The entry with the highest
number is the channel's current version; the others are its history. Nothing is ever overwritten:
two writers racing for number 43 cannot both win (the second's create-only write fails, and it
reads the channel again and takes 44), so correctness needs nothing beyond create-only writes, on
S3 (If-None-Match) as on a local folder. Published versions stay untouched: promoting or rolling
back moves the pointer only.

A rollback is an entry too: it names the version to go back to and the one it replaces, which is
withdrawn from later rollbacks until it is promoted again (rolling back twice from C, after A, B, C
were promoted, goes to B and then to A).
"""

from __future__ import annotations

import json
import random
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from kubetune.api.contract import VERSION_PATTERN
from kubetune.api.v1alpha1 import DNS_LABEL_PATTERN
from kubetune_trainer.errors import ConfigurationError
from kubetune_trainer.publish import MANIFEST, read_manifest, verify_version
from kubetune_trainer.storage import ObjectStore, StorageError, WriteConflict, join_uri

ENTRY_NAME = re.compile(r"([0-9]{6,})\.json")
# Create-only writes lost in a row before giving up: each loss means another writer moved the channel
# in between. The wait between attempts grows and is random, so racing writers spread out.
MAX_ATTEMPTS = 30
MAX_BACKOFF_SECONDS = 2.0


@dataclass(frozen=True)
class ChannelEntry:
    """One change of a channel. ``manifest_sha256`` pins the version's manifest as it was checked."""

    sequence: int
    version: str
    version_uri: str
    manifest_sha256: str
    action: str  # "promote" or "rollback"
    reason: str
    at: str
    replaces: str | None = None  # the version the channel named before this entry

    def to_json(self) -> dict[str, Any]:
        return {
            "sequence": self.sequence,
            "version": self.version,
            "versionUri": self.version_uri,
            "manifestSha256": self.manifest_sha256,
            "action": self.action,
            "reason": self.reason,
            "at": self.at,
            "replaces": self.replaces,
        }


@dataclass(frozen=True)
class _Target:
    version: str
    action: str
    reason: str


def check_channel_name(channel: str) -> str:
    if len(channel) > 63 or not re.fullmatch(DNS_LABEL_PATTERN.strip("^$"), channel):
        raise ConfigurationError(f"channel {channel!r}: lowercase letters, digits and '-', at most 63 characters")
    return channel


def channel_uri(output_uri: str, channel: str) -> str:
    return join_uri(output_uri.rstrip("/"), "channels", check_channel_name(channel))


def channel_names(store: ObjectStore, output_uri: str) -> list[str]:
    """The channels written under ``output_uri``, by name."""
    prefix = join_uri(output_uri.rstrip("/"), "channels") + "/"
    names = {uri[len(prefix) :].split("/", 1)[0] for uri in store.list(prefix)}
    return sorted(name for name in names if len(name) <= 63 and re.fullmatch(DNS_LABEL_PATTERN.strip("^$"), name))


def split_version_uri(version_uri: str) -> tuple[str, str]:
    """(output prefix, version name) of a version's URI, refusing what is not a version's."""
    output_uri, _, version = version_uri.rstrip("/").rpartition("/")
    if not re.fullmatch(VERSION_PATTERN, version):
        raise ConfigurationError(
            f"{version_uri}: not a published version (its last part must look like v<date>-<time>-<hex>)"
        )
    return output_uri, version


def history(store: ObjectStore, output_uri: str, channel: str) -> list[ChannelEntry]:
    """Every entry of the channel, oldest first (empty for a channel never written)."""
    prefix = channel_uri(output_uri, channel) + "/"
    numbered = []
    for uri in store.list(prefix):
        match = ENTRY_NAME.fullmatch(uri[len(prefix) :])
        if match:  # anything else under the channel is not an entry, and is not followed
            numbered.append((int(match.group(1)), uri))
    return [_read_entry(store, output_uri, sequence, uri) for sequence, uri in sorted(numbered)]


def current(store: ObjectStore, output_uri: str, channel: str) -> ChannelEntry | None:
    """The channel's current entry: the highest-numbered one."""
    entries = history(store, output_uri, channel)
    return entries[-1] if entries else None


def promote(
    store: ObjectStore,
    version_uri: str,
    channel: str,
    *,
    reason: str = "",
    require_promoted: bool = True,
    verified: bool = False,
) -> ChannelEntry:
    """Point ``channel`` at a published version, after checking it is intact (unless the caller just
    did: ``verified``) and, unless told otherwise, that its own quality gate promoted it."""
    output_uri, version = split_version_uri(version_uri)
    manifest_uri = join_uri(version_uri.rstrip("/"), MANIFEST)
    if not store.exists(manifest_uri):
        raise ConfigurationError(f"{version_uri}: no manifest, so not a complete published version")
    if require_promoted and read_manifest(version_uri.rstrip("/"), store).get("promoted") is not True:
        raise ConfigurationError(
            f"{version_uri}: its quality gate did not promote it (see its reports/evaluation.md); "
            "--force puts it on the channel anyway"
        )
    target = _Target(version, "promote", reason or f"promoted {version}")
    return _append(store, output_uri, channel, lambda entries: target, checked={version} if verified else set())


def rollback(
    store: ObjectStore, output_uri: str, channel: str, *, to_version: str | None = None, reason: str = ""
) -> ChannelEntry:
    """Point ``channel`` back at the version it named before the current one (or at ``to_version``,
    which must have been on the channel), as a new entry."""

    def choose(entries: list[ChannelEntry]) -> _Target:
        if not entries:
            raise ConfigurationError(f"{channel_uri(output_uri, channel)}: the channel has no entries to roll back")
        now = entries[-1].version
        if to_version is not None:
            if to_version == now or to_version not in {e.version for e in entries}:
                raise ConfigurationError(f"{to_version}: not a version the channel named before (now {now})")
            return _Target(to_version, "rollback", reason or f"rolled back from {now} to {to_version}")
        withdrawn: set[str] = set()
        for entry in entries:
            if entry.action == "rollback" and entry.replaces:
                withdrawn.add(entry.replaces)
            elif entry.action == "promote":
                withdrawn.discard(entry.version)
        earlier = [e.version for e in reversed(entries[:-1]) if e.version != now and e.version not in withdrawn]
        if not earlier:
            raise ConfigurationError(f"{channel_uri(output_uri, channel)}: no earlier version to roll back to")
        return _Target(earlier[0], "rollback", reason or f"rolled back from {now} to {earlier[0]}")

    return _append(store, output_uri.rstrip("/"), channel, choose)


def _append(
    store: ObjectStore,
    output_uri: str,
    channel: str,
    choose: Callable[[list[ChannelEntry]], _Target],
    *,
    checked: set[str] | None = None,
) -> ChannelEntry:
    """Write the next entry create-only; when another writer took the number, read again and retry.
    Each version is checked against its manifest once (every artifact is read: gigabytes for a merged
    model), whatever the number of attempts."""
    checked = set(checked or ())
    for attempt in range(MAX_ATTEMPTS):
        entries = history(store, output_uri, channel)
        target = choose(entries)
        version_uri = join_uri(output_uri, target.version)
        if target.version not in checked:
            _, problems = verify_version(version_uri, store)
            if problems:
                raise ConfigurationError(
                    f"{version_uri}: differs from its manifest ({problems[0]}); not put on a channel"
                )
            checked.add(target.version)
        sequence = entries[-1].sequence + 1 if entries else 1
        entry = ChannelEntry(
            sequence=sequence,
            version=target.version,
            version_uri=version_uri,
            manifest_sha256=store.digest(join_uri(version_uri, MANIFEST))[0],
            action=target.action,
            reason=target.reason[:500],
            at=datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
            replaces=entries[-1].version if entries else None,
        )
        uri = join_uri(channel_uri(output_uri, channel), f"{sequence:06d}.json")
        try:
            store.write_bytes(uri, json.dumps(entry.to_json(), indent=2).encode() + b"\n", if_absent=True)
        except WriteConflict:
            time.sleep(random.uniform(0, min(MAX_BACKOFF_SECONDS, 0.05 * 2**attempt)))
            continue
        return entry
    raise StorageError(
        f"{channel_uri(output_uri, channel)}: other writers moved the channel {MAX_ATTEMPTS} times in a row"
    )


def _read_entry(store: ObjectStore, output_uri: str, sequence: int, uri: str) -> ChannelEntry:
    """An entry as written by :func:`_append`; anything else is refused, naming the object, so a
    serving stack never follows an entry that points outside the channel's own versions."""
    try:
        data = json.loads(store.read_bytes(uri))
        entry = ChannelEntry(
            sequence=int(data["sequence"]),
            version=str(data["version"]),
            version_uri=str(data["versionUri"]),
            manifest_sha256=str(data["manifestSha256"]),
            action=str(data["action"]),
            reason=str(data.get("reason", "")),
            at=str(data.get("at", "")),
            replaces=data.get("replaces"),
        )
    except (ValueError, KeyError, TypeError) as err:
        raise StorageError(f"{uri}: not a channel entry ({err})") from err
    expected_uri = join_uri(output_uri.rstrip("/"), entry.version)
    if (
        entry.sequence != sequence
        or not re.fullmatch(VERSION_PATTERN, entry.version)
        or entry.version_uri != expected_uri
        or entry.action not in ("promote", "rollback")
    ):
        raise StorageError(f"{uri}: not a channel entry of {output_uri} (number, version or action differ)")
    return entry


def describe(entry: ChannelEntry) -> str:
    replaced = f", replacing {entry.replaces}" if entry.replaces else ""
    return f"#{entry.sequence} {entry.action} {entry.version} at {entry.at}{replaced}: {entry.reason}"
