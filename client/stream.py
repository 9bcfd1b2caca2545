"""Streams: ``async with conn.subscribe("events", group="billing") as stream``.

A ``Stream`` reads log topics, alone (manual assignment of partitions) or as a member
of a consumer group (the broker assigns the partitions, docs/logs.md).  Three parts:

- the record buffer (stream_buffer.py): positions and fetched, still encoded batches;
- the fetcher: at most one FETCH_MANY in flight, for every assigned, non-paused
  partition at its fetch position, sent again as soon as an answer is in and the
  buffer holds less than ``fetch_max_bytes`` — so the next records arrive while the
  application handles the current ones.  Callbacks on the request future, no task;
- the driver task: joins the group and rejoins on a rebalance (eager: everything is
  revoked, then the new assignment is set up), heartbeats, auto-commits, resets
  positions (auto_offset_reset) and recovers after a reconnect.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections.abc import Awaitable, Iterable, Mapping, Sequence
from types import TracebackType
from typing import TYPE_CHECKING, Any, Final, cast

from wharf.protocol import frames as F
from wharf.protocol.errors import (
    ConnectionLost,
    FencedInstanceId,
    IllegalGeneration,
    InvalidArgument,
    OffsetOutOfRange,
    RebalanceInProgress,
    UnknownMember,
    WharfError,
)

from .core import NEW_REQUEST, Reply, clone_error, result_of
from .fetcher import Fetcher
from .logs import Record
from .stream_buffer import RecordBuffer, TopicPartition
from .stream_options import READ_COMMITTED, Listener, StreamOptions

if TYPE_CHECKING:
    from .connection import Connection

log = logging.getLogger("wharf.client")

# Pause before joining again after the broker refused a join, or before asking
# again whether the connection is back.
RETRY_DELAY_S: Final = 0.1

# Errors a group member answers by joining again.  Other errors of the driver end the
# stream (a lost connection aside), FencedInstanceId among them: a newer stream took
# this static member's slot, and a join would only take it back.
_REJOIN_CODES: Final = frozenset(
    {RebalanceInProgress.code, IllegalGeneration.code, UnknownMember.code}
)

_NEW: Final = 0
_RUNNING: Final = 1
_ENDED: Final = 2  # stopped by an error; close() still tidies up
_CLOSED: Final = 3


class Stream:
    """Records of log topics, handed out one by one (``async for``) or in lists
    (``getmany``).  Make one with ``conn.subscribe(...)`` and enter it with
    ``async with``.

    Waiting for the next record may be cancelled or timed out (``asyncio.wait_for``)
    without losing one and without ending the iteration.  One task at a time may wait
    on a stream.
    """

    def __init__(self, conn: Connection, options: StreamOptions) -> None:
        self._conn = conn
        self.options = options
        self.topics = options.topics
        self.group = options.group
        # Manual assignment: the partitions asked for (None with a group: the broker
        # assigns; an empty list without a group: every partition of the topics).
        self._manual = None if options.partitions is None else list(options.partitions)
        if self._manual is None and options.group is None:
            self._manual = []
        # This stream's membership of the group ("" and -1 until the first join).
        self.member_id = ""
        self.generation = -1
        self._buf = RecordBuffer()
        self._fetcher = Fetcher(
            self._buf,
            self,
            fetch_max_bytes=options.fetch_max_bytes,
            max_partition_fetch_bytes=options.max_partition_fetch_bytes,
            fetch_max_wait_s=options.fetch_max_wait,
            isolation_level=F.READ_COMMITTED
            if options.isolation_level == READ_COMMITTED
            else F.READ_UNCOMMITTED,
        )
        self._assignment: list[TopicPartition] = []
        # What the broker assigned last, sent as ``owned`` when joining again (sticky).
        self._owned: list[TopicPartition] = []
        # Partitions whose position awaits a reset: tp -> (how, token).
        self._resets: dict[TopicPartition, tuple[str, int]] = {}
        self._reset_tokens = itertools.count()
        self._committed: dict[TopicPartition, int] = {}
        self._state = _NEW
        self._waiter: asyncio.Future[None] | None = None
        self._interrupt: WharfError | None = None  # raised once, by the next wait
        self._final: WharfError | None = None  # raised by every wait once ended
        self._driver: asyncio.Task[None] | None = None
        self._wakeup: asyncio.Future[None] | None = None
        self._wake_pending = False
        self._needs_join = options.group is not None and self._manual is None
        self._lost = False  # the connection went; the driver waits for the reconnect
        # A revocation the driver is to finish: whether to commit first (None: none).
        self._revoke_pending: bool | None = None
        # Loop times of the next heartbeat and auto-commit (None: not scheduled).
        self._heartbeat_due: float | None = None
        self._commit_due: float | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def __repr__(self) -> str:
        who = f"group={self.group!r}" if self.group else "manual"
        return f"<Stream {self.topics} {who} assignment={len(self._assignment)}>"

    # -- lifecycle -----------------------------------------------------------------

    async def __aenter__(self) -> Stream:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def start(self) -> None:
        """Begin reading (``async with`` does it).  With manual assignment the
        positions are known when this returns; in a group the first join happens in
        the background (iteration waits for it)."""
        if self._state != _NEW:
            return
        loop = self._loop = asyncio.get_running_loop()
        if self._manual is not None:
            await self._assign_manually()
        self._state = _RUNNING
        self._fetcher.core = self._conn._core
        self._fetcher.enabled = True
        if self.options.enable_auto_commit:
            self._commit_due = loop.time() + self.options.auto_commit_interval
        self._driver = loop.create_task(self._drive(), name=f"wharf-stream-{self.group or ''}")
        self._fetcher.maybe_fetch()

    async def close(self) -> None:
        """Stop reading: auto-commit what was handed out (if enabled), call
        ``on_revoke``, leave the group (not as a static member: it stays until its
        session times out, as in Kafka).  Idempotent."""
        if self._state == _CLOSED:
            return
        live = self._state == _RUNNING and not self._conn._core.ended
        self._state = _CLOSED
        self._final = None
        self._fetcher.enabled = False
        driver = self._driver
        if driver is not None and not driver.done():
            driver.cancel()
            await asyncio.wait([driver])
        self._fetcher.abandon()
        self._buf.drop()
        try:
            if live and self._assignment:
                if self.options.enable_auto_commit:
                    await self._commit_processed(quiet=True)
                if self._manual is None:
                    await self._call_listener(self.options.on_revoke, list(self._assignment))
            if (
                live
                and self._manual is None
                and self.member_id
                and self.options.instance_id is None
            ):
                await self._call(F.GroupLeave(NEW_REQUEST, self._group_name, self.member_id))
        except WharfError as exc:
            log.debug("wharf: closing the stream of group %r: %s", self.group, exc)
        finally:
            self._buf.forget()
            self._assignment = []
            self._wake()

    def _end(self, error: WharfError) -> None:
        """The stream cannot go on: every later wait raises ``error``."""
        if self._state != _RUNNING:
            return
        self._state = _ENDED
        self._final = error
        self._fetcher.enabled = False
        self._fetcher.abandon()
        self._buf.drop()
        self._wake()
        self._wake_driver()

    # -- reading -------------------------------------------------------------------

    def __aiter__(self) -> Stream:
        return self

    async def __anext__(self) -> Record:
        buf = self._buf
        idx = buf.idx
        cur = buf.cur
        if idx < len(cur):
            buf.idx = idx + 1
            return cur[idx]
        return await self._next_slow()

    async def _next_slow(self) -> Record:
        buf = self._buf
        yielded = False
        while True:
            self._raise_pending()
            if buf.idx >= len(buf.cur):
                if not yielded and self._should_yield():
                    yielded = True
                    await asyncio.sleep(0)
                    continue
                if not self._activate():
                    if self._state != _RUNNING:
                        raise StopAsyncIteration
                    await self._wait()
                    continue
            idx = buf.idx
            buf.idx = idx + 1
            return buf.cur[idx]

    async def getmany(
        self,
        timeout: float | None = None,  # noqa: ASYNC109 (how long to wait for records)
        max_records: int | None = None,
    ) -> list[Record]:
        """The records available now, at most ``max_records`` (None: all buffered).
        With none available, wait up to ``timeout`` seconds (None: until there are)
        and return ``[]`` if none came (or once the stream is closed)."""
        if max_records is not None and max_records < 1:
            raise InvalidArgument("max_records must be >= 1")
        self._raise_pending()
        if self._should_yield():
            await asyncio.sleep(0)
            self._raise_pending()
        records = self._take(max_records)
        if records or self._state != _RUNNING:
            return records
        try:
            async with asyncio.timeout(timeout):
                while True:
                    await self._wait()
                    self._raise_pending()
                    records = self._take(max_records)
                    if records or self._state != _RUNNING:
                        return records
        except TimeoutError:
            return []

    def _should_yield(self) -> bool:
        """Whether to let the event loop run before decoding the next piece: once per
        piece while a fetch is in flight, so that its answer is read (and the next
        request sent) while buffered records remain, not once they are all gone."""
        buf = self._buf
        return buf.idx >= len(buf.cur) and self._fetcher.in_flight and buf.undecoded()

    def _take(self, max_records: int | None) -> list[Record]:
        records = self._buf.take(max_records)
        self._fetcher.maybe_fetch()
        return records

    def _activate(self) -> bool:
        found = self._buf.activate()
        self._fetcher.maybe_fetch()
        return found

    def _raise_pending(self) -> None:
        error = self._interrupt
        if error is not None:
            self._interrupt = None
            raise error
        if self._final is not None:
            raise clone_error(self._final)
        if self._state == _NEW:
            raise RuntimeError("start the stream first: 'async with conn.subscribe(...)'")

    async def _wait(self) -> None:
        if self._waiter is not None:
            raise RuntimeError("another task is already waiting on this stream")
        loop = self._loop
        assert loop is not None
        waiter: asyncio.Future[None] = loop.create_future()
        self._waiter = waiter
        try:
            await waiter
        finally:
            self._waiter = None

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _interrupt_with(self, error: WharfError) -> None:
        if self._interrupt is None:
            self._interrupt = error
        else:
            log.warning("wharf: stream %r: further error not yet raised: %s", self.topics, error)
        self._wake()

    # -- positions, seeking, pausing -----------------------------------------------

    def assignment(self) -> list[TopicPartition]:
        """The partitions this stream reads now (empty during a rebalance)."""
        return list(self._assignment)

    def _check_assigned(self, tps: Iterable[TopicPartition]) -> list[TopicPartition]:
        out = []
        for tp in tps:
            tp = (tp[0], tp[1])
            if tp not in self._assignment:
                raise InvalidArgument(
                    f"partition {tp[1]} of topic '{tp[0]}' is not assigned to this stream",
                    details={"topic": tp[0], "partition": tp[1]},
                )
            out.append(tp)
        return out

    def position(self, tp: TopicPartition) -> int | None:
        """The next offset to hand out from ``tp`` (None until known: the committed
        offset or the reset is still being fetched)."""
        (tp,) = self._check_assigned((tp,))
        return self._buf.position(tp)

    def seek(self, tp: TopicPartition, offset: int) -> None:
        """Hand out ``tp`` from ``offset`` on.  Buffered records of ``tp`` are dropped;
        an offset out of range is reset per ``auto_offset_reset`` on the next fetch."""
        if offset < 0:
            raise InvalidArgument("offset must be >= 0")
        (tp,) = self._check_assigned((tp,))
        self._set_position(tp, offset)
        self._fetcher.refetch()

    def _set_position(self, tp: TopicPartition, offset: int) -> None:
        self._resets.pop(tp, None)
        self._fetcher.failed.discard(tp)
        self._buf.set_position(tp, offset)

    async def seek_to_beginning(self, *tps: TopicPartition) -> None:
        """Seek to the earliest offset (all assigned partitions when none are named)."""
        await self._seek_to("earliest", tps)

    async def seek_to_end(self, *tps: TopicPartition) -> None:
        """Seek to the high watermark: only records produced from now on."""
        await self._seek_to("latest", tps)

    async def seek_to_timestamp(
        self, tps: TopicPartition | Sequence[TopicPartition], timestamp: int
    ) -> None:
        """Seek to the first record with a timestamp >= ``timestamp`` (epoch ms), or to
        the end when there is none."""
        if tps and isinstance(tps[0], str):
            targets = [cast(TopicPartition, tps)]
        else:
            targets = list(cast(Sequence[TopicPartition], tps))
        await self._seek_to("timestamp", targets, timestamp)

    async def _seek_to(
        self, how: str, tps: Sequence[TopicPartition], timestamp: int | None = None
    ) -> None:
        targets = self._check_assigned(tps) if tps else list(self._assignment)
        offsets = await asyncio.gather(*(self._list_offset(tp, how, timestamp) for tp in targets))
        for tp, offset in zip(targets, offsets, strict=True):
            if tp in self._assignment:  # not revoked meanwhile
                self._set_position(tp, offset)
        self._fetcher.refetch()

    def pause(self, *tps: TopicPartition) -> None:
        """Stop handing out and fetching records of ``tps`` until ``resume``.  Their
        buffered records are dropped (fetched again after the resume)."""
        targets = self._check_assigned(tps)
        self._fetcher.paused.update(targets)
        self._buf.drop(targets)

    def resume(self, *tps: TopicPartition) -> None:
        for tp in tps:
            self._fetcher.paused.discard((tp[0], tp[1]))
        self._fetcher.refetch()

    def paused(self) -> set[TopicPartition]:
        return set(self._fetcher.paused)

    def lag(self) -> dict[TopicPartition, int]:
        """Per assigned partition: high watermark (as of the last fetch) - position; with
        isolation_level="read_committed" the last stable offset - position."""
        out = {}
        for tp in self._assignment:
            hw = self._fetcher.high_watermarks.get(tp)
            pos = self._buf.position(tp)
            if hw is not None and pos is not None:
                out[tp] = max(hw - pos, 0)
        return out

    def highwater(self, tp: TopicPartition) -> int | None:
        """The partition's high watermark as of the last fetch (None before one)."""
        return self._fetcher.high_watermarks.get((tp[0], tp[1]))

    # -- committing ----------------------------------------------------------------

    async def commit(self, offsets: Mapping[TopicPartition, int] | None = None) -> None:
        """Commit the positions of the records handed out so far (the committed offset
        is the next one to read), or the given ``{(topic, partition): offset}``.

        After a rebalance the stream lost track of raises ``IllegalGeneration`` (or
        ``UnknownMember``): the partitions may belong to another member by now.  A
        static member replaced by a newer one with its ``instance_id`` raises
        ``FencedInstanceId``, and the stream ends.
        """
        if self.group is None:
            raise InvalidArgument("commit needs a group: subscribe(..., group=...)")
        if offsets is None:
            targets = self._processed()
        else:
            targets = {(tp[0], tp[1]): int(o) for tp, o in offsets.items()}
        if not targets:
            return
        try:
            await self._commit(targets)
        except WharfError as exc:
            if exc.code == FencedInstanceId.code:
                self._end(exc)
            elif exc.code in _REJOIN_CODES and self._manual is None:
                self._heartbeat_due = 0.0  # find out now whether to rejoin
                self._wake_driver()
            raise

    async def committed(self, tp: TopicPartition) -> int | None:
        """The group's committed offset of ``tp``, asked of the broker (None if none)."""
        if self.group is None:
            raise InvalidArgument("committed offsets need a group")
        tp = (tp[0], tp[1])
        found = await self._fetch_committed([tp])
        return found.get(tp)

    def _processed(self) -> dict[TopicPartition, int]:
        assigned = self._assignment
        return {tp: o for tp, o in self._buf.processed().items() if tp in assigned}

    async def _commit(self, offsets: dict[TopicPartition, int]) -> None:
        if self._manual is None:
            member, generation = self.member_id, self.generation
        else:
            member, generation = "", -1
        wire = [[t, p, o, None] for (t, p), o in offsets.items()]
        await self._call(F.OffsetCommit(NEW_REQUEST, self._group_name, member, generation, wire))
        self._committed.update(offsets)

    async def _commit_processed(self, *, quiet: bool) -> None:
        committed = self._committed
        offsets = {tp: o for tp, o in self._processed().items() if committed.get(tp) != o}
        if not offsets:
            return
        try:
            await self._commit(offsets)
        except WharfError as exc:
            if not quiet or exc.code == ConnectionLost.code:
                raise
            log.warning("wharf: auto-commit for group %r failed: %s", self.group, exc)

    async def _fetch_committed(self, tps: Sequence[TopicPartition]) -> dict[TopicPartition, int]:
        topics = sorted({t for t, _ in tps})
        reply = await self._call(F.OffsetFetch(NEW_REQUEST, self._group_name, topics))
        wanted = set(tps)
        out: dict[TopicPartition, int] = {}
        for entry in result_of(reply).get("offsets", []):
            tp = (entry[0], entry[1])
            if tp in wanted and entry[2] >= 0:
                out[tp] = entry[2]
        return out

    # -- assignment ----------------------------------------------------------------

    async def _assign_manually(self) -> None:
        assert self._manual is not None
        tps = self._manual
        if not tps:
            for topic in self.topics:
                info = result_of(await self._call(F.TopicDescribe(NEW_REQUEST, topic)))
                tps.extend((topic, p) for p in range(int(info["partitions"])))
        await self._take_assignment(tps)

    async def _take_assignment(self, tps: list[TopicPartition]) -> None:
        """Set up a new assignment: committed offsets, resets for the rest."""
        committed = await self._fetch_committed(tps) if self.group and tps else {}
        self._committed = dict(committed)
        self._assignment = tps
        self._fetcher.paused.clear()
        self._fetcher.failed.clear()
        self._resets.clear()
        buf = self._buf
        buf.forget()
        for tp in tps:
            offset = committed.get(tp)
            if offset is not None:
                buf.set_position(tp, offset)
            else:
                self._resets[tp] = (self.options.auto_offset_reset, next(self._reset_tokens))
        await self._apply_resets()

    async def _apply_resets(self) -> None:
        pending = dict(self._resets)
        if not pending:
            return
        todo = []
        for tp, (how, _) in pending.items():
            if how == "none":
                del self._resets[tp]
                self._fetcher.failed.add(tp)
                self._interrupt_with(
                    OffsetOutOfRange(
                        f"no valid offset for partition {tp[1]} of topic '{tp[0]}' and "
                        "auto_offset_reset='none': seek() to a valid offset",
                        details={"topic": tp[0], "partition": tp[1]},
                    )
                )
            else:
                todo.append(tp)
        results = await asyncio.gather(
            *(self._list_offset(tp, pending[tp][0]) for tp in todo), return_exceptions=True
        )
        for tp, result in zip(todo, results, strict=True):
            if self._resets.get(tp) != pending[tp]:
                continue  # seeked or reassigned meanwhile
            del self._resets[tp]
            if isinstance(result, int):
                self._buf.set_position(tp, result)
            elif isinstance(result, WharfError) and result.code != ConnectionLost.code:
                self._fetcher.failed.add(tp)
                self._interrupt_with(result)
            elif isinstance(result, BaseException):
                self._resets[tp] = pending[tp]  # try again after the reconnect
                raise result
        self._fetcher.refetch()

    async def _list_offset(self, tp: TopicPartition, how: str, timestamp: int | None = None) -> int:
        if how == "timestamp":
            reply = await self._call(F.ListOffsets(NEW_REQUEST, tp[0], tp[1], timestamp))
            result = result_of(reply)
            return int(result.get("offset", result["latest"]))
        reply = await self._call(F.ListOffsets(NEW_REQUEST, tp[0], tp[1]))
        result = result_of(reply)
        if how == "earliest":
            return int(result["earliest"])
        if self.options.isolation_level == READ_COMMITTED:
            return int(result.get("last_stable", result["latest"]))
        return int(result["latest"])

    async def _call_listener(self, listener: Listener | None, tps: list[TopicPartition]) -> None:
        if listener is None:
            return
        try:
            result = listener(tps)
            if isinstance(result, Awaitable):
                await result
        except Exception:
            log.exception("wharf: stream listener %r failed", listener)

    # -- the fetcher's listener ----------------------------------------------------

    def records_arrived(self) -> None:
        self._wake()

    def out_of_range(self, tp: TopicPartition) -> None:
        # As Kafka's consumer: a position outside the log (a committed offset past
        # the end after a power loss took unsynced records back, or before the start
        # after retention) is reset per auto_offset_reset, and said so.
        log.warning(
            "wharf: fetch position %s of partition %d of topic '%s' is out of range; "
            "resetting it per auto_offset_reset=%r",
            self._buf.position(tp),
            tp[1],
            tp[0],
            self.options.auto_offset_reset,
        )
        self._resets[tp] = (self.options.auto_offset_reset, next(self._reset_tokens))
        self._wake_driver()

    def partition_failed(self, tp: TopicPartition, error: WharfError) -> None:
        self._interrupt_with(error)

    def fetch_failed(self, error: WharfError) -> None:
        if error.code == ConnectionLost.code or error.fatal:
            self._connection_lost(error)
        else:
            self._end(error)

    # -- the driver task -----------------------------------------------------------

    @property
    def _group_name(self) -> str:
        """The group, for the group requests (only ever made by a stream with one)."""
        group = self.group
        assert group is not None
        return group

    async def _call(self, frame: F.Frame) -> Reply:
        """One request on the current connection (waiting for a reconnect if one is
        under way).  Unlike ``Connection._request`` it never raises an error stored
        for someone else's earlier frame."""
        conn = self._conn
        core = conn._core
        if core.ended:
            core = await conn._live_core()
        rid, fut = core.start_request(frame._replace(request_id=core.new_request_id()))
        try:
            return await fut
        except asyncio.CancelledError:
            core.abandon_request(rid)
            raise

    def _wake_driver(self) -> None:
        wakeup = self._wakeup
        if wakeup is not None and not wakeup.done():
            wakeup.set_result(None)
        else:
            self._wake_pending = True

    async def _sleep(self) -> None:
        """Until woken, or until the next heartbeat or auto-commit is due."""
        if self._wake_pending:
            self._wake_pending = False
            return
        loop = self._loop
        assert loop is not None
        dues = [d for d in (self._heartbeat_due, self._commit_due) if d is not None]
        delay = min(dues) - loop.time() if dues else None
        if delay is not None and delay <= 0:
            return
        wakeup = self._wakeup = loop.create_future()
        timer = None if delay is None else loop.call_later(delay, _resolve, wakeup)
        try:
            await wakeup
        finally:
            self._wakeup = None
            if timer is not None:
                timer.cancel()

    async def _drive(self) -> None:
        loop = self._loop
        assert loop is not None
        while self._state == _RUNNING:
            joining = self._needs_join
            try:
                await self._drive_step(loop)
            except WharfError as exc:
                if exc.code in _REJOIN_CODES and self._manual is None:
                    self._rebalance(exc)
                    if joining:  # the join itself was refused: do not spin
                        await asyncio.sleep(RETRY_DELAY_S)
                elif exc.code == ConnectionLost.code or exc.fatal:
                    self._connection_lost(exc)
                else:
                    self._end(exc)
            except Exception as exc:
                log.exception("wharf: stream %r failed", self.topics)
                self._end(ConnectionLost(f"the stream failed: {exc!r}"))

    async def _drive_step(self, loop: asyncio.AbstractEventLoop) -> None:
        if self._lost:
            await self._reconnected()
        if self._revoke_pending is not None:
            await self._revoke(commit=self._revoke_pending)
        if self._needs_join:
            await self._join()
        if self._resets:
            await self._apply_resets()
        await self._sleep()
        if self._state != _RUNNING:
            return
        now = loop.time()
        due = self._heartbeat_due
        if due is not None and now >= due and not self._needs_join:
            self._heartbeat_due = now + self.options.heartbeat_interval
            await self._call(
                F.GroupHeartbeat(NEW_REQUEST, self._group_name, self.member_id, self.generation)
            )
        due = self._commit_due
        if due is not None and now >= due:
            self._commit_due = now + self.options.auto_commit_interval
            await self._commit_processed(quiet=True)

    async def _join(self) -> None:
        owned = _by_topic(self._owned) or None
        reply = await self._call(
            F.GroupJoin(
                NEW_REQUEST,
                self._group_name,
                self.topics,
                self.member_id,
                self.options.instance_id,
                self.options.strategy,
                int(self.options.session_timeout * 1000),
                int(self.options.rebalance_timeout * 1000),
                owned,
            )
        )
        result = result_of(reply)
        self.member_id = str(result["member_id"])
        self.generation = int(result["generation"])
        tps = [(topic, p) for topic, parts in result.get("assignment", []) for p in parts]
        loop = self._loop
        assert loop is not None
        self._heartbeat_due = loop.time() + self.options.heartbeat_interval
        await self._take_assignment(tps)
        self._needs_join = False
        await self._call_listener(self.options.on_assign, list(tps))
        self._fetcher.refetch()

    def _rebalance(self, cause: WharfError) -> None:
        """The group rebalances (or dropped this member): stop handing out records at
        once; the driver then commits, revokes and joins again."""
        log.debug("wharf: group %r rebalances: %s", self.group, cause)
        self._fetcher.abandon()
        self._buf.drop()
        self._needs_join = True
        self._heartbeat_due = None
        if self._revoke_pending is None and self._assignment:
            # Only a member of the current generation may still commit (during 409);
            # after 410 or 411 its commits would be refused.
            self._revoke_pending = cause.code == RebalanceInProgress.code
        if cause.code == UnknownMember.code:
            self.member_id = ""

    async def _revoke(self, *, commit: bool) -> None:
        """Eager revocation: nothing more is handed out, then commit what was, then
        tell the application (whose ``on_revoke`` may still commit)."""
        self._revoke_pending = None
        self._fetcher.abandon()
        self._buf.drop()
        if not self._assignment:
            return
        if commit and self.options.enable_auto_commit:
            try:
                await self._commit_processed(quiet=True)
            except WharfError as exc:
                log.warning("wharf: commit before revocation failed: %s", exc)
        await self._call_listener(self.options.on_revoke, list(self._assignment))
        self._owned = self._assignment
        self._buf.forget()
        self._resets.clear()
        self._assignment = []

    def _connection_lost(self, error: WharfError) -> None:
        conn = self._conn
        if conn._reconnector is None or conn.is_closed:
            self._end(error)
            return
        if not self._lost:
            self._lost = True
            self._fetcher.enabled = False
            self._fetcher.abandon()
            self._buf.drop()
            self._wake_driver()

    async def _reconnected(self) -> None:
        """Wait for the connection to be back, then go on where the stream was: a
        dynamic group member joins again (the broker removed it when the connection
        closed); a static member or a manual assignment fetches from its positions."""
        conn = self._conn
        while True:
            try:
                core = await conn._live_core()
            except WharfError as exc:
                if conn.is_closed:
                    raise ConnectionLost(f"the connection is closed: {exc}") from None
                await asyncio.sleep(RETRY_DELAY_S)
                continue
            if not core.ended:
                break
            if conn.is_closed:
                core.check_usable()  # raises why it ended
            await asyncio.sleep(RETRY_DELAY_S)
        self._lost = False
        self._fetcher.core = core
        self._fetcher.enabled = True
        if self._manual is None and self.options.instance_id is None and self.member_id:
            # Its commits would be refused (411) by now: only revoke.
            self.member_id = ""
            self._needs_join = True
            await self._revoke(commit=False)
        self._fetcher.refetch()


def _resolve(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)


def _by_topic(tps: Iterable[TopicPartition]) -> list[list[Any]]:
    grouped: dict[str, list[int]] = {}
    for topic, partition in tps:
        grouped.setdefault(topic, []).append(partition)
    return [[topic, sorted(parts)] for topic, parts in grouped.items()]


__all__ = ["Listener", "Stream", "TopicPartition"]
