"""One partition of a log topic: append-only segment files, fetch by offset, recovery.

Layout: ``<topic dir>/<partition>/<base_offset:020d>.log``.  A segment file is a
sequence of batches, each a fixed header followed by a msgpack payload::

    u32 payload_bytes | u64 base_offset | u32 record_count | u32 crc32(payload)
    payload = msgpack array of records, one record = [key bin|nil, value bin,
              headers map|nil, timestamp int (epoch ms)]

All integers are big-endian.  Offsets are consecutive: a batch's records get
``base_offset .. base_offset + record_count - 1``.  On open, every segment is read
back; a torn or corrupt tail of the *last* segment is cut off (the cut bytes are kept
beside it in ``<segment>.torn-<unix ms>``) and logged.  Corruption in an earlier
segment is refused: dropping it would silently skip valid batches after it.

Writes happen on the event loop (``os.write``, page cache only); ``sync()`` fsyncs
in a worker thread and batches concurrent callers into one fsync (group commit).
After a failed write or fsync the partition refuses further appends.
"""

from __future__ import annotations

import asyncio
import logging
import os
import struct
import time
import zlib
from bisect import bisect_right
from pathlib import Path
from typing import Any, Final, NamedTuple

import msgpack

from wharf.protocol.errors import InternalError, InvalidArgument, WharfError

log = logging.getLogger("wharf.logs")

_HEADER: Final = struct.Struct(">IQII")
HEADER_BYTES: Final = _HEADER.size
SEGMENT_SUFFIX: Final = ".log"
# A batch header claiming more than this is treated as corruption, not allocated.
MAX_BATCH_BYTES: Final = 256 * 1024 * 1024

# One stored record: [key, value, headers, timestamp].
RecordIn = tuple[bytes | None, bytes, dict[str, Any] | None, int]


class BatchRef(NamedTuple):
    """Where one batch lives: in-memory index entry (one per batch)."""

    base_offset: int
    record_count: int
    segment: int  # index into Partition._segments
    position: int  # byte position of the payload in that segment file
    payload_bytes: int


def segment_name(base_offset: int) -> str:
    return f"{base_offset:020d}{SEGMENT_SUFFIX}"


def encode_batch(base_offset: int, records: list[RecordIn]) -> bytes:
    payload: bytes = msgpack.packb(records, use_bin_type=True)
    header = _HEADER.pack(len(payload), base_offset, len(records), zlib.crc32(payload))
    return header + payload


class OffsetOutOfRange(Exception):
    pass


class Partition:
    """Owns the segment files of one partition and the index of its batches."""

    def __init__(self, path: Path, number: int) -> None:
        self.path = path
        self.number = number
        self._segments: list[tuple[int, int]] = []  # (base offset, fd), oldest first
        self._batches: list[BatchRef] = []
        self._batch_offsets: list[int] = []  # base offsets of _batches, for bisect
        self.next_offset = 0
        self._write_pos = 0  # end of the active (last) segment
        self.failed: WharfError | None = None
        self._sync_running = False
        self._sync_waiters: list[asyncio.Future[None]] = []
        self._synced_through = 0  # bytes-written counter covered by the last fsync
        self._written = 0
        self._open()

    # -- recovery ------------------------------------------------------------------

    def _open(self) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        names = sorted(p.name for p in self.path.iterdir() if p.name.endswith(SEGMENT_SUFFIX))
        if not names:
            names = [segment_name(0)]
        for i, name in enumerate(names):
            seg_path = self.path / name
            base = int(name[: -len(SEGMENT_SUFFIX)])
            if i == 0:
                self.next_offset = base
            elif base != self.next_offset:
                raise InternalError(
                    f"log segment {seg_path} starts at offset {base}, expected {self.next_offset}"
                )
            fd = os.open(seg_path, os.O_RDWR | os.O_CREAT, 0o644)
            self._segments.append((base, fd))
            end = self._scan_segment(i, seg_path, fd, last=i == len(names) - 1)
            self._write_pos = end
        self._synced_through = self._written

    def _scan_segment(self, index: int, seg_path: Path, fd: int, *, last: bool) -> int:
        data = seg_path.read_bytes()
        pos = 0
        size = len(data)
        while pos < size:
            problem = self._check_batch(data, pos)
            if problem is not None:
                if not last:
                    raise InternalError(
                        f"log segment {seg_path} is corrupt at byte {pos} ({problem}) and is "
                        "not the last segment; refusing to skip the batches after it"
                    )
                self._cut_tail(seg_path, fd, data, pos, problem)
                return pos
            length, base, count, _ = _HEADER.unpack_from(data, pos)
            self._index(BatchRef(base, count, index, pos + HEADER_BYTES, length))
            pos += HEADER_BYTES + length
        return pos

    def _check_batch(self, data: bytes, pos: int) -> str | None:
        if len(data) - pos < HEADER_BYTES:
            return "short header"
        length, base, count, crc = _HEADER.unpack_from(data, pos)
        if length > MAX_BATCH_BYTES or pos + HEADER_BYTES + length > len(data):
            return "short payload"
        if zlib.crc32(data[pos + HEADER_BYTES : pos + HEADER_BYTES + length]) != crc:
            return "crc mismatch"
        if base != self.next_offset or count <= 0:
            return f"batch offset {base}+{count}, expected {self.next_offset}"
        return None

    def _cut_tail(self, seg_path: Path, fd: int, data: bytes, pos: int, problem: str) -> None:
        side = seg_path.with_name(f"{seg_path.name}.torn-{int(time.time() * 1000)}")
        side.write_bytes(data[pos:])
        os.ftruncate(fd, pos)
        os.fsync(fd)
        log.warning(
            "log %s: cut %d bytes at byte %d (%s); kept them in %s",
            seg_path,
            len(data) - pos,
            pos,
            problem,
            side.name,
        )

    def _index(self, ref: BatchRef) -> None:
        self._batches.append(ref)
        self._batch_offsets.append(ref.base_offset)
        self.next_offset = ref.base_offset + ref.record_count

    # -- offsets -------------------------------------------------------------------

    @property
    def earliest(self) -> int:
        return self._segments[0][0]

    @property
    def latest(self) -> int:
        """The high watermark: the offset the next record will get."""
        return self.next_offset

    # -- append --------------------------------------------------------------------

    def append(self, records: list[RecordIn]) -> int:
        """Write one batch to the page cache; returns its base offset.  Not yet durable:
        ``await sync()`` before telling anyone it is fsynced."""
        if self.failed is not None:
            raise self.failed
        if not records:
            raise InvalidArgument("a produce request needs at least one record")
        base = self.next_offset
        data = encode_batch(base, records)
        fd = self._segments[-1][1]
        start = self._write_pos
        try:
            view = memoryview(data)
            while view:
                n = os.pwrite(fd, view, start + len(data) - len(view))
                view = view[n:]
        except OSError as exc:
            raise self._fail(f"write failed: {exc}") from exc
        self._write_pos = start + len(data)
        self._written += len(data)
        self._index(
            BatchRef(
                base,
                len(records),
                len(self._segments) - 1,
                start + HEADER_BYTES,
                len(data) - HEADER_BYTES,
            )
        )
        return base

    def _fail(self, why: str) -> WharfError:
        log.error("log partition %s: %s; refusing further appends", self.path, why)
        self.failed = InternalError(
            f"partition {self.number} of this topic failed ({why}); the broker logged it"
        )
        return self.failed

    def sync(self) -> asyncio.Future[None]:
        """A future done once everything appended before the call is fsynced.  Calls
        made while an fsync runs share the next one (group commit)."""
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[None] = loop.create_future()
        if self.failed is not None:
            fut.set_exception(self.failed)
        elif self._synced_through >= self._written:
            fut.set_result(None)
        else:
            self._sync_waiters.append(fut)
            if not self._sync_running:
                self._start_sync(loop)
        return fut

    def _start_sync(self, loop: asyncio.AbstractEventLoop) -> None:
        waiters, self._sync_waiters = self._sync_waiters, []
        target = self._written
        # A dup'd descriptor keeps the file alive even if the topic is deleted meanwhile.
        fd = os.dup(self._segments[-1][1])
        self._sync_running = True

        def done(task: asyncio.Future[None]) -> None:
            self._sync_running = False
            exc = task.exception()
            if exc is None:
                self._synced_through = max(self._synced_through, target)
            else:
                self._fail(f"fsync failed: {exc}")
            for w in waiters:
                if w.done():
                    continue
                if exc is None:
                    w.set_result(None)
                else:
                    w.set_exception(self.failed or InternalError("fsync failed"))
            if self._sync_waiters:
                if self.failed is None and self._segments:
                    self._start_sync(loop)
                else:
                    for w in self._sync_waiters:
                        if not w.done():
                            w.set_exception(self.failed or InternalError("partition closed"))
                    self._sync_waiters = []

        loop.run_in_executor(None, _fsync_and_close, fd).add_done_callback(done)

    # -- fetch ---------------------------------------------------------------------

    def fetch(self, offset: int, max_bytes: int) -> list[list[Any]]:
        """Records from ``offset`` on as ``[offset, key, value, headers, timestamp]``.

        Whole batches are read until their payload bytes pass ``max_bytes``; at least
        one record is returned when there is one, so a big batch cannot stall a reader.
        """
        if offset < self.earliest or offset > self.latest:
            raise OffsetOutOfRange
        if offset == self.latest:
            return []
        out: list[list[Any]] = []
        i = bisect_right(self._batch_offsets, offset) - 1
        used = 0
        batches = self._batches
        while 0 <= i < len(batches):
            ref = batches[i]
            if out and used + ref.payload_bytes > max_bytes:
                break
            fd = self._segments[ref.segment][1]
            payload = os.pread(fd, ref.payload_bytes, ref.position)
            records = msgpack.unpackb(payload, raw=False)
            for j, rec in enumerate(records):
                o = ref.base_offset + j
                if o >= offset:
                    out.append([o, rec[0], rec[1], rec[2], rec[3]])
            used += ref.payload_bytes
            i += 1
        return out

    def close(self) -> None:
        for _, fd in self._segments:
            os.close(fd)
        self._segments = []
        for w in self._sync_waiters:
            if not w.done():
                w.set_exception(InternalError("the partition was closed"))
        self._sync_waiters = []


def _fsync_and_close(fd: int) -> None:
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
