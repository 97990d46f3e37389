"""Where Optuna studies live (as store.py says where MLflow runs live): which storage a config names, opening it,
and the file a local one lives in.

One string names a storage, as ``cluster.optuna_storage`` and the sweep's MLflow param ``optuna_storage`` hold it:
- a database URL (``postgresql://...``, ``sqlite:///...``): Optuna's ``RDBStorage``;
- a file path: Optuna's ``JournalStorage`` on that file, which ``optuna-dashboard PATH`` opens too.

The local default is ``<output_dir>/optuna.journal``: the searcher's storage calls there cost 3 ms of CPU a trial,
24 ms in a SQLite file, where each is an SQL transaction (docs/performance.md, B8). A folder where an earlier
version made ``optuna.db`` keeps that file, so its sweeps stay listed and resume.
"""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import optuna
from optuna.storages.journal import JournalFileBackend, JournalFileSymlinkLock

from sweeplab.errors import ConfigError
from sweeplab.redact import redact
from sweeplab.tracking.store import creation_lock

JOURNAL_FILE = "optuna.journal"
SQLITE_FILE = "optuna.db"  # the local default before the journal
_SQLITE_HEADER = b"SQLite format 3\x00"
_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:")  # `postgres:/host`: a URL mistyped, not a file path


def default_storage(output_dir: str | Path) -> str:
    folder = Path(output_dir).resolve()
    if (folder / SQLITE_FILE).exists():
        return f"sqlite:///{folder / SQLITE_FILE}"
    return str(folder / JOURNAL_FILE)


def configured_storage(storage: str, key: str) -> str:
    """A storage named in a config, checked; a journal file's path made absolute."""
    if "://" in storage:
        return _checked_url(storage, key)
    if _SCHEME.match(storage):
        raise ConfigError(f"{key}={storage!r} is neither a database URL (postgresql://user@host/db, "
                          "sqlite:///path/optuna.db) nor a journal file path (outputs/optuna.journal)")
    path = Path(storage).expanduser().resolve()
    if path.is_dir():
        raise ConfigError(f"{key}={storage} is a folder: name the journal file in it ({path / JOURNAL_FILE})")
    if path.is_file():
        with path.open("rb") as f:
            if f.read(len(_SQLITE_HEADER)) == _SQLITE_HEADER:
                raise ConfigError(f"{key}={storage} is a SQLite database, not a journal file: write sqlite:///{path}")
    return str(path)


def _checked_url(storage: str, key: str) -> str:
    """A database URL whose dialect SQLAlchemy knows, whose driver is installed and, for SQLite, that names a file:
    what Optuna's ``RDBStorage`` would otherwise fail on with a traceback, after the sweep's folders exist."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    given = f"{key}={redact(storage)}"
    try:
        url = make_url(storage)
        dialect = url.get_dialect()
    except (ArgumentError, ValueError) as err:  # an unknown scheme (NoSuchModuleError), a port that is no number
        scheme = storage.split("://", 1)[0]
        hint = "postgresql://user@host/db" + ("" if scheme.startswith("postgres") else ", sqlite:///path/optuna.db")
        raise ConfigError(f"{given} is no database URL SQLAlchemy opens ({redact(str(err))}): write {hint}, "
                          "or give a journal file path (outputs/optuna.journal)") from None
    try:
        dialect.import_dbapi()
    except ImportError as err:
        raise ConfigError(f"{given}: the driver of {url.drivername}:// is not installed ({err}); use PostgreSQL "
                          "(postgresql://user@host/db), whose driver is, or install that one") from None
    if url.get_backend_name() == "sqlite" and (url.host or not url.database or url.database == ":memory:"):
        named = Path(url.host or (url.database if url.database != ":memory:" else None) or "optuna.db").resolve()
        raise ConfigError(f"{given} names no SQLite file (a file's URL has three slashes; an in-memory database "
                          f"is not shared with the trials' processes): write sqlite:///{named}")
    return storage


def local_file(storage: str) -> Path | None:
    """The file a local storage lives in; None for a database server."""
    if storage.startswith("sqlite:///"):
        return Path(storage[len("sqlite:///"):])
    return None if "://" in storage else Path(storage)


def open_storage(storage: str) -> optuna.storages.BaseStorage:
    """The storage ``storage`` names. A SQLite file runs in WAL mode with synchronous=NORMAL and a journal file
    is appended to without an fsync per write: each Optuna write would otherwise make the driver wait on the
    disk once per intermediate value and user attribute (a crash of the process still loses nothing written)."""
    path = local_file(storage)
    if path is None:
        return optuna.storages.RDBStorage(storage)
    path.parent.mkdir(parents=True, exist_ok=True)
    if storage.startswith("sqlite:///"):
        return _sqlite_storage(storage, path)
    return optuna.storages.JournalStorage(_UnsyncedJournalFile(str(path)))


class _UnsyncedJournalFile(JournalFileBackend):
    """Optuna's journal file, written under the same lock and in the same format (any JournalFileBackend reads
    it), without ``JournalFileBackend``'s fsync after every append."""

    def __init__(self, path: str) -> None:
        self._appending = JournalFileSymlinkLock(path)  # the lock Optuna's own backend takes by default
        super().__init__(path, lock_obj=self._appending)
        self._path = path  # the lock and the path kept here: the base class's own are private

    def append_logs(self, logs: list[dict[str, Any]]) -> None:
        text = "".join(json.dumps(log, separators=(",", ":")) + "\n" for log in logs)
        self._appending.acquire()
        try:
            with open(self._path, "ab") as f:
                f.write(text.encode("utf-8"))
        finally:
            self._appending.release()


def _sqlite_storage(url: str, path: Path) -> optuna.storages.RDBStorage:
    from sqlalchemy import event

    with creation_lock(path):  # two sweeps starting in a fresh folder would both create the schema
        storage = optuna.storages.RDBStorage(url)
    engine = storage.engine

    def tune(connection, _record) -> None:
        cursor = connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.close()

    event.listen(engine, "connect", tune)
    engine.dispose()  # connections opened while the storage was created reconnect with the pragmas
    return storage
