"""Publishing over TCP: confirms, publish_many, fire-and-forget, unroutable and
mandatory messages, and the errors a refused publish raises."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest

import wharf
from wharf.protocol import frames as F

TIMEOUT_S = 5.0
SMALL_MESSAGE_BYTES = 1024

Connect = Callable[..., Any]
RawFactory = Callable[..., Any]

small_messages = pytest.mark.parametrize(
    "settings_overrides", [{"max_message_bytes": SMALL_MESSAGE_BYTES}]
)


async def next_message(messages: wharf.Consumer) -> wharf.Message:
    return await asyncio.wait_for(anext(messages), TIMEOUT_S)


async def drain(conn: wharf.Connection, queue: str) -> list[wharf.Message]:
    out: list[wharf.Message] = []
    while (msg := await conn.get(queue, no_ack=True)) is not None:
        out.append(msg)
    return out


async def test_publish_returns_once_the_message_is_enqueued(
    conn: wharf.Connection, connect: Connect
) -> None:
    await conn.declare_queue("q")
    other: wharf.Connection = await connect()

    await conn.publish("", "q", b"confirmed")

    # Confirmed means routed and enqueued: any other client sees it at once.
    msg = await other.get("q", no_ack=True)
    assert msg is not None and msg.body == b"confirmed"


async def test_concurrent_publishes_all_confirm(conn: wharf.Connection) -> None:
    await conn.declare_queue("q")

    await asyncio.gather(*(conn.publish("", "q", str(i).encode()) for i in range(50)))

    assert (await conn.declare_queue("q", passive=True)).messages == 50


async def test_publish_many_applies_properties_to_each_message(conn: wharf.Connection) -> None:
    await conn.declare_queue("q")

    await conn.publish_many(
        "",
        "q",
        [b"a", b"b", b"c"],
        headers={"batch": 1},
        content_type="text/plain",
        correlation_id="corr",
        priority=3,
        persistent=True,
    )

    got = await drain(conn, "q")
    assert [m.body for m in got] == [b"a", b"b", b"c"]
    for m in got:
        assert m.headers == {"batch": 1}
        assert (m.content_type, m.correlation_id, m.priority, m.persistent) == (
            "text/plain",
            "corr",
            3,
            True,
        )
        assert (m.exchange, m.routing_key) == ("", "q")


async def test_publish_many_of_nothing_is_a_no_op(conn: wharf.Connection) -> None:
    await conn.declare_queue("q")
    await conn.publish_many("", "q", [])
    assert (await conn.declare_queue("q", passive=True)).messages == 0


async def test_fire_and_forget_messages_arrive_in_order(conn: wharf.Connection) -> None:
    await conn.declare_queue("q")
    expected = [str(i).encode() for i in range(20)]

    async with conn.consume("q") as messages:
        for body in expected[:10]:
            await conn.publish("", "q", body, confirm=False)
        await conn.publish_many("", "q", expected[10:], confirm=False)
        got = [await next_message(messages) for _ in expected]
        for m in got:
            await m.ack()

    assert [m.body for m in got] == expected


async def test_fire_and_forget_and_confirmed_publishes_interleave(conn: wharf.Connection) -> None:
    await conn.declare_queue("q")

    await conn.publish("", "q", b"1", confirm=False)
    await conn.publish("", "q", b"2")
    await conn.publish("", "q", b"3", confirm=False)
    await conn.publish_many("", "q", [b"4", b"5"])

    # The broker handles a connection's frames in order: all five are in by now.
    assert [m.body for m in await drain(conn, "q")] == [b"1", b"2", b"3", b"4", b"5"]


async def test_mandatory_fire_and_forget_unroutable_does_not_break_the_connection(
    conn: wharf.Connection,
) -> None:
    await conn.publish("amq.direct", "nowhere", b"m", mandatory=True, confirm=False)
    await conn.declare_queue("q")
    await conn.publish("", "q", b"next")
    assert [m.body for m in await drain(conn, "q")] == [b"next"]


async def test_unroutable_non_mandatory_is_confirmed_and_dropped(
    conn: wharf.Connection,
) -> None:
    await conn.declare_exchange("ex", "direct")

    await conn.publish("ex", "nobody-bound", b"dropped")
    await conn.publish_many("ex", "nobody-bound", [b"x", b"y"])
    await conn.publish("", "no-such-queue", b"dropped")

    await conn.declare_queue("q")
    await conn.bind_queue("q", "ex", "nobody-bound")
    assert await drain(conn, "q") == []


async def test_mandatory_unroutable_raises_unroutable(conn: wharf.Connection) -> None:
    await conn.declare_exchange("ex", "direct")

    with pytest.raises(wharf.Unroutable) as exc_info:
        await conn.publish("ex", "nowhere", b"back", mandatory=True, message_id="m1")
    err = exc_info.value
    assert err.code == 312
    assert err.details["exchange"] == "ex"
    assert err.details["routing_key"] == "nowhere"
    assert err.details["body"] == b"back"
    assert err.details["properties"] == {"message_id": "m1"}

    with pytest.raises(wharf.Unroutable):
        await conn.publish("", "no-such-queue", b"back", mandatory=True)

    # Routable mandatory messages are fine, and the connection is still usable.
    await conn.declare_queue("q")
    await conn.bind_queue("q", "ex", "somewhere")
    await conn.publish("ex", "somewhere", b"routed", mandatory=True)
    assert [m.body for m in await drain(conn, "q")] == [b"routed"]


async def test_mandatory_publish_many_unroutable_names_every_index(
    conn: wharf.Connection,
) -> None:
    with pytest.raises(wharf.Unroutable) as exc_info:
        await conn.publish_many("amq.direct", "nowhere", [b"a", b"b", b"c"], mandatory=True)
    assert exc_info.value.details["failed_indexes"] == [0, 1, 2]


async def test_one_failed_publish_does_not_fail_its_neighbours(conn: wharf.Connection) -> None:
    await conn.declare_queue("q")

    results = await asyncio.gather(
        conn.publish("", "q", b"1"),
        conn.publish("missing-exchange", "q", b"2"),
        conn.publish("", "q", b"3", mandatory=True),
        conn.publish("", "nowhere", b"4", mandatory=True),
        conn.publish("", "q", b"5"),
        return_exceptions=True,
    )

    assert all(results[i] == wharf.PublishResult() for i in (0, 2, 4))
    assert isinstance(results[1], wharf.NotFound)
    assert isinstance(results[3], wharf.Unroutable)
    assert [m.body for m in await drain(conn, "q")] == [b"1", b"3", b"5"]


async def test_user_id_must_match_the_authenticated_user(conn: wharf.Connection) -> None:
    await conn.declare_queue("q")

    with pytest.raises(wharf.PreconditionFailed) as exc_info:
        await conn.publish("", "q", b"spoofed", user_id="admin")
    assert exc_info.value.code == 406

    await conn.publish("", "q", b"honest", user_id="guest")
    got = await drain(conn, "q")
    assert [(m.body, m.user_id) for m in got] == [(b"honest", "guest")]


@pytest.mark.parametrize(
    ("prop", "value"),
    [("priority", 300), ("priority", -1), ("expiration", -5)],
)
async def test_out_of_range_property_is_invalid_argument(
    conn: wharf.Connection, prop: str, value: int
) -> None:
    await conn.declare_queue("q")

    with pytest.raises(wharf.InvalidArgument) as exc_info:
        bad: dict[str, Any] = {prop: value}
        await conn.publish("", "q", b"m", **bad)
    assert exc_info.value.code == 400

    await conn.publish("", "q", b"ok", priority=255, expiration=60_000)
    assert [m.body for m in await drain(conn, "q")] == [b"ok"]


async def test_publish_to_missing_exchange_is_not_found(conn: wharf.Connection) -> None:
    with pytest.raises(wharf.NotFound):
        await conn.publish("missing", "k", b"m")
    with pytest.raises(wharf.NotFound):
        await conn.publish_many("missing", "k", [b"a", b"b"])
    await conn.declare_exchange("missing", "fanout")
    await conn.publish("missing", "k", b"now-it-exists")


# -- message size ---------------------------------------------------------------------


@small_messages
async def test_oversized_message_raises_content_too_large(conn: wharf.Connection) -> None:
    assert conn.max_message_bytes == SMALL_MESSAGE_BYTES
    await conn.declare_queue("q")

    with pytest.raises(wharf.ContentTooLarge) as exc_info:
        await conn.publish("", "q", b"x" * (SMALL_MESSAGE_BYTES + 1))
    assert exc_info.value.code == 311
    with pytest.raises(wharf.ContentTooLarge):
        await conn.publish_many("", "q", [b"ok", b"x" * (SMALL_MESSAGE_BYTES + 1)])

    # Exactly at the limit is fine, and the connection is still usable.
    await conn.publish("", "q", b"x" * SMALL_MESSAGE_BYTES)
    got = await drain(conn, "q")
    assert [len(m.body) for m in got] == [SMALL_MESSAGE_BYTES]


@pytest.mark.parametrize(
    "settings_overrides", [{"max_frame_bytes": 96 * 1024, "max_message_bytes": 16 * 1024}]
)
async def test_publish_many_larger_than_a_frame_is_split(conn: wharf.Connection) -> None:
    await conn.declare_queue("q")
    payloads = [bytes([i]) * 10_000 for i in range(8)]  # 80 kB: more than one frame

    await conn.publish_many("", "q", payloads, message_id="big-batch")

    got = await drain(conn, "q")
    assert [m.body for m in got] == payloads
    assert {m.message_id for m in got} == {"big-batch"}


@small_messages
async def test_broker_nacks_oversized_publish_and_keeps_the_connection(
    raw_client: RawFactory, conn: wharf.Connection
) -> None:
    # A client that does not check the limit itself gets a PUBLISH_NACK 311.
    await conn.declare_queue("q")
    rc = await raw_client()
    rc.send(F.Publish(1, "", "q", None, b"x" * (SMALL_MESSAGE_BYTES + 1)))
    rc.send(F.Publish(2, "", "q", None, b"fits"))

    nack = await rc.recv()
    assert nack[0] == F.PUBLISH_NACK
    assert (nack[2], nack[3]) == (1, 311)
    confirm = await rc.recv()
    assert (confirm[0], confirm[2]) == (F.CONFIRM, 2)

    # Fire-and-forget: the failure comes back as a request-level ERROR with id 0.
    rc.send(F.Publish(0, "", "q", None, b"x" * (SMALL_MESSAGE_BYTES + 1)))
    error = await rc.recv()
    assert (error[0], error[1], error[2], error[4]) == (F.ERROR, 0, 311, False)

    assert [m.body for m in await drain(conn, "q")] == [b"fits"]


async def test_broker_nacks_every_seq_of_a_refused_publish_many(raw_client: RawFactory) -> None:
    rc = await raw_client()
    rc.send(F.PublishMany(1, "missing", "k", None, [b"a", b"b", b"c"]))

    nacks = [await rc.recv() for _ in range(3)]
    assert [(n[0], n[2], n[3]) for n in nacks] == [
        (F.PUBLISH_NACK, 1, 404),
        (F.PUBLISH_NACK, 2, 404),
        (F.PUBLISH_NACK, 3, 404),
    ]


async def test_return_comes_before_the_confirm_that_covers_it(raw_client: RawFactory) -> None:
    rc = await raw_client()
    rc.send(F.Publish(1, "amq.direct", "nowhere", {"type": "t"}, b"back", F.FLAG_MANDATORY))

    returned = await rc.recv()
    assert returned[0] == F.RETURN
    assert returned[2:9] == [1, 312, "NO_ROUTE", "amq.direct", "nowhere", {"type": "t"}, b"back"]
    confirm = await rc.recv()
    assert (confirm[0], confirm[2]) == (F.CONFIRM, 1)
