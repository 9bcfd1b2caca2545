"""One segment file of a partition: ``<base_offset:020d>.log``.

A segment is a plain concatenation of record batches (protocol/records.py: a 64-byte
header with base offset, count, timestamps and CRC, then the producer's payload).
Batches are written with one ``pwrite`` each on the event loop (page cache only);
fsyncs run in worker threads (partition.py).  Reads are ``pread`` on the loop.

Only the active segment owns an fd (``fd``, read-write).  A closed segment has
``fd == -1`` and is read through the broker-wide pool of read handles (handles.py),
pinned for the duration of one read.

The segment's ``SegmentIndex`` (index.py) finds the position of an offset and the
offset of a timestamp without reading the log; ``next_offset`` is the offset after
the segment's last batch (for a closed segment: the next segment's base).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Final

from wharf.protocol.records import HEADER, HEADER_BYTES, LENGTH_BYTES, decode_records

from ..store.fsio import pwrite_all
from .handles import SHARED, Handle, SegmentHandles
from .index import INDEX_INTERVAL_BYTES, MAX_RELATIVE, SegmentIndex, index_paths
from .txnindex import AbortedTxn, txn_index_path

LOG_SUFFIX: Final = ".log"
SNAPSHOT_SUFFIX: Final = ".snapshot"


# A fetch answer's reads go into one ReadArena of up to this many bytes.
MAX_ARENA_BYTES: Final = 8 * 1024 * 1024


def segment_name(base_offset: int) -> str:
    return f"{base_offset:020d}{LOG_SUFFIX}"


def _pread(fd: int, size: int, pos: int) -> memoryview:
    return memoryview(os.pread(fd, size, pos))


class ReadArena:
    """Memory the reads for one fetch answer go into, used again for the next answer:
    fresh memory for every read of a megabyte would cost more in page faults than the
    read itself.  Views from ``read`` stay valid only until ``reset()``, so whoever
    resets it must be done with the previous answer (encoded it)."""

    __slots__ = ("_buf", "_used")

    def __init__(self) -> None:
        self._buf = bytearray()
        self._used = 0

    def reset(self, size_hint: int) -> None:
        """Start a new answer of about ``size_hint`` bytes."""
        self._used = 0
        size = min(size_hint, MAX_ARENA_BYTES)
        if len(self._buf) < size:
            # A new buffer (views of the old one may still exist; they keep it alive).
            self._buf = bytearray(size)

    def read(self, fd: int, size: int, pos: int) -> memoryview:
        used = self._used
        if used + size > len(self._buf):
            return _pread(fd, size, pos)
        view = memoryview(self._buf)[used : used + size]
        got = os.preadv(fd, [view], pos)
        self._used = used + got
        return view[:got]


class Segment:
    __slots__ = (
        "base_offset",
        "path",
        "fd",
        "size",
        "next_offset",
        "index",
        "synced_size",
        "new",
        "first_timestamp",
        "first_append_ms",
        "handles",
        "finished",
        "aborts",
    )

    def __init__(
        self,
        path: Path,
        base_offset: int,
        fd: int,
        size: int,
        handles: SegmentHandles = SHARED,
    ) -> None:
        self.base_offset = base_offset
        self.path = path
        self.fd = fd  # the active segment's own fd; -1 once closed (see handles.py)
        self.handles = handles
        self.size = size
        self.next_offset = base_offset
        self.index = SegmentIndex(base_offset)
        self.synced_size = size
        self.new = False  # directory entry not yet fsynced
        self.first_timestamp = -1  # max_timestamp of the first batch (for segment_ms)
        self.first_append_ms = -1  # broker clock at the first append (idle rolls)
        # Closed and its roll job done (log fsynced, index files written); retention
        # and compaction leave it alone until then.  True for the active segment.
        self.finished = True
        # Aborted transactions whose ABORT marker is in this segment (txnindex.py).
        self.aborts: list[AbortedTxn] = []

    def __repr__(self) -> str:
        return f"<Segment {self.base_offset}..{self.next_offset} {self.size} bytes>"

    @property
    def max_timestamp(self) -> int:
        return self.index.max_timestamp

    def fits(self, batch_bytes: int, last_offset: int, segment_bytes: int) -> bool:
        """Whether a batch can still go into this (active) segment."""
        if self.size and self.size + batch_bytes > segment_bytes:
            return False
        return last_offset - self.base_offset <= MAX_RELATIVE and self.size < MAX_RELATIVE

    def append(self, data: bytes, base: int, last: int, max_timestamp: int) -> None:
        """Write one whole batch at the end (raises OSError)."""
        pos = self.size
        pwrite_all(self.fd, data, pos, self.path)  # fsio: also the tests' fault point
        if self.first_timestamp < 0:
            self.first_timestamp = max_timestamp
        self.index.observe(base - self.base_offset, pos, len(data), max_timestamp)
        self.size = pos + len(data)
        self.next_offset = last + 1

    def read_from(
        self, offset: int, max_bytes: int, *, at_least_one: bool, arena: ReadArena | None = None
    ) -> tuple[list[memoryview], bool]:
        """Whole batches holding offsets >= ``offset``, the first one possibly starting
        before it, until ``max_bytes`` would be passed (``at_least_one``: even the
        first); and whether they reach the end of the segment.  With an ``arena`` the
        views are into its memory (valid until its next reset)."""
        _rel, pos = self.index.position_for(offset)
        if pos >= self.size:
            return [], True
        if self.fd >= 0:
            return self._read_from(self.fd, offset, pos, max_bytes, at_least_one, arena)
        h = self.handles.acquire(self, self.path)
        try:
            return self._read_from(h.fd, offset, pos, max_bytes, at_least_one, arena)
        finally:
            self.handles.release(h)

    def _read_from(
        self,
        fd: int,
        offset: int,
        pos: int,
        max_bytes: int,
        at_least_one: bool,
        arena: ReadArena | None,
    ) -> tuple[list[memoryview], bool]:
        end = self.size
        out: list[memoryview] = []
        read = _pread if arena is None else arena.read
        # One read covering the batches to skip (less than an index interval) and the
        # answer; more only when the first batch wanted is bigger than that.
        view = read(fd, min(end - pos, max_bytes + 2 * INDEX_INTERVAL_BYTES), pos)
        used = 0
        i = 0
        n = len(view)
        while True:
            if n - i < HEADER_BYTES:
                if pos + i >= end:
                    return out, True
                if out:
                    return out, False
                # Still skipping: read on from the next batch.
                pos += i
                view = read(fd, min(end - pos, max_bytes + INDEX_INTERVAL_BYTES), pos)
                i = 0
                n = len(view)
                continue
            length = int.from_bytes(view[i : i + 4], "big")
            size = length + LENGTH_BYTES
            base = int.from_bytes(view[i + 4 : i + 12], "big")
            last = base + int.from_bytes(view[i + 12 : i + 16], "big")
            if last < offset:
                i += size
                continue
            if used + size > max_bytes and (out or not at_least_one):
                return out, False
            if i + size > n:
                if out:
                    return out, False
                # The first batch wanted is not wholly in the buffer: read it alone.
                out.append(_pread(fd, size, pos + i))
                return out, pos + i + size >= end
            out.append(view[i : i + size])
            used += size
            i += size

    def first_at_time(self, timestamp: int) -> tuple[int, int] | None:
        """(offset, timestamp) of the first record with a timestamp >= ``timestamp``
        in this segment, or None when it has none (scans from the time index's hint)."""
        if self.index.max_timestamp < timestamp:
            return None
        start = self.index.offset_before_time(timestamp)
        _rel, pos = self.index.position_for(start)
        if self.fd >= 0:
            return self._first_at_time(self.fd, pos, timestamp)
        h = self.handles.acquire(self, self.path)
        try:
            return self._first_at_time(h.fd, pos, timestamp)
        finally:
            self.handles.release(h)

    def _first_at_time(self, fd: int, pos: int, timestamp: int) -> tuple[int, int] | None:
        while pos < self.size:
            head = HEADER.unpack(os.pread(fd, HEADER_BYTES, pos))
            size = head[0] + LENGTH_BYTES
            if head[7] >= timestamp:  # max_timestamp
                for rec in decode_records(os.pread(fd, size, pos)):
                    if rec[1] >= timestamp:
                        return rec[0], rec[1]
            pos += size
        return None

    def pin(self) -> Handle:
        """A pinned read handle of this closed segment (``handles.release`` it)."""
        return self.handles.acquire(self, self.path)

    def seal(self) -> None:
        """The segment is no longer the active one: give up its own fd (reads go
        through the pool from now on)."""
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def replaced(self) -> None:
        """Another file now has this segment's name (compaction): pooled handles of
        the old one must not serve reads of the new."""
        self.handles.discard(self)

    def close(self) -> None:
        self.seal()
        self.handles.discard(self)

    def delete_files(self) -> None:
        """Close and unlink the segment with its index files."""
        self.close()
        for p in (self.path, *index_paths(self.path), txn_index_path(self.path)):
            try:
                os.unlink(p)
            except FileNotFoundError:
                pass
