"""``spec.output.oci``: a published version pushed to an OCI registry as an ORAS artifact, through
oras-py (the ORAS project's Python client), so ``oras pull <repository>:<version>`` gets it back.

The artifact: an OCI image manifest (what every registry accepts, CNCF Distribution 2.8 included)
whose config is ``CONFIG_MEDIA_TYPE`` (the version, its manifest's URI and SHA-256) and whose layers
are the version's ``manifest.json`` and its ``adapter`` folder (the ``merged`` folder when the method
has no adapter) as a gzipped tar, ``org.opencontainers.image.title`` naming each, as ORAS writes a
folder. KAITO and vLLM deployments pull adapters from such artifacts.

Integrity: a registry stores a blob only under the SHA-256 it was uploaded with (it recomputes it), and
the pushed manifest's digest is read back by tag and compared. A tag is never moved: a version's name
is unique, and a tag that already exists is refused, not overwritten (a registry offers no conditional
write, so two pushes of one version at the same instant could race; kubetune makes one per version).

A push runs after the version is published to storage: its failure does not undo the version. It is
reported (the job's ``status.result.oci.error``, a warning in the log) and the job still succeeds.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from kubetune.api.contract import ENV_OCI_REGISTRY
from kubetune.api.v1alpha1 import OciPushStatus

log = logging.getLogger(__name__)

CONFIG_MEDIA_TYPE = "application/vnd.kubetune.model.config.v1+json"
MANIFEST_MEDIA_TYPE = "application/vnd.kubetune.manifest.v1+json"
OCI_MANIFEST_MEDIA_TYPE = "application/vnd.oci.image.manifest.v1+json"
# The folders a version may hold, in the order of preference: an adapter is what serving stacks
# load onto a base they already have; the merged weights when the method has none.
PUSHED_FOLDERS = ("adapter", "merged")


class OciPushError(RuntimeError):
    """A push that did not happen; the message names the reference and the cause."""


def push_version(
    artifacts: Path,
    manifest: bytes,
    *,
    version: str,
    manifest_uri: str,
    repository: str,
    registry_url: str | None,
    auth_file: Path | None,
    in_pod: bool = False,
) -> OciPushStatus:
    """Push the version in ``artifacts`` (the folder just published) with its ``manifest`` bytes to
    ``repository:version``; the outcome as the job's status reports it, an error included.
    ``registry_url``: the registry as the operator set it for the pod (the platform's listing decides
    http or https); ``kubetune run`` on a laptop may leave it unset for https."""
    reference = f"{repository}:{version}"
    try:
        registry = _registry(repository, registry_url, in_pod=in_pod)
        digest = _push(artifacts, manifest, version, manifest_uri, reference, registry, auth_file)
    except OciPushError as err:
        log.warning("spec.output.oci: %s; the version stays published in storage", err)
        return OciPushStatus(reference=reference, error=str(err))
    log.info("pushed %s (%s)", reference, digest)
    return OciPushStatus(reference=reference, digest=digest)


def _registry(repository: str, configured: str | None, *, in_pod: bool) -> str:
    """The URL to push ``repository`` to: the operator's, whose host must be the repository's."""
    host = repository.split("/", 1)[0]
    if configured is None:
        if in_pod:  # the operator sets it on the training pod of every job it admitted with a push
            raise OciPushError(f"{repository}: this pod was given no registry to push to ({ENV_OCI_REGISTRY} unset)")
        return f"https://{host}"
    if configured.split("://", 1)[-1].rstrip("/").lower() != host.lower():
        raise OciPushError(f"{repository}: {host} is not the registry this pod may push to ({configured})")
    return configured.rstrip("/")


def _push(
    artifacts: Path,
    manifest: bytes,
    version: str,
    manifest_uri: str,
    reference: str,
    registry_url: str,
    auth_file: Path | None,
) -> str:
    import requests

    folder = next((artifacts / name for name in PUSHED_FOLDERS if (artifacts / name).is_dir()), None)
    if folder is None:
        raise OciPushError(f"{reference}: the version has no {' or '.join(PUSHED_FOLDERS)} folder to push")
    client = _client(registry_url, reference, auth_file)
    try:
        if _stored_digest(client, reference) is not None:
            raise OciPushError(f"{reference}: the tag exists already; a version's tag is never overwritten")
        # Staged beside the artifacts (the job's scratch): a pod's /tmp is small, and oras-py writes the
        # folder's tar.gz where tempfile points, which is set here for the push's length.
        with tempfile.TemporaryDirectory(prefix="kubetune-oci-", dir=artifacts.parent) as scratch, _tempdir(scratch):
            staged = Path(scratch)
            (staged / "manifest.json").write_bytes(manifest)
            config = staged / "config.json"
            manifest_sha256 = hashlib.sha256(manifest).hexdigest()
            config.write_text(
                json.dumps({"version": version, "manifestUri": manifest_uri, "manifestSha256": manifest_sha256})
            )
            response = client.push(
                target=reference,
                files=[f"{staged / 'manifest.json'}:{MANIFEST_MEDIA_TYPE}", str(folder)],
                manifest_config=f"{config}:{CONFIG_MEDIA_TYPE}",
                manifest_annotations={
                    "org.opencontainers.image.version": version,
                    "org.opencontainers.image.source": manifest_uri,
                    "dev.kubetune.manifest.sha256": manifest_sha256,
                },
                disable_path_validation=True,  # the files are in a scratch folder, not the working directory
                quiet=True,
            )
        pushed = response.headers.get("Docker-Content-Digest")
        stored = _stored_digest(client, reference)
    except OciPushError:
        raise
    except Exception as err:
        text = str(err)
        if "UNAUTHORIZED" in text or "DENIED" in text:
            why = "the registry refused the login"
        elif isinstance(err, requests.RequestException):
            why = "cannot reach the registry"
        else:
            why = "the push failed"
        raise OciPushError(f"{reference}: {why}: {_first_line(err)}") from err
    if pushed is None or stored != pushed:
        raise OciPushError(
            f"{reference}: the registry holds {stored} under the tag, not the manifest pushed ({pushed})"
        )
    return pushed


@contextmanager
def _tempdir(folder: str) -> Iterator[None]:
    before = tempfile.tempdir
    tempfile.tempdir = folder
    try:
        yield
    finally:
        tempfile.tempdir = before


def _client(registry_url: str, reference: str, auth_file: Path | None) -> Any:
    """An oras-py client for the registry at ``registry_url`` (its scheme the platform's choice), logged
    in with the Docker config's entry for the registry when there is one. The auth backend follows
    the registry's challenge: a bearer token service (GHCR, Harbor, ACR) or basic auth (htpasswd)."""
    import oras.provider
    import requests

    host = registry_url.split("://", 1)[1]
    try:
        challenge = requests.get(f"{registry_url}/v2/", timeout=30).headers.get("Www-Authenticate", "")
    except requests.RequestException as err:
        raise OciPushError(f"{reference}: cannot reach {registry_url}: {_first_line(err)}") from err
    backend = "basic" if challenge.lower().startswith("basic") else "token"
    client = oras.provider.Registry(hostname=host, insecure=registry_url.startswith("http://"), auth_backend=backend)
    if auth_file is not None:
        username, password = _login(auth_file, host, reference)
        client.auth.set_basic_auth(username, password)
    return client


def _login(auth_file: Path, host: str, reference: str) -> tuple[str, str]:
    """The user name and password a Docker config (``.dockerconfigjson``) holds for ``host``."""
    field = "spec.output.oci.credentialsSecret"
    try:
        config = json.loads(auth_file.read_text())
    except FileNotFoundError:
        raise OciPushError(
            f"{field}: the Secret has no .dockerconfigjson key (type kubernetes.io/dockerconfigjson)"
        ) from None
    except (OSError, ValueError) as err:
        raise OciPushError(f"{field}: .dockerconfigjson is not a Docker config in JSON ({_first_line(err)})") from err
    entry = (config.get("auths") or {}).get(host) if isinstance(config, dict) else None
    if not isinstance(entry, dict):
        raise OciPushError(f"{field}: .dockerconfigjson has no login for {host} (auths.{host})")
    if entry.get("username") and entry.get("password"):
        return str(entry["username"]), str(entry["password"])
    try:
        username, _, password = base64.b64decode(str(entry.get("auth", "")), validate=True).decode().partition(":")
    except (ValueError, UnicodeDecodeError):
        username = password = ""
    if not username or not password:
        raise OciPushError(f"{field}: the login for {host} has neither username and password nor a valid auth")
    return username, password


def _stored_digest(client: Any, reference: str) -> str | None:
    """The digest of the manifest the registry now holds under ``reference``'s tag."""
    container = client.get_container(reference)
    url = f"{client.prefix}://{container.manifest_url()}"
    response = client.do_request(url, "HEAD", headers={"Accept": OCI_MANIFEST_MEDIA_TYPE})
    return response.headers.get("Docker-Content-Digest") if response.status_code == 200 else None


def _first_line(err: BaseException) -> str:
    return (str(err).splitlines() or [type(err).__name__])[0][:500]
