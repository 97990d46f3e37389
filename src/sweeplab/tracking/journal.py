"""A sweep's tracking calls on disk: an append-only JSON-lines file, one line per call written before the
call is tried and one ``{"done": seq}`` line once it went through. What has no done line is pending: the
tracking store was down, or the driver died, before it was sent. Each line is flushed to the OS as it is
written, so a killed driver loses none."""
from __future__ import annotations

import json
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any


def journal_path(output_dir: str | Path, sweep_id: str) -> Path:
    """Where a sweep's journal lives: beside its Optuna and Ray state, under the sweep's output_dir."""
    return Path(output_dir).resolve() / "tracking" / f"{sweep_id}.jsonl"


@dataclass
class Entry:
    """One journaled call: ``op`` names it, ``args`` are its JSON arguments. ``retry`` is true when the call
    may already have reached the store (tried before, or read back from the journal): it must then check
    what is there before it writes, so that nothing is logged twice."""

    seq: int
    op: str
    args: dict[str, Any]
    retry: bool = False


class Journal:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()  # the driver appends while the tracking thread marks calls done
        self._pending, last = self._read()
        self._next = last + 1
        self._file: IO[str] | None = None

    def _read(self) -> tuple[dict[int, Entry], int]:
        """The pending calls of an earlier launch, and the last sequence number used."""
        pending: dict[int, Entry] = {}
        if not self.path.exists():
            return pending, 0
        seen = 0
        for line in self.path.read_text().splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:  # the last line of a driver killed mid-write: never sent either
                continue
            if "done" in record:
                pending.pop(int(record["done"]), None)
            else:
                seen = max(seen, int(record["seq"]))
                pending[int(record["seq"])] = Entry(int(record["seq"]), record["op"], record["args"], retry=True)
        return pending, seen

    def pending(self) -> list[Entry]:
        """The calls not marked done, oldest first."""
        with self._lock:
            return sorted(self._pending.values(), key=lambda e: e.seq)

    def append(self, op: str, args: dict[str, Any]) -> Entry:
        with self._lock:
            entry = Entry(self._next, op, args)
            self._next = entry.seq + 1
            self._write({"seq": entry.seq, "op": op, "args": args})
            self._pending[entry.seq] = entry
            return entry

    def mark_done(self, seq: int) -> None:
        with self._lock:
            self._write({"done": seq})
            self._pending.pop(seq, None)

    def _write(self, record: dict[str, Any]) -> None:
        if self._file is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            torn = self.path.exists() and self.path.stat().st_size and not self.path.read_bytes().endswith(b"\n")
            self._file = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 (open for the journal's life)
            if torn:  # a line cut off by a killed driver ends here, so that the next one is whole
                self._file.write("\n")
        self._file.write(json.dumps(record, separators=(",", ":")) + "\n")
        self._file.flush()

    def close(self) -> None:
        """Close the file; a journal with nothing pending is removed (there is nothing left to send)."""
        with self._lock:
            if self._file is not None:
                self._file.close()
                self._file = None
            if not self._pending:
                self.path.unlink(missing_ok=True)
