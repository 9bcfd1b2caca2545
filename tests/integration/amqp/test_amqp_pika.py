"""pika's BlockingConnection against Wharf's AMQP listener: what a RabbitMQ client sees.

Each test's pika code runs in a worker thread (the broker serves in the test's loop).
"""

from __future__ import annotations

import asyncio
import base64
import datetime
import decimal
import json
import threading
import urllib.request
from typing import Any

import pika
import pika.exceptions
import pytest

import wharf
from wharf.broker.server import Broker

INACTIVITY_S = 5.0


def _naive(value: Any) -> Any:
    """pika versions read a timestamp as a naive or an aware UTC datetime."""
    if isinstance(value, datetime.datetime) and value.tzinfo is not None:
        return value.astimezone(datetime.UTC).replace(tzinfo=None)
    return value


def _get_all(ch: Any, queue: str, n: int) -> list[tuple[Any, Any, bytes]]:
    out: list[tuple[Any, Any, bytes]] = []
    for method, props, body in ch.consume(queue, inactivity_timeout=INACTIVITY_S):
        assert method is not None, f"only {len(out)} of {n} messages arrived"
        out.append((method, props, body))
        if len(out) == n:
            break
    return out


async def test_declare_publish_consume_ack(amqp_params: pika.ConnectionParameters) -> None:
    def scenario() -> None:
        with pika.BlockingConnection(amqp_params) as conn:
            ch = conn.channel()
            ch.exchange_declare("orders", "topic", durable=True)
            declared = ch.queue_declare("orders.eu", durable=True)
            assert declared.method.queue == "orders.eu"
            ch.queue_bind("orders.eu", "orders", "eu.*")
            for i in range(3):
                ch.basic_publish(
                    "orders",
                    "eu.new",
                    f"order-{i}".encode(),
                    pika.BasicProperties(content_type="text/plain", delivery_mode=2),
                )
            got = _get_all(ch, "orders.eu", 3)
            assert [b for _, _, b in got] == [b"order-0", b"order-1", b"order-2"]
            assert [m.delivery_tag for m, _, _ in got] == [1, 2, 3]
            assert all(p.content_type == "text/plain" and p.delivery_mode == 2 for _, p, _ in got)
            assert all(m.exchange == "orders" and m.routing_key == "eu.new" for m, _, _ in got)
            ch.basic_ack(3, multiple=True)
            ch.cancel()
            again = ch.queue_declare("orders.eu", passive=True)
            assert again.method.message_count == 0
            # A server-named queue, then basic.get and get-empty.
            q = ch.queue_declare("", exclusive=True).method.queue
            assert q.startswith("amq.gen-")
            ch.basic_publish("", q, b"one")
            method, _, body = ch.basic_get(q)
            assert body == b"one" and method.message_count == 0
            ch.basic_ack(method.delivery_tag)
            assert ch.basic_get(q) == (None, None, None)

    await asyncio.to_thread(scenario)


async def test_confirms_and_mandatory_return(amqp_params: pika.ConnectionParameters) -> None:
    def scenario() -> None:
        with pika.BlockingConnection(amqp_params) as conn:
            ch = conn.channel()
            ch.confirm_delivery()
            ch.queue_declare("durable.q", durable=True)
            for i in range(5):  # persistent on a durable queue: acked after the fsync
                ch.basic_publish("", "durable.q", b"m%d" % i, pika.BasicProperties(delivery_mode=2))
            with pytest.raises(pika.exceptions.UnroutableError) as info:
                ch.basic_publish("", "no-such-queue", b"lost", mandatory=True)
            returned = info.value.messages[0]
            assert returned.method.reply_code == 312
            assert returned.method.reply_text == "NO_ROUTE"
            assert returned.body == b"lost"
            # Unroutable but not mandatory: confirmed, dropped.
            ch.basic_publish("", "no-such-queue", b"dropped")
            assert ch.queue_declare("durable.q", passive=True).method.message_count == 5

    await asyncio.to_thread(scenario)


async def test_nack_requeue_and_reject(amqp_params: pika.ConnectionParameters) -> None:
    def scenario() -> None:
        with pika.BlockingConnection(amqp_params) as conn:
            ch = conn.channel()
            ch.queue_declare("work")
            ch.basic_publish("", "work", b"job")
            ((method, _, _),) = _get_all(ch, "work", 1)
            assert not method.redelivered
            ch.basic_nack(method.delivery_tag, requeue=True)
            ((method, _, body),) = _get_all(ch, "work", 1)
            assert method.redelivered and body == b"job"
            ch.basic_reject(method.delivery_tag, requeue=False)
            ch.cancel()
            assert ch.queue_declare("work", passive=True).method.message_count == 0

    await asyncio.to_thread(scenario)


async def test_unacked_messages_are_requeued_when_the_channel_closes(
    amqp_params: pika.ConnectionParameters,
) -> None:
    def scenario() -> None:
        with pika.BlockingConnection(amqp_params) as conn:
            ch = conn.channel()
            ch.queue_declare("held")
            ch.basic_publish("", "held", b"x")
            _get_all(ch, "held", 1)
            ch.close()
            other = conn.channel()
            ((method, _, body),) = _get_all(other, "held", 1)
            assert method.redelivered and method.delivery_tag == 1 and body == b"x"

    await asyncio.to_thread(scenario)


async def test_prefetch_count_limits_unacked_deliveries(
    amqp_params: pika.ConnectionParameters,
) -> None:
    def scenario() -> None:
        with pika.BlockingConnection(amqp_params) as conn:
            ch = conn.channel()
            ch.queue_declare("prefetched")
            for i in range(5):
                ch.basic_publish("", "prefetched", b"%d" % i)
            ch.basic_qos(prefetch_count=2)
            got: list[int] = []
            ch.basic_consume("prefetched", lambda _c, m, _p, _b: got.append(m.delivery_tag))
            # A window in which no third delivery may arrive.
            conn.process_data_events(time_limit=0.5)
            assert got == [1, 2]
            ch.basic_ack(2, multiple=True)
            conn.process_data_events(time_limit=0.5)
            assert got == [1, 2, 3, 4]

    await asyncio.to_thread(scenario)


async def test_a_soft_error_closes_only_the_channel(amqp_params: pika.ConnectionParameters) -> None:
    def scenario() -> None:
        with pika.BlockingConnection(amqp_params) as conn:
            ch = conn.channel()
            with pytest.raises(pika.exceptions.ChannelClosedByBroker) as info:
                ch.queue_declare("missing", passive=True)
            assert info.value.reply_code == 404
            assert info.value.reply_text == "NOT_FOUND - no queue 'missing' in vhost '/'"
            assert conn.is_open and ch.is_closed
            ch2 = conn.channel()
            ch2.queue_declare("q1")
            ch2.queue_declare("q1", durable=False)
            with pytest.raises(pika.exceptions.ChannelClosedByBroker) as info:
                ch2.queue_declare("q1", durable=True)  # inequivalent
            assert info.value.reply_code == 406
            assert info.value.reply_text.startswith("PRECONDITION_FAILED - ")
            ch3 = conn.channel()
            with pytest.raises(pika.exceptions.ChannelClosedByBroker) as info:
                ch3.basic_publish("no-exchange", "k", b"x")
                ch3.queue_declare("q1", passive=True)  # the close arrives by now
            assert info.value.reply_code == 404
            assert info.value.reply_text == "NOT_FOUND - no exchange 'no-exchange' in vhost '/'"
            ch4 = conn.channel()
            with pytest.raises(pika.exceptions.ChannelClosedByBroker) as info:
                ch4.basic_ack(42)
                ch4.queue_declare("q1", passive=True)
            assert info.value.reply_code == 406
            assert info.value.reply_text == "PRECONDITION_FAILED - unknown delivery tag 42"
            assert conn.channel().queue_declare("q1", passive=True).method.queue == "q1"

    await asyncio.to_thread(scenario)


async def test_a_hard_error_closes_the_connection(amqp_params: pika.ConnectionParameters) -> None:
    def scenario() -> None:
        conn = pika.BlockingConnection(amqp_params)
        ch = conn.channel()
        with pytest.raises(pika.exceptions.ConnectionClosedByBroker) as info:
            ch.basic_qos(prefetch_size=1)
        assert info.value.reply_code == 540
        assert info.value.reply_text == "NOT_IMPLEMENTED - prefetch_size!=0 (1)"
        assert conn.is_closed

    await asyncio.to_thread(scenario)


async def test_headers_and_bodies_cross_protocols_unchanged(
    amqp_params: pika.ConnectionParameters, conn: wharf.Connection
) -> None:
    await conn.declare_queue("from-amqp")
    await conn.declare_queue("from-native")
    body = bytes(range(256)) * 3
    when = datetime.datetime(2026, 12, 6, 17, 0, 0)
    amqp_headers: dict[str, Any] = {
        "s": "text é",
        "n": 42,
        "neg": -7,
        "big": 2**40,
        "yes": True,
        "none": None,
        "raw": b"\x00\xff\x10",
        "list": [1, "two", [None, False]],
        "nested": {"k": "v", "deeper": {"x": 1}},
        "dec": decimal.Decimal("12.34"),
        "ts": when,
    }
    props = pika.BasicProperties(
        content_type="application/octet-stream",
        content_encoding="identity",
        headers=amqp_headers,
        delivery_mode=2,
        priority=3,
        correlation_id="corr-1",
        reply_to="replies",
        expiration="60000",
        message_id="msg-1",
        timestamp=1_765_040_400,
        type="order.created",
        user_id="guest",
        app_id="shop",
    )

    def publish_amqp() -> None:
        with pika.BlockingConnection(amqp_params) as c:
            c.channel().basic_publish("", "from-amqp", body, props)

    await asyncio.to_thread(publish_amqp)
    got = await conn.get("from-amqp", no_ack=True)
    assert got is not None
    assert got.body == body
    assert got.content_type == "application/octet-stream"
    assert got.content_encoding == "identity"
    assert got.persistent is True
    assert got.priority == 3
    assert got.correlation_id == "corr-1"
    assert got.reply_to == "replies"
    assert got.expiration == 60000
    assert got.message_id == "msg-1"
    assert got.timestamp == 1_765_040_400_000  # epoch ms on the native side
    assert got.type == "order.created"
    assert got.user_id == "guest"
    assert got.app_id == "shop"
    h = got.headers
    for key in ("s", "n", "neg", "big", "yes", "none", "raw", "list", "nested"):
        assert h[key] == amqp_headers[key], key

    # The native SDK republishes what it got; pika reads it as it was sent.
    await conn.publish(
        "",
        "from-native",
        got.body,
        headers=h,
        content_type=got.content_type,
        message_id="native-1",
        timestamp=1_765_040_400_123,
        persistent=True,
        priority=5,
    )

    def consume_amqp() -> tuple[Any, bytes]:
        with pika.BlockingConnection(amqp_params) as c:
            method, p, b = c.channel().basic_get("from-native", auto_ack=True)
            assert method is not None
            return p, b

    p, b = await asyncio.to_thread(consume_amqp)
    assert b == body
    assert p.content_type == "application/octet-stream"
    assert p.message_id == "native-1"
    assert p.delivery_mode == 2 and p.priority == 5
    assert p.timestamp == 1_765_040_400
    for key, value in amqp_headers.items():
        assert _naive(p.headers[key]) == value, key


async def test_connections_api_shows_amqp_connections(
    amqp_params: pika.ConnectionParameters, broker: Broker
) -> None:
    opened = asyncio.Event()
    release = threading.Event()
    loop = asyncio.get_running_loop()

    def hold() -> None:
        with pika.BlockingConnection(amqp_params) as c:
            c.channel()
            c.channel()
            loop.call_soon_threadsafe(opened.set)
            while not release.is_set():
                c.process_data_events(time_limit=0.05)

    task = asyncio.ensure_future(asyncio.to_thread(hold))
    try:
        await asyncio.wait_for(opened.wait(), 10)

        def list_connections() -> Any:
            req = urllib.request.Request(
                f"http://127.0.0.1:{broker.http_port}/api/connections",
                headers={"Authorization": "Basic " + base64.b64encode(b"guest:guest").decode()},
            )
            with urllib.request.urlopen(req, timeout=10) as resp:
                return json.loads(resp.read())

        conns = await asyncio.to_thread(list_connections)
        (amqp,) = [c for c in conns if c["protocol"] == "amqp"]
        assert amqp["channels"] == 2
        assert amqp["user"] == "guest"
        assert amqp["state"] == "open"
        assert amqp["client_properties"]["product"] == "Pika Python Client Library"
        assert "version" in amqp["client_properties"]
    finally:
        release.set()
        await task


async def test_transactions_hold_publishes_and_acks_until_commit(
    amqp_params: pika.ConnectionParameters,
) -> None:
    def scenario() -> None:
        with pika.BlockingConnection(amqp_params) as conn:
            ch = conn.channel()
            ch.queue_declare("tx.q")
            ch.tx_select()
            ch.basic_publish("", "tx.q", b"a")
            assert ch.queue_declare("tx.q", passive=True).method.message_count == 0
            ch.tx_commit()
            assert ch.queue_declare("tx.q", passive=True).method.message_count == 1
            ch.basic_publish("", "tx.q", b"b")
            ch.tx_rollback()
            method, _, body = ch.basic_get("tx.q")
            assert body == b"a"
            ch.basic_ack(method.delivery_tag)
            ch.tx_rollback()  # the ack is undone: the message is still unacked
            ch.basic_ack(method.delivery_tag)
            ch.tx_commit()
            assert ch.queue_declare("tx.q", passive=True).method.message_count == 0
            assert ch.basic_get("tx.q") == (None, None, None)
            with pytest.raises(pika.exceptions.ChannelClosedByBroker) as info:
                ch.confirm_delivery()
            assert info.value.reply_code == 406
            assert info.value.reply_text == (
                "PRECONDITION_FAILED - cannot switch from tx to confirm mode"
            )

    await asyncio.to_thread(scenario)


async def test_deleting_a_queue_cancels_its_consumers(
    amqp_params: pika.ConnectionParameters,
) -> None:
    def scenario() -> None:
        with pika.BlockingConnection(amqp_params) as conn:
            ch = conn.channel()
            ch.queue_declare("doomed")
            tag = ch.basic_consume("doomed", lambda *_: None)
            assert tag in ch.consumer_tags
            conn.channel().queue_delete("doomed")
            # consumer_cancel_notify: pika learns it and forgets the consumer.
            deadline = 50
            while tag in ch.consumer_tags and deadline:
                conn.process_data_events(time_limit=0.1)
                deadline -= 1
            assert tag not in ch.consumer_tags
            assert ch.is_open

    await asyncio.to_thread(scenario)


async def test_recover_redelivers_unacked_messages(amqp_params: pika.ConnectionParameters) -> None:
    def scenario() -> None:
        with pika.BlockingConnection(amqp_params) as conn:
            ch = conn.channel()
            ch.queue_declare("recovered")
            ch.basic_publish("", "recovered", b"r")
            method, _, _ = ch.basic_get("recovered")
            assert not method.redelivered
            ch.basic_recover(requeue=True)
            method, _, body = ch.basic_get("recovered")
            assert method.redelivered and body == b"r"

    await asyncio.to_thread(scenario)
