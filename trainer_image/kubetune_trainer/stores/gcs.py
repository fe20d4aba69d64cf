"""``gs://`` through Google's own client (``google-cloud-storage``): Cloud Storage's JSON API, or the
endpoint the platform sets (``gcs.endpoint`` in the chart: Private Service Connect, an emulator).

Credentials: the job's service-account key (``spec.gcs.credentialsSecret``, mounted as a file), else
Application Default Credentials: on GKE the pod's Kubernetes ServiceAccount bound to a Google one
(Workload Identity Federation), on a laptop ``gcloud auth application-default login``. Never from
the manifest.

Integrity: every write sends its CRC32C, which Cloud Storage checks before it stores the object (one
request up to 8 MiB); a larger file goes in a resumable upload whose CRC32C the client checks against
the stored object's at the end. Every read is checked against the object's CRC32C as it arrives.
Conditions are generations: create-only is ``ifGenerationMatch=0``, a conditional update
``ifGenerationMatch=<the generation read>``; a lost condition is answered 412 and is a WriteConflict.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from kubetune_trainer.errors import ConfigurationError
from kubetune_trainer.stores.base import HashingSink, Location, StorageError, WriteConflict, sha256_file

if TYPE_CHECKING:
    from kubetune_trainer.environment import TrainerEnvironment

# The scope a job needs: read and write objects, nothing about buckets' settings or IAM.
SCOPE = "https://www.googleapis.com/auth/devstorage.read_write"


class GcsBucket:
    """:class:`~kubetune_trainer.stores.base.RemoteBucket` for ``gs://``; the client is made at first use."""

    def __init__(self, *, endpoint: str | None = None, key_file: Path | None = None) -> None:
        self.endpoint = endpoint  # the platform's (gcs.endpoint in the chart); None: Google's
        self._key_file = key_file  # spec.gcs.credentialsSecret's key as mounted in the pod
        self._client: Any = None

    @classmethod
    def from_environment(cls, environment: TrainerEnvironment) -> GcsBucket:
        """The platform's endpoint and the job's key, as the operator set them on the pod."""
        return cls(endpoint=environment.gcs_endpoint, key_file=environment.gcs_key_file)

    @property
    def client(self) -> Any:
        if self._client is None:
            from google.cloud import storage

            options = {"api_endpoint": self.endpoint} if self.endpoint else None
            # Objects are named by bucket; no call here is billed to or scoped by a project.
            self._client = storage.Client(project="-", credentials=self._credentials(), client_options=options)
        return self._client

    def _credentials(self) -> Any:
        """The key's service account, else Application Default Credentials (Workload Identity)."""
        import google.auth
        from google.auth.exceptions import DefaultCredentialsError
        from google.oauth2 import service_account

        if self._key_file is None:
            try:
                credentials, _ = google.auth.default(scopes=[SCOPE])
            except DefaultCredentialsError as err:
                raise ConfigurationError(
                    "spec.gcs: no credentials for Cloud Storage: set spec.gcs.credentialsSecret (a service-account "
                    "key), or let the job's ServiceAccount use Workload Identity "
                    f"({str(err).splitlines()[0]})"
                ) from err
            return credentials
        field = "spec.gcs.credentialsSecret.key"
        try:
            return service_account.Credentials.from_service_account_file(str(self._key_file), scopes=[SCOPE])
        except FileNotFoundError:
            raise ConfigurationError(f"{field}: the Secret has no such key") from None
        except (ValueError, KeyError) as err:  # not JSON, not a service-account key, no private key
            raise ConfigurationError(f"{field}: not a service-account key in JSON ({err})") from err

    def _call(self, uri: str, action: str, func: Any, *args: Any, **kwargs: Any) -> Any:
        """``func``, each failure this package's error naming ``uri``; 412 a lost condition."""
        from google.api_core.exceptions import GoogleAPIError, PreconditionFailed
        from google.auth.exceptions import GoogleAuthError
        from google.cloud.storage.exceptions import DataCorruption
        from requests.exceptions import RequestException

        try:
            return func(*args, **kwargs)
        except PreconditionFailed as err:
            raise WriteConflict(f"{uri}: cannot {action}: the object exists or changed since it was read") from err
        except DataCorruption as err:
            raise StorageError(f"{uri}: cannot {action}: the CRC32C does not match what was sent or stored") from err
        except GoogleAuthError as err:
            raise StorageError(f"{uri}: cannot {action}: Cloud Storage credentials refused: {err}") from err
        except (GoogleAPIError, RequestException) as err:
            raise StorageError(f"{uri}: cannot {action}: {err}") from err

    def _blob(self, loc: Location, generation: int | None = None) -> Any:
        return self.client.bucket(loc.bucket).blob(loc.key, generation=generation)

    # ------------------------------------------------------------------ reads
    def exists(self, loc: Location) -> bool:
        return bool(self._call(loc.uri, "check existence", self._blob(loc).exists))

    def _stored(self, loc: Location) -> Any:
        """The object's metadata (its generation, CRC32C), or a StorageError when there is none."""
        blob = self._call(loc.uri, "read", self.client.bucket(loc.bucket).get_blob, loc.key)
        if blob is None:
            raise StorageError(f"{loc.uri}: cannot read: no such object")
        return blob

    def read(self, loc: Location) -> bytes:
        return self.read_tagged(loc)[0]

    def read_tagged(self, loc: Location) -> tuple[bytes, str]:
        """The object at one generation (read, then downloaded at that generation: never a mix)."""
        generation = int(self._stored(loc).generation)
        data = self._call(loc.uri, "read", self._blob(loc, generation).download_as_bytes, checksum="crc32c")
        return bytes(data), str(generation)

    def digest(self, loc: Location) -> tuple[str, int]:
        sink = HashingSink()
        self._call(loc.uri, "read", self._blob(loc).download_to_file, sink, checksum="crc32c")
        return sink.sha256.hexdigest(), sink.size

    def keys(self, loc: Location) -> list[str]:
        blobs = self._call(loc.uri, "list", lambda: list(self.client.list_blobs(loc.bucket, prefix=loc.key)))
        return [str(blob.name) for blob in blobs]

    def download(self, loc: Location, dest: Path) -> None:
        self._call(loc.uri, "download", self._blob(loc).download_to_filename, str(dest), checksum="crc32c")

    # ------------------------------------------------------------------ writes
    @staticmethod
    def _condition(if_absent: bool, if_tag: str | None) -> int | None:
        if if_absent:
            return 0  # Cloud Storage's create-only: no live generation
        if if_tag is None:
            return None
        if not if_tag.isdigit():  # a tag this store never gave: no generation can match it
            raise WriteConflict(f"version tag {if_tag!r} is not a Cloud Storage generation")
        return int(if_tag)

    def put(self, loc: Location, data: bytes, *, if_absent: bool, if_tag: str | None = None) -> str:
        blob = self._blob(loc)
        self._call(
            loc.uri,
            "write",
            blob.upload_from_string,
            data,
            content_type="application/octet-stream",
            if_generation_match=self._condition(if_absent, if_tag),
            checksum="crc32c",
        )
        return str(blob.generation)

    def upload(self, path: Path, loc: Location, *, if_absent: bool) -> str:
        blob = self._blob(loc)
        self._call(
            loc.uri,
            "upload",
            blob.upload_from_filename,
            str(path),
            content_type="application/octet-stream",
            if_generation_match=self._condition(if_absent, None),
            checksum="crc32c",
        )
        return sha256_file(path)

    def delete(self, loc: Location) -> None:
        self._call(loc.uri, "delete", self._blob(loc).delete)
