"""The paged tail's index (broker/core/paging.py): fixed-width columns, no object per
message."""

from __future__ import annotations

from typing import Final

from wharf.broker.core.paging import PagedTail

# position, segment, offset (i64); index, count, size (i32); durable (i8); expires (i64)
ROW_BYTES: Final = 45
BATCHES: Final = 20
BATCH: Final = 500


def test_paged_index_is_compact() -> None:
    tail = PagedTail()
    for b in range(BATCHES):
        tail.append_batch(b * BATCH, [100] * BATCH, segment=b // 4, offset=b * 64, durable=True)
    rows = BATCHES * BATCH
    assert len(tail) == rows
    # The row width (array lengths, not capacity), well under two rows per message.
    assert rows * ROW_BYTES <= tail.index_bytes() < rows * ROW_BYTES * 2
    first = tail.peek(1)[0]
    assert (first.position, first.segment, first.offset, first.body_index) == (0, 0, 0, 0)
    assert (first.size, first.durable, first.delivery_count) == (100, True, 0)
