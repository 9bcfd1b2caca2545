"""One partition of a log topic: segments, appends, fetch, retention, recovery.

Layout of ``<topic dir>/<partition>/``::

    <base:020d>.log         batches (protocol/records.py), see segment.py
    <base:020d>.index       sparse offset index   } of closed segments, see index.py
    <base:020d>.timeindex   time index            }
    <base:020d>.txnindex    aborted transactions (closed segments), see txnindex.py
    has-transactions        present once a transaction touched the partition
    <offset:020d>.snapshot  idempotent producer state below offset, see producers.py

Transactions: a transactional batch opens its producer's transaction in the partition
(``producers.open_txns``) until the coordinator appends a COMMIT or ABORT marker
(``append_marker``); the last stable offset is the first offset of the earliest open
transaction (else the high watermark), and read-committed fetches stop there and drop
the batches of aborted transactions (``aborted``, from the .txnindex files).  Only a
partition with ``has-transactions`` (created, fsynced, before its first transactional
batch) has .txnindex files: the others never write them at a roll nor read or rebuild
them at start (nor scan their closed segments for markers after an upgrade).

The last segment is the active one; appends go to it with one ``pwrite`` per batch
(page cache only) and it is rolled when the next batch would pass ``segment_bytes``,
when the batch's timestamp is ``segment_ms`` past the segment's first one, or (on
the retention tick) when its first append is ``segment_ms`` old.  Rolling finishes
the old segment in a worker thread: fsync its log, then write and fsync its index
files and the producer snapshot, so index files on disk always describe durable data.
Broker shutdown waits for these jobs (``pending_jobs``) before the directory can be
opened again.

``sync()`` fsyncs every segment with unsynced bytes in a worker thread, and the
directory when a segment is new; callers arriving while an fsync runs share the next
one (group commit).  After a failed write or fsync the partition refuses appends.

Recovery reads the index files of closed segments and checks them against the log
(index.py); only segments whose index files are missing or bad are scanned (and
their indexes rewritten), plus the active segment, whose torn or corrupt tail is cut
off and kept beside it in ``<segment>.torn-<unix ms>``.  A bad batch in a closed
segment is refused unless every later segment is empty (a machine that lost power
after a roll): dropping it would silently skip valid batches after it.  Before the
partition serves anything, the active segment and the directory are fsynced: a kill -9
leaves written but unfsynced bytes and renames in the page cache, which this run would
otherwise act on and a later power loss take back.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from bisect import bisect_right
from collections.abc import Callable
from pathlib import Path
from typing import Final

from wharf.protocol.errors import InternalError, OffsetOutOfRange, ResourceError, WharfError
from wharf.protocol.records import (
    CONTROL,
    LOG_APPEND_TIME,
    MARKER_ABORT,
    MARKER_COMMIT,
    TRANSACTIONAL,
    build_batch,
    decode_records,
    marker_payload,
    read_header,
)

from ..store.fsio import (
    FAULTS,
    fsync,
    fsync_dir,
    record_synced,
    record_synced_many,
    write_atomically,
)
from .compaction import complete_swaps
from .handles import SHARED, SegmentHandles, fd_error, out_of_fds
from .index import (
    ScanResult,
    SegmentIndex,
    index_suffixes,
    load_index,
    scan_log,
    write_index_files,
)
from .producers import (
    SNAPSHOT_SUFFIX,
    SNAPSHOTS_KEPT,
    ProducerStates,
    list_snapshots,
    snapshot_name,
)
from .segment import LOG_SUFFIX, ReadArena, Segment, segment_name
from .topicconfig import DEFAULTS, TopicConfig
from .txnindex import (
    TXN_INDEX_SUFFIX,
    AbortedTable,
    AbortedTxn,
    load_txn_index,
    write_txn_index,
)

log = logging.getLogger("wharf.topics")

__all__ = ["Partition", "segment_name"]

TMP_SUFFIX: Final = ".tmp"
TXN_FLAG_FILE: Final = "has-transactions"
# Byte positions in a batch header (protocol/records.py) read by read-committed fetches.
_ATTRIBUTES_AT: Final = 21
_PRODUCER_ID_AT: Final = 38
# A read-committed fetch whose batches all belong to aborted transactions reads on
# this many times before answering with nothing.
_MAX_ABORTED_REREADS: Final = 64


def _now_ms() -> int:
    return int(time.time() * 1000)


class Partition:
    """Owns the segment files of one partition."""

    def __init__(
        self,
        path: Path,
        number: int,
        config: TopicConfig = DEFAULTS,
        topic: str = "",
        handles: SegmentHandles = SHARED,
    ) -> None:
        self.path = path
        self.number = number
        self.topic = topic or path.parent.name
        self.config = config
        self.handles = handles
        self.segments: list[Segment] = []
        self._bases: list[int] = []  # base offsets of segments, for bisect
        self.producers = ProducerStates()
        self.aborted = AbortedTable()
        self.has_txns = False  # the TXN_FLAG_FILE exists
        # The job writing TXN_FLAG_FILE: producers that begin transactions here at the
        # same time share it (two jobs would race on its temp file).
        self._txn_flag_job: asyncio.Future[None] | None = None
        self.failed: WharfError | None = None
        self._sync_running = False
        self._sync_waiters: list[asyncio.Future[None]] = []
        self._written = 0  # bytes appended since open (a counter for group commit)
        self._synced_through = 0
        # Visibility (docs/logs.md, "When a record becomes visible"): every offset
        # below ``_durable`` is fsynced; from ``_held_from`` on (when not None) nothing
        # is shown to readers until fsynced, because an acks="fsynced" append is there;
        # ``_held_end`` is the end of the last such append.
        self._durable = 0
        self._held_from: int | None = None
        self._held_end = 0
        self._waiters: list[Callable[[], None]] = []  # long-poll fetches
        self._sync_log = FAULTS.sync_log  # fsio's sync log (tests), passed to worker jobs
        # Worker-thread jobs still running (rolls, fsyncs): shutdown waits for them.
        self._jobs: set[asyncio.Future[None]] = set()
        # At most one job finishing closed segments runs per partition; segments
        # closed meanwhile are finished together by the next one (a roll storm costs
        # a few batched jobs, not one queued job per roll).
        self._finishing = False
        self._finish_again = False
        # Segments whose index files the running finishing job writes (close() writes
        # those of any other unfinished segment itself).
        self._finishing_ids: set[int] = set()
        self.closed = False
        self._open()

    # -- offsets -------------------------------------------------------------------

    @property
    def earliest(self) -> int:
        """The log start offset: the base of the oldest segment."""
        return self.segments[0].base_offset

    @property
    def latest(self) -> int:
        """The log end: the offset the next record will get."""
        return self.segments[-1].next_offset

    @property
    def high_watermark(self) -> int:
        """The end of what readers see: fetches stop here, and it is the "latest"
        of list_offsets, lag and resets.  Below the log end only while an
        acks="fsynced" append (and whatever follows it) waits for its fsync."""
        held = self._held_from
        if held is None:
            return self.segments[-1].next_offset
        return max(self._durable, held)

    @property
    def last_stable_offset(self) -> int:
        """The end of what read-committed readers see: the first offset of the earliest
        open transaction, else the high watermark."""
        hw = self.high_watermark
        txns = self.producers.open_txns
        if not txns:
            return hw
        return min(hw, min(txns.values()))

    @property
    def durable(self) -> int:
        """Every offset below this one is fsynced."""
        return self._durable

    @property
    def size_bytes(self) -> int:
        return sum(s.size for s in self.segments)

    def describe(self) -> dict[str, int]:
        return {
            "partition": self.number,
            "earliest": self.earliest,
            "latest": self.high_watermark,
            "log_end": self.latest,
            "last_stable": self.last_stable_offset,
            "open_transactions": len(self.producers.open_txns),
            "bytes": self.size_bytes,
            "segments": len(self.segments),
        }

    # -- append --------------------------------------------------------------------

    def check_producer(self, pid: int, epoch: int, first_seq: int, count: int) -> int | None:
        """For an idempotent append: the base offset of the batch it repeats, or None."""
        return self.producers.check(pid, epoch, first_seq, count)

    def append(
        self,
        payload: bytes,
        *,
        record_count: int,
        last_offset_delta: int,
        codec: int,
        first_timestamp: int,
        max_timestamp: int,
        producer_id: int = -1,
        producer_epoch: int = -1,
        base_sequence: int = -1,
        now_ms: int | None = None,
        hold_until_fsynced: bool = False,
        transactional: bool = False,
    ) -> tuple[int, int]:
        """Write one batch to the page cache; returns (base offset, log append time
        or -1).  Not yet durable: ``await sync()`` before saying it is fsynced.
        ``hold_until_fsynced`` (acks="fsynced"): readers see it, and everything after
        it, only once fsynced.  Idempotent producers: call ``check_producer`` first.
        Out of file descriptors at a roll: ResourceError, nothing changed."""
        if self.failed is not None:
            raise self.failed
        if now_ms is None:
            now_ms = _now_ms()
        attributes = codec | TRANSACTIONAL if transactional else codec
        append_time = -1
        if self.config.log_append_time:
            attributes |= LOG_APPEND_TIME
            first_timestamp = max_timestamp = append_time = now_ms
        base = self.latest
        last = base + last_offset_delta
        data = build_batch(
            base,
            payload,
            record_count=record_count,
            last_offset_delta=last_offset_delta,
            attributes=attributes,
            first_timestamp=first_timestamp,
            max_timestamp=max_timestamp,
            producer_id=producer_id,
            producer_epoch=producer_epoch,
            base_sequence=base_sequence,
        )
        self._write(data, base, last, max_timestamp, now_ms)
        if producer_id >= 0:
            self.producers.record(producer_id, producer_epoch, base_sequence, base, last, now_ms)
            if transactional:
                if not self.has_txns:  # callers without a coordinator (tools, tests)
                    self._write_txn_flag()
                    self.has_txns = True
                self.producers.record_transactional(producer_id, base)
        if hold_until_fsynced:
            self._held_end = last + 1
            if self._held_from is None:
                self._held_from = base
            # Whoever appended may not wait for the fsync (a publish without confirm):
            # start it anyway, or held records would stay hidden.  Group commit
            # shares it with the producer's own sync().
            self._sync_soon()
        elif self._held_from is None:
            self._wake_readers()
        return base, append_time

    def _write(self, data: bytes, base: int, last: int, max_timestamp: int, now_ms: int) -> None:
        seg = self.segments[-1]
        cfg = self.config
        if seg.size and (
            not seg.fits(len(data), last, cfg.segment_bytes)
            or max_timestamp - seg.first_timestamp > cfg.segment_ms
        ):
            self.roll()
            seg = self.segments[-1]
        try:
            seg.append(data, base, last, max_timestamp)
        except OSError as exc:
            raise self._fail(f"write failed: {exc}") from exc
        if seg.first_append_ms < 0:
            seg.first_append_ms = now_ms
        self._written += len(data)

    def mark_transactional(self) -> asyncio.Future[None] | None:
        """Before the first transactional batch: a future done once the partition's
        TXN_FLAG_FILE is durable (None when it is already)."""
        if self.has_txns:
            return None
        if self._txn_flag_job is not None:
            return self._txn_flag_job
        loop = asyncio.get_running_loop()
        job = self._track(loop.run_in_executor(None, self._write_txn_flag))
        self._txn_flag_job = job

        def done(fut: asyncio.Future[None]) -> None:
            self._txn_flag_job = None  # after a failure, the next caller tries again
            if not fut.cancelled() and fut.exception() is None:
                self.has_txns = True

        job.add_done_callback(done)
        return job

    def _write_txn_flag(self) -> None:
        flag = self.path / TXN_FLAG_FILE
        write_atomically(flag, b"")
        self._synced(flag, 0)

    def has_open_txn(self, producer_id: int) -> bool:
        return producer_id in self.producers.open_txns

    def append_marker(
        self, producer_id: int, producer_epoch: int, commit: bool, coordinator_epoch: int = 0
    ) -> int | None:
        """End the producer's open transaction here with a COMMIT or ABORT control
        batch (page cache: ``await sync()`` after); returns its offset, or None when the
        producer has no open transaction here (nothing to mark: a repeated marker)."""
        if self.failed is not None:
            raise self.failed
        first = self.producers.open_txns.get(producer_id)
        if first is None:
            return None
        now_ms = _now_ms()
        kind = MARKER_COMMIT if commit else MARKER_ABORT
        base = self.latest
        data = build_batch(
            base,
            marker_payload(kind, coordinator_epoch, first, now_ms),
            record_count=1,
            last_offset_delta=0,
            attributes=CONTROL | TRANSACTIONAL,
            first_timestamp=now_ms,
            max_timestamp=now_ms,
            producer_id=producer_id,
            producer_epoch=producer_epoch,
        )
        self._write(data, base, base, now_ms, now_ms)
        self.producers.record_marker(producer_id, producer_epoch, now_ms)
        if not commit:
            entry = AbortedTxn(producer_id, first, base - 1, base)
            self.segments[-1].aborts.append(entry)
            self.aborted.add(entry)
        if self._held_from is None:
            self._wake_readers()  # the last stable offset may have moved
        return base

    def _sync_soon(self) -> None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return  # tools and unit tests without a loop call sync() themselves
        if (
            not self._sync_running
            and self.failed is None
            and not self.closed
            and self._synced_through < self._written
        ):
            self._start_sync(loop)

    def _wake_readers(self) -> None:
        if self._waiters:
            waiters, self._waiters = self._waiters, []
            for wake in waiters:
                wake()

    def _advance_durable(self, offset: int) -> None:
        """Everything below ``offset`` is fsynced: show held records up to it."""
        if offset <= self._durable:
            return
        self._durable = offset
        held = self._held_from
        if held is None:
            return
        if self._held_end <= offset:
            self._held_from = None
        elif held < offset:
            self._held_from = offset
        else:
            return
        self._wake_readers()

    def _fail(self, why: str) -> WharfError:
        log.error("log partition %s: %s; refusing further appends", self.path, why)
        if self.failed is None:
            self.failed = InternalError(
                f"partition {self.number} of topic '{self.topic}' failed ({why}); "
                "the broker logged it"
            )
        return self.failed

    # -- rolling -------------------------------------------------------------------

    def roll(self) -> None:
        """Close the active segment (if it has data) and start a new one.  The only
        fd a roll needs is the new segment's: when there is none (EMFILE) nothing is
        changed and the caller gets ResourceError; the partition stays appendable."""
        old = self.segments[-1]
        if old.size == 0:
            return
        base = old.next_offset
        path = self.path / segment_name(base)
        fd = self._create_segment_file(path)
        old.index.finish()
        seg = Segment(path, base, fd, 0, self.handles)
        seg.new = True
        seg.synced_size = 0
        self.segments.append(seg)
        self._bases.append(base)
        # The old segment's fd goes; its reads go through the pool of read handles.
        old.seal()
        old.finished = False
        self._finish_closed()

    def _create_segment_file(self, path: Path) -> int:
        for attempt in (1, 2):
            try:
                return os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
            except OSError as exc:
                if not out_of_fds(exc):
                    raise self._fail(f"cannot create segment {path.name}: {exc}") from exc
                self.handles.fd_errors_total += 1
                freed = self.handles.close_idle()
                if attempt == 2 or not freed:
                    log.warning(
                        "log %s: cannot roll to a new segment, out of file descriptors (%s); "
                        "the append is refused and the active segment kept",
                        self.path,
                        exc,
                    )
                    raise fd_error(f"rolling a segment of topic '{self.topic}'", exc) from exc
        raise AssertionError("unreachable")

    def _finish_closed(self) -> None:
        """Start the worker job that finishes closed segments: their logs fsynced
        (every closed segment not yet fsynced, oldest first: a segment's data must
        never be durable while an older one's is not), then the index files of those
        not yet finished and the producer snapshot at the active segment's base."""
        if self.closed or self.failed is not None:
            return
        if self._finishing:
            self._finish_again = True
            return
        closed = self.segments[:-1]
        unsynced = [s for s in closed if s.synced_size < s.size]
        unfinished = [s for s in closed if not s.finished]
        if not unfinished and not unsynced:
            return
        base = self.segments[-1].base_offset
        job = _ClosedSegment(
            [(str(s.path), s.size) for s in unsynced],
            [(s.path, s.index.offset_bytes(), s.index.time_bytes(), s.aborts) for s in unfinished],
            self.has_txns,
            self.path / snapshot_name(base),
            self.producers.snapshot_bytes(base),
            self._sync_log,
        )
        sizes = [s.size for s in unsynced]
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # no loop (tools, unit tests): finish it now
            job.run()
            self._closed_segment_done(unfinished, unsynced, sizes, base, None)
            return

        def done(fut: asyncio.Future[None]) -> None:
            self._finishing = False
            self._finishing_ids = set()
            self._closed_segment_done(unfinished, unsynced, sizes, base, fut.exception())
            if self._finish_again:
                self._finish_again = False
                self._finish_closed()

        self._finishing = True
        self._finishing_ids = {id(s) for s in unfinished}
        self._track(loop.run_in_executor(None, job.run)).add_done_callback(done)

    def _closed_segment_done(
        self,
        finished: list[Segment],
        synced: list[Segment],
        sizes: list[int],
        end: int,
        exc: BaseException | None,
    ) -> None:
        if exc is not None:
            if self.closed:
                return
            if out_of_fds(exc):
                self.handles.fd_errors_total += 1
                # Nothing is lost: the segments stay unfinished (not deleted by
                # retention, not compacted) and the next roll or retention tick
                # tries again.
                log.warning(
                    "log %s: finishing closed segments postponed, out of file descriptors (%s)",
                    self.path,
                    exc,
                )
            else:
                self._fail(f"finishing closed segments failed: {exc}")
            return
        for seg, size in zip(synced, sizes, strict=True):
            seg.synced_size = max(seg.synced_size, size)
        for seg in finished:
            seg.finished = True
        if not self.closed:
            self._advance_durable(end)
            self._drop_old_snapshots()

    def absorb(self, merged: Segment, members: list[Segment]) -> None:
        """Compaction merged ``members`` (the closed segments right after ``merged``)
        into ``merged``, whose file and index are already the merged ones."""
        gone = set(map(id, members))
        merged.next_offset = members[-1].next_offset
        for seg in members:
            merged.aborts += seg.aborts
            seg.close()  # pooled read handles; a pinned one closes at its release
        self.segments = [s for s in self.segments if id(s) not in gone]
        self._bases = [s.base_offset for s in self.segments]

    def _drop_old_snapshots(self) -> None:
        snaps = list_snapshots(self.path)
        for offset, p in snaps[:-SNAPSHOTS_KEPT]:
            if offset < self.latest:
                _unlink(p)

    def roll_if_idle(self, now_ms: int) -> bool:
        """Roll the active segment when its first append is ``segment_ms`` old, so the
        data of a quiet partition can expire."""
        if not self.pending_jobs():
            # An earlier attempt ran out of file descriptors: try again.
            if any(not s.finished for s in self.segments[:-1]):
                self._finish_closed()
            if self._held_from is not None:
                self._sync_soon()
        seg = self.segments[-1]
        if seg.size and 0 <= seg.first_append_ms < now_ms - self.config.segment_ms:
            try:
                self.roll()
            except ResourceError:
                return False  # logged; the next tick tries again
            return True
        return False

    # -- retention -----------------------------------------------------------------

    def apply_retention(self, now_ms: int) -> int:
        """Delete the oldest closed segments past retention_ms or beyond
        retention_bytes (as Kafka); returns how many were deleted."""
        cfg = self.config
        if not cfg.deletes or self.failed is not None:
            return 0
        closed = self.segments[:-1]
        # Never a segment whose roll job (fsync, index files) has not finished.
        for n, seg in enumerate(closed):
            if not seg.finished:
                closed = closed[:n]
                break
        doomed = 0
        if cfg.retention_ms >= 0:
            horizon = now_ms - cfg.retention_ms
            for seg in closed:
                if seg.max_timestamp >= horizon:
                    break
                doomed += 1
        if cfg.retention_bytes >= 0:
            excess = self.size_bytes - cfg.retention_bytes
            n = 0
            for seg in closed:
                if excess - seg.size < 0:
                    break
                excess -= seg.size
                n += 1
            doomed = max(doomed, n)
        if not doomed:
            return 0
        gone = self.segments[:doomed]
        del self.segments[:doomed]
        del self._bases[:doomed]
        # A reader holding a pinned handle of one of these keeps reading it until it
        # releases the handle (handles.py); new reads get OffsetOutOfRange.
        for seg in gone:
            seg.delete_files()
        self.aborted.drop_below(self.earliest)
        snaps = list_snapshots(self.path)
        for offset, p in snaps[:-1]:
            if offset < self.earliest:
                _unlink(p)
        log.info(
            "topic %s partition %d: retention deleted %d segments; log start is now %d",
            self.topic,
            self.number,
            doomed,
            self.earliest,
        )
        return doomed

    # -- durability ----------------------------------------------------------------

    def sync(self) -> asyncio.Future[None]:
        """A future done once everything appended before the call is fsynced.  Calls
        made while an fsync runs share the next one (group commit)."""
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[None] = loop.create_future()
        if self.failed is not None:
            fut.set_exception(self.failed)
        elif self._synced_through >= self._written:
            fut.set_result(None)
        else:
            self._sync_waiters.append(fut)
            if not self._sync_running:
                self._start_sync(loop)
        return fut

    def sync_now(self) -> None:
        """fsync what is unsynced on the calling thread (start-up recovery of
        transactions, before the loop serves anyone)."""
        if self.failed is not None:
            raise self.failed
        dirty = [s for s in self.segments if s.synced_size < s.size or s.new]
        new_dir = self.path if any(s.new for s in dirty) else None
        _fsync_files([(str(s.path), s.size) for s in dirty], new_dir, self._sync_log)
        for seg in dirty:
            seg.synced_size = seg.size
            seg.new = False
        self._synced_through = self._written
        self._advance_durable(self.latest)

    def _start_sync(self, loop: asyncio.AbstractEventLoop) -> None:
        waiters, self._sync_waiters = self._sync_waiters, []
        target = self._written
        target_offset = self.latest
        dirty = [s for s in self.segments if s.synced_size < s.size or s.new]
        # By path, one fd at a time in the worker: a segment deleted meanwhile is skipped.
        jobs = [(str(s.path), s.size) for s in dirty]
        new_dir = self.path if any(s.new for s in dirty) else None
        self._sync_running = True
        sync_log = self._sync_log

        def done(task: asyncio.Future[None]) -> None:
            self._sync_running = False
            exc = task.exception()
            error: WharfError | None = None
            if exc is None:
                self._synced_through = max(self._synced_through, target)
                for seg, (_p, size) in zip(dirty, jobs, strict=True):
                    seg.synced_size = max(seg.synced_size, size)
                    if new_dir is not None:
                        seg.new = False
                if not self.closed:
                    self._advance_durable(target_offset)
            elif isinstance(exc, OSError) and out_of_fds(exc):
                # Not a disk failure: the data is still in the page cache and the next
                # sync covers it.  These waiters are told to retry.
                log.warning("log %s: fsync postponed, out of file descriptors", self.path)
                self.handles.fd_errors_total += 1
                error = fd_error(f"fsyncing topic '{self.topic}'", exc)
            elif not self.closed:
                self._fail(f"fsync failed: {exc}")
            for w in waiters:
                if w.done():
                    continue
                if exc is None:
                    w.set_result(None)
                else:
                    w.set_exception(error or self.failed or InternalError("fsync failed"))
            if self._sync_waiters:
                if self.failed is None and not self.closed:
                    self._start_sync(loop)
                else:
                    for w in self._sync_waiters:
                        if not w.done():
                            w.set_exception(self.failed or InternalError("partition closed"))
                    self._sync_waiters = []

        job = loop.run_in_executor(None, _fsync_files, jobs, new_dir, sync_log)
        self._track(job).add_done_callback(done)

    def _track(self, job: asyncio.Future[None]) -> asyncio.Future[None]:
        self._jobs.add(job)
        job.add_done_callback(self._jobs.discard)
        return job

    def pending_jobs(self) -> list[asyncio.Future[None]]:
        """Worker-thread jobs not finished yet: the fsyncs and the index and snapshot
        files of rolls.  A partition reopened on the same directory (a restart in
        the same process) must not start before they end."""
        return [job for job in self._jobs if not job.done()]

    # -- reading -------------------------------------------------------------------

    def check_offset(self, offset: int) -> None:
        if offset < self.earliest or offset > self.latest:
            raise OffsetOutOfRange(
                f"offset {offset} is out of range for {self.topic}/{self.number}: valid "
                f"offsets are {self.earliest}..{self.latest} (latest = the next offset "
                "to be written)",
                details={"earliest": self.earliest, "latest": self.latest, "offset": offset},
            )

    def fetch(
        self,
        offset: int,
        max_bytes: int,
        *,
        at_least_one: bool = True,
        arena: ReadArena | None = None,
        committed: bool = False,
    ) -> list[memoryview]:
        """Whole stored batches from the one holding ``offset`` on, up to ``max_bytes``
        (``at_least_one``: even when the first batch is bigger); the first may start
        before ``offset``.  Read into ``arena`` when given (see ``ReadArena``).  Raises
        OffsetOutOfRange (416).

        None of the batches is only records below ``offset``: a compacted batch that
        lost its records from ``offset`` on (it keeps its last offset) is skipped.  So
        with ``at_least_one`` an empty answer means that no record at or after
        ``offset`` exists yet, even when ``offset`` is below ``latest`` (a compacted
        gap at the end of the log).

        ``committed`` (read committed): only batches below the last stable offset, and
        none of an aborted transaction.  Control batches (markers) stay in: they carry
        the offsets a reader moves on by, and SDKs skip them."""
        self.check_offset(offset)
        visible = self.last_stable_offset if committed else self.high_watermark
        out = self._read(offset, max_bytes, at_least_one, arena, visible)
        if out and _ends_before(out[0], offset):
            if len(out) > 1:
                out = out[1:]
            else:
                nxt = read_header(out[0]).next_offset
                out = self._read(nxt, max_bytes, at_least_one, arena, visible)
        # The common case (no aborted transaction in range) costs one comparison per
        # fetch: whole batches up to the LSO, as read uncommitted.
        if (
            committed
            and out
            and self.aborted.any_between(int.from_bytes(out[0][4:12], "big"), visible)
        ):
            out = self._without_aborted(out, max_bytes, at_least_one, arena, visible)
        return out

    def _without_aborted(
        self,
        out: list[memoryview],
        max_bytes: int,
        at_least_one: bool,
        arena: ReadArena | None,
        visible: int,
    ) -> list[memoryview]:
        """``out`` without the batches of aborted transactions; when that leaves
        nothing, the batches after them (so an answer is empty only at the end)."""
        aborted = self.aborted.aborted
        for _ in range(_MAX_ABORTED_REREADS):
            kept = []
            for b in out:
                attrs = b[_ATTRIBUTES_AT]
                if attrs & TRANSACTIONAL and not attrs & CONTROL:
                    pid = int.from_bytes(b[_PRODUCER_ID_AT : _PRODUCER_ID_AT + 8], "big")
                    if aborted(pid, int.from_bytes(b[4:12], "big")):
                        continue
                kept.append(b)
            if kept or not out:
                return kept
            nxt = read_header(out[-1]).next_offset
            if nxt >= visible:
                return []
            out = self._read(nxt, max_bytes, at_least_one, arena, visible)
        return []

    def _read(
        self,
        offset: int,
        max_bytes: int,
        at_least_one: bool,
        arena: ReadArena | None,
        visible: int,
    ) -> list[memoryview]:
        if offset >= visible:
            return []
        segments = self.segments
        out: list[memoryview] = []
        used = 0
        i = bisect_right(self._bases, offset) - 1
        while i < len(segments) and used < max_bytes:
            seg = segments[i]
            got, whole = seg.read_from(
                offset, max_bytes - used, at_least_one=at_least_one and not out, arena=arena
            )
            if visible < self.latest:
                # Held batches (and an open transaction's) are whole batches from a
                # boundary on: cut there.
                kept = [b for b in got if int.from_bytes(b[4:12], "big") < visible]
                if len(kept) < len(got):
                    out += kept
                    return out
            out += got
            used += sum(len(b) for b in got)
            if not whole:
                break  # the next batch does not fit
            offset = seg.next_offset  # on into the next segment
            if offset >= visible:
                break
            i += 1
        return out

    @property
    def waiting_fetches(self) -> int:
        """Long-poll fetches parked until the next append (a /metrics gauge)."""
        return len(self._waiters)

    def add_waiter(self, wake: Callable[[], None]) -> None:
        """Call ``wake`` once at the next append (long-poll fetches)."""
        self._waiters.append(wake)

    def remove_waiter(self, wake: Callable[[], None]) -> None:
        try:
            self._waiters.remove(wake)
        except ValueError:
            pass

    def offset_for_timestamp(self, timestamp: int) -> tuple[int, int]:
        """(offset, timestamp) of the first record whose timestamp is >= ``timestamp``;
        (latest, -1) when there is none.  -1 asks for latest, -2 for earliest."""
        visible = self.high_watermark
        if timestamp == -1:
            return visible, -1
        if timestamp == -2:
            return self.earliest, -1
        for seg in self.segments:
            if seg.base_offset >= visible:
                break
            found = seg.first_at_time(timestamp)
            if found is not None:
                return found if found[0] < visible else (visible, -1)
        return visible, -1

    # -- recovery ------------------------------------------------------------------

    def _open(self) -> None:
        path = self.path
        path.mkdir(parents=True, exist_ok=True)
        for tmp in path.glob(f"*{TMP_SUFFIX}"):
            _unlink(tmp)
        self.has_txns = (path / TXN_FLAG_FILE).exists()
        swapped = complete_swaps(path, LOG_SUFFIX, (*index_suffixes(), TXN_INDEX_SUFFIX))
        if swapped:
            log.warning("log %s: completed %d segment merges a crash interrupted", path, swapped)
        found: list[tuple[int, Path]] = []
        for p in path.glob(f"*{LOG_SUFFIX}"):
            stem = p.name[: -len(LOG_SUFFIX)]
            if stem.isdigit():
                found.append((int(stem), p))
        found.sort()
        if not found:
            found = [(0, path / segment_name(0))]
        rebuilt = 0
        scans: dict[int, ScanResult] = {}
        i = 0
        # One fd at a time: closed segments are only stat'ed (their index files read
        # into memory, a log scanned only when they are bad); only the active segment
        # keeps an fd.
        while i < len(found):
            base, seg_path = found[i]
            if i < len(found) - 1:
                seg = Segment(seg_path, base, -1, seg_path.stat().st_size, self.handles)
            else:
                fd = os.open(seg_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
                seg = Segment(seg_path, base, fd, os.fstat(fd).st_size, self.handles)
            self.segments.append(seg)
            self._bases.append(base)
            if i < len(found) - 1:
                end = found[i + 1][0]
                idx = load_index(seg_path, base, seg.size, end)
                if idx is not None and self._index_fits(seg, idx):
                    seg.index = idx
                    seg.next_offset = end
                    if self.has_txns:
                        aborts = load_txn_index(seg_path)
                        if aborts is None:  # lost: from its markers
                            aborts = scan_log(seg_path, base, end).aborts
                            txn = write_txn_index(seg_path, aborts)
                            self._synced(txn, txn.stat().st_size)
                        seg.aborts = aborts
                    i += 1
                    continue
                scan = scan_log(seg_path, base, end)
                later = found[i + 1 :]
                # Its index files are written only after its log is fsynced: a closed
                # segment without them that ends before the next one's base, followed by
                # empty segments only, lost its unsynced tail in a power loss just after
                # a roll.  Its end is the log's end (as for a torn batch below), not the
                # next base: offsets that hold nothing must not be handed out.  (A
                # compacted segment may end early legitimately; it has its index files.)
                unfinished = (
                    scan.problem is None
                    and scan.next_offset < end
                    and not self.config.compacts
                    and not any(p.stat().st_size for _b, p in later)
                )
                if scan.problem is None and not unfinished:
                    scan.segment_index.finish()
                    seg.index = scan.segment_index
                    seg.next_offset = end
                    # Its roll job never finished: the log may not be fsynced either.
                    _fsync_files([(str(seg_path), seg.size)], None, self._sync_log)
                    write_index_files(
                        seg_path,
                        scan.segment_index.offset_bytes(),
                        scan.segment_index.time_bytes(),
                        self._synced,
                    )
                    seg.aborts = scan.aborts
                    if self.has_txns:
                        txn = write_txn_index(seg_path, scan.aborts)
                        self._synced(txn, txn.stat().st_size)
                    scans[base] = scan
                    rebuilt += 1
                    i += 1
                    continue
                if any(p.stat().st_size for _b, p in later):
                    raise InternalError(
                        f"log segment {seg_path} is corrupt at byte {scan.valid_bytes} "
                        f"({scan.problem}) and later segments hold data; refusing to skip "
                        "the batches after it"
                    )
                for _b, p in later:
                    Segment(p, _b, -1, 0, self.handles).delete_files()
                log.warning(
                    "log %s: removed %d empty segments after a damaged or unfinished one",
                    path,
                    len(later),
                )
                del found[i + 1 :]
            # The active segment: scanned whole, torn tail cut.
            if seg.fd < 0:  # a closed segment that became the last (see above)
                seg.fd = os.open(seg_path, os.O_RDWR | os.O_CLOEXEC)
            scan = scan_log(seg_path, base)
            if scan.problem is not None:
                self._cut_tail(seg, scan.valid_bytes, scan.problem)
            seg.size = seg.synced_size = scan.valid_bytes
            seg.index = scan.segment_index
            seg.next_offset = scan.next_offset
            seg.first_timestamp = scan.first_timestamp
            seg.first_append_ms = scan.first_timestamp
            seg.aborts = scan.aborts
            scans[base] = scan
            i += 1
        for seg in self.segments:
            for entry in seg.aborts:
                self.aborted.add(entry)
        self._recover_producers(scans)
        # What survived is the log: fsync the active segment once, so that every record
        # a reader can see from now on is durable (it may be a page-cache leftover of a
        # kill -9 that a power loss would still take).
        active = self.segments[-1]
        fsync(active.fd, active.path)
        self._synced(active.path, active.size)
        # And the names: a segment rolled, or a flag, index or snapshot file renamed in
        # just before a kill -9 may be in the page cache only (their contents were
        # fsynced before the rename), and this run acts on them: serves that segment's
        # records, treats the partition as transactional, trusts the indexes.
        fsync_dir(path)
        self._report_recovered()
        self._durable = self.latest
        if rebuilt:
            log.warning("log %s: rebuilt the indexes of %d segments", path, rebuilt)

    @staticmethod
    def _index_fits(seg: Segment, idx: SegmentIndex) -> bool:
        """The last offset-index entry must point at a batch with that base offset."""
        if not idx.positions:
            return True
        with open(seg.path, "rb", buffering=0) as f:
            head = os.pread(f.fileno(), 12, idx.positions[-1])
        expected = seg.base_offset + idx.rel_offsets[-1]
        return len(head) == 12 and int.from_bytes(head[4:12], "big") == expected

    def _cut_tail(self, seg: Segment, valid: int, problem: str) -> None:
        size = seg.size
        with open(seg.path, "rb") as f:
            f.seek(valid)
            cut = f.read()
        side = seg.path.with_name(f"{seg.path.name}.torn-{_now_ms()}")
        side.write_bytes(cut)
        os.ftruncate(seg.fd, valid)
        fsync(seg.fd, seg.path)
        self._synced(seg.path, valid)
        log.warning(
            "log %s: cut %d bytes at byte %d (%s); kept them in %s",
            seg.path,
            size - valid,
            valid,
            problem,
            side.name,
        )

    def _recover_producers(self, scans: dict[int, ScanResult]) -> None:
        """Producer state: the newest usable snapshot plus the batches after it."""
        end = self.latest
        start = self.earliest
        states: ProducerStates | None = None
        snap_offset = start
        for offset, p in reversed(list_snapshots(self.path)):
            if offset > end:
                _unlink(p)  # describes batches that are gone (torn tail, power loss)
                continue
            if states is not None:
                continue
            loaded = ProducerStates.from_snapshot(p.read_bytes())
            if loaded is not None and loaded[0] == offset:
                snap_offset, states = loaded
        self.producers = states if states is not None else ProducerStates()
        record = self.producers.record
        for seg in self.segments:
            if seg.next_offset <= snap_offset or seg.size == 0:
                continue
            scan = scans.get(seg.base_offset)
            if scan is None:
                scan = scan_log(seg.path, seg.base_offset)
            producers = self.producers
            for b in scan.producer_batches:
                if b.base_offset < snap_offset:
                    continue
                if b.attributes & CONTROL:
                    producers.record_marker(b.producer_id, b.producer_epoch, b.max_timestamp)
                    continue
                record(
                    b.producer_id,
                    b.producer_epoch,
                    b.base_sequence,
                    b.base_offset,
                    b.last_offset,
                    b.max_timestamp,
                )
                if b.attributes & TRANSACTIONAL:
                    producers.record_transactional(b.producer_id, b.base_offset)

    def _synced(self, path: Path, length: int) -> None:
        record_synced(path, length)

    def _report_recovered(self) -> None:
        """For the sync log (tests): every file recovery kept is durable now."""
        if not self._sync_log:
            return
        suffixes = (LOG_SUFFIX, *index_suffixes(), TXN_INDEX_SUFFIX, SNAPSHOT_SUFFIX)
        kept = [
            (p, p.stat().st_size)
            for p in self.path.iterdir()
            if p.name == TXN_FLAG_FILE or (p.name.endswith(suffixes) and p.name[:1].isdigit())
        ]
        record_synced_many(kept)

    # -- closing -------------------------------------------------------------------

    def _finish_rest_now(self) -> None:
        """Shutdown: write the index files of closed segments that no finishing job
        covers (rolled while the last job ran), so a restart rebuilds nothing."""
        rest = [
            s
            for s in self.segments[:-1]
            if not s.finished and id(s) not in self._finishing_ids and s.path.exists()
        ]
        for seg in rest:
            write_index_files(
                seg.path, seg.index.offset_bytes(), seg.index.time_bytes(), self._synced,
                sync_dir=False,
            )  # fmt: skip
            if self.has_txns:
                txn = write_txn_index(seg.path, seg.aborts, sync_dir=False)
                self._synced(txn, txn.stat().st_size)
            seg.finished = True
        if rest:
            fsync_dir(self.path)

    def close(self, *, clean: bool = True) -> None:
        """Close the files.  ``clean``: fsync what is unsynced and write a producer
        snapshot first (broker shutdown); not when the topic is being deleted."""
        if self.closed:
            return
        self.closed = True
        for w in self._sync_waiters:
            if not w.done():
                w.set_exception(InternalError("the partition was closed"))
        self._sync_waiters = []
        waiters, self._waiters = self._waiters, []
        for wake in waiters:  # long polls answer now (with the topic gone, an error)
            wake()
        if clean and self.failed is None:
            try:
                jobs = [
                    (str(s.path), s.size) for s in self.segments if s.synced_size < s.size or s.new
                ]
                _fsync_files(jobs, self.path, self._sync_log)
                self._finish_rest_now()
                active = self.segments[-1]
                if self.producers.producers and self.latest > active.base_offset:
                    snap = self.path / snapshot_name(self.latest)
                    write_atomically(snap, self.producers.snapshot_bytes(self.latest))
                    self._synced(snap, snap.stat().st_size)
            except OSError as exc:
                log.error("log partition %s: closing cleanly failed: %s", self.path, exc)
        for seg in self.segments:
            seg.close()


class _ClosedSegment:
    """Worker-thread part of a roll: the logs of the closed segments not yet fsynced
    (the one just closed and any older) fsynced in order, then the index files of the
    closed segments not finished yet and the producer snapshot written and fsynced."""

    __slots__ = ("logs", "indexes", "txn_indexes", "snap_path", "snap", "sync_log")

    def __init__(
        self,
        logs: list[tuple[str, int]],
        indexes: list[tuple[Path, bytes, bytes, list[AbortedTxn]]],
        txn_indexes: bool,
        snap_path: Path,
        snap: bytes,
        sync_log: str | None,
    ) -> None:
        self.logs = logs
        self.indexes = indexes
        self.txn_indexes = txn_indexes
        self.snap_path = snap_path
        self.snap = snap
        self.sync_log = sync_log

    def synced(self, path: Path, length: int) -> None:
        record_synced(path, length)

    def run(self) -> None:
        _fsync_files(self.logs, None, self.sync_log)
        written = False
        for path, offsets, times, aborts in self.indexes:
            if path.exists():  # else deleted with its topic meanwhile
                write_index_files(path, offsets, times, self.synced, sync_dir=False)
                if self.txn_indexes:
                    txn = write_txn_index(path, aborts, sync_dir=False)
                    self.synced(txn, txn.stat().st_size)
                written = True
        if written:
            fsync_dir(self.indexes[0][0].parent)
        write_atomically(self.snap_path, self.snap)
        self.synced(self.snap_path, len(self.snap))


def _fsync_files(jobs: list[tuple[str, int]], directory: Path | None, sync_log: str | None) -> None:
    """Worker thread: fsync each (path, size) in order, then the directory.  Each
    file is opened read-only for its fsync and closed at once (fsync flushes the
    file, whatever fd it is called on), so a job holds one fd at a time; a file gone
    meanwhile (retention, topic deletion) needs no fsync."""
    done: list[tuple[str, int]] = []
    for path, size in jobs:
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            continue
        try:
            fsync(fd, path)
        finally:
            os.close(fd)
        done.append((path, size))
    if directory is not None:
        fsync_dir(directory)
    if sync_log:
        record_synced_many(done)


def _ends_before(batch: memoryview, offset: int) -> bool:
    """Whether ``batch``, which starts before ``offset``, holds no record at or after
    it: compaction removed its last records.  Only a batch with fewer records than
    offsets (one that compaction rebuilt) is decoded to find out."""
    h = read_header(batch)
    if h.base_offset >= offset or h.record_count == h.last_offset_delta + 1:
        return False
    try:
        return not decode_records(batch, offset)
    except WharfError:
        return False  # unreadable: the reader gets it as stored and reports it


def _unlink(path: Path) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
