"""x-dedup-window-ms over AMQP 0-9-1: a duplicate is basic.ack'ed (RabbitMQ's confirms
have no field to flag it) and not enqueued again; a pika producer that loses its
connection and resends everything enqueues each message_id once."""

from __future__ import annotations

import asyncio

import aio_pika
import pamqp.commands
import pika
import pika.exceptions

import wharf
from wharf.broker.server import Broker

from ...helpers import TcpProxy, wait_until

REPLY_TIMEOUT_S = 10.0
CUT_AFTER = 50  # messages enqueued before the producer's connection is cut


async def test_amqp_duplicate_is_acked_and_not_enqueued(broker: Broker) -> None:
    url = f"amqp://guest:guest@127.0.0.1:{broker.amqp_port}/"
    connection = await aio_pika.connect(url, timeout=REPLY_TIMEOUT_S)
    async with connection:
        channel = await connection.channel(publisher_confirms=True)
        queue = await channel.declare_queue(
            "amqp-dedup", durable=True, arguments={"x-dedup-window-ms": 60_000}
        )
        for body in (b"first", b"retry", b"retry again"):
            message = aio_pika.Message(body, message_id="order-1", delivery_mode=2)
            confirm = await channel.default_exchange.publish(message, routing_key=queue.name)
            assert isinstance(confirm, pamqp.commands.Basic.Ack)
        other = aio_pika.Message(b"other", message_id="order-2")
        await channel.default_exchange.publish(other, routing_key=queue.name)
        declared = await channel.declare_queue("amqp-dedup", passive=True)
        assert declared.declaration_result.message_count == 2
        got = await queue.get(timeout=REPLY_TIMEOUT_S)
        assert got.body == b"first"
        await got.ack()
        # Still a duplicate after the original was consumed and acked.
        again = aio_pika.Message(b"late retry", message_id="order-1")
        await channel.default_exchange.publish(again, routing_key=queue.name)
        declared = await channel.declare_queue("amqp-dedup", passive=True)
        assert declared.declaration_result.message_count == 1


async def test_pika_producer_that_loses_its_connection_resends_everything_once(
    broker: Broker, conn: wharf.Connection, amqp_params: pika.ConnectionParameters
) -> None:
    """The issue's proof over AMQP: a pika producer with publisher confirms loses its
    connection mid-stream (a TCP reset, with a confirm outstanding), cannot know what
    arrived and resends every message_id: each is enqueued once."""
    queue = "amqp-dedup-drop"
    ids = [f"pay-{i}" for i in range(1000)]
    proxy = await TcpProxy(broker.amqp_port).start()
    cut_params = pika.ConnectionParameters(
        host="127.0.0.1",
        port=proxy.port,
        credentials=amqp_params.credentials,
        connection_attempts=1,
        socket_timeout=10,
    )

    def publish_all(params: pika.ConnectionParameters) -> int:
        """Publish every id with confirms; how many were confirmed before an error."""
        confirmed = 0
        try:
            with pika.BlockingConnection(params) as connection:
                ch = connection.channel()
                ch.confirm_delivery()
                ch.queue_declare(queue, durable=True, arguments={"x-dedup-window-ms": 600_000})
                for mid in ids:
                    props = pika.BasicProperties(message_id=mid, delivery_mode=2)
                    ch.basic_publish("", queue, mid.encode(), props)  # waits for its ack
                    confirmed += 1
        except (pika.exceptions.AMQPError, OSError):
            pass
        return confirmed

    async def enqueued() -> int:
        try:
            return (await conn.declare_queue(queue, passive=True)).messages
        except wharf.NotFound:
            return 0

    try:
        first = asyncio.ensure_future(asyncio.to_thread(publish_all, cut_params))

        async def some_arrived() -> bool:
            return await enqueued() >= CUT_AFTER

        await wait_until(some_arrived, what="the first messages enqueued")
        proxy.cut()  # the producer's connection resets with confirms outstanding
        confirmed = await first
    finally:
        await proxy.close()
    arrived = await enqueued()
    # The last message may have been enqueued with its ack lost in the cut.
    assert CUT_AFTER <= arrived < len(ids) and confirmed <= arrived <= confirmed + 1, (
        confirmed,
        arrived,
    )
    # The retry resends everything, on a new connection; each publish is acked.
    assert await asyncio.to_thread(publish_all, amqp_params) == len(ids)
    assert await enqueued() == len(ids)
    got = []
    while (msg := await conn.get(queue, no_ack=True)) is not None:
        got.append(msg.message_id)
    assert sorted(got) == sorted(ids)
