"""The Ray dashboard of a local sweep (cluster.dashboard=true): on 127.0.0.1 only, its URL printed."""
from __future__ import annotations

import os
import socket

from omegaconf import DictConfig

from sweeplab.errors import ConfigError

HOST = "127.0.0.1"  # a dashboard submits jobs to the cluster: never beyond loopback without a tunnel


def check_dashboard(cluster: DictConfig) -> None:
    """What ray.init would otherwise end in a traceback: the dashboard's port taken, its packages missing."""
    port = cluster.dashboard_port
    if port is not None:  # Ray tries ports after 8265 itself, but not after one given explicitly
        with socket.socket() as probe:
            try:
                probe.bind((HOST, int(port)))
            except OSError:
                raise ConfigError(f"cluster.dashboard_port={port}: {HOST}:{port} is already in use (another Ray's "
                                  "dashboard?); pick a free port, or leave it unset (null) for "
                                  "the first free one from 8265") from None
    try:
        import ray.dashboard.optional_deps  # noqa: F401  # what ray[default] adds: the dashboard's web server
    except ImportError as err:
        raise ConfigError(f"cluster.dashboard=true needs the Ray dashboard, which comes with ray[default] ({err}): "
                          "pip install 'ray[default]', or set cluster.dashboard=false") from None


def dashboard_line(context) -> str | None:
    """Where the dashboard ray.init started or found answers, and how to sign in when Ray's token
    authentication is on (Ray turns it on for a local Ray unless RAY_AUTH_MODE says otherwise); None without one."""
    address = getattr(context, "dashboard_url", None)
    if not address:
        return None
    line = f"Ray dashboard at http://{address}"
    if os.environ.get("RAY_AUTH_MODE", "").lower() == "token":
        line += " (sign in with the token `ray get-auth-token` prints)"
    return line
