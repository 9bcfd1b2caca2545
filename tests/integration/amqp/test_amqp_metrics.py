"""Message counters per wire protocol on /metrics: what pika does counts under
protocol="amqp", what the native SDK does under protocol="native"."""

from __future__ import annotations

import asyncio

import pika

import wharf
from wharf.broker.server import Broker

from ..test_http import scrape, value

PIKA_MESSAGES = 3
NATIVE_MESSAGES = 2
INACTIVITY_S = 5.0


async def test_message_counters_by_protocol(
    broker: Broker, conn: wharf.Connection, amqp_params: pika.ConnectionParameters
) -> None:
    def over_amqp() -> None:
        with pika.BlockingConnection(amqp_params) as c:
            ch = c.channel()
            ch.confirm_delivery()
            ch.queue_declare("from-amqp")
            for i in range(PIKA_MESSAGES):
                ch.basic_publish("", "from-amqp", b"m%d" % i)
            consumed = ch.consume("from-amqp", inactivity_timeout=INACTIVITY_S)
            for n, (method, _, _) in enumerate(consumed, start=1):
                assert method is not None
                if n == 1:
                    ch.basic_nack(method.delivery_tag, requeue=True)
                else:
                    ch.basic_ack(method.delivery_tag)
                if n == PIKA_MESSAGES + 1:
                    break
            ch.cancel()
            ch.queue_declare("dropped")
            ch.basic_publish("", "dropped", b"x")
            method, _, _ = ch.basic_get("dropped")
            assert method is not None
            ch.basic_reject(method.delivery_tag, requeue=False)

    await asyncio.to_thread(over_amqp)
    await conn.declare_queue("from-native")
    for i in range(NATIVE_MESSAGES):
        await conn.publish("", "from-native", b"n%d" % i)
    for _ in range(NATIVE_MESSAGES):
        m = await conn.get("from-native")
        assert m is not None
        await m.ack()

    samples = await scrape(broker)

    def by(metric: str, protocol: str) -> float:
        return value(samples, f"wharf_protocol_messages_{metric}_total", protocol=protocol)

    assert by("published", "amqp") == PIKA_MESSAGES + 1
    assert by("published", "native") == NATIVE_MESSAGES
    assert by("delivered", "amqp") == PIKA_MESSAGES + 2  # a redelivery and the get
    assert by("redelivered", "amqp") == 1
    assert by("nacked", "amqp") == 1  # rejected without requeue
    assert by("nacked", "native") == 0
    assert by("acked", "amqp") == PIKA_MESSAGES
    assert by("delivered", "native") == NATIVE_MESSAGES
    assert by("acked", "native") == NATIVE_MESSAGES
    assert by("redelivered", "native") == 0
    # The unlabelled totals are the sums.
    assert value(samples, "wharf_messages_delivered_total") == PIKA_MESSAGES + 2 + NATIVE_MESSAGES
    assert value(samples, "wharf_messages_acked_total") == PIKA_MESSAGES + NATIVE_MESSAGES
