"""pika's asyncio adapter (``AsyncioConnection``) against Wharf's AMQP listener, in the
test's own event loop: callbacks, publisher confirms, a 10 MiB body split into frames of
a frame_max the client chose, consume and ack."""

from __future__ import annotations

import asyncio
import os
from typing import Any

import pika
from pika.adapters.asyncio_connection import AsyncioConnection

from wharf.broker.server import Broker

TIMEOUT_S = 30.0
BIG_BODY_BYTES = 10 * 1024 * 1024
# Smaller than the broker's 131072: the client's frame_max wins.
CLIENT_FRAME_MAX = 8192


async def test_asyncio_adapter_confirms_a_large_body_and_consumes_it(broker: Broker) -> None:
    loop = asyncio.get_running_loop()
    opened: asyncio.Future[AsyncioConnection] = loop.create_future()
    closed: asyncio.Future[Any] = loop.create_future()
    params = pika.ConnectionParameters(
        "127.0.0.1",
        broker.amqp_port,
        credentials=pika.PlainCredentials("guest", "guest"),
        frame_max=CLIENT_FRAME_MAX,
    )
    conn = AsyncioConnection(
        params,
        on_open_callback=opened.set_result,
        on_open_error_callback=lambda _c, exc: opened.set_exception(exc),
        on_close_callback=lambda _c, reason: closed.set_result(reason),
        custom_ioloop=loop,
    )
    await asyncio.wait_for(opened, TIMEOUT_S)
    assert conn.params.frame_max == CLIENT_FRAME_MAX

    channel_ready: asyncio.Future[Any] = loop.create_future()
    conn.channel(on_open_callback=channel_ready.set_result)
    ch = await asyncio.wait_for(channel_ready, TIMEOUT_S)

    def step(call: Any, *args: Any, **kwargs: Any) -> asyncio.Future[Any]:
        fut: asyncio.Future[Any] = loop.create_future()
        call(*args, callback=lambda frame: fut.done() or fut.set_result(frame), **kwargs)
        return fut

    await asyncio.wait_for(step(ch.queue_declare, "pika.asyncio"), TIMEOUT_S)
    confirms: asyncio.Queue[Any] = asyncio.Queue()
    await asyncio.wait_for(
        step(ch.confirm_delivery, ack_nack_callback=confirms.put_nowait), TIMEOUT_S
    )
    big = os.urandom(BIG_BODY_BYTES)
    ch.basic_publish("", "pika.asyncio", big, pika.BasicProperties(delivery_mode=2))
    ch.basic_publish("", "pika.asyncio", b"small")
    acked = 0
    while acked < 2:
        frame = await asyncio.wait_for(confirms.get(), TIMEOUT_S)
        assert isinstance(frame.method, pika.spec.Basic.Ack), frame
        acked = frame.method.delivery_tag if frame.method.multiple else acked + 1

    bodies: asyncio.Queue[bytes] = asyncio.Queue()

    def on_message(channel: Any, method: Any, _props: Any, body: bytes) -> None:
        bodies.put_nowait(body)
        channel.basic_ack(method.delivery_tag)

    await asyncio.wait_for(step(ch.basic_qos, prefetch_count=1), TIMEOUT_S)
    ch.basic_consume("pika.asyncio", on_message)
    assert await asyncio.wait_for(bodies.get(), TIMEOUT_S) == big
    assert await asyncio.wait_for(bodies.get(), TIMEOUT_S) == b"small"
    await asyncio.wait_for(step(ch.queue_delete, "pika.asyncio"), TIMEOUT_S)
    conn.close()
    await asyncio.wait_for(closed, TIMEOUT_S)
