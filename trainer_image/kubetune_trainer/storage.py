"""One way to read and write ``s3://``, ``gs://``, ``az://`` and ``file://`` URIs, and to read
``hf://`` ones, in the pod and on a laptop.

Everything the trainer fetches or publishes (datasets, base models, checkpoints, artifacts)
goes through :class:`ObjectStore`, so tests against a moto S3 server exercise the same code
path production uses. Each remote scheme is one :class:`~kubetune_trainer.stores.base.RemoteBucket`
(``kubetune_trainer.stores``); local files and the Hub's read-only repositories are handled here.
"""

from __future__ import annotations

import builtins
import hashlib
import os
import shutil
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any
from urllib.parse import urlparse

from kubetune.api.v1alpha1 import S3Spec
from kubetune_trainer.errors import ConfigurationError
from kubetune_trainer.hub import HubClient, HubError, parse_hub_uri
from kubetune_trainer.stores.base import Location, RemoteBucket, StorageError, WriteConflict, sha256_file

if TYPE_CHECKING:
    from kubetune_trainer.environment import TrainerEnvironment
    from kubetune_trainer.stores.azure import AzureBucket
    from kubetune_trainer.stores.gcs import GcsBucket

__all__ = ["Location", "ObjectStore", "StorageError", "WriteConflict", "join_uri", "parse_uri", "sha256_file"]


def parse_uri(uri: str) -> Location:
    parsed = urlparse(uri)
    if parsed.scheme in ("s3", "gs"):
        if not parsed.netloc:
            raise StorageError(f"{uri}: an {parsed.scheme}:// URI needs a bucket")
        return Location(parsed.scheme, parsed.netloc, parsed.path.lstrip("/"))
    if parsed.scheme == "az":
        # az://account/container/path: the Location's bucket is "account/container".
        container, _, key = parsed.path.lstrip("/").partition("/")
        if not parsed.netloc or not container:
            raise StorageError(
                f"{uri}: an az:// URI needs a storage account and a container: az://account/container/path"
            )
        return Location("az", f"{parsed.netloc}/{container}", key)
    if parsed.scheme == "file":
        if parsed.netloc not in ("", "localhost"):
            raise StorageError(f"{uri}: a file:// URI must be absolute (file:///path)")
        return Location("file", "", parsed.path)
    if parsed.scheme == "hf":
        try:
            repo, path = parse_hub_uri(uri)
        except HubError as err:
            raise StorageError(str(err)) from None
        return Location("hf", repo.ref, path)
    raise StorageError(f"{uri}: unsupported scheme {parsed.scheme!r} (use s3://, gs://, az://, file:// or hf://)")


def join_uri(uri: str, *parts: str) -> str:
    location = parse_uri(uri)
    for part in parts:
        location = location.child(part)
    return location.uri


def safe_relative_key(relative: str, source: str) -> PurePosixPath:
    """An object key below a prefix as a relative path that cannot leave the folder it lands in.

    Keys come from storage the tenant writes, so a key is refused (naming it) when it is absolute,
    has an empty, ``.`` or ``..`` segment, a backslash or a NUL: S3 stores such keys as written,
    and joining one to a local folder would write elsewhere.
    """
    problem = None
    segments = relative.split("/")
    if not relative:
        problem = "is empty"
    elif relative.startswith("/"):
        problem = "is absolute"
    elif "\\" in relative or "\0" in relative:
        problem = "contains a backslash or a NUL"
    elif odd := [segment for segment in segments if segment in ("", ".", "..")]:
        problem = f"has {'an empty' if odd[0] == '' else 'a ' + repr(odd[0])} segment"
    if problem is not None:
        raise ConfigurationError(f"{source}: object key {relative!r} {problem}; refusing to download it")
    return PurePosixPath(*segments)


def _contained(dest: Path, relative: PurePosixPath, source: str) -> Path:
    """``dest / relative``, refused when it resolves outside ``dest`` (a symbolic link already there)."""
    target = dest / relative
    if not target.resolve().is_relative_to(dest.resolve()):
        raise ConfigurationError(f"{source}: {target} resolves outside {dest}; refusing to download it")
    return target


class ObjectStore:
    """Reads and writes objects by URI. S3 settings come from the job's ``spec.s3``.

    Credentials: the job's Secret as files the operator mounts (``credentials_dir``), else the
    client's default chain (the pod's web identity for IRSA/Workload Identity, or a laptop's profile
    and environment): never from the manifest.
    """

    def __init__(
        self,
        s3: S3Spec | None = None,
        *,
        ca_bundle: Path | None = None,
        credentials_dir: Path | None = None,
        public_endpoint_only: bool = False,
        hub: HubClient | None = None,
        gcs: GcsBucket | None = None,
        azure: AzureBucket | None = None,
    ) -> None:
        from kubetune_trainer.stores.azure import AzureBucket
        from kubetune_trainer.stores.gcs import GcsBucket
        from kubetune_trainer.stores.s3 import S3Bucket

        self._remotes: dict[str, RemoteBucket] = {
            "s3": S3Bucket(
                s3 or S3Spec(),
                ca_bundle=ca_bundle,
                credentials_dir=credentials_dir,
                public_endpoint_only=public_endpoint_only,
            ),
            "gs": gcs or GcsBucket(),  # Google's endpoint, Application Default Credentials
            "az": azure or AzureBucket(),  # Azure's public cloud, DefaultAzureCredential
        }
        self.hub = hub or HubClient()  # hf:// reads: the platform's endpoint, the job's token

    @classmethod
    def from_environment(cls, s3: S3Spec, environment: TrainerEnvironment) -> ObjectStore:
        """The store a job's pod (or ``kubetune run``) uses: ``s3`` with what the operator mounted for it,
        the platform's Hub, Cloud Storage and Azure endpoints, and the job's Hub token and keys."""
        from kubetune_trainer.stores.azure import AzureBucket
        from kubetune_trainer.stores.gcs import GcsBucket

        return cls(
            s3,
            ca_bundle=environment.s3_ca_bundle,
            credentials_dir=environment.s3_credentials_dir,
            public_endpoint_only=environment.s3_public_endpoint_only,
            hub=HubClient.from_environment(environment),
            gcs=GcsBucket.from_environment(environment),
            azure=AzureBucket.from_environment(environment),
        )

    @classmethod
    def for_command(cls, s3: S3Spec, environment: TrainerEnvironment) -> ObjectStore:
        """The store of a command naming URIs itself (``kubetune verify``, ``versions``, ``drift check``,
        ``challenge``): ``s3`` as its options give it, the Hub, Cloud Storage and Azure as the environment
        sets them; nothing a pod mounts for a job's own ``spec.s3``."""
        from kubetune_trainer.stores.azure import AzureBucket
        from kubetune_trainer.stores.gcs import GcsBucket

        return cls(
            s3,
            hub=HubClient.from_environment(environment),
            gcs=GcsBucket.from_environment(environment),
            azure=AzureBucket.from_environment(environment),
        )

    # ------------------------------------------------------------------ plumbing
    def remote(self, scheme: str) -> RemoteBucket:
        """The store of a remote scheme (``s3``, ``gs``, ``az``)."""
        return self._remotes[scheme]

    def _hub_call(self, action: Any, *args: Any) -> Any:
        """A read of the Hub, its failure this module's StorageError."""
        try:
            return action(*args)
        except HubError as err:
            raise StorageError(str(err)) from err

    @staticmethod
    def _refuse_hub_write(loc: Location) -> None:
        if loc.scheme == "hf":
            raise StorageError(f"{loc.uri}: hf:// is read only here; publish to s3://, gs://, az:// or file://")

    # ------------------------------------------------------------------ reads
    def pinned(self, uri: str) -> str:
        """``uri`` at the exact version it reads now: an hf:// revision resolved to its commit (what the
        lineage records); other URIs as they are."""
        if not uri.startswith("hf://"):
            return uri
        repo, path = self._hub_call(parse_hub_uri, uri)
        return str(self._hub_call(self.hub.pin, repo).uri(path))

    def prefetch(self, uris: builtins.list[str]) -> None:
        """Bring remote files close before they are read one by one: the hf:// ones, each repository's
        at once through huggingface_hub's ``snapshot_download``. Other schemes are read as they are."""
        by_repo: dict[str, builtins.list[str]] = {}
        for uri in uris:
            loc = parse_uri(uri)
            if loc.scheme == "hf":
                by_repo.setdefault(f"hf://{loc.bucket}", []).append(loc.key)
        for repo, paths in by_repo.items():
            self._hub_call(self.hub.snapshot, repo, paths)

    def exists(self, uri: str) -> bool:
        loc = parse_uri(uri)
        if loc.scheme == "file":
            return Path(loc.key).exists()
        if loc.scheme == "hf":
            return bool(self._hub_call(self.hub.files_under, uri))
        return self.remote(loc.scheme).exists(loc)

    def read_bytes(self, uri: str) -> bytes:
        loc = parse_uri(uri)
        if loc.scheme == "file":
            try:
                return Path(loc.key).read_bytes()
            except OSError as err:
                raise StorageError(f"{uri}: cannot read: {err.strerror}") from err
        if loc.scheme == "hf":
            return bytes(self._hub_call(self.hub.fetch, uri).read_bytes())
        return self.remote(loc.scheme).read(loc)

    def digest(self, uri: str) -> tuple[str, int]:
        """SHA-256 (hex) and size of one object, read as a stream."""
        loc = parse_uri(uri)
        if loc.scheme not in ("file", "hf"):
            return self.remote(loc.scheme).digest(loc)
        local = self._hub_call(self.hub.fetch, uri) if loc.scheme == "hf" else Path(loc.key)
        digest, size = hashlib.sha256(), 0
        try:
            with local.open("rb") as handle:
                while block := handle.read(1 << 20):
                    digest.update(block)
                    size += len(block)
        except OSError as err:
            raise StorageError(f"{uri}: cannot read: {err.strerror}") from err
        return digest.hexdigest(), size

    def list(self, uri: str) -> list[str]:
        """URIs of all objects/files at or under ``uri`` (a prefix or a directory), sorted."""
        loc = parse_uri(uri)
        if loc.scheme == "file":
            root = Path(loc.key)
            if root.is_file():
                return [loc.uri]
            if not root.exists():
                return []
            return sorted(f"file://{p}" for p in root.rglob("*") if p.is_file())
        if loc.scheme == "hf":  # pinned to the commit the revision names now
            return list(self._hub_call(self.hub.files_under, uri))
        return sorted(Location(loc.scheme, loc.bucket, key).uri for key in self.remote(loc.scheme).keys(loc))

    def download(self, uri: str, dest: Path) -> Path:
        """Copy one object to ``dest`` (written to a temporary name, then renamed)."""
        loc = parse_uri(uri)
        dest.parent.mkdir(parents=True, exist_ok=True)
        partial = dest.with_name(dest.name + ".partial")
        if loc.scheme in ("file", "hf"):
            source = self._hub_call(self.hub.fetch, uri) if loc.scheme == "hf" else Path(loc.key)
            try:
                shutil.copyfile(source, partial)
            except OSError as err:
                raise StorageError(f"{uri}: cannot read: {err.strerror}") from err
        else:
            self.remote(loc.scheme).download(loc, partial)
        partial.replace(dest)
        return dest

    def download_tree(self, uri: str, dest: Path) -> Path:
        """Copy every object under a prefix into ``dest``, keeping relative paths.

        Every key is checked before anything is written (:func:`safe_relative_key`), so a prefix
        holding one hostile key downloads nothing. Keys ending in ``/`` are folder markers (what
        consoles write for "create folder"): they hold no file and are skipped.
        """
        loc = parse_uri(uri)
        prefix = loc.key.rstrip("/") + "/" if loc.key else ""
        remote = loc.scheme not in ("file", "hf")
        found = self.list(loc.uri.rstrip("/") + "/") if remote else self.list(loc.uri)
        if not found:
            raise StorageError(f"{uri}: nothing found under this prefix")
        planned: list[tuple[str, Path]] = []
        for item in found:
            key = parse_uri(item).key
            if loc.scheme == "file":
                relative = Path(key).relative_to(loc.key).as_posix()
            elif key.startswith(prefix):
                relative = key[len(prefix) :]
            else:  # a listing never returns this; a server that does is not trusted with paths
                raise StorageError(f"{uri}: listed object {key!r} is not under the prefix")
            if remote and (relative == "" or relative.endswith("/")):  # a marker ("" is the prefix's own)
                if relative:
                    safe_relative_key(relative.removesuffix("/"), item)
                continue
            planned.append((item, _contained(dest, safe_relative_key(relative, item), item)))
        for item, target in planned:
            self.download(item, target)
        return dest

    # ------------------------------------------------------------------ writes
    def write_bytes(self, uri: str, data: bytes, *, if_absent: bool = False) -> None:
        """Write one object, which the server checks against the checksum sent with it; with
        ``if_absent`` refuse to replace an existing one (a create-only write)."""
        loc = parse_uri(uri)
        self._refuse_hub_write(loc)
        if loc.scheme == "file":
            partial = self._local_partial(Path(loc.key))
            partial.write_bytes(data)
            self._local_commit(partial, Path(loc.key), uri, if_absent)
            return
        self.remote(loc.scheme).put(loc, data, if_absent=if_absent)

    def read_tagged(self, uri: str) -> tuple[bytes, str]:
        """An object and its version tag (S3's ETag; the SHA-256 of a local file's bytes), for
        :meth:`replace_if_unchanged`."""
        loc = parse_uri(uri)
        if loc.scheme == "file":
            data = self.read_bytes(uri)
            return data, hashlib.sha256(data).hexdigest()
        return self.remote(loc.scheme).read_tagged(loc)

    def replace_if_unchanged(self, uri: str, data: bytes, tag: str | None) -> str:
        """A conditional update: write ``data`` only if the object is still the version ``tag``
        names (``None``: only if there is none yet); returns the new version's tag. The server
        decides (S3: If-Match / If-None-Match); a local file is compared first, then replaced (one
        writer per folder on a laptop: the check and the rename are not one step)."""
        loc = parse_uri(uri)
        self._refuse_hub_write(loc)
        if loc.scheme != "file":
            return self.remote(loc.scheme).put(loc, data, if_absent=tag is None, if_tag=tag)
        path = Path(loc.key)
        current = hashlib.sha256(path.read_bytes()).hexdigest() if path.exists() else None
        if current != tag:
            raise WriteConflict(f"{uri}: changed since it was read (another writer); refusing to overwrite")
        self.write_bytes(uri, data)
        return hashlib.sha256(data).hexdigest()

    def upload(self, path: Path, uri: str, *, if_absent: bool = False) -> str:
        """Copy one file to ``uri`` and return its SHA-256 (hex).

        The server checks what it received against the checksum sent with it (S3: one SHA-256 per
        part for large files) and refuses a mismatch; with ``if_absent`` it also refuses to replace
        an existing object.
        """
        loc = parse_uri(uri)
        self._refuse_hub_write(loc)
        if loc.scheme != "file":
            return self.remote(loc.scheme).upload(path, loc, if_absent=if_absent)
        dest = Path(loc.key)
        partial = self._local_partial(dest)
        digest = hashlib.sha256()
        with path.open("rb") as source, partial.open("wb") as sink:
            while block := source.read(1 << 20):
                digest.update(block)
                sink.write(block)
        self._local_commit(partial, dest, uri, if_absent)
        return digest.hexdigest()

    @staticmethod
    def _local_partial(dest: Path) -> Path:
        dest.parent.mkdir(parents=True, exist_ok=True)
        return dest.with_name(dest.name + ".partial")

    @staticmethod
    def _local_commit(partial: Path, dest: Path, uri: str, if_absent: bool) -> None:
        """Move a written ``.partial`` into place; create-only with ``if_absent`` (a hard link
        fails when the name exists, where a rename would replace it)."""
        if not if_absent:
            partial.replace(dest)
            return
        try:
            os.link(partial, dest)
        except FileExistsError as err:
            raise WriteConflict(f"{uri}: already exists; refusing to overwrite") from err
        finally:
            partial.unlink(missing_ok=True)

    def upload_tree(self, root: Path, uri: str) -> builtins.list[str]:
        """Upload every file under ``root`` below ``uri``; returns the URIs written."""
        written = []
        for path in sorted(p for p in root.rglob("*") if p.is_file()):
            target = join_uri(uri, *path.relative_to(root).parts)
            self.upload(path, target)
            written.append(target)
        return written

    def delete_tree(self, uri: str) -> None:
        """Remove everything under a prefix (used only for the job's own checkpoints)."""
        loc = parse_uri(uri)
        self._refuse_hub_write(loc)
        if loc.scheme == "file":
            shutil.rmtree(loc.key, ignore_errors=True)
            return
        for item in self.list(uri):
            self.remote(loc.scheme).delete(parse_uri(item))

    def delete(self, uri: str) -> None:
        """Remove one object, if it is there (used only for the job's own checkpoint pointer)."""
        loc = parse_uri(uri)
        self._refuse_hub_write(loc)
        if loc.scheme == "file":
            Path(loc.key).unlink(missing_ok=True)
        elif self.exists(uri):  # not every scheme's delete takes a missing object
            self.remote(loc.scheme).delete(loc)
