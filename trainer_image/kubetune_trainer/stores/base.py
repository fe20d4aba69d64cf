"""What every remote object store gives :class:`kubetune_trainer.storage.ObjectStore`: the errors,
the parsed location, and the operations a scheme must support before anything is published to it."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol


class StorageError(RuntimeError):
    """A URI could not be read or written; the message names the URI and the cause."""


class WriteConflict(StorageError):
    """A conditional write lost: the object exists (create-only) or changed since it was read."""


@dataclass(frozen=True)
class Location:
    scheme: str  # "s3", "gs", "az", "file" or "hf"
    bucket: str  # empty for file://; for hf:// the repository ([datasets/]owner/name[@revision])
    key: str  # object key, absolute path for file://, path in the repository for hf://

    @property
    def uri(self) -> str:
        if self.scheme == "file":
            return f"file://{self.key}"
        return f"{self.scheme}://{self.bucket}" + (f"/{self.key}" if self.key or self.scheme != "hf" else "")

    def child(self, name: str) -> Location:
        base = self.key.rstrip("/")
        key = f"{base}/{name}" if base else name
        return Location(self.scheme, self.bucket, key)


class RemoteBucket(Protocol):
    """One remote scheme's objects. Every write is checked by the server against a checksum sent with
    it; ``tag`` is the server's version of an object (S3's ETag), for conditional updates."""

    def exists(self, loc: Location) -> bool: ...

    def read(self, loc: Location) -> bytes: ...

    def read_tagged(self, loc: Location) -> tuple[bytes, str]: ...

    def digest(self, loc: Location) -> tuple[str, int]:
        """SHA-256 (hex) and size, read as a stream."""
        ...

    def keys(self, loc: Location) -> list[str]:
        """Keys of every object whose key starts with ``loc.key``."""
        ...

    def download(self, loc: Location, dest: Path) -> None: ...

    def put(self, loc: Location, data: bytes, *, if_absent: bool, if_tag: str | None = None) -> str:
        """Write ``data``; create-only with ``if_absent``, only over version ``if_tag`` when given;
        a lost condition is a :class:`WriteConflict`. Returns the new version's tag."""
        ...

    def upload(self, path: Path, loc: Location, *, if_absent: bool) -> str:
        """Write one file (in parts where large), create-only with ``if_absent``; its SHA-256 (hex)."""
        ...

    def delete(self, loc: Location) -> None: ...


class HashingSink:
    """A file-like sink that keeps the SHA-256 and size of what a download writes into it."""

    def __init__(self) -> None:
        self.sha256 = hashlib.sha256()
        self.size = 0

    def write(self, block: bytes) -> int:
        self.sha256.update(block)
        self.size += len(block)
        return len(block)


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()
