"""The transactional producer of the SDK (``conn.transactional_producer(id)``; docs/logs.md,
"Transactions").

Records produced between ``begin()`` and ``commit()`` to any partitions of any topics,
and the consumer-group offsets given to ``send_offsets``, become visible to
read-committed readers together, or (``abort()``, a crash, a timeout) never.  The
first ``begin()`` registers the transactional id with the broker (INIT_TRANSACTIONS),
which fences any older producer with the same id and aborts what it left open.

Errors: ``InvalidTxnState`` (415) for a call out of order (produce or commit without
``begin()``, ``begin()`` twice); ``TransactionAborted`` (417) when the broker aborted
the transaction (timeout): call ``abort()``, then begin again; ``ProducerFenced`` (413)
once a newer producer took the id: this producer is finished (every later call
raises it).
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Concatenate, ParamSpec, TypeVar

from wharf.protocol import frames as F
from wharf.protocol.errors import InvalidArgument, InvalidTxnState, ProducerFenced, WharfError

from .core import NEW_REQUEST, Reply, result_of
from .logs import Producer
from .message import Message, ack_channel_of

TopicPartition = tuple[str, int]
_T = TypeVar("_T")
_P = ParamSpec("_P")


def _in_transaction(
    verb: Callable[Concatenate[Producer, _P], Awaitable[_T]],
) -> Callable[Concatenate[TransactionalProducer, _P], Awaitable[_T]]:
    """``verb`` of the idempotent ``Producer``, as a verb of the transactional one: it
    needs a transaction in progress, counts as something sent in it, and a fence it
    meets finishes the producer."""

    async def run(self: TransactionalProducer, /, *args: _P.args, **kwargs: _P.kwargs) -> _T:
        self._check_in_txn("produce")
        self._sent = True
        return await self._guard(verb(self._producer, *args, **kwargs))

    functools.update_wrapper(run, verb)
    run.__qualname__ = f"TransactionalProducer.{verb.__name__}"
    run.__doc__ = f"{verb.__doc__} Written in the transaction: visible once it commits."
    return run


class TransactionalProducer:
    """A producer whose records are written in transactions (Kafka's transactional
    producer): ``async with p.transaction(): await p.produce(...)``."""

    def __init__(
        self,
        request: Callable[[F.Frame], Awaitable[Reply]],
        transactional_id: str,
        timeout: float | None = None,
        connection: Callable[[], object] | None = None,
    ) -> None:
        if not transactional_id:
            raise InvalidArgument("a transactional producer needs a transactional id")
        self._request = request
        # The connection's current session, where deliveries acked in a transaction
        # must have come from (None: acks in transactions are not available).
        self._connection = connection
        self.transactional_id = transactional_id
        self._timeout_ms = -1 if timeout is None else int(timeout * 1000)
        self._producer = Producer(request, transactional=True)
        self._initialised = False
        self._in_txn = False
        self._sent = False  # something produced or sent in the current transaction
        self._fenced: WharfError | None = None

    @property
    def producer_id(self) -> int:
        return self._producer.producer_id

    @property
    def producer_epoch(self) -> int:
        return self._producer.producer_epoch

    @property
    def in_transaction(self) -> bool:
        return self._in_txn

    async def init(self) -> None:
        """Register the transactional id (``begin()`` does it the first time): bumps its
        epoch, fencing older producers, and aborts what they left open."""
        self._check_fenced()
        reply = await self._call(
            F.InitTransactions(NEW_REQUEST, self.transactional_id, self._timeout_ms)
        )
        result = result_of(reply)
        self._producer.use_epoch(int(result["producer_id"]), int(result["producer_epoch"]))
        self._initialised = True
        self._in_txn = False

    async def begin(self) -> None:
        self._check_fenced()
        if self._in_txn:
            raise InvalidTxnState("a transaction is already in progress: commit or abort it first")
        if not self._initialised or self._producer.producer_id < 0:
            await self.init()
        self._in_txn = True
        self._sent = False

    # The record-producing verbs are the idempotent producer's own (same parameters,
    # batching, encoding and retries), run inside the transaction's checks.
    produce = _in_transaction(Producer.produce)
    produce_many = _in_transaction(Producer.produce_many)
    produce_records = _in_transaction(Producer.produce_records)

    async def send_offsets(
        self,
        group: str,
        offsets: Mapping[TopicPartition, int],
        *,
        member_id: str = "",
        generation: int = -1,
        metadata: str | None = None,
    ) -> None:
        """Commit ``offsets`` (the next offset to read, per partition) for ``group`` if
        and only if the transaction commits.  A group with members needs the member id
        and generation of the stream that read the records (``stream.member_id``,
        ``stream.generation``): a stale generation is ``IllegalGeneration`` (410)."""
        self._check_in_txn("send_offsets")
        entries = [[t, p, o, metadata] for (t, p), o in offsets.items()]
        self._sent = True
        p = self._producer
        await self._guard(
            self._call(
                F.TxnSendOffsets(
                    NEW_REQUEST,
                    self.transactional_id,
                    p.producer_id,
                    p.producer_epoch,
                    group,
                    entries,
                    member_id,
                    generation,
                )
            )
        )

    async def ack_in_transaction(self, *messages: Message) -> None:
        """Ack ``messages`` (consumed from queues on this producer's connection) in the
        transaction: the acks apply if and only if it commits; if it aborts (``abort()``,
        its timeout, a newer producer with this id, a crash) the messages are requeued
        and redelivered.  Until then they count as neither ready nor unacked."""
        self._check_in_txn("ack_in_transaction")
        session = self._connection() if self._connection is not None else None
        tags = []
        for m in messages:
            channel = ack_channel_of(m)
            if channel is None:
                raise InvalidArgument(f"{m!r} came from a no_ack consumer: nothing to ack")
            if session is None or channel.core is not session:
                raise InvalidArgument(
                    f"{m!r} was delivered on another connection (or before a reconnect): "
                    "a transaction acks deliveries of its producer's connection only"
                )
            tags.append(m.delivery_tag)
        if not tags:
            return
        self._sent = True
        p = self._producer
        await self._guard(
            self._call(
                F.TxnAck(NEW_REQUEST, self.transactional_id, p.producer_id, p.producer_epoch, tags)
            )
        )

    async def commit(self) -> None:
        """Make the transaction's records and offsets visible, atomically."""
        self._check_in_txn("commit")
        if self._sent:
            await self._guard(self._end(True))
        self._in_txn = False

    async def abort(self) -> None:
        """Drop the transaction's records and offsets."""
        self._check_in_txn("abort")
        if self._sent and self._producer.producer_id >= 0:
            await self._guard(self._end(False))
        # Without a producer id the next begin() registers again, which aborts it.
        self._in_txn = False

    @contextlib.asynccontextmanager
    async def transaction(self) -> AsyncIterator[TransactionalProducer]:
        """``async with p.transaction():`` begin; commit on success, abort on exception."""
        await self.begin()
        try:
            yield self
        except BaseException:
            if self._in_txn and self._fenced is None:
                with contextlib.suppress(WharfError):
                    await self.abort()
            raise
        await self.commit()

    # -- internals -----------------------------------------------------------------

    async def _end(self, commit: bool) -> None:
        p = self._producer
        await self._call(
            F.EndTxn(NEW_REQUEST, self.transactional_id, p.producer_id, p.producer_epoch, commit)
        )

    async def _call(self, frame: F.Frame) -> Reply:
        return await self._request(frame)

    async def _guard(self, aw: Awaitable[_T]) -> _T:
        try:
            return await aw
        except ProducerFenced as exc:
            self._fenced = exc
            self._in_txn = False
            raise

    def _check_fenced(self) -> None:
        if self._fenced is not None:
            raise ProducerFenced(
                f"transactional producer {self.transactional_id!r} was fenced by a newer "
                f"one: {self._fenced.message}"
            )

    def _check_in_txn(self, what: str) -> None:
        self._check_fenced()
        if not self._in_txn:
            raise InvalidTxnState(
                f"{what} outside a transaction: call begin() (or use `async with "
                "p.transaction():`) first"
            )
