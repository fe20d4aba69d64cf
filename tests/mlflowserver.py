"""A real MLflow server (tracking API and model registry) on loopback, from its own venv
(``.venv-mlflow``, made by scripts/install-mlflow.sh; ``scripts/bootstrap.sh dev`` runs it): kubetune
never imports mlflow, it talks to the server over its REST API, as it would to the platform's."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
MLFLOW = ROOT / ".venv-mlflow" / "bin" / "mlflow"
STARTUP_SECONDS = 120
# The admin of a server started with MLflow's basic-auth app (``auth=True``): what the test reads back as.
ADMIN = ("admin", "kubetune-admin-password")


class MlflowServer:
    def __init__(self, folder: Path, port: int, *, auth: bool = False) -> None:
        """``auth``: MLflow's own basic-auth app in front, refusing a request without a known login (401)
        as the platform's server would; users are made with :meth:`create_user`."""
        if not MLFLOW.exists():
            raise RuntimeError(f"{MLFLOW} is missing: run scripts/bootstrap.sh dev (it runs scripts/install-mlflow.sh)")
        folder.mkdir(parents=True, exist_ok=True)
        self.uri = f"http://127.0.0.1:{port}"
        self.log = folder / "mlflow.log"
        command = [
            str(MLFLOW),
            "server",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            "1",
            "--backend-store-uri",
            f"sqlite:///{folder / 'mlflow.db'}",
            "--default-artifact-root",
            (folder / "artifacts").as_uri(),
        ]
        environment = dict(os.environ)
        self.admin: tuple[str, str] | None = None
        if auth:
            self.admin = ADMIN
            config = folder / "basic_auth.ini"
            config.write_text(
                "[mlflow]\ndefault_permission = READ\n"
                f"database_uri = sqlite:///{folder / 'basic_auth.db'}\n"
                f"admin_username = {ADMIN[0]}\nadmin_password = {ADMIN[1]}\n"
                "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n"
            )
            environment.update(MLFLOW_AUTH_CONFIG_PATH=str(config), MLFLOW_FLASK_SERVER_SECRET_KEY="kubetune-tests")
            command += ["--app-name", "basic-auth"]
        with self.log.open("wb") as log:
            self.process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, cwd=folder, env=environment)

    def wait_until_ready(self) -> MlflowServer:
        deadline = time.monotonic() + STARTUP_SECONDS
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"the MLflow server exited: {self.log.read_text()[-2000:]}")
            try:
                with urllib.request.urlopen(f"{self.uri}/health", timeout=2):
                    return self
            except OSError:
                time.sleep(0.5)
        raise RuntimeError(
            f"the MLflow server did not answer within {STARTUP_SECONDS} s: {self.log.read_text()[-2000:]}"
        )

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.process.kill()

    def _headers(self) -> dict[str, str]:
        headers = {"Content-Type": "application/json"}
        if self.admin is not None:
            headers["Authorization"] = "Basic " + base64.b64encode(":".join(self.admin).encode()).decode()
        return headers

    def get(self, path: str, **query: Any) -> dict[str, Any]:
        """A GET of MLflow's REST API, as a reader of the server would make it (as its admin, with auth)."""
        url = f"{self.uri}/api/2.0/mlflow/{path}?{urllib.parse.urlencode(query)}"
        request = urllib.request.Request(url, headers=self._headers())
        with urllib.request.urlopen(request, timeout=10) as response:
            return dict(json.loads(response.read()))

    def post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        request = urllib.request.Request(
            f"{self.uri}/api/2.0/mlflow/{path}",
            data=json.dumps(body).encode(),
            headers=self._headers(),
            method="POST",
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            return dict(json.loads(response.read()))

    def create_user(self, username: str, password: str) -> None:
        """A user of the basic-auth app (made by its admin): what a platform hands a tenant."""
        self.post("users/create", {"username": username, "password": password})
