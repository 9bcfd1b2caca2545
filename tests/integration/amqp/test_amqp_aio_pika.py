"""aio-pika and aiormq, unmodified, against Wharf's AMQP listener.

Both are asyncio clients: they run in the test's event loop, beside the broker.  The code
is what their documentation shows: a robust connection, publisher confirms gathered,
``async for`` with ack, the RPC pattern, and the reconnection of a robust connection that
the broker closed (an operator's ``DELETE /api/connections/{name}``).
"""

from __future__ import annotations

import asyncio
import base64
import datetime
import decimal
import struct
from typing import Any

import aio_pika
import aiohttp
import aiormq
import aiormq.exceptions
import msgpack
import pytest
from aio_pika.patterns import RPC

import wharf
from wharf.broker.server import Broker

from ...helpers import wait_until

# Bounds for what the broker answers at once; a slow shared machine needs the slack.
REPLY_TIMEOUT_S = 10.0
MESSAGES = 200
AUTH = {"Authorization": "Basic " + base64.b64encode(b"guest:guest").decode()}


def amqp_url(broker: Broker, name: str = "") -> str:
    query = f"?name={name}" if name else ""
    return f"amqp://guest:guest@127.0.0.1:{broker.amqp_port}/{query}"


async def api(broker: Broker, method: str, path: str) -> Any:
    async with (
        aiohttp.ClientSession(headers=AUTH) as http,
        http.request(method, f"http://127.0.0.1:{broker.http_port}/api/{path}") as resp,
    ):
        assert resp.status == 200, await resp.text()
        return await resp.json()


async def test_robust_connection_gathered_confirms_and_async_for(broker: Broker) -> None:
    connection = await aio_pika.connect_robust(amqp_url(broker), timeout=REPLY_TIMEOUT_S)
    async with connection:
        channel = await connection.channel()  # publisher confirms on, aio-pika's default
        await channel.set_qos(prefetch_count=50)
        exchange = await channel.declare_exchange("orders", aio_pika.ExchangeType.TOPIC)
        queue = await channel.declare_queue("orders.eu", durable=True)
        await queue.bind(exchange, "eu.#")
        confirms = await asyncio.gather(
            *(
                exchange.publish(
                    aio_pika.Message(
                        f"order-{i}".encode(),
                        delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                        content_type="text/plain",
                        headers={"n": i},
                    ),
                    routing_key="eu.new",
                )
                for i in range(MESSAGES)
            )
        )
        assert all(isinstance(c, aiormq.spec.Basic.Ack) for c in confirms)
        got: list[tuple[bytes, Any]] = []
        async with queue.iterator() as messages:
            async for message in messages:
                async with message.process():
                    got.append((message.body, message.headers["n"]))
                if len(got) == MESSAGES:
                    break
        assert got == [(f"order-{i}".encode(), i) for i in range(MESSAGES)]
        again = await channel.declare_queue("orders.eu", passive=True)
        assert again.declaration_result.message_count == 0


async def test_rpc_pattern_results_errors_and_timeouts(broker: Broker) -> None:
    connection = await aio_pika.connect_robust(amqp_url(broker), timeout=REPLY_TIMEOUT_S)
    async with connection:
        callee_channel = await connection.channel()
        await callee_channel.set_qos(prefetch_count=1)
        callee = await RPC.create(callee_channel)
        gate = asyncio.Event()

        async def multiply(*, x: int, y: int) -> int:
            return x * y

        async def fail() -> None:
            raise ValueError("bad input")

        async def wait_for_gate() -> str:
            await gate.wait()
            return "released"

        await callee.register("multiply", multiply, auto_delete=True)
        await callee.register("fail", fail, auto_delete=True)
        await callee.register("gated", wait_for_gate, auto_delete=True)
        caller = await RPC.create(await connection.channel())

        assert await asyncio.wait_for(caller.proxy.multiply(x=6, y=7), REPLY_TIMEOUT_S) == 42
        with pytest.raises(ValueError, match="bad input"):
            await asyncio.wait_for(caller.proxy.fail(), REPLY_TIMEOUT_S)
        # A call that waits in the queue past its expiration is dead-lettered to the
        # headers exchange rpc.dlx, which routes it back to the caller's result queue by
        # its "From" header: aio-pika raises TimeoutError.  The callee's one prefetch slot
        # is held by the first gated call, so the second one waits.
        first = asyncio.ensure_future(caller.call("gated"))
        await wait_until(lambda: unacked(broker), what="the first call delivered")
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(caller.call("gated", expiration=1), REPLY_TIMEOUT_S)
        gate.set()
        assert await asyncio.wait_for(first, REPLY_TIMEOUT_S) == "released"
        # A method nobody registered: the mandatory call is returned (basic.return).
        with pytest.raises(aio_pika.exceptions.MessageProcessError):
            await asyncio.wait_for(caller.call("nobody", expiration=5), REPLY_TIMEOUT_S)


async def unacked(broker: Broker) -> int:
    return sum(c["unacked"] for c in await api(broker, "GET", "connections"))


async def test_plain_callback_queue_rpc(broker: Broker) -> None:
    """The tutorial's RPC: an exclusive reply queue, reply-to and correlation ids."""
    connection = await aio_pika.connect_robust(amqp_url(broker), timeout=REPLY_TIMEOUT_S)
    async with connection:
        server_channel = await connection.channel()
        requests = await server_channel.declare_queue("rpc.requests", auto_delete=True)

        async def serve(message: aio_pika.abc.AbstractIncomingMessage) -> None:
            async with message.process():
                assert message.reply_to is not None
                await server_channel.default_exchange.publish(
                    aio_pika.Message(message.body.upper(), correlation_id=message.correlation_id),
                    routing_key=message.reply_to,
                )

        await requests.consume(serve)
        client_channel = await connection.channel()
        replies = await client_channel.declare_queue(exclusive=True)
        pending: dict[str, asyncio.Future[bytes]] = {}

        async def on_reply(message: aio_pika.abc.AbstractIncomingMessage) -> None:
            assert message.correlation_id is not None
            pending.pop(message.correlation_id).set_result(message.body)

        await replies.consume(on_reply, no_ack=True)
        loop = asyncio.get_running_loop()
        futures = []
        for word in ("alpha", "beta", "gamma"):
            pending[word] = loop.create_future()
            futures.append(pending[word])
            await client_channel.default_exchange.publish(
                aio_pika.Message(word.encode(), correlation_id=word, reply_to=replies.name),
                routing_key="rpc.requests",
            )
        results = await asyncio.wait_for(asyncio.gather(*futures), REPLY_TIMEOUT_S)
        assert results == [b"ALPHA", b"BETA", b"GAMMA"]


async def test_robust_connection_reconnects_after_operator_close(broker: Broker) -> None:
    """The broker closes the connection (320 CONNECTION_FORCED): aio-pika reconnects,
    declares its queue and consumer again, and the message unacked at the close is
    delivered again, marked redelivered."""
    connection = await aio_pika.connect_robust(
        amqp_url(broker, "robust-test"), timeout=REPLY_TIMEOUT_S, reconnect_interval=0.2
    )
    reconnected = asyncio.Event()
    connection.reconnect_callbacks.add(lambda *_: reconnected.set())
    async with connection:
        channel = await connection.channel()
        await channel.set_qos(prefetch_count=10)
        queue = await channel.declare_queue("robust", durable=True)
        got: asyncio.Queue[aio_pika.abc.AbstractIncomingMessage] = asyncio.Queue()

        async def on_message(message: aio_pika.abc.AbstractIncomingMessage) -> None:
            await got.put(message)

        await queue.consume(on_message)
        await channel.default_exchange.publish(aio_pika.Message(b"first"), routing_key="robust")
        first = await asyncio.wait_for(got.get(), REPLY_TIMEOUT_S)
        assert first.body == b"first" and not first.redelivered

        listed = await api(broker, "GET", "connections")
        [conn] = [c for c in listed if c["client_properties"].get("connection_name")]
        assert conn["protocol"] == "amqp"
        assert conn["client_properties"]["connection_name"] == "robust-test"
        assert conn["client_properties"]["product"] == "aiormq"
        await api(broker, "DELETE", f"connections/{conn['name']}")

        await asyncio.wait_for(reconnected.wait(), REPLY_TIMEOUT_S)
        again = await asyncio.wait_for(got.get(), REPLY_TIMEOUT_S)
        assert again.body == b"first" and again.redelivered
        await again.ack()
        await channel.default_exchange.publish(aio_pika.Message(b"second"), routing_key="robust")
        second = await asyncio.wait_for(got.get(), REPLY_TIMEOUT_S)
        assert second.body == b"second"
        await second.ack()
        listed = await api(broker, "GET", "connections")
        assert [c["name"] for c in listed] != [conn["name"]]
        assert len(listed) == 1 and listed[0]["consumers"] == 1


async def test_aiormq_publish_consume_get(broker: Broker) -> None:
    connection = await aiormq.connect(amqp_url(broker))
    try:
        channel = await connection.channel()  # confirm mode by default
        await channel.basic_qos(prefetch_count=1)
        declared = await channel.queue_declare("", exclusive=True)
        queue = declared.queue
        assert queue is not None
        for body in (b"one", b"two", b"three"):
            confirm = await channel.basic_publish(
                body,
                routing_key=queue,
                properties=aiormq.spec.Basic.Properties(content_type="text/plain"),
            )
            assert isinstance(confirm, aiormq.spec.Basic.Ack)
        # mandatory and unroutable: basic.return before the confirm, aiormq raises.
        with pytest.raises(aiormq.exceptions.PublishError):
            await channel.basic_publish(b"lost", routing_key="no-such-queue", mandatory=True)

        got: asyncio.Queue[aiormq.abc.DeliveredMessage] = asyncio.Queue()
        consume_ok = await channel.basic_consume(queue, got.put)
        first = await asyncio.wait_for(got.get(), REPLY_TIMEOUT_S)
        assert first.body == b"one" and first.header.properties.content_type == "text/plain"
        await channel.basic_cancel(consume_ok.consumer_tag)
        # prefetch 1: only "one" went out; the rest wait for basic.get.
        assert got.empty()
        await channel.basic_ack(first.delivery_tag)
        second = await channel.basic_get(queue)
        assert second.body == b"two" and second.delivery.message_count == 1
        await channel.basic_reject(second.delivery_tag, requeue=True)
        again = await channel.basic_get(queue, no_ack=True)
        assert again.body == b"two" and again.delivery.redelivered
        third = await channel.basic_get(queue, no_ack=True)
        assert third.body == b"three"
        empty = await channel.basic_get(queue)
        assert isinstance(empty.delivery, aiormq.spec.Basic.GetEmpty)
    finally:
        await connection.close()


async def test_qos_raised_after_consume_reaches_the_consumer(broker: Broker) -> None:
    """basic.qos global=false after basic.consume changes the existing consumer's
    prefetch too (Celery raises it for each task it holds until a countdown)."""
    connection = await aiormq.connect(amqp_url(broker))
    try:
        channel = await connection.channel()
        declared = await channel.queue_declare("", exclusive=True)
        queue = declared.queue
        assert queue is not None
        for i in range(4):
            await channel.basic_publish(str(i).encode(), routing_key=queue)
        await channel.basic_qos(prefetch_count=1)
        got: asyncio.Queue[aiormq.abc.DeliveredMessage] = asyncio.Queue()
        await channel.basic_consume(queue, got.put)
        first = await asyncio.wait_for(got.get(), REPLY_TIMEOUT_S)
        assert first.body == b"0"
        await channel.basic_qos(prefetch_count=3)  # nothing acked: two more may come
        bodies = [(await asyncio.wait_for(got.get(), REPLY_TIMEOUT_S)).body for _ in range(2)]
        assert bodies == [b"1", b"2"]
        await channel.basic_qos(prefetch_count=0)  # unlimited
        last = await asyncio.wait_for(got.get(), REPLY_TIMEOUT_S)
        assert last.body == b"3"
        await channel.basic_ack(last.delivery_tag, multiple=True)
    finally:
        await connection.close()


# -- every property and header type, across protocols ------------------------------------------

# Epoch seconds of the timestamps below (AMQP timestamps are whole seconds).
WHEN_S = 1_765_040_400


def _native_headers() -> dict[str, Any]:
    """Headers of every Wharf value type that maps to an AMQP field type (docs/amqp.md)."""
    return {
        "s": "text é",
        "n": 42,
        "neg": -70_000,
        "big": 2**40,
        "pi": 3.25,
        "yes": True,
        "no": False,
        "none": None,
        "raw": b"\x00\xff\x10",
        "list": [1, "two", [None, False, {"deep": "x"}]],
        "nested": {"k": "v", "deeper": {"x": 1, "arr": ["a", b"\x01"]}},
        "dec": msgpack.ExtType(1, struct.pack(">Bi", 2, -1234)),  # -12.34
        "when": msgpack.Timestamp(WHEN_S),
        "empty": {},
        "none_list": [],
    }


def _as_aio_pika_reads(headers: dict[str, Any]) -> dict[str, Any]:
    """What aio-pika (pamqp) decodes ``_native_headers()`` to."""
    return {
        **headers,
        "dec": decimal.Decimal("-12.34"),
        "when": datetime.datetime.fromtimestamp(WHEN_S, datetime.UTC),
    }


def _for_pamqp(value: Any) -> Any:
    """``value`` with bytes as bytearray: pamqp encodes a byte array (``x``) only from
    a bytearray (and reads it back as bytes)."""
    if isinstance(value, bytes):
        return bytearray(value)
    if isinstance(value, dict):
        return {k: _for_pamqp(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_for_pamqp(v) for v in value]
    return value


def _naive(value: Any) -> Any:
    if isinstance(value, datetime.datetime):
        return value.replace(tzinfo=datetime.UTC) if value.tzinfo is None else value
    return value


async def test_native_message_with_every_property_read_by_aio_pika(
    broker: Broker, conn: wharf.Connection
) -> None:
    await conn.declare_queue("native-to-aio")
    body = bytes(range(256)) * 4
    await conn.publish(
        "",
        "native-to-aio",
        body,
        headers=_native_headers(),
        content_type="application/octet-stream",
        content_encoding="gzip",
        message_id="native-1",
        correlation_id="corr-1",
        reply_to="replies",
        timestamp=WHEN_S * 1000 + 999,  # epoch ms: AMQP keeps the seconds
        type="order.created",
        app_id="shop",
        user_id="guest",
        persistent=True,
        priority=7,
        expiration=60_000,
    )
    connection = await aio_pika.connect(amqp_url(broker), timeout=REPLY_TIMEOUT_S)
    async with connection:
        channel = await connection.channel()
        queue = await channel.get_queue("native-to-aio")
        msg = await queue.get(no_ack=True, timeout=REPLY_TIMEOUT_S)
        assert msg is not None
    assert msg.body == body
    assert msg.content_type == "application/octet-stream"
    assert msg.content_encoding == "gzip"
    assert msg.message_id == "native-1"
    assert msg.correlation_id == "corr-1"
    assert msg.reply_to == "replies"
    assert msg.timestamp is not None and _naive(msg.timestamp).timestamp() == WHEN_S
    assert msg.type == "order.created"
    assert msg.app_id == "shop"
    assert msg.user_id == "guest"
    assert msg.delivery_mode == aio_pika.DeliveryMode.PERSISTENT
    assert msg.priority == 7
    assert msg.expiration == 60.0  # aio-pika reads the "60000" ms string as seconds
    assert {k: _naive(v) for k, v in msg.headers.items()} == _as_aio_pika_reads(_native_headers())


async def test_aio_pika_message_with_every_property_read_by_the_native_sdk(
    broker: Broker, conn: wharf.Connection
) -> None:
    await conn.declare_queue("aio-to-native")
    body = bytes(range(255, -1, -1)) * 4
    headers = _for_pamqp(_as_aio_pika_reads(_native_headers()))
    connection = await aio_pika.connect(amqp_url(broker), timeout=REPLY_TIMEOUT_S)
    async with connection:
        channel = await connection.channel()
        await channel.default_exchange.publish(
            aio_pika.Message(
                body,
                headers=headers,
                content_type="application/octet-stream",
                content_encoding="gzip",
                delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                priority=7,
                correlation_id="corr-2",
                reply_to="replies",
                expiration=60,  # seconds in aio-pika: "60000" on the wire
                message_id="aio-1",
                timestamp=datetime.datetime.fromtimestamp(WHEN_S, datetime.UTC),
                type="order.created",
                user_id="guest",
                app_id="shop",
            ),
            routing_key="aio-to-native",
        )
    got = await conn.get("aio-to-native", no_ack=True)
    assert got is not None
    assert got.body == body
    assert got.content_type == "application/octet-stream"
    assert got.content_encoding == "gzip"
    assert got.persistent is True
    assert got.priority == 7
    assert got.correlation_id == "corr-2"
    assert got.reply_to == "replies"
    assert got.expiration == 60_000
    assert got.message_id == "aio-1"
    assert got.timestamp == WHEN_S * 1000
    assert got.type == "order.created"
    assert got.user_id == "guest"
    assert got.app_id == "shop"
    assert got.headers == _native_headers()


BIG_BODY_BYTES = 10 * 1024 * 1024


async def test_large_body_and_direct_reply_to_rpc(broker: Broker) -> None:
    """A 10 MiB body through aio-pika, and RPC over ``amq.rabbitmq.reply-to`` (RabbitMQ's
    direct reply-to) as aio-pika users write it: no reply queue declared."""
    conn = await aio_pika.connect_robust(amqp_url(broker))
    async with conn:
        ch = await conn.channel()
        queue = await ch.declare_queue("", exclusive=True)
        big = bytes(range(256)) * (BIG_BODY_BYTES // 256)
        await ch.default_exchange.publish(aio_pika.Message(big), routing_key=queue.name)
        got = await queue.get(timeout=REPLY_TIMEOUT_S)
        assert got is not None and got.body == big
        await got.ack()

        server_ch = await conn.channel()
        requests = await server_ch.declare_queue("", exclusive=True)

        async def serve(request: aio_pika.abc.AbstractIncomingMessage) -> None:
            async with request.process():
                assert request.reply_to is not None
                assert request.reply_to.startswith("amq.rabbitmq.reply-to.")
                await server_ch.default_exchange.publish(
                    aio_pika.Message(b"re:" + request.body, correlation_id=request.correlation_id),
                    routing_key=request.reply_to,
                )

        await requests.consume(serve)
        client_ch = await conn.channel()
        replies = await client_ch.get_queue("amq.rabbitmq.reply-to", ensure=False)
        answers: asyncio.Queue[aio_pika.abc.AbstractIncomingMessage] = asyncio.Queue()
        await replies.consume(answers.put, no_ack=True)
        for n in range(3):
            await client_ch.default_exchange.publish(
                aio_pika.Message(
                    f"ping{n}".encode(), correlation_id=str(n), reply_to="amq.rabbitmq.reply-to"
                ),
                routing_key=requests.name,
            )
        for n in range(3):
            reply = await asyncio.wait_for(answers.get(), REPLY_TIMEOUT_S)
            assert (reply.body, reply.correlation_id) == (f"re:ping{n}".encode(), str(n))
