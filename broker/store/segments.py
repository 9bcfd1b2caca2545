"""The message store: append-only segment files with group commit.

Layout: ``<data_dir>/messages/<number:016d>.seg`` — records as described in
``records.py``.  All queues share the segments, so one group commit can cover
records of many queues (a move between two queues commits atomically).

Group commit: records are appended to an in-memory batch; at most one write+fsync
runs at a time, in a worker thread; while it runs the next batch accumulates.  Each
batch has a number; ``durable_batch`` is the newest one known to be on disk, and
listeners are told when it advances (connections release publisher confirms then).
The number of fsyncs grows with batches, not with messages.

Space: every segment counts its live messages.  Segments are deleted from the front
(oldest first) once all their messages are settled, so an ACK record can never
outlive the segment of the message it settles.

fsync failures: the kernel may have dropped the dirty pages, so a failed fsync is
never retried on the same file: the segment is abandoned, the batch's waiters are
failed, and the store stops accepting persistent writes (``failed`` is set) while
consumers keep being served from memory.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Final

from ..fsio import fsync_dir
from .records import (
    ACKS,
    COUNTS,
    DELAYS,
    DELIVERED,
    FLAG_TRANSIENT,
    HEADER,
    MSGS,
    decode_record,
    encode_record,
)

log = logging.getLogger("wharf.store")

SEGMENT_BYTES: Final = 64 * 1024 * 1024
SEGMENT_SUFFIX: Final = ".seg"
# Compaction: copy the live messages out of the oldest segment once fewer than this
# fraction of the messages written to it are live and at least this many segments exist.
COMPACT_LIVE_RATIO: Final = 0.5
COMPACT_MIN_SEGMENTS: Final = 3
# Environment variable naming a file where every fsynced length is logged, so tests
# can simulate power loss by cutting files back to what was fsynced.
SYNC_LOG_ENV: Final = "WHARF_TEST_SYNC_LOG"


class Segment:
    __slots__ = (
        "number",
        "path",
        "fd",
        "live",
        "total",
        "size",
        "written_size",
        "synced_size",
        "new",
    )

    def __init__(self, number: int, path: Path) -> None:
        self.number = number
        self.path = path
        self.fd = -1
        self.live = 0
        self.total = 0  # messages ever written here (for the compaction ratio)
        self.size = 0
        self.written_size = 0
        self.synced_size = 0
        self.new = True  # directory entry not yet fsynced

    def __repr__(self) -> str:
        return f"<Segment {self.number} live={self.live} size={self.size}>"


def segment_path(directory: Path, number: int) -> Path:
    return directory / f"{number:016d}{SEGMENT_SUFFIX}"


def list_segments(directory: Path) -> list[tuple[int, Path]]:
    out = []
    for p in directory.glob(f"*{SEGMENT_SUFFIX}"):
        try:
            out.append((int(p.stem), p))
        except ValueError:
            continue
    out.sort()
    return out


class StoreFailed(Exception):
    pass


class MessageStore:
    def __init__(
        self,
        directory: Path,
        *,
        segment_bytes: int = SEGMENT_BYTES,
        fsync_interval_ms: int = 0,
    ) -> None:
        self.directory = directory
        self.segment_bytes = segment_bytes
        self.fsync_interval_ms = fsync_interval_ms
        self.segments: list[Segment] = []
        self.active: Segment | None = None
        self._pending: list[tuple[Segment, bytes]] = []
        self._pending_bytes = 0
        self._acks: dict[int, list[int]] = {}
        self._watermarks: dict[int, int] = {}
        self._counts: dict[int, list[list[int]]] = {}
        self.batch = 1  # the batch now accumulating
        self.durable_batch = 0
        self._in_flight = False
        self._scheduled = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="wharf-store")
        self.listeners: list[Callable[[int], None]] = []
        self.failed: str | None = None
        self.fsyncs = 0
        self.bytes_written = 0
        self._sync_log = os.environ.get(SYNC_LOG_ENV) or None
        self._closed = False
        self._unsynced: set[Segment] = set()
        self._last_offset = 0
        self._unwritten: dict[tuple[int, int], bytes] = {}
        # (batch, segment, n): copies made by compaction; the old segment's live count
        # drops only once the batch holding the copies is on disk.
        self._moved: list[tuple[int, Segment, int]] = []
        self._unwritten_keys: list[tuple[int, int]] = []
        # Tests set this to an exception to make the next fsync fail (as a dying disk would).
        self.fail_fsync: OSError | None = None
        self._after_commit: list[Callable[[], None]] = []
        self.by_number: dict[int, Segment] = {}
        self._read_fds: dict[int, int] = {}

    # -- opening -------------------------------------------------------------------

    def open_for_append(self, recovered: list[Segment]) -> None:
        """Start appending after recovery: always into a fresh segment."""
        self._loop = asyncio.get_running_loop()
        if self.fsync_interval_ms:
            log.warning(
                "fsync_interval_ms=%d: persistent messages are confirmed BEFORE they are "
                "fsynced; a power loss can lose up to %d ms of confirmed messages",
                self.fsync_interval_ms,
                self.fsync_interval_ms,
            )
            self._loop.call_later(self.fsync_interval_ms / 1000.0, self._fsync_tick)
        self.segments = recovered
        self.by_number = {seg.number: seg for seg in recovered}
        number = recovered[-1].number + 1 if recovered else 1
        self._roll(number)

    def _roll(self, number: int) -> Segment:
        seg = Segment(number, segment_path(self.directory, number))
        seg.fd = os.open(seg.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        self.segments.append(seg)
        self.by_number[number] = seg
        self.active = seg
        return seg

    # -- appending (event loop) ----------------------------------------------------

    def _append(self, data: bytes) -> Segment:
        seg = self.active
        assert seg is not None
        if seg.size >= self.segment_bytes:
            seg = self._roll(seg.number + 1)
        self._pending.append((seg, data))
        self._last_offset = seg.size
        seg.size += len(data)
        self._pending_bytes += len(data)
        if not self._scheduled:
            self._schedule()
        return seg

    def append_messages(
        self,
        queue_uid: int,
        first_position: int,
        exchange: str,
        routing_key: str,
        properties: dict[str, Any] | None,
        bodies: list[bytes] | tuple[bytes, ...],
        delivery_count: int = 0,
        durable: bool = True,
        expires_at: int = 0,
    ) -> tuple[Segment, int]:
        """Append one MSGS record; returns its segment and byte offset.

        ``durable=False`` stores the bodies of a long queue's transient messages (paging):
        flagged so that recovery skips them, and settled without an ACK record.
        """
        rec = encode_record(
            MSGS,
            (
                queue_uid,
                first_position,
                exchange,
                routing_key,
                properties,
                bodies,
                delivery_count,
                0 if durable else FLAG_TRANSIENT,
                expires_at,
            ),
        )
        seg = self._append(rec)
        seg.live += len(bodies)
        seg.total += len(bodies)
        offset = self._last_offset
        # Readable (paging) before its commit writes it: served from memory until then.
        key = (seg.number, offset)
        self._unwritten[key] = rec
        self._unwritten_keys.append(key)
        return seg, offset

    def settle(self, queue_uid: int, position: int, seg: Segment, durable: bool = True) -> None:
        """A stored message was acked, dropped or purged."""
        seg.live -= 1
        if not durable:
            return
        acks = self._acks.get(queue_uid)
        if acks is None:
            acks = self._acks[queue_uid] = []
        acks.append(position)
        if not self._scheduled:
            self._schedule()

    def delivered(self, queue_uid: int, position: int) -> None:
        self._watermarks[queue_uid] = position
        if not self._scheduled:
            self._schedule()

    def delays(self, queue_uid: int, position: int, due_ms: int) -> None:
        """A persistent message waits for a delayed retry until ``due_ms`` (epoch ms)."""
        self._append(encode_record(DELAYS, (queue_uid, [[position, due_ms]])))
        if not self._scheduled:
            self._schedule()

    def requeued(self, queue_uid: int, position: int, delivery_count: int) -> None:
        counts = self._counts.get(queue_uid)
        if counts is None:
            counts = self._counts[queue_uid] = []
        counts.append([position, delivery_count])
        if not self._scheduled:
            self._schedule()

    # -- group commit --------------------------------------------------------------

    def _schedule(self) -> None:
        self._scheduled = True
        loop = self._loop
        if loop is None:
            loop = self._loop = asyncio.get_running_loop()
        loop.call_soon(self._commit)

    def _drain_side_records(self) -> None:
        if self._acks:
            for uid, positions in self._acks.items():
                self._append(encode_record(ACKS, (uid, positions)))
            self._acks = {}
        if self._counts:
            for uid, counts in self._counts.items():
                self._append(encode_record(COUNTS, (uid, counts)))
            self._counts = {}
        if self._watermarks:
            for uid, pos in self._watermarks.items():
                self._append(encode_record(DELIVERED, (uid, pos)))
            self._watermarks = {}

    def _commit(self) -> None:
        self._scheduled = False
        if self._in_flight or self._closed:
            return
        self._drain_side_records()
        if not self._pending:
            return
        # _drain_side_records may have scheduled again; this commit covers it.
        pending = self._pending
        self._pending = []
        self._pending_bytes = 0
        keys = self._unwritten_keys
        self._unwritten_keys = []
        batch = self.batch
        self.batch += 1
        self._in_flight = True
        assert self._loop is not None
        fut = self._loop.run_in_executor(self._executor, self._write_batch, pending)
        fut.add_done_callback(lambda f: self._committed(batch, keys, f))

    def _write_batch(self, pending: list[tuple[Segment, bytes]]) -> None:
        """Worker thread: write each segment's bytes, fsync each touched file."""
        if self.failed is not None:
            raise StoreFailed(self.failed)
        touched: dict[int, Segment] = {}
        chunks: dict[int, list[bytes]] = {}
        for seg, data in pending:
            touched[seg.number] = seg
            chunks.setdefault(seg.number, []).append(data)
        for number, seg in touched.items():
            data = b"".join(chunks[number])
            view = memoryview(data)
            while view:
                n = os.write(seg.fd, view)
                view = view[n:]
            self.bytes_written += len(data)
            seg.written_size += len(data)
            if self.fsync_interval_ms:
                # Unsafe mode: confirms go out after the write; fsync_later() syncs.
                self._unsynced.add(seg)
            else:
                self._sync(seg)

    def _sync(self, seg: Segment) -> None:
        """Worker thread: fsync one segment (and its directory entry when new)."""
        if seg.fd < 0:
            return
        if self.fail_fsync is not None:
            raise self.fail_fsync
        os.fsync(seg.fd)
        self.fsyncs += 1
        seg.synced_size = seg.written_size
        if seg.new:
            fsync_dir(self.directory)
            seg.new = False
        if self._sync_log:
            with open(self._sync_log, "a") as f:
                f.write(f"{seg.path} {seg.synced_size}\n")

    def _sync_unsynced(self) -> None:
        while self._unsynced:
            self._sync(self._unsynced.pop())

    def _fsync_tick(self) -> None:
        assert self._loop is not None
        if self._closed:
            return
        if self._unsynced and not self._in_flight:
            self._loop.run_in_executor(self._executor, self._sync_unsynced)
        self._loop.call_later(self.fsync_interval_ms / 1000.0, self._fsync_tick)

    def _committed(self, batch: int, keys: list[tuple[int, int]], fut: Any) -> None:
        self._in_flight = False
        exc = fut.exception()
        if exc is not None:
            if self.failed is None:
                self.failed = f"write/fsync failed: {exc!r}"
                log.error(
                    "message store: %s; the segment is abandoned and persistent publishing stops",
                    self.failed,
                )
            for listener in list(self.listeners):
                listener(-batch)
            return
        self.durable_batch = batch
        unwritten = self._unwritten
        for key in keys:
            unwritten.pop(key, None)
        if self._moved:
            still = []
            for b, seg, n in self._moved:
                if b <= batch:
                    seg.live -= n
                else:
                    still.append((b, seg, n))
            self._moved = still
        for listener in list(self.listeners):
            listener(batch)
        if self._after_commit:
            callbacks, self._after_commit = self._after_commit, []
            for cb in callbacks:
                cb()
        self._collect_garbage()
        if self._pending or self._acks or self._watermarks or self._counts:
            self._commit()

    def _collect_garbage(self) -> None:
        segs = self.segments
        while len(segs) > 1 and segs[0].live <= 0 and segs[0] is not self.active:
            seg = segs.pop(0)
            self.by_number.pop(seg.number, None)
            rfd = self._read_fds.pop(seg.number, None)
            if rfd is not None:
                os.close(rfd)
            if seg.fd >= 0:
                os.close(seg.fd)
                seg.fd = -1
            try:
                os.unlink(seg.path)
            except FileNotFoundError:
                pass

    # -- compaction -------------------------------------------------------------------

    def compaction_candidate(self) -> Segment | None:
        """The oldest segment, if it is mostly settled and pins newer segments on disk."""
        segs = self.segments
        if len(segs) < COMPACT_MIN_SEGMENTS or self._moved or self.failed is not None:
            return None
        seg = segs[0]
        if seg is self.active or seg.live <= 0 or seg.total <= 0:
            return None
        if seg.live / seg.total >= COMPACT_LIVE_RATIO:
            return None
        return seg

    def moved(self, old: Segment, n: int) -> None:
        """``n`` messages of ``old`` were copied forward in the batch now accumulating."""
        if n:
            self._moved.append((self.batch, old, n))
            if not self._scheduled:
                self._schedule()

    # -- reading back (paging) ------------------------------------------------------

    def after_commit(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` once after the next commit completes."""
        self._after_commit.append(callback)
        if not self._scheduled and not self._in_flight:
            self._schedule()

    def readable(self, segment: int, offset: int) -> bool:
        """True once the record at ``offset`` has been written to the file."""
        if (segment, offset) in self._unwritten:
            return True
        seg = self.by_number.get(segment)
        return seg is not None and offset < seg.written_size

    def read_record(self, segment: int, offset: int) -> Any:
        """The payload of the record at ``offset`` (checksum verified)."""
        data = self._unwritten.get((segment, offset))
        if data is not None:
            return decode_record(data)
        fd = self._read_fds.get(segment)
        if fd is None:
            seg = self.by_number[segment]
            fd = self._read_fds[segment] = os.open(seg.path, os.O_RDONLY)
        head = os.pread(fd, HEADER.size, offset)
        length = HEADER.unpack(head)[0]
        return decode_record(head + os.pread(fd, length, offset + HEADER.size))

    # -- introspection / shutdown ---------------------------------------------------

    @property
    def idle(self) -> bool:
        return not self._moved and not (
            self._in_flight or self._pending or self._acks or self._watermarks or self._counts
        )

    def disk_bytes(self) -> int:
        return sum(s.size for s in self.segments)

    async def flush(self) -> None:
        """Commit everything appended so far and wait for it (shutdown, tests)."""
        loop = asyncio.get_running_loop()
        while not self.idle and self.failed is None:
            if not self._in_flight:
                self._commit()
            waiter: asyncio.Future[None] = loop.create_future()

            def done(_batch: int, w: asyncio.Future[None] = waiter) -> None:
                if not w.done():
                    w.set_result(None)

            self.listeners.append(done)
            try:
                await waiter
            finally:
                self.listeners.remove(done)

    def close(self) -> None:
        self._closed = True
        if self.failed is None:
            try:
                self._sync_unsynced()
            except OSError as exc:
                log.error("message store: final fsync failed: %r", exc)
        for seg in self.segments:
            if seg.fd >= 0:
                os.close(seg.fd)
                seg.fd = -1
        for rfd in self._read_fds.values():
            os.close(rfd)
        self._read_fds.clear()
        self._executor.shutdown(wait=True)

    def adopt(self, segments: Iterable[Segment]) -> None:
        """Recovered segments, readable before ``open_for_append``."""
        self.segments = list(segments)
        self.by_number = {seg.number: seg for seg in self.segments}
