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


@contextlib.contextmanager
def password_postgres():
    """A PostgreSQL server of its own on a free loopback port that, unlike the machine's trust-auth one, refuses any
    connection without the right password (scram-sha-256): yields its superuser URL
    ``postgresql://postgres:PASSWORD@127.0.0.1:PORT``. Skipped (failed in CI) where initdb cannot run here: it needs
    Debian's PostgreSQL binaries and root, to run them as the ``postgres`` user."""
    import glob
    import pwd
    import secrets
    import shutil
    import tempfile

    import pytest

    binaries = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    try:
        owner = pwd.getpwnam("postgres")
    except KeyError:
        owner = None
    require(bool(binaries) and owner is not None and os.geteuid() == 0 and shutil.which("runuser") is not None,
            "a password-only PostgreSQL needs Debian's PostgreSQL binaries, root and runuser (make services)")
    bin_dir = Path(binaries[-1]).parent
    folder = Path(tempfile.mkdtemp(prefix="sweeplab-pg-"))  # in /tmp: pytest's tmp_path is root's alone
    os.chown(folder, owner.pw_uid, owner.pw_gid)
    password, port = secrets.token_hex(8), free_port()
    (folder / "pw").write_text(password)
    os.chown(folder / "pw", owner.pw_uid, owner.pw_gid)
    as_postgres = ["runuser", "-u", "postgres", "--"]
    init = subprocess.run([*as_postgres, str(bin_dir / "initdb"), "-D", str(folder / "data"), "-U", "postgres",
                           "--auth=scram-sha-256", f"--pwfile={folder / 'pw'}", "--no-sync", "-E", "UTF8"],
                          capture_output=True, text=True, timeout=120)
    if init.returncode != 0:
        pytest.fail(f"initdb failed: {init.stderr[-2000:]}")
    log = open(folder / "postgres.log", "w")  # noqa: SIM115 (closed below, after the server)
    server = subprocess.Popen([*as_postgres, str(bin_dir / "postgres"), "-D", str(folder / "data"), "-p", str(port),
                               "-c", "listen_addresses=127.0.0.1", "-c", f"unix_socket_directories={folder}",
                               "-c", "fsync=off"], stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.time() + 60
        while subprocess.run([str(bin_dir / "pg_isready"), "-h", "127.0.0.1", "-p", str(port), "-q"]).returncode:
            assert server.poll() is None and time.time() < deadline, (folder / "postgres.log").read_text()[-2000:]
            time.sleep(0.2)
        yield f"postgresql://postgres:{password}@127.0.0.1:{port}"
    finally:
        subprocess.run([*as_postgres, str(bin_dir / "pg_ctl"), "-D", str(folder / "data"), "stop", "-m", "fast"],
                       capture_output=True, timeout=60)
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
        log.close()
        shutil.rmtree(folder, ignore_errors=True)
