"""Broker limits over TCP: connections, consumers per connection, message size, prefetch.

A limit that is reached gets a clear error with its code; the connection that hit it
(when it survives) and every other connection keep working.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable
from typing import Any

import pytest

import wharf
from wharf.broker.server import Broker
from wharf.protocol import frames as F

from ..helpers import wait_until

Connect = Callable[..., Any]
RawFactory = Callable[..., Any]

TIMEOUT_S = 5.0


def _qname(prefix: str = "q") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


async def assert_broker_healthy(connect: Connect) -> None:
    c: wharf.Connection = await connect()
    q = _qname("healthy")
    await c.declare_queue(q)
    await c.publish("", q, b"still-serving")
    msg = await c.get(q, no_ack=True)
    assert msg is not None and msg.body == b"still-serving"
    await c.delete_queue(q)
    await c.close()


async def recv_type(rc: Any, ftype: int) -> Any:
    while True:
        frame = await rc.recv(TIMEOUT_S)
        if frame[0] == F.HEARTBEAT:
            continue
        assert frame[0] == ftype, frame
        return frame


# -- max_connections -------------------------------------------------------------------


@pytest.mark.parametrize("settings_overrides", [{"max_connections": 2}])
async def test_connection_over_max_connections_gets_506(
    broker: Broker, url: str, connect: Connect
) -> None:
    first = await connect()
    second = await connect()
    assert len(broker.connections) == 2
    with pytest.raises(wharf.ResourceError) as info:
        await wharf.connect(url)
    assert info.value.code == 506
    assert "connection limit" in info.value.message
    assert len(broker.connections) == 2
    # The connections that got in are unaffected.
    q = _qname()
    await first.declare_queue(q)
    await second.publish("", q, b"x")
    assert (await first.get(q, no_ack=True)) is not None
    # A slot that frees up can be used again.
    await first.close()
    await wait_until(lambda: len(broker.connections) == 1)
    third = await connect()
    assert (await third.declare_queue(q)).name == q


@pytest.mark.parametrize("settings_overrides", [{"max_connections": 1}])
async def test_refused_connection_gets_fatal_506_instead_of_hello(
    raw_client: RawFactory, conn: wharf.Connection
) -> None:
    rc = await raw_client(handshake=False)
    rc.send_bytes(F.HANDSHAKE)
    frames = await rc.recv_until_closed(TIMEOUT_S)
    assert len(frames) == 1, frames
    assert frames[0][:3] == [F.ERROR, 0, 506] and frames[0][4] is True, frames
    assert not conn.is_closed
    await conn.declare_queue(_qname())


# -- max_consumers_per_connection ----------------------------------------------------------


@pytest.mark.parametrize("settings_overrides", [{"max_consumers_per_connection": 2}])
async def test_consumer_over_the_per_connection_limit_gets_506(
    conn: wharf.Connection, connect: Connect
) -> None:
    q = _qname()
    await conn.declare_queue(q)
    first = await conn.consume(q, prefetch=10)
    second = await conn.consume(q, prefetch=10)
    with pytest.raises(wharf.ResourceError) as info:
        await conn.consume(q)
    assert info.value.code == 506
    assert not conn.is_closed
    # The connection and its existing consumers keep working.
    await conn.publish_many("", q, [b"a", b"b"])
    async with asyncio.timeout(TIMEOUT_S):
        got = [await anext(first), await anext(second)]
    assert sorted(m.body for m in got) == [b"a", b"b"]
    for m in got:
        await m.ack()
    # The limit is per connection: another connection may still consume.
    other = await connect()
    async with other.consume(q):
        pass
    # A cancelled consumer frees its slot.
    await second.cancel()
    third = await conn.consume(q)
    await third.cancel()
    await first.cancel()


# -- max_message_bytes ---------------------------------------------------------------------


@pytest.mark.parametrize("settings_overrides", [{"max_message_bytes": 1024}])
async def test_message_over_max_message_bytes_is_nacked_with_311(
    broker: Broker, raw_client: RawFactory, connect: Connect
) -> None:
    q = _qname()
    rc = await raw_client()
    rc.send(F.QueueDeclare(1, q))
    await recv_type(rc, F.OK)
    rc.send(F.Publish(1, "", q, None, b"x" * 1025))
    rc.send(F.Publish(2, "", q, None, b"y" * 1024))
    nack = await recv_type(rc, F.PUBLISH_NACK)
    assert nack[1:4] == [0, 1, 311], nack
    assert "max_message_bytes" in nack[4]
    confirm = await recv_type(rc, F.CONFIRM)
    assert confirm[2] == 2, confirm

    # A PUBLISH_MANY with one body over the limit fails as a whole: one nack per seq.
    rc.send(F.PublishMany(3, "", q, None, [b"ok", b"z" * 2000, b"ok"]))
    nacks = [await recv_type(rc, F.PUBLISH_NACK) for _ in range(3)]
    assert [n[2] for n in nacks] == [3, 4, 5]
    assert {n[3] for n in nacks} == {311}

    # Fire-and-forget (seq 0): a request-level ERROR with request id 0.
    rc.send(F.Publish(0, "", q, None, b"w" * 4096))
    error = await recv_type(rc, F.ERROR)
    assert error[1:3] == [0, 311] and error[4] is False, error

    rc.send(F.QueueDeclare(9, q))
    ok = await recv_type(rc, F.OK)
    assert ok[2]["messages"] == 1, ok
    assert broker.queues[q].ready_count == 1
    await assert_broker_healthy(connect)


@pytest.mark.parametrize("settings_overrides", [{"max_message_bytes": 1024}])
async def test_sdk_learns_max_message_bytes_and_refuses_before_sending(
    broker: Broker, conn: wharf.Connection
) -> None:
    assert conn.max_message_bytes == 1024
    q = _qname()
    await conn.declare_queue(q)
    with pytest.raises(wharf.ContentTooLarge) as info:
        await conn.publish("", q, b"x" * 1025)
    assert info.value.code == 311
    await conn.publish("", q, b"x" * 1024)
    assert broker.queues[q].ready_count == 1


# -- prefetch --------------------------------------------------------------------------


@pytest.mark.parametrize("prefetch", [-1, 1_000_001])
async def test_prefetch_out_of_range_gets_400(conn: wharf.Connection, prefetch: int) -> None:
    q = _qname()
    await conn.declare_queue(q)
    with pytest.raises(wharf.InvalidArgument) as info:
        await conn.consume(q, prefetch=prefetch)
    assert info.value.code == 400
    assert info.value.details.get("argument") == "prefetch"
    assert not conn.is_closed
    # The bounds themselves are fine.
    for ok in (0, 1_000_000):
        consumer = await conn.consume(q, prefetch=ok)
        await consumer.cancel()


async def test_prefetch_caps_unacked_deliveries(
    broker: Broker, raw_client: RawFactory, conn: wharf.Connection
) -> None:
    q = _qname()
    await conn.declare_queue(q)
    await conn.publish_many("", q, [b"1", b"2", b"3", b"4", b"5"])
    rc = await raw_client()
    rc.send(F.Consume(3, q, "capped", 2))
    await recv_type(rc, F.OK)
    deliver = await recv_type(rc, F.DELIVER)
    assert [e[6] for e in deliver[3]] == [b"1", b"2"]
    # A round trip: had the broker sent more deliveries, they would precede this OK.
    rc.send(F.QueueDeclare(4, q))
    ok = await recv_type(rc, F.OK)
    assert ok[2]["messages"] == 3, ok
    assert broker.queues[q].unacked_count == 2
    # Each ack opens room for exactly one more.
    rc.send(F.Ack(3, deliver[3][0][0]))
    more = await recv_type(rc, F.DELIVER)
    assert [e[6] for e in more[3]] == [b"3"]
