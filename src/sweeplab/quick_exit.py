"""Ending a sweeplab process without the interpreter's teardown, which freed torch's, Ray's and MLflow's module state
for 1-3 s after the work was done (docs/performance.md): the ``sweeplab`` command and the tracker's MLflow client
process end this way."""
from __future__ import annotations

import atexit
import contextlib
import os
import signal
import sys
from typing import NoReturn

# what a command whose stdout's reader went away exits with: a shell's status for a process SIGPIPE ended
PIPE_GONE = 128 + signal.SIGPIPE


def quick_exit(code: int) -> NoReturn:
    """The exit handlers (Ray's shutdown, logging's flush), the SQLite connections closed, stdio flushed where it
    still can be, then ``os._exit(code)``."""
    atexit._run_exitfuncs()
    _close_sqlite()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except BrokenPipeError:  # its reader went away (sweeplab models | true): what was left to say is lost
            code = code or PIPE_GONE
        except (OSError, ValueError):  # a stream closed, a disk full: nothing left to tell it with
            pass
    os._exit(code)


def _close_sqlite() -> None:
    """Close the SQLite connections the stores' engines still hold: the last close folds a WAL store's -wal file
    back into the database, so a copy of mlflow.db or optuna.db alone holds everything (teardown used to)."""
    if "sqlite3" not in sys.modules:
        return
    import gc
    import sqlite3

    for obj in gc.get_objects():
        if issubclass(type(obj), sqlite3.Connection):  # not isinstance: it reads __class__, which some proxies warn on
            with contextlib.suppress(sqlite3.Error):
                obj.close()
