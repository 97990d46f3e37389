"""Where MLflow runs live: a SQLite file under output_dir by default, a server on clusters."""
from __future__ import annotations

import contextlib
import sqlite3
from pathlib import Path
from typing import TYPE_CHECKING

from sweeplab.errors import UserError
from sweeplab.redact import redact

if TYPE_CHECKING:
    from mlflow import MlflowClient
    from omegaconf import DictConfig

EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
TRAINING_KIND = "custom_model_development"  # MLflow 3's model-training view, not the GenAI one


def tracking_uri(cfg: DictConfig) -> str:
    if cfg.tracking.uri:
        return str(cfg.tracking.uri)
    return f"sqlite:///{Path(cfg.output_dir).resolve() / 'mlflow.db'}"


def artifact_root(cfg: DictConfig) -> str | None:
    """Local stores keep artifacts beside the database; a server decides for itself."""
    if cfg.tracking.uri and not str(cfg.tracking.uri).startswith(("sqlite:", "file:", "/")):
        return None
    return (Path(cfg.output_dir).resolve() / "mlartifacts").as_uri()


STORE_FOLDER = "the MLflow store's folder (output_dir or tracking.uri)"


def client_for(uri: str) -> MlflowClient:
    """An MlflowClient; for SQLite the schema is created once here, and WAL lets readers
    (the UI, sweeplab report) work while a sweep writes."""
    if uri.startswith("sqlite:///"):
        path = Path(uri[len("sqlite:///"):])
        check_writable(path.parent, STORE_FOLDER)
        path.parent.mkdir(parents=True, exist_ok=True)
        with creation_lock(path):  # two sweeps starting in a fresh folder would both create the schema
            if not path.exists():
                _new_sqlite_store(path)
            try:
                with sqlite3.connect(path) as db:
                    db.execute("PRAGMA journal_mode=WAL")
            except sqlite3.DatabaseError as err:
                raise UserError(f"{path} is not an MLflow SQLite store ({err}): move it away, or choose another "
                                "output_dir=... / tracking.uri=...") from None
            return _opened(uri)
    check_reachable(uri)
    return _opened(uri)


def creation_lock(path: Path):
    """A lock around creating the SQLite store at ``path``, kept in the temp folder so that the output folder
    holds only what the user asked for (and nothing at all when the store turns out to be broken); in a folder of
    each user's own, as one that another user made refuses this one's lock files."""
    import hashlib
    import os
    import tempfile

    from filelock import FileLock

    folder = Path(tempfile.gettempdir()) / f"sweeplab-locks-{os.getuid()}"
    folder.mkdir(mode=0o700, exist_ok=True)
    return FileLock(folder / f"{hashlib.sha1(str(path.resolve()).encode()).hexdigest()[:16]}.lock")


def _opened(uri: str) -> MlflowClient:
    from mlflow import MlflowClient

    try:
        client = MlflowClient(tracking_uri=uri)
        client.search_experiments(max_results=1)  # creates and migrates the schema before anyone else writes
    except Exception as err:  # a database URL that is wrong or down
        raise UserError(f"cannot open the MLflow store {redact(uri)}: {str(err).splitlines()[0][:300]}") from None
    return client


def check_store(uri: str) -> None:
    """The store at ``uri`` can be written, without creating it: a run that fails leaves no mlflow.db behind."""
    if uri.startswith("sqlite:///") and not Path(uri[len("sqlite:///"):]).exists():
        check_writable(Path(uri[len("sqlite:///"):]).parent, STORE_FOLDER)
    else:
        client_for(uri)


def check_writable(path: Path, what: str) -> None:
    """``path`` is, or could be made as, a folder this process writes in; nothing is left behind. Where the
    permissions allow it, a folder is made in the nearest existing one and removed at once: root may write
    anywhere, and still not create a folder in /proc or on a full or read-only mount."""
    import os
    import tempfile

    path = path.resolve()
    existing = next(p for p in (path, *path.parents) if p.exists())
    if not existing.is_dir():
        reason = f"{existing} is a file, not a folder"
    elif not os.access(existing, os.W_OK | os.X_OK):
        reason = f"{existing} is read-only"
    else:
        try:
            os.rmdir(tempfile.mkdtemp(prefix=".sweeplab-probe-", dir=existing))
            return
        except OSError as err:
            reason = f"no folder can be created in {existing} ({err.strerror or err})"
    raise UserError(f"cannot write {what} at {path}: {reason}; choose a folder you can write, "
                    "e.g. output_dir=./outputs")


def store_template_path() -> Path:
    """Where ``empty_store_template`` keeps the empty store of the installed MLflow version."""
    import os
    from importlib import metadata

    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "sweeplab"
    return cache / f"mlflow-{metadata.version('mlflow')}-empty.db"


def empty_store_template() -> Path:
    """An empty local store at the installed MLflow's schema, made once per machine and MLflow version in the user's
    cache folder: MLflow's migrations take seconds, a copy milliseconds (docs/performance-log.md, "The slowest
    machine"). ``make venv`` makes it, so that not even the first sweep after installing waits for the migrations.
    Raises OSError where the cache folder cannot be written."""
    import os

    template = store_template_path()
    if not template.exists():
        template.parent.mkdir(parents=True, exist_ok=True)
        building = template.with_name(f".{template.name}.{os.getpid()}")
        from mlflow import MlflowClient

        # made here first: where it cannot be created, MLflow would retry for minutes before it gave up
        open(building, "wb").close()  # a file left by a dead process with this pid is ours
        try:
            MlflowClient(tracking_uri=f"sqlite:///{building}").search_experiments(max_results=1)
            os.replace(building, template)
        except Exception as err:  # whatever MLflow raises: no half-built store stays behind
            with contextlib.suppress(OSError):
                building.unlink(missing_ok=True)
            first = (str(err).splitlines() or [type(err).__name__])[0]
            raise OSError(f"could not build an empty MLflow store at {building}: {first}") from err
    return template


def prepare_store_template() -> None:
    """``make venv``'s last step: ``empty_store_template`` with one line instead of a traceback where the cache
    folder cannot be written (sweeps then build each new store with MLflow's migrations, as without it)."""
    try:
        print(f"sweeplab: new local MLflow stores are copied from {empty_store_template()}")
    except Exception as err:  # an install never fails on it: sweeps build each store as they would without it
        print(f"sweeplab: no empty MLflow store made ({err}); each new local store will run MLflow's migrations "
              "(seconds). Point XDG_CACHE_HOME at a writable folder and run `make venv` again to make it")


def _new_sqlite_store(path: Path) -> None:
    """A new local store starts as a copy of the empty one (``empty_store_template``). The copy is put in place
    with a hard link, which never replaces a store that another sweep created a moment earlier."""
    import os
    import shutil

    try:
        template = empty_store_template()
        staged = path.with_name(f".{path.name}.{os.getpid()}")
        shutil.copyfile(template, staged)
        with sqlite3.connect(staged) as db:  # MLflow's Default experiment, as it would have made it here
            db.execute("UPDATE experiments SET artifact_location = ? WHERE experiment_id = 0",
                       (str(Path.cwd() / "mlruns" / "0"),))
    except (OSError, RuntimeError):  # no writable cache (or no home folder): MLflow creates the schema in place
        return
    try:
        os.link(staged, path)
    except FileExistsError:
        pass
    except OSError:  # no hard links here (FAT, some network mounts): MLflow creates the schema in place
        pass
    finally:
        staged.unlink()


def existing_client(uri: str) -> MlflowClient:
    """For read-only commands: never creates a store where a mistyped output_dir points."""
    if uri.startswith("sqlite:///") and not Path(uri[len("sqlite:///"):]).exists():
        raise UserError(f"no MLflow store at {uri[len('sqlite:///'):]}: run a sweep first, "
                        "or pass the output_dir=... / tracking.uri=... it used")
    return client_for(uri)


def check_reachable(uri: str, timeout: float = 5.0) -> None:
    """A tracking server answers its health check, a database server a connection, within ``timeout``
    seconds (MLflow itself retries a database for over a minute); a new SQLite store's folder can be made;
    MLflow's file store is refused as MLflow refuses it, unless MLFLOW_ALLOW_FILE_STORE lets it through."""
    import http.client
    import urllib.parse
    import urllib.request

    if (folder := file_store_folder(uri)) is not None:
        check_file_store(uri, folder)
    elif uri.startswith("sqlite:///"):
        if not Path(uri[len("sqlite:///"):]).exists():
            check_writable(Path(uri[len("sqlite:///"):]).parent, STORE_FOLDER)
    elif uri.startswith(("http://", "https://")):
        parts = urllib.parse.urlsplit(uri)  # the health check needs no login: a URL's own user and password left out
        health = urllib.parse.urlunsplit(parts._replace(netloc=parts.netloc.rpartition("@")[2]))
        try:
            urllib.request.urlopen(f"{health.rstrip('/')}/health", timeout=timeout)
        except (OSError, ValueError, http.client.HTTPException) as err:  # ValueError: a URL urllib cannot read
            raise UserError(f"the MLflow server {redact(uri)} does not answer ({getattr(err, 'reason', err)}). "
                            "Start it, fix tracking.uri / MLFLOW_TRACKING_URI, or run with tracking=none") from None
    elif uri.startswith("postgresql"):
        check_database(uri, "tracking.uri / MLFLOW_TRACKING_URI", timeout)


def file_store_folder(uri: str) -> Path | None:
    """The folder of the MLflow file store that ``uri`` names (file:///data/mlruns, or a bare path, as MLflow reads
    a URI without a scheme, but for the names it takes as they are), else None."""
    from urllib.parse import urlparse
    from urllib.request import url2pathname

    scheme = urlparse(uri).scheme
    if uri in ("databricks", "databricks-uc", "uc"):  # mlflow.tracking.registry
        return None
    if scheme == "file":
        return Path(url2pathname(urlparse(uri).path))
    if scheme == "" or (len(scheme) == 1 and scheme.isalpha()):  # a path; C:\... on Windows
        return Path(uri)
    return None


ALLOW_FILE_STORE = "MLFLOW_ALLOW_FILE_STORE"


def check_file_store(uri: str, folder: Path) -> None:
    """MLflow 3 refuses its file store (in maintenance mode) unless MLFLOW_ALLOW_FILE_STORE is true or 1: say so in
    one line, with the SQLite store to use in that folder, before anything starts."""
    import os

    allowed = os.environ.get(ALLOW_FILE_STORE)
    if allowed is not None and allowed.lower() not in ("true", "false", "1", "0"):
        raise UserError(f"{ALLOW_FILE_STORE}={allowed!r}: MLflow takes true, false, 1 or 0")
    if allowed is not None and allowed.lower() in ("true", "1"):
        check_writable(folder, "the MLflow file store (tracking.uri)")
        return
    from importlib import metadata

    sqlite = f"sqlite:///{folder.resolve() / 'mlflow.db'}"
    raise UserError(f"tracking.uri={redact(uri)} is an MLflow file store, which MLflow {metadata.version('mlflow')} "
                    f"refuses (the file store is in maintenance mode): keep the runs in a SQLite file there instead, "
                    f"tracking.uri={sqlite} (or set {ALLOW_FILE_STORE}=true to use the file store anyway)")


def check_database(url: str, setting: str, timeout: float = 5.0) -> None:
    """A PostgreSQL server at ``url`` accepts a connection within ``timeout`` seconds, or a UserError names it."""
    import sqlalchemy

    engine = sqlalchemy.create_engine(url, connect_args={"connect_timeout": max(2, int(timeout))})
    try:
        engine.connect().close()
    except Exception as err:
        reason = str(getattr(err, "orig", None) or err).strip().splitlines()[0][:300]
        raise UserError(f"the database {redact(url)} does not answer ({reason}). Start it, or fix {setting}") from None
    finally:
        engine.dispose()


def get_or_create_experiment(client: MlflowClient, name: str, artifact_location: str | None) -> str:
    from mlflow.exceptions import MlflowException

    experiment = client.get_experiment_by_name(name)
    if experiment is None:
        location = f"{artifact_location}/{name}" if artifact_location else None
        try:
            return client.create_experiment(name, artifact_location=location, tags={EXPERIMENT_KIND_TAG: TRAINING_KIND})
        except MlflowException:  # another sweep created it a moment ago
            experiment = client.get_experiment_by_name(name)
            if experiment is None:
                raise
    if experiment.tags.get(EXPERIMENT_KIND_TAG) != TRAINING_KIND:
        client.set_experiment_tag(experiment.experiment_id, EXPERIMENT_KIND_TAG, TRAINING_KIND)
    return experiment.experiment_id
