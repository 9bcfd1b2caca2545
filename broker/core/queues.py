"""Queues: ready messages, consumers with credit, round-robin dispatch, requeue.

A queue owns its messages and its consumers.  Delivered-but-unacked messages belong to
the consumer sessions they went to (core/deliveries.py ``Deliveries``: delivery tags, the
unacked table and its counts); a queue keeps no unacked counter of its own and asks the
sessions that hold its messages (``unacked_count``).

Ordering: messages get an increasing ``position`` when enqueued.  Every message that
has been delivered has a lower position than every message still in ``_ready`` (we
only ever deliver from the front), so requeued messages go into a small heap that is
always drained before ``_ready``: a requeued message lands back at its original place,
ahead of anything published after it, as in RabbitMQ.

Dispatch is batched: enqueueing schedules one dispatch per loop iteration, and one
dispatch hands each consumer a list of messages that its connection encodes as a
single DELIVER frame.
"""

from __future__ import annotations

import asyncio
import heapq
import random
import time
from collections import deque
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any, Final, Protocol

from wharf.protocol.errors import ResourceLocked

from .dedup import DedupWindow
from .paging import PagedRow, PagedTail
from .policies.arguments import QueueLimits, parse_queue_arguments
from .policies.deadletter import DELIVERY_LIMIT, EXPIRED, MAXLEN
from .policies.delayed import DelayedMessages
from .policies.priority import PriorityReady, message_priority
from .policies.queue_types import QUORUM, queue_type_of

if TYPE_CHECKING:
    from array import array

    from ..store.segments import MessageStore, Segment
    from .deliveries import Deliveries

# The ``reason`` in the details of the ResourceLocked a consume meets on a queue held by
# an exclusive consumer (or an exclusive consume on a queue with consumers).
EXCLUSIVE_USE: Final = "exclusive-use"
# Messages handed out by one dispatch round before yielding to the event loop.
DISPATCH_BATCH_MESSAGES: Final = 4096
# Body bytes in one DELIVER frame before the batch is cut.
DELIVER_FRAME_BODY_BYTES: Final = 1024 * 1024
# Estimated memory of one in-memory message besides its body (objects, deque slot).
MESSAGE_OVERHEAD_BYTES: Final = 200
DEFAULT_QUEUE_MEMORY_BUDGET_BYTES: Final = 128 * 1024 * 1024
# Messages read back from disk at a time when the in-memory head runs out.
PAGE_IN_MESSAGES: Final = 4096


class Message:
    """One message as it sits in one queue.  The body is shared between queues."""

    __slots__ = (
        "exchange",
        "routing_key",
        "properties",
        "body",
        "delivery_count",
        "position",
        "seg",
        "persisted",
        "expires_at",
    )

    def __init__(
        self,
        exchange: str,
        routing_key: str,
        properties: dict[str, Any] | None,
        body: bytes,
        position: int,
    ) -> None:
        self.exchange = exchange
        self.routing_key = routing_key
        self.properties = properties
        self.body = body
        self.delivery_count = 0
        self.position = position
        # The store segment holding this message's body (persisted, or paged out of a
        # long queue), else None; ``persisted``: its settlement must be recorded.
        self.seg: Segment | None = None
        self.persisted = False
        # Epoch ms after which the message is dead (queue or message TTL); 0 = never.
        self.expires_at = 0


def message_from_row(payload: Any, row: PagedRow, store: MessageStore) -> Message:
    """A packed index row (paged or delayed) back as a Message; ``payload`` is the MSGS
    record that holds its body."""
    m = Message(payload[2], payload[3], payload[4], payload[5][row.body_index], row.position)
    m.delivery_count = row.delivery_count
    m.seg = store.by_number.get(row.segment)
    m.persisted = row.durable
    m.expires_at = row.expires_at
    return m


class DeliverySink(Protocol):
    """Where a consumer's messages go: the native connection, or an AMQP channel.

    The queue dispatches through this and never imports a wire module; the sink records
    each batch in its session's ``Deliveries`` (core/deliveries.py, the delivery tags and
    the unacked table) and writes it out.
    """

    writable: bool  # False while the socket's write buffer is over its high watermark
    deliveries: Deliveries  # the session's unacked deliveries (a consumer's credit)

    def deliver(self, consumer: Consumer, batch: list[Message]) -> None: ...

    def server_cancel(self, consumer: Consumer, code: int, reason: str) -> None: ...


class QueueOwner(Protocol):
    """The session that declared an exclusive queue (an opaque, hashable object: the
    native connection today); ``Topology.release_owner`` deletes its queues when it
    ends."""

    name: str


class Consumer:
    __slots__ = (
        "tag",
        "queue",
        "sink",
        "prefetch",
        "no_ack",
        "exclusive",
        "arguments",
        "ack_id",
        "active",
        "priority",
    )

    def __init__(
        self,
        tag: str,
        queue: Queue,
        sink: DeliverySink,
        prefetch: int,
        no_ack: bool,
        exclusive: bool,
        arguments: dict[str, Any] | None,
        ack_id: int,
    ) -> None:
        self.tag = tag
        self.queue = queue
        self.sink = sink  # the consumer session it delivers to
        self.prefetch = prefetch  # 0 = unlimited
        self.no_ack = no_ack
        self.exclusive = exclusive
        self.arguments = arguments or {}
        self.ack_id = ack_id
        self.active = True
        # x-priority consume argument (RabbitMQ consumer priorities); 0 by default.
        prio = self.arguments.get("x-priority", 0)
        self.priority = prio if type(prio) is int else 0

    @property
    def unacked(self) -> int:
        """Deliveries to this consumer not yet settled (kept by its session)."""
        return self.sink.deliveries.unacked_of(self)

    def credit(self) -> int:
        sink = self.sink
        if not sink.writable:
            return 0
        if self.prefetch == 0 or self.no_ack:
            return DISPATCH_BATCH_MESSAGES
        return self.prefetch - sink.deliveries.unacked_of(self)


class Queue:
    __slots__ = (
        "name",
        "durable",
        "exclusive_owner",
        "auto_delete",
        "arguments",
        "_ready",
        "_requeued",
        "_consumers",
        "_rr",
        "unacked_holders",
        "_next_position",
        "_dispatch_scheduled",
        "_dispatch_clock_ms",
        "_loop",
        "deleted",
        "had_consumer",
        "bindings",
        "on_unused",
        "on_idle",
        "stats_delivered",
        "stats_published",
        "stats_got",
        "stats_acked",
        "stats_redelivered",
        "ready_bytes",
        "uid",
        "store",
        "max_delivered",
        "persist",
        "memory_budget_bytes",
        "_head_bytes",
        "_tail",
        "_paging_wait",
        "limits",
        "dead_letter",
        "last_used",
        "_expiry_timer",
        "_has_ttl",
        "stats_dead_lettered",
        "stats_expired",
        "stats_dropped",
        "_prio",
        "_delayed",
        "_delay_timer",
        "stats_retried",
        "queue_type",
        "keeps_all",
        "dedup",
        "stats_duplicates",
    )

    def __init__(
        self,
        name: str,
        *,
        durable: bool = False,
        exclusive_owner: QueueOwner | None = None,
        auto_delete: bool = False,
        arguments: dict[str, Any] | None = None,
    ) -> None:
        self.name = name
        self.durable = durable
        self.exclusive_owner = exclusive_owner
        self.auto_delete = auto_delete
        self.arguments: dict[str, Any] = dict(arguments or {})
        # x-queue-type (policies/queue_types.py): a quorum queue keeps every message it
        # takes on disk, transient ones too, as RabbitMQ's quorum queues do.
        self.queue_type = queue_type_of(self.arguments)
        self.keeps_all = self.queue_type == QUORUM
        self._ready: deque[Message] = deque()
        self._requeued: list[tuple[int, Message]] = []
        self._consumers: list[Consumer] = []
        self._rr = 0
        # The consumer sessions holding delivered-but-unacked messages of this queue; each
        # adds and removes itself (core/deliveries.py).  ``unacked_count`` asks them.
        self.unacked_holders: set[Deliveries] = set()
        self._next_position = 0
        self._dispatch_scheduled = False
        # Epoch ms at which the pending dispatch was scheduled: its TTL clock.  A message
        # is judged by the moment a consumer could have taken it, not by how long a loaded
        # loop took to run the dispatch (a TTL of 0 still reaches a consumer already waiting).
        self._dispatch_clock_ms = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self.deleted = False
        self.had_consumer = False
        # Bindings that lead to this queue (owned by their source exchanges).
        self.bindings: list[Any] = []
        # Called when an auto-delete queue loses its last consumer.
        self.on_unused: Callable[[Queue], None] | None = None
        # Called when a queue with x-expires loses its last consumer (its expiry timer).
        self.on_idle: Callable[[Queue], None] | None = None
        # Message counters since start, the API's per-queue message_stats (RabbitMQ's
        # names there): published, pushed to consumers, taken by gets, acked, and
        # deliveries (pushes or gets) of messages delivered before.  Plain ints, bumped
        # once per batch where the queue or the session already counts.
        self.stats_published = 0
        self.stats_delivered = 0
        self.stats_got = 0
        self.stats_acked = 0
        self.stats_redelivered = 0
        self.ready_bytes = 0
        # The message store (persistence for durable queues, paging for long ones), this
        # queue's id in it, and whether persistent messages are made durable.
        self.uid = 0
        self.store: MessageStore | None = None
        self.persist = False
        # Beyond this many bytes of messages in memory, new ones are paged to disk.
        self.memory_budget_bytes = DEFAULT_QUEUE_MEMORY_BUDGET_BYTES
        self._head_bytes = 0
        self._tail = PagedTail()
        self._paging_wait = False
        # Policies: validated arguments; the topology's dead-letter router (None: drop).
        self.limits: QueueLimits = parse_queue_arguments(self.arguments)
        self.dead_letter: Callable[[Queue, list[Message], str], None] | None = None
        self.last_used = time.monotonic()
        self._expiry_timer: asyncio.TimerHandle | None = None
        self._has_ttl = self.limits.message_ttl_ms is not None
        self.stats_dead_lettered: dict[str, int] = {}
        self.stats_expired = 0
        self.stats_dropped = 0
        # x-max-priority: ready messages live in per-priority deques (never paged).
        mp = self.limits.max_priority
        self._prio: PriorityReady | None = PriorityReady(mp) if mp else None
        # Delayed retry: rows of messages held back until their due time.
        self._delayed = DelayedMessages()
        self._delay_timer: asyncio.TimerHandle | None = None
        self.stats_retried = 0
        # x-dedup-window-ms: the ids accepted within the window (made on first use, so
        # a policy can turn it on for an existing queue), and the duplicates dropped.
        self.dedup: DedupWindow | None = None
        self.stats_duplicates = 0
        # Highest position ever handed out (everything at or below it was delivered).
        self.max_delivered = -1

    # -- introspection -------------------------------------------------------------

    @property
    def exclusive(self) -> bool:
        return self.exclusive_owner is not None

    @property
    def ready_count(self) -> int:
        prio = self._prio
        return len(self._ready) + len(self._requeued) + len(self._tail) + (len(prio) if prio else 0)

    @property
    def unacked_count(self) -> int:
        """Messages delivered and not yet settled, over every session holding some."""
        return sum(d.unacked_in(self) for d in self.unacked_holders)

    @property
    def delayed_count(self) -> int:
        return len(self._delayed)

    @property
    def pages(self) -> bool:
        """Whether this queue may keep messages on disk behind an index (not priority)."""
        return self._prio is None

    @property
    def paged_count(self) -> int:
        return len(self._tail)

    @property
    def consumer_count(self) -> int:
        return len(self._consumers)

    @property
    def consumers(self) -> list[Consumer]:
        return self._consumers

    def describe_definition(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "durable": self.durable,
            "auto_delete": self.auto_delete,
            "arguments": self.arguments,
        }

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "durable": self.durable,
            "exclusive": self.exclusive,
            "auto_delete": self.auto_delete,
            "arguments": self.arguments,
            "type": self.queue_type,
            "messages_ready": self.ready_count,
            "messages_unacked": self.unacked_count,
            "consumers": self.consumer_count,
            "message_stats": self.message_stats(),
            **self._describe_dedup(),
        }

    def message_stats(self) -> dict[str, int]:
        """Counts since start in RabbitMQ's queue ``message_stats`` shape (a client
        computes rates from two readings)."""
        return {
            "publish": self.stats_published,
            "deliver": self.stats_delivered,
            "get": self.stats_got,
            "deliver_get": self.stats_delivered + self.stats_got,
            "ack": self.stats_acked,
            "redeliver": self.stats_redelivered,
            "dead_lettered": sum(self.stats_dead_lettered.values()),
            "expired": self.stats_expired,
        }

    def _describe_dedup(self) -> dict[str, Any]:
        """x-dedup-window-ms in effect (argument or policy): the window, the ids in it
        and the duplicates dropped so far."""
        window = self.limits.dedup_window_ms
        if window is None:
            return {}
        dedup = self.dedup
        if dedup is not None:
            dedup.purge(int(time.time() * 1000))
        return {
            "dedup_window_ms": window,
            "dedup_ids": len(dedup) if dedup is not None else 0,
            "duplicates_dropped": self.stats_duplicates,
        }

    # -- enqueue -------------------------------------------------------------------

    def enqueue_many(
        self,
        exchange: str,
        routing_key: str,
        properties: dict[str, Any] | None,
        bodies: list[bytes] | tuple[bytes, ...],
        persistent: bool = False,
        deduplicate: bool = True,
    ) -> tuple[bool, int, int]:
        """Append messages.

        Returns (written to the store as persistent, how many were accepted, how many of
        the last ones were duplicates).  A bounded queue with x-overflow
        reject-publish(-dlx) accepts only what fits; the caller nacks the rest.  A queue
        with x-dedup-window-ms drops a message whose message_id it accepted within the
        window (the bodies of one call share their properties, so all but the first are
        duplicates of the first).  ``deduplicate`` False: a message moved inside the broker
        (dead-lettered, replayed) is not a publisher's retry and is never dropped.
        """
        limits = self.limits
        message_id: str | None = None
        duplicates = 0
        now_ms = 0
        window = limits.dedup_window_ms if deduplicate else None
        if window is not None:
            if properties is not None:
                message_id = properties.get("message_id")
            if message_id is not None:
                now_ms = int(time.time() * 1000)
                dedup = self.dedup
                if dedup is None:
                    dedup = self.dedup = DedupWindow(window)
                elif dedup.window_ms != window:
                    dedup.set_window(window)
                if dedup.seen(message_id, now_ms):
                    self.stats_duplicates += len(bodies)
                    return False, 0, len(bodies)
                if len(bodies) > 1:
                    duplicates = len(bodies) - 1
                    self.stats_duplicates += duplicates
                    bodies = bodies[:1]
        elif self.dedup is not None and limits.dedup_window_ms is None:
            self.dedup = None  # the window was turned off: its ids are forgotten
        if limits.bounded and limits.overflow != "drop-head":
            room = self._room(bodies)
            if room < len(bodies):
                refused = bodies[room:]
                bodies = bodies[:room]
                if limits.overflow == "reject-publish-dlx":
                    self._dead_letter_new(exchange, routing_key, properties, refused, MAXLEN)
                if not bodies:
                    return False, 0, duplicates
        n = len(bodies)
        first_pos = self._next_position
        self._next_position = first_pos + n
        self.stats_published += n
        sizes = [len(b) for b in bodies]
        size = sum(sizes)
        self.ready_bytes += size
        durable = (persistent or self.keeps_all) and self.persist
        store = self.store
        expires_at = self._expiry_for(properties)
        mem = size + n * MESSAGE_OVERHEAD_BYTES
        if (
            store is not None
            and self._prio is None
            and (self._tail or self._head_bytes + mem > self.memory_budget_bytes)
        ):
            # Long queue: keep only a packed index row per message; bodies stay on disk.
            seg, offset = store.append_messages(
                self.uid,
                first_pos,
                exchange,
                routing_key,
                properties,
                bodies,
                durable=durable,
                expires_at=expires_at,
            )
            self._tail.append_batch(first_pos, sizes, seg.number, offset, durable, expires_at)
        else:
            fresh: list[Message] = []
            pos = first_pos
            for body in bodies:
                fresh.append(Message(exchange, routing_key, properties, body, pos))
                pos += 1
            self._head_bytes += mem
            if expires_at:
                for m in fresh:
                    m.expires_at = expires_at
            if durable:
                assert store is not None
                seg, _ = store.append_messages(
                    self.uid,
                    first_pos,
                    exchange,
                    routing_key,
                    properties,
                    bodies,
                    expires_at=expires_at,
                )
                for m in fresh:
                    m.seg = seg
                    m.persisted = True
            if self._prio is not None:
                self._prio.extend(fresh, properties)
            else:
                self._ready.extend(fresh)
        if message_id is not None:
            dedup = self.dedup
            assert dedup is not None
            dedup.add(message_id, now_ms)
            if durable:
                assert store is not None
                store.dedup(self.uid, message_id, now_ms, dedup.expires_at(now_ms))
        if limits.bounded and limits.overflow == "drop-head":
            self._drop_head_over_limit()
        if expires_at and self._expiry_timer is None:
            self._schedule_expiry()
        if self._consumers and not self._dispatch_scheduled:
            self.schedule_dispatch()
        return durable, n, duplicates

    # -- policies: TTL, length limits, delivery limit, dead-lettering ------------------

    def _expiry_for(self, properties: dict[str, Any] | None) -> int:
        """Epoch ms at which a message published now expires (0 = never)."""
        ttl = self.limits.message_ttl_ms
        if properties:
            exp = properties.get("expiration")
            if exp is not None and (ttl is None or exp < ttl):
                ttl = exp
        if ttl is None:
            return 0
        self._has_ttl = True
        # +1: a TTL of 0 still lets a consumer waiting right now take the message.
        return int(time.time() * 1000) + ttl + 1

    def _room(self, bodies: list[bytes] | tuple[bytes, ...]) -> int:
        """How many of ``bodies`` fit under x-max-length / x-max-length-bytes."""
        limits = self.limits
        room = len(bodies)
        if limits.max_length is not None:
            room = max(0, min(room, limits.max_length - self.ready_count))
        if limits.max_length_bytes is not None:
            free = limits.max_length_bytes - self.ready_bytes
            fit = 0
            for body in bodies[:room]:
                free -= len(body)
                if free < 0:
                    break
                fit += 1
            room = fit
        return room

    def _over_limit(self) -> bool:
        limits = self.limits
        return (limits.max_length is not None and self.ready_count > limits.max_length) or (
            limits.max_length_bytes is not None and self.ready_bytes > limits.max_length_bytes
        )

    def _drop_head_over_limit(self) -> None:
        dropped: list[Message] = []
        while self._over_limit():
            msg = self._pop_head()
            if msg is None:
                break
            dropped.append(msg)
        if dropped:
            self._dead_letter_or_drop(dropped, MAXLEN)

    def _dead_letter_new(
        self,
        exchange: str,
        routing_key: str,
        properties: dict[str, Any] | None,
        bodies: list[bytes] | tuple[bytes, ...],
        reason: str,
    ) -> None:
        msgs = [Message(exchange, routing_key, properties, b, -1) for b in bodies]
        self._dead_letter_or_drop(msgs, reason)

    def _dead_letter_or_drop(self, msgs: list[Message], reason: str) -> None:
        """Messages leave this queue for ``reason``: to the dead-letter exchange or gone."""
        if reason == EXPIRED:
            self.stats_expired += len(msgs)
        if self.dead_letter is not None and self.limits.dead_letter_exchange is not None:
            counts = self.stats_dead_lettered
            counts[reason] = counts.get(reason, 0) + len(msgs)
            self.dead_letter(self, msgs, reason)  # enqueues copies first: then we forget
        elif reason != EXPIRED:
            self.stats_dropped += len(msgs)
        for m in msgs:
            self.forget(m)

    def reject(self, msgs: list[Message], reason: str) -> None:
        """Delivered messages settled without requeue (nack/reject, delivery limit).

        With an x-retry-delays schedule, the n-th failure of a message is retried after
        the n-th delay; past the schedule it is dead-lettered.
        """
        delays = self.limits.retry_delays_ms
        if delays and self.store is not None:
            later: list[Message] = []
            for m in msgs:
                attempt = m.delivery_count - 1
                if 0 <= attempt < len(delays):
                    self._hold(m, delays[attempt], self.limits.retry_jitter)
                else:
                    later.append(m)
            msgs = later
        if msgs:
            self._dead_letter_or_drop(msgs, reason)

    def delay(self, msgs: list[Message], delay_ms: int) -> None:
        """nack with a delay: delivered messages come back after ``delay_ms``."""
        if self.store is None or self.deleted:
            self.requeue(msgs)
            return
        for m in msgs:
            self._hold(m, delay_ms, 0.0)

    def _hold(self, msg: Message, delay_ms: int, jitter: float) -> None:
        """Move a message's body to the store and keep only an index row until due."""
        store = self.store
        assert store is not None
        spread = delay_ms * jitter
        due = int(
            time.time() * 1000 + delay_ms + (random.uniform(-spread, spread) if spread else 0)
        )
        seg, offset = self._store_copy(msg)
        if msg.persisted:
            store.delays(self.uid, msg.position, due)
        row = PagedRow(
            msg.position, seg.number, offset, 0, msg.delivery_count, len(msg.body),
            msg.persisted, msg.expires_at,
        )  # fmt: skip
        self._delayed.add(delay_ms, row, due)
        self.stats_retried += 1
        if self._delay_timer is None:
            self._schedule_delays()

    def restore_delayed(self, row: PagedRow, due_ms: int) -> None:
        """Recovery: a persistent message still waiting for its retry."""
        self._delayed.add(0, row, due_ms)

    def start_delays(self) -> None:
        if len(self._delayed) and self._delay_timer is None:
            self._schedule_delays()

    def _schedule_delays(self) -> None:
        due = self._delayed.next_due()
        if due is None or self.deleted:
            return
        loop = self._loop
        if loop is None:
            loop = self._loop = asyncio.get_running_loop()
        delay = max(0.0, due / 1000.0 - time.time())
        self._delay_timer = loop.call_later(delay + 0.001, self._release_delayed)

    def _release_delayed(self) -> None:
        self._delay_timer = None
        store = self.store
        if self.deleted or store is None:
            return
        rows = self._delayed.pop_due(int(time.time() * 1000))
        if rows:
            cache: tuple[int, int, Any] = (-1, -1, None)
            back: list[Message] = []
            for row in rows:
                if cache[0] != row.segment or cache[1] != row.offset:
                    cache = (row.segment, row.offset, store.read_record(row.segment, row.offset))
                back.append(message_from_row(cache[2], row, store))
            self.requeue(back)
        self._schedule_delays()

    def drop_delayed(self) -> None:
        store = self.store
        for row in self._delayed.drain():
            seg = store.by_number.get(row.segment) if store is not None else None
            if store is not None and seg is not None:
                store.settle(self.uid, row.position, seg, row.durable)

    def _pop_head(self) -> Message | None:
        """Remove the next ready message without delivering it (drop-head, expiry)."""
        if self._prio is not None:
            msg = self._prio.pop_lowest()
            if msg is not None:
                self.ready_bytes -= len(msg.body)
                self._head_bytes -= len(msg.body) + MESSAGE_OVERHEAD_BYTES
            return msg
        if self._requeued:
            msg = heapq.heappop(self._requeued)[1]
        elif self._ready or (self._tail and self._page_in()):
            msg = self._ready.popleft()
        else:
            return None
        size = len(msg.body)
        self.ready_bytes -= size
        self._head_bytes -= size + MESSAGE_OVERHEAD_BYTES
        return msg

    def extract(self, select: Callable[[Message], bool], limit: int = 0) -> list[Message]:
        """Remove the ready messages ``select`` accepts (at most ``limit``, 0 = all), in
        delivery order; the others keep their places.  Pages a long queue through memory.
        """
        taken: list[Message] = []
        kept: list[Message] = []
        prio = self._prio
        while True:
            if prio is not None:
                msg = prio.pop()
            elif self._requeued:
                msg = heapq.heappop(self._requeued)[1]
            elif self._ready or (self._tail and self._page_in()):
                msg = self._ready.popleft()
            else:
                break
            if msg is None:
                break
            if (not limit or len(taken) < limit) and select(msg):
                taken.append(msg)
                size = len(msg.body)
                self.ready_bytes -= size
                self._head_bytes -= size + MESSAGE_OVERHEAD_BYTES
            else:
                kept.append(msg)
        # Everything left is back in position order, ahead of nothing else.
        if prio is not None:
            for m in kept:
                prio.push_requeued(m)
        else:
            self._ready.extendleft(reversed(kept))
        return taken

    def _head(self) -> tuple[int, int] | None:
        """(position, expires_at) of the next ready message (soonest-expiring head)."""
        if self._prio is not None:
            timed = [m for m in self._prio.heads() if m.expires_at]
            if not timed:
                return None
            first = min(timed, key=lambda m: m.expires_at)
            return first.position, first.expires_at
        if self._requeued:
            m = self._requeued[0][1]
            return m.position, m.expires_at
        if self._ready:
            m = self._ready[0]
            return m.position, m.expires_at
        if self._tail:
            row = self._tail.peek(1)[0]
            return row.position, row.expires_at
        return None

    def expire_head(self, now: int = 0) -> int:
        """Dead-letter expired messages at the head; only the head is ever examined."""
        if not self._has_ttl:
            return 0
        if not now:
            now = int(time.time() * 1000)
        if self._prio is None:
            # Fast path (once per delivered message): is the head due at all?
            if self._requeued:
                due = self._requeued[0][1].expires_at
            elif self._ready:
                due = self._ready[0].expires_at
            elif self._tail:
                due = self._tail.expires[self._tail._start]
            else:
                return 0
            if not due or due > now:
                return 0
        expired: list[Message] = []
        prio = self._prio
        if prio is not None:
            while True:
                heads_due = [m for m in prio.heads() if m.expires_at and m.expires_at <= now]
                if not heads_due:
                    break
                for m in heads_due:
                    prio.remove(m)
                    self.ready_bytes -= len(m.body)
                    self._head_bytes -= len(m.body) + MESSAGE_OVERHEAD_BYTES
                    expired.append(m)
        while prio is None:
            head = self._head()
            if head is None or not head[1] or head[1] > now:
                break
            msg = self._pop_head()
            if msg is None:
                break
            expired.append(msg)
        if expired:
            self._dead_letter_or_drop(expired, EXPIRED)
        return len(expired)

    def _schedule_expiry(self) -> None:
        if self.deleted:
            return
        head = self._head()
        if head is None or not head[1]:
            return
        delay = max(0.0, head[1] / 1000.0 - time.time())
        loop = self._loop
        if loop is None:
            loop = self._loop = asyncio.get_running_loop()
        self._expiry_timer = loop.call_later(delay + 0.001, self._on_expiry_timer)

    def _on_expiry_timer(self) -> None:
        self._expiry_timer = None
        if self.deleted:
            return
        if self._dispatch_scheduled and self._consumers:
            # Leave what the pending dispatch may still hand to a waiting consumer; the
            # timer comes back right after it for what nobody took.
            self.expire_head(self._dispatch_clock_ms)
        else:
            self.expire_head()
        self._schedule_expiry()

    def restore(self, messages: list[Message], next_position: int) -> None:
        """Recovery: messages in position order, before any client connects."""
        if self._prio is not None:
            for m in messages:
                self._prio.append(m)
        else:
            self._ready.extend(messages)
        if any(m.expires_at for m in messages):
            self._has_ttl = True
        n = sum(len(m.body) for m in messages)
        self.ready_bytes += n
        self._head_bytes += n + len(messages) * MESSAGE_OVERHEAD_BYTES
        self._next_position = max(self._next_position, next_position)

    def restore_dedup(self, entries: dict[str, tuple[int, int]], now_ms: int) -> int:
        """Recovery: the stored ids ``{message_id: (accepted_ms, expires_ms)}`` still
        inside the window; returns how many."""
        window = self.limits.dedup_window_ms
        if window is None or not entries:
            return 0
        dedup = self.dedup = DedupWindow(window)
        live = sorted(
            (expires, accepted, mid)
            for mid, (accepted, expires) in entries.items()
            if expires > now_ms
        )
        for expires, _accepted, mid in live:
            dedup.add(mid, expires - window)
        return len(live)

    def restore_paged_row(self, row: PagedRow) -> None:
        """Recovery of a long queue: an index row only; the body stays in its segment."""
        self._tail.append_row(row)
        self.ready_bytes += row.size
        if row.expires_at:
            self._has_ttl = True

    def forget(self, msg: Message) -> None:
        """A stored message left the queue for good (acked, dropped, purged)."""
        seg = msg.seg
        if seg is not None and self.store is not None:
            self.store.settle(self.uid, msg.position, seg, msg.persisted)
            msg.seg = None

    def _page_in(self) -> bool:
        """Load the next rows of the paged tail into memory; False if none could be."""
        store = self.store
        tail = self._tail
        if store is None or not tail:
            return False
        rows = tail.peek(PAGE_IN_MESSAGES)
        ready = self._ready
        cache_key: tuple[int, int] | None = None
        payload: Any = None
        loaded = 0
        for row in rows:
            key = (row.segment, row.offset)
            if key != cache_key:
                if not store.readable(row.segment, row.offset):
                    break  # still in the commit being written: try again after it
                payload = store.read_record(row.segment, row.offset)
                cache_key = key
            ready.append(message_from_row(payload, row, store))
            self._head_bytes += row.size + MESSAGE_OVERHEAD_BYTES
            loaded += 1
        if loaded:
            tail.pop_front(loaded)
            return True
        if not self._paging_wait:
            self._paging_wait = True
            store.after_commit(self._paging_resume)
        return False

    # -- compaction -----------------------------------------------------------------

    def _store_copy(self, msg: Message) -> tuple[Segment, int]:
        """Append ``msg`` to the active segment as its own record; the old copy, if any,
        is settled once the new one is on disk.  Returns (segment, offset)."""
        store = self.store
        assert store is not None
        old = msg.seg
        seg, offset = store.append_messages(
            self.uid,
            msg.position,
            msg.exchange,
            msg.routing_key,
            msg.properties,
            (msg.body,),
            msg.delivery_count,
            durable=msg.persisted,
            expires_at=msg.expires_at,
        )
        if old is not None:
            store.moved(old, 1)
        return seg, offset

    def copy_forward(self, msg: Message) -> None:
        """Re-append a stored message to the active segment (compaction)."""
        if self.store is None or msg.seg is None:
            return
        msg.seg = self._store_copy(msg)[0]

    def relocate(self, old: Segment) -> int:
        """Copy every ready message stored in ``old`` forward; returns how many.

        Side state goes with the copies, since the old segment (with its side records)
        is deleted once they are on disk: delivery counts and TTL deadlines are fields of
        the copied MSGS record, a delayed row gets a DELAYS record beside its copy, and
        the queue's DELIVERED watermark is written again.
        """
        store = self.store
        if store is None:
            return 0
        moved = 0
        for m in self._ready:
            if m.seg is old:
                self.copy_forward(m)
                moved += 1
        for _, m in self._requeued:
            if m.seg is old:
                self.copy_forward(m)
                moved += 1
        for m in self._prio or ():
            if m.seg is old:
                self.copy_forward(m)
                moved += 1
        moved += self._relocate_rows(self._tail, old)
        for rows, due, shift in self._delayed.tails():
            moved += self._relocate_rows(rows, old, due, shift)
        if self.max_delivered >= 0 and self.persist:
            # The newest DELIVERED record may be in ``old``: without it, messages handed
            # out before a restart would come back without their redelivered flag.
            store.delivered(self.uid, self.max_delivered)
        return moved

    def _relocate_rows(
        self, tail: PagedTail, old: Segment, due: array[int] | None = None, shift: int = 0
    ) -> int:
        """Copy the rows of ``tail`` stored in ``old`` forward; ``due`` (delayed rows):
        their due times, written again as a DELAYS record next to the copies."""
        store = self.store
        number = old.number
        if store is None or not tail or number not in tail.segment:
            return 0
        cache: tuple[int, Any] = (-1, None)
        n_tail = 0
        delays: list[list[int]] = []
        for i in tail.rows_in_segment(number):
            off = tail.offset[i]
            if cache[0] != off:
                cache = (off, store.read_record(number, off))
            p = cache[1]
            durable = bool(tail.durable[i])
            seg, new_off = store.append_messages(
                self.uid,
                tail.position[i],
                p[2],
                p[3],
                p[4],
                (p[5][tail.index[i]],),
                tail.count[i],
                durable=durable,
                expires_at=tail.expires[i],
            )
            tail.segment[i] = seg.number
            tail.offset[i] = new_off
            tail.index[i] = 0
            n_tail += 1
            if due is not None and durable:
                delays.append([tail.position[i], due[i + shift]])
        store.delays_many(self.uid, delays)
        store.moved(old, n_tail)
        return n_tail

    def _paging_resume(self) -> None:
        self._paging_wait = False
        if self._consumers:
            self.schedule_dispatch()

    def requeue(self, messages: Iterable[Message]) -> None:
        """Put delivered messages back at their original positions.

        With x-delivery-limit, a message returned more times than the limit is
        dead-lettered (reason delivery_limit) instead, as with RabbitMQ quorum queues.
        """
        if self.deleted:
            for msg in messages:
                self.forget(msg)
            return
        heap = self._requeued
        store = self.store
        limit = self.limits.delivery_limit
        over: list[Message] = []
        n = 0
        for msg in messages:
            n += 1
            if limit is not None and msg.delivery_count > limit:
                over.append(msg)
                continue
            if self._prio is not None:
                self._prio.push_requeued(msg)
            else:
                heapq.heappush(heap, (msg.position, msg))
            self.ready_bytes += len(msg.body)
            self._head_bytes += len(msg.body) + MESSAGE_OVERHEAD_BYTES
            if store is not None and msg.persisted and msg.seg is not None:
                store.requeued(self.uid, msg.position, msg.delivery_count)
        if over:
            self._dead_letter_or_drop(over, DELIVERY_LIMIT)
        if self._has_ttl and self._expiry_timer is None:
            self._schedule_expiry()
        if n and self._consumers:
            self.schedule_dispatch()

    def take(self, now_ms: int = 0) -> Message | None:
        """Pop the next ready message; the caller records it as delivered.

        ``now_ms``: the dispatch round's clock, so TTL checks cost no clock read each.
        """
        if self._has_ttl:
            self.expire_head(now_ms)
        if self._prio is not None:
            # Priority order breaks the position watermark: none is recorded.
            msg = self._prio.pop()
            if msg is None:
                return None
            if msg.delivery_count and msg.persisted and self.store is not None:
                self.store.requeued(self.uid, msg.position, msg.delivery_count + 1)
        elif self._requeued:
            msg = heapq.heappop(self._requeued)[1]
            if msg.persisted and self.store is not None:
                # Redeliveries of requeued messages: keep the count growing across crashes.
                self.store.requeued(self.uid, msg.position, msg.delivery_count + 1)
        elif self._ready or (self._tail and self._page_in()):
            msg = self._ready.popleft()
            self.max_delivered = msg.position
        else:
            return None
        size = len(msg.body)
        self.ready_bytes -= size
        self._head_bytes -= size + MESSAGE_OVERHEAD_BYTES
        msg.delivery_count += 1
        return msg

    def peek(self, n: int) -> list[Message]:
        """Up to ``n`` ready messages in delivery order, without taking them."""
        prio = self._prio
        if prio is not None:
            return heapq.nsmallest(
                n,
                prio,
                key=lambda m: (-message_priority(m.properties, prio.max_priority), m.position),
            )
        out = [m for _, m in heapq.nsmallest(n, self._requeued)]
        for m in self._ready:
            if len(out) >= n:
                return out
            out.append(m)
        store = self.store
        if store is None:
            return out
        for row in self._tail.peek(n - len(out)):
            if not store.readable(row.segment, row.offset):
                break
            out.append(message_from_row(store.read_record(row.segment, row.offset), row, store))
        return out

    def purge(self) -> int:
        n = self.ready_count
        store = self.store
        if store is not None:
            for msg in self._ready:
                self.forget(msg)
            for _, msg in self._requeued:
                self.forget(msg)
            if self._prio is not None:
                for msg in self._prio:
                    self.forget(msg)
            tail = self._tail
            while tail:
                for row in tail.pop_front(PAGE_IN_MESSAGES):
                    seg = store.by_number.get(row.segment)
                    if seg is not None:
                        store.settle(self.uid, row.position, seg, row.durable)
        self._ready.clear()
        self._requeued.clear()
        if self._prio is not None:
            self._prio.clear()
        self.ready_bytes = 0
        self._head_bytes = 0
        return n

    # -- consumers -----------------------------------------------------------------

    def start_expiry(self) -> None:
        """After recovery: expire what is due and arm the head's timer."""
        if self._has_ttl:
            self.expire_head()
            if self._expiry_timer is None:
                self._schedule_expiry()

    def add_consumer(self, consumer: Consumer) -> None:
        self.last_used = time.monotonic()
        self._consumers.append(consumer)
        self.had_consumer = True
        self.schedule_dispatch()

    def remove_consumer(self, consumer: Consumer) -> None:
        consumer.active = False
        self.last_used = time.monotonic()
        try:
            self._consumers.remove(consumer)
        except ValueError:
            return
        if not self._consumers and self.auto_delete and self.on_unused is not None:
            self.on_unused(self)
        if (
            not self._consumers
            and not self.deleted
            and self.limits.expires_ms is not None
            and self.on_idle is not None
        ):
            self.on_idle(self)

    def has_exclusive_consumer(self) -> bool:
        return any(c.exclusive for c in self._consumers)

    def check_new_consumer(self, exclusive: bool) -> None:
        """Raise ``ResourceLocked`` (details ``reason``: ``EXCLUSIVE_USE``) unless a new
        consumer may join: none joins a queue that has an exclusive consumer, and an
        exclusive one only a queue with no consumers (RabbitMQ's basic.consume rule,
        whichever connection asks).  The AMQP adapter answers it as RabbitMQ does, 403
        ACCESS_REFUSED; the native protocol as 405."""
        if self.has_exclusive_consumer() or (exclusive and self._consumers):
            raise ResourceLocked(
                f"queue '{self.name}' in exclusive use",
                details={"queue": self.name, "reason": EXCLUSIVE_USE},
            )

    # -- dispatch ------------------------------------------------------------------

    def schedule_dispatch(self) -> None:
        if self._dispatch_scheduled or self.deleted:
            return
        self._dispatch_scheduled = True
        # No clock read per dispatch without TTLs (0: a TTL message arriving before the
        # dispatch runs is judged by the clock then, in expire_head).
        self._dispatch_clock_ms = int(time.time() * 1000) if self._has_ttl else 0
        loop = self._loop
        if loop is None:
            loop = self._loop = asyncio.get_running_loop()
        loop.call_soon(self._dispatch)

    def _dispatch(self) -> None:
        self._dispatch_scheduled = False
        if self.deleted or not self._consumers:
            return
        now = self._dispatch_clock_ms
        budget = DISPATCH_BATCH_MESSAGES
        consumers = self._consumers
        if self.limits.single_active_consumer:
            # Only the consumer that registered first gets messages; the next one takes
            # over when it goes.
            consumers = consumers[:1]
        if len(consumers) == 1:
            c = consumers[0]
            n = min(c.credit(), budget)
            if n > 0:
                self._deliver_batch(c, n, now)
        elif any(c.priority for c in consumers):
            # Consumer priorities: lower-priority consumers get messages only while every
            # higher-priority one is out of credit; round-robin among equals.
            for prio in sorted({c.priority for c in consumers}, reverse=True):
                group = [c for c in consumers if c.priority == prio]
                budget = self._dispatch_round_robin(budget, group, now)
                if budget <= 0 or not self.ready_count:
                    break
        else:
            budget = self._dispatch_round_robin(budget, consumers, now)
        if self.ready_count and any(c.credit() > 0 for c in consumers):
            self.schedule_dispatch()

    def _deliver_batch(self, consumer: Consumer, n: int, now: int) -> None:
        batch: list[Message] = []
        size = 0
        take = self.take
        while len(batch) < n:
            msg = take(now)
            if msg is None:
                break
            batch.append(msg)
            size += len(msg.body)
            if size >= DELIVER_FRAME_BODY_BYTES:
                consumer.sink.deliver(consumer, batch)
                self._delivered(len(batch))
                batch = []
                size = 0
                if not consumer.sink.writable:
                    break  # its consume quota holds deliveries back (core/quotas.py)
        if batch:
            consumer.sink.deliver(consumer, batch)
            self._delivered(len(batch))

    def note_delivered(self) -> None:
        if self.store is not None and self.persist and self.max_delivered >= 0:
            self.store.delivered(self.uid, self.max_delivered)

    def _delivered(self, n: int) -> None:
        """A dispatched batch of ``n`` went to a sink (its session counts it as unacked)."""
        self.stats_delivered += n
        # The DELIVERED watermark is read by recovery only, which skips a queue that does
        # not persist (its store only pages): written for it, it cost a write and an
        # fsync per delivery, and a file descriptor (a new segment's directory fsync)
        # at a time the broker may have none to spare.
        if self.store is not None and self.persist:
            self.store.delivered(self.uid, self.max_delivered)

    def _dispatch_round_robin(self, budget: int, consumers: list[Consumer], now: int) -> int:
        k = len(consumers)
        batches: dict[int, list[Message]] = {}
        credits = [c.credit() for c in consumers]
        rr = self._rr % k
        idle = 0
        while budget > 0 and idle < k:
            if credits[rr] <= 0:
                idle += 1
                rr = (rr + 1) % k
                continue
            msg = self.take(now)
            if msg is None:
                break
            idle = 0
            credits[rr] -= 1
            batches.setdefault(rr, []).append(msg)
            budget -= 1
            rr = (rr + 1) % k
        self._rr = rr
        for i, batch in batches.items():
            c = consumers[i]
            c.sink.deliver(c, batch)
            self._delivered(len(batch))
        return budget
