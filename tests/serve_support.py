"""Shared by the service tests: a trained run on the bundled MovieLens set, and ``jaxrec serve`` as a real process."""

import http.client
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

from jaxrec import cli

#: a small, quick model of the bundled ml-latest-small (titles included): what the service tests talk to
MOVIELENS_FLAGS = [
    "--dataset", "ml-latest-small", "--model", "mf", "--model-kwargs", '{"embed": 8}', "--order", "first",
    "--inner-steps", "1", "--batch-size", "32", "--epochs", "1", "--no-eval", "--no-progress",
]  # fmt: skip

#: small buckets, so that start-up compiles quickly
BUCKET_FLAGS = ["--batch-sizes", "1,8", "--support-sizes", "8,32"]


def train_movielens(out: Path) -> Path:
    assert cli.main(["train", *MOVIELENS_FLAGS, "--out", str(out)]) == 0
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """``jaxrec serve`` in its own process, on a free loopback port; stopped with SIGTERM."""

    def __init__(self, checkpoint: Path, *flags: str, timeout: float = 120.0):
        self.port = free_port()
        self.log = Path(checkpoint).parent / f"serve-{self.port}.log"
        self._log = open(self.log, "w")  # noqa: SIM115 - closed in stop()
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        command = [sys.executable, "-m", "jaxrec", "serve", "--checkpoint", str(checkpoint), "--port", str(self.port)]
        self.process = subprocess.Popen([*command, *flags], stdout=self._log, stderr=subprocess.STDOUT, env=env)
        deadline = time.monotonic() + timeout
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"jaxrec serve exited with {self.process.returncode}:\n{self.log.read_text()}")
            try:
                if self.get("/health")[0] == 200:
                    break
            except OSError:
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"jaxrec serve did not answer in {timeout} s:\n{self.log.read_text()}")
            time.sleep(0.2)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def request(self, method: str, path: str, body: bytes | None = None, headers: dict | None = None):
        """``(status, parsed JSON or text)`` of one request on a fresh connection."""
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        try:
            connection.request(method, path, body=body, headers=headers or {})
            response = connection.getresponse()
            payload = response.read()
        finally:
            connection.close()
        kind = response.getheader("content-type") or ""
        return response.status, json.loads(payload) if "json" in kind else payload.decode("utf-8", "replace")

    def get(self, path: str):
        return self.request("GET", path)

    def post(self, path: str, document) -> tuple[int, dict]:
        return self.request("POST", path, json.dumps(document).encode(), {"Content-Type": "application/json"})

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._log.close()
        return self.process.returncode
