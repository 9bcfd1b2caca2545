"""Consumer acks over a raw AMQP socket: cumulative acks repeated by a consumer that acks
"up to the last tag seen" after every socket read (the RabbitMQ raw-client anchor does)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from pamqp import commands as C
from pamqp import frame as pamqp_frame
from pamqp import header as pamqp_header
from pamqp.body import ContentBody

from wharf.broker.server import Broker

from .raw_amqp import RawAmqp

MESSAGES = 3
PREFETCH = 10


async def _consuming(raw_amqp: Callable[..., Any]) -> tuple[RawAmqp, str, list[int]]:
    """A client on channel 1 consuming MESSAGES deliveries of a fresh queue: (client,
    queue, delivery tags)."""
    client: RawAmqp = await raw_amqp()
    client.send(1, C.Channel.Open())
    assert isinstance((await client.recv())[1], C.Channel.OpenOk)
    client.send(1, C.Queue.Declare(queue="acks"))
    assert isinstance((await client.recv())[1], C.Queue.DeclareOk)
    for i in range(MESSAGES):
        client.send(1, C.Basic.Publish(exchange="", routing_key="acks"))
        body = b"m%d" % i
        header = pamqp_header.ContentHeader(0, len(body), C.Basic.Properties())
        client.send_bytes(pamqp_frame.marshal(header, 1))
        client.send_bytes(pamqp_frame.marshal(ContentBody(body), 1))
    client.send(1, C.Basic.Qos(prefetch_count=PREFETCH))
    assert isinstance((await client.recv())[1], C.Basic.QosOk)
    client.send(1, C.Basic.Consume(queue="acks"))
    assert isinstance((await client.recv())[1], C.Basic.ConsumeOk)
    tags = []
    while len(tags) < MESSAGES:
        _, frame = await client.recv()
        if isinstance(frame, C.Basic.Deliver):
            tags.append(frame.delivery_tag)
    return client, "acks", tags


async def _channel_answers(client: RawAmqp) -> Any:
    """A synchronous method on channel 1: its answer, or the channel.close before it."""
    client.send(1, C.Basic.Qos(prefetch_count=PREFETCH))
    while True:
        channel, frame = await client.recv()
        if channel == 1 and isinstance(frame, (C.Basic.QosOk, C.Channel.Close)):
            return frame


async def test_a_repeated_cumulative_ack_settles_nothing_and_keeps_the_channel(
    broker: Broker, raw_amqp: Callable[..., Any]
) -> None:
    client, queue, tags = await _consuming(raw_amqp)
    assert tags == [1, 2, 3]
    client.send(1, C.Basic.Ack(delivery_tag=2, multiple=True))
    client.send(1, C.Basic.Ack(delivery_tag=2, multiple=True))  # nothing left up to 2
    assert isinstance(await _channel_answers(client), C.Basic.QosOk)
    client.send(1, C.Basic.Ack(delivery_tag=1, multiple=True))  # below the last ack
    client.send(1, C.Basic.Nack(delivery_tag=2, multiple=True, requeue=True))
    assert isinstance(await _channel_answers(client), C.Basic.QosOk)
    q = broker.queues[queue]
    assert q.ready_count == 0 and q.unacked_count == 1  # tag 3 is still out
    client.send(1, C.Basic.Ack(delivery_tag=3, multiple=True))
    client.send(1, C.Basic.Ack(delivery_tag=3, multiple=True))
    assert isinstance(await _channel_answers(client), C.Basic.QosOk)
    assert q.ready_count == 0 and q.unacked_count == 0


async def test_a_cumulative_ack_past_the_last_delivery_closes_the_channel_with_406(
    broker: Broker, raw_amqp: Callable[..., Any]
) -> None:
    client, queue, tags = await _consuming(raw_amqp)
    client.send(1, C.Basic.Ack(delivery_tag=3, multiple=True))
    client.send(1, C.Basic.Ack(delivery_tag=4, multiple=True))  # never delivered
    close = await _channel_answers(client)
    assert isinstance(close, C.Channel.Close)
    assert close.reply_code == 406
    assert close.reply_text == "PRECONDITION_FAILED - unknown delivery tag 4"


async def test_a_repeated_single_ack_still_closes_the_channel_with_406(
    broker: Broker, raw_amqp: Callable[..., Any]
) -> None:
    client, queue, tags = await _consuming(raw_amqp)
    client.send(1, C.Basic.Ack(delivery_tag=1))
    client.send(1, C.Basic.Ack(delivery_tag=1))  # as RabbitMQ: acking twice is an error
    close = await _channel_answers(client)
    assert isinstance(close, C.Channel.Close)
    assert close.reply_code == 406
    assert close.reply_text == "PRECONDITION_FAILED - unknown delivery tag 1"
    q = broker.queues[queue]
    assert q.ready_count == 2  # the channel closed: its unacked deliveries are requeued
