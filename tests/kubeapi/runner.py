"""Serve :class:`ApiServer` over HTTPS on loopback from a background thread, and hand out credentials."""

from __future__ import annotations

import asyncio
import base64
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import aiohttp.web as web
import yaml

from tests.kubeapi.model import UserInfo
from tests.kubeapi.server import ApiServer
from tests.kubeapi.tls import Pki, make_pki

T = TypeVar("T")


class ApiServerThread:
    def __init__(self, folder: Path, **server_options: Any) -> None:
        self.folder = folder
        self.pki: Pki = make_pki(folder / "pki")
        self.server = ApiServer(**server_options)
        self.url = ""
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._runner: web.AppRunner | None = None
        self._thread = threading.Thread(target=self._main, name="kube-apiserver", daemon=True)

    def _main(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._loop.run_until_complete(self._start())
        self._ready.set()
        self._loop.run_forever()

    async def _start(self) -> None:
        self._runner = web.AppRunner(self.server.app(), handle_signals=False, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0, ssl_context=self.pki.server_context())
        await site.start()
        port = self._runner.addresses[0][1]
        self.url = f"https://127.0.0.1:{port}"

    def start(self) -> ApiServerThread:
        self._thread.start()
        if not self._ready.wait(15):
            raise RuntimeError("the test API server did not start")
        return self

    def stop(self) -> None:
        async def shutdown() -> None:
            self.server.end_watches()
            if self._runner is not None:
                await self._runner.cleanup()

        if self._thread.is_alive():
            asyncio.run_coroutine_threadsafe(shutdown(), self._loop).result(15)
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(15)

    def call(self, action: Callable[[], T], timeout: float = 30) -> T:
        """Run ``action`` on the server's thread (its state is only ever touched there)."""

        async def run() -> T:
            return action()

        return asyncio.run_coroutine_threadsafe(run(), self._loop).result(timeout)

    # ------------------------------------------------------------------ credentials
    def issue_token(self, user: UserInfo) -> str:
        return self.server.authn.issue(user)

    def kubeconfig(self, user: UserInfo, path: Path, token: str | None = None) -> Path:
        """A kubeconfig for ``user`` (a fresh token unless given), verifying the server with the cluster CA."""
        token = token or self.issue_token(user)
        document = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [
                {
                    "name": "test",
                    "cluster": {
                        "server": self.url,
                        "certificate-authority-data": base64.b64encode(self.pki.ca_pem).decode(),
                    },
                }
            ],
            "users": [{"name": user.name, "user": {"token": token}}],
            "contexts": [{"name": "test", "context": {"cluster": "test", "user": user.name}}],
            "current-context": "test",
        }
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(yaml.safe_dump(document))
        return path

    def service_account_files(self, user: UserInfo, folder: Path, token: str | None = None) -> Path:
        """What the kubelet mounts at /var/run/secrets/kubernetes.io/serviceaccount: token, ca.crt, namespace."""
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "token").write_text(token or self.issue_token(user))
        (folder / "ca.crt").write_bytes(self.pki.ca_pem)
        namespace = user.name.split(":")[2] if user.name.startswith("system:serviceaccount:") else "default"
        (folder / "namespace").write_text(namespace)
        return folder
