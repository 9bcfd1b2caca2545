"""The core's atomic commit: publishes and settlements held until ``commit``.

A ``CoreTransaction`` belongs to one session of one wire adapter (today AMQP's
``tx.select`` channel).  ``publish`` and ``settle`` check what they can at once (publish
permission, the exchange, properties and sizes; that the delivery tags are unacked and
not settled twice in the transaction) and hold the operation; ``rollback`` forgets them;
``commit`` applies them in order as one unit:

* in memory, in one go on the event loop: nothing else runs between two of them;
* in the message store, inside ``MessageStore.begin_atomic``/``end_atomic``: the
  persistent publishes, acks and DEDUP entries of the commit are tagged with one
  transaction id, written in one segment by one group commit (one write, one fsync),
  and recovery applies them only if the TXEND record behind them is on disk, so after
  a crash (kill -9, power loss) either all or none of a committed batch is visible.

``commit`` returns the store batch that makes the commit durable (0: nothing persistent);
the adapter answers (tx.commit-ok) once ``MessageStore.when_durable`` says so.

Settlements are checked again at commit, before anything is applied: a tag that went
away meanwhile (basic.recover requeued it) fails the whole commit with nothing applied.

``TransactionAcks`` is the other half, for log-topic transactions (issue 15, "exactly
once from a queue into a topic"): acks of a session's deliveries that apply only if a
transaction of the log transaction coordinator (logs/transactions.py) commits.  The
deliveries leave the session when they join the transaction (closing the session does
not requeue them); the coordinator commits them after its PrepareCommit record is
fsynced (the acks and their ACKS records in one atomic store unit, then fsynced) and
aborts them on END_TXN(abort), a timeout, fencing or an operator's abort: the messages
are requeued and redelivered.  Recovery of a PrepareCommit transaction acks its stored
messages from the positions in that record (``VirtualHost.restore``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Final

from wharf.protocol.errors import NotFound, PreconditionFailed, ResourceError

if TYPE_CHECKING:
    from ..store.segments import MessageStore
    from .deliveries import Deliveries, Unacked
    from .publish import PublishResult
    from .session import CoreSession

ACK: Final = "ack"
REJECT: Final = "reject"  # nack/reject without requeue: dead-lettered or dropped
REQUEUE: Final = "requeue"
OUTCOMES: Final = (ACK, REJECT, REQUEUE)

# A held publish: exchange, routing key, properties, bodies, what to do with the result.
_Publish = tuple[str, str, "dict[str, Any] | None", list[bytes], "Callable[[PublishResult], None]"]
# A held settlement: delivery tags and outcome.
_Settle = tuple[list[int], str]


class CoreTransaction:
    """The held operations of one transactional session."""

    __slots__ = ("session", "deliveries", "_ops", "_tags", "commits", "rollbacks")

    def __init__(self, session: CoreSession, deliveries: Deliveries) -> None:
        self.session = session
        self.deliveries = deliveries
        self._ops: list[_Publish | _Settle] = []
        # Delivery tags settled by the held operations.
        self._tags: set[int] = set()
        self.commits = 0
        self.rollbacks = 0

    @property
    def pending(self) -> int:
        """Operations held for the next commit."""
        return len(self._ops)

    def publish(
        self,
        exchange: str,
        routing_key: str,
        props: dict[str, Any] | None,
        bodies: list[bytes],
        on_result: Callable[[PublishResult], None],
    ) -> None:
        """Hold a publish; checked now (permission, exchange, properties, sizes), routed
        at commit; ``on_result`` gets its result then (mandatory returns)."""
        session = self.session
        session.check_publish(exchange, routing_key)
        topology = session.topology
        if exchange not in topology.exchanges:
            raise NotFound(f"no exchange '{exchange}'", details={"exchange": exchange})
        topology.publisher.check(exchange, props, bodies, session.actor.user, routing_key)
        self._ops.append((exchange, routing_key, props, bodies, on_result))

    def settle(self, tags: list[int], outcome: str) -> None:
        """Hold an ack, reject or requeue of delivery ``tags``: each must be unacked and
        not settled already in this transaction (PreconditionFailed naming it)."""
        assert outcome in OUTCOMES
        pending = self._tags
        fresh = [t for t in tags if t not in pending]
        self._check_known(fresh)
        pending.update(fresh)
        self._ops.append((fresh, outcome))

    def rollback(self) -> None:
        self._ops = []
        self._tags.clear()
        self.rollbacks += 1

    def commit(self) -> int:
        """Apply the held operations as one unit; the store batch to wait for (0: none).

        A failure before anything is applied (a settled tag is gone) raises and the
        transaction stays open; a publish refused at commit (the store failed) raises
        with the operations before it applied in memory and none of them on disk.
        """
        ops = self._ops
        for op in ops:
            if len(op) == 2:
                self._check_known(op[0])
        self._ops = []
        self._tags.clear()
        self.commits += 1
        topology = self.session.topology
        store = topology.store
        if store is not None:
            store.begin_atomic()
        done = False
        try:
            for op in ops:
                if len(op) == 2:
                    self._apply_settle(op[0], op[1])
                else:
                    exchange, routing_key, props, bodies, on_result = op
                    on_result(self.session.publish(exchange, routing_key, props, bodies))
            done = True
        finally:
            batch = store.end_atomic(commit=done) if store is not None else 0
        return batch

    # -- internals ---------------------------------------------------------------------

    def _check_known(self, tags: list[int]) -> None:
        if not tags:
            return
        known = set(self.deliveries.tags(max(tags)))
        for t in tags:
            if t not in known:
                raise PreconditionFailed(f"unknown delivery tag {t}", details={"tag": t})

    def _apply_settle(self, tags: list[int], outcome: str) -> None:
        deliveries = self.deliveries
        entries, unknown = deliveries.settle(tags)
        assert unknown is None, "checked before the commit began"
        if outcome == ACK:
            deliveries.ack(entries)
        else:
            deliveries.reject(entries, outcome == REQUEUE)


class TransactionAcks:
    """Deliveries of one session acked inside a log transaction: applied by ``commit``,
    requeued by ``abort`` (``logs.transactions.HeldSettlements``)."""

    __slots__ = ("deliveries", "store", "entries", "ended")

    def __init__(
        self, deliveries: Deliveries, store: MessageStore | None, entries: list[Unacked]
    ) -> None:
        self.deliveries = deliveries
        self.store = store
        self.entries = entries
        self.ended = False

    @classmethod
    def hold(
        cls, deliveries: Deliveries, store: MessageStore | None, tags: list[int]
    ) -> TransactionAcks:
        """Take ``tags`` out of the session's unacked table (every one must be unacked:
        else PreconditionFailed naming it, and nothing is taken)."""
        if not tags:
            raise PreconditionFailed("no delivery tags to ack in the transaction")
        known = set(deliveries.tags(max(tags)))
        for t in tags:
            if t not in known:
                raise PreconditionFailed(
                    f"unknown delivery tag {t}: not an unacked delivery of this connection",
                    details={"tag": t},
                )
        if len(set(tags)) != len(tags):
            raise PreconditionFailed("a delivery tag is named twice")
        entries, unknown = deliveries.settle(tags)
        assert unknown is None, "checked above"
        # Held, the deliveries still fill their consumers' prefetch window: a worker
        # with prefetch 1 gets its next job after the commit, and an aborted job back
        # before the ones behind it.
        deliveries.keep_credit(entries)
        return cls(deliveries, store, entries)

    def stored(self) -> dict[int, list[int]]:
        """Queue uid -> positions of the persistent messages (for recovery)."""
        out: dict[int, list[int]] = {}
        for msg, queue, _ in self.entries:
            if msg.seg is not None and msg.persisted and queue.persist:
                out.setdefault(queue.uid, []).append(msg.position)
        return out

    def commit(self) -> asyncio.Future[None]:
        """Ack the messages; done once their ACKS records (one atomic store unit) are
        fsynced."""
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if self.ended:
            fut.set_result(None)
            return fut
        self.ended = True
        store = self.store
        if store is None:
            self.deliveries.ack(self.entries)
            self.deliveries.return_credit(self.entries)
            fut.set_result(None)
            return fut
        store.begin_atomic()
        done = False
        try:
            self.deliveries.ack(self.entries)
            done = True
        finally:
            batch = store.end_atomic(commit=done)
        self.deliveries.return_credit(self.entries)

        def durable(ok: bool) -> None:
            if fut.done():
                return
            if ok:
                fut.set_result(None)
            else:
                fut.set_exception(
                    ResourceError("the message store failed before the acks were fsynced")
                )

        store.when_durable(batch, durable)
        return fut

    def abort(self) -> None:
        """Requeue the messages (they are redelivered, delivery count raised)."""
        if not self.ended:
            self.ended = True
            self.deliveries.reject(self.entries, requeue=True)
            self.deliveries.return_credit(self.entries)
