"""The committed-offsets log of consumer groups: append-only, group-committed, compacted.

File: ``<data_dir>/logs-internal/offsets/offsets.log``, a concatenation of record
batches in the format of protocol/records.py (64-byte header with CRC + msgpack
payload).  One record per committed offset::

    key   = msgpack [group str, topic str, partition int]
    value = msgpack [offset int, metadata str|nil, commit_ts_ms int]   (nil = tombstone)

The file is read fully at start, once it and its directory are fsynced (a kill -9
leaves written but unfsynced commits in the page cache: a power loss after the restart
must not take back offsets the groups resumed from); the last record of a key wins and
a tombstone removes it.  A torn or corrupt tail is cut off, the cut bytes kept beside
the file as ``offsets.log.torn-<unix ms>``, and logged (as partition.py does for
segments).

Writes: every change is queued; one job at a time, in a worker thread, writes all the
batches queued since the previous job and fsyncs once (group commit).  The in-memory
table is updated when the job's fsync has completed, so it holds only durable offsets
and a reader never sees an offset that a crash could take back.

Compaction: after a job, when the file is more than twice the size of its live
records and bigger than ``COMPACT_MIN_BYTES``, the next job rewrites it instead: the
live records plus the batches queued meanwhile go to ``offsets.log.tmp``, which is
fsynced and renamed over the log, then the directory is fsynced.  Because jobs run one
at a time, nothing is appended to the old file while it is rewritten; commits made
meanwhile wait for the job, as they would for an fsync.  A failed write or fsync is
never retried on the same file: the next job rewrites the live records into a new file.

Every fsync of the log (or of a compaction's ``offsets.log.tmp``) is reported to the sync
log of ``fsio`` (``WHARF_TEST_SYNC_LOG``) with the fsynced length, so tests can simulate
power loss; writes and fsyncs go through ``fsio``, the tests' fault point.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Final, NamedTuple

import msgpack

from wharf.protocol.errors import InternalError
from wharf.protocol.records import build_batch, check_batch, decode_records, read_header

from ..store.fsio import FAULTS, fsync, fsync_dir, record_synced, write_all

log = logging.getLogger("wharf.groups")

LOG_NAME: Final = "offsets.log"
COMPACT_MIN_BYTES: Final = 1024 * 1024
COMPACT_RATIO: Final = 2
# Records per batch when a compaction rewrites the live table.
REWRITE_BATCH_RECORDS: Final = 4096
# Per record, beyond key and value: msgpack array, offset delta, timestamp, headers.
_RECORD_OVERHEAD_BYTES: Final = 16

OffsetKey = tuple[str, str, int]  # (group, topic, partition)


class Committed(NamedTuple):
    offset: int
    metadata: str | None
    commit_ts: int  # epoch ms
    size: int  # bytes of its record in the log (for the live-size estimate)


# One change: (key, None) is a tombstone.  A tombstone whose partition is -1 is a
# wildcard, expanded when it is written: every live key of that group ("" = any group)
# and topic ("" = any topic), including keys set by changes queued before it.
Change = tuple[OffsetKey, tuple[int, str | None, int] | None]
WILDCARD: Final = -1


class OffsetsLog:
    """Owns the offsets file and the table of durable committed offsets."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.path = directory / LOG_NAME
        # group -> {(topic, partition): Committed}
        self.groups: dict[str, dict[tuple[str, int], Committed]] = {}
        # group -> newest commit timestamp (epoch ms) of its live offsets
        self.last_commit: dict[str, int] = {}
        self.live_bytes = 0
        self.file_bytes = 0
        self._next_offset = 0
        self._fd = -1
        self._failed = False
        self._pending: list[Change] = []
        self._pending_futures: list[asyncio.Future[None]] = []
        self._job: asyncio.Future[Any] | None = None
        self._closed = False
        self.writes = 0
        self.fsyncs = 0
        self.compactions = 0
        directory.mkdir(parents=True, exist_ok=True)
        self._load()

    # -- reading ---------------------------------------------------------------------

    def _load(self) -> None:
        tmp = self.path.with_name(LOG_NAME + ".tmp")
        if tmp.exists():
            tmp.unlink()  # an interrupted compaction: the old file is still whole
        self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o644)
        # What is read here is made durable first: after a kill -9 the file may end in
        # commits that were written but never fsynced (the page cache outlives a killed
        # process, not a power loss).  Groups would resume from such an offset, and a
        # power loss later would take it back (the group rewound under its consumers).
        fsync(self._fd, self.path)
        fsync_dir(self.directory)
        data = self.path.read_bytes()
        pos = 0
        records = 0
        while pos < len(data):
            problem = check_batch(data, pos)
            if problem is not None:
                self._cut_tail(data, pos, problem)
                break
            h = read_header(data, pos)
            try:
                for rec in decode_records(memoryview(data)[pos : pos + h.size]):
                    self._apply_record(rec[2], rec[3])
                    records += 1
            except Exception as exc:  # a CRC-valid batch we cannot decode: keep going
                log.warning("offsets log: skipping an undecodable batch at byte %d: %s", pos, exc)
            self._next_offset = h.next_offset
            pos += h.size
        self.file_bytes = pos
        if pos == len(data):  # (a cut tail reported its own length)
            self._synced(self.path, pos)
        if records:
            log.info(
                "offsets log: %d committed offsets of %d groups from %d records",
                sum(len(g) for g in self.groups.values()),
                len(self.groups),
                records,
            )

    def _cut_tail(self, data: bytes, pos: int, problem: str) -> None:
        side = self.path.with_name(f"{LOG_NAME}.torn-{int(time.time() * 1000)}")
        side.write_bytes(data[pos:])
        os.ftruncate(self._fd, pos)
        fsync(self._fd, self.path)
        self._synced(self.path, pos)
        log.warning(
            "offsets log %s: cut %d bytes at byte %d (%s); kept them in %s",
            self.path,
            len(data) - pos,
            pos,
            problem,
            side.name,
        )

    def _apply_record(self, key: bytes | None, value: bytes | None) -> None:
        if key is None:
            return
        group, topic, partition = msgpack.unpackb(key, raw=False)
        if value is None:
            self._apply(((group, topic, partition), None))
            return
        offset, metadata, ts = msgpack.unpackb(value, raw=False)
        self._apply(((group, topic, partition), (offset, metadata, ts)))

    def _apply(self, change: Change) -> None:
        (group, topic, partition), value = change
        table = self.groups.get(group)
        old = table.get((topic, partition)) if table is not None else None
        if old is not None:
            self.live_bytes -= old.size
        if value is None:
            if table is not None and old is not None:
                del table[(topic, partition)]
                if not table:
                    del self.groups[group]
                    self.last_commit.pop(group, None)
            return
        if table is None:
            table = self.groups[group] = {}
        offset, metadata, ts = value
        size = _record_size(group, topic, partition, metadata)
        table[(topic, partition)] = Committed(offset, metadata, ts, size)
        self.live_bytes += size
        if ts > self.last_commit.get(group, -1):
            self.last_commit[group] = ts

    def committed(self, group: str) -> dict[tuple[str, int], Committed]:
        return self.groups.get(group, {})

    # -- writing ---------------------------------------------------------------------

    def commit(self, changes: Iterable[Change]) -> asyncio.Future[None]:
        """Queue changes; the future is done once they are fsynced and visible in
        ``groups`` (or failed with InternalError)."""
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[None] = loop.create_future()
        if self._closed:
            fut.set_exception(InternalError("the offsets log is closed"))
            return fut
        self._pending.extend(changes)
        self._pending_futures.append(fut)
        if self._job is None:
            self._start_job(loop)
        return fut

    def commit_now(self, changes: list[Change]) -> None:
        """Write and fsync ``changes`` on the calling thread (start-up recovery of
        transactions, before any job runs)."""
        if not changes:
            return
        assert self._job is None, "commit_now while a write job runs"
        data = _encode(changes, self._next_offset, int(time.time() * 1000))
        self._append(self._fd, data)
        self._next_offset += len(changes)
        self.file_bytes += len(data)
        for change in changes:
            self._apply(change)

    def _wants_rewrite(self) -> bool:
        if self._failed:
            return True
        return (
            self.file_bytes > COMPACT_MIN_BYTES
            and self.file_bytes > COMPACT_RATIO * self.live_bytes
        )

    def _expand(self, changes: list[Change]) -> list[Change]:
        if not any(key[2] == WILDCARD for key, _ in changes):
            return changes
        out: list[Change] = []
        for key, value in changes:
            if key[2] != WILDCARD:
                out.append((key, value))
                continue
            group, topic = key[0], key[1]
            doomed: set[OffsetKey] = set()
            tables = [group] if group else list(self.groups)
            for g in tables:
                for t, p in self.groups.get(g, {}):
                    if not topic or t == topic:
                        doomed.add((g, t, p))
            for k, v in out:
                if v is not None and (not group or k[0] == group) and (not topic or k[1] == topic):
                    doomed.add(k)
            out.extend((k, None) for k in sorted(doomed))
        return out

    def _start_job(self, loop: asyncio.AbstractEventLoop) -> None:
        changes, self._pending = self._expand(self._pending), []
        futures, self._pending_futures = self._pending_futures, []
        now_ms = int(time.time() * 1000)
        rewrite = self._wants_rewrite()
        if rewrite:
            live: list[Change] = [
                ((group, tp[0], tp[1]), (c.offset, c.metadata, c.commit_ts))
                for group, table in self.groups.items()
                for tp, c in table.items()
            ]
            job: asyncio.Future[Any] = loop.run_in_executor(
                None, self._rewrite_file, live, changes, now_ms
            )
        else:
            data = _encode(changes, self._next_offset, now_ms)
            self._next_offset += len(changes)
            job = loop.run_in_executor(None, self._append, self._fd, data)
        self._job = job

        def done(task: asyncio.Future[Any]) -> None:
            self._job = None
            exc = task.exception()
            if exc is None:
                if rewrite:
                    self._swap(*task.result())
                else:
                    self.file_bytes += len(data)
                self.writes += 1
                self.fsyncs += 1
                for change in changes:
                    self._apply(change)
                for f in futures:
                    if not f.done():
                        f.set_result(None)
            else:
                self._failed = True
                log.error(
                    "offsets log %s: %s failed: %s; the next write rewrites the live "
                    "offsets into a new file",
                    self.path,
                    "rewrite" if rewrite else "write/fsync",
                    exc,
                )
                for f in futures:
                    if not f.done():
                        f.set_exception(
                            InternalError("writing committed offsets failed; the broker logged it")
                        )
            if self._pending_futures and not self._closed:
                self._start_job(loop)

        job.add_done_callback(done)

    def _append(self, fd: int, data: bytes) -> None:
        """Worker thread: append ``data`` and fsync (see ``_append_and_fsync``)."""
        _append_and_fsync(fd, data, self.path)
        if FAULTS.sync_log:
            self._synced(self.path, os.fstat(fd).st_size)

    def _rewrite_file(
        self, live: list[Change], changes: list[Change], now_ms: int
    ) -> tuple[int, int, int]:
        """Worker thread: write the live offsets with ``changes`` applied as the new
        log; returns its descriptor, size and next record offset."""
        final = dict(live)
        for key, value in changes:
            if value is None:
                final.pop(key, None)
            else:
                final[key] = value
        records: list[Change] = list(final.items())
        data = _encode(records, 0, now_ms)
        tmp = self.path.with_name(LOG_NAME + ".tmp")
        fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND, 0o644)
        try:
            write_all(fd, data, tmp)
            fsync(fd, tmp)
            self._synced(tmp, len(data))
            os.rename(tmp, self.path)
            fsync_dir(self.directory)
        except BaseException:
            os.close(fd)
            raise
        self._synced(self.path, len(data))
        return fd, len(data), len(records)

    def _synced(self, path: Path, length: int) -> None:
        record_synced(path, length)

    def _swap(self, fd: int, size: int, next_offset: int) -> None:
        old = self._fd
        self._fd = fd
        self._next_offset = next_offset
        self._failed = False
        self.file_bytes = size
        self.compactions += 1
        try:
            os.close(old)
        except OSError:
            pass
        log.info("offsets log compacted to %d bytes", size)

    async def flush(self) -> None:
        """Wait until everything queued so far is written (or has failed)."""
        while self._job is not None:
            await asyncio.wait({self._job})
            await asyncio.sleep(0)  # let the done callback run and start the next job

    async def close(self) -> None:
        try:
            await self.flush()
        finally:
            self._closed = True
            for f in self._pending_futures:
                if not f.done():
                    f.set_exception(InternalError("the offsets log is closed"))
            self._pending_futures = []
            self._pending = []
            if self._fd >= 0:
                os.close(self._fd)
                self._fd = -1


def _encode(changes: list[Change], base_offset: int, now_ms: int) -> bytes:
    """Batches of at most REWRITE_BATCH_RECORDS records for ``changes``, numbered from
    ``base_offset``."""
    out: list[bytes] = []
    for start in range(0, len(changes), REWRITE_BATCH_RECORDS):
        chunk = changes[start : start + REWRITE_BATCH_RECORDS]
        records = []
        for i, ((group, topic, partition), value) in enumerate(chunk):
            key = msgpack.packb([group, topic, partition], use_bin_type=True)
            packed = None if value is None else msgpack.packb(list(value), use_bin_type=True)
            records.append([i, now_ms, key, packed, None])
        out.append(
            build_batch(
                base_offset + start,
                msgpack.packb(records, use_bin_type=True),
                record_count=len(records),
                last_offset_delta=len(records) - 1,
                attributes=0,
                first_timestamp=now_ms,
                max_timestamp=now_ms,
            )
        )
    return b"".join(out)


def _record_size(group: str, topic: str, partition: int, metadata: str | None) -> int:
    meta = len(metadata.encode()) if metadata else 0
    return len(group.encode()) + len(topic.encode()) + meta + 24 + _RECORD_OVERHEAD_BYTES


def _append_and_fsync(fd: int, data: bytes, path: Path) -> None:
    write_all(fd, data, path)
    fsync(fd, path)
