"""Durable-file helpers shared by the message store, the definitions and the log topics,
and the one fault-injection point for their writes and fsyncs.

Every durable writer writes with :func:`write_all` or :func:`pwrite_all`, fsyncs with
:func:`fsync` (directories with :func:`fsync_dir`) and, once a file's length is durable
(its directory entry included), reports it with :func:`record_synced`.  The test hooks
live here and nowhere else (:data:`FAULTS`):

- ``WHARF_TEST_SYNC_LOG=<file>``: :func:`record_synced` appends ``<path> <length>`` lines
  to the file, the length of each file known to be on disk.  The crash harness
  (tests/durability/harness.py) simulates a power loss by cutting every file back to it.
- ``WHARF_TEST_WRITE_DELAY_MS=<ms>``: every :func:`write_all` takes that much longer, as
  on a slow or FUSE-backed disk, so that a write is in flight nearly all the time (not
  :func:`pwrite_all`: log appends run on the event loop).
- ``WHARF_TEST_HALT_AT=<step>``: a multi-step commit that names its steps (the
  transaction coordinator: ``txn-prepared`` once PrepareCommit/PrepareAbort is fsynced,
  ``txn-acked`` once a commit's queue acks and group offsets are,
  ``txn-answered`` once END_TXN is answered (markers appended, not fsynced),
  ``txn-marked`` once the markers are) logs ``halting at <step>`` there and never goes
  on, so a test can kill -9 the broker at exactly that point.
- ``FAULTS.failing(op, error, under=dir)``: in-process tests make every ``"write"`` or
  ``"fsync"`` of a file under ``dir`` raise ``error``, as a dying disk would; this is the
  commit step that tests fail on purpose.
- ``FAULTS.holding(op, under=dir)``: in-process tests make every ``op`` of a file under
  ``dir`` wait until they set the event it yields, as a stalled disk would (for writers
  that fsync in worker threads: an ``op`` on the event loop would stall the broker).

The environment is read once, at import: brokers started by the durability tests are
subprocesses with their own environment.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Final, Literal

SYNC_LOG_ENV: Final = "WHARF_TEST_SYNC_LOG"
WRITE_DELAY_ENV: Final = "WHARF_TEST_WRITE_DELAY_MS"
HALT_AT_ENV: Final = "WHARF_TEST_HALT_AT"

FaultOp = Literal["write", "fsync"]
StrPath = str | os.PathLike[str]


class FaultPoint:
    """The test hooks of every durable write and fsync; one instance, :data:`FAULTS`."""

    def __init__(
        self, sync_log: str | None, write_delay_ms: int, halt_at: str | None = None
    ) -> None:
        self.sync_log = sync_log
        self.write_delay_s = write_delay_ms / 1000.0
        self.halt_at = halt_at
        # (op, directory, error); replaced whole, so worker threads read it without a lock.
        self._failures: tuple[tuple[FaultOp, Path, OSError], ...] = ()
        # (op, directory, release, longest wait in seconds); replaced whole, like _failures.
        self._holds: tuple[tuple[FaultOp, Path, threading.Event, float], ...] = ()
        # Worker threads of several writers append to the sync log.
        self._sync_log_lock = threading.Lock()

    @classmethod
    def from_environ(cls) -> FaultPoint:
        return cls(
            os.environ.get(SYNC_LOG_ENV) or None,
            int(os.environ.get(WRITE_DELAY_ENV) or 0),
            os.environ.get(HALT_AT_ENV) or None,
        )

    @contextmanager
    def failing(self, op: FaultOp, error: OSError, *, under: StrPath) -> Iterator[None]:
        """While the block runs, every ``op`` on a file under ``under`` raises ``error``."""
        failure = (op, Path(under).resolve(), error)
        self._failures = (*self._failures, failure)
        try:
            yield
        finally:
            self._failures = tuple(f for f in self._failures if f is not failure)

    @contextmanager
    def holding(
        self, op: FaultOp, *, under: StrPath, max_hold_s: float = 20.0
    ) -> Iterator[threading.Event]:
        """While the block runs, every ``op`` on a file under ``under`` waits until the
        yielded event is set (at most ``max_hold_s``, so no thread hangs for good); the
        event is set when the block ends."""
        release = threading.Event()
        hold = (op, Path(under).resolve(), release, max_hold_s)
        self._holds = (*self._holds, hold)
        try:
            yield release
        finally:
            release.set()
            self._holds = tuple(h for h in self._holds if h is not hold)

    def check(self, op: FaultOp, path: StrPath) -> None:
        """Wait while ``op`` on ``path`` is held, then raise the injected error, if any."""
        failures, holds = self._failures, self._holds
        if not failures and not holds:
            return
        resolved = Path(path).resolve()
        for hop, under, release, max_hold_s in holds:
            if hop == op and resolved.is_relative_to(under):
                release.wait(max_hold_s)
        for fop, under, error in failures:
            if fop == op and resolved.is_relative_to(under):
                raise error

    def record_synced(self, entries: Iterable[tuple[StrPath, int]]) -> None:
        if self.sync_log is None:
            return
        text = "".join(f"{path} {length}\n" for path, length in entries)
        if text:
            with self._sync_log_lock, open(self.sync_log, "a") as f:
                f.write(text)


FAULTS: Final = FaultPoint.from_environ()


def write_all(fd: int, data: bytes | memoryview, path: StrPath) -> None:
    """``os.write`` until every byte of ``data`` is written to ``fd`` (the file ``path``)."""
    FAULTS.check("write", path)
    if FAULTS.write_delay_s:
        time.sleep(FAULTS.write_delay_s)
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def pwrite_all(fd: int, data: bytes | memoryview, pos: int, path: StrPath) -> None:
    """``os.pwrite`` ``data`` at ``pos`` of ``fd`` (the file ``path``) until all is written."""
    FAULTS.check("write", path)  # no write delay: log appends run on the event loop
    view = memoryview(data)
    while view:
        written = os.pwrite(fd, view, pos)
        view = view[written:]
        pos += written


def fsync(fd: int, path: StrPath) -> None:
    """fsync ``fd`` (the file or directory ``path``)."""
    FAULTS.check("fsync", path)
    os.fsync(fd)


def record_synced(path: StrPath, length: int) -> None:
    """``length`` bytes of ``path`` are durable (its directory entry too): for the sync log."""
    if FAULTS.sync_log is not None:
        FAULTS.record_synced([(path, length)])


def record_synced_many(entries: Iterable[tuple[StrPath, int]]) -> None:
    if FAULTS.sync_log is not None:
        FAULTS.record_synced(entries)


def fsync_dir(path: Path) -> None:
    """fsync a directory, so that names created, renamed or removed in it are durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        fsync(fd, path)
    finally:
        os.close(fd)


def write_atomically(
    path: Path,
    data: bytes,
    *,
    mode: int = 0o644,
    tmp: Path | None = None,
    sync_dir: bool = True,
) -> None:
    """Write ``data`` to a temp file (``tmp``, default ``<path>.tmp``), fsync it, rename
    it over ``path`` and (unless ``sync_dir`` is False) fsync the directory."""
    tmp = tmp if tmp is not None else path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        write_all(fd, data, tmp)
        fsync(fd, tmp)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    if sync_dir:
        fsync_dir(path.parent)
