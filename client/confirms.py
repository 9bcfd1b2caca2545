"""Publisher-confirm bookkeeping (pure logic, no I/O).

Each ``publish`` takes one sequence number and each ``publish_many`` a run of
consecutive ones; a *batch* is that run plus the future its caller awaits.  The
broker answers with cumulative ``CONFIRM up_to``, per-sequence ``PUBLISH_NACK`` and,
for mandatory messages that routed nowhere, ``RETURN`` (always before the confirm that
covers it).  A batch is complete when every sequence in it is either covered by a
confirm or nacked; it then resolves, with an error if any of its messages failed.
A nacked sequence is not necessarily followed by a confirm covering it, so a batch
whose remaining sequences are all nacked completes at once.

A CONFIRM may name the sequences it covers that were duplicates (a queue with
``x-dedup-window-ms`` had accepted their message_id within its window and did not
enqueue them again); a batch resolves to a ``PublishResult`` that lists them.
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import Any, Final, NamedTuple

from wharf.protocol.errors import WharfError, error_from_code


class PublishResult(NamedTuple):
    """What a confirmed ``publish`` / ``publish_many`` learned from the broker.

    ``duplicates``: indexes (in the call's bodies; 0 for ``publish``) of the messages the
    broker confirmed as duplicates: every queue they were routed to had accepted their
    ``message_id`` within its deduplication window (``x-dedup-window-ms``), so they were
    not enqueued again.  Always empty for ``confirm=False``.
    """

    duplicates: tuple[int, ...] = ()

    @property
    def duplicate(self) -> bool:
        """True if (one of) the message(s) was a duplicate."""
        return bool(self.duplicates)


NOT_CONFIRMED: Final = PublishResult()


class _Batch:
    __slots__ = ("first", "last", "future", "failures", "nacked", "duplicates")

    def __init__(self, first: int, last: int, future: asyncio.Future[PublishResult]) -> None:
        self.first = first
        self.last = last
        self.future = future
        # (seq, error) for every nacked or returned message, in arrival order.
        self.failures: list[tuple[int, WharfError]] | None = None
        self.nacked: set[int] | None = None
        # Sequences the broker confirmed as duplicates.
        self.duplicates: list[int] | None = None


class ConfirmTracker:
    """Outstanding publish batches in sequence order."""

    __slots__ = ("_batches", "next_seq", "confirmed_up_to")

    def __init__(self) -> None:
        self._batches: deque[_Batch] = deque()
        self.next_seq = 1
        self.confirmed_up_to = 0

    def __len__(self) -> int:
        return len(self._batches)

    def add(self, count: int, future: asyncio.Future[PublishResult]) -> int:
        """Reserve ``count`` consecutive sequence numbers; returns the first."""
        first = self.next_seq
        self.next_seq = first + count
        self._batches.append(_Batch(first, first + count - 1, future))
        return first

    def confirm(self, up_to: int) -> None:
        """Cumulative confirm: resolve every batch whose sequences are all settled."""
        if up_to > self.confirmed_up_to:
            self.confirmed_up_to = up_to
        else:
            up_to = self.confirmed_up_to
        batches = self._batches
        while batches:
            batch = batches[0]
            if batch.last > up_to and not self._rest_nacked(batch):
                break
            batches.popleft()
            _resolve(batch)

    def duplicates(self, seqs: list[Any]) -> None:
        """Sequences the next ``confirm`` covers were duplicates (call it first)."""
        batch: _Batch | None = None
        for seq in seqs:
            if type(seq) is not int:
                continue
            if batch is None or not batch.first <= seq <= batch.last:
                batch = self._find(seq)
                if batch is None:
                    continue
            if batch.duplicates is None:
                batch.duplicates = []
            batch.duplicates.append(seq)

    def nack(self, seq: int, code: int, message: str) -> None:
        batch = self._find(seq)
        if batch is None:
            return
        if batch.nacked is None:
            batch.nacked = set()
        elif seq in batch.nacked:
            return
        batch.nacked.add(seq)
        self._fail(batch, seq, error_from_code(code, message, {"seq": seq}))
        if self._rest_nacked(batch):
            _resolve(batch)
            self._drop_resolved_head()

    def returned(
        self,
        seq: int,
        code: int,
        reason: str,
        exchange: str,
        routing_key: str,
        properties: dict[str, Any] | None,
        body: bytes,
    ) -> None:
        """A mandatory message came back; the confirm covering it follows."""
        batch = self._find(seq)
        if batch is None:
            return
        details = {
            "seq": seq,
            "exchange": exchange,
            "routing_key": routing_key,
            "properties": properties,
            "body": body,
        }
        message = f"message to exchange '{exchange}' with routing key '{routing_key}' "
        message += f"was returned: {reason}"
        self._fail(batch, seq, error_from_code(code, message, details))

    def fail_all(self, exc: WharfError) -> None:
        """The connection is gone: fail every outstanding batch with (a copy of) ``exc``."""
        batches = self._batches
        self._batches = deque()
        for batch in batches:
            if not batch.future.done():
                batch.future.set_exception(error_from_code(exc.code, exc.message, exc.details))

    # -- internals -----------------------------------------------------------------

    def _find(self, seq: int) -> _Batch | None:
        for batch in self._batches:  # rare path (nack/return): a scan is fine
            if batch.first <= seq <= batch.last:
                return batch
            if batch.first > seq:
                return None
        return None

    @staticmethod
    def _fail(batch: _Batch, seq: int, error: WharfError) -> None:
        if batch.failures is None:
            batch.failures = []
        batch.failures.append((seq, error))

    def _rest_nacked(self, batch: _Batch) -> bool:
        """True when every sequence of ``batch`` past the confirmed point is nacked."""
        nacked = batch.nacked
        if nacked is None:
            return False
        start = max(self.confirmed_up_to + 1, batch.first)
        return all(s in nacked for s in range(start, batch.last + 1))

    def _drop_resolved_head(self) -> None:
        batches = self._batches
        while batches and batches[0].future.done():
            batches.popleft()


def _resolve(batch: _Batch) -> None:
    future = batch.future
    if future.done():  # the publisher was cancelled, or already resolved by nacks
        return
    failures = batch.failures
    if failures is None:
        dups = batch.duplicates
        if dups is None:
            future.set_result(NOT_CONFIRMED)
        else:
            first = batch.first
            future.set_result(PublishResult(tuple(sorted(s - first for s in dups))))
    else:
        future.set_exception(batch_error(batch.first, batch.last, failures))


def batch_error(first: int, last: int, failures: list[tuple[int, WharfError]]) -> WharfError:
    """The error a publish raises: the first failure, with the whole batch described."""
    failures = sorted(failures, key=lambda f: f[0])
    error = failures[0][1]
    if last > first:
        error.details.update(
            first_seq=first,
            count=last - first + 1,
            failed_seqs=[s for s, _ in failures],
            failed_indexes=[s - first for s, _ in failures],
            errors=[e for _, e in failures],
        )
        error.message = (
            f"{len(failures)} of {last - first + 1} messages failed "
            f"(indexes {[s - first for s, _ in failures][:10]}); first: {error.message}"
        )
        error.args = (error.message,)
    return error
