"""The paged tail of a long queue: a packed index of messages whose bodies are on disk.

Beyond its memory budget a queue stops creating a ``Message`` object per message.
New messages are written to the message store (persistent ones are there anyway;
transient ones are written without fsync and flagged so that recovery ignores them)
and only a row of fixed-width columns is kept here, in ``array`` objects:

    position  i64   queue position (increasing)
    segment   i64   segment number holding the record
    offset    i64   byte offset of the MSGS record in that segment
    index     i32   index of the body inside the record's body list
    count     i32   delivery count
    size      i32   body bytes
    durable   i8    1 if the message is persistent in a durable queue
    expires   i64   epoch ms when the message expires (0 = never)

That is 49 bytes per message and no object for the garbage collector to traverse,
so a backlog of tens of millions fits in memory.  Messages are paged back in, a
chunk at a time, when the in-memory head of the queue runs low.
"""

from __future__ import annotations

from array import array
from typing import Final, NamedTuple

# Consumed rows are dropped from the front of the columns once this many pile up.
_COMPACT_ROWS: Final = 65_536


class PagedRow(NamedTuple):
    position: int
    segment: int
    offset: int
    body_index: int
    delivery_count: int
    size: int
    durable: bool
    expires_at: int = 0


class PagedTail:
    __slots__ = (
        "position",
        "segment",
        "offset",
        "index",
        "count",
        "size",
        "durable",
        "expires",
        "_start",
    )

    def __init__(self) -> None:
        self.position = array("q")
        self.segment = array("q")
        self.offset = array("q")
        self.index = array("i")
        self.count = array("i")
        self.size = array("i")
        self.durable = array("b")
        self.expires = array("q")
        self._start = 0

    def __len__(self) -> int:
        return len(self.position) - self._start

    def __bool__(self) -> bool:
        return len(self.position) > self._start

    @property
    def start(self) -> int:
        """Column index of the first unconsumed row."""
        return self._start

    def append_batch(
        self,
        first_position: int,
        sizes: list[int],
        segment: int,
        offset: int,
        durable: bool,
        expires_at: int = 0,
    ) -> None:
        """Consecutive messages (of these body sizes) stored in one MSGS record."""
        n = len(sizes)
        self.expires.extend([expires_at] * n)
        self.size.extend(sizes)
        self.position.extend(range(first_position, first_position + n))
        self.segment.extend([segment] * n)
        self.offset.extend([offset] * n)
        self.index.extend(range(n))
        self.count.extend([0] * n)
        self.durable.extend([1 if durable else 0] * n)

    def append_row(self, row: PagedRow) -> None:
        self.position.append(row.position)
        self.segment.append(row.segment)
        self.offset.append(row.offset)
        self.index.append(row.body_index)
        self.count.append(row.delivery_count)
        self.size.append(row.size)
        self.durable.append(1 if row.durable else 0)
        self.expires.append(row.expires_at)

    def rows_in_segment(self, segment: int) -> list[int]:
        """Column indexes of the unconsumed rows stored in ``segment``."""
        col = self.segment
        return [i for i in range(self._start, len(col)) if col[i] == segment]

    def peek(self, n: int) -> list[PagedRow]:
        s = self._start
        e = min(len(self.position), s + n)
        return [
            PagedRow(
                self.position[i],
                self.segment[i],
                self.offset[i],
                self.index[i],
                self.count[i],
                self.size[i],
                bool(self.durable[i]),
                self.expires[i],
            )
            for i in range(s, e)
        ]

    def pop_front(self, n: int) -> list[PagedRow]:
        rows = self.peek(n)
        self._start += len(rows)
        if self._start >= _COMPACT_ROWS and self._start * 2 >= len(self.position):
            self._compact()
        if self._start == len(self.position):
            self.clear()
        return rows

    def _columns(self) -> tuple[array[int], ...]:
        return (
            self.position,
            self.segment,
            self.offset,
            self.index,
            self.count,
            self.size,
            self.durable,
            self.expires,
        )

    def _compact(self) -> None:
        s = self._start
        for col in self._columns():
            del col[:s]
        self._start = 0

    def clear(self) -> None:
        for col in self._columns():
            del col[:]
        self._start = 0

    def index_bytes(self) -> int:
        return sum(c.buffer_info()[1] * c.itemsize for c in self._columns())
