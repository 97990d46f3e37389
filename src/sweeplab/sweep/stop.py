"""Ctrl-C and SIGTERM end a sweep the same way: Ray Tune's graceful stop, which stops the trials and saves the
experiment, so ``--resume`` continues it. Tune handles SIGINT itself during ``fit``; SIGTERM is passed on to that
handler (without ours, the Ray core worker's handler would print a C++ stack dump and leave runs RUNNING)."""
from __future__ import annotations

import signal
import threading
from types import FrameType

_received: set[int] = set()


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    _received.add(signum)
    handler = signal.getsignal(signal.SIGINT)
    if callable(handler) and handler is not signal.default_int_handler:  # Tune's: stop gracefully
        handler(signal.SIGINT, frame)
    else:  # before or after the trials run: end like Ctrl-C there
        raise KeyboardInterrupt


def watch_sigterm() -> None:
    """Install the SIGTERM handler; call it after ``ray.init``, whose core worker installs its own.
    Only the main thread may set handlers (a CLI called from a thread keeps the default)."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _on_sigterm)


def interrupted_exit_code() -> int:
    """What an interrupted ``sweeplab`` exits with: 128 + the signal, as a shell reports it."""
    return 128 + (signal.SIGTERM if signal.SIGTERM in _received else signal.SIGINT)
