"""The user's max-channels and byte-rate quotas on AMQP connections, channel.flow and
connection.update-secret, with pika (docs/amqp.md)."""

from __future__ import annotations

import asyncio

import pika
import pika.exceptions
import pytest

from wharf.broker.server import Broker

INACTIVITY_S = 5.0


async def test_max_channels_counts_the_users_channels_over_its_connections(
    broker: Broker, amqp_params: pika.ConnectionParameters
) -> None:
    broker.user_limits.set("guest", "max-channels", 3)

    def scenario() -> None:
        with (
            pika.BlockingConnection(amqp_params) as first,
            pika.BlockingConnection(amqp_params) as second,
        ):
            a = first.channel()
            first.channel()
            second.channel()
            with pytest.raises(pika.exceptions.ConnectionClosedByBroker) as info:
                second.channel()
            assert info.value.reply_code == 530
            assert info.value.reply_text == (
                "NOT_ALLOWED - number of channels opened for user 'guest' has reached the "
                "maximum allowed user limit (3)"
            )
            # The second connection's channel went with it; a closed one frees its place.
            a.close()
            first.channel()
            first.channel()
            with pytest.raises(pika.exceptions.ConnectionClosedByBroker):
                first.channel()

    await asyncio.to_thread(scenario)
    usage = broker.user_limits.usage("guest")
    assert usage is None or usage.channels == 0


async def test_publish_and_consume_byte_rates_throttle_amqp_clients(
    broker: Broker, amqp_params: pika.ConnectionParameters
) -> None:
    # About a second's burst (core/quotas.py MIN_SPAN_S) is free: send well over it.
    broker.user_limits.set("guest", "max-publish-bytes-per-second", 20_000)
    broker.user_limits.set("guest", "max-consume-bytes-per-second", 20_000)
    body = b"x" * 10_000
    n = 6

    def scenario() -> None:
        with pika.BlockingConnection(amqp_params) as conn:
            ch = conn.channel()
            ch.queue_declare("rated")
            ch.confirm_delivery()
            for _ in range(n):
                ch.basic_publish("", "rated", body)
            events = ch.consume("rated", inactivity_timeout=INACTIVITY_S)
            for got, (method, _, received) in enumerate(events, 1):
                assert method is not None, f"only {got - 1} of {n} arrived"
                assert received == body
                ch.basic_ack(method.delivery_tag)
                if got == n:
                    break
            ch.cancel()

    await asyncio.to_thread(scenario)
    throttled = broker.user_limits.throttle_seconds
    assert throttled.get(("guest", "produce"), 0) > 0
    assert throttled.get(("guest", "consume"), 0) > 0


async def test_channel_flow_stops_and_resumes_deliveries(
    broker: Broker, amqp_params: pika.ConnectionParameters
) -> None:
    def scenario() -> None:
        with pika.BlockingConnection(amqp_params) as conn:
            ch = conn.channel()
            ch.queue_declare("flowq")
            got: list[bytes] = []
            ch.basic_consume("flowq", lambda c, m, p, b: got.append(b), auto_ack=True)
            assert ch.flow(False) is False
            for i in range(3):
                ch.basic_publish("", "flowq", str(i).encode())
            # A round trip after the publishes: the queue has dispatched what it could.
            assert ch.queue_declare("flowq", passive=True).method.message_count == 3
            conn.process_data_events(time_limit=0)
            assert got == []
            assert ch.flow(True) is True
            for _ in range(int(INACTIVITY_S / 0.05)):
                if len(got) == 3:
                    break
                conn.process_data_events(time_limit=0.05)
            assert got == [b"0", b"1", b"2"]

    await asyncio.to_thread(scenario)


async def test_update_secret_is_accepted_as_rabbitmqs_internal_users_do(
    broker: Broker, amqp_params: pika.ConnectionParameters
) -> None:
    """RabbitMQ's internal user database answers update-secret-ok whatever the secret
    (pika's and amqplib's own test suites send "new_secret"); a user deleted meanwhile
    is refused with 530."""
    users = broker.authenticator.users

    def scenario() -> None:
        with pika.BlockingConnection(amqp_params) as conn:
            conn.update_secret("guest", "rotation")
            conn.update_secret("new_secret", "reason")
            ch = conn.channel()
            ch.queue_declare("after-update")
            assert users.delete("guest")
            with pytest.raises(pika.exceptions.ConnectionClosedByBroker) as info:
                conn.update_secret("new_secret", "reason")
            assert info.value.reply_code == 530
            assert "Secret update was refused for user 'guest'" in info.value.reply_text

    await asyncio.to_thread(scenario)
