"""A real MLflow server (tracking API and model registry) on loopback, from its own venv
(``.venv-mlflow``, made by scripts/install-mlflow.sh; ``scripts/bootstrap.sh dev`` runs it): kubetune
never imports mlflow, it talks to the server over its REST API, as it would to the platform's."""

from __future__ import annotations

import json
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


class MlflowServer:
    def __init__(self, folder: Path, port: int) -> None:
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
        with self.log.open("wb") as log:
            self.process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, cwd=folder)

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

    def get(self, path: str, **query: Any) -> dict[str, Any]:
        """A GET of MLflow's REST API, as a reader of the server would make it."""
        url = f"{self.uri}/api/2.0/mlflow/{path}?{urllib.parse.urlencode(query)}"
        with urllib.request.urlopen(url, timeout=10) as response:
            return dict(json.loads(response.read()))

    def post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        request = urllib.request.Request(
            f"{self.uri}/api/2.0/mlflow/{path}",
            data=json.dumps(body).encode(),
            headers={"Content-Type": "application/json"},
            method="POST",
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            return dict(json.loads(response.read()))
