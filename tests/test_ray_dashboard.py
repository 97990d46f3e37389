"""cluster.dashboard=true: Ray's dashboard answers on 127.0.0.1 while a sweep runs; without ray[default]
or with its port taken, one line says what to do instead of ray.init's traceback."""
from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import time
import urllib.request

import pytest
from omegaconf import OmegaConf
from servers import free_port

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

    env = {**os.environ, "OMP_NUM_THREADS": "1", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}
    sweep = subprocess.Popen(
        [*SWEEPLAB, "sweep", "smoke", f"output_dir={tmp_path}", "tracking=none", "cluster.dashboard=true",
         "sweep.num_trials=2", "sweep.max_concurrent=1", "train.epochs=2",
         "sweep.scheduler.kind=none", "data.subset=300"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    seen, version, port = [], None, None
    assert sweep.stdout is not None
    for line in sweep.stdout:
        seen.append(line)
        if printed := re.search(r"Ray dashboard at http://127\.0\.0\.1:(\d+)$", line.strip()):
            port = int(printed.group(1))  # 8265, or the next free port when another Ray holds it
            deadline = time.time() + 60
            while version is None and time.time() < deadline:
                try:
                    with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/version", timeout=5) as answer:
                        version = json.load(answer)
                except OSError:
                    time.sleep(1)
            listening = {c.laddr.ip for c in psutil.net_connections("tcp")
                         if c.status == psutil.CONN_LISTEN and c.laddr.port == port}
            break
    output = "".join(seen) + sweep.communicate(timeout=600)[0]
    assert sweep.returncode == 0, output[-3000:]
    assert port is not None and version is not None, output[-3000:]
    import ray

    assert version["ray_version"] == ray.__version__
    assert listening == {"127.0.0.1"}  # never beyond loopback
