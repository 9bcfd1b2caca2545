"""Log topics over TCP: segment rolling, retention by time and bytes, timestamps and
list-offsets by time.  The retention check runs every 50 ms here; tests wait (bounded)
for its effect, since time is the behaviour under test."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import wharf
from wharf.broker.server import Broker
from wharf.protocol import frames as F
from wharf.protocol.errors import OffsetOutOfRange

from ..conftest import make_settings
from ..helpers import wait_until


@pytest.fixture
def settings_overrides() -> dict[str, Any]:
    return {"log_retention_check_interval_ms": 50}


WAIT_S = 5.0
OLD_MS = 1_000_000  # a record timestamp long past any retention


async def offsets(conn: wharf.Connection, topic: str, partition: int = 0) -> dict[str, Any]:
    desc = await conn.describe_topic(topic)
    result: dict[str, Any] = desc["offsets"][partition]
    return result


async def test_segments_roll_at_segment_bytes(conn: wharf.Connection, broker: Broker) -> None:
    await conn.create_topic("t", segment_bytes=1024, retention_ms=-1)
    for i in range(10):
        await conn.produce("t", bytes([i]) * 400)
    info = await offsets(conn, "t")
    assert info["segments"] >= 5
    assert info["latest"] == 10
    assert [r.offset for r in await conn.fetch("t", 0, 0)] == list(range(10))
    part = broker.logs.get("t").partitions[0]  # type: ignore[union-attr]

    async def indexed() -> bool:  # written by a worker thread after the roll
        names = {p.name for p in part.path.iterdir()}
        return {"00000000000000000000.index", "00000000000000000000.timeindex"} <= names

    await wait_until(indexed)


async def test_retention_by_time_deletes_old_segments(conn: wharf.Connection) -> None:
    await conn.create_topic("t", segment_bytes=1024, retention_ms=60_000)
    for i in range(6):
        await conn.produce("t", b"old" * 100, timestamp=OLD_MS + i)
    for _ in range(3):
        await conn.produce("t", b"new" * 100)  # now: kept

    async def expired() -> bool:
        return bool((await offsets(conn, "t"))["earliest"] >= 6)

    await wait_until(expired)
    info = await offsets(conn, "t")
    assert info["latest"] == 9
    assert [r.value for r in await conn.fetch("t", 0, info["earliest"])] == [b"new" * 100] * (
        9 - info["earliest"]
    )
    with pytest.raises(OffsetOutOfRange) as err:
        await conn.fetch("t", 0, 0)
    assert err.value.details == {"earliest": info["earliest"], "latest": 9, "offset": 0}
    assert (await conn.list_offsets("t", 0))[0] == info["earliest"]


async def test_retention_never_deletes_the_active_segment(conn: wharf.Connection) -> None:
    await conn.create_topic("t", retention_ms=1)
    await conn.produce_many("t", [b"a", b"b"], timestamp=OLD_MS)
    await asyncio.sleep(0.2)  # several retention checks
    assert await conn.list_offsets("t", 0) == (0, 2)


async def test_quiet_topic_rolls_on_segment_ms_and_expires(conn: wharf.Connection) -> None:
    await conn.create_topic("quiet", segment_ms=100, retention_ms=1000)
    await conn.produce_many("quiet", [b"a", b"b", b"c"], timestamp=OLD_MS)

    async def gone() -> bool:
        return await conn.list_offsets("quiet", 0) == (3, 3)

    await wait_until(gone)
    assert await conn.fetch("quiet", 0, 3) == []
    assert await conn.produce("quiet", b"d") == (0, 3)


async def test_retention_by_bytes(conn: wharf.Connection) -> None:
    await conn.create_topic("t", segment_bytes=1024, retention_bytes=3000, retention_ms=-1)
    for _ in range(30):
        await conn.produce("t", b"z" * 300)

    async def trimmed() -> bool:
        return bool((await offsets(conn, "t"))["bytes"] < 3000 + 1024)

    await wait_until(trimmed)
    info = await offsets(conn, "t")
    assert info["bytes"] >= 3000
    assert info["earliest"] > 0 and info["latest"] == 30


async def test_retention_can_be_changed_on_a_live_topic(conn: wharf.Connection) -> None:
    await conn.create_topic("t", segment_bytes=1024, retention_ms=-1)
    for i in range(8):
        await conn.produce("t", b"y" * 300, timestamp=OLD_MS + i)
    await asyncio.sleep(0.15)
    assert (await offsets(conn, "t"))["earliest"] == 0
    await conn.alter_topic("t", retention_ms=60_000)

    async def expired() -> bool:
        return bool((await offsets(conn, "t"))["earliest"] > 0)

    await wait_until(expired)


async def test_compact_only_topic_is_not_trimmed_by_retention(conn: wharf.Connection) -> None:
    await conn.create_topic("c", cleanup_policy="compact", segment_bytes=1024, retention_ms=1)
    for i in range(8):
        await conn.produce("c", b"x" * 300, key=b"k%d" % i, timestamp=OLD_MS)
    await asyncio.sleep(0.15)
    assert (await offsets(conn, "c"))["earliest"] == 0


async def test_list_offsets_by_timestamp(
    conn: wharf.Connection, frame_client: Callable[[], Any]
) -> None:
    await conn.create_topic("t", segment_bytes=1024, retention_ms=-1)
    stamps = [5_000, 9_000, 7_000] + [10_000 + 100 * i for i in range(10)]
    for ts in stamps:
        await conn.produce("t", b"w" * 300, timestamp=ts)
    assert (await offsets(conn, "t"))["segments"] > 3
    assert await conn.offset_for_time("t", 0, 0) == 0
    assert await conn.offset_for_time("t", 0, 6_000) == 1  # first record at or after
    assert await conn.offset_for_time("t", 0, 9_001) == 3
    assert await conn.offset_for_time("t", 0, 10_450) == 8
    assert await conn.offset_for_time("t", 0, 99_999) == len(stamps)  # none: latest
    # The raw reply also carries the found record's timestamp.
    reply = await (await frame_client()).result(F.LIST_OFFSETS, "t", 0, 10_450)
    assert reply == {
        "earliest": 0,
        "latest": len(stamps),
        "last_stable": len(stamps),
        "offset": 8,
        "timestamp": 10_500,
    }


async def test_retention_state_survives_restart(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, log_retention_check_interval_ms=50)
    b = Broker(settings)
    await b.start()
    try:
        async with await wharf.connect(f"wharf://guest:guest@127.0.0.1:{b.port}") as conn:
            await conn.create_topic("t", segment_bytes=1024, retention_ms=60_000)
            for i in range(6):
                await conn.produce("t", b"o" * 300, timestamp=OLD_MS + i)
            await conn.produce("t", b"n" * 300)

            async def expired() -> bool:
                return (await conn.list_offsets("t", 0))[0] > 0

            await wait_until(expired)
            start = (await conn.list_offsets("t", 0))[0]
    finally:
        await b.stop()
    b = Broker(settings)
    await b.start()
    try:
        async with await wharf.connect(f"wharf://guest:guest@127.0.0.1:{b.port}") as conn:
            assert await conn.list_offsets("t", 0) == (start, 7)
            assert [r.offset for r in await conn.fetch("t", 0, start)] == list(range(start, 7))
    finally:
        await b.stop()
