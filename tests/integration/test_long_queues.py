"""Long queues: beyond the memory budget, bodies stay on disk behind a packed index."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

import wharf
from wharf.broker.config import Settings
from wharf.broker.server import Broker

BUDGET = 20_000  # bytes: a few dozen messages stay in memory, the rest are paged


async def _drain(conn: wharf.Connection, queue: str, n: int, prefetch: int = 300) -> list[bytes]:
    out: list[bytes] = []
    async with conn.consume(queue, prefetch=prefetch) as messages:
        async for msg in messages:
            out.append(msg.body)
            await msg.ack()
            if len(out) == n:
                break
    return out


async def _start(tmp_path: Path, **overrides: Any) -> Broker:
    settings = Settings(
        host="127.0.0.1",
        port=0,
        http_port=0,
        amqp_port=0,
        data_dir=str(tmp_path / "data"),
        queue_memory_budget_bytes=BUDGET,
        **overrides,
    )
    b = Broker(settings)
    await b.start()
    return b


def _url(b: Broker) -> str:
    return f"wharf://guest:guest@127.0.0.1:{b.port}"


async def test_paged_queue_delivers_everything_in_order(tmp_path: Path) -> None:
    b = await _start(tmp_path)
    try:
        async with await wharf.connect(_url(b)) as conn:
            await conn.declare_queue("long")
            bodies = [b"m%05d" % i + b"x" * 100 for i in range(5000)]
            for i in range(0, len(bodies), 250):
                await conn.publish_many("", "long", bodies[i : i + 250])
            q = b.queues["long"]
            assert q.ready_count == 5000
            assert q.paged_count > 4000  # only the head is in memory
            got = await _drain(conn, "long", 5000)
            assert got == bodies
            assert q.ready_count == 0
    finally:
        await b.stop()


async def test_requeue_and_purge_with_a_paged_tail(tmp_path: Path) -> None:
    b = await _start(tmp_path)
    try:
        async with await wharf.connect(_url(b)) as conn:
            await conn.declare_queue("long")
            bodies = [b"%04d" % i + b"y" * 200 for i in range(1000)]
            await conn.publish_many("", "long", bodies)
            first = await conn.get("long")
            assert first is not None and first.body == bodies[0]
            await first.nack(requeue=True)
            again = await conn.get("long")
            assert again is not None and again.body == bodies[0] and again.redelivered
            await again.ack()
            peeked = b.queues["long"].peek(3)
            assert [m.body for m in peeked] == bodies[1:4]
            assert await conn.purge_queue("long") == 999
            assert await conn.get("long") is None
    finally:
        await b.stop()


async def test_paged_persistent_messages_survive_restart(tmp_path: Path) -> None:
    b = await _start(tmp_path)
    bodies = [b"p%05d" % i + b"z" * 150 for i in range(3000)]
    try:
        async with await wharf.connect(_url(b)) as conn:
            await conn.declare_queue("dlong", durable=True)
            for i in range(0, len(bodies), 500):
                await conn.publish_many("", "dlong", bodies[i : i + 500], persistent=True)
            await conn.publish_many("", "dlong", [b"transient"] * 50)
            assert b.queues["dlong"].paged_count > 2000
            # Take and ack the first ten, leave two delivered but unacked.
            for _ in range(10):
                m = await conn.get("dlong")
                assert m is not None
                await m.ack()
            held = [await conn.get("dlong"), await conn.get("dlong")]
            assert all(h is not None for h in held)
    finally:
        await b.stop()
    b = await _start(tmp_path)
    try:
        q = b.queues["dlong"]
        assert q.ready_count == len(bodies) - 10
        assert q.paged_count > 0
        async with await wharf.connect(_url(b)) as conn:
            first = await conn.get("dlong")
            assert first is not None and first.body == bodies[10] and first.redelivered
            await first.nack(requeue=True)
            got = await _drain(conn, "dlong", len(bodies) - 10)
            assert got == bodies[10:]
            assert await asyncio.wait_for(conn.get("dlong"), 5) is None
    finally:
        await b.stop()


@pytest.mark.parametrize("settings_overrides", [{"queue_memory_budget_bytes": BUDGET}])
async def test_paged_index_is_compact(broker: Broker, conn: wharf.Connection) -> None:
    await conn.declare_queue("compact")
    for _ in range(20):
        await conn.publish_many("", "compact", [b"k" * 100] * 500)
    q = broker.queues["compact"]
    assert q.paged_count >= 9_000
    # The size of the paged index per message: tests/unit/test_paging.py.
