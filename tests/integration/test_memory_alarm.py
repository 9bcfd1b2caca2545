"""The memory alarm follows the memory the broker accounts for, and clears (issue 11, §5).

Flood a queue with no consumer until the alarm is raised, then purge it (or drain it
with a consumer): publishers are unblocked within a few seconds.  The old alarm compared
RSS with the watermark and latched, because freed pages are not given back.

The flood comes from a connection of its own, which stops at the alarm: a publish that
arrives during the alarm is the last one the broker reads from that connection, so a
flood that went on past it would wait forever (it did, on a loaded machine, when the
broker's once-a-second check raised the alarm mid-flood).  The test runs that check
itself after every batch, so the alarm is raised at the same batch on any machine.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Callable
from typing import Any

import pytest

import wharf
from wharf.broker.alarms import (
    MEMORY_CLEAR_FRACTION,
    RSS_BACKSTOP_ACCOUNTED_FRACTION,
    total_memory_bytes,
)
from wharf.broker.server import Broker

from ..helpers import wait_until

Connect = Callable[..., Any]

MIB = 1024 * 1024
LIMIT_BYTES = 8 * MIB
BODY = b"m" * 2048
BATCH = 256
# Ticks run every second; raising, clearing and unblocking take a few of them.
TIMEOUT_S = 10.0
# The alarm is raised by half of LIMIT_BYTES already; a flood this long without one fails.
FLOOD_LIMIT_BYTES = 4 * LIMIT_BYTES
SMALL_WATERMARK = {"memory_high_watermark": LIMIT_BYTES / total_memory_bytes()}


async def _flood_until_alarm(
    broker: Broker, flooder: wharf.Connection, publisher: wharf.Connection, queue: str
) -> None:
    """Fill ``queue`` from ``flooder`` until the memory alarm is raised; ``publisher``
    publishes nothing meanwhile, so the broker still reads its next publish."""
    assert broker.alarms == set()
    sent = 0
    while not broker.alarms:
        assert sent < FLOOD_LIMIT_BYTES, f"no memory alarm after {sent} bytes"
        # One frame per batch: a batch in flight when the tick raises the alarm is read
        # whole (and is the flooder's last), so its confirm comes.
        await flooder.publish_many("", queue, [BODY] * BATCH)
        sent += BATCH * len(BODY)
        # The broker's tick does this every second; here it runs between every two
        # batches too, as on the slowest machine, and the flood stops at the alarm.
        broker.check_resources()
    assert broker.alarms == {"memory"}
    await wait_until(timeout=TIMEOUT_S, check=lambda: publisher.blocked == "memory")
    await wait_until(timeout=TIMEOUT_S, check=lambda: flooder.blocked == "memory")
    monitor = broker.monitor
    assert monitor is not None
    # Raised by the accounted memory: at the watermark, or at RSS_BACKSTOP_ACCOUNTED_FRACTION
    # of it (the RSS backstop: this process's RSS is far above this small watermark).
    assert monitor.accounted_bytes >= monitor.memory_limit_bytes * RSS_BACKSTOP_ACCOUNTED_FRACTION


async def _assert_blocked_then_released(
    broker: Broker, publisher: wharf.Connection, queue: str, release: Any
) -> None:
    # A publish during the alarm is read, then the broker stops reading the publisher.
    await asyncio.wait_for(publisher.publish("", queue, b"during-1"), TIMEOUT_S)
    pending = asyncio.ensure_future(publisher.publish("", queue, b"during-2"))
    done, _ = await asyncio.wait({pending}, timeout=0.3)
    assert not done, "a publish went through while the memory alarm was raised"
    await release()
    await asyncio.wait_for(pending, TIMEOUT_S)
    assert publisher.blocked is None
    assert broker.alarms == set()
    monitor = broker.monitor
    assert monitor is not None
    assert monitor.accounted_bytes < monitor.memory_limit_bytes * MEMORY_CLEAR_FRACTION


@pytest.mark.parametrize("settings_overrides", [SMALL_WATERMARK])
async def test_memory_alarm_clears_after_a_purge(broker: Broker, connect: Connect) -> None:
    flooder: wharf.Connection = await connect()
    publisher: wharf.Connection = await connect()
    admin: wharf.Connection = await connect()
    queue = f"flood-{uuid.uuid4().hex[:8]}"
    await admin.declare_queue(queue)
    await _flood_until_alarm(broker, flooder, publisher, queue)

    async def purge() -> None:
        assert await admin.purge_queue(queue) > 0

    await _assert_blocked_then_released(broker, publisher, queue, purge)


@pytest.mark.parametrize("settings_overrides", [SMALL_WATERMARK])
async def test_memory_alarm_clears_after_a_consumer_drains_the_queue(
    broker: Broker, connect: Connect
) -> None:
    flooder: wharf.Connection = await connect()
    publisher: wharf.Connection = await connect()
    consumer_conn: wharf.Connection = await connect()
    queue = f"flood-{uuid.uuid4().hex[:8]}"
    await consumer_conn.declare_queue(queue)
    await _flood_until_alarm(broker, flooder, publisher, queue)

    async def drain() -> None:
        async with consumer_conn.consume(queue, prefetch=500) as messages:
            async for msg in messages:
                await msg.ack()
                if broker.queues[queue].ready_count == 0 and not broker.alarms:
                    break

    await _assert_blocked_then_released(broker, publisher, queue, drain)


@pytest.mark.parametrize("settings_overrides", [SMALL_WATERMARK])
async def test_accounted_memory_shows_in_metrics_and_overview(
    broker: Broker, conn: wharf.Connection
) -> None:
    queue = f"held-{uuid.uuid4().hex[:8]}"
    await conn.declare_queue(queue)
    await conn.publish_many("", queue, [BODY] * 100)
    reader, writer = await asyncio.open_connection("127.0.0.1", broker.http_port)
    writer.write(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
    metrics = (await asyncio.wait_for(reader.read(), TIMEOUT_S)).decode()
    writer.close()
    line = next(
        ln
        for ln in metrics.splitlines()
        if ln.startswith('wharf_memory_accounted_bytes{kind="queued_messages"}')
    )
    assert float(line.split()[-1]) >= 100 * len(BODY)
    assert "wharf_memory_high_watermark_bytes" in metrics
    assert broker.monitor is not None
    reader, writer = await asyncio.open_connection("127.0.0.1", broker.http_port)
    writer.write(
        b"GET /api/overview HTTP/1.1\r\nHost: localhost\r\n"
        b"Authorization: Basic Z3Vlc3Q6Z3Vlc3Q=\r\nConnection: close\r\n\r\n"
    )
    overview = (await asyncio.wait_for(reader.read(), TIMEOUT_S)).decode()
    writer.close()
    body = json.loads(overview.partition("\r\n\r\n")[2])
    assert body["memory"]["accounted"]["queued_messages"] >= 100 * len(BODY)
    assert body["memory"]["high_watermark_bytes"] == broker.monitor.memory_limit_bytes
