"""Tracking calls that outlive a tracking store that is down. Each call is journaled on disk before it is
tried, then sent in order (on one background thread, or inline); while the store does not answer, the
oldest call waits and is retried with backoff, and the calls after it only pile up in the journal, so the
trials that make them never wait. A call the store answers but refuses (twice) is reported, not retried."""
from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from sweeplab.tracking.journal import Entry, Journal

# send(op, args, retry): perform one call; retry=True when it may have reached the store already
Send = Callable[[str, dict[str, Any], bool], None]

BACKOFF_MAX_S = 15.0  # the longest wait between two tries while the store is down


class Outbox:
    def __init__(self, journal: Journal, send: Send, answers: Callable[[], bool], background: bool = True) -> None:
        self.journal = journal
        self._send, self._answers, self._background = send, answers, background
        self._entries: deque[Entry] = deque(journal.pending())  # an earlier launch's unsent calls go first
        self._cond = threading.Condition()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._delay = 0.0
        self._next_try = 0.0
        self.down_since: float | None = None  # monotonic time the store stopped answering; None while it answers
        self.failed: list[str] = []  # calls the store refused: "op: first line of the error"

    def put(self, op: str, args: dict[str, Any]) -> None:
        """Journal the call, then send it after every call put before it."""
        entry = self.journal.append(op, args)
        with self._cond:
            self._entries.append(entry)
            self._cond.notify_all()
        if not self._background:
            self._try_inline()
        elif self._thread is None:
            self._thread = threading.Thread(target=self._work, name="sweeplab-mlflow", daemon=True)
            self._thread.start()

    def pending(self) -> int:
        with self._cond:
            return len(self._entries)

    def flush(self) -> int:
        """Send what is pending now, on this thread, until done or the store does not answer; returns what is
        left (``sweeplab sync``, and a resumed sweep before its trials start)."""
        if self._thread is None:
            self._step()
        return self.pending()

    def close(self, wait_s: float, waiting: Callable[[int], None] | None = None) -> int:
        """Wait for every call to be sent, but for at most ``wait_s`` seconds of the store not answering;
        ``waiting(pending)`` is told once when that wait begins. Returns how many calls are left unsent
        (kept in the journal for a later flush)."""
        deadline: float | None = None
        down, probed, last = False, time.monotonic(), self.pending()
        while pending := self.pending():
            if pending < last:  # calls go through
                down, last = False, pending
            if self.down_since is not None:
                down = True
            elif time.monotonic() - probed >= 2.0:  # a call may sit in the client's own retries for minutes
                probed = time.monotonic()
                down = not self._answers()
            if not down:
                deadline = None
            elif deadline is None:
                deadline = time.monotonic() + wait_s
                if waiting is not None:
                    waiting(pending)
            elif time.monotonic() >= deadline:
                break
            if self._thread is None:
                self._try_inline()
                time.sleep(0.1 if self.pending() else 0)
            else:
                with self._cond:
                    self._cond.wait(timeout=0.2)
        self._stop.set()
        with self._cond:
            self._cond.notify_all()
        left = self.pending()
        if self._thread is not None and not left:
            self._thread.join()
        self.journal.close()
        return left

    def _work(self) -> None:
        while not self._stop.is_set():
            with self._cond:
                while not self._entries and not self._stop.is_set():
                    self._cond.wait()
            if self._stop.is_set():
                return
            self._stop.wait(self._step())

    def _try_inline(self) -> None:
        if time.monotonic() >= self._next_try:
            self._next_try = time.monotonic() + self._step()

    def _step(self) -> float:
        """Send pending calls in order until none is left (returns 0) or the store does not answer (returns
        the seconds to wait before the next try: 1, 2, 4 ... up to BACKOFF_MAX_S)."""
        while self._entries and not self._stop.is_set():
            if not self._send_oldest():
                self.down_since = self.down_since or time.monotonic()
                self._delay = min(max(1.0, 2 * self._delay), BACKOFF_MAX_S)
                return self._delay
            self.down_since, self._delay = None, 0.0
        return 0.0

    def _send_oldest(self) -> bool:
        """Send the oldest pending call; False while the store does not answer (the call stays pending)."""
        entry = self._entries[0]
        error: Exception | None = None
        for attempt in range(2):  # a store that answers again right after a failure gets a second try
            try:
                self._send(entry.op, entry.args, entry.retry or attempt > 0)
                error = None
                break
            except Exception as err:  # any failure: the store decides below whether it was down
                if not self._answers():
                    entry.retry = True
                    return False
                error = err
        if error is not None:
            self.failed.append(f"{entry.op}: {str(error).splitlines()[0][:300] if str(error) else repr(error)}")
        self.journal.mark_done(entry.seq)
        with self._cond:
            self._entries.popleft()
            self._cond.notify_all()
        return True
