"""What RabbitMQ clients read from Wharf where the value's AMQP type matters, not just its
value: x-death's ``count`` is a long (``l``), as RabbitMQ writes it; and what they are
told: connection.blocked/unblocked when a resource alarm is raised and cleared.

pika code runs in a worker thread (the broker serves in the test's loop).

The memory alarm's flood comes from a connection of its own and stops at the alarm: a
publish that arrives during an alarm is the last one the broker reads from that
connection, and a flood that went on past it filled the socket and blocked pika for good
(on a loaded machine, when the broker's once-a-second check raised the alarm mid-flood).
The test runs that check itself after every message, so the alarm comes at the same
message on any machine.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import pika
import pika.compat
import pika.exceptions
import pytest
from pamqp import body as pamqp_body
from pamqp import commands as C
from pamqp import header as pamqp_header

from wharf.broker.alarms import total_memory_bytes
from wharf.broker.server import Broker

from ...helpers import wait_until
from .raw_amqp import HEARTBEAT, RawAmqp, free_port


async def test_x_death_count_is_a_long(amqp_params: pika.ConnectionParameters) -> None:
    def scenario() -> None:
        with pika.BlockingConnection(amqp_params) as conn:
            ch = conn.channel()
            ch.queue_declare("shapes.dead")
            ch.queue_declare(
                "shapes.work",
                arguments={
                    "x-dead-letter-exchange": "",
                    "x-dead-letter-routing-key": "shapes.dead",
                },
            )
            ch.basic_publish("", "shapes.work", b"d")
            method, _, _ = ch.basic_get("shapes.work")
            ch.basic_reject(method.delivery_tag, requeue=False)
            for _ in range(50):
                method, props, body = ch.basic_get("shapes.dead", auto_ack=True)
                if method is not None:
                    break
                conn.process_data_events(time_limit=0.1)
            assert method is not None and body == b"d"
            (death,) = props.headers["x-death"]
            # pika reads an ``l`` as its ``long`` type and an ``I`` as a plain int.
            assert isinstance(death["count"], pika.compat.long), type(death["count"])
            assert death["count"] == 1
            assert death["reason"] == "rejected"

    await asyncio.to_thread(scenario)


MIB = 1024 * 1024
ALARM_LIMIT_BYTES = 8 * MIB
ALARM_BODY = b"m" * (64 * 1024)
# Alarms are checked on the broker's 1 s tick; raising and clearing take a few of them.
ALARM_TIMEOUT_S = 15.0
# The RSS backstop raises the memory alarm by half of ALARM_LIMIT_BYTES already (this
# process's RSS is far above it); a flood this long without an alarm fails.
FLOOD_LIMIT_BYTES = 4 * ALARM_LIMIT_BYTES
HUGE_DISK_LIMIT = 2**62


def _wait_for(conn: pika.BlockingConnection, check: Callable[[], bool]) -> None:
    deadline = time.monotonic() + ALARM_TIMEOUT_S
    while not check():
        assert time.monotonic() < deadline, "timed out"
        conn.process_data_events(time_limit=0.1)


def _params_with(params: pika.ConnectionParameters) -> pika.ConnectionParameters:
    # No blocked_connection_timeout: the test decides how long a block may last.
    return pika.ConnectionParameters(
        host=params.host, port=params.port, credentials=params.credentials
    )


@pytest.mark.parametrize(
    "settings_overrides",
    [
        {
            "amqp_port": free_port(),
            "heartbeat_s": 0,
            "memory_high_watermark": ALARM_LIMIT_BYTES / total_memory_bytes(),
        }
    ],
)
async def test_memory_alarm_blocks_and_unblocks_amqp_publishers(
    broker: Broker, amqp_params: pika.ConnectionParameters
) -> None:
    loop = asyncio.get_running_loop()

    async def queued_then_checked(sent: int) -> bool:
        """On the broker's loop: once the flood's ``sent`` messages are queued (or the
        alarm stopped reading them), the resource check the tick runs; True: raised."""
        await wait_until(
            lambda: broker.queues["alarm.flood"].ready_count >= sent or bool(broker.alarms),
            timeout=ALARM_TIMEOUT_S,
            what=f"{sent} flood messages queued",
        )
        broker.check_resources()
        return bool(broker.alarms)

    def alarm_raised(sent: int) -> bool:
        return asyncio.run_coroutine_threadsafe(queued_then_checked(sent), loop).result()

    def scenario() -> None:
        params = _params_with(amqp_params)
        with (
            pika.BlockingConnection(params) as flood,
            pika.BlockingConnection(params) as pub,
            pika.BlockingConnection(params) as admin,
        ):
            events: list[str] = []
            pub.add_on_connection_blocked_callback(
                lambda _c, frame: events.append(f"blocked:{frame.method.reason}")
            )
            pub.add_on_connection_unblocked_callback(lambda _c, _f: events.append("unblocked"))
            ch = pub.channel()
            ch.queue_declare("alarm.flood")
            flood_ch = flood.channel()
            sent = 0
            while not alarm_raised(sent):  # nothing reads the queue
                assert sent * len(ALARM_BODY) < FLOOD_LIMIT_BYTES, "no memory alarm"
                flood_ch.basic_publish("", "alarm.flood", ALARM_BODY)
                sent += 1
            assert events == []  # pub has not published during the alarm yet
            # The alarm is raised on the broker's tick; the next publish is told of it.
            deadline = time.monotonic() + ALARM_TIMEOUT_S
            while not events:
                assert time.monotonic() < deadline, "no connection.blocked"
                ch.basic_publish("", "alarm.flood", b"during")
                pub.process_data_events(time_limit=0.2)
            assert events == ["blocked:low on memory"]
            assert admin.channel().queue_purge("alarm.flood").method.message_count > 0
            _wait_for(pub, lambda: "unblocked" in events)
            assert events == ["blocked:low on memory", "unblocked"]
            ch.basic_publish("", "alarm.flood", b"after")  # reading again
            assert ch.queue_declare("alarm.flood", passive=True).method.message_count >= 1

    await asyncio.to_thread(scenario)


@pytest.mark.parametrize(
    "settings_overrides",
    [{"amqp_port": free_port(), "heartbeat_s": 0, "disk_free_limit_bytes": HUGE_DISK_LIMIT}],
)
async def test_disk_alarm_blocks_amqp_publishers_until_it_clears(
    broker: Broker, amqp_params: pika.ConnectionParameters
) -> None:
    monitor = broker.monitor
    assert monitor is not None

    def scenario() -> None:
        with pika.BlockingConnection(_params_with(amqp_params)) as conn:
            events: list[str] = []
            conn.add_on_connection_blocked_callback(
                lambda _c, frame: events.append(f"blocked:{frame.method.reason}")
            )
            conn.add_on_connection_unblocked_callback(lambda _c, _f: events.append("unblocked"))
            ch = conn.channel()
            ch.queue_declare("alarm.disk")
            conn.process_data_events(time_limit=0.2)
            assert events == []  # told when it publishes, not when it opens
            ch.basic_publish("", "alarm.disk", b"during")
            _wait_for(conn, lambda: bool(events))
            assert events == ["blocked:low on disk"]
            monitor.disk_free_limit_bytes = 0
            _wait_for(conn, lambda: "unblocked" in events)
            ch.basic_publish("", "alarm.disk", b"after")
            assert ch.queue_declare("alarm.disk", passive=True).method.message_count == 2

    await asyncio.to_thread(scenario)


BLOCKED_CAPABILITY = {"capabilities": {"connection.blocked": True}}
# The client's heartbeat interval in the tests below, and how long it stays blocked: two
# missed intervals would close an unblocked connection.
BLOCKED_HEARTBEAT_S = 1
BLOCKED_FOR_S = 4 * BLOCKED_HEARTBEAT_S
CLIENT_BEAT_EVERY_S = 0.25


def _publish(client: RawAmqp, queue: str, body: bytes) -> None:
    client.send(1, C.Basic.Publish(exchange="", routing_key=queue))
    client.send(1, pamqp_header.ContentHeader(0, len(body), C.Basic.Properties()))
    client.send(1, pamqp_body.ContentBody(body))


@pytest.mark.parametrize(
    "settings_overrides",
    [{"amqp_port": free_port(), "heartbeat_s": 0, "disk_free_limit_bytes": HUGE_DISK_LIMIT}],
)
async def test_blocked_is_sent_at_the_first_publish_with_rabbitmqs_reason(
    broker: Broker, raw_amqp: Callable[..., Any]
) -> None:
    """RabbitMQ tells a connection it is blocked when it publishes during an alarm (not
    when it opens: a client registers its listener after connecting), "low on disk"."""
    client: RawAmqp = await raw_amqp(client_properties=BLOCKED_CAPABILITY)
    client.send(1, C.Channel.Open())
    client.send(1, C.Queue.Declare(queue="blocked.q"))
    _, opened = await client.recv()
    _, declared = await client.recv()
    assert isinstance(opened, C.Channel.OpenOk), opened
    assert isinstance(declared, C.Queue.DeclareOk), declared
    _publish(client, "blocked.q", b"during")
    channel, blocked = await client.recv()
    assert (channel, type(blocked)) == (0, C.Connection.Blocked)
    assert blocked.reason == "low on disk"
    monitor = broker.monitor
    assert monitor is not None
    monitor.disk_free_limit_bytes = 0
    channel, unblocked = await client.recv(timeout=ALARM_TIMEOUT_S)
    assert (channel, type(unblocked)) == (0, C.Connection.Unblocked)
    client.send(1, C.Basic.Get(queue="blocked.q", no_ack=True))
    _, got = await client.recv()
    assert isinstance(got, C.Basic.GetOk)


@pytest.mark.parametrize(
    "settings_overrides",
    [{"amqp_port": free_port(), "heartbeat_s": 0, "disk_free_limit_bytes": HUGE_DISK_LIMIT}],
)
async def test_a_blocked_publisher_is_not_closed_for_missed_heartbeats(
    broker: Broker, raw_amqp: Callable[..., Any]
) -> None:
    """While a blocked publisher's socket is not read, its heartbeats cannot be seen: the
    broker does not count them as missed (RabbitMQ pauses its heartbeat monitor)."""
    client: RawAmqp = await raw_amqp(
        heartbeat=BLOCKED_HEARTBEAT_S, client_properties=BLOCKED_CAPABILITY
    )
    client.send(1, C.Channel.Open())
    _, opened = await client.recv()
    assert isinstance(opened, C.Channel.OpenOk), opened
    _publish(client, "", b"during")  # the default exchange, no queue: routed nowhere
    _, blocked = await client.recv()
    assert isinstance(blocked, C.Connection.Blocked), blocked
    loop = asyncio.get_running_loop()
    until = loop.time() + BLOCKED_FOR_S
    while loop.time() < until:  # the client beats as it should; the broker reads nothing
        client.send_bytes(HEARTBEAT)
        await asyncio.sleep(CLIENT_BEAT_EVERY_S)
    monitor = broker.monitor
    assert monitor is not None
    monitor.disk_free_limit_bytes = 0

    async def beat_until_unblocked() -> Any:
        while True:
            client.send_bytes(HEARTBEAT)
            try:
                return await client.recv(timeout=CLIENT_BEAT_EVERY_S)
            except TimeoutError:
                continue

    _, unblocked = await asyncio.wait_for(beat_until_unblocked(), ALARM_TIMEOUT_S)
    assert isinstance(unblocked, C.Connection.Unblocked), unblocked
    client.send(1, C.Basic.Get(queue="absent", no_ack=True))
    _, answer = await client.recv()
    assert isinstance(answer, C.Channel.Close) and answer.reply_code == 404, answer


EXPIRES_MS = 300
# Well under the broker's 1 s tick, so only a timer at the deadline passes.
EXPIRES_WAIT_S = 0.7


async def test_x_expires_deletes_an_unused_queue_on_time(
    amqp_params: pika.ConnectionParameters,
) -> None:
    """RabbitMQ deletes a queue x-expires after its last use: declared and never used,
    and after its last consumer is cancelled."""

    def gone(ch: Any, name: str) -> bool:
        try:
            ch.queue_declare(name, passive=True)
        except pika.exceptions.ChannelClosedByBroker as exc:
            assert exc.reply_code == 404
            return True
        return False

    def scenario() -> None:
        with pika.BlockingConnection(amqp_params) as conn:
            args = {"x-expires": EXPIRES_MS}
            ch = conn.channel()
            ch.queue_declare("expires.idle", arguments=args)
            ch.queue_declare("expires.consumed", arguments=args)
            tag = ch.basic_consume("expires.consumed", lambda *_: None)
            time.sleep(EXPIRES_WAIT_S)  # the broker's clock is what is tested
            assert not gone(ch, "expires.consumed")  # a consumer keeps it
            assert gone(ch, "expires.idle")
            ch = conn.channel()
            ch.basic_cancel(tag)
            time.sleep(EXPIRES_WAIT_S)
            assert gone(ch, "expires.consumed")

    await asyncio.to_thread(scenario)
