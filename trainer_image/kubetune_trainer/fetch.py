"""Bring a channel's current version to a serving pod: ``kubetune fetch OUTPUT_URI --channel prod
--artifact merged --dest /models/current``.

What a serving stack runs (an init container before vLLM starts, or a sidecar polling for a channel
move) must be exactly what was verified: every file is checked against the SHA-256 its version's
manifest records, and the manifest against the one the channel entry pinned. ``dest`` is a symbolic
link to a folder named after the version, swapped in one rename once everything is in place, so a
reader sees the old version or the new one, never a mix, and a failed fetch leaves the old one as it
was. A fetch of the version already in place downloads nothing.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from kubetune_trainer.channels import ChannelEntry, current
from kubetune_trainer.errors import ConfigurationError
from kubetune_trainer.publish import MANIFEST, read_manifest
from kubetune_trainer.storage import ObjectStore, join_uri, safe_relative_key, sha256_file

VERSION_FILE = "VERSION"  # in the fetched folder: the version's name, for the serving stack's logs


class VersionDamaged(ConfigurationError):
    """A file or the manifest differs from what the channel and the manifest recorded."""


@dataclass(frozen=True)
class Fetched:
    entry: ChannelEntry
    folder: Path  # where ``dest`` points
    files: int  # downloaded now (0: already in place)


def fetch(store: ObjectStore, output_uri: str, channel: str, artifact: str, dest: Path) -> Fetched:
    entry = current(store, output_uri, channel)
    if entry is None:
        raise ConfigurationError(f"{output_uri.rstrip('/')}/channels/{channel}: the channel has no entries")
    folder = dest.parent / f"{entry.version}-{artifact}"
    if dest.is_symlink() and dest.resolve() == folder.resolve() and (folder / VERSION_FILE).exists():
        return Fetched(entry, folder, 0)
    manifest_uri = join_uri(entry.version_uri, MANIFEST)
    if store.digest(manifest_uri)[0] != entry.manifest_sha256:
        raise VersionDamaged(f"{manifest_uri}: differs from the manifest the channel entry #{entry.sequence} pinned")
    listed = {str(a["path"]): a for a in read_manifest(entry.version_uri, store).get("artifacts") or []}
    wanted = {path: a for path, a in listed.items() if PurePosixPath(path).parts[:1] == (artifact,)}
    if not wanted:
        kinds = sorted({PurePosixPath(path).parts[0] for path in listed})
        raise ConfigurationError(f"{entry.version_uri}: no {artifact!r} artifact (it has {', '.join(kinds)})")
    partial = dest.parent / f".{folder.name}.partial-{secrets.token_hex(3)}"
    try:
        for path, recorded in sorted(wanted.items()):
            relative = safe_relative_key(path, manifest_uri).relative_to(artifact)
            target = partial / relative
            store.download(join_uri(entry.version_uri, *PurePosixPath(path).parts), target)
            if sha256_file(target) != recorded.get("sha256") or target.stat().st_size != recorded.get("sizeBytes"):
                raise VersionDamaged(f"{join_uri(entry.version_uri, path)}: differs from its manifest")
        (partial / VERSION_FILE).write_text(entry.version + "\n")
        (partial / "channel-entry.json").write_text(json.dumps(entry.to_json(), indent=2) + "\n")
        _swap_in(partial, folder, dest)
    finally:
        shutil.rmtree(partial, ignore_errors=True)
    return Fetched(entry, folder, len(wanted))


def _swap_in(partial: Path, folder: Path, dest: Path) -> None:
    """Point ``dest`` at ``folder`` (filled from ``partial``) in one rename; remove what it pointed at."""
    previous = dest.resolve() if dest.is_symlink() else None
    if dest.exists() and not dest.is_symlink():
        raise ConfigurationError(f"{dest}: exists and is not a link kubetune fetch made; refusing to replace it")
    shutil.rmtree(folder, ignore_errors=True)  # a folder of this version left by an interrupted fetch
    partial.rename(folder)
    link = dest.parent / f".{dest.name}.link-{secrets.token_hex(3)}"
    link.symlink_to(folder.name)  # relative: the volume may be mounted elsewhere in another container
    os.replace(link, dest)
    if previous is not None and previous != folder.resolve() and previous.parent == dest.parent.resolve():
        shutil.rmtree(previous, ignore_errors=True)
