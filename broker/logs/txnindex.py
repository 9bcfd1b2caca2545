"""Aborted transactions of a partition: the per-segment ``.txnindex`` files and the
in-memory table read-committed fetches consult.

Each ABORT marker (protocol/records.py, control batches) closes an aborted transaction
of one producer in one partition; its entry is ``(producer_id, first_offset,
last_offset, marker_offset)``: the transaction's batches of that producer lie in
``first_offset..last_offset`` (last = marker - 1), interleaved with other producers'
batches, which are not part of it.  The entry belongs to the segment that holds the
marker.

``<base:020d>.txnindex`` of a closed segment: u32 CRC-32 of the rest, then a msgpack
array of ``[producer_id, first_offset, last_offset, marker_offset]``, written (temp
file, fsync, rename) by the job that finishes the segment after a roll, like its other
index files.  The active segment's entries live in memory: recovery scans the active
segment anyway and reads them from its markers (each marker records its transaction's
first offset), and a closed segment whose file is missing or damaged is scanned the
same way and gets a new one.
"""

from __future__ import annotations

import zlib
from bisect import bisect_right
from pathlib import Path
from typing import Final, NamedTuple

import msgpack

from ..store.fsio import write_atomically

TXN_INDEX_SUFFIX: Final = ".txnindex"


class AbortedTxn(NamedTuple):
    producer_id: int
    first_offset: int
    last_offset: int
    marker_offset: int


def txn_index_path(log_path: Path) -> Path:
    stem = log_path.with_suffix("")
    return stem.with_name(stem.name + TXN_INDEX_SUFFIX)


def encode_txn_index(entries: list[AbortedTxn]) -> bytes:
    body: bytes = msgpack.packb([list(e) for e in entries])
    return zlib.crc32(body).to_bytes(4, "big") + body


def decode_txn_index(data: bytes) -> list[AbortedTxn] | None:
    """The entries of a ``.txnindex`` file's bytes; None when it is damaged."""
    if len(data) < 4 or zlib.crc32(data[4:]) != int.from_bytes(data[:4], "big"):
        return None
    try:
        rows = msgpack.unpackb(data[4:], raw=False)
        return [AbortedTxn(int(a), int(b), int(c), int(d)) for a, b, c, d in rows]
    except (ValueError, TypeError):
        return None


def load_txn_index(log_path: Path) -> list[AbortedTxn] | None:
    try:
        data = txn_index_path(log_path).read_bytes()
    except FileNotFoundError:
        return None
    return decode_txn_index(data)


def write_txn_index(log_path: Path, entries: list[AbortedTxn], *, sync_dir: bool = True) -> Path:
    """Worker thread or start-up: the file, written atomically and fsynced."""
    path = txn_index_path(log_path)
    write_atomically(path, encode_txn_index(entries), sync_dir=sync_dir)
    return path


class AbortedTable:
    """Every aborted transaction of a partition, by producer: answers "is the
    transactional batch of producer P at offset O part of an aborted transaction" with
    one bisect.  Ranges of one producer never overlap (its transactions follow each
    other), so they are kept sorted by first offset."""

    __slots__ = ("_firsts", "_markers", "count", "_low", "_high")

    def __init__(self) -> None:
        self._firsts: dict[int, list[int]] = {}
        self._markers: dict[int, list[int]] = {}
        self.count = 0
        # Every aborted batch known lies in _low.._high - 1 (the lowest first offset, the
        # highest marker offset ever added; retention does not narrow them).
        self._low = -1
        self._high = -1

    def any_between(self, start: int, end: int) -> bool:
        """Whether a batch at an offset in ``start..end - 1`` may be part of an aborted
        transaction (False: a read-committed fetch of that range needs no filtering)."""
        return self.count > 0 and self._high > start and self._low < end

    def add(self, entry: AbortedTxn) -> None:
        if entry.first_offset < 0:
            return  # a marker of a transaction with no batch here: nothing to hide
        firsts = self._firsts.setdefault(entry.producer_id, [])
        markers = self._markers.setdefault(entry.producer_id, [])
        i = bisect_right(firsts, entry.first_offset)
        if i and firsts[i - 1] == entry.first_offset:
            return  # already known (a file and a scan both had it)
        firsts.insert(i, entry.first_offset)
        markers.insert(i, entry.marker_offset)
        self.count += 1
        if self._low < 0 or entry.first_offset < self._low:
            self._low = entry.first_offset
        self._high = max(self._high, entry.marker_offset)

    def copy(self) -> AbortedTable:
        other = AbortedTable()
        other._firsts = {pid: list(v) for pid, v in self._firsts.items()}
        other._markers = {pid: list(v) for pid, v in self._markers.items()}
        other.count = self.count
        other._low = self._low
        other._high = self._high
        return other

    def aborted(self, producer_id: int, offset: int) -> bool:
        firsts = self._firsts.get(producer_id)
        if not firsts:
            return False
        i = bisect_right(firsts, offset) - 1
        return i >= 0 and offset < self._markers[producer_id][i]

    def drop_below(self, offset: int) -> None:
        """Forget transactions whose marker is below ``offset`` (retention)."""
        for pid in list(self._firsts):
            markers = self._markers[pid]
            n = bisect_right(markers, offset - 1)
            if n:
                del markers[:n]
                del self._firsts[pid][:n]
                self.count -= n
                if not markers:
                    del self._markers[pid]
                    del self._firsts[pid]

    def __bool__(self) -> bool:
        return self.count > 0


__all__ = [
    "TXN_INDEX_SUFFIX",
    "AbortedTable",
    "AbortedTxn",
    "decode_txn_index",
    "encode_txn_index",
    "load_txn_index",
    "txn_index_path",
    "write_txn_index",
]
