"""Queue state without sockets: FIFO, requeue to original position, round-robin, credit."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from wharf.broker.core.deliveries import Deliveries
from wharf.broker.core.queues import Consumer, Message, Queue


class Stats:
    delivered = redelivered = acked = rejected = 0


class FakeConnection:
    """A delivery sink: records batches in a real ``Deliveries``, as the wire does."""

    def __init__(self) -> None:
        self.writable = True
        self.delivered: list[tuple[str, list[Message]]] = []
        self.deliveries = Deliveries(Stats(), lambda: 0.0)

    def deliver(self, consumer: Consumer, batch: list[Message]) -> None:
        self.deliveries.deliver(consumer, batch)
        self.delivered.append((consumer.tag, list(batch)))

    def bodies(self) -> list[bytes]:
        return [m.body for _, batch in self.delivered for m in batch]


def _consumer(q: Queue, conn: Any, tag: str, prefetch: int = 0) -> Consumer:
    c = Consumer(tag, q, conn, prefetch, False, False, None, 1)
    q.add_consumer(c)
    return c


async def _settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


async def test_fifo_and_prefetch_credit() -> None:
    q = Queue("q")
    q.enqueue_many("", "q", None, [b"%d" % i for i in range(10)])
    conn = FakeConnection()
    c = _consumer(q, conn, "c1", prefetch=3)
    await _settle()
    assert conn.bodies() == [b"0", b"1", b"2"]
    assert q.ready_count == 7 and q.unacked_count == 3 and c.unacked == 3
    entries, unknown = conn.deliveries.settle([1, 2])
    conn.deliveries.ack(entries)
    assert unknown is None and q.unacked_count == 1 and c.unacked == 1
    await _settle()
    assert conn.bodies() == [b"0", b"1", b"2", b"3", b"4"]


async def test_requeue_returns_to_original_position() -> None:
    q = Queue("q")
    q.enqueue_many("", "q", None, [b"a", b"b", b"c", b"d"])
    first = [q.take(), q.take()]
    assert [m.body for m in first if m] == [b"a", b"b"]
    q.enqueue_many("", "q", None, [b"e"])
    q.requeue([m for m in reversed(first) if m])  # requeue order does not matter
    order = []
    while (m := q.take()) is not None:
        order.append((m.body, m.delivery_count))
    assert order == [(b"a", 2), (b"b", 2), (b"c", 1), (b"d", 1), (b"e", 1)]


async def test_round_robin_across_consumers() -> None:
    q = Queue("q")
    conn = FakeConnection()
    _consumer(q, conn, "c1")
    _consumer(q, conn, "c2")
    q.enqueue_many("", "q", None, [b"%d" % i for i in range(6)])
    await _settle()
    per: dict[str, list[bytes]] = {}
    for tag, batch in conn.delivered:
        per.setdefault(tag, []).extend(m.body for m in batch)
    assert per["c1"] == [b"0", b"2", b"4"]
    assert per["c2"] == [b"1", b"3", b"5"]


async def test_paused_connection_gets_nothing() -> None:
    q = Queue("q")
    conn = FakeConnection()
    conn.writable = False
    _consumer(q, conn, "c1")
    q.enqueue_many("", "q", None, [b"x"])
    await _settle()
    assert conn.delivered == []
    conn.writable = True
    q.schedule_dispatch()
    await _settle()
    assert conn.bodies() == [b"x"]


class SlowClock:
    """``time.time`` for the queue: it moves only when told, as a loaded loop's would
    between a publish and the dispatch that follows it."""

    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


async def test_ttl_zero_reaches_a_consumer_waiting_however_late_the_dispatch_runs(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    clock = SlowClock()
    monkeypatch.setattr(time, "time", clock)
    q = Queue("q", arguments={"x-message-ttl": 0})
    conn = FakeConnection()
    _consumer(q, conn, "c1")
    await _settle()
    q.enqueue_many("", "q", None, [b"now"])
    clock.now += 0.05  # the dispatch (and the expiry timer) run 50 ms after the publish
    await _settle()
    assert conn.bodies() == [b"now"]
    assert q.stats_expired == 0


async def test_ttl_zero_expires_when_nobody_waits(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = SlowClock()
    monkeypatch.setattr(time, "time", clock)
    q = Queue("q", arguments={"x-message-ttl": 0})
    q.enqueue_many("", "q", None, [b"late"])
    clock.now += 0.05
    assert q.expire_head() == 1
    conn = FakeConnection()
    _consumer(q, conn, "c1")
    await _settle()
    assert conn.delivered == [] and q.ready_count == 0 and q.stats_expired == 1


@settings(max_examples=200, deadline=None)
@given(ops=st.lists(st.sampled_from(["pub", "take", "requeue"]), max_size=60))
def test_ready_order_is_always_position_order(ops: list[str]) -> None:
    q = Queue("q")
    out: list[Message] = []
    n = 0
    for op in ops:
        if op == "pub":
            q.enqueue_many("", "q", None, [b"%d" % n])
            n += 1
        elif op == "take":
            m = q.take()
            if m is not None:
                out.append(m)
        elif out:
            q.requeue([out.pop(0)])
    positions = []
    while (m := q.take()) is not None:
        positions.append(m.position)
    assert positions == sorted(positions)
