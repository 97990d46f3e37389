"""Servers the integration tests start as real local processes, on loopback."""
from __future__ import annotations

import socket
import subprocess
import time
import urllib.request


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
