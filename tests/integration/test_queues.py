"""Queues over TCP: naming, passive declare, equivalence, exclusive and auto-delete
queues, purge and delete, and what consumers see when their queue goes away."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest

import wharf

TIMEOUT_S = 5.0

Connect = Callable[..., Any]


async def next_message(messages: wharf.Consumer) -> wharf.Message:
    return await asyncio.wait_for(anext(messages), TIMEOUT_S)


async def wait_queue_gone(conn: wharf.Connection, queue: str) -> None:
    """Wait until a passive declare of ``queue`` answers 404 (the broker notices a closed
    socket asynchronously); each probe is a round trip, no sleeping."""
    async with asyncio.timeout(TIMEOUT_S):
        while True:
            try:
                await conn.declare_queue(queue, passive=True)
            except wharf.NotFound:
                return


async def test_server_named_queue(conn: wharf.Connection) -> None:
    first = await conn.declare_queue()
    second = await conn.declare_queue("")

    assert first.name.startswith("amq.gen-")
    assert second.name.startswith("amq.gen-")
    assert first.name != second.name
    assert (first.messages, first.consumers) == (0, 0)

    await conn.publish("", first.name, b"m")
    msg = await conn.get(first.name, no_ack=True)
    assert msg is not None and msg.body == b"m"


async def test_amq_prefix_queue_names_are_reserved(conn: wharf.Connection) -> None:
    with pytest.raises(wharf.AccessRefused):
        await conn.declare_queue("amq.mine")
    await conn.declare_queue("mine")  # the connection is still usable


async def test_passive_declare(conn: wharf.Connection, connect: Connect) -> None:
    with pytest.raises(wharf.NotFound):
        await conn.declare_queue("missing", passive=True)

    await conn.declare_queue("q")
    await conn.publish_many("", "q", [b"1", b"2", b"3"])
    info = await conn.declare_queue("q", passive=True)
    assert info == wharf.QueueInfo("q", 3, 0)

    other: wharf.Connection = await connect()
    async with other.consume("q", prefetch=1) as messages:
        await next_message(messages)
        # messages counts ready ones: the unacked delivery is not among them.
        assert await conn.declare_queue("q", passive=True) == wharf.QueueInfo("q", 2, 1)
        # A non-passive redeclare reports the same counts.
        assert await conn.declare_queue("q") == wharf.QueueInfo("q", 2, 1)


async def test_durable_flag_is_accepted_and_checked(conn: wharf.Connection) -> None:
    info = await conn.declare_queue("d", durable=True)
    assert info.name == "d"
    await conn.declare_queue("d", durable=True)  # same attributes: fine

    with pytest.raises(wharf.PreconditionFailed) as exc_info:
        await conn.declare_queue("d", durable=False)
    assert exc_info.value.message == (
        "inequivalent arg 'durable' for queue 'd': received 'false' but current is 'true'"
    )

    await conn.declare_queue("d", passive=True)


@pytest.mark.parametrize(
    "changed",
    [
        {"durable": True},
        {"auto_delete": True},
        {"exclusive": True},
        {"arguments": {"x-max-length": 10}},
    ],
    ids=lambda c: next(iter(c)),
)
async def test_redeclare_with_different_attributes_fails(
    conn: wharf.Connection, changed: dict[str, Any]
) -> None:
    await conn.declare_queue("q")
    await conn.publish("", "q", b"kept")

    # A changed exclusive flag is 405 (RabbitMQ's RESOURCE_LOCKED), the others 406.
    error = wharf.ResourceLocked if "exclusive" in changed else wharf.PreconditionFailed
    with pytest.raises(error):
        await conn.declare_queue("q", **changed)

    # The queue and the connection are unharmed.
    assert await conn.declare_queue("q") == wharf.QueueInfo("q", 1, 0)


# -- exclusive -------------------------------------------------------------------------


async def test_exclusive_queue_is_locked_to_its_connection(
    conn: wharf.Connection, connect: Connect
) -> None:
    await conn.declare_queue("mine", exclusive=True)
    await conn.publish("", "mine", b"m")
    other: wharf.Connection = await connect()

    with pytest.raises(wharf.ResourceLocked):
        await other.declare_queue("mine", exclusive=True)
    with pytest.raises(wharf.ResourceLocked):
        await other.declare_queue("mine")
    with pytest.raises(wharf.ResourceLocked):
        await other.declare_queue("mine", passive=True)
    with pytest.raises(wharf.ResourceLocked):
        async with other.consume("mine"):
            pass
    with pytest.raises(wharf.ResourceLocked):
        await other.get("mine")
    with pytest.raises(wharf.ResourceLocked):
        await other.purge_queue("mine")
    with pytest.raises(wharf.ResourceLocked):
        await other.delete_queue("mine")
    with pytest.raises(wharf.ResourceLocked) as exc_info:
        await other.bind_queue("mine", "amq.fanout")
    assert exc_info.value.code == 405

    # Others can still publish to it (publishing is not using the queue).
    await other.publish("", "mine", b"from-other")
    # The owner is unaffected.
    assert await conn.declare_queue("mine", exclusive=True) == wharf.QueueInfo("mine", 2, 0)
    assert await conn.purge_queue("mine") == 2


async def test_exclusive_queue_vanishes_when_its_connection_closes(
    connect: Connect, conn: wharf.Connection
) -> None:
    owner: wharf.Connection = await connect()
    await owner.declare_queue("mine", exclusive=True)
    await owner.bind_queue("mine", "amq.fanout")

    await owner.close()

    await wait_queue_gone(conn, "mine")
    # Its binding went with it, and the name is free again.
    await conn.declare_queue("mine")
    await conn.publish("amq.fanout", "", b"m")
    assert await conn.declare_queue("mine", passive=True) == wharf.QueueInfo("mine", 0, 0)


async def test_server_named_exclusive_queue(conn: wharf.Connection, connect: Connect) -> None:
    info = await conn.declare_queue("", exclusive=True)
    assert info.name.startswith("amq.gen-")
    other: wharf.Connection = await connect()
    with pytest.raises(wharf.ResourceLocked):
        await other.get(info.name)


# -- auto-delete -----------------------------------------------------------------------


async def test_auto_delete_queue_vanishes_with_its_last_consumer(
    conn: wharf.Connection, connect: Connect
) -> None:
    await conn.declare_queue("ad", auto_delete=True)
    other: wharf.Connection = await connect()

    first = await conn.consume("ad")
    second = await other.consume("ad")
    assert (await conn.declare_queue("ad", passive=True)).consumers == 2

    await first.cancel()
    assert (await conn.declare_queue("ad", passive=True)).consumers == 1

    await second.cancel()
    with pytest.raises(wharf.NotFound):
        await conn.declare_queue("ad", passive=True)


async def test_auto_delete_queue_vanishes_when_consumer_connection_closes(
    conn: wharf.Connection, connect: Connect
) -> None:
    await conn.declare_queue("ad", auto_delete=True)
    consumer_conn: wharf.Connection = await connect()
    await consumer_conn.consume("ad")

    await consumer_conn.close()

    await wait_queue_gone(conn, "ad")


async def test_auto_delete_queue_without_consumers_stays(conn: wharf.Connection) -> None:
    # Like RabbitMQ: auto-delete acts when the last consumer goes, not before the first.
    await conn.declare_queue("ad", auto_delete=True)
    await conn.publish("", "ad", b"m")
    assert await conn.declare_queue("ad", passive=True) == wharf.QueueInfo("ad", 1, 0)


# -- purge and delete ------------------------------------------------------------------


async def test_purge_returns_count_and_keeps_unacked(conn: wharf.Connection) -> None:
    await conn.declare_queue("q")
    await conn.publish_many("", "q", [b"1", b"2", b"3", b"4"])
    held = await conn.get("q")  # unacked: not purged
    assert held is not None and held.body == b"1"

    assert await conn.purge_queue("q") == 3
    assert await conn.purge_queue("q") == 0
    assert await conn.get("q", no_ack=True) is None

    await held.nack(requeue=True)
    back = await conn.get("q", no_ack=True)
    assert back is not None
    assert (back.body, back.redelivered, back.delivery_count) == (b"1", True, 2)


async def test_purge_missing_queue_is_not_found(conn: wharf.Connection) -> None:
    with pytest.raises(wharf.NotFound):
        await conn.purge_queue("missing")


async def test_delete_returns_message_count(conn: wharf.Connection) -> None:
    await conn.declare_queue("q")
    await conn.publish_many("", "q", [b"1", b"2", b"3"])

    assert await conn.delete_queue("q") == 3

    with pytest.raises(wharf.NotFound):
        await conn.declare_queue("q", passive=True)
    with pytest.raises(wharf.NotFound):
        await conn.delete_queue("q")


async def test_delete_if_unused(conn: wharf.Connection, connect: Connect) -> None:
    await conn.declare_queue("q")
    other: wharf.Connection = await connect()
    consumer = await other.consume("q")

    with pytest.raises(wharf.PreconditionFailed):
        await conn.delete_queue("q", if_unused=True)
    assert (await conn.declare_queue("q", passive=True)).consumers == 1

    await consumer.cancel()
    assert await conn.delete_queue("q", if_unused=True) == 0


async def test_delete_if_empty(conn: wharf.Connection) -> None:
    await conn.declare_queue("q")
    await conn.publish("", "q", b"m")

    with pytest.raises(wharf.PreconditionFailed):
        await conn.delete_queue("q", if_empty=True)
    assert (await conn.declare_queue("q", passive=True)).messages == 1

    await conn.purge_queue("q")
    assert await conn.delete_queue("q", if_empty=True) == 0


async def test_deleted_queue_loses_its_bindings(conn: wharf.Connection) -> None:
    await conn.declare_exchange("ex", "direct")
    await conn.declare_queue("q")
    await conn.bind_queue("q", "ex", "k")
    await conn.delete_queue("q")

    await conn.declare_queue("q")  # same name, new queue: not bound
    await conn.publish("ex", "k", b"m")
    assert await conn.get("q") is None


async def test_consumer_of_deleted_queue_gets_not_found(
    conn: wharf.Connection, connect: Connect
) -> None:
    await conn.declare_queue("q")
    consumer_conn: wharf.Connection = await connect()

    async with consumer_conn.consume("q") as messages:
        await conn.publish("", "q", b"before")
        msg = await next_message(messages)
        assert msg.body == b"before"

        assert await conn.delete_queue("q") == 0

        with pytest.raises(wharf.NotFound) as exc_info:
            await next_message(messages)
        assert exc_info.value.code == 404
        assert not messages.active
        # A delivery received before the queue went can still be acked, as in AMQP.
        await msg.ack()

    # Only the consumer ended: its connection keeps working.
    await consumer_conn.declare_queue("q2")
    await consumer_conn.publish("", "q2", b"m")
    assert await consumer_conn.get("q2", no_ack=True) is not None


async def test_waiting_consumer_of_deleted_queue_gets_not_found(
    conn: wharf.Connection, connect: Connect
) -> None:
    await conn.declare_queue("q")
    consumer_conn: wharf.Connection = await connect()

    async with consumer_conn.consume("q") as messages:
        waiting = asyncio.create_task(next_message(messages))
        await conn.delete_queue("q")

        with pytest.raises(wharf.NotFound):
            await waiting
        # The iteration is over after the error.
        with pytest.raises(StopAsyncIteration):
            await anext(messages)

    # Only the consumer ended: its connection keeps working.
    await consumer_conn.declare_queue("q2")
    await consumer_conn.publish("", "q2", b"m")
    assert await consumer_conn.get("q2", no_ack=True) is not None
