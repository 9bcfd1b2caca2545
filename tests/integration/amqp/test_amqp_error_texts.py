"""The reply codes and texts of AMQP channel errors, as RabbitMQ 3.10 sends them.

Every expected text below was taken from RabbitMQ 3.10 running the same operation.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pika
import pika.exceptions
import pytest

LOCKED = (
    "RESOURCE_LOCKED - cannot obtain exclusive access to locked queue 'excl' in vhost '/'. "
    "It could be originally declared on another connection or the exclusive property value "
    "does not match that of the original declaration."
)


def _closed_by(params: pika.ConnectionParameters, op: Callable[[Any], Any]) -> tuple[int, str]:
    """Run ``op(channel)`` on a fresh connection; the channel.close it causes."""
    with pika.BlockingConnection(params) as conn:
        ch = conn.channel()
        with pytest.raises(pika.exceptions.ChannelClosedByBroker) as info:
            op(ch)
            ch.queue_declare("probe-after", passive=True)  # the close arrives by now
        return info.value.reply_code, info.value.reply_text


async def test_queue_delete_if_unused_and_if_empty(
    amqp_params: pika.ConnectionParameters,
) -> None:
    def scenario() -> None:
        with pika.BlockingConnection(amqp_params) as conn:
            ch = conn.channel()
            ch.queue_declare("busy")
            ch.basic_consume("busy", lambda *a: None)
            ch.queue_declare("full")
            ch.basic_publish("", "full", b"x")
            ch.exchange_declare("ex")
            ch.queue_bind("full", "ex")
            assert _closed_by(amqp_params, lambda c: c.queue_delete("busy", if_unused=True)) == (
                406,
                "PRECONDITION_FAILED - queue 'busy' in vhost '/' in use",
            )
            assert _closed_by(amqp_params, lambda c: c.queue_delete("full", if_empty=True)) == (
                406,
                "PRECONDITION_FAILED - queue 'full' in vhost '/' not empty",
            )
            assert _closed_by(amqp_params, lambda c: c.exchange_delete("ex", if_unused=True)) == (
                406,
                "PRECONDITION_FAILED - exchange 'ex' in vhost '/' in use",
            )

    await asyncio.to_thread(scenario)


async def test_exclusive_queue_from_another_connection_is_locked(
    amqp_params: pika.ConnectionParameters,
) -> None:
    def scenario() -> None:
        with pika.BlockingConnection(amqp_params) as owner:
            ch = owner.channel()
            ch.queue_declare("excl", exclusive=True)
            ops: list[Callable[[Any], Any]] = [
                lambda c: c.queue_declare("excl", exclusive=True),
                lambda c: c.queue_declare("excl"),
                lambda c: c.queue_declare("excl", passive=True),
                lambda c: c.basic_consume("excl", lambda *a: None),
                lambda c: c.basic_get("excl"),
                lambda c: c.queue_purge("excl"),
                lambda c: c.queue_bind("excl", "amq.direct", "k"),
                lambda c: c.queue_delete("excl"),
            ]
            for op in ops:
                assert _closed_by(amqp_params, op) == (405, LOCKED)
            # The owner redeclaring it non-exclusive is refused with the same words.
            with pytest.raises(pika.exceptions.ChannelClosedByBroker) as info:
                ch.queue_declare("excl")
            assert (info.value.reply_code, info.value.reply_text) == (405, LOCKED)

    await asyncio.to_thread(scenario)


async def test_inequivalent_redeclares(amqp_params: pika.ConnectionParameters) -> None:
    def scenario() -> None:
        with pika.BlockingConnection(amqp_params) as conn:
            ch = conn.channel()
            ch.queue_declare("q", durable=True, arguments={"x-message-ttl": 5})
            ch.exchange_declare("ex", "direct")
            # A difference in an argument RabbitMQ does not compare is accepted.
            ch.queue_declare("q", durable=True, arguments={"x-message-ttl": 5, "x-foo": 1})
            ch.exchange_declare("ex", "direct", arguments={"x-foo": "y"})
            # amq.* exchanges may be redeclared as they are.
            ch.exchange_declare("amq.direct", "direct", durable=True)
        pre = "PRECONDITION_FAILED - inequivalent arg"
        cases: list[tuple[Callable[[Any], Any], str]] = [
            (
                lambda c: c.queue_declare("q", arguments={"x-message-ttl": 5}),
                f"{pre} 'durable' for queue 'q' in vhost '/': received 'false' but current "
                "is 'true'",
            ),
            (
                lambda c: c.queue_declare(
                    "q", durable=True, auto_delete=True, arguments={"x-message-ttl": 5}
                ),
                f"{pre} 'auto_delete' for queue 'q' in vhost '/': received 'true' but current "
                "is 'false'",
            ),
            (
                lambda c: c.queue_declare("q", durable=True, arguments={"x-message-ttl": 6}),
                f"{pre} 'x-message-ttl' for queue 'q' in vhost '/': received '6' but current "
                "is '5'",
            ),
            (
                lambda c: c.queue_declare("q", durable=True),
                f"{pre} 'x-message-ttl' for queue 'q' in vhost '/': received none but current "
                "is the value '5' of type 'signedint'",
            ),
            (
                lambda c: c.queue_declare(
                    "q", durable=True, arguments={"x-message-ttl": 5, "x-max-length": 3}
                ),
                f"{pre} 'x-max-length' for queue 'q' in vhost '/': received the value '3' of "
                "type 'signedint' but current is none",
            ),
            (
                lambda c: c.exchange_declare("ex", "fanout"),
                f"{pre} 'type' for exchange 'ex' in vhost '/': received 'fanout' but current "
                "is 'direct'",
            ),
            (
                lambda c: c.exchange_declare("ex", "direct", durable=True),
                f"{pre} 'durable' for exchange 'ex' in vhost '/': received 'true' but current "
                "is 'false'",
            ),
            (
                lambda c: c.exchange_declare("ex", "direct", arguments={"alternate-exchange": "a"}),
                f"{pre} 'alternate-exchange' for exchange 'ex' in vhost '/': received the value "
                "'a' of type 'longstr' but current is none",
            ),
            (
                lambda c: c.exchange_declare("amq.direct", "fanout", durable=True),
                f"{pre} 'type' for exchange 'amq.direct' in vhost '/': received 'fanout' but "
                "current is 'direct'",
            ),
        ]
        for op, text in cases:
            assert _closed_by(amqp_params, op) == (406, text)

    await asyncio.to_thread(scenario)


async def test_not_found_and_access_refused_texts(amqp_params: pika.ConnectionParameters) -> None:
    def scenario() -> None:
        with pika.BlockingConnection(amqp_params) as conn:
            conn.channel().exchange_declare("internal", internal=True)
            conn.channel().queue_declare("q")
        no_queue = "NOT_FOUND - no queue 'nope' in vhost '/'"
        no_exchange = "NOT_FOUND - no exchange 'nope' in vhost '/'"
        default = "ACCESS_REFUSED - operation not permitted on the default exchange"
        cases: list[tuple[Callable[[Any], Any], int, str]] = [
            (lambda c: c.queue_declare("nope", passive=True), 404, no_queue),
            (lambda c: c.exchange_declare("nope", passive=True), 404, no_exchange),
            (lambda c: c.basic_publish("nope", "k", b"x"), 404, no_exchange),
            (lambda c: c.queue_bind("q", "nope"), 404, no_exchange),
            (lambda c: c.queue_bind("nope", "amq.direct"), 404, no_queue),
            (lambda c: c.basic_get("nope"), 404, no_queue),
            (lambda c: c.queue_purge("nope"), 404, no_queue),
            (
                lambda c: c.queue_declare("amq.foo"),
                403,
                "ACCESS_REFUSED - queue name 'amq.foo' contains reserved prefix 'amq.*'",
            ),
            (
                lambda c: c.exchange_declare("amq.foo"),
                403,
                "ACCESS_REFUSED - exchange name 'amq.foo' contains reserved prefix 'amq.*'",
            ),
            (
                lambda c: c.exchange_delete("amq.direct"),
                403,
                "ACCESS_REFUSED - deletion of system exchange 'amq.direct' in vhost '/' "
                "not allowed",
            ),
            (lambda c: c.exchange_delete(""), 403, default),
            (lambda c: c.queue_bind("q", "", "k"), 403, default),
            (lambda c: c.queue_bind("nope", "", "k"), 403, default),
            (lambda c: c.queue_unbind("q", "", "k"), 403, default),
            (lambda c: c.queue_unbind("nope", ""), 403, default),
            (
                lambda c: c.basic_publish("internal", "k", b"x"),
                403,
                "ACCESS_REFUSED - cannot publish to internal exchange 'internal' in vhost '/'",
            ),
        ]
        for op, code, text in cases:
            assert _closed_by(amqp_params, op) == (code, text)
        with pika.BlockingConnection(amqp_params) as conn:
            with pytest.raises(pika.exceptions.ConnectionClosedByBroker) as info:
                conn.channel().exchange_declare("x", "bogus")
            assert (info.value.reply_code, info.value.reply_text) == (
                503,
                "COMMAND_INVALID - unknown exchange type 'bogus'",
            )

    await asyncio.to_thread(scenario)
