"""What reaches the message store's disk, seen through /metrics: a queue that does not
persist (declared without ``durable``) writes nothing when its messages are delivered.

Its store only pages long queues; the DELIVERED watermark (records.py) is read by
recovery alone, which skips such a queue.  It used to be written on every delivery: a
write and an fsync each time, and, for the first write into a new segment, a file
descriptor for the directory's fsync; taken while the broker was out of fds, the store
failed and stopped persistent publishing until a restart
(durability/test_fd_alarm.py).

The store writes in order, so a confirmed persistent publish is a barrier: whatever was
written before it is in ``wharf_store_bytes`` once it is confirmed.
"""

from __future__ import annotations

import wharf
from wharf.broker.server import Broker

from ..helpers import metric, scrape_metrics


async def store_bytes_after_a_barrier(broker: Broker, conn: wharf.Connection) -> float:
    """Publish one persistent message to the durable queue "barrier" (confirmed once it
    is on disk), then read the store's size."""
    await conn.publish("", "barrier", b"barrier", persistent=True)
    return metric(await scrape_metrics(broker.http_port), "wharf_store_bytes")


async def deliver_five(conn: wharf.Connection, queue: str) -> None:
    """Transient messages, got and consumed, all acked."""
    await conn.publish_many("", queue, [b"m%d" % i for i in range(5)])
    got = await conn.get(queue)
    assert got is not None
    await got.ack()
    taken = 0
    async with conn.consume(queue, prefetch=10) as messages:
        async for msg in messages:
            await msg.ack()
            taken += 1
            if taken == 4:
                break
    assert await conn.get(queue) is None  # a round trip: the acks have been handled


async def delivery_records_bytes(broker: Broker, conn: wharf.Connection, durable: bool) -> float:
    """Bytes the deliveries from a (non-)durable queue add to the store."""
    await conn.declare_queue("barrier", durable=True)
    await conn.declare_queue("q", durable=durable)
    one_barrier = await store_bytes_after_a_barrier(broker, conn)  # the first record
    await deliver_five(conn, "q")
    return await store_bytes_after_a_barrier(broker, conn) - 2 * one_barrier


async def test_deliveries_from_a_transient_queue_write_nothing(
    broker: Broker, conn: wharf.Connection
) -> None:
    assert await delivery_records_bytes(broker, conn, durable=False) == 0


async def test_deliveries_from_a_durable_queue_still_record_their_watermark(
    broker: Broker, conn: wharf.Connection
) -> None:
    # Transient messages: the deliveries' DELIVERED records are all that is written.
    assert await delivery_records_bytes(broker, conn, durable=True) > 0
