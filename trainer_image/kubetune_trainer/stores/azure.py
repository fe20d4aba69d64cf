"""``az://<account>/<container>/<path>`` through Microsoft's own client (``azure-storage-blob``).

The URI names the storage account, so a URI means one place wherever it is read and the platform's
prefixes (``az://<account>/<container>/``) bound it; the account's URL is the platform's template
(``azure.endpoint`` in the chart, ``{account}`` replaced): Azure's public cloud by default, a sovereign
cloud, a private endpoint or an emulator. A job never chooses a host: an account name is 3 to 24
lower-case letters and digits, so it cannot steer the request elsewhere.

Credentials: the account key from the job's Secret (mounted as a file), else ``DefaultAzureCredential``:
AKS Workload Identity in a pod (the federated token the identity webhook mounts), ``az login`` on a
laptop. Never from the manifest.

Integrity: every write sends its MD5 (``Content-MD5``, per block for a large file), which the service
checks before it stores the data; every read is checked against the MD5 the service sends. Conditions
are ETags: create-only is ``If-None-Match: *``, a conditional update ``If-Match: <the ETag read>``; a
lost condition is answered 409 or 412 and is a WriteConflict.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kubetune_trainer.secrets import read_mounted_key
from kubetune_trainer.stores.base import HashingSink, Location, StorageError, WriteConflict, sha256_file

if TYPE_CHECKING:
    from kubetune_trainer.environment import TrainerEnvironment

# Azure's public cloud; the platform's azure.endpoint replaces it (same placeholder).
DEFAULT_ENDPOINT = "https://{account}.blob.core.windows.net"
# Storage account names: what keeps a URI from naming a host (az://evil.example:80@...).
ACCOUNT = re.compile(r"[a-z0-9]{3,24}")

# A file larger than this goes up in blocks of BLOCK_SIZE, each with its own MD5.
SINGLE_PUT_LIMIT = 8 * 1024 * 1024
BLOCK_SIZE = 8 * 1024 * 1024
UPLOAD_THREADS = 4


class AzureBucket:
    """:class:`~kubetune_trainer.stores.base.RemoteBucket` for ``az://``; the client is made at first use."""

    def __init__(self, *, endpoint: str | None = None, key_file: Path | None = None) -> None:
        self.endpoint = endpoint or DEFAULT_ENDPOINT  # the platform's template, with {account}
        self._key_file = key_file  # spec.azure.credentialsSecret's account key as mounted in the pod
        self._clients: dict[str, Any] = {}  # by account

    @classmethod
    def from_environment(cls, environment: TrainerEnvironment) -> AzureBucket:
        """The platform's endpoint and the job's key, as the operator set them on the pod."""
        return cls(endpoint=environment.azure_endpoint, key_file=environment.azure_key_file)

    def account_url(self, account: str) -> str:
        if not ACCOUNT.fullmatch(account):
            raise StorageError(f"az://{account}/: a storage account name is 3 to 24 lower-case letters and digits")
        return self.endpoint.replace("{account}", account)

    def client(self, account: str) -> Any:
        if account not in self._clients:
            from azure.storage.blob import BlobServiceClient

            self._clients[account] = BlobServiceClient(
                self.account_url(account),
                credential=self._credential(),
                max_single_put_size=SINGLE_PUT_LIMIT,
                max_block_size=BLOCK_SIZE,
            )
        return self._clients[account]

    def _credential(self) -> Any:
        """The account key, else DefaultAzureCredential (Workload Identity)."""
        if self._key_file is None:
            from azure.identity import DefaultAzureCredential

            return DefaultAzureCredential(exclude_interactive_browser_credential=True)
        return read_mounted_key(self._key_file, field="spec.azure.credentialsSecret.key", what="the account key")

    def _call(self, uri: str, action: str, func: Any, *args: Any, **kwargs: Any) -> Any:
        """``func``, each failure this package's error naming ``uri``; a lost condition a WriteConflict."""
        from azure.core.exceptions import (
            AzureError,
            ClientAuthenticationError,
            ResourceExistsError,
            ResourceModifiedError,
        )

        try:
            return func(*args, **kwargs)
        except (ResourceExistsError, ResourceModifiedError) as err:
            raise WriteConflict(f"{uri}: cannot {action}: the object exists or changed since it was read") from err
        except ClientAuthenticationError as err:
            raise StorageError(f"{uri}: cannot {action}: the storage account refused the credentials") from err
        except AzureError as err:
            first = str(err).splitlines()[0] if str(err) else type(err).__name__
            raise StorageError(f"{uri}: cannot {action}: {first}") from err

    def _container(self, loc: Location) -> Any:
        account, container = loc.bucket.split("/", 1)  # parse_uri's "account/container"
        return self.client(account).get_container_client(container)

    def _blob(self, loc: Location) -> Any:
        return self._container(loc).get_blob_client(loc.key)

    # ------------------------------------------------------------------ reads
    def exists(self, loc: Location) -> bool:
        return bool(self._call(loc.uri, "check existence", self._blob(loc).exists))

    def read(self, loc: Location) -> bytes:
        return self.read_tagged(loc)[0]

    def read_tagged(self, loc: Location) -> tuple[bytes, str]:
        """The object and the ETag of the version read (one response: never a mix)."""
        stream = self._call(loc.uri, "read", self._blob(loc).download_blob, validate_content=True)
        data = self._call(loc.uri, "read", stream.readall)
        return bytes(data), str(stream.properties.etag)

    def digest(self, loc: Location) -> tuple[str, int]:
        sink = HashingSink()
        stream = self._call(loc.uri, "read", self._blob(loc).download_blob, validate_content=True)
        self._call(loc.uri, "read", stream.readinto, sink)
        return sink.sha256.hexdigest(), sink.size

    def keys(self, loc: Location) -> list[str]:
        container = self._container(loc)
        blobs = self._call(loc.uri, "list", lambda: list(container.list_blob_names(name_starts_with=loc.key or None)))
        return [str(name) for name in blobs]

    def download(self, loc: Location, dest: Path) -> None:
        stream = self._call(loc.uri, "download", self._blob(loc).download_blob, validate_content=True)
        with dest.open("wb") as sink:
            self._call(loc.uri, "download", stream.readinto, sink)

    # ------------------------------------------------------------------ writes
    def _conditions(self, if_absent: bool, if_tag: str | None) -> dict[str, Any]:
        from azure.core import MatchConditions

        if if_absent:
            return {"overwrite": False}  # If-None-Match: *
        if if_tag is not None:
            return {"overwrite": True, "etag": if_tag, "match_condition": MatchConditions.IfNotModified}
        return {"overwrite": True}

    def put(self, loc: Location, data: bytes, *, if_absent: bool, if_tag: str | None = None) -> str:
        answer = self._call(
            loc.uri,
            "write",
            self._blob(loc).upload_blob,
            data,
            validate_content=True,
            **self._conditions(if_absent, if_tag),
        )
        return str(answer["etag"])

    def upload(self, path: Path, loc: Location, *, if_absent: bool) -> str:
        """One request up to SINGLE_PUT_LIMIT, else blocks, each with its MD5; the blocks become the
        object only when the block list is committed, under the create-only condition."""
        with path.open("rb") as source:
            self._call(
                loc.uri,
                "upload",
                self._blob(loc).upload_blob,
                source,
                length=path.stat().st_size,
                validate_content=True,
                max_concurrency=UPLOAD_THREADS,
                **self._conditions(if_absent, None),
            )
        return sha256_file(path)

    def delete(self, loc: Location) -> None:
        self._call(loc.uri, "delete", self._blob(loc).delete_blob)
