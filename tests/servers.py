"""Servers the integration tests start as real local processes, on loopback."""
from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_healthy(url: str, proc: subprocess.Popen, timeout: float = 120) -> None:
    """Until GET url/health answers 200; AssertionError when the process dies or time runs out."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            if urllib.request.urlopen(f"{url}/health", timeout=2).status == 200:
                return
        except OSError:
            time.sleep(1)
        assert proc.poll() is None, f"the server at {url} exited with {proc.returncode}"
    proc.kill()
    raise AssertionError(f"{url}/health did not answer within {timeout:.0f} s")


def require(available: bool, what: str) -> None:
    """Skip a test whose system dependency is missing, except in CI, where every tier this machine
    can run must run: there a missing dependency is a failure of the set-up (make system-deps/services)."""
    import os

    import pytest

    if available:
        return
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(f"CI must run this test but {what}")
    pytest.skip(what)


class MlflowServer:
    """A real ``mlflow server`` on 127.0.0.1:port over a backend store, proxying artifacts from a folder; it can
    be killed (its whole process group, as a crash would) and started again on the same port and store."""

    def __init__(self, backend_uri: str, artifacts: Path, log: Path, port: int | None = None) -> None:
        self.backend_uri, self.artifacts, self.log = backend_uri, artifacts, log
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None

    def start(self) -> str:
        with open(self.log, "a") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", self.backend_uri,
                 "--artifacts-destination", str(self.artifacts), "--serve-artifacts",
                 "--host", "127.0.0.1", "--port", str(self.port), "--workers", "1"],
                stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                env={**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"},
            )
        try:
            wait_healthy(self.url, self.proc)
        except AssertionError as err:
            raise AssertionError(f"{err}: {self.log.read_text()[-2000:]}") from None
        return self.url

    def stop(self, sig: int = signal.SIGTERM) -> None:
        """Signal the server and its uvicorn workers, and wait until they are gone."""
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, sig)
            self.proc.wait(timeout=30)
        self.proc = None
