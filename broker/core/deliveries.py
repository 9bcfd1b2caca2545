"""Delivered-but-unacked messages of one consumer session.

One ``Deliveries`` per session: per native connection today, per AMQP channel later, so
nothing here assumes one per connection.  It numbers deliveries (delivery tags), keeps
the unacked table, settles acks, nacks and rejects, requeues what is left when a
consumer or the session ends, finds deliveries past the ack timeout, copies unacked
messages forward for store compaction, and counts their body bytes for the memory
alarm.  The wire adapter turns frames into these calls and errors into frames.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Protocol

from .policies.deadletter import REJECTED
from .queues import Consumer, Message, Queue

if TYPE_CHECKING:
    from ..store.segments import Segment

# Unacked table entry: (message, queue, consumer or None for a get).
Unacked = tuple[Message, Queue, Consumer | None]


class DeliveryStats(Protocol):
    """The broker-wide delivery counters (plain ints)."""

    delivered: int
    redelivered: int
    acked: int
    rejected: int


class Deliveries:
    __slots__ = ("stats", "_clock", "_next_tag", "_unacked", "unacked_bytes", "_times")

    def __init__(self, stats: DeliveryStats, clock: Callable[[], float]) -> None:
        self.stats = stats
        self._clock = clock  # monotonic seconds, for the ack timeout
        self._next_tag = 0
        # Insertion order is tag order (tags only grow).
        self._unacked: dict[int, Unacked] = {}
        # Body bytes of the unacked messages (the memory alarm accounts for them).
        self.unacked_bytes = 0
        # (first delivery tag of a batch, clock time it was sent) for the ack timeout.
        self._times: deque[tuple[int, float]] = deque()

    def __len__(self) -> int:
        return len(self._unacked)

    # -- delivering ----------------------------------------------------------------

    def deliver(self, consumer: Consumer, batch: list[Message]) -> int:
        """Record ``batch`` as delivered to ``consumer``; returns the first tag (the
        others follow in order)."""
        first = self._next_tag + 1
        tag = first - 1
        redelivered = 0
        if consumer.no_ack:
            for m in batch:
                if m.delivery_count > 1:
                    redelivered += 1
            tag += len(batch)
        else:
            unacked = self._unacked
            queue = consumer.queue
            nbytes = 0
            for m in batch:
                tag += 1
                if m.delivery_count > 1:
                    redelivered += 1
                unacked[tag] = (m, queue, consumer)
                nbytes += len(m.body)
            self.unacked_bytes += nbytes
            self._times.append((first, self._clock()))
        self._next_tag = tag
        stats = self.stats
        stats.delivered += len(batch)
        stats.redelivered += redelivered
        return first

    def get(self, queue: Queue, msg: Message, no_ack: bool) -> int:
        """Record a message taken by a get; returns its tag."""
        self._next_tag += 1
        tag = self._next_tag
        stats = self.stats
        stats.delivered += 1
        if msg.delivery_count > 1:
            stats.redelivered += 1
        queue.note_delivered()
        if no_ack:
            queue.forget(msg)
        else:
            self._unacked[tag] = (msg, queue, None)
            self.unacked_bytes += len(msg.body)
            self._times.append((tag, self._clock()))
            queue.got_unacked()
        return tag

    # -- settling ------------------------------------------------------------------

    def tags(self, up_to: int) -> list[int]:
        """Unacked tags ``<= up_to`` (all of them for 0), oldest first."""
        if not up_to:
            return list(self._unacked)
        out = []
        for t in self._unacked:
            if t > up_to:
                break
            out.append(t)
        return out

    def settle(self, tags: Iterable[int]) -> tuple[list[Unacked], int | None]:
        """Pop the entries for ``tags``: (the entries, the first unknown tag or None)."""
        unacked = self._unacked
        out: list[Unacked] = []
        unknown: int | None = None
        nbytes = 0
        for tag in tags:
            entry = unacked.pop(tag, None)
            if entry is None:
                if unknown is None:
                    unknown = tag
                continue
            nbytes += len(entry[0].body)
            out.append(entry)
        self.unacked_bytes -= nbytes
        return out, unknown

    def ack(self, entries: list[Unacked]) -> None:
        woken: Queue | None = None
        for msg, queue, consumer in entries:
            if msg.seg is not None:
                queue.forget(msg)
            queue.settled(consumer, 1)
            if consumer is not None and consumer.active and queue is not woken:
                woken = queue
                queue.schedule_dispatch()
        self.stats.acked += len(entries)

    def _release(self, entries: list[Unacked]) -> dict[Queue, list[Message]]:
        """Return the consumers' credit for settled entries; messages grouped by queue."""
        by_queue: dict[Queue, list[Message]] = {}
        for msg, queue, consumer in entries:
            by_queue.setdefault(queue, []).append(msg)
            if consumer is not None:
                queue.credit_back(consumer, 1)
        return by_queue

    def reject(self, entries: list[Unacked], requeue: bool) -> None:
        for queue, msgs in self._release(entries).items():
            if requeue:
                queue.requeue(msgs)
            else:
                queue.reject(msgs, REJECTED)
        if not requeue:
            self.stats.rejected += len(entries)

    def delay(self, entries: list[Unacked], delay_ms: int) -> None:
        """nack with a delay: the messages come back to their queues after ``delay_ms``."""
        for queue, msgs in self._release(entries).items():
            queue.delay(msgs, delay_ms)

    def requeue_all(self, consumer: Consumer | None) -> None:
        """Requeue the unacked deliveries (all, or one consumer's)."""
        unacked = self._unacked
        if not unacked:
            return
        by_queue: dict[Queue, list[Message]] = {}
        if consumer is None:
            items = list(unacked.values())
            unacked.clear()
            self.unacked_bytes = 0
            for msg, queue, c in items:
                by_queue.setdefault(queue, []).append(msg)
                if c is not None:
                    queue.credit_back(c, 1)
        else:
            tags = [t for t, e in unacked.items() if e[2] is consumer]
            for t in tags:
                msg, queue, _ = unacked.pop(t)
                self.unacked_bytes -= len(msg.body)
                by_queue.setdefault(queue, []).append(msg)
            if tags:
                consumer.queue.credit_back(consumer, len(tags))
        for queue, msgs in by_queue.items():
            queue.requeue(msgs)

    # -- the ack timeout -----------------------------------------------------------

    def overdue(self, now: float, timeout_s: float) -> tuple[int, Unacked] | None:
        """The oldest delivery unacked for longer than ``timeout_s``, if any."""
        unacked = self._unacked
        times = self._times
        if not unacked:
            times.clear()
            return None
        oldest = next(iter(unacked))
        while len(times) > 1 and times[1][0] <= oldest:
            times.popleft()
        if not times or now - times[0][1] <= timeout_s:
            return None
        return oldest, unacked[oldest]

    def requeue_one(self, tag: int) -> None:
        """Requeue one get's delivery (the ack timeout of a get)."""
        msg, queue, _ = self._unacked.pop(tag)
        self.unacked_bytes -= len(msg.body)
        queue.requeue([msg])

    # -- store compaction ----------------------------------------------------------

    def relocate(self, old: Segment) -> int:
        """Copy forward the unacked messages stored in ``old``."""
        moved = 0
        for msg, queue, _ in self._unacked.values():
            if msg.seg is old and not queue.deleted:
                queue.copy_forward(msg)
                moved += 1
        return moved
