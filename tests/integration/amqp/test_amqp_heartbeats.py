"""AMQP heartbeats follow the negotiated interval T, on each connection's own timers, as
RabbitMQ's: a heartbeat when nothing was sent for T/2, and the socket closed after two
checks T apart that read nothing. The broker's 1 s tick plays no part (it is made an
hour long here), and a client that cannot be read because it does not take its
deliveries fast enough is not taken for a silent one."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest
from pamqp import commands as C

import wharf
from wharf.broker import server
from wharf.broker.server import Broker

from ...helpers import wait_until
from .raw_amqp import HEARTBEAT, RawAmqp

# The broker's periodic tick, made too long to matter in these tests.
SLOW_TICK_S = 3600.0
# A queue big enough to fill the kernel's socket buffers and the 4 MiB write buffer.
BACKLOG_MESSAGES = 48
BACKLOG_BODY = b"x" * (1024 * 1024)
# A timer may fire a hair before its deadline.
TIMER_SLACK_S = 0.1


@pytest.fixture
def slow_tick(monkeypatch: pytest.MonkeyPatch) -> None:
    """Before the broker starts: its tick loop sleeps TICK_S between rounds."""
    monkeypatch.setattr(server, "TICK_S", SLOW_TICK_S)


def amqp_connections(broker: Broker) -> list[Any]:
    return [c for c in broker.connections.values() if c.protocol == "amqp"]


@pytest.mark.parametrize("heartbeat_s", [1, 2])
async def test_heartbeats_follow_the_negotiated_interval_not_the_tick(
    slow_tick: None, raw_amqp: Callable[..., Any], heartbeat_s: int
) -> None:
    loop = asyncio.get_running_loop()
    client: RawAmqp = await raw_amqp(heartbeat=heartbeat_s)
    started = loop.time()
    # A silent client: the broker sends a heartbeat every T/2 and closes the socket
    # after 2T to 3T without a byte from the client.
    data = await client.read_all(timeout=4 * heartbeat_s + 5)
    silent_for = loop.time() - started
    assert silent_for >= 2 * heartbeat_s - TIMER_SLACK_S, silent_for
    assert data.count(HEARTBEAT) >= 3, (data.count(HEARTBEAT), silent_for)


async def test_a_client_that_sends_heartbeats_but_takes_its_deliveries_slowly_stays(
    broker: Broker, conn: wharf.Connection, raw_amqp: Callable[..., Any]
) -> None:
    """A consumer that does not read its deliveries for a while (a busy client on a loaded
    machine) fills Wharf's write buffer, and Wharf then stops reading its socket: the
    client's heartbeats wait there unread. They still count (RabbitMQ pauses its monitor
    under flow control); a peer that neither reads nor sends is closed all the same."""
    heartbeat_s = 1
    await conn.declare_queue("backlog")
    for _ in range(BACKLOG_MESSAGES):
        await conn.publish("", "backlog", BACKLOG_BODY)
    client: RawAmqp = await raw_amqp(heartbeat=heartbeat_s)
    client.send(1, C.Channel.Open())
    await client.recv()
    client.send(1, C.Basic.Consume(queue="backlog", no_ack=True))
    (amqp,) = amqp_connections(broker)
    await wait_until(lambda: not amqp.writable, what="the write buffer over its high mark")
    # 5 intervals without reading a byte, a heartbeat every T/4.
    for _ in range(20):
        client.send_bytes(HEARTBEAT)
        await asyncio.sleep(heartbeat_s / 4)
    assert not amqp.closing and amqp_connections(broker) == [amqp], "closed for missed heartbeats"
    # Now silent as well: a dead peer, closed (the unsent deliveries are dropped).
    await wait_until(lambda: not amqp_connections(broker), timeout=4 * heartbeat_s + 5)
    await client.close()
