"""The suite's OCI registry: CNCF Distribution 2.8 (Debian's docker-registry, installed by
scripts/install-registry.sh), on loopback, behind htpasswd basic auth. Not a double: it refuses an
anonymous or wrongly logged-in push (401), stores a blob only under the digest it recomputes, and
answers manifests by tag and digest, as registries do."""

from __future__ import annotations

import base64
import json
import secrets
import warnings
from pathlib import Path

from tests.loopback import LoopbackProcess

ROOT = Path(__file__).resolve().parents[1]
REGISTRY = ROOT / "tools" / "registry" / "docker-registry"
USER = "pusher"


def _bcrypt(password: str) -> str:
    """htpasswd's bcrypt line, by the C library's crypt(3) (Distribution accepts only bcrypt)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # crypt leaves the standard library in 3.13
        import crypt

    return crypt.crypt(password, crypt.mksalt(crypt.METHOD_BLOWFISH))


class RegistryServer(LoopbackProcess):
    name = "the registry"

    def __init__(self, folder: Path, port: int) -> None:
        if not REGISTRY.exists():
            raise RuntimeError(
                f"{REGISTRY} is missing: run scripts/install-registry.sh (scripts/bootstrap.sh dev does)"
            )
        self.host = f"127.0.0.1:{port}"
        self.url = f"http://{self.host}"  # as the platform lists an in-cluster registry without TLS
        self.password = secrets.token_urlsafe(16)
        (folder / "htpasswd").write_text(f"{USER}:{_bcrypt(self.password)}\n")
        config = {
            "version": 0.1,
            "log": {"level": "warn"},
            "storage": {"filesystem": {"rootdirectory": str(folder / "data")}, "delete": {"enabled": True}},
            "http": {"addr": self.host, "secret": secrets.token_hex(16)},
            "auth": {"htpasswd": {"realm": "kubetune-tests", "path": str(folder / "htpasswd")}},
        }
        (folder / "config.yml").write_text(json.dumps(config))  # YAML is a superset of JSON
        super().__init__([str(REGISTRY), "serve", str(folder / "config.yml")], folder / "registry.log", port)

    def wait_until_ready(self, timeout: float = 30) -> RegistryServer:
        self.wait_until_listening(timeout)
        return self

    def docker_config(self, path: Path, password: str | None = None) -> Path:
        """A ``.dockerconfigjson`` as ``kubectl create secret docker-registry`` writes it."""
        auth = base64.b64encode(f"{USER}:{password or self.password}".encode()).decode()
        path.write_text(
            json.dumps({"auths": {self.host: {"username": USER, "password": password or self.password, "auth": auth}}})
        )
        return path

    def client(self) -> object:
        """An oras-py client logged in, to read back what a job pushed."""
        import oras.provider

        client = oras.provider.Registry(hostname=self.host, insecure=True, auth_backend="basic")
        client.auth.set_basic_auth(USER, self.password)
        return client
