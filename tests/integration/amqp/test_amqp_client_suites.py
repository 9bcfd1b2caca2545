"""What the client libraries' own integration suites (pika, aio-pika, aiormq, run by
``python -m benchmarks.client_suites``) expect of RabbitMQ 3.x and first found Wharf doing
differently; each behaviour was checked against RabbitMQ 3.10."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable
from typing import Any

import amqp
import pika
from pamqp import commands as C

from wharf.broker.server import Broker

from .raw_amqp import RawAmqp

DEAD_LETTER_WAIT_S = 10.0
POLL_S = 0.02


async def open_channel(raw_amqp: Callable[..., Any], number: int = 1, **kw: Any) -> RawAmqp:
    client: RawAmqp = await raw_amqp(**kw)
    client.send(number, C.Channel.Open())
    _, ok = await client.recv()
    assert isinstance(ok, C.Channel.OpenOk), ok
    return client


async def ask(client: RawAmqp, method: Any, channel: int = 1) -> Any:
    client.send(channel, method)
    _, frame = await client.recv()
    return frame


async def test_any_channel_number_opens_channel_max_limits_the_count(
    raw_amqp: Callable[..., Any],
) -> None:
    # RabbitMQ opens channel 65535 under channel_max 2047 (aiormq's test_bad_channel).
    client = await open_channel(raw_amqp, 65535)
    ok = await ask(client, C.Queue.Declare(queue="", exclusive=True), 65535)
    assert isinstance(ok, C.Queue.DeclareOk)
    # The limit is on how many are open.
    small: RawAmqp = await raw_amqp(channel_max=2)
    for n in (7, 4000):
        assert isinstance(await ask(small, C.Channel.Open(), n), C.Channel.OpenOk)
    small.send(9, C.Channel.Open())
    close = await small.expect_connection_close()
    assert close.reply_code == 530
    assert "reached the negotiated channel_max (2)" in close.reply_text


async def test_unbinding_a_missing_queue_or_exchange_succeeds(
    raw_amqp: Callable[..., Any],
) -> None:
    # aio-pika's RPC.close() unbinds its auto-delete result queue after cancelling the
    # queue's only consumer, which deleted it.
    client = await open_channel(raw_amqp)
    missing = f"missing-{uuid.uuid4().hex}"
    for method in (
        C.Queue.Unbind(queue=missing, exchange="amq.direct", routing_key="k"),
        C.Exchange.Unbind(destination=missing, source="amq.direct", routing_key="k"),
        C.Exchange.Unbind(destination="amq.direct", source=missing, routing_key="k"),
    ):
        ok = await ask(client, method)
        assert isinstance(ok, (C.Queue.UnbindOk, C.Exchange.UnbindOk)), ok
    assert isinstance(await ask(client, C.Queue.Declare(queue="q-unbind")), C.Queue.DeclareOk)
    ok = await ask(client, C.Queue.Unbind(queue="q-unbind", exchange=missing, routing_key="k"))
    assert isinstance(ok, C.Queue.UnbindOk)
    # The channel is still open.
    assert isinstance(await ask(client, C.Queue.Delete(queue="q-unbind")), C.Queue.DeleteOk)


async def test_the_default_exchange_refuses_passive_declare_and_unbind(
    raw_amqp: Callable[..., Any],
) -> None:
    # aiormq's test_channel_closed_reuse: exchange.declare("", passive=True) is 403.
    client = await open_channel(raw_amqp)
    close = await ask(client, C.Exchange.Declare(exchange="", passive=True))
    assert isinstance(close, C.Channel.Close)
    assert close.reply_code == 403
    client = await open_channel(raw_amqp)
    assert isinstance(await ask(client, C.Queue.Declare(queue="q-default")), C.Queue.DeclareOk)
    close = await ask(client, C.Queue.Unbind(queue="q-default", exchange="", routing_key="k"))
    assert isinstance(close, C.Channel.Close)
    assert close.reply_code == 403


async def test_redeclaring_with_another_exclusive_flag_is_405(
    raw_amqp: Callable[..., Any],
) -> None:
    # aiormq's test_exclusive_queue_locked: RabbitMQ treats the flag as the lock.
    for first, second in ((True, False), (False, True)):
        client = await open_channel(raw_amqp)
        name = f"q-{uuid.uuid4().hex}"
        ok = await ask(client, C.Queue.Declare(queue=name, exclusive=first))
        assert isinstance(ok, C.Queue.DeclareOk)
        close = await ask(client, C.Queue.Declare(queue=name, exclusive=second))
        assert isinstance(close, C.Channel.Close)
        assert close.reply_code == 405, close.reply_text
        assert close.reply_text.startswith(
            f"RESOURCE_LOCKED - cannot obtain exclusive access to locked queue '{name}'"
        )
    # Any other attribute that differs is still 406.
    client = await open_channel(raw_amqp)
    await ask(client, C.Queue.Declare(queue="q-attr", exclusive=True))
    close = await ask(client, C.Queue.Declare(queue="q-attr", exclusive=True, auto_delete=True))
    assert isinstance(close, C.Channel.Close)
    assert close.reply_code == 406


async def test_x_death_original_expiration_reads_as_the_expiration_sent(
    amqp_params: pika.ConnectionParameters,
) -> None:
    # aio-pika's test_expiration: RabbitMQ copies the expiration property (a string).
    def scenario() -> Any:
        with pika.BlockingConnection(amqp_params) as conn:
            ch = conn.channel()
            ch.queue_declare("dead")
            ch.queue_declare(
                "expiring",
                arguments={"x-dead-letter-exchange": "", "x-dead-letter-routing-key": "dead"},
            )
            ch.basic_publish(
                "", "expiring", b"soon", pika.BasicProperties(expiration="50", headers={"a": 1})
            )
            deadline = time.monotonic() + DEAD_LETTER_WAIT_S
            while time.monotonic() < deadline:
                method, props, body = ch.basic_get("dead", auto_ack=True)
                if method is not None:
                    return props, body
                conn.sleep(POLL_S)
            raise AssertionError("the message was not dead-lettered")

    props, body = await asyncio.to_thread(scenario)
    assert body == b"soon"
    (death,) = props.headers["x-death"]
    assert death["original-expiration"] == "50"
    assert death["reason"] == "expired"
    assert props.expiration is None


async def test_a_channel_deleting_its_consumed_queue_gets_delete_ok_before_cancel(
    broker: Broker,
) -> None:
    # kombu's test_ack_from_another_thread deletes the queue its consumer's channel reads;
    # py-amqp raises ConsumerCancelled out of queue_delete() if basic.cancel comes first.
    def scenario() -> list[str]:
        conn = amqp.Connection(f"127.0.0.1:{broker.amqp_port}", userid="guest", password="guest")
        conn.connect()
        try:
            ch = conn.channel()
            ch.queue_declare("q-consumed")
            cancelled: list[str] = []
            tag = ch.basic_consume("q-consumed", callback=print, on_cancel=cancelled.append)
            ch.queue_delete("q-consumed")
            assert cancelled == [], "basic.cancel came before queue.delete-ok"
            conn.drain_events(timeout=DEAD_LETTER_WAIT_S)
            assert cancelled == [tag]
            return cancelled
        finally:
            conn.close()

    await asyncio.to_thread(scenario)
