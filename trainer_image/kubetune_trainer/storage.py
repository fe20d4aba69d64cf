"""One way to read and write ``s3://`` and ``file://`` URIs, and to read ``hf://`` ones, in the pod and
on a laptop.

Everything the trainer fetches or publishes (datasets, base models, checkpoints, artifacts)
goes through :class:`ObjectStore`, so tests against a moto S3 server exercise the same code
path production uses.
"""

from __future__ import annotations

import base64
import builtins
import contextlib
import hashlib
import os
import shutil
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import urlparse

from kubetune.api import contract
from kubetune.api.v1alpha1 import S3Spec
from kubetune_trainer.errors import ConfigurationError
from kubetune_trainer.hub import HubClient, HubError, parse_hub_uri
from kubetune_trainer.secrets import read_secret_key

# Files up to this size go in one PUT; larger ones in parts of PART_SIZE (S3: 5 MiB to 5 GiB a
# part, 10,000 parts), each part checked by the server against its own SHA-256.
MULTIPART_THRESHOLD = 64 * 1024 * 1024
PART_SIZE = 64 * 1024 * 1024
UPLOAD_THREADS = 4


def _check_ca_bundle(path: Path) -> None:
    """The CA bundle of spec.s3.caBundle must be readable PEM; else every request would fail, and
    be retried, with an opaque TLS error."""
    import ssl

    try:
        ssl.create_default_context(cafile=str(path))
    except (OSError, ssl.SSLError) as err:
        reason = getattr(err, "strerror", None) or getattr(err, "reason", None) or str(err)
        raise ConfigurationError(
            f"spec.s3.caBundle: the CA bundle mounted at {path} is not a readable PEM certificate bundle ({reason})"
        ) from err


def _read_credentials(folder: Path, s3: S3Spec) -> dict[str, str]:
    """boto3's credential arguments from spec.s3.credentialsSecret as the operator mounts it (one
    file per key, a key the Secret lacks left out), each problem named at the field that lists the key."""
    secret = s3.credentials_secret
    if secret is None:
        raise ConfigurationError(f"{folder}: S3 credentials are mounted but spec.s3.credentialsSecret is not set")
    wanted = [
        ("aws_access_key_id", "accessKeyIdKey", secret.access_key_id_key, contract.S3_ACCESS_KEY_ID_FILE),
        (
            "aws_secret_access_key",
            "secretAccessKeyKey",
            secret.secret_access_key_key,
            contract.S3_SECRET_ACCESS_KEY_FILE,
        ),
    ]
    if secret.session_token_key:
        wanted.append(
            ("aws_session_token", "sessionTokenKey", secret.session_token_key, contract.S3_SESSION_TOKEN_FILE)
        )
    return {
        argument: read_secret_key(folder, file, field=f"spec.s3.credentialsSecret.{field}", secret=secret.name, key=key)
        for argument, field, key, file in wanted
    }


class StorageError(RuntimeError):
    """A URI could not be read or written; the message names the URI and the cause."""


class WriteConflict(StorageError):
    """A conditional write lost: the object exists (create-only) or changed since it was read."""


# What S3 answers when a conditional write's condition fails (412), or a concurrent one won (409).
CONFLICT_CODES = ("PreconditionFailed", "ConditionalRequestConflict")


@dataclass(frozen=True)
class Location:
    scheme: str  # "s3", "file" or "hf"
    bucket: str  # empty for file://; for hf:// the repository ([datasets/]owner/name[@revision])
    key: str  # object key, absolute path for file://, path in the repository for hf://

    @property
    def uri(self) -> str:
        if self.scheme == "hf":
            return f"hf://{self.bucket}" + (f"/{self.key}" if self.key else "")
        return f"s3://{self.bucket}/{self.key}" if self.scheme == "s3" else f"file://{self.key}"

    def child(self, name: str) -> Location:
        base = self.key.rstrip("/")
        key = f"{base}/{name}" if base else name
        return Location(self.scheme, self.bucket, key)


def parse_uri(uri: str) -> Location:
    parsed = urlparse(uri)
    if parsed.scheme == "s3":
        if not parsed.netloc:
            raise StorageError(f"{uri}: an s3:// URI needs a bucket")
        return Location("s3", parsed.netloc, parsed.path.lstrip("/"))
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
    raise StorageError(f"{uri}: unsupported scheme {parsed.scheme!r} (use s3://, file:// or hf://)")


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


def _b64(digest: bytes) -> str:
    return base64.b64encode(digest).decode("ascii")


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


class ObjectStore:
    """Reads and writes objects by URI. S3 settings come from the job's ``spec.s3``.

    Credentials: the job's Secret as files the operator mounts (``credentials_dir``), else boto3's
    default chain (the pod's web identity for IRSA/Workload Identity, or a laptop's profile and
    environment): never from the manifest.
    """

    def __init__(
        self,
        s3: S3Spec | None = None,
        *,
        ca_bundle: Path | None = None,
        credentials_dir: Path | None = None,
        public_endpoint_only: bool = False,
        hub: HubClient | None = None,
    ) -> None:
        self._s3_spec = s3 or S3Spec()
        self._ca_bundle = ca_bundle  # spec.s3.caBundle as mounted in the pod (TrainerEnvironment)
        self._credentials_dir = credentials_dir  # spec.s3.credentialsSecret as mounted in the pod
        # The endpoint passed the operator's policy only as a public one: every connection must reach a
        # public address (kubetune_trainer.egress), whatever the name resolves to when it is made.
        self._public_endpoint_only = public_endpoint_only
        self._client: Any = None
        self.hub = hub or HubClient()  # hf:// reads: the platform's endpoint, the job's token
        self.multipart_threshold = MULTIPART_THRESHOLD
        self.part_size = PART_SIZE

    # ------------------------------------------------------------------ plumbing
    @property
    def s3(self) -> Any:
        if self._client is None:
            import boto3
            from botocore.config import Config

            spec = self._s3_spec
            if self._ca_bundle is not None:
                _check_ca_bundle(self._ca_bundle)
            credentials = _read_credentials(self._credentials_dir, spec) if self._credentials_dir is not None else {}
            config = Config(
                retries={"max_attempts": 5, "mode": "standard"},
                s3={"addressing_style": "path" if spec.force_path_style or spec.endpoint else "auto"},
                connect_timeout=10,
                read_timeout=60,
            )
            from botocore.exceptions import InvalidRegionError

            try:
                self._client = boto3.client(
                    "s3",
                    endpoint_url=spec.endpoint or os.environ.get("AWS_ENDPOINT_URL_S3") or None,
                    region_name=spec.region or os.environ.get("AWS_REGION") or "us-east-1",
                    config=config,
                    verify=str(self._ca_bundle) if self._ca_bundle is not None else None,
                    **credentials,
                )
            except InvalidRegionError as err:  # a retry cannot fix the job's own setting
                raise ConfigurationError(f"spec.s3.region: {err}") from err
            except ValueError as err:
                raise ConfigurationError(f"spec.s3.endpoint: {err}") from err
            if self._public_endpoint_only:
                from kubetune_trainer.egress import refuse_non_public_peers

                client, self._client = self._client, None  # unusable until the check is in place
                refuse_non_public_peers(client, f"spec.s3.endpoint {spec.endpoint}", StorageError)
                self._client = client
        return self._client

    def _s3_call(self, uri: str, action: str, func: Any, **kwargs: Any) -> Any:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            return func(**kwargs)
        except ClientError as err:
            code = err.response.get("Error", {}).get("Code", "?")
            kind = WriteConflict if code in CONFLICT_CODES else StorageError
            raise kind(f"{uri}: cannot {action}: {code}: {err}") from err
        except BotoCoreError as err:
            raise StorageError(f"{uri}: cannot {action}: {err}") from err

    def _hub_call(self, action: Any, *args: Any) -> Any:
        """A read of the Hub, its failure this module's StorageError."""
        try:
            return action(*args)
        except HubError as err:
            raise StorageError(str(err)) from err

    @staticmethod
    def _refuse_hub_write(loc: Location) -> None:
        if loc.scheme == "hf":
            raise StorageError(f"{loc.uri}: hf:// is read only here; publish to s3:// or file://")

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
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            self.s3.head_object(Bucket=loc.bucket, Key=loc.key)
            return True
        except ClientError as err:
            if err.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                return False
            raise StorageError(f"{uri}: cannot check existence: {err}") from err
        except BotoCoreError as err:  # no credentials, no connection: the run's error, not a traceback
            raise StorageError(f"{uri}: cannot check existence: {err}") from err

    def read_bytes(self, uri: str) -> bytes:
        loc = parse_uri(uri)
        if loc.scheme == "file":
            try:
                return Path(loc.key).read_bytes()
            except OSError as err:
                raise StorageError(f"{uri}: cannot read: {err.strerror}") from err
        if loc.scheme == "hf":
            return bytes(self._hub_call(self.hub.fetch, uri).read_bytes())
        response = self._s3_call(uri, "read", self.s3.get_object, Bucket=loc.bucket, Key=loc.key)
        return bytes(response["Body"].read())

    def digest(self, uri: str) -> tuple[str, int]:
        """SHA-256 (hex) and size of one object, read as a stream."""
        loc = parse_uri(uri)
        digest, size = hashlib.sha256(), 0
        if loc.scheme in ("file", "hf"):
            local = self._hub_call(self.hub.fetch, uri) if loc.scheme == "hf" else Path(loc.key)
            try:
                with local.open("rb") as handle:
                    while block := handle.read(1 << 20):
                        digest.update(block)
                        size += len(block)
            except OSError as err:
                raise StorageError(f"{uri}: cannot read: {err.strerror}") from err
            return digest.hexdigest(), size
        from botocore.exceptions import BotoCoreError

        response = self._s3_call(uri, "read", self.s3.get_object, Bucket=loc.bucket, Key=loc.key)
        try:
            for block in response["Body"].iter_chunks(1 << 20):
                digest.update(block)
                size += len(block)
        except BotoCoreError as err:  # the connection dropped mid-body
            raise StorageError(f"{uri}: cannot read: {err}") from err
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
        return sorted(f"s3://{loc.bucket}/{key}" for key in self._iter_keys(loc))

    def _iter_keys(self, loc: Location) -> Iterator[str]:
        paginator = self.s3.get_paginator("list_objects_v2")
        pages = self._s3_call(loc.uri, "list", lambda: list(paginator.paginate(Bucket=loc.bucket, Prefix=loc.key)))
        for page in pages:
            for item in page.get("Contents", []):
                yield item["Key"]

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
            self._s3_call(uri, "download", self.s3.download_file, Bucket=loc.bucket, Key=loc.key, Filename=str(partial))
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
        found = self.list(loc.uri.rstrip("/") + "/") if loc.scheme == "s3" else self.list(loc.uri)
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
            if loc.scheme == "s3" and (relative == "" or relative.endswith("/")):  # a marker ("" is the prefix's own)
                if relative:
                    safe_relative_key(relative.removesuffix("/"), item)
                continue
            planned.append((item, _contained(dest, safe_relative_key(relative, item), item)))
        for item, target in planned:
            self.download(item, target)
        return dest

    # ------------------------------------------------------------------ writes
    def write_bytes(self, uri: str, data: bytes, *, if_absent: bool = False) -> None:
        """Write one object, which S3 checks against the SHA-256 sent with it; with ``if_absent``
        refuse to replace an existing one (a create-only write)."""
        loc = parse_uri(uri)
        self._refuse_hub_write(loc)
        if loc.scheme == "file":
            partial = self._local_partial(Path(loc.key))
            partial.write_bytes(data)
            self._local_commit(partial, Path(loc.key), uri, if_absent)
            return
        self._put(loc, data, if_absent)

    def _put(self, loc: Location, data: bytes, if_absent: bool, if_match: str | None = None) -> str:
        """PutObject with its SHA-256; returns the new object's ETag."""
        extra: dict[str, Any] = {"IfNoneMatch": "*"} if if_absent else {}
        if if_match is not None:
            extra["IfMatch"] = if_match
        checksum = _b64(hashlib.sha256(data).digest())
        answer = self._s3_call(
            loc.uri,
            "write",
            self.s3.put_object,
            Bucket=loc.bucket,
            Key=loc.key,
            Body=data,
            ChecksumSHA256=checksum,
            **extra,
        )
        return str(answer["ETag"])

    def read_tagged(self, uri: str) -> tuple[bytes, str]:
        """An object and its version tag (S3's ETag; the SHA-256 of a local file's bytes), for
        :meth:`replace_if_unchanged`."""
        loc = parse_uri(uri)
        if loc.scheme == "file":
            data = self.read_bytes(uri)
            return data, hashlib.sha256(data).hexdigest()
        response = self._s3_call(uri, "read", self.s3.get_object, Bucket=loc.bucket, Key=loc.key)
        return bytes(response["Body"].read()), str(response["ETag"])

    def replace_if_unchanged(self, uri: str, data: bytes, tag: str | None) -> str:
        """A conditional update: write ``data`` only if the object is still the version ``tag``
        names (``None``: only if there is none yet); returns the new version's tag. S3 decides
        (If-Match / If-None-Match); a local file is compared first, then replaced (one writer per
        folder on a laptop: the check and the rename are not one step)."""
        loc = parse_uri(uri)
        self._refuse_hub_write(loc)
        if loc.scheme == "s3":
            return self._put(loc, data, tag is None, tag)
        path = Path(loc.key)
        current = hashlib.sha256(path.read_bytes()).hexdigest() if path.exists() else None
        if current != tag:
            raise WriteConflict(f"{uri}: changed since it was read (another writer); refusing to overwrite")
        self.write_bytes(uri, data)
        return hashlib.sha256(data).hexdigest()

    def upload(self, path: Path, uri: str, *, if_absent: bool = False) -> str:
        """Copy one file to ``uri`` and return its SHA-256 (hex).

        S3 checks what it received against the SHA-256 sent with it (one per part for files over
        ``multipart_threshold``) and refuses a mismatch; with ``if_absent`` it also refuses to
        replace an existing object. s3transfer's ``upload_file`` is not used: it cannot send a
        create-only condition.
        """
        loc = parse_uri(uri)
        self._refuse_hub_write(loc)
        if loc.scheme == "file":
            dest = Path(loc.key)
            partial = self._local_partial(dest)
            digest = hashlib.sha256()
            with path.open("rb") as source, partial.open("wb") as sink:
                while block := source.read(1 << 20):
                    digest.update(block)
                    sink.write(block)
            self._local_commit(partial, dest, uri, if_absent)
            return digest.hexdigest()
        if path.stat().st_size <= self.multipart_threshold:
            data = path.read_bytes()
            self._put(loc, data, if_absent)
            return hashlib.sha256(data).hexdigest()
        return self._upload_parts(path, loc, if_absent)

    def _upload_parts(self, path: Path, loc: Location, if_absent: bool) -> str:
        """A multipart upload, each part with its SHA-256; the whole file's SHA-256 is returned
        for the manifest (S3's own checksum of a multipart object is one of its parts' checksums)."""
        uri = loc.uri
        upload_id = self._s3_call(
            uri, "upload", self.s3.create_multipart_upload, Bucket=loc.bucket, Key=loc.key, ChecksumAlgorithm="SHA256"
        )["UploadId"]
        digest = hashlib.sha256()
        pending: list[Future[dict[str, Any]]] = []
        try:
            with path.open("rb") as source, ThreadPoolExecutor(max_workers=UPLOAD_THREADS) as pool:
                number = 0
                while block := source.read(self.part_size):
                    number += 1
                    digest.update(block)
                    if len(pending) >= UPLOAD_THREADS:  # at most UPLOAD_THREADS parts held in memory
                        pending[-UPLOAD_THREADS].result()
                    pending.append(pool.submit(self._upload_part, loc, upload_id, number, block))
                parts = [future.result() for future in pending]
            extra: dict[str, Any] = {"IfNoneMatch": "*"} if if_absent else {}
            self._s3_call(
                uri,
                "upload",
                self.s3.complete_multipart_upload,
                Bucket=loc.bucket,
                Key=loc.key,
                UploadId=upload_id,
                MultipartUpload={"Parts": parts},
                **extra,
            )
        except BaseException:
            from botocore.exceptions import BotoCoreError, ClientError

            with contextlib.suppress(BotoCoreError, ClientError):  # the upload failed already; say why, not this
                self.s3.abort_multipart_upload(Bucket=loc.bucket, Key=loc.key, UploadId=upload_id)
            raise
        return digest.hexdigest()

    def _upload_part(self, loc: Location, upload_id: str, number: int, block: bytes) -> dict[str, Any]:
        checksum = _b64(hashlib.sha256(block).digest())
        answer = self._s3_call(
            f"{loc.uri} (part {number})",
            "upload",
            self.s3.upload_part,
            Bucket=loc.bucket,
            Key=loc.key,
            UploadId=upload_id,
            PartNumber=number,
            Body=block,
            ChecksumSHA256=checksum,
        )
        return {"PartNumber": number, "ETag": answer["ETag"], "ChecksumSHA256": checksum}

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
            key = parse_uri(item).key
            self._s3_call(item, "delete", self.s3.delete_object, Bucket=loc.bucket, Key=key)
