"""Fetched records of a stream and its position bookkeeping (no I/O).

A ``RecordBuffer`` holds, per assigned partition, two offsets:

- the *position*: the next offset to hand to the application (what ``commit()``
  commits: everything below it was handed out);
- the *fetch position*: the next offset to ask the broker for.  It runs ahead of the
  position by whatever was fetched and not yet handed out.

Fetched data waits as chunks (one partition's batches from one fetch answer), still
encoded: batches are decoded a piece (``PIECE_RECORDS``) at a time when the
application reaches them, so records dropped by a seek or a rebalance cost nothing and
buffered memory is the wire size.  The piece being handed out is a plain list plus an
index, so handing out one record is a list index and an integer store.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Collection, Sequence
from typing import Final

from wharf.protocol.records import read_header

from .logs import BatchReader, Record

TopicPartition = tuple[str, int]

# Never mutated: the current piece when there is none.
_NO_RECORDS: Final[list[Record]] = []


class Chunk:
    """One partition's batches from one fetch answer, decoded batch by batch:
    ``batches[first:]`` are still encoded and hold the records from ``start`` (the
    fetch position asked for, then the end of the last batch begun) up to ``end``
    (the offset after the last batch)."""

    __slots__ = ("tp", "batches", "first", "start", "end", "nbytes")

    def __init__(
        self, tp: TopicPartition, batches: Sequence[bytes], start: int, end: int, nbytes: int
    ) -> None:
        self.tp = tp
        self.batches = batches
        self.first = 0
        self.start = start
        self.end = end
        self.nbytes = nbytes  # of batches[first:]


class RecordBuffer:
    """Positions, fetch positions and not-yet-handed-out records of a stream."""

    __slots__ = (
        "positions",
        "fetch_positions",
        "chunks",
        "nbytes",
        "cur",
        "idx",
        "cur_tp",
        "cur_end",
        "reader",
        "reader_tp",
    )

    def __init__(self) -> None:
        # Partitions whose position is known (assigned and not waiting for a reset).
        self.positions: dict[TopicPartition, int] = {}
        self.fetch_positions: dict[TopicPartition, int] = {}
        self.chunks: deque[Chunk] = deque()
        self.nbytes = 0  # wire bytes of batches not yet decoded
        # The piece being handed out, decoded: cur[idx] is the next record, of
        # partition cur_tp; once all are handed out the position is cur_end.
        self.cur: list[Record] = _NO_RECORDS
        self.idx = 0
        self.cur_tp: TopicPartition | None = None
        self.cur_end = 0
        # The batch being decoded (if ``reader.left``), of partition reader_tp.
        self.reader = BatchReader()
        self.reader_tp: TopicPartition | None = None

    def undecoded(self) -> bool:
        """Whether fetched batches wait to be decoded."""
        return bool(self.chunks) or self.reader.left > 0

    def __len__(self) -> int:
        """Decoded records not yet handed out (batches still encoded are not counted)."""
        return len(self.cur) - self.idx

    # -- positions -----------------------------------------------------------------

    def position(self, tp: TopicPartition) -> int | None:
        if tp == self.cur_tp:
            return self._current_position()
        return self.positions.get(tp)

    def _current_position(self) -> int:
        idx = self.idx
        if idx >= len(self.cur):
            return self.cur_end
        if idx > 0:
            return self.cur[idx - 1].offset + 1
        assert self.cur_tp is not None
        return self.positions[self.cur_tp]

    def processed(self) -> dict[TopicPartition, int]:
        """Position of every partition with a known one: what a commit commits."""
        out = dict(self.positions)
        if self.cur_tp is not None:
            out[self.cur_tp] = self._current_position()
        return out

    def set_position(self, tp: TopicPartition, offset: int) -> None:
        """Hand out ``tp`` from ``offset`` on (a seek, a reset or a new assignment):
        whatever was buffered for it is dropped."""
        self.drop((tp,))
        self.positions[tp] = offset
        self.fetch_positions[tp] = offset

    def forget(self, tps: Collection[TopicPartition] | None = None) -> None:
        """Drop ``tps`` (None: all partitions) entirely: records and positions."""
        self.drop(tps)
        if tps is None:
            self.positions.clear()
            self.fetch_positions.clear()
        else:
            for tp in tps:
                self.positions.pop(tp, None)
                self.fetch_positions.pop(tp, None)

    def drop(self, tps: Collection[TopicPartition] | None = None) -> None:
        """Drop buffered records of ``tps`` (None: all); they will be fetched again
        from the position (pause, seek, revocation, lost connection)."""
        tp = self.cur_tp
        if tp is not None and (tps is None or tp in tps):
            self._finish_piece()
        tp = self.reader_tp
        if tp is not None and (tps is None or tp in tps):
            self.reader.abandon()
            self.reader_tp = None
        positions = self.positions
        if tps is None:
            self.chunks.clear()
            self.nbytes = 0
            self.fetch_positions = dict(positions)
            return
        if self.chunks:
            kept = deque(c for c in self.chunks if c.tp not in tps)
            self.chunks = kept
            self.nbytes = sum(c.nbytes for c in kept)
        for tp in tps:
            if tp in positions:
                self.fetch_positions[tp] = positions[tp]

    def _finish_piece(self) -> None:
        tp = self.cur_tp
        assert tp is not None
        self.positions[tp] = self._current_position()
        self.cur_tp = None
        self.cur = _NO_RECORDS
        self.idx = 0

    # -- filling (fetch answers) ---------------------------------------------------

    def add(self, tp: TopicPartition, requested: int, batches: Sequence[bytes]) -> bool:
        """Batches fetched for ``tp`` from offset ``requested``.  Kept only when that is
        still where ``tp`` is to be fetched from (a seek, pause or rebalance while the
        fetch was in flight makes the answer stale).  True if kept."""
        if not batches or self.fetch_positions.get(tp) != requested:
            return False
        end = read_header(batches[-1]).next_offset
        if end <= requested:
            return False
        nbytes = 0
        for b in batches:
            nbytes += len(b)
        self.chunks.append(Chunk(tp, batches, requested, end, nbytes))
        self.nbytes += nbytes
        self.fetch_positions[tp] = end
        return True

    # -- handing out ---------------------------------------------------------------

    def activate(self) -> bool:
        """Finish the current piece and decode the next one that has records.  False
        when nothing is buffered."""
        if self.cur_tp is not None:
            self._finish_piece()
        reader = self.reader
        while reader.left or self._next_batch():
            tp = self.reader_tp
            assert tp is not None
            records, end = reader.read()
            if records:
                self.cur_tp = tp
                self.cur = records
                self.cur_end = end
                return True
            self.positions[tp] = end  # records below the position, or a corrupt batch
        return False

    def _next_batch(self) -> bool:
        """Start decoding the next batch holding records; False when none is left."""
        chunks = self.chunks
        reader = self.reader
        while chunks:
            chunk = chunks[0]
            batches = chunk.batches
            i = chunk.first
            batch = batches[i]
            chunk.first = i + 1
            size = len(batch)
            chunk.nbytes -= size
            self.nbytes -= size
            if i + 1 == len(batches):
                chunks.popleft()
            tp = chunk.tp
            end = reader.start(tp[0], tp[1], batch, chunk.start)
            if end > chunk.start:
                chunk.start = end
            if reader.left:
                self.reader_tp = tp
                return True
            # A batch without records for the application (a transaction marker):
            # the position moves past it, as past handed-out records.
            pos = self.positions.get(tp)
            if pos is not None and pos < end and tp != self.cur_tp:
                self.positions[tp] = end
        return False

    def take(self, max_records: int | None) -> list[Record]:
        """Handed out now: up to ``max_records`` records, or with None the decoded
        piece (up to PIECE_RECORDS, as its very list, no copy)."""
        if self.idx >= len(self.cur) and not self.activate():
            return _NO_RECORDS.copy()
        if max_records is None:
            return self._take_piece()
        out: list[Record] = []
        while max_records > 0:
            if self.idx >= len(self.cur) and not self.activate():
                break
            cur = self.cur
            idx = self.idx
            if len(cur) - idx > max_records:
                out += cur[idx : idx + max_records]
                self.idx = idx + max_records
                break
            part = self._take_piece()
            max_records -= len(part)
            if out:
                out += part
            else:
                out = part
        return out

    def _take_piece(self) -> list[Record]:
        """The rest of the current piece; the position settles now, as the caller may
        change the list it gets."""
        cur = self.cur
        idx = self.idx
        part = cur if idx == 0 else cur[idx:]
        self.idx = len(cur)
        self._finish_piece()
        return part
