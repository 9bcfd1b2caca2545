"""Per-message side state survives store compaction followed by a restart.

Compaction copies the live messages out of a mostly-settled oldest segment and then
deletes it, side records and all.  Every kind of side state must come along: a nack
delay and an x-retry-delays schedule (DELAYS records), a TTL deadline (in the MSGS
record), a delivery count (COUNTS), the redelivered flag of a message handed out
before the restart (DELIVERED watermark, or the count of the unacked copy), and the
rows of a paged long queue.  Each test fills segment 1 with such messages, churns a
bulk queue until compaction has removed segment 1, restarts (SIGTERM or kill -9), and
checks each message.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from pathlib import Path

import pytest
from harness import SMALL_SEGMENT_BYTES, BrokerProcess, broker_process

import wharf

# Far beyond the test: a delayed message must still be waiting after the restart.
LONG_DELAY_MS = 300_000
# Long enough to outlive compaction and the restart, short enough to wait for.
TTL_MS = 15_000
EXPIRY_SLACK_S = 10.0
BULK_BODY = b"b" * 2000
BULK_BATCH = 100
MAX_BULK_ROUNDS = 200
PAGED_MESSAGES = 60
PAGED_BODY_BYTES = 2000
# Small enough that most of the paged queue is index rows with bodies on disk.
MEMORY_BUDGET_BYTES = 32 * 1024
REQUEUES = 3
BUDGET_S = 100.0
POLL_S = 0.1
ENV = {
    "WHARF_SEGMENT_BYTES": str(SMALL_SEGMENT_BYTES),
    "WHARF_QUEUE_MEMORY_BUDGET_BYTES": str(MEMORY_BUDGET_BYTES),
}


async def http_get(port: int, path: str) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
        data = await reader.read()
    finally:
        writer.close()
        await writer.wait_closed()
    return data.partition(b"\r\n\r\n")[2]


async def delayed_count(bp: BrokerProcess, queue: str) -> float:
    text = (await http_get(bp.http_port, "/metrics")).decode()
    prefix = f'wharf_queue_messages_delayed{{queue="{queue}",vhost="/"}} '
    for line in text.splitlines():
        if line.startswith(prefix):
            return float(line[len(prefix) :])
    raise AssertionError(f"no delayed gauge for {queue}")


async def set_up_side_state(conn: wharf.Connection) -> float:
    """Messages with every kind of side state, in segment 1; returns the TTL's start."""
    await conn.declare_queue("delay", durable=True)
    await conn.publish("", "delay", b"delayed", persistent=True)
    m = await conn.get("delay")
    assert m is not None
    await m.nack(requeue=True, delay_ms=LONG_DELAY_MS)

    await conn.declare_queue("retry", durable=True, arguments={"x-retry-delays": [LONG_DELAY_MS]})
    await conn.publish("", "retry", b"retried", persistent=True)
    m = await conn.get("retry")
    assert m is not None
    await m.nack(requeue=False)

    await conn.declare_queue("ttl", durable=True)
    ttl_start = time.monotonic()
    await conn.publish("", "ttl", b"expires", persistent=True, expiration=TTL_MS)

    await conn.declare_queue("counts", durable=True)
    await conn.publish("", "counts", b"counted", persistent=True)
    for _ in range(REQUEUES):
        m = await conn.get("counts")
        assert m is not None
        await m.nack(requeue=True)

    await conn.declare_queue("paged", durable=True)
    bodies = [b"%03d" % i + b"p" * PAGED_BODY_BYTES for i in range(PAGED_MESSAGES)]
    await conn.publish_many("", "paged", bodies, persistent=True)

    await conn.declare_queue("held", durable=True)
    await conn.publish("", "held", b"held", persistent=True)
    m = await conn.get("held")  # delivered, left unacked until the broker stops
    assert m is not None and not m.redelivered
    return ttl_start


async def churn_until_compacted(bp: BrokerProcess, conn: wharf.Connection) -> None:
    first = bp.data_dir / "messages" / f"{1:016d}.seg"
    await conn.declare_queue("bulk", durable=True)
    for _ in range(MAX_BULK_ROUNDS):
        if not first.exists():
            break
        await conn.publish_many("", "bulk", [BULK_BODY] * BULK_BATCH, persistent=True)
        async with conn.consume("bulk", prefetch=BULK_BATCH) as messages:
            n = 0
            async for msg in messages:
                await msg.ack()
                n += 1
                if n == BULK_BATCH:
                    break
        await asyncio.sleep(POLL_S)  # bounded polling: compaction runs on the broker's tick
    assert not first.exists(), "segment 1 was never compacted away"
    assert "compacted segment 1:" in bp.output()


@pytest.mark.parametrize("stop", ["sigterm", "kill"])
async def test_side_records_survive_compaction_and_restart(tmp_path: Path, stop: str) -> None:
    async with broker_process(tmp_path / "data", env=ENV, budget_s=BUDGET_S) as bp:
        conn = await bp.connect()
        ttl_start = await set_up_side_state(conn)
        await churn_until_compacted(bp, conn)
        await bp.restart(stop)  # the held message's connection goes with the broker
        with contextlib.suppress(wharf.WharfError):
            await conn.close()
        conn = await bp.connect()
        try:
            # Delayed retries are still waiting, neither delivered early nor lost.
            assert await conn.get("delay") is None
            assert await conn.get("retry") is None
            assert await delayed_count(bp, "delay") == 1
            assert await delayed_count(bp, "retry") == 1
            # The delivery count and the redelivered flag.
            m = await conn.get("counts")
            assert m is not None and m.redelivered and m.delivery_count == REQUEUES + 1
            m = await conn.get("held")
            assert m is not None and m.body == b"held" and m.redelivered
            # The paged queue, in order.
            got = []
            while (m := await conn.get("paged")) is not None:
                got.append(m.body[:3])
                await m.ack()
            assert got == [b"%03d" % i for i in range(PAGED_MESSAGES)]
            # The TTL deadline: still there, then gone on time.
            info = await conn.declare_queue("ttl", durable=True, passive=True)
            assert info.messages == 1 or time.monotonic() - ttl_start > TTL_MS / 1000
            deadline = ttl_start + TTL_MS / 1000 + EXPIRY_SLACK_S
            while (await conn.declare_queue("ttl", passive=True)).messages:
                assert time.monotonic() < deadline, "the TTL deadline was lost"
                await asyncio.sleep(POLL_S)
            assert time.monotonic() - ttl_start >= TTL_MS / 1000 - 1.0, "expired early"
        finally:
            await conn.close()
        assert not bp.log_problems(), bp.log_problems()
