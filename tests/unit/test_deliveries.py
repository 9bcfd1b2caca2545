"""Deliveries as the one owner of delivered-but-unacked state (core/deliveries.py).

The counts a queue and a consumer report (``Queue.unacked_count``, ``Consumer.unacked``,
so the HTTP and metrics fields) are asked of the sessions' ``Deliveries``; these tests
drive the table directly, without sockets.
"""

from __future__ import annotations

from wharf.broker.core.deliveries import Deliveries
from wharf.broker.core.queues import Consumer, Message, Queue


class Stats:
    delivered = redelivered = acked = rejected = 0


class Session:
    """A delivery sink with its own ``Deliveries`` (a native connection, an AMQP channel)."""

    def __init__(self) -> None:
        self.writable = True
        self.deliveries = Deliveries(Stats(), lambda: 0.0)

    def deliver(self, consumer: Consumer, batch: list[Message]) -> None:
        self.deliveries.deliver(consumer, batch)

    def server_cancel(self, consumer: Consumer, code: int, reason: str) -> None:
        consumer.active = False


def _queue(n: int) -> Queue:
    q = Queue("q")
    q.enqueue_many("", "q", None, [b"%d" % i for i in range(n)])
    return q


def _take(q: Queue, n: int) -> list[Message]:
    out = []
    for _ in range(n):
        m = q.take()
        assert m is not None
        out.append(m)
    return out


def _consumer(q: Queue, s: Session, tag: str = "c", prefetch: int = 10) -> Consumer:
    # Not added to the queue: the tests hand batches over themselves.
    return Consumer(tag, q, s, prefetch, False, False, None, 1)


async def test_counts_follow_the_table_through_ack_and_reject() -> None:
    q = _queue(6)
    s = Session()
    c = _consumer(q, s, prefetch=10)
    s.deliver(c, _take(q, 5))
    d = s.deliveries
    assert (q.unacked_count, c.unacked, len(d), c.credit()) == (5, 5, 5, 5)
    d.ack(d.settle([1, 2])[0])
    assert (q.unacked_count, c.unacked, c.credit()) == (3, 3, 7)
    d.reject(d.settle([3])[0], requeue=True)
    assert (q.unacked_count, c.unacked, q.ready_count) == (2, 2, 2)
    d.reject(d.settle([4])[0], requeue=False)
    assert (q.unacked_count, c.unacked, q.ready_count) == (1, 1, 2)
    d.delay(d.settle([5])[0], 1000)  # no store: the message is requeued at once
    assert (q.unacked_count, c.unacked, q.ready_count) == (0, 0, 3)
    assert q.unacked_holders == set()


async def test_a_get_counts_for_the_queue_not_for_a_consumer() -> None:
    q = _queue(3)
    s = Session()
    c = _consumer(q, s)
    s.deliver(c, _take(q, 1))
    tag = s.deliveries.get(q, _take(q, 1)[0], no_ack=False)
    assert (q.unacked_count, c.unacked) == (2, 1)
    s.deliveries.get(q, _take(q, 1)[0], no_ack=True)
    assert q.unacked_count == 2
    s.deliveries.requeue_one(tag)
    assert (q.unacked_count, c.unacked, q.ready_count) == (1, 1, 1)


async def test_the_queue_sums_over_every_session_holding_its_messages() -> None:
    q = _queue(5)
    a, b = Session(), Session()
    ca, cb = _consumer(q, a, "a"), _consumer(q, b, "b")
    a.deliver(ca, _take(q, 2))
    b.deliver(cb, _take(q, 3))
    assert (q.unacked_count, ca.unacked, cb.unacked) == (5, 2, 3)
    assert q.unacked_holders == {a.deliveries, b.deliveries}
    a.deliveries.requeue_all(None)  # session a ends
    assert (q.unacked_count, ca.unacked, cb.unacked, q.ready_count) == (3, 0, 3, 2)
    assert q.unacked_holders == {b.deliveries}


async def test_requeueing_one_consumer_keeps_the_others_deliveries() -> None:
    q1, q2 = _queue(2), _queue(2)
    s = Session()
    c1, c2 = _consumer(q1, s, "c1"), _consumer(q2, s, "c2")
    s.deliver(c1, _take(q1, 2))
    s.deliver(c2, _take(q2, 2))
    s.deliveries.requeue_all(c1)  # c1's ack timeout
    assert (q1.unacked_count, c1.unacked, q1.ready_count) == (0, 0, 2)
    assert (q2.unacked_count, c2.unacked, len(s.deliveries)) == (2, 2, 2)
    assert q1.unacked_holders == set() and q2.unacked_holders == {s.deliveries}


async def test_one_ack_across_consumers_and_queues_settles_each_count() -> None:
    q1, q2 = _queue(3), _queue(3)
    s = Session()
    c1, c2 = _consumer(q1, s, "c1"), _consumer(q2, s, "c2")
    s.deliver(c1, _take(q1, 2))  # tags 1, 2
    s.deliver(c2, _take(q2, 2))  # tags 3, 4
    s.deliver(c1, _take(q1, 1))  # tag 5
    s.deliveries.get(q2, _take(q2, 1)[0], no_ack=False)  # tag 6
    entries, unknown = s.deliveries.settle([1, 3, 5, 6, 2, 9])
    s.deliveries.ack(entries)
    assert unknown == 9 and len(entries) == 5
    assert (q1.unacked_count, c1.unacked, q2.unacked_count, c2.unacked) == (0, 0, 1, 1)
    assert s.deliveries.unacked_bytes == 1  # tag 4's body b"1"


async def test_each_queue_counts_its_own_acks_whatever_the_ack_spans() -> None:
    """Queue.stats_acked (the API's message_stats ack): one tag, a multiple ack of one
    queue's deliveries, and one that spans two queues, interleaved."""
    a, b = _queue(4), _queue(4)
    s = Session()
    ca, cb = _consumer(a, s, "a"), _consumer(b, s, "b")
    d = s.deliveries
    s.deliver(ca, _take(a, 1))  # tag 1
    s.deliver(cb, _take(b, 1))  # tag 2
    s.deliver(ca, _take(a, 2))  # tags 3, 4
    s.deliver(cb, _take(b, 2))  # tags 5, 6
    d.ack(d.settle([1])[0])
    assert (a.stats_acked, b.stats_acked) == (1, 0)
    d.ack(d.settle([3, 4])[0])
    assert (a.stats_acked, b.stats_acked) == (3, 0)
    s.deliver(ca, _take(a, 1))  # tag 7
    d.ack(d.settle([2, 5, 6, 7])[0])
    assert (a.stats_acked, b.stats_acked) == (4, 3)
    assert d.stats.acked == 7
    d.ack([])
    assert (a.stats_acked, b.stats_acked, d.stats.acked) == (4, 3, 7)
