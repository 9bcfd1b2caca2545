"""Log-topic requests of one native connection: produce acks, fetch long-polls, FETCH_MANY.

Per-connection state of the native protocol, kept in the wire layer so that the log
domain (broker/logs) knows no frames.  The connection's handlers (log_frames.py) call
in here with typed frames; this object owns what outlives one frame:
fetches waiting for data (dropped when the connection closes, at most
``MAX_PENDING_FETCHES``) and which kinds of ``acks="none"`` produce errors were
already logged (each kind once per connection: nobody else hears of them).

A long-poll (FETCH or FETCH_MANY with ``max_wait_ms`` > 0 and no batch at or after
the offsets asked for: at the log end, or in a gap that compaction left at the end)
registers a wake-up on every partition it asks for; the first append to any of them,
or the end of the wait, answers it with whatever there is then.  Waits are capped at
``MAX_FETCH_WAIT_MS``.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any, Final

from wharf.protocol import frames as F
from wharf.protocol.errors import InternalError, InvalidArgument, ResourceError, WharfError

from ...logs.partition import Partition
from ...logs.segment import ReadArena
from ...logs.topics import MAX_FETCH_BYTES, TopicRegistry, check_fetch_bytes
from ...logs.transactions import TransactionCoordinator, admit_produce
from .throttle import fetched_bytes

log = logging.getLogger("wharf.topics")

MAX_FETCH_WAIT_MS: Final = 30_000
MAX_PENDING_FETCHES: Final = 1024
MAX_FETCH_MANY_PARTITIONS: Final = 10_000
# Room for everything but the batches in a FETCH / FETCH_MANY answer frame.
REPLY_OVERHEAD_BYTES: Final = 64 * 1024

Reply = Callable[[int, dict[str, Any] | None], None]
# A fetch answer, with how to count its record-batch bytes (for a consume quota).
ReplyFetched = Callable[[int, dict[str, Any], Callable[[], int]], None]
SendError = Callable[[int, WharfError], None]

# FETCH_MANY answers are read into this, one answer at a time: each is encoded by
# ``reply`` before the next is read (nothing awaits in between), so one arena serves
# every connection of the process.
_ARENA: Final = ReadArena()


class _Poll:
    """One fetch waiting for data."""

    __slots__ = ("rid", "frame", "partitions", "timer", "wake", "answered", "deadline")

    def __init__(self, rid: int, frame: F.Fetch | F.FetchMany, partitions: list[Partition]):
        self.rid = rid
        self.frame = frame
        self.partitions = partitions
        self.timer: asyncio.TimerHandle | None = None
        self.wake: Callable[[], None] = lambda: None
        self.answered = False
        self.deadline = -1.0  # loop time the wait ends


class LogRequests:
    def __init__(
        self,
        registry: Callable[[], TopicRegistry],
        reply: Reply,
        send_error: SendError,
        name: str,
        max_frame_bytes: int,
        reply_fetched: ReplyFetched | None = None,
        transactions: Callable[[], TransactionCoordinator | None] = lambda: None,
    ) -> None:
        self._registry = registry
        self._transactions = transactions
        self._reply = reply
        self._reply_fetched: ReplyFetched = reply_fetched or (
            lambda rid, result, _nbytes: reply(rid, result)
        )
        self._send_error = send_error
        self._name = name
        self._max_reply_bytes = max(4096, max_frame_bytes - REPLY_OVERHEAD_BYTES)
        self._polls: set[_Poll] = set()
        self._logged_codes: set[int] = set()
        self._loop = asyncio.get_running_loop()
        self.closed = False

    # -- produce -------------------------------------------------------------------

    def produce(self, f: F.Produce) -> None:
        try:
            wait = admit_produce(
                self._transactions(),
                f.producer_id,
                f.producer_epoch,
                f.topic,
                f.partition,
                f.acks,
                f.transactional,
            )
        except WharfError as exc:
            # A refused transactional batch is always answered (acks "none" is one of
            # the reasons); a plain one only when it asked for an answer.
            if f.transactional or f.acks != "none":
                raise
            self._log_unanswered(f.topic, exc)
            return
        if wait is not None:
            # Appended once the partition is durably part of the transaction.
            wait.add_done_callback(lambda fut: self._produce_added(f, fut))
            return
        self._append(f)

    def _produce_added(self, f: F.Produce, fut: asyncio.Future[None]) -> None:
        if self.closed:
            return
        try:
            exc = fut.exception()
            if exc is not None:
                raise exc
            self.produce(f)  # checks the transaction again: it may have ended meanwhile
        except WharfError as exc:
            self._send_error(f.request_id, exc)
        except Exception:
            log.exception("%s: a transactional produce failed", self._name)
            self._send_error(f.request_id, InternalError("internal error; the broker logged it"))

    def _append(self, f: F.Produce) -> None:
        try:
            res = self._registry().produce(
                f.topic,
                f.partition,
                f.payload,
                f.codec,
                f.acks,
                f.producer_id,
                f.producer_epoch,
                f.base_sequence,
                f.transactional,
            )
        except WharfError as exc:
            if f.acks != "none":
                raise
            self._log_unanswered(f.topic, exc)
            return
        if f.acks == "written":
            self._reply(f.request_id, res.reply())
        elif f.acks == "fsynced":
            rid = f.request_id
            result = res.reply()
            topic = f.topic

            def synced(fut: asyncio.Future[None]) -> None:
                if self.closed:
                    return
                exc = fut.exception()
                if exc is None:
                    self._reply(rid, result)
                elif isinstance(exc, WharfError):
                    self._send_error(rid, exc)
                else:
                    log.error("%s: fsync for topic %s failed: %s", self._name, topic, exc)
                    self._send_error(rid, InternalError("fsync failed; the broker logged it"))

            res.partition.sync().add_done_callback(synced)

    def _log_unanswered(self, topic: str, exc: WharfError) -> None:
        if exc.code in self._logged_codes:
            return
        self._logged_codes.add(exc.code)
        log.warning(
            "%s: a produce with acks=none to topic %s failed (%d %s); the client is not "
            "told. Further errors %d on this connection are not logged.",
            self._name,
            topic,
            exc.code,
            exc.message,
            exc.code,
            extra={"conn": self._name},
        )

    def init_producer(self, f: F.InitProducer) -> None:
        self._reply(f.request_id, self._registry().init_producer())

    # -- fetch ---------------------------------------------------------------------

    def fetch(self, f: F.Fetch) -> None:
        check_fetch_bytes(f.max_bytes)
        wait_ms = _check_wait(f.max_wait_ms)
        registry = self._registry()
        part = registry.get(f.topic).partition(f.partition)
        result = self._fetch_one(registry, f)
        if wait_ms and not result["batches"]:
            # Nothing at or after the offset: at the log end, or in a gap that
            # compaction left before it.
            self._wait(_Poll(f.request_id, f, [part]), wait_ms)
            return
        self._answer_fetch(f.request_id, result)

    def _answer_fetch(self, rid: int, result: dict[str, Any]) -> None:
        batches = result.get("batches")
        if isinstance(batches, list):
            sent: list[Any] = batches
        else:  # FETCH_MANY: [topic, partition, code, hw, start, batches | message]
            sent = [b for e in result["results"] if isinstance(e[5], list) for b in e[5]]
        if sent:
            self._registry().count_fetched(sent)
        self._reply_fetched(rid, result, lambda: fetched_bytes(result))

    def _fetch_one(self, registry: TopicRegistry, f: F.Fetch) -> dict[str, Any]:
        return registry.fetch(
            f.topic,
            f.partition,
            f.offset,
            min(f.max_bytes, self._max_reply_bytes),
            _committed(f.isolation_level),
        )

    def fetch_many(self, f: F.FetchMany) -> None:
        wait_ms = _check_wait(f.max_wait_ms)
        if not 0 < f.max_bytes <= MAX_FETCH_BYTES:
            raise InvalidArgument(f"max_bytes must be 1..{MAX_FETCH_BYTES}, got {f.max_bytes}")
        wanted = f.partitions
        if len(wanted) > MAX_FETCH_MANY_PARTITIONS:
            raise InvalidArgument(
                f"at most {MAX_FETCH_MANY_PARTITIONS} partitions per FETCH_MANY, got {len(wanted)}"
            )
        for i, entry in enumerate(wanted):
            if (
                not isinstance(entry, (list, tuple))
                or len(entry) < 4
                or type(entry[0]) is not str
                or any(type(x) is not int for x in entry[1:4])
            ):
                raise InvalidArgument(
                    f"partitions[{i}] must be [topic str, partition int, offset int, max_bytes int]"
                )
        registry = self._registry()
        results, has_data, parts = self._fetch_many(registry, f)
        if wait_ms and not has_data and parts:
            self._wait(_Poll(f.request_id, f, parts), wait_ms)
            return
        self._answer_fetch(f.request_id, {"results": results})

    def _fetch_many(
        self, registry: TopicRegistry, f: F.FetchMany
    ) -> tuple[list[list[Any]], bool, list[Partition]]:
        """(results, whether any has data or an error, partitions to wait on)."""
        budget = min(f.max_bytes, self._max_reply_bytes)
        arena = _ARENA
        arena.reset(budget + REPLY_OVERHEAD_BYTES)
        results: list[list[Any]] = []
        parts: list[Partition] = []
        answer_now = got = False
        committed = _committed(f.isolation_level)
        for topic, number, offset, max_bytes in (e[:4] for e in f.partitions):
            part: Partition | None = None
            try:
                part = registry.get(topic).partition(number)
                check_fetch_bytes(max_bytes)
                part.check_offset(offset)
                # As Kafka: only the first batch of the answer may pass the limits.
                limit = min(max_bytes, budget)
                batches = (
                    part.fetch(
                        offset, limit, at_least_one=not got, arena=arena, committed=committed
                    )
                    if limit > 0
                    else []
                )
            except WharfError as exc:
                hw, start = (part.high_watermark, part.earliest) if part is not None else (-1, -1)
                results.append([topic, number, exc.code, hw, start, exc.message])
                answer_now = True
                continue
            if batches:
                answer_now = got = True
                budget -= sum(len(b) for b in batches)
            parts.append(part)
            end = part.last_stable_offset if committed else part.high_watermark
            results.append([topic, number, 0, end, part.earliest, batches])
        return results, answer_now, parts

    # -- long poll -----------------------------------------------------------------

    def _wait(self, poll: _Poll, wait_ms: int) -> None:
        if len(self._polls) >= MAX_PENDING_FETCHES:
            raise ResourceError(
                f"at most {MAX_PENDING_FETCHES} long-poll fetches may wait per connection"
            )

        def wake() -> None:
            if not poll.answered:
                poll.answered = True
                self._loop.call_soon(self._answer, poll)

        poll.wake = wake
        poll.answered = False
        if poll.deadline < 0:
            poll.deadline = self._loop.time() + wait_ms / 1000
        for part in poll.partitions:
            part.add_waiter(wake)
        poll.timer = self._loop.call_later(wait_ms / 1000, wake)
        self._polls.add(poll)

    def _answer(self, poll: _Poll) -> None:
        self._drop(poll)
        if self.closed:
            return
        f = poll.frame
        try:
            registry = self._registry()
            if isinstance(f, F.Fetch):
                result = self._fetch_one(registry, f)
                empty = not result["batches"]
            else:
                results, has_data, _parts = self._fetch_many(registry, f)
                result = {"results": results}
                empty = not has_data
            left_ms = int((poll.deadline - self._loop.time()) * 1000)
            if empty and left_ms > 0 and f.isolation_level == F.READ_COMMITTED:
                # Woken by an append that is still behind the last stable offset (an
                # open transaction's batch): wait on for a marker, not answer empty.
                self._wait(poll, left_ms)
                return
        except WharfError as exc:
            self._send_error(poll.rid, exc)
            return
        except Exception:
            log.exception("%s: answering a long-poll fetch failed", self._name)
            self._send_error(poll.rid, InternalError("internal error; the broker logged it"))
            return
        self._answer_fetch(poll.rid, result)

    def _drop(self, poll: _Poll) -> None:
        self._polls.discard(poll)
        poll.answered = True
        if poll.timer is not None:
            poll.timer.cancel()
        for part in poll.partitions:
            part.remove_waiter(poll.wake)

    def close(self) -> None:
        """The connection closed: forget its waiting fetches."""
        self.closed = True
        for poll in list(self._polls):
            self._drop(poll)


def _committed(isolation_level: int) -> bool:
    if isolation_level == F.READ_COMMITTED:
        return True
    if isolation_level != F.READ_UNCOMMITTED:
        raise InvalidArgument(
            f"isolation_level must be {F.READ_UNCOMMITTED} (read uncommitted) or "
            f"{F.READ_COMMITTED} (read committed), got {isolation_level}"
        )
    return False


def _check_wait(max_wait_ms: int) -> int:
    if max_wait_ms < 0:
        raise InvalidArgument(f"max_wait_ms must be >= 0, got {max_wait_ms}")
    return min(max_wait_ms, MAX_FETCH_WAIT_MS)
