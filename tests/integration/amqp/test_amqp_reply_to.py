"""Direct reply-to (``amq.rabbitmq.reply-to``) with pika: RabbitMQ's RPC pattern without a
reply queue (docs/amqp.md, "Direct reply-to")."""

from __future__ import annotations

import asyncio
from typing import Any

import pika
import pika.exceptions
import pytest

from wharf.broker.server import Broker

from .raw_amqp import PROTOCOL_HEADER, RawAmqp

REPLY_TO = "amq.rabbitmq.reply-to"
TIMEOUT_S = 5.0


def _wait_for(conn: pika.BlockingConnection, got: list[Any], n: int) -> None:
    """Process events until ``got`` holds ``n`` items (bounded)."""
    for _ in range(int(TIMEOUT_S / 0.05)):
        if len(got) >= n:
            return
        conn.process_data_events(time_limit=0.05)
    raise AssertionError(f"{len(got)} of {n} replies arrived")


async def test_direct_reply_to_is_announced(raw_amqp: Any) -> None:
    client: RawAmqp = await raw_amqp(login=False)
    client.send_bytes(PROTOCOL_HEADER)
    _, start = await client.recv()
    assert start.server_properties["capabilities"]["direct_reply_to"] is True


async def test_rpc_over_direct_reply_to(
    broker: Broker, amqp_params: pika.ConnectionParameters
) -> None:
    def scenario() -> None:
        with (
            pika.BlockingConnection(amqp_params) as client,
            pika.BlockingConnection(amqp_params) as server,
        ):
            cch = client.channel()
            cch.queue_declare("rpc")
            replies: list[tuple[Any, bytes]] = []
            cch.basic_consume(REPLY_TO, lambda c, m, p, b: replies.append((p, b)), auto_ack=True)
            cch.queue_declare(REPLY_TO, passive=True)  # the pseudo-queue "exists"
            for i in range(3):
                props = pika.BasicProperties(reply_to=REPLY_TO, correlation_id=str(i))
                cch.basic_publish("", "rpc", f"ask {i}".encode(), props)
            sch = server.channel()
            names = set()
            for i in range(3):
                method, props, body = sch.basic_get("rpc", auto_ack=True)
                assert method is not None and body == f"ask {i}".encode()
                assert props.reply_to.startswith(REPLY_TO + ".")
                names.add(props.reply_to)
                sch.queue_declare(props.reply_to, passive=True)
                sch.basic_publish(
                    "",
                    props.reply_to,
                    b"answer " + body,
                    pika.BasicProperties(correlation_id=props.correlation_id),
                )
            assert len(names) == 1  # one name per channel
            _wait_for(client, replies, 3)
            assert [(p.correlation_id, b) for p, b in replies] == [
                (str(i), f"answer ask {i}".encode()) for i in range(3)
            ]
            # The reply went to no queue.
            assert not [q for q in broker.topology.queues if q.startswith(REPLY_TO)]
            client.close()
            # The client is gone: its name no longer exists and a mandatory reply comes back.
            sch.confirm_delivery()
            with pytest.raises(pika.exceptions.UnroutableError):
                sch.basic_publish("", names.pop(), b"late", mandatory=True)

    await asyncio.to_thread(scenario)
    assert len(broker.topology.publisher.replies) == 0


async def test_direct_reply_to_refusals(
    broker: Broker, amqp_params: pika.ConnectionParameters
) -> None:
    def scenario() -> None:
        with pika.BlockingConnection(amqp_params) as conn:
            ch = conn.channel()
            ch.queue_declare("rpc2")
            with pytest.raises(pika.exceptions.ChannelClosedByBroker) as info:
                props = pika.BasicProperties(reply_to=REPLY_TO)
                ch.basic_publish("", "rpc2", b"x", props)
                ch.queue_declare("rpc2", passive=True)  # the close arrives by now
            assert info.value.reply_code == 406
            assert "fast reply consumer does not exist" in info.value.reply_text
            ch = conn.channel()
            with pytest.raises(pika.exceptions.ChannelClosedByBroker) as info:
                ch.basic_consume(REPLY_TO, lambda *a: None, auto_ack=False)
            assert info.value.reply_code == 406
            assert "reply consumer cannot acknowledge" in info.value.reply_text
            ch = conn.channel()
            with pytest.raises(pika.exceptions.ChannelClosedByBroker) as info:
                ch.queue_declare(REPLY_TO + ".nobody", passive=True)
            assert info.value.reply_code == 404
            ch = conn.channel()
            tag = ch.basic_consume(REPLY_TO, lambda *a: None, auto_ack=True)
            assert len(broker.topology.publisher.replies) == 1
            ch.basic_cancel(tag)
            assert len(broker.topology.publisher.replies) == 0

    await asyncio.to_thread(scenario)
