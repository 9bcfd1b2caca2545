"""Fetching around the gaps compaction leaves: a batch that lost its last records, and
a gap at the end of the log (the last closed segment ends early, the active one is
empty)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

import wharf
from wharf.broker.server import Broker

from ..helpers import wait_until

# The cleaner and the retention check (which rolls idle segments) run this often here.
INTERVAL_MS = 20
WAIT_S = 15.0
LONG_WAIT_S = 20.0  # never reached: these tests end by data
SEGMENT_BYTES = 1024
PAD = b"." * 100

pytestmark = pytest.mark.parametrize(
    "settings_overrides",
    [{"log_cleaner_interval_ms": INTERVAL_MS, "log_retention_check_interval_ms": INTERVAL_MS}],
)

COMPACTED: dict[str, Any] = {
    "cleanup_policy": "compact",
    "segment_bytes": SEGMENT_BYTES,
    "min_cleanable_dirty_ratio": 0.01,
}


async def first_batch_cleaned(conn: wharf.Connection, topic: str) -> None:
    """Wait until the batch at offset 0 holds only the record at offset 0."""

    async def cleaned() -> bool:
        return [r.offset for r in await conn.fetch(topic, 0, 0, max_bytes=1)] == [0]

    await wait_until(timeout=WAIT_S, check=cleaned, what="the first batch compacted")


async def batch_with_trailing_gap(conn: wharf.Connection, topic: str) -> int:
    """Offsets 0-2 are one batch of which compaction keeps only offset 0; 3 and 4
    hold the later values of its other keys, then unique-key fillers.  Returns the
    high watermark."""
    await conn.create_topic(topic, **COMPACTED)
    await conn.produce_records(
        topic,
        [(b"keep", PAD, None, None), (b"a", PAD, None, None), (b"b", PAD, None, None)],
        partition=0,
    )
    await conn.produce(topic, PAD, key=b"a", partition=0)
    await conn.produce(topic, PAD, key=b"b", partition=0)
    for i in range(20):  # push the batches above out of the active segment
        await conn.produce(topic, PAD, key=b"filler-%d" % i, partition=0)
    await first_batch_cleaned(conn, topic)
    return (await conn.list_offsets(topic, 0))[1]


async def test_fetch_skips_a_batch_without_records_past_the_offset(
    broker: Broker, conn: wharf.Connection
) -> None:
    await batch_with_trailing_gap(conn, "t")
    # The batch holding offsets 0..2 now holds only 0; from offset 1 on the first
    # record is 3, even when the answer is limited to one batch.
    assert [r.offset for r in await conn.fetch("t", 0, 1, max_bytes=1)] == [3]
    page = await conn.fetch_batch("t", 0, 2, max_bytes=1)
    assert [r.offset for r in page.records] == [3]
    assert page.next_offset == 4


async def test_paging_reads_every_record_once(broker: Broker, conn: wharf.Connection) -> None:
    latest = await batch_with_trailing_gap(conn, "t")
    expected = [0, 3, 4, *range(5, latest)]
    # By next_offset, one batch per page.
    offset, got = 0, []
    while offset < latest:
        page = await conn.fetch_batch("t", 0, offset, max_bytes=1)
        assert page.records and page.high_watermark == latest and page.log_start == 0
        got += [r.offset for r in page.records]
        offset = page.next_offset
    assert got == expected
    # By the last record's offset + 1: no empty page before the end.
    offset, got = 0, []
    while offset < latest:
        records = await conn.fetch("t", 0, offset, max_bytes=1)
        assert records
        got += [r.offset for r in records]
        offset = records[-1].offset + 1
    assert got == expected
    end = await conn.fetch_batch("t", 0, latest)
    assert end == wharf.FetchResult([], latest, latest, 0)


async def test_fetch_in_a_gap_at_the_log_end_waits_for_data(
    broker: Broker, conn: wharf.Connection, connect: Any
) -> None:
    await conn.create_topic("t", segment_bytes=SEGMENT_BYTES)
    await conn.produce("t", PAD, key=b"k", partition=0)  # offset 0
    await conn.produce_many("t", [b"x", b"y"], partition=0)  # 1 and 2, without keys
    # The idle active segment rolls; compaction then removes the keyless records: the
    # closed segment ends after offset 0, the active one (base 3) is empty.
    await conn.alter_topic("t", segment_ms=1)

    async def rolled() -> bool:
        return (await conn.describe_topic("t"))["offsets"][0]["segments"] == 2

    await wait_until(timeout=WAIT_S, check=rolled, what="the idle segment rolled")
    await conn.alter_topic("t", cleanup_policy="compact", min_cleanable_dirty_ratio=0.01)

    async def cleaned() -> bool:
        return [r.offset for r in await conn.fetch("t", 0, 0)] == [0]

    await wait_until(timeout=WAIT_S, check=cleaned, what="the keyless records removed")
    assert await conn.list_offsets("t", 0) == (0, 3)

    # Nothing at or after offset 1: no records, and the next offset is the end.
    assert await conn.fetch("t", 0, 1) == []
    assert await conn.fetch_batch("t", 0, 1) == wharf.FetchResult([], 3, 3, 0)
    # A long poll there waits: a later request on the connection is answered first.
    waiting = asyncio.create_task(conn.fetch("t", 0, 1, max_wait=LONG_WAIT_S))
    assert await conn.list_offsets("t", 0) == (0, 3)
    assert not waiting.done()
    other: wharf.Connection = await connect()
    await other.produce("t", b"new", key=b"k", partition=0)
    recs = await asyncio.wait_for(waiting, WAIT_S)
    assert [(r.offset, r.value) for r in recs] == [(3, b"new")]
