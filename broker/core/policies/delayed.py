"""Delayed retry: messages held back for a while, as packed index rows.

A delayed message's body is in the message store (written there when it is delayed) and
only a row of fixed-width columns stays in memory, so a million pending delays cost an
index, not a task, timer or object each.  Rows are kept in one FIFO bucket per delay
value; with a fixed delay, arrival order is due order, so only bucket heads are ever
examined.  With jitter a row may wait behind one due slightly later: the error is at
most the jitter spread.  One timer per queue fires for the earliest head.
"""

from __future__ import annotations

from array import array
from collections.abc import Iterator

from ..paging import PagedRow, PagedTail


class _Bucket:
    __slots__ = ("rows", "due", "start")

    def __init__(self) -> None:
        self.rows = PagedTail()
        self.due = array("q")
        self.start = 0


class DelayedMessages:
    __slots__ = ("_buckets", "count")

    def __init__(self) -> None:
        self._buckets: dict[int, _Bucket] = {}
        self.count = 0

    def __len__(self) -> int:
        return self.count

    def add(self, delay_key: int, row: PagedRow, due_ms: int) -> None:
        bucket = self._buckets.get(delay_key)
        if bucket is None:
            bucket = self._buckets[delay_key] = _Bucket()
        bucket.rows.append_row(row)
        bucket.due.append(due_ms)
        self.count += 1

    def next_due(self) -> int | None:
        heads = [b.due[b.start] for b in self._buckets.values() if b.start < len(b.due)]
        return min(heads) if heads else None

    def pop_due(self, now_ms: int) -> list[PagedRow]:
        out: list[PagedRow] = []
        for key, b in list(self._buckets.items()):
            n = 0
            while b.start + n < len(b.due) and b.due[b.start + n] <= now_ms:
                n += 1
            if n:
                out.extend(b.rows.pop_front(n))
                b.start += n
                self.count -= n
            if b.start >= len(b.due):
                del self._buckets[key]
            elif b.start >= 65_536 and b.start * 2 >= len(b.due):
                del b.due[: b.start]
                b.start = 0
        return out

    def tails(self) -> Iterator[tuple[PagedTail, array[int], int]]:
        """The row columns of every bucket (compaction rewrites segment/offset in place),
        with its due times: the row at column index ``i`` is due at ``due[i + shift]``."""
        for b in self._buckets.values():
            yield b.rows, b.due, b.start - b.rows.start

    def drain(self) -> list[PagedRow]:
        rows: list[PagedRow] = []
        for b in self._buckets.values():
            rows.extend(b.rows.pop_front(len(b.rows)))
        self._buckets.clear()
        self.count = 0
        return rows
