"""Publisher confirms of one connection: cumulative CONFIRMs and PUBLISH_NACKs, in order.

A publish that needs no disk is confirmed at the connection's next flush: one CONFIRM
frame per event-loop iteration carries the highest sequence number ready.  A persistent
publish waits for its message-store batch and/or the fsync of the log-topic partitions
it was appended to, and every publish after the first waiting one waits too, so a
cumulative confirm never covers a message that is not yet safe.  A failed write nacks
the publishes that waited for it.

``PublisherConfirms`` is a mixin of the broker's ``Connection`` (connection.py), whose
publish path fills ``_confirm_up_to`` and ``_confirm_waits``.
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import TYPE_CHECKING

from wharf.protocol import frames as F
from wharf.protocol.errors import InternalError, ResourceError, WharfError

if TYPE_CHECKING:
    from ...logs.partition import Partition
    from ...server import Broker


class LogSyncWait:
    """The fsyncs of log-topic partitions that persistent publishes of one event-loop
    iteration wait for before their confirms (one ``Partition.sync()`` per partition,
    asked once the iteration's appends are done, so it covers all of them)."""

    __slots__ = ("partitions", "pending", "error")

    def __init__(self) -> None:
        self.partitions: dict[int, Partition] = {}
        self.pending = 0
        self.error: WharfError | None = None


# A publish waiting for its confirm: (first seq, last seq, store batch or 0, log fsyncs
# or None).  Every publish after the first waiting one waits too, in order.
ConfirmWait = tuple[int, int, int, LogSyncWait | None]


class PublisherConfirms:
    """Mixin of ``Connection``: which publishes are confirmed or nacked, and when."""

    # Provided by Connection.
    broker: Broker
    _loop: asyncio.AbstractEventLoop
    _flush_scheduled: bool

    if TYPE_CHECKING:

        @property
        def closed(self) -> bool: ...

        def send_frame(self, frame: F.Frame) -> None: ...

        def _flush(self) -> None: ...

        def send_error(self, request_id: int, exc: WharfError, *, fatal: bool = False) -> None: ...

    def _init_confirms(self) -> None:
        # Highest sequence number ready to confirm, not yet sent.
        self._confirm_up_to = 0
        # Publishes waiting for an fsync (message store or log topics), and every
        # publish after the first such one, in order.
        self._confirm_waits: deque[ConfirmWait] = deque()
        # The newest message-store batch that failed (its publishes are nacked).
        self._store_failed_batch = 0
        # Log-topic fsyncs the persistent publishes of this loop iteration wait for.
        self._log_sync: LogSyncWait | None = None

    def store_committed(self, batch: int) -> bool:
        """The store made ``batch`` durable (negative: that batch failed).

        Releases the confirms it covers; returns True while more are waiting.
        """
        if batch < 0:
            self._store_failed_batch = max(self._store_failed_batch, -batch)
        self._release_confirms()
        return bool(self._confirm_waits)

    def _release_confirms(self) -> None:
        """Confirm (or nack) waiting publishes from the front, in order, as far as
        the message store and log-topic fsyncs they wait for are done."""
        waits = self._confirm_waits
        store = self.broker.store
        durable = store.durable_batch if store is not None else 0
        failed = self._store_failed_batch
        up_to = self._confirm_up_to
        while waits:
            first, last, batch, log_sync = waits[0]
            error: WharfError | None = None
            if log_sync is not None:
                if log_sync.pending:
                    break
                error = log_sync.error
            if batch > durable:
                if batch > failed:
                    break
                error = ResourceError("message store write failed")
            waits.popleft()
            if error is not None:
                self._nack(first, last - first + 1, error)
            elif last > up_to:
                up_to = last
        self._confirm_up_to = up_to
        if up_to and not self._flush_scheduled:
            self._flush_scheduled = True
            self._loop.call_soon(self._flush)

    def _log_sync_for(self, parts: list[Partition]) -> LogSyncWait:
        """The fsync wait of this loop iteration, covering ``parts`` too."""
        wait = self._log_sync
        if wait is None:
            wait = self._log_sync = LogSyncWait()
            self._loop.call_soon(self._start_log_syncs)
        for part in parts:
            if id(part) not in wait.partitions:
                wait.partitions[id(part)] = part
                wait.pending += 1
        return wait

    def _start_log_syncs(self) -> None:
        wait = self._log_sync
        self._log_sync = None
        if wait is None:
            return

        def synced(fut: asyncio.Future[None]) -> None:
            exc = fut.exception()
            if exc is not None and wait.error is None:
                wait.error = (
                    exc
                    if isinstance(exc, WharfError)
                    else InternalError("log topic fsync failed; the broker logged it")
                )
            wait.pending -= 1
            if not wait.pending and not self.closed:
                self._release_confirms()

        for part in wait.partitions.values():
            part.sync().add_done_callback(synced)

    def _nack(self, seq: int, n: int, exc: WharfError) -> None:
        self.broker.stats.publish_nacked += n
        if not seq:
            self.send_error(0, exc)
            return
        for s in range(seq, seq + n):
            self.send_frame(F.PublishNack(0, s, exc.code, exc.message))
