"""The suite's Azure Blob Storage: Azurite, Microsoft's own emulator (npm ``azurite``, pinned by
tools/azurite/package-lock.json, installed by scripts/install-azurite.sh), on loopback. Not a double:
it checks Shared Key signatures (a wrong or missing key is 403), ETag conditions (``If-None-Match: *``
409, ``If-Match`` 412) and the MD5 an upload sends, as the service does."""

from __future__ import annotations

from pathlib import Path

from tests.loopback import LoopbackProcess

ROOT = Path(__file__).resolve().parents[1]
AZURITE = ROOT / "tools" / "azurite" / "node_modules" / ".bin" / "azurite-blob"
# Azurite's one development account, as Microsoft documents it (a well-known key, not a secret).
ACCOUNT = "devstoreaccount1"
ACCOUNT_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="


class AzuriteServer(LoopbackProcess):
    name = "Azurite"

    def __init__(self, folder: Path, port: int) -> None:
        if not AZURITE.exists():
            raise RuntimeError(f"{AZURITE} is missing: run scripts/install-azurite.sh (scripts/bootstrap.sh dev does)")
        self.account_url = f"http://127.0.0.1:{port}/{ACCOUNT}"
        # As the platform sets azure.endpoint: Azurite names the account in the path.
        self.endpoint = f"http://127.0.0.1:{port}/{{account}}"
        command = [str(AZURITE), "--blobHost", "127.0.0.1", "--blobPort", str(port), "--location", str(folder)]
        super().__init__([*command, "--disableTelemetry", "--skipApiVersionCheck"], folder / "azurite.log", port)

    def wait_until_ready(self, timeout: float = 60) -> AzuriteServer:
        self.wait_until_listening(timeout)
        return self

    def create_container(self, name: str) -> None:
        from azure.storage.blob import BlobServiceClient

        BlobServiceClient(self.account_url, credential=ACCOUNT_KEY).create_container(name)
