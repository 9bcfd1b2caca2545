"""Names (queues, exchanges, binding and publish routing keys, consumer tags) are at most
255 bytes of UTF-8 (an AMQP short string), not 255 characters, on every way in: the
native protocol, the HTTP API and AMQP. The core decides (broker/core/names.py); a name
that fits is usable from all three."""

from __future__ import annotations

import asyncio
import base64
import json
from typing import Any
from urllib.parse import quote

import pika
import pytest

import wharf
from wharf.broker.server import Broker

TIMEOUT_S = 5.0
# 200 characters, 400 bytes in UTF-8: under the old character count, over the byte limit.
TOO_LONG = "é" * 200
# Exactly 255 bytes: 127 two-byte characters and one ASCII.
FITS = "é" * 127 + "q"
FITS_TAG = "ü" * 127 + "t"


async def http(broker: Broker, method: str, path: str, body: Any) -> tuple[int, Any]:
    data = json.dumps(body).encode()
    auth = base64.b64encode(b"guest:guest").decode()
    head = (
        f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n"
        f"Authorization: Basic {auth}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(data)}\r\n\r\n"
    )
    reader, writer = await asyncio.open_connection("127.0.0.1", broker.http_port)
    try:
        writer.write(head.encode() + data)
        async with asyncio.timeout(TIMEOUT_S):
            raw = await reader.read()
    finally:
        writer.close()
        await writer.wait_closed()
    status_line, _, rest = raw.partition(b"\r\n")
    return int(status_line.split()[1]), json.loads(rest.partition(b"\r\n\r\n")[2] or b"null")


async def test_a_multibyte_name_over_255_bytes_is_refused_natively(
    broker: Broker, conn: wharf.Connection
) -> None:
    assert len(TOO_LONG) == 200 and len(TOO_LONG.encode()) == 400
    with pytest.raises(wharf.InvalidArgument, match="queue name is 400 bytes in UTF-8"):
        await conn.declare_queue(TOO_LONG)
    with pytest.raises(wharf.InvalidArgument, match="exchange name is 400 bytes"):
        await conn.declare_exchange(TOO_LONG, "topic")
    q = (await conn.declare_queue("", exclusive=True)).name
    with pytest.raises(wharf.InvalidArgument, match="routing key is 400 bytes"):
        await conn.bind_queue(q, "amq.topic", TOO_LONG)
    with pytest.raises(wharf.InvalidArgument, match="consumer tag is 400 bytes"):
        async with conn.consume(q, consumer_tag=TOO_LONG):
            pass
    # A publish's routing key too: an AMQP consumer could not be given it whole.
    with pytest.raises(wharf.InvalidArgument, match="routing key is 400 bytes"):
        await conn.publish("amq.topic", TOO_LONG, b"x")
    assert TOO_LONG not in broker.queues


async def test_a_multibyte_name_over_255_bytes_is_refused_over_http(broker: Broker) -> None:
    status, body = await http(broker, "PUT", f"/api/queues/%2F/{quote(TOO_LONG)}", {})
    assert (status, body["code"]) == (400, 400), body
    assert "queue name is 400 bytes in UTF-8, longer than 255" in body["error"]
    status, body = await http(
        broker, "PUT", f"/api/exchanges/%2F/{quote(TOO_LONG)}", {"type": "direct"}
    )
    assert (status, body["code"]) == (400, 400), body
    status, _ = await http(broker, "PUT", "/api/queues/%2F/short", {})
    assert status == 201
    binding = {"source": "amq.direct", "destination": "short", "routing_key": TOO_LONG}
    status, body = await http(broker, "POST", "/api/bindings/%2F", binding)
    assert (status, body["code"]) == (400, 400), body
    assert "routing key is 400 bytes" in body["error"]
    publish = {"routing_key": TOO_LONG, "payload": "x", "payload_encoding": "string"}
    status, body = await http(broker, "POST", "/api/exchanges/%2F/amq.topic/publish", publish)
    assert (status, body["code"]) == (400, 400), body
    assert TOO_LONG not in broker.queues


async def test_a_name_of_exactly_255_bytes_works_on_every_way_in(
    broker: Broker, conn: wharf.Connection, amqp_params: pika.ConnectionParameters
) -> None:
    """127 two-byte characters and one more: 128 characters, 255 bytes."""
    status, _ = await http(broker, "PUT", f"/api/queues/%2F/{quote(FITS)}", {})
    assert status == 201
    await conn.declare_queue(FITS)
    await conn.bind_queue(FITS, "amq.direct", FITS)
    await conn.publish("amq.direct", FITS, b"native")

    def amqp_side() -> list[bytes]:
        with pika.BlockingConnection(amqp_params) as c:
            ch = c.channel()
            ch.queue_declare(FITS, passive=True)
            ch.basic_publish("amq.direct", FITS, b"amqp")
            got = []
            for method, _, body in ch.consume(FITS, auto_ack=True, inactivity_timeout=TIMEOUT_S):
                assert method is not None
                got.append(body)
                if len(got) == 2:
                    break
            ch.cancel()
            return got

    assert await asyncio.to_thread(amqp_side) == [b"native", b"amqp"]
    q = (await conn.declare_queue("", exclusive=True)).name
    async with conn.consume(q, consumer_tag=FITS_TAG):
        pass
