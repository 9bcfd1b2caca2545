"""Priority queues, consumer priorities and single active consumer over TCP."""

from __future__ import annotations

import asyncio

import wharf


async def test_higher_priority_first_fifo_within(conn: wharf.Connection) -> None:
    await conn.declare_queue("prio", arguments={"x-max-priority": 10})
    await conn.publish("", "prio", b"none")  # no priority = 0
    await conn.publish_many("", "prio", [b"p3-a", b"p3-b"], priority=3)
    await conn.publish("", "prio", b"p9", priority=9)
    await conn.publish("", "prio", b"p200", priority=200)  # above max = max
    got = []
    for _ in range(5):
        m = await conn.get("prio")
        assert m is not None
        got.append(m.body)
        await m.ack()
    assert got == [b"p200", b"p9", b"p3-a", b"p3-b", b"none"]  # 200 is clamped to 10


async def test_consumer_priority_gets_messages_first(connect: object) -> None:
    c = await connect()  # type: ignore[operator]
    await c.declare_queue("cprio")
    async with (
        c.consume("cprio", prefetch=2, arguments={"x-priority": 1}) as low,
        c.consume("cprio", prefetch=2, arguments={"x-priority": 10}) as high,
    ):
        await c.publish_many("", "cprio", [b"1", b"2", b"3"])
        h1 = await asyncio.wait_for(high.__anext__(), 5)
        h2 = await asyncio.wait_for(high.__anext__(), 5)
        l1 = await asyncio.wait_for(low.__anext__(), 5)  # high is out of credit
        assert [h1.body, h2.body, l1.body] == [b"1", b"2", b"3"]
        for m in (h1, h2, l1):
            await m.ack()


async def test_single_active_consumer(connect: object) -> None:
    c1 = await connect()  # type: ignore[operator]
    c2 = await connect()  # type: ignore[operator]
    await c1.declare_queue("sac", arguments={"x-single-active-consumer": True})
    first = c1.consume("sac", prefetch=10)
    await first.__aenter__()
    async with c2.consume("sac", prefetch=10) as second:
        await c1.publish_many("", "sac", [b"a", b"b"])
        a = await asyncio.wait_for(first.__anext__(), 5)
        b = await asyncio.wait_for(first.__anext__(), 5)
        assert (a.body, b.body) == (b"a", b"b")
        await a.ack()
        await b.ack()
        await first.cancel()  # the second consumer takes over
        await c1.publish("", "sac", b"c")
        c = await asyncio.wait_for(second.__anext__(), 5)
        assert c.body == b"c"
        await c.ack()
