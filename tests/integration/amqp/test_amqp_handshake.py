"""The AMQP handshake: its timeout (handshake_timeout_ms, as for the native protocol),
and what connection.start and tune announce."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from pamqp import commands as C

from wharf.broker.server import Broker

from .raw_amqp import PROTOCOL_HEADER, RawAmqp, free_port

HANDSHAKE_TIMEOUT_MS = 3000


@pytest.fixture
def settings_overrides() -> dict[str, Any]:
    return {"amqp_port": free_port(), "handshake_timeout_ms": HANDSHAKE_TIMEOUT_MS}


async def test_a_stalled_handshake_is_closed(broker: Broker) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", broker.amqp_port)
    writer.write(PROTOCOL_HEADER)
    client = RawAmqp(reader, writer)
    _, start = await client.recv()
    assert isinstance(start, C.Connection.Start)
    # Nothing more is sent: the broker closes within the timeout plus one tick.
    assert await client.read_all(timeout=HANDSHAKE_TIMEOUT_MS / 1000 + 5) == b""
    await client.close()


async def test_start_and_tune_announce_what_rabbitmq_does(broker: Broker) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", broker.amqp_port)
    writer.write(PROTOCOL_HEADER)
    client = RawAmqp(reader, writer)
    _, start = await client.recv()
    assert isinstance(start, C.Connection.Start)
    assert (start.version_major, start.version_minor) == (0, 9)
    assert start.mechanisms == "PLAIN AMQPLAIN"
    caps = start.server_properties["capabilities"]
    for cap in (
        "publisher_confirms",
        "exchange_exchange_bindings",
        "basic.nack",
        "consumer_cancel_notify",
        "connection.blocked",
        "consumer_priorities",
        "authentication_failure_close",
        "per_consumer_qos",
    ):
        assert caps[cap] is True, cap
    client.send(0, C.Connection.StartOk(client_properties={}, response="\0guest\0guest"))
    _, tune = await client.recv()
    assert isinstance(tune, C.Connection.Tune)
    assert (tune.channel_max, tune.frame_max) == (2047, 131072)
    # A frame_max above the server's is refused as RabbitMQ does.
    client.send(0, C.Connection.TuneOk(2047, 200_000, 0))
    close = await client.expect_connection_close()
    assert close.reply_code == 530
    assert close.reply_text == (
        "NOT_ALLOWED - negotiated frame_max = 200000 is higher than the maximum allowed "
        "value (131072)"
    )
    await client.close()


async def test_a_wrong_password_is_refused_with_403(broker: Broker) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", broker.amqp_port)
    writer.write(PROTOCOL_HEADER)
    client = RawAmqp(reader, writer)
    await client.recv()
    caps = {"capabilities": {"authentication_failure_close": True}}
    client.send(0, C.Connection.StartOk(client_properties=caps, response="\0guest\0wrong"))
    close = await client.expect_connection_close()
    assert close.reply_code == 403
    assert close.reply_text.startswith("ACCESS_REFUSED - Login was refused")
    assert (close.class_id, close.method_id) == (0, 0)  # as RabbitMQ's
    await client.close()


async def test_a_wrong_password_without_the_capability_just_closes(broker: Broker) -> None:
    # RabbitMQ answers clients that did not announce authentication_failure_close by
    # closing the socket: older clients do not expect connection.close in the handshake.
    reader, writer = await asyncio.open_connection("127.0.0.1", broker.amqp_port)
    writer.write(PROTOCOL_HEADER)
    client = RawAmqp(reader, writer)
    await client.recv()
    client.send(0, C.Connection.StartOk(client_properties={}, response="\0guest\0wrong"))
    assert await client.read_all() == b""
    await client.close()


async def test_an_unknown_vhost_is_refused_with_530(broker: Broker) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", broker.amqp_port)
    writer.write(PROTOCOL_HEADER)
    client = RawAmqp(reader, writer)
    await client.recv()
    client.send(0, C.Connection.StartOk(client_properties={}, response="\0guest\0guest"))
    await client.recv()
    client.send(0, C.Connection.TuneOk(2047, 131072, 0))
    client.send(0, C.Connection.Open("/elsewhere"))
    close = await client.expect_connection_close()
    assert close.reply_code == 530
    assert close.reply_text == "NOT_ALLOWED - vhost /elsewhere not found"
    await client.close()
