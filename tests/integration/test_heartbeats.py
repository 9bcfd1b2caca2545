"""Heartbeats and the ack timeout: time itself is the behaviour under test here.

The broker runs its checks about once a second, so every wait below is bounded by the
interval plus one check period plus slack, and waits on a frame or an error, not on a
fixed sleep (except where a client has to stay idle for a while on purpose).
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable
from typing import Any

import pytest

import wharf
from wharf.broker.server import TICK_S, Broker
from wharf.protocol import frames as F

Connect = Callable[..., Any]
RawFactory = Callable[..., Any]

TIMEOUT_S = 5.0
HEARTBEAT_S = 1
# Slack for a loaded machine on top of the broker's check period.
SLACK_S = 1.5


def _qname(prefix: str = "q") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


async def raw_login(raw_client: RawFactory, heartbeat_s: int) -> tuple[Any, Any]:
    """A raw client authenticated with ``heartbeat_s``; returns it and its AUTH_OK."""
    rc = await raw_client(auth=False)
    rc.send(F.Auth(1, "PLAIN", "guest", "guest", heartbeat_s, {}))
    auth_ok = await rc.recv(TIMEOUT_S)
    assert auth_ok[0] == F.AUTH_OK, auth_ok
    return rc, auth_ok


async def recv_skipping_heartbeats(rc: Any, ftype: int) -> Any:
    while True:
        frame = await rc.recv(TIMEOUT_S)
        if frame[0] != F.HEARTBEAT:
            assert frame[0] == ftype, frame
            return frame


async def take(messages: wharf.Consumer, n: int) -> list[wharf.Message]:
    got: list[wharf.Message] = []
    async with asyncio.timeout(TIMEOUT_S):
        while len(got) < n:
            got.append(await anext(messages))
    return got


# -- negotiation ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("client_s", "expected_s"), [(0, 0), (HEARTBEAT_S, HEARTBEAT_S), (30, 30), (90, 60)]
)
async def test_heartbeat_negotiation_with_the_default_server_interval(
    raw_client: RawFactory, client_s: int, expected_s: int
) -> None:
    _, auth_ok = await raw_login(raw_client, client_s)
    assert auth_ok[3] == expected_s


@pytest.mark.parametrize("settings_overrides", [{"heartbeat_s": 0}])
async def test_server_without_heartbeats_uses_the_client_interval(raw_client: RawFactory) -> None:
    _, auth_ok = await raw_login(raw_client, 30)
    assert auth_ok[3] == 30


# -- a silent client -------------------------------------------------------------------------


async def test_silent_client_is_dropped_with_507_and_its_unacked_requeued(
    broker: Broker, raw_client: RawFactory, conn: wharf.Connection
) -> None:
    loop = asyncio.get_running_loop()
    q = _qname()
    await conn.declare_queue(q)
    await conn.publish_many("", q, [b"a", b"b"])
    rc, _ = await raw_login(raw_client, HEARTBEAT_S)
    rc.send(F.Consume(5, q, "silent", 10))
    last_sent = loop.time()
    await recv_skipping_heartbeats(rc, F.OK)
    deliver = await recv_skipping_heartbeats(rc, F.DELIVER)
    assert [e[6] for e in deliver[3]] == [b"a", b"b"]
    assert broker.queues[q].unacked_count == 2

    # From here on the client sends nothing at all.
    frames = await rc.recv_until_closed(TIMEOUT_S)
    silent_for = loop.time() - last_sent
    assert frames, "expected heartbeats and a fatal ERROR before the close"
    error = frames[-1]
    assert error[:3] == [F.ERROR, 0, 507] and error[4] is True, frames
    assert {f[0] for f in frames[:-1]} <= {F.HEARTBEAT}, frames
    assert 2 * HEARTBEAT_S <= silent_for <= 2 * HEARTBEAT_S + TICK_S + SLACK_S

    async with conn.consume(q) as messages:
        got = await take(messages, 2)
        for m in got:
            await m.ack()
    assert [m.body for m in got] == [b"a", b"b"]
    assert all(m.redelivered and m.delivery_count == 2 for m in got)


async def test_broker_sends_heartbeats_to_a_quiet_client_that_stays_alive(
    broker: Broker, raw_client: RawFactory
) -> None:
    loop = asyncio.get_running_loop()
    rc, _ = await raw_login(raw_client, HEARTBEAT_S)
    started = loop.time()
    received = 0
    # The client sends only heartbeats, each time it sees one: it is quiet but alive.
    while received < 3:
        frame = await rc.recv(TIMEOUT_S)
        assert frame == [F.HEARTBEAT, 0], frame
        received += 1
        rc.send(F.Heartbeat(0))
    # Longer than two intervals have passed, and the connection is still usable.
    assert loop.time() - started > 2 * HEARTBEAT_S
    rc.send(F.QueueDeclare(7, _qname()))
    ok = await recv_skipping_heartbeats(rc, F.OK)
    assert ok[1] == 7


async def test_sdk_connection_with_short_heartbeat_survives_idle_periods(
    broker: Broker, url: str, connect: Connect
) -> None:
    c: wharf.Connection = await connect(heartbeat_s=HEARTBEAT_S)
    assert c.heartbeat_s == HEARTBEAT_S
    # Idle for three intervals: both sides' heartbeats must keep the connection open.
    await asyncio.sleep(3 * HEARTBEAT_S)
    assert not c.is_closed
    info = await c.declare_queue("")
    assert info.name


async def test_client_without_heartbeats_is_never_timed_out(
    broker: Broker, raw_client: RawFactory
) -> None:
    rc, auth_ok = await raw_login(raw_client, 0)
    assert auth_ok[3] == 0
    # Quiet for more than a check period and two would-be intervals: nothing arrives.
    with pytest.raises(TimeoutError):
        await rc.recv(2 * HEARTBEAT_S + TICK_S)
    rc.send(F.QueueDeclare(3, _qname()))
    assert (await rc.recv(TIMEOUT_S))[:2] == [F.OK, 3]


# -- ack timeout -----------------------------------------------------------------------------


@pytest.mark.parametrize("settings_overrides", [{"ack_timeout_ms": 300}])
async def test_ack_timeout_cancels_the_consumer_with_408_and_redelivers(
    broker: Broker, conn: wharf.Connection, connect: Connect
) -> None:
    q = _qname()
    await conn.declare_queue(q)
    slow: wharf.Connection = await connect()
    fast: wharf.Connection = await connect()
    async with slow.consume(q) as slow_messages:
        await conn.publish("", q, b"job")
        (held,) = await take(slow_messages, 1)
        assert held.body == b"job" and not held.redelivered
        async with fast.consume(q) as fast_messages:
            # The slow consumer never acks: the broker cancels it and requeues.
            with pytest.raises(wharf.DeliveryAckTimeout) as info:
                async with asyncio.timeout(TIMEOUT_S):
                    await anext(slow_messages)
            assert info.value.code == 408
            (again,) = await take(fast_messages, 1)
            assert again.body == b"job"
            assert again.redelivered is True
            assert again.delivery_count == 2
            await again.ack()
    # 408 is not fatal: the slow connection is still usable.
    assert not slow.is_closed
    await slow.declare_queue(q)
    assert broker.queues[q].unacked_count == 0
    assert broker.queues[q].ready_count == 0


@pytest.mark.parametrize("settings_overrides", [{"ack_timeout_ms": 300}])
async def test_ack_timeout_of_a_get_sends_408_and_requeues(
    broker: Broker, raw_client: RawFactory, conn: wharf.Connection
) -> None:
    q = _qname()
    await conn.declare_queue(q)
    await conn.publish("", q, b"fetched")
    rc = await raw_client()
    rc.send(F.Get(2, q))
    get_ok = await recv_skipping_heartbeats(rc, F.GET_OK)
    tag = get_ok[2][0]
    error = await recv_skipping_heartbeats(rc, F.ERROR)
    assert error[:3] == [F.ERROR, 0, 408] and error[4] is False, error
    assert error[5] == {"delivery_tag": tag}
    msg = await conn.get(q)
    assert msg is not None and msg.body == b"fetched"
    assert msg.redelivered and msg.delivery_count == 2
    await msg.ack()
