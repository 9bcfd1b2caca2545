"""Native delayed retry: nack with a delay, and a per-queue retry schedule."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

import wharf
from wharf.broker.config import Settings
from wharf.broker.server import Broker

from ..helpers import wait_until


async def _next(messages: wharf.Consumer, timeout: float = 5.0) -> wharf.Message:
    return await asyncio.wait_for(messages.__anext__(), timeout)


async def test_nack_with_delay_redelivers_later_at_original_position(
    broker: Broker, conn: wharf.Connection
) -> None:
    await conn.declare_queue("dq")
    await conn.publish_many("", "dq", [b"first", b"second"])
    async with conn.consume("dq", prefetch=1) as messages:
        first = await _next(messages)
        assert first.body == b"first"
        started = time.monotonic()
        await first.nack(requeue=True, delay_ms=300)
        second = await _next(messages)
        assert second.body == b"second"  # the delayed one is held back
        assert broker.queues["dq"].delayed_count == 1
        await second.ack()
        again = await _next(messages)
        assert again.body == b"first" and again.redelivered and again.delivery_count == 2
        assert time.monotonic() - started >= 0.25
        await again.ack()


async def test_retry_schedule_then_dead_letter(broker: Broker, conn: wharf.Connection) -> None:
    await conn.declare_queue("retry-dlq")
    await conn.declare_queue(
        "retrying",
        arguments={
            "x-retry-delays": [50, 100],
            "x-dead-letter-exchange": "",
            "x-dead-letter-routing-key": "retry-dlq",
        },
    )
    await conn.publish("", "retrying", b"flaky")
    async with conn.consume("retrying", prefetch=1) as messages:
        for attempt in (1, 2, 3):
            m = await _next(messages)
            assert m.delivery_count == attempt
            await m.reject(requeue=False)
    got: list[wharf.Message] = []

    async def dead_lettered() -> bool:
        m = await conn.get("retry-dlq")
        if m is not None:
            got.append(m)
        return bool(got)

    await wait_until(dead_lettered, what="the message dead-lettered")
    dead = got[0]
    assert dead.body == b"flaky"
    assert dead.headers["x-death"][0]["reason"] == "rejected"
    assert broker.queues["retrying"].stats_retried == 2


@pytest.mark.parametrize(
    ("name", "value"),
    [("x-retry-delays", [10, -1]), ("x-retry-delays", "1s"), ("x-retry-jitter", 2.0)],
)
async def test_bad_retry_arguments(conn: wharf.Connection, name: str, value: object) -> None:
    with pytest.raises(wharf.InvalidArgument) as info:
        await conn.declare_queue("badretry", arguments={name: value})
    assert name in str(info.value)


async def test_delayed_persistent_message_survives_restart(tmp_path: Path) -> None:
    settings = Settings(
        host="127.0.0.1", port=0, http_port=0, amqp_port=0, data_dir=str(tmp_path / "d")
    )
    b = Broker(settings)
    await b.start()
    try:
        async with await wharf.connect(f"wharf://guest:guest@127.0.0.1:{b.port}") as conn:
            await conn.declare_queue("dur", durable=True)
            await conn.publish("", "dur", b"later", persistent=True)
            m = await conn.get("dur")
            assert m is not None
            await m.nack(requeue=True, delay_ms=700)
            await conn.publish("", "dur", b"marker", persistent=True)  # flush the nack
    finally:
        await b.stop()
    b = Broker(settings)
    await b.start()
    try:
        assert b.queues["dur"].delayed_count == 1
        async with await wharf.connect(f"wharf://guest:guest@127.0.0.1:{b.port}") as conn:
            marker = await conn.get("dur")
            assert marker is not None and marker.body == b"marker"
            await marker.ack()
            async with conn.consume("dur", prefetch=1) as messages:
                later = await _next(messages)
                assert later.body == b"later" and later.redelivered
                await later.ack()
    finally:
        await b.stop()


async def test_many_delayed_messages_cost_an_index(broker: Broker, conn: wharf.Connection) -> None:
    await conn.declare_queue("bulk", arguments={"x-retry-delays": [60_000]})
    await conn.publish_many("", "bulk", [b"z" * 100] * 2000)
    async with conn.consume("bulk", prefetch=500) as messages:
        for _ in range(2000):
            m = await _next(messages)
            await m.reject(requeue=False)
    q = broker.queues["bulk"]
    for _ in range(100):
        if q.delayed_count == 2000:
            break
        await asyncio.sleep(0.01)
    assert q.delayed_count == 2000 and q.ready_count == 0
