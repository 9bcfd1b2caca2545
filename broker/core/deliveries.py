"""Delivered-but-unacked messages of one consumer session.

One ``Deliveries`` per session: per native connection, per AMQP channel, so
nothing here assumes one per connection.  It numbers deliveries (delivery tags), keeps
the unacked table, settles acks, nacks and rejects, requeues what is left when a
consumer or the session ends, finds deliveries past the ack timeout, copies unacked
messages forward for store compaction, and counts their body bytes for the memory
alarm.  The wire adapter turns frames into these calls and errors into frames.

It is the one owner of "delivered but not acked": it counts its unacked deliveries per
queue and per consumer, and queues and consumers ask it (``Queue.unacked_count`` sums
over the sessions in ``Queue.unacked_holders``; ``Consumer.credit`` asks its sink's
``Deliveries``).  A delivery stops counting when it is popped from the table, whatever
happens to the message next (ack, requeue, reject, delay); that is also when its
consumer's prefetch credit comes back.
"""

from __future__ import annotations

from collections import Counter, deque
from collections.abc import Callable, Iterable
from operator import itemgetter
from typing import TYPE_CHECKING, Final, Protocol

from .policies.deadletter import REJECTED
from .queues import Consumer, Message, Queue

if TYPE_CHECKING:
    from ..store.segments import Segment

# Unacked table entry: (message, queue, consumer or None for a get).
Unacked = tuple[Message, Queue, Consumer | None]
_queue_of: Final = itemgetter(1)  # an Unacked entry's queue


class DeliveryStats(Protocol):
    """The broker-wide delivery counters (plain ints)."""

    delivered: int
    redelivered: int
    acked: int
    rejected: int


# The wire protocols a client connection may speak (ClientConnection.protocol).
PROTOCOLS: Final = ("native", "amqp")


class ProtocolStats:
    """One wire protocol's message counters: plain ints shared by its connections and
    channels (no lock: the event loop thread), read by the metrics collector at scrape
    time.  Deliveries count into their protocol's object; the broker-wide delivery
    counters are the sums over the protocols."""

    __slots__ = ("published", "delivered", "redelivered", "acked", "rejected")

    def __init__(self) -> None:
        self.published = 0  # messages the core accepted from this protocol's publishers
        self.delivered = 0
        self.redelivered = 0
        self.acked = 0
        self.rejected = 0


class Deliveries:
    __slots__ = (
        "stats",
        "_clock",
        "_next_tag",
        "_unacked",
        "unacked_bytes",
        "_times",
        "_by_queue",
        "_by_consumer",
    )

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
        # Unacked deliveries per queue and per consumer (gets count only per queue); an
        # entry goes when its count drops to zero, and the queue's ``unacked_holders``
        # lists this session exactly while it has an entry in ``_by_queue``.
        self._by_queue: dict[Queue, int] = {}
        self._by_consumer: dict[Consumer, int] = {}

    def __len__(self) -> int:
        return len(self._unacked)

    @property
    def last_tag(self) -> int:
        """The highest delivery tag handed out so far (0 before the first delivery)."""
        return self._next_tag

    def unacked_in(self, queue: Queue) -> int:
        """Unacked deliveries of ``queue``'s messages in this session."""
        return self._by_queue.get(queue, 0)

    def unacked_of(self, consumer: Consumer) -> int:
        """Unacked deliveries to ``consumer`` (what its prefetch limit counts)."""
        return self._by_consumer.get(consumer, 0)

    def _count(self, queue: Queue, consumer: Consumer | None, n: int) -> None:
        by_queue = self._by_queue
        held = by_queue.get(queue, 0)
        if not held:
            queue.unacked_holders.add(self)
        by_queue[queue] = held + n
        if consumer is not None:
            by_consumer = self._by_consumer
            by_consumer[consumer] = by_consumer.get(consumer, 0) + n

    def _uncount(self, queue: Queue, consumer: Consumer | None, n: int) -> None:
        """``n`` deliveries left the table; a live consumer gets its credit back."""
        by_queue = self._by_queue
        left = by_queue[queue] - n
        if left:
            by_queue[queue] = left
        else:
            del by_queue[queue]
            queue.unacked_holders.discard(self)
        if consumer is not None:
            by_consumer = self._by_consumer
            left = by_consumer[consumer] - n
            if left:
                by_consumer[consumer] = left
            else:
                del by_consumer[consumer]
            if consumer.active:
                queue.schedule_dispatch()

    def keep_credit(self, entries: list[Unacked]) -> None:
        """Settled ``entries`` whose outcome waits for a transaction still use their
        consumers' prefetch credit, until :meth:`return_credit` (RabbitMQ's acks in a
        transaction free the window at commit, not before)."""
        by_consumer = self._by_consumer
        for _, _, consumer in entries:
            if consumer is not None:
                by_consumer[consumer] = by_consumer.get(consumer, 0) + 1

    def return_credit(self, entries: list[Unacked]) -> None:
        """The transaction of ``entries`` ended: their consumers get the credit back."""
        by_consumer = self._by_consumer
        for _, queue, consumer in entries:
            if consumer is None or consumer not in by_consumer:
                continue
            left = by_consumer[consumer] - 1
            if left > 0:
                by_consumer[consumer] = left
            else:
                del by_consumer[consumer]
            if consumer.active:
                queue.schedule_dispatch()

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
            self._count(queue, consumer, len(batch))
        self._next_tag = tag
        stats = self.stats
        stats.delivered += len(batch)
        if redelivered:
            stats.redelivered += redelivered
            consumer.queue.stats_redelivered += redelivered
        return first

    def reserve_tags(self, n: int) -> int:
        """Tags for ``n`` deliveries that come from no queue and are never acked (AMQP's
        direct reply-to); returns the first."""
        first = self._next_tag + 1
        self._next_tag += n
        self.stats.delivered += n
        return first

    def get(self, queue: Queue, msg: Message, no_ack: bool) -> int:
        """Record a message taken by a get; returns its tag."""
        self._next_tag += 1
        tag = self._next_tag
        stats = self.stats
        stats.delivered += 1
        queue.stats_got += 1
        if msg.delivery_count > 1:
            stats.redelivered += 1
            queue.stats_redelivered += 1
        queue.note_delivered()
        if no_ack:
            queue.forget(msg)
        else:
            self._unacked[tag] = (msg, queue, None)
            self.unacked_bytes += len(msg.body)
            self._times.append((tag, self._clock()))
            self._count(queue, None, 1)
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
        """Pop the entries for ``tags``: (the entries, the first unknown tag or None).

        The popped deliveries stop counting as unacked here, one counter update per run
        of entries from the same consumer (an ACK_MANY is mostly one run), and their
        consumers' credit comes back; ``ack``, ``reject`` or ``delay`` then says what
        happens to the messages.
        """
        unacked = self._unacked
        out: list[Unacked] = []
        unknown: int | None = None
        nbytes = 0
        queue: Queue | None = None
        consumer: Consumer | None = None
        run = 0
        for tag in tags:
            entry = unacked.pop(tag, None)
            if entry is None:
                if unknown is None:
                    unknown = tag
                continue
            nbytes += len(entry[0].body)
            out.append(entry)
            if entry[2] is not consumer or entry[1] is not queue:
                if run:
                    assert queue is not None
                    self._uncount(queue, consumer, run)
                queue = entry[1]
                consumer = entry[2]
                run = 0
            run += 1
        if run:
            assert queue is not None
            self._uncount(queue, consumer, run)
        self.unacked_bytes -= nbytes
        return out, unknown

    def ack(self, entries: list[Unacked]) -> None:
        """Settled entries were acked: stored messages get their ack record."""
        for msg, queue, _ in entries:
            if msg.seg is not None:
                queue.forget(msg)
        n = len(entries)
        self.stats.acked += n
        # Each queue's ack counter (message_stats), counted without Python work per
        # entry: an ack settles one delivery, or (multiple) mostly those of one queue.
        if n == 1:
            entries[0][1].stats_acked += 1
        elif n:
            queues = set(map(_queue_of, entries))
            if len(queues) == 1:
                queues.pop().stats_acked += n
            else:
                for queue, k in Counter(map(_queue_of, entries)).items():
                    queue.stats_acked += k

    @staticmethod
    def _by_queue_of(entries: list[Unacked]) -> dict[Queue, list[Message]]:
        by_queue: dict[Queue, list[Message]] = {}
        for msg, queue, _ in entries:
            by_queue.setdefault(queue, []).append(msg)
        return by_queue

    def reject(self, entries: list[Unacked], requeue: bool) -> None:
        """Settled entries were nacked or rejected: requeued, or dead-lettered/dropped."""
        for queue, msgs in self._by_queue_of(entries).items():
            if requeue:
                queue.requeue(msgs)
            else:
                queue.reject(msgs, REJECTED)
        if not requeue:
            self.stats.rejected += len(entries)

    def delay(self, entries: list[Unacked], delay_ms: int) -> None:
        """nack with a delay: the messages come back to their queues after ``delay_ms``."""
        for queue, msgs in self._by_queue_of(entries).items():
            queue.delay(msgs, delay_ms)

    def requeue_all(self, consumer: Consumer | None) -> None:
        """Requeue the unacked deliveries (all, or one consumer's)."""
        unacked = self._unacked
        if not unacked:
            return
        if consumer is None:
            by_queue = self._by_queue_of(list(unacked.values()))
            unacked.clear()
            self.unacked_bytes = 0
            for queue in self._by_queue:
                queue.unacked_holders.discard(self)
            self._by_queue.clear()
            self._by_consumer.clear()
            for queue, msgs in by_queue.items():
                queue.requeue(msgs)
            return
        tags = [t for t, e in unacked.items() if e[2] is consumer]
        if not tags:
            return
        taken: list[Message] = []
        nbytes = 0
        for t in tags:
            msg = unacked.pop(t)[0]
            nbytes += len(msg.body)
            taken.append(msg)
        self.unacked_bytes -= nbytes
        self._uncount(consumer.queue, consumer, len(taken))
        consumer.queue.requeue(taken)

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
        msg, queue, consumer = self._unacked.pop(tag)
        self.unacked_bytes -= len(msg.body)
        self._uncount(queue, consumer, 1)
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
