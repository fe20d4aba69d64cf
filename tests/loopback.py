"""A server the suite starts as a child process on loopback (Azurite, the OCI registry): its log in a
file, ready once its port accepts connections, stopped politely then firmly."""

from __future__ import annotations

import socket
import subprocess
import time
from pathlib import Path


class LoopbackProcess:
    name = "the server"

    def __init__(self, command: list[str], log: Path, port: int) -> None:
        self.port = port
        self.log = log.open("w")
        self.process = subprocess.Popen(command, stdout=self.log, stderr=subprocess.STDOUT)

    def wait_until_listening(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.name} exited: {Path(self.log.name).read_text()[-2000:]}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return
            except OSError:
                time.sleep(0.1)
        raise RuntimeError(f"{self.name} did not listen in time")

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
        self.log.close()
