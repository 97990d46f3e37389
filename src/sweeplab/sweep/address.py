"""Check a Ray cluster address before ``ray.init`` joins it.

``ray.init`` retries an address for many minutes when nothing answers, or when something that is not a
Ray head does. A TCP connect and a gRPC handshake (the head's GCS speaks gRPC) say within seconds.
"""
from __future__ import annotations

import os
import socket

from sweeplab.errors import ConfigError

PROBE_TIMEOUT_S = 5.0


def _host_port(address: str) -> tuple[str, int] | None:
    """host and port of ``host:port`` or ``ray://host:port``; None for ``auto`` and other forms."""
    hostport = address.removeprefix("ray://")
    host, sep, port = hostport.rpartition(":")
    if not sep or not port.isdigit():
        return None
    return host.strip("[]"), int(port)


def check_ray_address(address: str, source: str, timeout: float = PROBE_TIMEOUT_S) -> None:
    """Raise a ConfigError naming ``address`` (taken from ``source``, e.g. cluster.address) when no Ray
    head answers there."""
    target = _host_port(address)
    if target is None:
        return
    fix = ("start a head there with `ray start --head --port=<port>`, pass the address it prints, "
           f"or leave {source} empty for a local Ray")
    try:
        with socket.create_connection(target, timeout=timeout):
            pass
    except OSError as err:
        reason = "timed out" if isinstance(err, TimeoutError) else (err.strerror or str(err))
        raise ConfigError(f"{source}={address}: no Ray head answers there ({reason}); {fix}") from None
    if os.environ.get("RAY_USE_TLS", "0").lower() in ("1", "true"):
        return  # a TLS head answers only a handshake with its certificates: the TCP check has to do
    import grpc

    host = f"[{target[0]}]" if ":" in target[0] else target[0]  # an IPv6 address keeps its brackets for gRPC
    channel = grpc.insecure_channel(f"{host}:{target[1]}")
    try:
        grpc.channel_ready_future(channel).result(timeout=timeout)
    except grpc.FutureTimeoutError:
        raise ConfigError(f"{source}={address}: something listens there but it is not a Ray head (no gRPC answer "
                          f"in {timeout:g} s); {fix}") from None
    finally:
        channel.close()
