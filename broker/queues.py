"""Queues: ready messages, consumers with credit, round-robin dispatch, requeue.

A queue owns its messages and its consumers.  Connections own delivery tags and the
unacked table; a queue only counts how many of its messages are out.

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
from collections import deque
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any, Final

if TYPE_CHECKING:
    from .connection import Connection
    from .store.segments import MessageStore, Segment

# Messages handed out by one dispatch round before yielding to the event loop.
DISPATCH_BATCH_MESSAGES: Final = 4096
# Body bytes in one DELIVER frame before the batch is cut.
DELIVER_FRAME_BODY_BYTES: Final = 1024 * 1024


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
        # The store segment holding this message when it is persisted, else None.
        self.seg: Segment | None = None


class Consumer:
    __slots__ = (
        "tag",
        "queue",
        "connection",
        "prefetch",
        "no_ack",
        "exclusive",
        "arguments",
        "unacked",
        "ack_id",
        "active",
    )

    def __init__(
        self,
        tag: str,
        queue: Queue,
        connection: Connection,
        prefetch: int,
        no_ack: bool,
        exclusive: bool,
        arguments: dict[str, Any] | None,
        ack_id: int,
    ) -> None:
        self.tag = tag
        self.queue = queue
        self.connection = connection
        self.prefetch = prefetch  # 0 = unlimited
        self.no_ack = no_ack
        self.exclusive = exclusive
        self.arguments = arguments or {}
        self.unacked = 0
        self.ack_id = ack_id
        self.active = True

    def credit(self) -> int:
        if not self.connection.writable:
            return 0
        if self.prefetch == 0 or self.no_ack:
            return DISPATCH_BATCH_MESSAGES
        return self.prefetch - self.unacked


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
        "unacked_count",
        "_next_position",
        "_dispatch_scheduled",
        "_loop",
        "deleted",
        "had_consumer",
        "bindings",
        "on_unused",
        "stats_delivered",
        "stats_published",
        "ready_bytes",
        "uid",
        "store",
        "max_delivered",
    )

    def __init__(
        self,
        name: str,
        *,
        durable: bool = False,
        exclusive_owner: Connection | None = None,
        auto_delete: bool = False,
        arguments: dict[str, Any] | None = None,
    ) -> None:
        self.name = name
        self.durable = durable
        self.exclusive_owner = exclusive_owner
        self.auto_delete = auto_delete
        self.arguments: dict[str, Any] = dict(arguments or {})
        self._ready: deque[Message] = deque()
        self._requeued: list[tuple[int, Message]] = []
        self._consumers: list[Consumer] = []
        self._rr = 0
        self.unacked_count = 0
        self._next_position = 0
        self._dispatch_scheduled = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self.deleted = False
        self.had_consumer = False
        # Bindings that lead to this queue (owned by their source exchanges).
        self.bindings: list[Any] = []
        # Called when an auto-delete queue loses its last consumer.
        self.on_unused: Callable[[Queue], None] | None = None
        self.stats_published = 0
        self.stats_delivered = 0
        self.ready_bytes = 0
        # Durable queues: a stable id in the store and the store itself.
        self.uid = 0
        self.store: MessageStore | None = None
        # Highest position ever handed out (everything at or below it was delivered).
        self.max_delivered = -1

    # -- introspection -------------------------------------------------------------

    @property
    def exclusive(self) -> bool:
        return self.exclusive_owner is not None

    @property
    def ready_count(self) -> int:
        return len(self._ready) + len(self._requeued)

    @property
    def consumer_count(self) -> int:
        return len(self._consumers)

    @property
    def consumers(self) -> list[Consumer]:
        return self._consumers

    def same_as(
        self, durable: bool, exclusive: bool, auto_delete: bool, arguments: dict[str, Any] | None
    ) -> bool:
        return (
            self.durable == durable
            and self.exclusive == exclusive
            and self.auto_delete == auto_delete
            and self.arguments == dict(arguments or {})
        )

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
            "messages_ready": self.ready_count,
            "messages_unacked": self.unacked_count,
            "consumers": self.consumer_count,
        }

    # -- enqueue -------------------------------------------------------------------

    def enqueue_many(
        self,
        exchange: str,
        routing_key: str,
        properties: dict[str, Any] | None,
        bodies: list[bytes] | tuple[bytes, ...],
        persistent: bool = False,
    ) -> bool:
        """Append messages; True if they were written to the store."""
        pos = self._next_position
        ready = self._ready
        first = len(ready)
        size = 0
        for body in bodies:
            ready.append(Message(exchange, routing_key, properties, body, pos))
            pos += 1
            size += len(body)
        stored = False
        store = self.store
        if persistent and store is not None:
            seg = store.append_messages(
                self.uid, self._next_position, exchange, routing_key, properties, bodies
            )
            for i in range(first, len(ready)):
                ready[i].seg = seg
            stored = True
        self._next_position = pos
        self.ready_bytes += size
        self.stats_published += len(bodies)
        if self._consumers and not self._dispatch_scheduled:
            self.schedule_dispatch()
        return stored

    def restore(self, messages: list[Message], next_position: int) -> None:
        """Recovery: messages in position order, before any client connects."""
        self._ready.extend(messages)
        self.ready_bytes += sum(len(m.body) for m in messages)
        self._next_position = max(self._next_position, next_position)

    def forget(self, msg: Message) -> None:
        """A stored message left the queue for good (acked, dropped, purged)."""
        seg = msg.seg
        if seg is not None and self.store is not None:
            self.store.settle(self.uid, msg.position, seg)
            msg.seg = None

    def requeue(self, messages: Iterable[Message]) -> None:
        """Put delivered messages back at their original positions."""
        if self.deleted:
            for msg in messages:
                self.forget(msg)
            return
        heap = self._requeued
        store = self.store
        n = 0
        for msg in messages:
            heapq.heappush(heap, (msg.position, msg))
            self.ready_bytes += len(msg.body)
            n += 1
            if store is not None and msg.seg is not None:
                store.requeued(self.uid, msg.position, msg.delivery_count)
        self.unacked_count -= n
        if n and self._consumers:
            self.schedule_dispatch()

    def settle(self, n: int) -> None:
        """``n`` delivered messages were acked or dropped."""
        self.unacked_count -= n

    def take(self) -> Message | None:
        """Pop the next ready message (for basic.get); the caller records it as delivered."""
        if self._requeued:
            msg = heapq.heappop(self._requeued)[1]
        elif self._ready:
            msg = self._ready.popleft()
            self.max_delivered = msg.position
        else:
            return None
        self.ready_bytes -= len(msg.body)
        msg.delivery_count += 1
        return msg

    def purge(self) -> int:
        n = self.ready_count
        if self.store is not None:
            for msg in self._ready:
                self.forget(msg)
            for _, msg in self._requeued:
                self.forget(msg)
        self._ready.clear()
        self._requeued.clear()
        self.ready_bytes = 0
        return n

    # -- consumers -----------------------------------------------------------------

    def add_consumer(self, consumer: Consumer) -> None:
        self._consumers.append(consumer)
        self.had_consumer = True
        self.schedule_dispatch()

    def remove_consumer(self, consumer: Consumer) -> None:
        consumer.active = False
        try:
            self._consumers.remove(consumer)
        except ValueError:
            return
        if not self._consumers and self.auto_delete and self.on_unused is not None:
            self.on_unused(self)

    def has_exclusive_consumer(self) -> bool:
        return any(c.exclusive for c in self._consumers)

    # -- dispatch ------------------------------------------------------------------

    def schedule_dispatch(self) -> None:
        if self._dispatch_scheduled or self.deleted:
            return
        self._dispatch_scheduled = True
        loop = self._loop
        if loop is None:
            loop = self._loop = asyncio.get_running_loop()
        loop.call_soon(self._dispatch)

    def _dispatch(self) -> None:
        self._dispatch_scheduled = False
        if self.deleted or not self._consumers:
            return
        budget = DISPATCH_BATCH_MESSAGES
        consumers = self._consumers
        if len(consumers) == 1:
            c = consumers[0]
            n = min(c.credit(), budget)
            if n > 0:
                self._deliver_batch(c, n)
        else:
            budget = self._dispatch_round_robin(budget)
        if self.ready_count and any(c.credit() > 0 for c in consumers):
            self.schedule_dispatch()

    def _deliver_batch(self, consumer: Consumer, n: int) -> None:
        batch: list[Message] = []
        size = 0
        take = self.take
        while len(batch) < n:
            msg = take()
            if msg is None:
                break
            batch.append(msg)
            size += len(msg.body)
            if size >= DELIVER_FRAME_BODY_BYTES:
                consumer.connection.deliver(consumer, batch)
                self._account(consumer, batch)
                batch = []
                size = 0
        if batch:
            consumer.connection.deliver(consumer, batch)
            self._account(consumer, batch)

    def note_delivered(self) -> None:
        if self.store is not None and self.max_delivered >= 0:
            self.store.delivered(self.uid, self.max_delivered)

    def _account(self, consumer: Consumer, batch: list[Message]) -> None:
        n = len(batch)
        self.stats_delivered += n
        if self.store is not None:
            self.store.delivered(self.uid, self.max_delivered)
        if not consumer.no_ack:
            consumer.unacked += n
            self.unacked_count += n

    def _dispatch_round_robin(self, budget: int) -> int:
        consumers = self._consumers
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
            msg = self.take()
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
            c.connection.deliver(c, batch)
            self._account(c, batch)
        return budget
