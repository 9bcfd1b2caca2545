"""Queue policies over TCP: dead-lettering with x-death, TTL, length limits, delivery limit."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

import wharf
from wharf.broker.server import Broker

from ..helpers import wait_until


async def _get(conn: wharf.Connection, queue: str, timeout: float = 5.0) -> wharf.Message:
    """Poll-free wait for one message: consume until it arrives."""
    async with conn.consume(queue, prefetch=1) as messages:
        msg = await asyncio.wait_for(messages.__anext__(), timeout)
        return msg


async def _dlx_setup(conn: wharf.Connection, **args: Any) -> None:
    await conn.declare_exchange("dlx", "fanout")
    await conn.declare_queue("dead")
    await conn.bind_queue("dead", "dlx", "")
    await conn.declare_queue("work", arguments={"x-dead-letter-exchange": "dlx", **args})


async def test_reject_without_requeue_dead_letters_with_x_death(conn: wharf.Connection) -> None:
    await _dlx_setup(conn)
    await conn.publish("", "work", b"poison", headers={"k": "v"}, message_id="m1")
    msg = await conn.get("work")
    assert msg is not None
    await msg.reject(requeue=False)
    dead = await _get(conn, "dead")
    assert dead.body == b"poison"
    assert dead.message_id == "m1"
    headers = dead.headers
    assert headers["k"] == "v"
    (death,) = headers["x-death"]
    assert death["queue"] == "work"
    assert death["reason"] == "rejected"
    assert death["count"] == 1
    assert death["exchange"] == ""
    assert death["routing-keys"] == ["work"]
    assert isinstance(death["time"], int)
    assert headers["x-first-death-queue"] == "work"
    assert headers["x-first-death-reason"] == "rejected"
    assert headers["x-first-death-exchange"] == ""
    assert dead.routing_key == "work"  # kept unless x-dead-letter-routing-key is set


async def test_dead_letter_routing_key_override(conn: wharf.Connection) -> None:
    await conn.declare_exchange("dlx-direct", "direct")
    await conn.declare_queue("parking")
    await conn.bind_queue("parking", "dlx-direct", "parked")
    await conn.declare_queue(
        "work2",
        arguments={"x-dead-letter-exchange": "dlx-direct", "x-dead-letter-routing-key": "parked"},
    )
    await conn.publish("", "work2", b"x")
    msg = await conn.get("work2")
    assert msg is not None
    await msg.nack(requeue=False)
    dead = await _get(conn, "parking")
    assert dead.routing_key == "parked" and dead.exchange == "dlx-direct"


async def test_retry_loop_grows_the_death_count(conn: wharf.Connection) -> None:
    # work --reject--> dlx --> wait (TTL 50 ms) --expired--> default exchange --> work
    await conn.declare_exchange("retry-dlx", "fanout")
    await conn.declare_queue(
        "wait",
        arguments={
            "x-message-ttl": 50,
            "x-dead-letter-exchange": "",
            "x-dead-letter-routing-key": "loop",
        },
    )
    await conn.bind_queue("wait", "retry-dlx", "")
    await conn.declare_queue("loop", arguments={"x-dead-letter-exchange": "retry-dlx"})
    await conn.publish("", "loop", b"again")
    async with conn.consume("loop", prefetch=1) as messages:
        for attempt in range(1, 4):
            msg = await asyncio.wait_for(messages.__anext__(), 5)
            deaths = {(d["queue"], d["reason"]): d["count"] for d in msg.headers.get("x-death", [])}
            if attempt > 1:
                assert deaths[("loop", "rejected")] == attempt - 1
                assert deaths[("wait", "expired")] == attempt - 1
            await msg.reject(requeue=False)


async def test_dead_letter_cycle_without_rejection_is_dropped(
    broker: Broker, conn: wharf.Connection
) -> None:
    # A queue that dead-letters expired messages back to itself: dropped, not looping.
    await conn.declare_queue(
        "selfloop", arguments={"x-message-ttl": 10, "x-dead-letter-exchange": ""}
    )
    await conn.publish("", "selfloop", b"x")
    await wait_until(lambda: broker.topology.dead_letter_cycles >= 1, what="a cycle dropped")
    assert broker.queues["selfloop"].ready_count == 0


async def test_queue_ttl_expires_and_dead_letters(conn: wharf.Connection) -> None:
    await _dlx_setup(conn, **{"x-message-ttl": 30})
    await conn.publish("", "work", b"stale")
    dead = await _get(conn, "dead")
    assert dead.body == b"stale"
    assert dead.headers["x-death"][0]["reason"] == "expired"
    assert await conn.get("work") is None


async def test_per_message_ttl_lower_wins_and_original_expiration(conn: wharf.Connection) -> None:
    await _dlx_setup(conn, **{"x-message-ttl": 60_000})
    await conn.publish("", "work", b"short", expiration=20)
    dead = await _get(conn, "dead")
    death = dead.headers["x-death"][0]
    assert death["reason"] == "expired"
    assert death["original-expiration"] == 20
    assert dead.expiration is None  # removed so it does not expire again downstream


async def test_ttl_zero_delivers_to_a_waiting_consumer_or_expires(conn: wharf.Connection) -> None:
    await conn.declare_queue("now", arguments={"x-message-ttl": 0})
    async with conn.consume("now", prefetch=10) as messages:
        await conn.publish("", "now", b"immediate")
        msg = await asyncio.wait_for(messages.__anext__(), 5)
        assert msg.body == b"immediate"
        await msg.ack()
    await conn.publish("", "now", b"nobody-waiting")
    await asyncio.sleep(0.05)
    assert await conn.get("now") is None


async def test_expired_messages_are_never_delivered(conn: wharf.Connection) -> None:
    await conn.declare_queue("ttlq", arguments={"x-message-ttl": 20})
    await conn.publish_many("", "ttlq", [b"a", b"b", b"c"])
    await asyncio.sleep(0.06)  # the TTL passing is what is tested
    async with conn.consume("ttlq", prefetch=10) as messages:
        # "fresh" goes to the consumer already waiting: a get after the publish could
        # come more than the 20 ms TTL later on a loaded machine, and rightly find nothing.
        await conn.publish("", "ttlq", b"fresh")
        msg = await asyncio.wait_for(messages.__anext__(), 5)
        assert msg.body == b"fresh"
        await msg.ack()


async def test_max_length_drop_head_dead_letters_oldest(conn: wharf.Connection) -> None:
    await _dlx_setup(conn, **{"x-max-length": 2})
    await conn.publish_many("", "work", [b"1", b"2", b"3"])
    dead = await _get(conn, "dead")
    assert dead.body == b"1"
    assert dead.headers["x-death"][0]["reason"] == "maxlen"
    bodies = []
    for _ in range(2):
        m = await conn.get("work")
        assert m is not None
        bodies.append(m.body)
        await m.ack()
    assert bodies == [b"2", b"3"]


async def test_max_length_bytes_drop_head(conn: wharf.Connection) -> None:
    await conn.declare_queue("bytesq", arguments={"x-max-length-bytes": 10})
    await conn.publish_many("", "bytesq", [b"aaaa", b"bbbb", b"cccc"])
    m = await conn.get("bytesq")
    assert m is not None and m.body == b"bbbb"


async def test_reject_publish_nacks_the_publisher(conn: wharf.Connection) -> None:
    await conn.declare_queue("full", arguments={"x-max-length": 1, "x-overflow": "reject-publish"})
    await conn.publish("", "full", b"fits")
    with pytest.raises(wharf.WharfError) as info:
        await conn.publish("", "full", b"refused")
    assert info.value.code == 506
    m = await conn.get("full")
    assert m is not None and m.body == b"fits"
    await m.ack()
    await conn.publish("", "full", b"room-again")


async def test_reject_publish_dlx_dead_letters_the_refused(conn: wharf.Connection) -> None:
    await _dlx_setup(conn, **{"x-max-length": 1, "x-overflow": "reject-publish-dlx"})
    await conn.publish("", "work", b"fits")
    with pytest.raises(wharf.WharfError):
        await conn.publish("", "work", b"refused")
    dead = await _get(conn, "dead")
    assert dead.body == b"refused"
    assert dead.headers["x-death"][0]["reason"] == "maxlen"


async def test_delivery_limit_dead_letters_after_too_many_returns(conn: wharf.Connection) -> None:
    await _dlx_setup(conn, **{"x-delivery-limit": 2})
    await conn.publish("", "work", b"flaky")
    for expected in (1, 2, 3):
        m = await conn.get("work")
        assert m is not None and m.delivery_count == expected
        await m.nack(requeue=True)
    assert await conn.get("work") is None
    dead = await _get(conn, "dead")
    assert dead.body == b"flaky"
    assert dead.headers["x-death"][0]["reason"] == "delivery_limit"


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("x-message-ttl", -1),
        ("x-message-ttl", "10"),
        ("x-max-length", -5),
        ("x-overflow", "drop-tail"),
        ("x-max-priority", 300),
        ("x-delivery-limit", 1.5),
        ("x-expires", 0),
        ("x-dead-letter-exchange", 5),
        ("x-single-active-consumer", "yes"),
    ],
)
async def test_invalid_argument_is_refused_naming_it(
    conn: wharf.Connection, name: str, value: Any
) -> None:
    with pytest.raises(wharf.InvalidArgument) as info:
        await conn.declare_queue("badargs", arguments={name: value})
    assert name in str(info.value)
    await conn.declare_queue("fine")  # the connection is still usable


@pytest.mark.parametrize("settings_overrides", [{}])
async def test_x_expires_deletes_an_unused_queue(broker: Broker, conn: wharf.Connection) -> None:
    await conn.declare_queue("ephemeral", arguments={"x-expires": 50})
    await asyncio.sleep(0.1)
    broker.topology.expire_unused_queues()  # the broker runs this every second
    assert "ephemeral" not in broker.queues
    with pytest.raises(wharf.NotFound):
        await conn.declare_queue("ephemeral", passive=True)
