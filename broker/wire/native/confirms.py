"""Publisher confirms of one connection: cumulative CONFIRMs and PUBLISH_NACKs, in order.

A publish that needs no disk is confirmed at the connection's next flush: one CONFIRM
frame per event-loop iteration carries the highest sequence number ready.  A persistent
publish waits for its message-store batch and/or the fsync of the log-topic partitions
it was appended to, and every publish after the first waiting one waits too, so a
cumulative confirm never covers a message that is not yet safe.  A failed write nacks
the publishes that waited for it.

``Confirms`` is owned by the broker's ``Connection`` (connection.py), which passes its
collaborators in: how to send a frame or an error, how to have the connection flushed,
the loop, and the store hooks (wait for a group commit, the newest durable batch).  The
publish path tells it what happened (``published``, ``nack``), the connection's flush
asks what to confirm (``take_ready``) and the broker's group commit calls
``store_committed`` through the connection.  Nothing outside writes its fields.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

from wharf.protocol import frames as F
from wharf.protocol.errors import InternalError, ResourceError, WharfError

if TYPE_CHECKING:
    from ...logs.partition import Partition


class NackStats(Protocol):
    """The broker-wide counter of nacked publishes (a plain int)."""

    publish_nacked: int


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
# or None, how many of its last seqs were duplicates).  Every publish after the first
# waiting one waits too, in order.
ConfirmWait = tuple[int, int, int, LogSyncWait | None, int]


class Confirms:
    """Which publishes of one connection are confirmed or nacked, and when."""

    __slots__ = (
        "_send_frame",
        "_send_error",
        "_schedule_flush",
        "_loop",
        "_await_store",
        "_durable_batch",
        "_stats",
        "_up_to",
        "_waits",
        "_failed_batch",
        "_log_sync",
        "_closed",
        "_duplicates",
    )

    def __init__(
        self,
        *,
        send_frame: Callable[[F.Frame], None],
        send_error: Callable[[int, WharfError], None],
        schedule_flush: Callable[[], None],
        loop: asyncio.AbstractEventLoop,
        await_store: Callable[[], None],
        durable_batch: Callable[[], int],
        stats: NackStats,
    ) -> None:
        self._send_frame = send_frame
        self._send_error = send_error
        # Have the connection flushed once this loop iteration (it calls take_ready).
        self._schedule_flush = schedule_flush
        self._loop = loop
        # Ask the broker to call store_committed after its next group commits.
        self._await_store = await_store
        # The newest message-store batch that is durable (0 without a store).
        self._durable_batch = durable_batch
        self._stats = stats
        # Highest sequence number ready to confirm, not yet sent.
        self._up_to = 0
        # Publishes waiting for an fsync (message store or log topics), and every
        # publish after the first such one, in order.
        self._waits: deque[ConfirmWait] = deque()
        # The newest message-store batch that failed (its publishes are nacked).
        self._failed_batch = 0
        # Log-topic fsyncs the persistent publishes of this loop iteration wait for.
        self._log_sync: LogSyncWait | None = None
        self._closed = False
        # Seqs <= _up_to that were duplicates (x-dedup-window-ms), sent with the confirm.
        self._duplicates: list[int] = []

    @property
    def waiting(self) -> int:
        """Publishes (PUBLISH or PUBLISH_MANY frames) waiting for the disk."""
        return len(self._waits)

    def published(
        self,
        seq: int,
        n: int,
        store_batch: int,
        log_parts: list[Partition] | None,
        duplicates: int = 0,
    ) -> None:
        """``n`` messages from sequence number ``seq`` (0: no confirm wanted) were
        accepted; ``store_batch`` (or 0) and ``log_parts`` (or None) are what makes them
        durable; the last ``duplicates`` of them were duplicates (not enqueued)."""
        log_sync: LogSyncWait | None = None
        if log_parts is not None:
            wait = self._log_sync_for(log_parts)
            if seq:  # without a confirm (seq 0) the fsync happens, nothing waits
                log_sync = wait
        if not seq:
            return
        last = seq + n - 1
        if store_batch or log_sync is not None or self._waits:
            # Cumulative confirms: nothing after a message waiting for the disk may be
            # confirmed before it.
            if store_batch:
                self._await_store()
            self._waits.append((seq, last, store_batch, log_sync, duplicates))
            return
        if duplicates:
            self._duplicates.extend(range(last - duplicates + 1, last + 1))
        if last > self._up_to:
            self._up_to = last
        self._schedule_flush()

    def take_ready(self) -> int:
        """The sequence number to confirm up to now (0: none); the caller sends it.
        (AMQP: a duplicate is a plain basic.ack, its flag is dropped.)"""
        up_to = self._up_to
        self._up_to = 0
        if self._duplicates:
            self._duplicates = []
        return up_to

    def take_ready_with_duplicates(self) -> tuple[int, list[int] | None]:
        """``take_ready`` and the seqs it covers that were duplicates (None: none)."""
        duplicates = self._duplicates
        if duplicates:
            self._duplicates = []
            return self.take_ready(), duplicates
        return self.take_ready(), None

    def store_committed(self, batch: int) -> bool:
        """The store made ``batch`` durable (negative: that batch failed).

        Releases the confirms it covers; returns True while more are waiting.
        """
        if batch < 0:
            self._failed_batch = max(self._failed_batch, -batch)
        self._release()
        return bool(self._waits)

    def close(self) -> None:
        """The connection is gone: fsyncs finishing later release nothing."""
        self._closed = True

    def _release(self) -> None:
        """Confirm (or nack) waiting publishes from the front, in order, as far as
        the message store and log-topic fsyncs they wait for are done."""
        waits = self._waits
        durable = self._durable_batch()
        failed = self._failed_batch
        up_to = self._up_to
        while waits:
            first, last, batch, log_sync, duplicates = waits[0]
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
                self.nack(first, last - first + 1, error)
                continue
            if duplicates:
                self._duplicates.extend(range(last - duplicates + 1, last + 1))
            if last > up_to:
                up_to = last
        self._up_to = up_to
        if up_to:
            self._schedule_flush()

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
            if not wait.pending and not self._closed:
                self._release()

        for part in wait.partitions.values():
            part.sync().add_done_callback(synced)

    def nack(self, seq: int, n: int, exc: WharfError) -> None:
        """Refuse ``n`` publishes from ``seq`` (0: unnumbered, answered with an ERROR)."""
        self._stats.publish_nacked += n
        if not seq:
            self._send_error(0, exc)
            return
        send_frame = self._send_frame
        for s in range(seq, seq + n):
            send_frame(F.PublishNack(0, s, exc.code, exc.message))
