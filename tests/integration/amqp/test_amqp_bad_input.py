"""Bad input on the AMQP port, over a raw socket: RabbitMQ's reply codes, no crash, and
other connections unaffected."""

from __future__ import annotations

import asyncio
import struct
from collections.abc import Callable
from typing import Any

import pika
from pamqp import commands as C
from pamqp import frame as pamqp_frame
from pamqp import header as pamqp_header

from wharf.broker.server import Broker

from .raw_amqp import HEARTBEAT, PROTOCOL_HEADER, RawAmqp, raw_frame

FRAME_METHOD = 1
FRAME_HEADER = 2
FRAME_BODY = 3


def content_header(size: int) -> bytes:
    return pamqp_frame.marshal(pamqp_header.ContentHeader(0, size, C.Basic.Properties()), 1)


def body_frame(channel: int, data: bytes) -> bytes:
    return raw_frame(FRAME_BODY, channel, data)


async def other_connections_still_work(params: pika.ConnectionParameters) -> None:
    def scenario() -> None:
        with pika.BlockingConnection(params) as conn:
            ch = conn.channel()
            q = ch.queue_declare("", exclusive=True).method.queue
            ch.basic_publish("", q, b"still here")
            assert ch.basic_get(q, auto_ack=True)[2] == b"still here"

    await asyncio.to_thread(scenario)


def params_for(broker: Broker) -> pika.ConnectionParameters:
    return pika.ConnectionParameters(
        "127.0.0.1",
        broker.amqp_port,
        credentials=pika.PlainCredentials("guest", "guest"),
        connection_attempts=1,
    )


async def test_a_wrong_protocol_header_gets_the_supported_one(broker: Broker) -> None:
    for wrong in (b"GET / HTTP/1.1\r\n\r\n", b"AMQP\x01\x01\x00\x0a", b"AMQP\x00\x00\x09\x02"):
        reader, writer = await asyncio.open_connection("127.0.0.1", broker.amqp_port)
        writer.write(wrong)
        client = RawAmqp(reader, writer)
        assert await client.read_all() == PROTOCOL_HEADER
        await client.close()
    await other_connections_still_work(params_for(broker))


async def test_a_frame_over_frame_max_closes_with_501(
    broker: Broker, raw_amqp: Callable[..., Any]
) -> None:
    client: RawAmqp = await raw_amqp()
    client.send(1, C.Channel.Open())
    await client.recv()
    client.send_bytes(raw_frame(FRAME_BODY, 1, b"x" * 200_000))
    close = await client.expect_connection_close()
    assert close.reply_code == 501
    assert close.reply_text.startswith("FRAME_ERROR - ")
    await other_connections_still_work(params_for(broker))


async def test_a_body_longer_than_its_header_closes_with_501(
    broker: Broker, raw_amqp: Callable[..., Any]
) -> None:
    client: RawAmqp = await raw_amqp()
    client.send(1, C.Channel.Open())
    await client.recv()
    client.send(1, C.Basic.Publish(exchange="", routing_key="q"))
    client.send_bytes(content_header(5))
    client.send_bytes(body_frame(1, b"0123456789"))
    close = await client.expect_connection_close()
    assert close.reply_code == 501
    assert close.class_id == 60 and close.method_id == 40  # basic.publish
    await other_connections_still_work(params_for(broker))


async def test_a_method_on_a_closed_channel_closes_with_504(
    broker: Broker, raw_amqp: Callable[..., Any]
) -> None:
    client: RawAmqp = await raw_amqp()
    client.send(1, C.Channel.Open())
    await client.recv()
    client.send(1, C.Channel.Close(200, "bye", 0, 0))
    _, ok = await client.recv()
    assert isinstance(ok, C.Channel.CloseOk)
    client.send(1, C.Queue.Declare(queue="q"))
    close = await client.expect_connection_close()
    assert close.reply_code == 504
    assert close.reply_text == "CHANNEL_ERROR - expected 'channel.open'"
    # A channel that was never opened: the same.
    other: RawAmqp = await raw_amqp()
    other.send(7, C.Basic.Qos(prefetch_count=1))
    close = await other.expect_connection_close()
    assert close.reply_code == 504
    await other_connections_still_work(params_for(broker))


async def test_content_frames_outside_an_open_channels_publish_keep_their_codes(
    broker: Broker, raw_amqp: Callable[..., Any]
) -> None:
    """Content frames on an open channel skip the connection's per-frame checks (the
    publish fast path); everywhere else they still get RabbitMQ's codes: on channel 0,
    on a channel never opened or closed, and on an open channel expecting a method."""
    cases: list[tuple[bytes, int, str]] = [
        (body_frame(0, b"x"), 505, "UNEXPECTED_FRAME - content frame (type 3) on channel 0"),
        (
            raw_frame(FRAME_HEADER, 0, content_header(1)[7:-1]),
            505,
            "UNEXPECTED_FRAME - content frame (type 2) on channel 0",
        ),
        (body_frame(5, b"x"), 504, "CHANNEL_ERROR - expected 'channel.open'"),
        (
            body_frame(1, b"x"),
            505,
            "UNEXPECTED_FRAME - expected method frame, got non method frame instead",
        ),
        (
            content_header(1),
            505,
            "UNEXPECTED_FRAME - expected method frame, got non method frame instead",
        ),
    ]
    for frame, code, text in cases:
        client: RawAmqp = await raw_amqp()
        client.send(1, C.Channel.Open())
        await client.recv()
        client.send_bytes(frame)
        close = await client.expect_connection_close()
        assert (close.reply_code, close.reply_text) == (code, text)
    # A channel the client closed: a body frame for it is a frame on an unopened channel.
    client = await raw_amqp()
    client.send(1, C.Channel.Open())
    await client.recv()
    client.send(1, C.Channel.Close(200, "bye", 0, 0))
    _, ok = await client.recv()
    assert isinstance(ok, C.Channel.CloseOk)
    client.send_bytes(body_frame(1, b"x"))
    close = await client.expect_connection_close()
    assert (close.reply_code, close.reply_text) == (504, "CHANNEL_ERROR - expected 'channel.open'")
    await other_connections_still_work(params_for(broker))


async def test_a_channel_above_channel_max_closes_with_530(
    broker: Broker, raw_amqp: Callable[..., Any]
) -> None:
    client: RawAmqp = await raw_amqp(channel_max=2)
    for n in (1, 2):
        client.send(n, C.Channel.Open())
        _, ok = await client.recv()
        assert isinstance(ok, C.Channel.OpenOk)
    client.send(3, C.Channel.Open())
    close = await client.expect_connection_close()
    assert close.reply_code == 530
    assert close.reply_text.startswith("NOT_ALLOWED - ")
    await other_connections_still_work(params_for(broker))


async def test_a_method_between_publish_and_its_content_closes_with_505(
    broker: Broker, raw_amqp: Callable[..., Any]
) -> None:
    client: RawAmqp = await raw_amqp()
    client.send(1, C.Channel.Open())
    await client.recv()
    client.send(1, C.Basic.Publish(exchange="", routing_key="q"))
    client.send(1, C.Queue.Declare(queue="q"))
    close = await client.expect_connection_close()
    assert close.reply_code == 505
    assert close.reply_text == (
        "UNEXPECTED_FRAME - expected content header for class 60, "
        "got non content header frame instead"
    )
    await other_connections_still_work(params_for(broker))


async def test_an_invalid_field_table_closes_with_502(
    broker: Broker, raw_amqp: Callable[..., Any]
) -> None:
    client: RawAmqp = await raw_amqp()
    client.send(1, C.Channel.Open())
    await client.recv()
    # queue.declare "q" whose arguments table holds a value of unknown type 'Z'.
    table = b"\x03x-aZ\x00\x00\x00\x01"
    args = (
        struct.pack(">H", 0)
        + b"\x01q"
        + b"\x00"  # passive, durable, exclusive, auto-delete, nowait: all false
        + struct.pack(">I", len(table))
        + table
    )
    client.send_bytes(raw_frame(FRAME_METHOD, 1, struct.pack(">I", C.Queue.Declare.index) + args))
    close = await client.expect_connection_close()
    assert close.reply_code == 502
    await other_connections_still_work(params_for(broker))


async def test_a_routing_key_over_255_bytes_closes_with_501(
    broker: Broker, raw_amqp: Callable[..., Any]
) -> None:
    """A short string carries at most 255 bytes: a client that writes a longer queue name
    as basic.publish's routing key (its length octet wrapped, or 255 and more bytes
    behind) sent arguments that do not decode: 501 as RabbitMQ. Nothing is published."""
    name = b"q" * 300
    for length_octet in (len(name) % 256, 255):
        client: RawAmqp = await raw_amqp()
        client.send(1, C.Channel.Open())
        await client.recv()
        # reserved-1, exchange "", routing key, bits (mandatory, immediate)
        args = struct.pack(">H", 0) + b"\x00" + bytes((length_octet,)) + name + b"\x00"
        client.send_bytes(
            raw_frame(FRAME_METHOD, 1, struct.pack(">I", C.Basic.Publish.index) + args)
        )
        client.send_bytes(content_header(1) + body_frame(1, b"x"))
        close = await client.expect_connection_close()
        assert (close.reply_code, close.class_id, close.method_id) == (501, 60, 40), close
        assert close.reply_text.startswith("FRAME_ERROR - cannot decode <<0,0,0,"), close
    await other_connections_still_work(params_for(broker))


async def test_trailing_bytes_after_a_methods_arguments_close_the_connection_with_501(
    broker: Broker, raw_amqp: Callable[..., Any]
) -> None:
    """RabbitMQ decodes a method's arguments by matching the whole payload: a byte more
    than the arguments is connection.close 501 FRAME_ERROR `cannot decode <<...>>` (the
    argument bytes as Erlang prints them) naming the method, whatever the method (the
    hand-decoded publish and ack, and those pamqp decodes). Nothing of it is applied."""
    publish = struct.pack(">H", 0) + b"\x00\x01q\x00"
    ack = struct.pack(">QB", 1, 0)
    declare = struct.pack(">H", 0) + b"\x01q" + b"\x00" + struct.pack(">I", 0)
    qos = struct.pack(">IHB", 0, 5, 0)
    cases = [
        (C.Basic.Publish.index, publish),
        (C.Basic.Ack.index, ack),
        (C.Queue.Declare.index, declare),
        (C.Basic.Qos.index, qos),
    ]
    for index, args in cases:
        client: RawAmqp = await raw_amqp()
        client.send(1, C.Channel.Open())
        await client.recv()
        client.send_bytes(raw_frame(FRAME_METHOD, 1, struct.pack(">I", index) + args + b"j"))
        close = await client.expect_connection_close()
        shown = ",".join(str(b) for b in args + b"j")
        assert close.reply_code == 501, close
        assert close.reply_text == f"FRAME_ERROR - cannot decode <<{shown}>>", close
        assert (close.class_id << 16 | close.method_id) == index, close
        await client.close()
    client = await raw_amqp()  # the queue "q" was never declared
    client.send(1, C.Channel.Open())
    await client.recv()
    client.send(1, C.Queue.Declare(queue="q", passive=True))
    _, reply = await client.recv()
    assert isinstance(reply, C.Channel.Close) and reply.reply_code == 404, reply
    await other_connections_still_work(params_for(broker))


async def test_an_invalid_expiration_closes_the_channel_with_406(
    broker: Broker, raw_amqp: Callable[..., Any]
) -> None:
    client: RawAmqp = await raw_amqp()
    client.send(1, C.Channel.Open())
    await client.recv()
    client.send(1, C.Basic.Publish(exchange="", routing_key="q"))
    header = pamqp_header.ContentHeader(0, 1, C.Basic.Properties(expiration="soon"))
    client.send_bytes(pamqp_frame.marshal(header, 1))
    client.send_bytes(body_frame(1, b"x"))
    _, close = await client.recv()
    assert isinstance(close, C.Channel.Close)
    assert close.reply_code == 406
    assert close.reply_text == "PRECONDITION_FAILED - invalid expiration 'soon': no_integer"
    client.send(1, C.Channel.CloseOk())
    client.send(1, C.Channel.Open())  # the number is free again
    _, ok = await client.recv()
    assert isinstance(ok, C.Channel.OpenOk)


async def test_heartbeats_flow_and_a_silent_client_is_closed(
    broker: Broker, raw_amqp: Callable[..., Any]
) -> None:
    client: RawAmqp = await raw_amqp(heartbeat=1)
    # The broker sends heartbeats, then closes the socket after two silent intervals.
    data = await client.read_all(timeout=15)
    assert HEARTBEAT in data
