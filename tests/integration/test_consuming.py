"""Consuming over TCP: prefetch, round-robin, exclusive consumers, cancel, get,
ack/nack/reject, requeue to the original position, connection loss, ack errors,
timeouts around the iterator, and message properties end to end."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import pytest

import wharf
from wharf.protocol import frames as F

TIMEOUT_S = 5.0
# How long "nothing more arrives" is watched for; used sparingly.
QUIET_S = 0.2

Connect = Callable[..., Any]


async def next_message(messages: wharf.Consumer) -> wharf.Message:
    return await asyncio.wait_for(anext(messages), TIMEOUT_S)


async def take(messages: wharf.Consumer, n: int) -> list[wharf.Message]:
    return [await next_message(messages) for _ in range(n)]


async def assert_nothing_arrives(messages: wharf.Consumer) -> None:
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(anext(messages), QUIET_S)


async def wait_ready_count(conn: wharf.Connection, queue: str, expected: int) -> None:
    """Wait (one round trip per probe, no sleeping) until ``queue`` has ``expected``
    ready messages: the broker notices a closed socket asynchronously."""
    async with asyncio.timeout(TIMEOUT_S):
        while (await conn.declare_queue(queue, passive=True)).messages != expected:
            pass


def bodies(msgs: list[wharf.Message]) -> list[bytes]:
    return [m.body for m in msgs]


async def declare_with(conn: wharf.Connection, queue: str, payloads: list[bytes]) -> None:
    await conn.declare_queue(queue)
    await conn.publish_many("", queue, payloads)


# -- prefetch, round-robin, exclusive ------------------------------------------------


async def test_prefetch_limits_unacked_deliveries(conn: wharf.Connection) -> None:
    await declare_with(conn, "q", [b"1", b"2", b"3", b"4", b"5"])

    async with conn.consume("q", prefetch=2) as messages:
        first, second = await take(messages, 2)
        assert bodies([first, second]) == [b"1", b"2"]
        # Only two went out: three are still ready and none is buffered in the SDK.
        assert (await conn.declare_queue("q", passive=True)).messages == 3
        assert len(messages) == 0

        await first.ack()
        third = await next_message(messages)
        assert third.body == b"3"
        assert (await conn.declare_queue("q", passive=True)).messages == 2

        await second.ack()
        await third.ack()
        assert bodies(await take(messages, 2)) == [b"4", b"5"]


async def test_prefetch_one_delivers_strictly_one_at_a_time(conn: wharf.Connection) -> None:
    await declare_with(conn, "q", [b"1", b"2"])

    async with conn.consume("q", prefetch=1) as messages:
        first = await next_message(messages)
        await assert_nothing_arrives(messages)
        await first.ack()
        assert (await next_message(messages)).body == b"2"


async def test_round_robin_across_two_connections(conn: wharf.Connection, connect: Connect) -> None:
    await conn.declare_queue("work")
    other: wharf.Connection = await connect()

    async with conn.consume("work", prefetch=10) as a, other.consume("work", prefetch=10) as b:
        await conn.publish_many("", "work", [str(i).encode() for i in range(10)])
        got_a, got_b = await asyncio.gather(take(a, 5), take(b, 5))

    assert sorted(bodies(got_a) + bodies(got_b), key=int) == [str(i).encode() for i in range(10)]
    # Strict alternation: one consumer has the even messages, the other the odd ones.
    parities = {int(m.body) % 2 for m in got_a}, {int(m.body) % 2 for m in got_b}
    assert sorted(parities, key=min) == [{0}, {1}]


async def test_consumer_without_credit_is_skipped(conn: wharf.Connection, connect: Connect) -> None:
    await conn.declare_queue("work")
    other: wharf.Connection = await connect()

    async with conn.consume("work", prefetch=1) as slow, other.consume("work", prefetch=10) as fast:
        await conn.publish_many("", "work", [str(i).encode() for i in range(6)])
        held = await next_message(slow)
        got_fast = await take(fast, 5)
        # The slow consumer holds one unacked message: the rest went to the other.
        assert sorted([held.body, *bodies(got_fast)]) == [str(i).encode() for i in range(6)]
        assert len(slow) == 0
        assert (await conn.declare_queue("work", passive=True)).messages == 0
        await held.ack()
        for m in got_fast:
            await m.ack()


async def test_exclusive_consumer_is_released_when_its_connection_closes(
    conn: wharf.Connection, connect: Connect
) -> None:
    await conn.declare_queue("q")
    holder: wharf.Connection = await connect()
    await holder.consume("q", exclusive=True)

    await holder.close()

    async with asyncio.timeout(TIMEOUT_S):
        while (await conn.declare_queue("q", passive=True)).consumers:
            pass
    consumer = await conn.consume("q", exclusive=True)
    await consumer.cancel()


async def test_exclusive_consumer(conn: wharf.Connection, connect: Connect) -> None:
    await conn.declare_queue("q")
    other: wharf.Connection = await connect()

    exclusive = await conn.consume("q", exclusive=True)
    with pytest.raises(wharf.ResourceLocked):
        await other.consume("q")
    with pytest.raises(wharf.ResourceLocked):
        await conn.consume("q")  # the same connection is no exception

    await exclusive.cancel()
    plain = await other.consume("q")
    # A queue with consumers cannot get an exclusive one.
    with pytest.raises(wharf.ResourceLocked, match="queue 'q' in exclusive use") as refused:
        await conn.consume("q", exclusive=True)
    # The core's one refusal (the AMQP listener answers it 403, as RabbitMQ).
    assert refused.value.details == {"queue": "q", "reason": "exclusive-use"}
    await plain.cancel()


async def test_consume_missing_queue_is_not_found(conn: wharf.Connection) -> None:
    with pytest.raises(wharf.NotFound):
        await conn.consume("missing")
    await conn.declare_queue("q")  # the connection is still usable


async def test_custom_consumer_tag_and_duplicate_tag(conn: wharf.Connection) -> None:
    await conn.declare_queue("q")
    await conn.publish("", "q", b"m")

    consumer = await conn.consume("q", consumer_tag="my-tag")
    assert consumer.consumer_tag == "my-tag"
    with pytest.raises(wharf.PreconditionFailed):
        await conn.consume("q", consumer_tag="my-tag")
    assert (await next_message(consumer)).body == b"m"
    await consumer.cancel()


async def test_no_ack_consumer(conn: wharf.Connection) -> None:
    await declare_with(conn, "q", [b"1", b"2", b"3"])

    async with conn.consume("q", no_ack=True, prefetch=1) as messages:
        # prefetch does not hold back no_ack deliveries: there is nothing to ack.
        got = await take(messages, 3)
        assert bodies(got) == [b"1", b"2", b"3"]
        assert all(not m.redelivered and m.delivery_count == 1 for m in got)
        await got[0].ack()  # nothing to settle: a no-op, not an error

    assert await conn.declare_queue("q", passive=True) == wharf.QueueInfo("q", 0, 0)


# -- cancel ------------------------------------------------------------------------------


async def test_cancel_stops_deliveries(conn: wharf.Connection) -> None:
    await conn.declare_queue("q")

    async with conn.consume("q") as messages:
        await conn.publish("", "q", b"while-consuming")
        msg = await next_message(messages)
        await msg.ack()
    assert not messages.active
    with pytest.raises(StopAsyncIteration):
        await anext(messages)

    await conn.publish("", "q", b"after-cancel")
    assert (await conn.declare_queue("q", passive=True)).messages == 1
    later = await conn.get("q", no_ack=True)
    assert later is not None and later.body == b"after-cancel"


async def test_cancel_keeps_handed_out_deliveries_and_requeues_buffered_ones(
    conn: wharf.Connection,
) -> None:
    await declare_with(conn, "q", [b"1", b"2", b"3"])

    consumer = await conn.consume("q", prefetch=10)
    first = await next_message(consumer)
    # Wait until the other two are buffered in the SDK (delivered, not handed out).
    async with asyncio.timeout(TIMEOUT_S):
        while len(consumer) < 2:
            await conn.declare_queue("q", passive=True)
    await consumer.cancel()

    # The two never handed out are back at their places; the first is still ours.
    assert (await conn.declare_queue("q", passive=True)).messages == 2
    await first.ack()  # acking after cancel works, as in AMQP
    rest = [await conn.get("q", no_ack=True) for _ in range(3)]
    assert [m.body if m else None for m in rest] == [b"2", b"3", None]


# -- get -----------------------------------------------------------------------------------


async def test_get(conn: wharf.Connection) -> None:
    await conn.declare_queue("q")
    assert await conn.get("q") is None

    await conn.publish("", "q", b"m", message_id="id-1")
    msg = await conn.get("q")
    assert msg is not None
    assert (msg.body, msg.message_id, msg.exchange, msg.routing_key) == (b"m", "id-1", "", "q")
    assert (msg.redelivered, msg.delivery_count) == (False, 1)
    # Unacked: not ready any more, not given out twice.
    assert await conn.get("q") is None

    await msg.ack()
    assert await conn.declare_queue("q", passive=True) == wharf.QueueInfo("q", 0, 0)


async def test_get_no_ack_removes_the_message(conn: wharf.Connection, connect: Connect) -> None:
    await declare_with(conn, "q", [b"1", b"2"])

    msg = await conn.get("q", no_ack=True)
    assert msg is not None and msg.body == b"1"
    await msg.ack()  # no-op

    await conn.close()
    other: wharf.Connection = await connect()
    assert await other.declare_queue("q", passive=True) == wharf.QueueInfo("q", 1, 0)


async def test_unacked_get_is_requeued_when_its_connection_closes(
    conn: wharf.Connection, connect: Connect
) -> None:
    await declare_with(conn, "q", [b"1", b"2"])
    getter: wharf.Connection = await connect()
    held = await getter.get("q")
    assert held is not None and held.body == b"1"

    await getter.close()

    await wait_ready_count(conn, "q", 2)
    again = await conn.get("q", no_ack=True)
    assert again is not None
    assert (again.body, again.redelivered, again.delivery_count) == (b"1", True, 2)


# -- ack, nack, reject -------------------------------------------------------------------


@pytest.mark.parametrize("settle", ["nack", "reject"])
async def test_requeue_redelivers_with_redelivered_flag(
    conn: wharf.Connection, settle: str
) -> None:
    await declare_with(conn, "q", [b"m"])

    async with conn.consume("q") as messages:
        first = await next_message(messages)
        assert (first.redelivered, first.delivery_count) == (False, 1)
        if settle == "nack":
            await first.nack(requeue=True)
        else:
            await first.reject(requeue=True)

        again = await next_message(messages)
        assert (again.body, again.redelivered, again.delivery_count) == (b"m", True, 2)
        await again.nack()  # requeue is the default
        third = await next_message(messages)
        assert (third.redelivered, third.delivery_count) == (True, 3)
        await third.ack()

    assert await conn.declare_queue("q", passive=True) == wharf.QueueInfo("q", 0, 0)


@pytest.mark.parametrize("settle", ["nack", "reject"])
async def test_settle_without_requeue_drops(conn: wharf.Connection, settle: str) -> None:
    await declare_with(conn, "q", [b"drop-me", b"keep"])

    async with conn.consume("q", prefetch=1) as messages:
        msg = await next_message(messages)
        assert msg.body == b"drop-me"
        if settle == "nack":
            await msg.nack(requeue=False)
        else:
            await msg.reject(requeue=False)
        kept = await next_message(messages)
        assert (kept.body, kept.redelivered) == (b"keep", False)
        await kept.ack()

    assert await conn.declare_queue("q", passive=True) == wharf.QueueInfo("q", 0, 0)
    assert await conn.get("q") is None


async def test_nack_multiple_requeues_all_up_to_the_tag_in_order(conn: wharf.Connection) -> None:
    await declare_with(conn, "q", [b"1", b"2", b"3", b"4"])

    async with conn.consume("q", prefetch=3) as messages:
        got = await take(messages, 3)
        await got[2].nack(multiple=True, requeue=True)

        again = await take(messages, 3)
        assert bodies(again) == [b"1", b"2", b"3"]
        assert all(m.redelivered and m.delivery_count == 2 for m in again)
        await again[2].ack(multiple=True)

        last = await next_message(messages)
        assert (last.body, last.redelivered) == (b"4", False)
        await last.ack()

    assert await conn.declare_queue("q", passive=True) == wharf.QueueInfo("q", 0, 0)


async def test_ack_multiple_settles_everything_up_to_the_tag(
    conn: wharf.Connection, connect: Connect
) -> None:
    await declare_with(conn, "q", [b"1", b"2", b"3"])
    consumer_conn: wharf.Connection = await connect()

    async with consumer_conn.consume("q", prefetch=3) as messages:
        got = await take(messages, 3)
        await got[1].ack(multiple=True)  # acks 1 and 2, not 3
    await consumer_conn.close()

    await wait_ready_count(conn, "q", 1)
    left = await conn.get("q", no_ack=True)
    assert left is not None and (left.body, left.redelivered) == (b"3", True)


async def test_ack_multiple_covering_a_cancelled_consumer_frees_credit(
    conn: wharf.Connection,
) -> None:
    await declare_with(conn, "q", [b"1", b"2", b"3"])
    first_consumer = await conn.consume("q", prefetch=1)
    first = await next_message(first_consumer)
    await first_consumer.cancel()  # 1 stays unacked on the connection

    async with conn.consume("q", prefetch=1) as messages:
        second = await next_message(messages)
        await second.ack(multiple=True)  # settles 1 and 2: room for 3
        third = await asyncio.wait_for(anext(messages), QUIET_S)  # at once, or never
        assert (first.body, second.body, third.body) == (b"1", b"2", b"3")
        await third.ack()


async def test_requeued_message_returns_to_its_original_position(conn: wharf.Connection) -> None:
    await declare_with(conn, "q", [b"1", b"2", b"3"])

    async with conn.consume("q", prefetch=2) as messages:
        first, second = await take(messages, 2)
        await first.nack(requeue=True)
        # 1 comes back ahead of 3, which was published after it.
        again = await next_message(messages)
        assert (again.body, again.redelivered, again.delivery_count) == (b"1", True, 2)
        await second.ack()
        await again.ack()
        third = await next_message(messages)
        assert (third.body, third.redelivered, third.delivery_count) == (b"3", False, 1)
        await third.ack()


async def test_requeue_order_follows_publish_order_not_requeue_order(
    conn: wharf.Connection,
) -> None:
    await declare_with(conn, "q", [b"1", b"2", b"3", b"4"])
    held = [await conn.get("q") for _ in range(3)]
    assert [m.body if m else None for m in held] == [b"1", b"2", b"3"]

    for msg in reversed(held):  # requeue 3, then 2, then 1
        assert msg is not None
        await msg.nack(requeue=True)

    order = [await conn.get("q", no_ack=True) for _ in range(5)]
    assert [(m.body, m.redelivered) if m else None for m in order] == [
        (b"1", True),
        (b"2", True),
        (b"3", True),
        (b"4", False),
        None,
    ]


async def test_connection_close_requeues_unacked_to_original_position(
    conn: wharf.Connection, connect: Connect
) -> None:
    await declare_with(conn, "q", [b"1", b"2", b"3"])
    consumer_conn: wharf.Connection = await connect()

    async with consumer_conn.consume("q", prefetch=2) as messages:
        first, _second = await take(messages, 2)
        await conn.publish("", "q", b"4")  # published while 1 and 2 are out
        await first.ack()
        third = await next_message(messages)  # the ack made room for 3
        assert third.body == b"3"
        await consumer_conn.close()  # 2 and 3 unacked

    await wait_ready_count(conn, "q", 3)
    order = [await conn.get("q", no_ack=True) for _ in range(4)]
    assert [(m.body, m.redelivered, m.delivery_count) if m else None for m in order] == [
        (b"2", True, 2),
        (b"3", True, 2),
        (b"4", False, 1),
        None,
    ]


async def test_connection_loss_requeues_unacked(
    conn: wharf.Connection, raw_client: Callable[..., Any]
) -> None:
    await declare_with(conn, "q", [b"1", b"2", b"3"])
    rc = await raw_client()
    rc.send(F.Consume(1, "q", "raw", 2, False, False, None))
    ok = await rc.recv()
    assert ok[0] == F.OK and ok[1] == 1
    deliveries: list[Any] = []
    while len(deliveries) < 2:
        frame = await rc.recv()
        assert frame[0] == F.DELIVER, frame
        deliveries.extend(frame[3])
    assert [d[6] for d in deliveries] == [b"1", b"2"]

    await rc.close()  # the socket just goes away: no CLOSE, no acks

    await wait_ready_count(conn, "q", 3)
    order = [await conn.get("q", no_ack=True) for _ in range(3)]
    assert [(m.body, m.redelivered, m.delivery_count) if m else None for m in order] == [
        (b"1", True, 2),
        (b"2", True, 2),
        (b"3", False, 1),
    ]


# -- ack errors ------------------------------------------------------------------------


async def test_double_ack_raises_unknown_delivery_tag_from_the_iterator(
    conn: wharf.Connection,
) -> None:
    await declare_with(conn, "q", [b"1"])

    async with conn.consume("q") as messages:
        msg = await next_message(messages)
        await msg.ack()
        await msg.ack()

        with pytest.raises(wharf.UnknownDeliveryTag) as exc_info:
            await next_message(messages)
        assert exc_info.value.code == 407
        assert exc_info.value.details.get("delivery_tag") == msg.delivery_tag

        # The consumer and the connection keep working.
        await conn.publish("", "q", b"2")
        nxt = await next_message(messages)
        assert nxt.body == b"2"
        await nxt.ack()
    assert await conn.declare_queue("q", passive=True) == wharf.QueueInfo("q", 0, 0)


async def test_double_ack_spread_over_two_loop_iterations(conn: wharf.Connection) -> None:
    await declare_with(conn, "q", [b"1", b"2"])

    async with conn.consume("q", prefetch=1) as messages:
        msg = await next_message(messages)
        await msg.ack()
        second = await next_message(messages)  # the first ack has reached the broker
        await msg.ack()
        with pytest.raises(wharf.UnknownDeliveryTag):
            await next_message(messages)
        await second.ack()


async def test_double_ack_of_a_get_reaches_on_error_not_the_next_request(
    conn: wharf.Connection,
) -> None:
    errors: list[wharf.WharfError] = []
    conn.on_error(errors.append)
    await declare_with(conn, "q", [b"1"])
    msg = await conn.get("q")
    assert msg is not None
    await msg.ack()
    await msg.ack()

    # The broker answers in order: its ERROR for the second ack precedes this answer.
    assert await conn.declare_queue("q", passive=True) == wharf.QueueInfo("q", 0, 0)
    assert [type(e) for e in errors] == [wharf.UnknownDeliveryTag]
    assert errors[0].details.get("delivery_tag") == msg.delivery_tag


# -- timeouts around the iterator ------------------------------------------------------


async def test_wait_for_timeout_does_not_end_iteration(conn: wharf.Connection) -> None:
    await conn.declare_queue("q")

    async with conn.consume("q") as messages:
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(anext(messages), 0.05)
        await conn.publish("", "q", b"after-timeout")
        msg = await next_message(messages)
        assert msg.body == b"after-timeout"
        await msg.ack()


async def test_wait_for_timeouts_racing_deliveries_lose_nothing(conn: wharf.Connection) -> None:
    await conn.declare_queue("q")
    expected = [str(i).encode() for i in range(200)]

    async def publish_slowly() -> None:
        for body in expected:
            await conn.publish("", "q", body, confirm=False)
            await asyncio.sleep(0)  # interleave publishes with the consumer's timeouts

    async with conn.consume("q", prefetch=50) as messages:
        publisher = asyncio.create_task(publish_slowly())
        received: list[bytes] = []
        timeouts = 0
        async with asyncio.timeout(TIMEOUT_S):
            while len(received) < len(expected):
                try:
                    msg = await asyncio.wait_for(anext(messages), 0.0005)
                except TimeoutError:
                    timeouts += 1
                    continue
                received.append(msg.body)
                await msg.ack()
        await publisher

    assert received == expected
    assert timeouts > 0  # the race was exercised


# -- properties ---------------------------------------------------------------------------


async def test_message_properties_round_trip(conn: wharf.Connection) -> None:
    await conn.declare_queue("q")
    headers: dict[str, Any] = {
        "str": "v",
        "int": -7,
        "big": 2**40,
        "float": 1.5,
        "bool": True,
        "none": None,
        "bytes": b"\x00\xff",
        "list": [1, "two", [3]],
        "map": {"nested": {"k": "v"}},
    }
    await conn.publish(
        "",
        "q",
        b"\x00body\xff",
        headers=headers,
        content_type="application/json",
        content_encoding="gzip",
        message_id="m-1",
        correlation_id="c-1",
        reply_to="replies",
        timestamp=1_700_000_000_123,
        type="order.created",
        app_id="shop",
        user_id="guest",
        persistent=True,
        priority=7,
        expiration=60_000,
    )

    async with conn.consume("q") as messages:
        msg = await next_message(messages)
        await msg.ack()

    assert msg.body == b"\x00body\xff"
    assert msg.headers == headers
    assert msg.content_type == "application/json"
    assert msg.content_encoding == "gzip"
    assert msg.message_id == "m-1"
    assert msg.correlation_id == "c-1"
    assert msg.reply_to == "replies"
    assert msg.timestamp == 1_700_000_000_123
    assert msg.type == "order.created"
    assert msg.app_id == "shop"
    assert msg.user_id == "guest"
    assert msg.persistent is True
    assert msg.priority == 7
    assert msg.expiration == 60_000


async def test_message_without_properties(conn: wharf.Connection) -> None:
    await conn.declare_queue("q")
    await conn.publish("", "q", b"")

    msg = await conn.get("q", no_ack=True)
    assert msg is not None
    assert msg.body == b""
    assert msg.headers == {}
    assert msg.persistent is False
    assert (msg.content_type, msg.message_id, msg.priority, msg.timestamp) == (
        None,
        None,
        None,
        None,
    )


async def test_datetime_timestamp_arrives_as_epoch_ms(conn: wharf.Connection) -> None:
    await conn.declare_queue("q")
    when = datetime(2024, 5, 6, 7, 8, 9, 123000, tzinfo=UTC)
    await conn.publish("", "q", b"m", timestamp=when)

    msg = await conn.get("q", no_ack=True)
    assert msg is not None and msg.timestamp == 1_714_979_289_123


async def test_unknown_property_keys_are_carried_through(
    conn: wharf.Connection, raw_client: Callable[..., Any]
) -> None:
    await conn.declare_queue("q")
    rc = await raw_client()
    props = {"content_type": "text/plain", "x-future-property": {"a": [1, 2]}}
    rc.send(F.Publish(1, "", "q", props, b"m", 0))
    confirm = await rc.recv()
    assert confirm[0] == F.CONFIRM and confirm[2] == 1

    msg = await conn.get("q", no_ack=True)
    assert msg is not None
    assert msg.properties == props
    assert msg.content_type == "text/plain"
