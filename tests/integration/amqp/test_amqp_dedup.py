"""x-dedup-window-ms over AMQP 0-9-1: a duplicate is basic.ack'ed (RabbitMQ's confirms
have no field to flag it) and not enqueued again."""

from __future__ import annotations

import aio_pika
import pamqp.commands

from wharf.broker.server import Broker

REPLY_TIMEOUT_S = 10.0


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
