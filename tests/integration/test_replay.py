"""DLQ replay: move dead-lettered messages back to the queue they died in."""

from __future__ import annotations

from pathlib import Path

import pytest

import wharf
from wharf.broker.config import Settings
from wharf.broker.server import Broker


async def _kill(conn: wharf.Connection, queue: str, n: int) -> None:
    for _ in range(n):
        m = await conn.get(queue)
        assert m is not None
        await m.reject(requeue=False)


async def _setup(conn: wharf.Connection, durable: bool = False) -> None:
    await conn.declare_queue("dlq", durable=durable)
    for name in ("orders", "billing"):
        await conn.declare_queue(
            name,
            durable=durable,
            arguments={"x-dead-letter-exchange": "", "x-dead-letter-routing-key": "dlq"},
        )


async def test_replay_moves_messages_back_where_they_died(conn: wharf.Connection) -> None:
    await _setup(conn)
    await conn.publish_many("", "orders", [b"o1", b"o2"])
    await conn.publish("", "billing", b"b1")
    await _kill(conn, "orders", 2)
    await _kill(conn, "billing", 1)
    assert await conn.replay_dead_letters("dlq") == 3
    assert await conn.get("dlq") is None
    got = []
    for q in ("orders", "orders", "billing"):
        m = await conn.get(q)
        assert m is not None
        got.append((q, m.body, m.headers["x-death"][0]["count"]))
        await m.ack()
    assert got == [("orders", b"o1", 1), ("orders", b"o2", 1), ("billing", b"b1", 1)]


async def test_replay_filters_and_limits(conn: wharf.Connection) -> None:
    await _setup(conn)
    await conn.publish_many("", "orders", [b"a", b"b", b"c"])
    await _kill(conn, "orders", 3)
    assert await conn.replay_dead_letters("dlq", reason="expired") == 0
    assert await conn.replay_dead_letters("dlq", limit=1) == 1
    assert await conn.replay_dead_letters("dlq", target="billing", reason="rejected") == 2
    bodies = []
    while (m := await conn.get("billing")) is not None:
        bodies.append(m.body)
        await m.ack()
    assert bodies == [b"b", b"c"]
    # A replayed message that dies again counts 2; max_deaths=1 leaves it alone.
    await _kill(conn, "orders", 1)
    assert await conn.replay_dead_letters("dlq", max_deaths=1) == 0
    assert await conn.replay_dead_letters("dlq", max_deaths=2) == 1


async def test_replay_to_a_missing_queue_is_not_found(conn: wharf.Connection) -> None:
    await _setup(conn)
    with pytest.raises(wharf.NotFound):
        await conn.replay_dead_letters("dlq", target="nope")
    with pytest.raises(wharf.NotFound):
        await conn.replay_dead_letters("no-such-dlq")


async def test_replayed_persistent_messages_survive_restart(tmp_path: Path) -> None:
    settings = Settings(
        host="127.0.0.1", port=0, http_port=0, amqp_port=0, data_dir=str(tmp_path / "d")
    )
    b = Broker(settings)
    await b.start()
    try:
        async with await wharf.connect(f"wharf://guest:guest@127.0.0.1:{b.port}") as conn:
            await _setup(conn, durable=True)
            await conn.publish("", "orders", b"keep", persistent=True)
            await _kill(conn, "orders", 1)
            assert await conn.replay_dead_letters("dlq") == 1
    finally:
        await b.stop()
    b = Broker(settings)
    await b.start()
    try:
        async with await wharf.connect(f"wharf://guest:guest@127.0.0.1:{b.port}") as conn:
            assert await conn.get("dlq") is None
            m = await conn.get("orders")
            assert m is not None and m.body == b"keep"
    finally:
        await b.stop()
