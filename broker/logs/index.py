"""Sparse offset index and time index of one log segment.

Beside every ``<base>.log`` segment (see segment.py) live two index files, both
plain concatenations of fixed-size big-endian entries::

    <base>.index       u32 relative offset (batch base offset - segment base)
                       u32 byte position of that batch in the .log file
    <base>.timeindex   i64 the largest record timestamp so far in the segment
                       u32 relative offset of the batch that reached it

An offset entry is added for the batch that starts after at least
``INDEX_INTERVAL_BYTES`` of log written since the previous entry (the first batch,
at position 0, needs none).  A time entry is added at the same moments, and only when
the largest timestamp grew; when the segment is closed (rolled) one last time entry
records the segment's largest timestamp, so a closed non-empty segment always has at
least one.  Both are kept in memory as arrays for ``bisect`` and written to disk when
the segment is closed; the active segment is always rebuilt by scanning it at start.

``load_index`` checks the files against the log (sizes, monotonic entries, positions
and offsets inside the segment) and answers None when they are missing or bad; the
caller then rebuilds them from the log with ``scan_log`` / ``rebuild_indexes``.
"""

from __future__ import annotations

import mmap
import os
import struct
import threading
from array import array
from bisect import bisect_right
from collections.abc import Callable
from pathlib import Path
from typing import Final, NamedTuple

from wharf.protocol.records import (
    CONTROL,
    HEADER,
    HEADER_BYTES,
    MARKER_ABORT,
    Marker,
    check_batch,
    read_marker,
)

from ..store.fsio import fsync_dir, write_atomically
from .txnindex import AbortedTxn

OFFSET_ENTRY: Final = struct.Struct(">II")
TIME_ENTRY: Final = struct.Struct(">qI")
INDEX_INTERVAL_BYTES: Final = 4096
INDEX_SUFFIX: Final = ".index"
TIME_INDEX_SUFFIX: Final = ".timeindex"
# Relative offsets and positions are u32: a segment rolls before either overflows.
MAX_RELATIVE: Final = 0xFFFFFFFF


class SegmentIndex:
    """The in-memory offset and time index of one segment."""

    __slots__ = (
        "base_offset",
        "rel_offsets",
        "positions",
        "timestamps",
        "time_offsets",
        "_bytes_since_entry",
        "max_timestamp",
        "offset_of_max",
    )

    def __init__(self, base_offset: int) -> None:
        self.base_offset = base_offset
        self.rel_offsets = array("I")
        self.positions = array("I")
        self.timestamps = array("q")
        self.time_offsets = array("I")
        self._bytes_since_entry = 0
        self.max_timestamp = -1  # largest batch max_timestamp seen; -1 when empty
        self.offset_of_max = 0  # relative offset of the batch that has it

    def observe(self, rel_offset: int, position: int, size: int, max_timestamp: int) -> None:
        """Account for one batch appended (or scanned) at ``position``."""
        if self._bytes_since_entry >= INDEX_INTERVAL_BYTES:
            self.rel_offsets.append(rel_offset)
            self.positions.append(position)
            self._bytes_since_entry = 0
            if max_timestamp > self.max_timestamp:
                self.max_timestamp = max_timestamp
                self.offset_of_max = rel_offset
            self._maybe_time_entry()
        elif max_timestamp > self.max_timestamp:
            self.max_timestamp = max_timestamp
            self.offset_of_max = rel_offset
        self._bytes_since_entry += size

    def _maybe_time_entry(self) -> None:
        ts = self.timestamps
        if self.max_timestamp >= 0 and (not ts or self.max_timestamp > ts[-1]):
            ts.append(self.max_timestamp)
            self.time_offsets.append(self.offset_of_max)

    def finish(self) -> None:
        """The segment is closed: record its largest timestamp in the time index."""
        self._maybe_time_entry()

    def position_for(self, offset: int) -> tuple[int, int]:
        """(relative offset, position) of the last indexed batch at or before ``offset``:
        where a forward scan for ``offset`` starts.  (0, 0) when none is indexed."""
        i = bisect_right(self.rel_offsets, offset - self.base_offset) - 1
        if i < 0:
            return 0, 0
        return self.rel_offsets[i], self.positions[i]

    def offset_before_time(self, timestamp: int) -> int:
        """An absolute offset such that every batch before it has all its records
        older than ``timestamp``: where a forward scan for that time starts."""
        i = bisect_right(self.timestamps, timestamp) - 1
        if i < 0:
            return self.base_offset
        return self.base_offset + self.time_offsets[i]

    def offset_bytes(self) -> bytes:
        rel, pos = self.rel_offsets, self.positions
        pack = OFFSET_ENTRY.pack
        return b"".join([pack(rel[i], pos[i]) for i in range(len(rel))])

    def time_bytes(self) -> bytes:
        ts, rel = self.timestamps, self.time_offsets
        pack = TIME_ENTRY.pack
        return b"".join([pack(ts[i], rel[i]) for i in range(len(ts))])


def index_paths(log_path: Path) -> tuple[Path, Path]:
    stem = log_path.with_suffix("")
    return stem.with_name(stem.name + INDEX_SUFFIX), stem.with_name(stem.name + TIME_INDEX_SUFFIX)


def index_suffixes() -> tuple[str, str]:
    return INDEX_SUFFIX, TIME_INDEX_SUFFIX


def write_index_files(
    log_path: Path,
    offset_data: bytes,
    time_data: bytes,
    on_synced: Callable[[Path, int], None],
    *,
    sync_dir: bool = True,
) -> None:
    """Write both index files (temp file, fsync, rename) and fsync the directory
    (unless ``sync_dir`` is False: the caller does it once for several segments).
    Worker thread or start-up; ``on_synced(path, length)`` follows each fsync.  The
    temp file's name is the writer's own (process and thread), so two writers of the
    same file never share one."""
    for path, data in zip(index_paths(log_path), (offset_data, time_data), strict=True):
        tmp = path.with_name(f"{path.name}.{os.getpid()}-{threading.get_ident()}.tmp")
        write_atomically(path, data, tmp=tmp, sync_dir=False)
        on_synced(path, len(data))
    if sync_dir:
        fsync_dir(log_path.parent)


def load_index(
    log_path: Path, base_offset: int, log_size: int, end_offset: int | None
) -> SegmentIndex | None:
    """The index of a closed segment read from its files, or None when they are
    missing or do not fit the log (``end_offset``: the next segment's base)."""
    off_path, time_path = index_paths(log_path)
    try:
        off_data = off_path.read_bytes()
        time_data = time_path.read_bytes()
    except OSError:
        return None
    if len(off_data) % OFFSET_ENTRY.size or len(time_data) % TIME_ENTRY.size:
        return None
    span = MAX_RELATIVE if end_offset is None else end_offset - base_offset
    idx = SegmentIndex(base_offset)
    last_rel = last_pos = -1
    for rel, pos in OFFSET_ENTRY.iter_unpack(off_data):
        if rel <= last_rel or pos <= last_pos or pos >= log_size or rel >= span:
            return None
        idx.rel_offsets.append(rel)
        idx.positions.append(pos)
        last_rel, last_pos = rel, pos
    last_ts = -1
    last_rel = 0
    for ts, rel in TIME_ENTRY.iter_unpack(time_data):
        if ts <= last_ts or rel < last_rel or rel >= span:
            return None
        idx.timestamps.append(ts)
        idx.time_offsets.append(rel)
        last_ts, last_rel = ts, rel
    if log_size > 0 and not idx.timestamps:
        return None  # never finished: the segment was not closed cleanly
    if log_size == 0 and (idx.timestamps or idx.rel_offsets):
        return None
    if idx.timestamps:
        idx.max_timestamp = idx.timestamps[-1]
        idx.offset_of_max = idx.time_offsets[-1]
    return idx


class ScannedBatch(NamedTuple):
    """Header fields of one batch found by ``scan_log`` (for producer state)."""

    base_offset: int
    last_offset: int
    max_timestamp: int
    producer_id: int
    producer_epoch: int
    base_sequence: int
    attributes: int = 0
    marker: Marker | None = None  # of a control batch


class ScanResult(NamedTuple):
    segment_index: SegmentIndex
    valid_bytes: int  # the log is whole up to here
    next_offset: int  # after the last whole batch; the segment base when empty
    first_timestamp: int  # max_timestamp of the first batch, -1 when empty
    problem: str | None  # why the bytes after valid_bytes are not a whole batch
    producer_batches: list[ScannedBatch]  # idempotent and control batches, in order
    aborts: list[AbortedTxn]  # transactions whose ABORT marker is in the segment


def scan_log(log_path: Path, base_offset: int, end_offset: int | None = None) -> ScanResult:
    """Read every batch of a segment, checking lengths, CRCs and offsets; stops at
    the first bad batch.  Builds the index as appends would have."""
    idx = SegmentIndex(base_offset)
    producers: list[ScannedBatch] = []
    aborts: list[AbortedTxn] = []
    next_offset = base_offset
    first_ts = -1
    with open(log_path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        if size == 0:
            return ScanResult(idx, 0, next_offset, first_ts, None, producers, aborts)
        with (
            mmap.mmap(f.fileno(), size, access=mmap.ACCESS_READ) as mapped,
            memoryview(mapped) as data,
        ):
            pos = 0
            problem: str | None = None
            unpack = HEADER.unpack_from
            while pos < size:
                problem = check_batch(data, pos)
                if problem is not None:
                    break
                h = unpack(data, pos)
                length, base, last_delta, _count, _m, attrs, _f, max_ts, pid, epoch, seq = h[:11]
                last = base + last_delta
                if base < next_offset or (end_offset is not None and last >= end_offset):
                    problem = f"batch offsets {base}..{last} out of order"
                    break
                if last - base_offset > MAX_RELATIVE:
                    problem = f"batch offset {last} too far from the segment base"
                    break
                if first_ts < 0:
                    first_ts = max_ts
                total = length + 4
                idx.observe(base - base_offset, pos, total, max_ts)
                if attrs & CONTROL:
                    marker = read_marker(data[pos : pos + total])
                    producers.append(
                        ScannedBatch(base, last, max_ts, pid, epoch, seq, attrs, marker)
                    )
                    if marker is not None and marker.kind == MARKER_ABORT:
                        aborts.append(AbortedTxn(pid, marker.txn_first_offset, base - 1, base))
                elif pid >= 0:
                    producers.append(ScannedBatch(base, last, max_ts, pid, epoch, seq, attrs))
                next_offset = last + 1
                pos += total
    return ScanResult(idx, pos, next_offset, first_ts, problem, producers, aborts)


def rebuild_indexes(log_path: Path, base_offset: int) -> None:
    """Rebuild both index files of a closed segment from its .log (whose batches must
    all be whole: use after rewriting a segment)."""
    idx = scan_log(log_path, base_offset).segment_index
    idx.finish()
    write_index_files(log_path, idx.offset_bytes(), idx.time_bytes(), lambda _p, _n: None)


__all__ = [
    "HEADER_BYTES",
    "INDEX_INTERVAL_BYTES",
    "ScanResult",
    "ScannedBatch",
    "SegmentIndex",
    "index_paths",
    "index_suffixes",
    "load_index",
    "rebuild_indexes",
    "scan_log",
    "write_index_files",
]
