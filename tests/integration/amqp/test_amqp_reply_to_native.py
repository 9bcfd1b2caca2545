"""Direct reply-to across protocols: an AMQP RPC client waits on ``amq.rabbitmq.reply-to``
and a server on another protocol (the native SDK, the HTTP API) publishes the reply to
``msg.reply_to``.  The reply routing is the core's (core/replies.py), so it reaches the
waiting channel whatever the publisher speaks; a mandatory reply to a name whose channel
is gone comes back (docs/amqp.md, "Direct reply-to")."""

from __future__ import annotations

import asyncio
import base64
import contextlib
from collections.abc import AsyncIterator

import aio_pika
import aio_pika.abc
import aiohttp
import pika
import pytest

import wharf
from wharf.broker.server import Broker

from ..test_api import api

REPLY_TO = "amq.rabbitmq.reply-to"
TIMEOUT_S = 10.0
REQUESTS = 20
AUTH = {"Authorization": "Basic " + base64.b64encode(b"guest:guest").decode()}


def amqp_url(broker: Broker) -> str:
    return f"amqp://guest:guest@127.0.0.1:{broker.amqp_port}/"


@contextlib.asynccontextmanager
async def native_server(conn: wharf.Connection, queue: str) -> AsyncIterator[list[str]]:
    """Serve ``queue`` with the native SDK: each reply goes to the default exchange with
    the request's reply_to as routing key; yields the reply names seen."""
    await conn.declare_queue(queue)
    started = asyncio.get_running_loop().create_future()
    names: list[str] = []

    async def serve() -> None:
        async with conn.consume(queue) as requests:
            started.set_result(None)
            async for request in requests:
                assert request.reply_to is not None
                names.append(request.reply_to)
                await conn.publish(
                    "",
                    request.reply_to,
                    b"answer " + request.body,
                    correlation_id=request.correlation_id,
                    content_type="text/plain",
                    headers={"served-by": "native", "nested": {"n": 1, "list": [1, "two"]}},
                    mandatory=True,
                )
                await request.ack()

    task = asyncio.create_task(serve())
    try:
        await asyncio.wait_for(asyncio.shield(started), TIMEOUT_S)
        yield names
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def test_aio_pika_rpc_client_with_native_server(
    broker: Broker, conn: wharf.Connection
) -> None:
    async with native_server(conn, "rpc.native") as names:
        client = await aio_pika.connect(amqp_url(broker), timeout=TIMEOUT_S)
        async with client:
            channel = await client.channel()
            loop = asyncio.get_running_loop()
            waiting: dict[str, asyncio.Future[aio_pika.abc.AbstractIncomingMessage]] = {}

            async def on_reply(message: aio_pika.abc.AbstractIncomingMessage) -> None:
                assert message.correlation_id is not None
                waiting.pop(message.correlation_id).set_result(message)

            callback = await channel.get_queue(REPLY_TO)  # passive declare: it "exists"
            await callback.consume(on_reply, no_ack=True)
            for i in range(REQUESTS):
                waiting[str(i)] = loop.create_future()
            futures = dict(waiting)
            await asyncio.gather(
                *(
                    channel.default_exchange.publish(
                        aio_pika.Message(
                            f"ask {i}".encode(), correlation_id=str(i), reply_to=REPLY_TO
                        ),
                        routing_key="rpc.native",
                    )
                    for i in range(REQUESTS)
                )
            )
            replies = await asyncio.wait_for(asyncio.gather(*futures.values()), TIMEOUT_S)
        for i, reply in enumerate(replies):
            assert reply.correlation_id == str(i)
            assert reply.body == f"answer ask {i}".encode()
            assert reply.content_type == "text/plain"
            assert reply.headers == {"served-by": "native", "nested": {"n": 1, "list": [1, "two"]}}
            assert reply.routing_key == names[0]
            assert reply.exchange == ""
        # One name for the channel, rewritten by the broker; the replies went to no queue.
        assert len(set(names)) == 1 and names[0].startswith(REPLY_TO + ".")
        assert not [q for q in broker.topology.queues if q.startswith(REPLY_TO)]
        # The client is gone: the name reaches no one.
        assert len(broker.topology.publisher.replies) == 0
        with pytest.raises(wharf.Unroutable):
            await conn.publish("", names[0], b"late", mandatory=True)
        # Without mandatory the reply is dropped and confirmed.
        await conn.publish("", names[0], b"late")


async def test_native_mandatory_reply_returned_when_the_channel_cancelled(
    broker: Broker, conn: wharf.Connection
) -> None:
    client = await aio_pika.connect(amqp_url(broker), timeout=TIMEOUT_S)
    async with client:
        channel = await client.channel()
        got: asyncio.Queue[aio_pika.abc.AbstractIncomingMessage] = asyncio.Queue()
        callback = await channel.get_queue(REPLY_TO)
        tag = await callback.consume(got.put, no_ack=True)
        await conn.declare_queue("rpc.cancel")
        await channel.default_exchange.publish(
            aio_pika.Message(b"ask", reply_to=REPLY_TO), routing_key="rpc.cancel"
        )
        request = await conn.get("rpc.cancel", no_ack=True)
        assert request is not None and request.reply_to is not None
        name = request.reply_to
        # publish_many, mandatory: every message reaches the reply consumer.
        await conn.publish_many("", name, [b"one", b"two"], mandatory=True)
        firsts = [await asyncio.wait_for(got.get(), TIMEOUT_S) for _ in range(2)]
        assert [m.body for m in firsts] == [b"one", b"two"]
        await callback.cancel(tag)
        # The channel stays open but its reply consumer is gone.
        with pytest.raises(wharf.Unroutable):
            await conn.publish("", name, b"after cancel", mandatory=True)
        assert got.empty()


async def test_http_publish_to_a_reply_name(broker: Broker) -> None:
    client = await aio_pika.connect(amqp_url(broker), timeout=TIMEOUT_S)
    async with client:
        channel = await client.channel()
        got: asyncio.Queue[aio_pika.abc.AbstractIncomingMessage] = asyncio.Queue()
        callback = await channel.get_queue(REPLY_TO)
        await callback.consume(got.put, no_ack=True)
        await channel.declare_queue("rpc.http")
        await channel.default_exchange.publish(
            aio_pika.Message(b"ask", reply_to=REPLY_TO), routing_key="rpc.http"
        )
        request = await (await channel.get_queue("rpc.http")).get(no_ack=True, timeout=TIMEOUT_S)
        assert request is not None and request.reply_to is not None
        url = f"http://127.0.0.1:{broker.http_port}/api/exchanges/%2F/amq.default/publish"
        body = {"routing_key": request.reply_to, "payload": "from http", "properties": {}}
        async with aiohttp.ClientSession(headers=AUTH) as http:
            async with http.post(url, json=body) as resp:
                assert resp.status == 200 and await resp.json() == {"routed": True}
            reply = await asyncio.wait_for(got.get(), TIMEOUT_S)
            assert reply.body == b"from http"
            await client.close()
            async with http.post(url, json=body) as resp:
                assert resp.status == 200 and await resp.json() == {"routed": False}


async def test_reply_published_in_an_amqp_transaction(
    broker: Broker, amqp_params: pika.ConnectionParameters
) -> None:
    """A held reply is delivered at tx.commit, and a rolled back one never."""

    def scenario() -> list[bytes]:
        with (
            pika.BlockingConnection(amqp_params) as client,
            pika.BlockingConnection(amqp_params) as server,
        ):
            cch = client.channel()
            got: list[bytes] = []
            cch.basic_consume(REPLY_TO, lambda c, m, p, b: got.append(b), auto_ack=True)
            cch.queue_declare("rpc.tx")
            cch.basic_publish("", "rpc.tx", b"ask", pika.BasicProperties(reply_to=REPLY_TO))
            sch = server.channel()
            method, props, _ = sch.basic_get("rpc.tx", auto_ack=True)
            assert method is not None
            sch.tx_select()
            sch.basic_publish("", props.reply_to, b"rolled back")
            sch.tx_rollback()
            sch.basic_publish("", props.reply_to, b"committed")
            client.process_data_events(time_limit=0.1)
            assert got == []  # held until the commit
            sch.tx_commit()
            for _ in range(int(TIMEOUT_S / 0.05)):
                if got:
                    break
                client.process_data_events(time_limit=0.05)
            return got

    assert await asyncio.to_thread(scenario) == [b"committed"]


async def test_reply_name_of_another_vhost_reaches_no_one(broker: Broker) -> None:
    client = await aio_pika.connect(amqp_url(broker), timeout=TIMEOUT_S)
    async with client:
        channel = await client.channel()
        got: asyncio.Queue[aio_pika.abc.AbstractIncomingMessage] = asyncio.Queue()
        callback = await channel.get_queue(REPLY_TO)
        await callback.consume(got.put, no_ack=True)
        await channel.declare_queue("rpc.vh")
        await channel.default_exchange.publish(
            aio_pika.Message(b"ask", reply_to=REPLY_TO), routing_key="rpc.vh"
        )
        request = await (await channel.get_queue("rpc.vh")).get(no_ack=True, timeout=TIMEOUT_S)
        assert request is not None and request.reply_to is not None
        assert (await api(broker, "PUT", "/api/vhosts/other")).status == 201
        url = f"wharf://guest:guest@127.0.0.1:{broker.port}/other"
        async with await wharf.connect(url) as other:
            with pytest.raises(wharf.Unroutable):
                await other.publish("", request.reply_to, b"wrong vhost", mandatory=True)
        assert got.empty()
