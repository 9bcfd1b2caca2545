"""Resource alarms block publishers (BLOCKED/UNBLOCKED) and keep consumers served."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

import wharf
from wharf.broker.server import Broker

HUGE_DISK_LIMIT = 1 << 62


@pytest.mark.parametrize("settings_overrides", [{"disk_free_limit_bytes": HUGE_DISK_LIMIT}])
async def test_disk_alarm_blocks_publishers_until_it_clears(
    broker: Broker, connect: Any, url: str
) -> None:
    assert broker.alarms == {"disk"}
    consumer_conn = await connect()
    publisher = await connect()
    events: list[str | None] = []
    publisher.on_blocked(events.append)
    assert publisher.blocked == "disk"  # told right after authenticating
    await consumer_conn.declare_queue("alarmq")
    # The first publish is read (and accepted); the broker then stops reading.
    first = asyncio.ensure_future(publisher.publish("", "alarmq", b"one"))
    await asyncio.wait_for(first, 5)
    second = asyncio.ensure_future(publisher.publish("", "alarmq", b"two"))
    done, _ = await asyncio.wait({second}, timeout=0.3)
    assert not done, "a publish went through while the disk alarm was raised"
    # A consuming connection is still served.
    msg = await consumer_conn.get("alarmq")
    assert msg is not None and msg.body == b"one"
    await msg.ack()
    # Clear the alarm: the publisher is unblocked and its publish completes.
    assert broker.monitor is not None
    broker.monitor.disk_free_limit_bytes = 0
    broker.check_resources()
    await asyncio.wait_for(second, 5)
    assert publisher.blocked is None
    assert events[-1] is None
    msg = await consumer_conn.get("alarmq")
    assert msg is not None and msg.body == b"two"


@pytest.mark.parametrize("settings_overrides", [{"disk_free_limit_bytes": HUGE_DISK_LIMIT}])
async def test_alarm_shows_in_metrics_and_readyz(broker: Broker, conn: wharf.Connection) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", broker.http_port)
    writer.write(b"GET /readyz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    ready = await asyncio.wait_for(reader.read(), 5)
    writer.close()
    assert ready.startswith(b"HTTP/1.1 503") and b"disk" in ready
    reader, writer = await asyncio.open_connection("127.0.0.1", broker.http_port)
    writer.write(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    metrics = await asyncio.wait_for(reader.read(), 5)
    writer.close()
    assert b'wharf_alarm{resource="disk"} 1.0' in metrics
    assert b'wharf_alarm{resource="memory"} 0.0' in metrics
