"""cluster.dashboard=true: Ray's dashboard answers on 127.0.0.1 while a sweep runs; without ray[default]
or with its port taken, one line says what to do instead of ray.init's traceback."""
from __future__ import annotations

import json
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from omegaconf import OmegaConf
from servers import free_port
from sweep_helpers import sweep_env

from sweeplab.errors import ConfigError

SWEEPLAB = [sys.executable, "-m", "sweeplab.cli"]


def _cluster(port: int):
    return OmegaConf.create({"dashboard": True, "dashboard_port": port})


def test_without_ray_default_the_dashboard_is_a_one_line_config_error(monkeypatch):
    from sweeplab.sweep.dashboard import check_dashboard

    monkeypatch.setitem(sys.modules, "ray.dashboard.optional_deps", None)  # as with ray[tune] alone
    with pytest.raises(ConfigError, match=r"needs the Ray dashboard.*pip install 'ray\[default\]'"):
        check_dashboard(_cluster(free_port()))


def test_a_taken_dashboard_port_names_the_key_and_what_to_do():
    from sweeplab.sweep.dashboard import check_dashboard

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(ConfigError, match=rf"^cluster.dashboard_port={port}: .* in use.*leave it unset"):
            check_dashboard(_cluster(port))


@pytest.mark.slow
def test_the_dashboard_answers_on_loopback_during_a_sweep(tmp_path):
    import psutil

    env = sweep_env()
    sweep = subprocess.Popen(
        [*SWEEPLAB, "sweep", "smoke", f"output_dir={tmp_path}", "tracking=none", "cluster.dashboard=true",
         "sweep.num_trials=1", "train.epochs=1",
         "sweep.scheduler.kind=none", "data.subset=300"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    seen, version, port, refused = [], None, None, None
    assert sweep.stdout is not None
    for line in sweep.stdout:
        seen.append(line)
        if printed := re.search(r"Ray dashboard at http://127\.0\.0\.1:(\d+) \(sign in with the token", line):
            port = int(printed.group(1))  # 8265, or the next free port when another Ray holds it
            url = f"http://127.0.0.1:{port}/api/version"
            sweep.send_signal(signal.SIGSTOP)  # the driver waits while we ask, so the tiny sweep cannot end first
            try:
                token = subprocess.run([str(Path(sys.executable).with_name("ray")), "get-auth-token"],
                                       capture_output=True, text=True, env=env, timeout=120).stdout.strip()
                deadline = time.time() + 120
                while version is None and time.time() < deadline:
                    try:
                        urllib.request.urlopen(url, timeout=5)
                        refused = None
                    except urllib.error.HTTPError as err:
                        refused = err.code  # the dashboard is up and asks for the token
                    except OSError:
                        time.sleep(1)
                        continue
                    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"})
                    with urllib.request.urlopen(request, timeout=5) as answer:
                        version = json.load(answer)
                listening = {c.laddr.ip for c in psutil.net_connections("tcp")
                             if c.status == psutil.CONN_LISTEN and c.laddr.port == port}
            finally:
                sweep.send_signal(signal.SIGCONT)
            break
    output = "".join(seen) + sweep.communicate(timeout=600)[0]
    assert sweep.returncode == 0, output[-3000:]
    assert port is not None and version is not None, output[-3000:]
    import ray

    assert version["ray_version"] == ray.__version__
    assert listening == {"127.0.0.1"}  # never beyond loopback
    assert refused == 401  # nor without Ray's token
