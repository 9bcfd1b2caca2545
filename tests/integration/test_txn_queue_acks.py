"""Exactly once from a queue into a topic: acks of queue deliveries inside a log-topic
transaction (``p.ack_in_transaction(msg)`` / ``msg.ack(transaction=p)``) apply if and
only if it commits; abort, timeout and fencing requeue the messages."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest

import wharf
from wharf.broker.server import Broker

from .test_api import api

RC = "read_committed"


async def _setup(conn: wharf.Connection, queue: str, topic: str, jobs: int = 1) -> None:
    await conn.declare_queue(queue, durable=True)
    await conn.create_topic(topic, 1)
    for i in range(jobs):
        await conn.publish("", queue, f"job-{i}".encode(), persistent=True)


async def _out(conn: wharf.Connection, topic: str) -> list[bytes | None]:
    return [r.value for r in await conn.fetch(topic, 0, 0, isolation_level=RC)]


async def _ready(conn: wharf.Connection, queue: str) -> int:
    return (await conn.declare_queue(queue, durable=True, passive=True)).messages


async def test_commit_applies_the_ack_with_the_output(conn: wharf.Connection) -> None:
    await _setup(conn, "jobs-c", "results-c", jobs=2)
    p = conn.transactional_producer("worker-c")
    m = await conn.get("jobs-c")
    assert m is not None
    async with p.transaction():
        await p.produce("results-c", b"done:" + m.body, partition=0)
        await m.ack(transaction=p)
        # Held by the transaction: neither ready nor redelivered to anyone meanwhile.
        assert await _ready(conn, "jobs-c") == 1
    assert await _out(conn, "results-c") == [b"done:job-0"]
    m2 = await conn.get("jobs-c")
    assert m2 is not None and m2.body == b"job-1" and not m2.redelivered
    await m2.ack()
    assert await conn.get("jobs-c") is None


async def test_abort_requeues_the_message(conn: wharf.Connection) -> None:
    await _setup(conn, "jobs-a", "results-a")
    p = conn.transactional_producer("worker-a")
    m = await conn.get("jobs-a")
    assert m is not None
    with pytest.raises(RuntimeError):
        async with p.transaction():
            await p.produce("results-a", b"half", partition=0)
            await p.ack_in_transaction(m)
            raise RuntimeError("the worker failed")
    assert await _out(conn, "results-a") == []
    again = await conn.get("jobs-a")
    assert again is not None and again.body == b"job-0" and again.redelivered
    # The same message can now be processed again, this time to the end.
    async with p.transaction():
        await p.produce("results-a", b"done", partition=0)
        await p.ack_in_transaction(again)
    assert await _out(conn, "results-a") == [b"done"]
    assert await conn.get("jobs-a") is None


async def test_timeout_and_fencing_requeue(
    conn: wharf.Connection, connect: Callable[..., Any]
) -> None:
    await _setup(conn, "jobs-f", "results-f", jobs=2)
    # A producer whose transaction times out.
    slow = conn.transactional_producer("worker-t", timeout=0.2)
    m = await conn.get("jobs-f")
    assert m is not None
    await slow.begin()
    await slow.ack_in_transaction(m)
    for _ in range(300):  # bounded polling: the coordinator's tick runs once a second
        if await _ready(conn, "jobs-f") == 2:
            break
        await asyncio.sleep(0.02)
    assert await _ready(conn, "jobs-f") == 2
    with pytest.raises(wharf.TransactionAborted):
        await slow.commit()
    # A zombie: a newer producer with the same id (another connection) fences it.
    other = await connect()
    zombie = conn.transactional_producer("worker-z")
    m = await conn.get("jobs-f")
    assert m is not None
    await zombie.begin()
    await zombie.produce("results-f", b"zombie", partition=0)
    await zombie.ack_in_transaction(m)
    fresh = other.transactional_producer("worker-z")
    await fresh.begin()  # aborts the zombie's transaction
    assert await _ready(other, "jobs-f") == 2
    with pytest.raises(wharf.ProducerFenced):
        await zombie.commit()
    assert await _out(conn, "results-f") == []


async def test_bad_acks_change_nothing(conn: wharf.Connection, connect: Callable[..., Any]) -> None:
    await _setup(conn, "jobs-b", "results-b")
    p = conn.transactional_producer("worker-b")
    m = await conn.get("jobs-b")
    assert m is not None
    with pytest.raises(wharf.InvalidTxnState):
        await p.ack_in_transaction(m)  # no begin()
    other = await connect()
    foreign = other.transactional_producer("worker-b2")
    await foreign.begin()
    with pytest.raises(wharf.InvalidArgument):
        await foreign.ack_in_transaction(m)  # delivered on another connection
    await foreign.abort()
    await p.begin()
    await p.ack_in_transaction(m)
    with pytest.raises(wharf.PreconditionFailed):
        await p.ack_in_transaction(m)  # already in the transaction
    await p.commit()
    assert await conn.get("jobs-b") is None


async def test_an_operator_abort_requeues(conn: wharf.Connection, broker: Broker) -> None:
    await _setup(conn, "jobs-o", "results-o")
    p = conn.transactional_producer("worker-o")
    m = await conn.get("jobs-o")
    assert m is not None
    await p.begin()
    await p.produce("results-o", b"stuck", partition=0)
    await p.ack_in_transaction(m)
    doc = (await api(broker, "GET", "/api/transactions/%2F/worker-o")).json()
    assert doc["queue_acks"] == 1 and doc["state"] == "Ongoing"
    r = await api(broker, "POST", "/api/transactions/%2F/worker-o/abort")
    assert r.status == 200, r
    again = await conn.get("jobs-o")
    assert again is not None and again.redelivered
    with pytest.raises(wharf.TransactionAborted):
        await p.commit()


async def test_a_held_ack_keeps_the_prefetch_window_until_the_transaction_ends(
    conn: wharf.Connection,
) -> None:
    """As RabbitMQ's acks in a transaction: the window frees at commit or abort, so a
    worker with prefetch 1 gets an aborted job back before the jobs behind it."""
    await _setup(conn, "jobs-w", "results-w", jobs=3)
    p = conn.transactional_producer("worker-w")
    seen: list[tuple[bytes, bool]] = []
    async with conn.consume("jobs-w", prefetch=1) as jobs:
        it = jobs.__aiter__()
        first = await it.__anext__()
        with pytest.raises(RuntimeError):
            async with p.transaction():
                await p.produce("results-w", b"half", partition=0)
                await first.ack(transaction=p)
                # Held: the next job is not delivered while the transaction is open.
                with pytest.raises(TimeoutError):
                    await asyncio.wait_for(it.__anext__(), 0.3)
                raise RuntimeError("the worker failed")
        for _ in range(3):
            job = await asyncio.wait_for(it.__anext__(), 5)
            seen.append((job.body, job.redelivered))
            async with p.transaction():
                await p.produce("results-w", b"done:" + job.body, partition=0)
                await job.ack(transaction=p)
    assert seen == [(b"job-0", True), (b"job-1", False), (b"job-2", False)]
    assert await _out(conn, "results-w") == [b"done:job-0", b"done:job-1", b"done:job-2"]
