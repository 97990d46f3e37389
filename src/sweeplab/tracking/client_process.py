"""An MlflowClient whose calls run in a process of their own, so that the store's work (SQLAlchemy and SQLite
locally, HTTP to a server) does not share the sweep driver's interpreter lock with Ray Tune's event loop and the
Optuna searcher: ≈ 58 ms of the driver's 98 ms of CPU a trial at 1,024 one-epoch trials (docs/performance-log.md, B8).
W&B's service process exists for the same reason.

``client_process(uri)`` starts the process (spawned: the driver runs Ray's threads) and returns a stand-in with
MlflowClient's methods: each call is pickled to the process, run on its MlflowClient, and its result or exception
pickled back. ``run(fn, ...)`` runs a module-level function of the client there, whole: what it composes, reads
and draws besides its MLflow calls stays out of the driver too (``with_client`` runs the same function on a plain
MlflowClient). The process imports MLflow and opens the store while Ray starts, then runs its ``warm_up`` on a
thread; ``ready()`` raises what opening the store raised. It ignores Ctrl-C (the driver decides how a sweep stops),
ends with the driver, and a call that finds it dead starts it again.
"""
from __future__ import annotations

import contextlib
import functools
import multiprocessing
import pickle
import signal
import threading
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")
WarmUp = tuple[Callable[..., object], tuple[Any, ...]]  # a module-level function and its arguments

PROCESS_FROM_TRIALS = 128
_started: dict[str, ClientProcess] = {}


def wanted(setting: bool | None, trials: int) -> bool:
    """Whether a sweep's tracker uses a client process (``tracking.client_process``; None: from
    PROCESS_FROM_TRIALS trials). The process costs a second import of MLflow (the driver still builds the tracker's
    calls from MLflow's entities), 1-3 s of CPU on a 2-core machine that the trials keep busy, and gains nothing on
    few trials: B2's 16 five-epoch trials took 19.5-20.2 s with it, 19.4-20.6 s without (6 alternating runs each,
    2026-12-03). It saves ≈ 70 ms of the driver's CPU a trial: B8's 1,024 one-epoch trials ran in 130 s instead of
    150 s."""
    return trials >= PROCESS_FROM_TRIALS if setting is None else setting


def client_process(uri: str, warm_up: WarmUp | None = None) -> ClientProcess:
    """The client process for ``uri``, started on first use (``warm_up`` then runs in it) and shared by the
    callers in this process."""
    if uri not in _started:
        _started[uri] = ClientProcess(uri, warm_up)
    return _started[uri]


def with_client(client: Any, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """``fn(client, *args, **kwargs)``, in the client process when ``client`` is one."""
    if isinstance(client, ClientProcess):
        return client.run(fn, *args, **kwargs)
    return fn(client, *args, **kwargs)


class ClientProcess:
    def __init__(self, uri: str, warm_up: WarmUp | None = None) -> None:
        self.tracking_uri = uri
        self._warm_up = warm_up
        self._lock = threading.Lock()  # one call at a time: the tracking thread, and the main thread's setup
        self._start()

    def _start(self) -> None:
        context = multiprocessing.get_context("spawn")
        self._conn, theirs = context.Pipe()
        self._process = context.Process(target=_serve, args=(theirs, self.tracking_uri, self._warm_up),
                                        name="sweeplab-mlflow", daemon=True)
        self._process.start()
        theirs.close()
        self._opened: BaseException | None | bool = False  # False until the process says how opening went

    def ready(self) -> None:
        """Wait until the process has opened the store; raise what opening it raised."""
        with self._lock:
            self._wait_opened()

    def _wait_opened(self) -> None:
        if self._opened is False:
            try:
                self._opened = self._conn.recv()
            except (EOFError, OSError):
                self._opened = ConnectionError("the MLflow client process ended while it opened the store")
        if isinstance(self._opened, BaseException):
            raise self._opened

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)
        return functools.partial(self._call, name)

    def run(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """``fn(client, *args, **kwargs)`` in the process, on its MlflowClient; ``fn`` is pickled by name, so a
        module-level function."""
        return self._call(fn, *args, **kwargs)

    def _call(self, method: str | Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        with self._lock:
            if not self._process.is_alive():  # killed: a new one opens the store again
                self._start()
            self._wait_opened()
            try:
                self._conn.send((method, args, kwargs))
                ok, value = self._conn.recv()
            except (EOFError, OSError) as err:
                raise ConnectionError(f"the MLflow client process ended during {_name(method)} "
                                      f"({err or 'no answer'})") from None
        if ok:
            return value
        raise value

    def close(self) -> None:
        with self._lock:
            if self._process.is_alive():
                with contextlib.suppress(OSError):  # it ended meanwhile
                    self._conn.send(None)
                self._process.join(timeout=5)
            if self._process.is_alive():
                self._process.terminate()
            self._conn.close()
        _started.pop(self.tracking_uri, None)


def _name(method: str | Callable[..., Any]) -> str:
    return method if isinstance(method, str) else method.__qualname__


def _serve(conn: Any, uri: str, warm_up: WarmUp | None) -> None:
    """The process's life: open the store, answer calls until the driver closes the pipe or ends, then the quick
    exit the driver's ``close`` waits for, rather than the interpreter's teardown."""
    from sweeplab.quick_exit import quick_exit

    _answer_calls(conn, uri, warm_up)
    quick_exit(0)


def _answer_calls(conn: Any, uri: str, warm_up: WarmUp | None) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    from sweeplab.tracking.store import client_for

    try:
        client = client_for(uri)
    except Exception as err:  # the store cannot be opened: the driver raises it, before any trial starts
        conn.send(_sendable(err))
        return
    conn.send(None)
    if warm_up is not None:
        fn, warm_args = warm_up
        threading.Thread(target=fn, args=warm_args, name="sweeplab-warm-up", daemon=True).start()
    while True:
        try:
            message = conn.recv()
        except (EOFError, OSError):  # the driver has ended
            return
        if message is None:
            return
        method, args, kwargs = message
        try:
            if isinstance(method, str):
                answer: tuple[bool, Any] = (True, getattr(client, method)(*args, **kwargs))
            else:
                answer = (True, method(client, *args, **kwargs))
        except Exception as err:
            answer = (False, _sendable(err))
        try:
            conn.send(answer)
        except (pickle.PicklingError, TypeError, AttributeError) as err:  # a result that does not pickle
            conn.send((False, RuntimeError(f"{_name(method)} returned what cannot be sent back: {err}")))


def _sendable(err: BaseException) -> BaseException:
    """``err`` if it survives pickling (an exception whose __init__ takes other arguments does not), else a
    RuntimeError with its type and message."""
    try:
        pickle.loads(pickle.dumps(err))
        return err
    except Exception:
        return RuntimeError(f"{type(err).__name__}: {err}")
