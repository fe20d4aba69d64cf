"""``s3://`` through boto3: any S3-compatible endpoint (``spec.s3``), credentials from the job's Secret
as mounted files or boto3's default chain (the pod's web identity for IRSA, a laptop's profile)."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import os
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

from kubetune.api import contract
from kubetune.api.v1alpha1 import S3Spec
from kubetune_trainer.errors import ConfigurationError
from kubetune_trainer.secrets import read_secret_key
from kubetune_trainer.stores.base import Location, StorageError, WriteConflict

# Files up to this size go in one PUT; larger ones in parts of PART_SIZE (S3: 5 MiB to 5 GiB a
# part, 10,000 parts), each part checked by the server against its own SHA-256.
MULTIPART_THRESHOLD = 64 * 1024 * 1024
PART_SIZE = 64 * 1024 * 1024
UPLOAD_THREADS = 4

# What S3 answers when a conditional write's condition fails (412), or a concurrent one won (409).
CONFLICT_CODES = ("PreconditionFailed", "ConditionalRequestConflict")


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


def _b64(digest: bytes) -> str:
    return base64.b64encode(digest).decode("ascii")


class S3Bucket:
    """:class:`~kubetune_trainer.stores.base.RemoteBucket` for ``s3://``; the client is made at first use."""

    def __init__(
        self,
        spec: S3Spec,
        *,
        ca_bundle: Path | None = None,
        credentials_dir: Path | None = None,
        public_endpoint_only: bool = False,
    ) -> None:
        self.spec = spec
        self._ca_bundle = ca_bundle  # spec.s3.caBundle as mounted in the pod (TrainerEnvironment)
        self._credentials_dir = credentials_dir  # spec.s3.credentialsSecret as mounted in the pod
        # The endpoint passed the operator's policy only as a public one: every connection must reach a
        # public address (kubetune_trainer.egress), whatever the name resolves to when it is made.
        self._public_endpoint_only = public_endpoint_only
        self._client: Any = None
        self.multipart_threshold = MULTIPART_THRESHOLD
        self.part_size = PART_SIZE

    @property
    def client(self) -> Any:
        if self._client is None:
            import boto3
            from botocore.config import Config
            from botocore.exceptions import InvalidRegionError

            spec = self.spec
            if self._ca_bundle is not None:
                _check_ca_bundle(self._ca_bundle)
            credentials = _read_credentials(self._credentials_dir, spec) if self._credentials_dir is not None else {}
            config = Config(
                retries={"max_attempts": 5, "mode": "standard"},
                s3={"addressing_style": "path" if spec.force_path_style or spec.endpoint else "auto"},
                connect_timeout=10,
                read_timeout=60,
            )
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

    def _call(self, uri: str, action: str, func: Any, **kwargs: Any) -> Any:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            return func(**kwargs)
        except ClientError as err:
            code = err.response.get("Error", {}).get("Code", "?")
            kind = WriteConflict if code in CONFLICT_CODES else StorageError
            raise kind(f"{uri}: cannot {action}: {code}: {err}") from err
        except BotoCoreError as err:
            raise StorageError(f"{uri}: cannot {action}: {err}") from err

    # ------------------------------------------------------------------ reads
    def exists(self, loc: Location) -> bool:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            self.client.head_object(Bucket=loc.bucket, Key=loc.key)
            return True
        except ClientError as err:
            if err.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                return False
            raise StorageError(f"{loc.uri}: cannot check existence: {err}") from err
        except BotoCoreError as err:  # no credentials, no connection: the run's error, not a traceback
            raise StorageError(f"{loc.uri}: cannot check existence: {err}") from err

    def read(self, loc: Location) -> bytes:
        return self.read_tagged(loc)[0]

    def read_tagged(self, loc: Location) -> tuple[bytes, str]:
        response = self._call(loc.uri, "read", self.client.get_object, Bucket=loc.bucket, Key=loc.key)
        return bytes(response["Body"].read()), str(response["ETag"])

    def digest(self, loc: Location) -> tuple[str, int]:
        from botocore.exceptions import BotoCoreError

        digest, size = hashlib.sha256(), 0
        response = self._call(loc.uri, "read", self.client.get_object, Bucket=loc.bucket, Key=loc.key)
        try:
            for block in response["Body"].iter_chunks(1 << 20):
                digest.update(block)
                size += len(block)
        except BotoCoreError as err:  # the connection dropped mid-body
            raise StorageError(f"{loc.uri}: cannot read: {err}") from err
        return digest.hexdigest(), size

    def keys(self, loc: Location) -> list[str]:
        return list(self._iter_keys(loc))

    def _iter_keys(self, loc: Location) -> Iterator[str]:
        paginator = self.client.get_paginator("list_objects_v2")
        pages = self._call(loc.uri, "list", lambda: list(paginator.paginate(Bucket=loc.bucket, Prefix=loc.key)))
        for page in pages:
            for item in page.get("Contents", []):
                yield item["Key"]

    def download(self, loc: Location, dest: Path) -> None:
        self._call(loc.uri, "download", self.client.download_file, Bucket=loc.bucket, Key=loc.key, Filename=str(dest))

    # ------------------------------------------------------------------ writes
    def put(self, loc: Location, data: bytes, *, if_absent: bool, if_tag: str | None = None) -> str:
        """PutObject with its SHA-256 (If-None-Match / If-Match for the conditions); the new ETag."""
        extra: dict[str, Any] = {"IfNoneMatch": "*"} if if_absent else {}
        if if_tag is not None:
            extra["IfMatch"] = if_tag
        checksum = _b64(hashlib.sha256(data).digest())
        answer = self._call(
            loc.uri,
            "write",
            self.client.put_object,
            Bucket=loc.bucket,
            Key=loc.key,
            Body=data,
            ChecksumSHA256=checksum,
            **extra,
        )
        return str(answer["ETag"])

    def upload(self, path: Path, loc: Location, *, if_absent: bool) -> str:
        """One PUT up to ``multipart_threshold``, else a multipart upload. s3transfer's ``upload_file``
        is not used: it cannot send a create-only condition."""
        if path.stat().st_size <= self.multipart_threshold:
            data = path.read_bytes()
            self.put(loc, data, if_absent=if_absent)
            return hashlib.sha256(data).hexdigest()
        return self._upload_parts(path, loc, if_absent)

    def _upload_parts(self, path: Path, loc: Location, if_absent: bool) -> str:
        """A multipart upload, each part with its SHA-256; the whole file's SHA-256 is returned
        for the manifest (S3's own checksum of a multipart object is one of its parts' checksums)."""
        uri = loc.uri
        upload_id = self._call(
            uri,
            "upload",
            self.client.create_multipart_upload,
            Bucket=loc.bucket,
            Key=loc.key,
            ChecksumAlgorithm="SHA256",
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
            self._call(
                uri,
                "upload",
                self.client.complete_multipart_upload,
                Bucket=loc.bucket,
                Key=loc.key,
                UploadId=upload_id,
                MultipartUpload={"Parts": parts},
                **extra,
            )
        except BaseException:
            from botocore.exceptions import BotoCoreError, ClientError

            with contextlib.suppress(BotoCoreError, ClientError):  # the upload failed already; say why, not this
                self.client.abort_multipart_upload(Bucket=loc.bucket, Key=loc.key, UploadId=upload_id)
            raise
        return digest.hexdigest()

    def _upload_part(self, loc: Location, upload_id: str, number: int, block: bytes) -> dict[str, Any]:
        checksum = _b64(hashlib.sha256(block).digest())
        answer = self._call(
            f"{loc.uri} (part {number})",
            "upload",
            self.client.upload_part,
            Bucket=loc.bucket,
            Key=loc.key,
            UploadId=upload_id,
            PartNumber=number,
            Body=block,
            ChecksumSHA256=checksum,
        )
        return {"PartNumber": number, "ETag": answer["ETag"], "ChecksumSHA256": checksum}

    def delete(self, loc: Location) -> None:
        self._call(loc.uri, "delete", self.client.delete_object, Bucket=loc.bucket, Key=loc.key)
