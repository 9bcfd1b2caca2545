"""Streams over TCP: conn.subscribe(...) with and without a group, commits, resets,
seek, pause/resume, lag, wait_for safety, reconnect, and the group admin calls."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import pytest

import wharf
from wharf.logs import Record

from ..helpers import TcpProxy

WAIT_S = 10.0  # a bound on waits for records that come; returned as soon as they do
END_AFTER_S = 1.0  # a blocking stream's iteration ends after this long without a record
# Small group timeouts so tests take well under a second per rebalance.
FAST: dict[str, Any] = {
    "heartbeat_interval": 0.1,
    "session_timeout": 3.0,
    "rebalance_timeout": 3.0,
    "fetch_max_wait": 0.1,
}


@pytest.fixture
def settings_overrides() -> dict[str, Any]:
    return {"group_initial_rebalance_delay_ms": 50, "group_min_session_timeout_ms": 100}


async def produce(
    conn: wharf.Connection, topic: str, partition: int, n: int, tag: str = ""
) -> None:
    await conn.produce_many(
        topic, [b"%s%d" % (tag.encode(), i) for i in range(n)], partition=partition
    )


async def take(stream: wharf.Stream, n: int, timeout: float = 5.0) -> list[Record]:
    """Exactly ``n`` records (fails on a timeout, or when more are waiting)."""
    out: list[Record] = []
    async with asyncio.timeout(timeout):
        while len(out) < n:
            out += await stream.getmany(max_records=n - len(out))
    return out


async def test_group_reads_every_partition_from_earliest(conn: wharf.Connection) -> None:
    await conn.create_topic("events", partitions=3)
    for p in range(3):
        await conn.produce_many(
            "events", [b"a", b"b"], key=b"k%d" % p, partition=p, headers={"h": p}
        )
    async with conn.subscribe("events", group="g1", auto_offset_reset="earliest", **FAST) as s:
        records = await take(s, 6)
        assert sorted((r.partition, r.offset) for r in records) == [
            (p, o) for p in range(3) for o in range(2)
        ]
        rec = next(r for r in records if r.partition == 1 and r.offset == 1)
        assert (rec.topic, rec.key, rec.value, rec.headers) == ("events", b"k1", b"b", {"h": 1})
        assert rec.timestamp > 1_600_000_000_000
        assert sorted(s.assignment()) == [("events", 0), ("events", 1), ("events", 2)]
        assert s.generation >= 1 and s.member_id


async def test_commit_then_a_new_stream_resumes_after_it(conn: wharf.Connection) -> None:
    await conn.create_topic("t")
    await produce(conn, "t", 0, 20)
    opts = dict(group="g", auto_offset_reset="earliest", enable_auto_commit=False, **FAST)
    async with conn.subscribe("t", **opts) as s:
        first = await take(s, 8)
        assert [r.offset for r in first] == list(range(8))
        assert s.position(("t", 0)) == 8
        await s.commit()
        assert await s.committed(("t", 0)) == 8
        await take(s, 4)  # handed out but never committed: read again below
    assert await conn.committed_offsets("g") == {("t", 0): 8}
    async with conn.subscribe("t", **opts) as s:
        again = await take(s, 12)
        assert [r.offset for r in again] == list(range(8, 20))
        await s.commit({("t", 0): 15})
    assert await conn.committed_offsets("g", ["t"]) == {("t", 0): 15}


async def test_auto_commit_on_interval_and_on_close(conn: wharf.Connection) -> None:
    await conn.create_topic("t")
    await produce(conn, "t", 0, 10)
    async with conn.subscribe(
        "t", group="g", auto_offset_reset="earliest", auto_commit_interval=0.05, **FAST
    ) as s:
        await take(s, 4)
        async with asyncio.timeout(5):
            while (await conn.committed_offsets("g")).get(("t", 0)) != 4:  # noqa: ASYNC110
                await asyncio.sleep(0.02)
        await take(s, 3)
    # Leaving the block commits what was handed out.
    assert await conn.committed_offsets("g") == {("t", 0): 7}


async def test_latest_by_default_skips_records_already_there(conn: wharf.Connection) -> None:
    await conn.create_topic("t", partitions=2)
    await produce(conn, "t", 0, 5, "old")
    await produce(conn, "t", 1, 5, "old")
    ready = asyncio.Event()
    async with conn.subscribe("t", group="g", on_assign=lambda tps: ready.set(), **FAST) as s:
        await asyncio.wait_for(ready.wait(), 5)  # positions are set before on_assign
        assert (s.position(("t", 0)), s.position(("t", 1))) == (5, 5)
        await produce(conn, "t", 1, 2, "new")
        records = await take(s, 2)
        assert [(r.partition, r.offset, r.value) for r in records] == [
            (1, 5, b"new0"),
            (1, 6, b"new1"),
        ]


async def test_manual_assignment_without_group(conn: wharf.Connection) -> None:
    await conn.create_topic("t", partitions=3)
    for p in range(3):
        await produce(conn, "t", p, 3)
    async with conn.subscribe("t", auto_offset_reset="earliest", fetch_max_wait=0.1) as s:
        assert s.assignment() == [("t", 0), ("t", 1), ("t", 2)]
        assert len(await take(s, 9)) == 9
        with pytest.raises(wharf.InvalidArgument):
            await s.commit()
    async with conn.subscribe("t", partitions=[("t", 1)], auto_offset_reset="earliest") as s:
        records = await take(s, 3)
        assert {r.partition for r in records} == {1}
        assert s.position(("t", 1)) == 3
        with pytest.raises(wharf.InvalidArgument):
            s.position(("t", 0))
    # Manual assignment with a group: positions start at the group's commits.
    await conn.reset_offsets("solo", "t", 2, partitions=[0])
    async with conn.subscribe("t", group="solo", partitions=[("t", 0)], **FAST) as s:
        assert [r.offset for r in await take(s, 1)] == [2]
        await s.commit()
    assert await conn.committed_offsets("solo") == {("t", 0): 3}


async def test_pause_and_resume(conn: wharf.Connection) -> None:
    await conn.create_topic("t", partitions=2)
    async with conn.subscribe("t", auto_offset_reset="earliest", fetch_max_wait=0.1) as s:
        s.pause(("t", 0))
        assert s.paused() == {("t", 0)}
        await produce(conn, "t", 0, 3)
        await produce(conn, "t", 1, 3)
        records = await take(s, 3)
        assert {r.partition for r in records} == {1}
        assert await s.getmany(timeout=0.3) == []  # partition 0 stays paused
        s.resume(("t", 0))
        assert [(r.partition, r.offset) for r in await take(s, 3)] == [(0, 0), (0, 1), (0, 2)]


async def test_pause_drops_records_already_buffered(conn: wharf.Connection) -> None:
    await conn.create_topic("t")
    await produce(conn, "t", 0, 10)
    tp = ("t", 0)
    async with conn.subscribe("t", auto_offset_reset="earliest", fetch_max_wait=0.1) as s:
        assert [r.offset for r in await take(s, 2)] == [0, 1]
        s.pause(tp)
        assert await s.getmany(timeout=0.2) == []
        assert s.position(tp) == 2
        s.resume(tp)
        assert [r.offset for r in await take(s, 8)] == list(range(2, 10))


async def test_seek_variants(conn: wharf.Connection) -> None:
    await conn.create_topic("t")
    tp = ("t", 0)
    await conn.produce_many("t", [b"a", b"b", b"c"], partition=0, timestamp=1_000)
    await conn.produce_many("t", [b"d", b"e"], partition=0, timestamp=2_000)
    async with conn.subscribe("t", auto_offset_reset="earliest", fetch_max_wait=0.1) as s:
        await take(s, 2)
        s.seek(tp, 4)
        assert s.position(tp) == 4
        assert [r.value for r in await take(s, 1)] == [b"e"]
        await s.seek_to_beginning()
        assert s.position(tp) == 0
        assert [r.value for r in await take(s, 5)] == [b"a", b"b", b"c", b"d", b"e"]
        await s.seek_to_timestamp(tp, 1_500)
        assert s.position(tp) == 3
        assert [r.value for r in await take(s, 2)] == [b"d", b"e"]
        await s.seek_to_timestamp([tp], 9_999)
        assert s.position(tp) == 5
        s.seek(tp, 1)
        await s.seek_to_end(tp)
        await produce(conn, "t", 0, 1, "new")
        assert [(r.offset, r.value) for r in await take(s, 1)] == [(5, b"new0")]


async def test_out_of_range_position_is_reset(conn: wharf.Connection) -> None:
    await conn.create_topic("t")
    await produce(conn, "t", 0, 3)
    tp = ("t", 0)
    async with conn.subscribe("t", auto_offset_reset="earliest", fetch_max_wait=0.1) as s:
        s.seek(tp, 100)
        assert [r.offset for r in await take(s, 3)] == [0, 1, 2]
    async with conn.subscribe("t", auto_offset_reset="none", partitions=[tp]) as s:
        with pytest.raises(wharf.OffsetOutOfRange):
            await s.getmany(timeout=2)
        s.seek(tp, 1)
        assert [r.offset for r in await take(s, 2)] == [1, 2]
        s.seek(tp, 50)
        with pytest.raises(wharf.OffsetOutOfRange):
            await asyncio.wait_for(anext(s), 2)


async def test_wait_for_timeouts_lose_nothing(conn: wharf.Connection) -> None:
    await conn.create_topic("t", partitions=2)
    async with conn.subscribe("t", auto_offset_reset="earliest", fetch_max_wait=0.05) as s:
        for _ in range(3):
            with pytest.raises(TimeoutError):
                await asyncio.wait_for(anext(s), 0.05)

        async def producer() -> None:
            for i in range(20):
                await produce(conn, "t", i % 2, 5, f"{i}-")
                await asyncio.sleep(0.005)

        task = asyncio.create_task(producer())
        seen: list[tuple[int, int]] = []
        async with asyncio.timeout(10):
            while len(seen) < 100:
                try:
                    rec = await asyncio.wait_for(anext(s), 0.002)
                except TimeoutError:
                    continue
                seen.append((rec.partition, rec.offset))
        await task
        assert sorted(seen) == [(p, o) for p in range(2) for o in range(50)]
        assert len(set(seen)) == 100


async def test_async_for_and_getmany_share_positions(conn: wharf.Connection) -> None:
    await conn.create_topic("t")
    await produce(conn, "t", 0, 6)
    async with conn.subscribe("t", auto_offset_reset="earliest", fetch_max_wait=0.1) as s:
        got = []
        async for rec in s:
            got.append(rec.offset)
            if len(got) == 2:
                break
        got += [r.offset for r in await take(s, 4)]
        assert got == list(range(6))


async def test_lag_and_high_watermark(conn: wharf.Connection) -> None:
    await conn.create_topic("t")
    await produce(conn, "t", 0, 10)
    tp = ("t", 0)
    async with conn.subscribe("t", auto_offset_reset="earliest", fetch_max_wait=0.1) as s:
        await take(s, 4)
        assert s.highwater(tp) == 10
        assert s.lag() == {tp: 6}
        await take(s, 6)
        assert s.lag() == {tp: 0}


async def test_group_admin(conn: wharf.Connection) -> None:
    await conn.create_topic("t", partitions=2)
    await produce(conn, "t", 0, 5)
    await produce(conn, "t", 1, 5)
    async with conn.subscribe("t", group="adm", auto_offset_reset="earliest", **FAST) as s:
        await take(s, 10)
        await s.commit()
        groups = {g["group"]: g for g in await conn.list_groups()}
        assert groups["adm"]["members"] == 1
        info = await conn.describe_group("adm")
        assert [m["member_id"] for m in info["members"]] == [s.member_id]
        with pytest.raises(wharf.PreconditionFailed):
            await conn.delete_group("adm")
        with pytest.raises(wharf.PreconditionFailed):
            await conn.reset_offsets("adm", "t", "earliest")
    await produce(conn, "t", 0, 2)
    info = await conn.describe_group("adm")
    lag = {(o["topic"], o["partition"]): o["lag"] for o in info["offsets"]}
    assert lag == {("t", 0): 2, ("t", 1): 0}
    assert await conn.reset_offsets("adm", "t", "earliest") == {("t", 0): 0, ("t", 1): 0}
    assert await conn.reset_offsets("adm", "t", "latest", partitions=[0]) == {("t", 0): 7}
    assert await conn.reset_offsets("adm", "t", 3, partitions=[1]) == {("t", 1): 3}
    assert await conn.committed_offsets("adm") == {("t", 0): 7, ("t", 1): 3}
    await conn.delete_group("adm")
    assert await conn.committed_offsets("adm") == {}
    with pytest.raises(wharf.NotFound):
        await conn.describe_group("adm")


async def test_bad_arguments(conn: wharf.Connection) -> None:
    for kwargs in (
        {"auto_offset_reset": "middle"},
        {"strategy": "random"},
        {"instance_id": "x"},  # static membership needs a group
        {"group": "g", "heartbeat_interval": 5.0, "session_timeout": 1.0},
        {"partitions": [("other", 0)]},
        {"fetch_max_bytes": 0},
    ):
        with pytest.raises(wharf.InvalidArgument):
            conn.subscribe("t", **kwargs)
    await conn.create_topic("t")
    async with conn.subscribe("t", fetch_max_wait=0.1) as s:
        with pytest.raises(wharf.InvalidArgument):
            s.seek(("t", 9), 0)
        with pytest.raises(wharf.InvalidArgument):
            await s.getmany(max_records=0)
    with pytest.raises(wharf.NotFound):
        async with conn.subscribe("missing"):
            pass


async def test_stream_resumes_after_reconnect(
    conn: wharf.Connection, connect: Callable[..., Any], proxy: TcpProxy
) -> None:
    await conn.create_topic("t")
    await produce(conn, "t", 0, 5)
    rc = await connect(url=proxy.url(), reconnect=True, reconnect_max_delay=0.1)
    events: list[str] = []
    rc.on_event(lambda event: events.append(event.name))
    async with rc.subscribe("t", auto_offset_reset="earliest", fetch_max_wait=0.1) as s:
        assert [r.offset for r in await take(s, 3)] == [0, 1, 2]
        proxy.cut()  # the network drops the connection
        await produce(conn, "t", 0, 5)
        assert [r.offset for r in await take(s, 7)] == list(range(3, 10))
    assert "reconnected" in events


async def test_group_stream_rejoins_after_reconnect(
    conn: wharf.Connection, connect: Callable[..., Any], proxy: TcpProxy
) -> None:
    await conn.create_topic("t")
    await produce(conn, "t", 0, 5)
    rc = await connect(url=proxy.url(), reconnect=True, reconnect_max_delay=0.1)
    async with rc.subscribe("t", group="g", auto_offset_reset="earliest", **FAST) as s:
        assert [r.offset for r in await take(s, 5)] == list(range(5))
        await s.commit()
        before = s.generation
        proxy.cut()
        await produce(conn, "t", 0, 3)
        assert [r.offset for r in await take(s, 3)] == [5, 6, 7]
        assert s.generation > before


async def test_closed_connection_ends_the_stream(connect: Callable[..., Any]) -> None:
    c = await connect()
    await c.create_topic("t")
    async with c.subscribe("t", fetch_max_wait=0.1) as s:
        await c.close()
        with pytest.raises(wharf.ConnectionLost):
            await s.getmany(timeout=2)


async def test_blocking_client_stream(conn: wharf.Connection, url: str) -> None:
    await conn.create_topic("t")
    await produce(conn, "t", 0, 5)

    def read() -> tuple[list[int], list[int], dict[tuple[str, int], int]]:
        with wharf.sync.connect(url) as sc:
            opts = dict(group="sg", auto_offset_reset="earliest", **FAST)
            with sc.subscribe("t", timeout=END_AFTER_S, **opts) as records:
                # The join and the first fetch may take longer than END_AFTER_S on a
                # loaded machine: the records are waited for, then the iteration's end.
                got: list[int] = []
                deadline = time.monotonic() + WAIT_S
                while len(got) < 5 and time.monotonic() < deadline:
                    got += [r.offset for r in records.getmany(timeout=WAIT_S)]
                assert [r.offset for r in records] == []  # ends after 1 s without a record
                assert records.assignment() == [("t", 0)]
                assert records.lag() == {("t", 0): 0}
                records.seek(("t", 0), 3)
                again = [r.offset for r in records.getmany(timeout=WAIT_S)]
            return got, again, sc.committed_offsets("sg")

    got, again, committed = await asyncio.to_thread(read)
    assert got == [0, 1, 2, 3, 4]
    assert again == [3, 4]
    assert committed == {("t", 0): 5}


async def test_tiny_fetch_limits_still_make_progress(conn: wharf.Connection) -> None:
    await conn.create_topic("t")
    for i in range(3):
        await produce(conn, "t", 0, 4, f"{i}-")  # three batches
    async with conn.subscribe(
        "t",
        auto_offset_reset="earliest",
        fetch_max_bytes=1,
        max_partition_fetch_bytes=1,
        fetch_max_wait=0.1,
    ) as s:
        assert [r.offset for r in await take(s, 12)] == list(range(12))
