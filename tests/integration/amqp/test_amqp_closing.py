"""Closing, as amqplib's own test suite found it: the broker waits for the client to close
the socket after connection.close-ok, and a channel.close names the method that failed."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any, Final

from pamqp import commands as C
from pamqp import frame as pamqp_frame
from pamqp import header as pamqp_header

from .raw_amqp import RECV_TIMEOUT_S, RawAmqp, raw_frame

FRAME_BODY: Final = 3
# Publishes written after connection.close: megabytes, more than the broker reads at
# once, so that some are still unread in its socket when it answers close-ok.
PUBLISHES_AFTER_CLOSE: Final = 4000
BODY: Final = b"x" * 500


def publish_frames(channel: int, queue: str) -> bytes:
    return (
        pamqp_frame.marshal(C.Basic.Publish(exchange="", routing_key=queue), channel)
        + pamqp_frame.marshal(
            pamqp_header.ContentHeader(0, len(BODY), C.Basic.Properties()), channel
        )
        + raw_frame(FRAME_BODY, channel, BODY)
    )


async def read_to_eof(client: RawAmqp) -> bytes:
    """Every byte until the broker closes the socket; a reset raises."""
    out = b""
    while data := await asyncio.wait_for(client.reader.read(65536), RECV_TIMEOUT_S):
        out += data
    return out


async def test_close_ok_then_the_client_closes_the_socket(
    raw_amqp: Callable[..., Any],
) -> None:
    """amqplib writes connection.close at once but its channels' publishes from a buffer,
    so frames follow the close.  The broker answers close-ok and reads (and drops) the
    rest until the client closes: closing with unread data would reset the connection,
    and the client would get ECONNRESET instead of close-ok."""
    client: RawAmqp = await raw_amqp()
    client.send(1, C.Channel.Open())
    await client.recv()
    client.send(1, C.Queue.Declare(queue="", exclusive=True))
    _, ok = await client.recv()
    assert isinstance(ok, C.Queue.DeclareOk)
    client.send(0, C.Connection.Close(200, "bye", 0, 0))
    client.send_bytes(publish_frames(1, ok.queue) * PUBLISHES_AFTER_CLOSE)
    await client.writer.drain()  # the socket still reads: all of it goes out
    _, close_ok = await client.recv()
    assert isinstance(close_ok, C.Connection.CloseOk)
    client.writer.write_eof()
    assert await read_to_eof(client) == b""  # a clean end, not a reset


async def test_a_channel_error_names_the_method_that_failed(
    raw_amqp: Callable[..., Any],
) -> None:
    """basic.get and queue.purge of "" (the channel's last declared queue) on a channel
    that declared none: 404 with the method's class and method ids, as RabbitMQ."""
    client: RawAmqp = await raw_amqp()
    for number, method, ids in (
        (1, C.Basic.Get(queue=""), (60, 70)),
        (2, C.Queue.Purge(queue=""), (50, 30)),
    ):
        client.send(number, C.Channel.Open())
        await client.recv()
        client.send(number, method)
        channel, close = await client.recv()
        assert channel == number
        assert isinstance(close, C.Channel.Close)
        assert close.reply_code == 404
        assert close.reply_text == "NOT_FOUND - no previously declared queue"
        assert (close.class_id, close.method_id) == ids
