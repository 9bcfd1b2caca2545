"""The message store: append-only segment files with group commit.

Layout: ``<data_dir>/messages/<number:016d>.seg`` — records as described in
``records.py``.  All queues share the segments, so one group commit can cover
records of many queues (a move between two queues commits atomically).

Group commit: records are appended to an in-memory batch; at most one write+fsync
runs at a time, in a worker thread; while it runs the next batch accumulates.  Each
batch has a number; ``durable_batch`` is the newest one known to be on disk, and
listeners are told when it advances (connections release publisher confirms then).
The number of fsyncs grows with batches, not with messages.

Durability counters: ``durable_batch`` is the newest batch whose confirms may go out
(written and fsynced; with ``fsync_interval_ms`` only written), ``synced_batch`` the
newest batch known to be fsynced in every mode.  Only ``synced_batch`` ever lets a file
go: see the lifetime rules below.

Segment lifetime (the rules, docs/storage.md repeats them):

* A segment's write fd is closed once the segment is no longer the active one AND
  every byte appended to it has been written and fsynced (``synced_size >= size``).
  Bytes appended just before a roll may still be waiting for the next batch; the fd
  stays open for them.  So the store holds one write fd for the active segment, plus
  briefly one for each segment rolled away from whose last bytes are not yet on disk.
* A segment is deleted (and its fds closed) only from the front (oldest first), when
  it is not the active segment, nothing live remains in it, and its bytes are all
  fsynced.  Settled messages lower ``live`` at once; messages copied forward by
  compaction lower it only once ``synced_batch`` covers the batch holding the copies,
  so a power loss can never take both copies.  An ACK record can never outlive the
  segment of the message it settles.
* Paging reads go through a small LRU of read-only fds (``MAX_READ_FDS``).
* Every write and fsync runs on the one worker thread, in submission order; the
  interval fsync is queued behind an in-flight write, never skipped, so it covers
  every batch submitted before it.

fsync failures: the kernel may have dropped the dirty pages, so a failed fsync is
never retried on the same file: the segment is abandoned, the batch's waiters are
failed, and the store stops accepting persistent writes (``failed`` is set) while
consumers keep being served from memory.

File descriptors: a write or fsync never needs a new fd.  The ``messages/`` directory
is opened once, when appending starts, and kept open for the store's life for the
directory fsync after a roll (opening it then, with the process out of fds, used to
fail the batch and so the whole store).  Only a roll opens a file: ``ensure_room``
rolls before a persistent publish is routed, so that a roll without a free fd refuses
that publish (``ResourceError``, 506) and changes nothing; any other record (acks,
watermarks, copies, an atomic commit) that finds the active segment full and no fd for
a new one is appended to the active segment, past ``segment_bytes``, and the next
append tries the roll again.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from concurrent.futures import Executor, ThreadPoolExecutor
from pathlib import Path
from typing import Any, Final

from wharf.protocol.errors import ResourceError

from .fsio import fsync, fsync_dir, record_synced, write_all
from .records import (
    ACKS,
    COUNTS,
    DEDUP,
    DELAYS,
    DELIVERED,
    FLAG_TRANSIENT,
    HEADER,
    MSGS,
    TXEND,
    decode_record,
    encode_record,
)

log = logging.getLogger("wharf.store")

SEGMENT_BYTES: Final = 64 * 1024 * 1024
SEGMENT_SUFFIX: Final = ".seg"
# Compaction: copy the live messages out of the oldest segment once fewer than this
# fraction of the messages written to it are live and at least this many segments exist.
COMPACT_LIVE_RATIO: Final = 0.5
COMPACT_MIN_SEGMENTS: Final = 3
# Read-only fds kept open for paging reads (least recently used closed first).
MAX_READ_FDS: Final = 8
# errnos of an open() that found no free file descriptor (process or system limit).
FD_EXHAUSTED: Final = frozenset({errno.EMFILE, errno.ENFILE})


class Segment:
    __slots__ = (
        "number",
        "path",
        "fd",
        "live",
        "total",
        "size",
        "written_size",
        "synced_size",
        "new",
        "dedup_until",
        "dedup_offsets",
    )

    def __init__(self, number: int, path: Path) -> None:
        self.number = number
        self.path = path
        self.fd = -1
        self.live = 0
        self.total = 0  # messages ever written here (for the compaction ratio)
        self.size = 0
        self.written_size = 0
        self.synced_size = 0
        self.new = True  # directory entry not yet fsynced
        # DEDUP records here (offsets) and when the last of their entries expires
        # (epoch ms): the entries are copied forward before the segment is deleted.
        self.dedup_until = 0
        self.dedup_offsets: list[int] = []

    def __repr__(self) -> str:
        return f"<Segment {self.number} live={self.live} size={self.size}>"


def segment_path(directory: Path, number: int) -> Path:
    return directory / f"{number:016d}{SEGMENT_SUFFIX}"


def list_segments(directory: Path) -> list[tuple[int, Path]]:
    out = []
    for p in directory.glob(f"*{SEGMENT_SUFFIX}"):
        try:
            out.append((int(p.stem), p))
        except ValueError:
            continue
    out.sort()
    return out


class StoreFailed(Exception):
    pass


class MessageStore:
    def __init__(
        self,
        directory: Path,
        *,
        segment_bytes: int = SEGMENT_BYTES,
        fsync_interval_ms: int = 0,
        executor: Executor | None = None,
    ) -> None:
        """``executor`` must run one job at a time, in submission order (tests pass
        one they step by hand); the default is a one-thread pool."""
        self.directory = directory
        self.segment_bytes = segment_bytes
        self.fsync_interval_ms = fsync_interval_ms
        self.segments: list[Segment] = []
        self.active: Segment | None = None
        self._pending: list[tuple[Segment, bytes]] = []
        self._pending_bytes = 0
        self._acks: dict[int, list[int]] = {}
        self._watermarks: dict[int, int] = {}
        self._counts: dict[int, list[list[int]]] = {}
        # queue uid -> [message_id, accepted_ms, expires_ms] entries for a DEDUP record.
        self._dedups: dict[int, list[list[Any]]] = {}
        # An atomic commit in progress (begin_atomic): its id, its acks and DEDUP entries
        # (written tagged at end_atomic), whether it wrote anything, the last id used.
        self._txid = 0
        self._tx_acks: dict[int, list[int]] = {}
        self._tx_dedups: dict[int, list[list[Any]]] = {}
        self._tx_wrote = False
        self._tx_segs: dict[Segment, int] = {}
        self._last_txid = 0
        # (batch, callback): told once ``batch`` is durable (True) or failed (False).
        self._durable_waiters: list[tuple[int, Callable[[bool], None]]] = []
        self.batch = 1  # the batch now accumulating
        self.durable_batch = 0
        self.synced_batch = 0  # newest batch known to be fsynced (every mode)
        self._submitted_batch = 0  # newest batch handed to the worker
        self._sync_queued = False  # an interval fsync job is queued or running
        self._in_flight = False
        self._scheduled = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._executor = executor or ThreadPoolExecutor(
            max_workers=1, thread_name_prefix="wharf-store"
        )
        self.listeners: list[Callable[[int], None]] = []
        self.failed: str | None = None
        self.fsyncs = 0
        self.bytes_written = 0
        self._closed = False
        self._unsynced: set[Segment] = set()
        self._last_offset = 0
        self._unwritten: dict[tuple[int, int], bytes] = {}
        # (batch, segment, n): copies made by compaction; the old segment's live count
        # drops only once the batch holding the copies is on disk.
        self._moved: list[tuple[int, Segment, int]] = []
        self._unwritten_keys: list[tuple[int, int]] = []
        self._after_commit: list[Callable[[], None]] = []
        self.by_number: dict[int, Segment] = {}
        self._read_fds: OrderedDict[int, int] = OrderedDict()
        # Segments rolled away from whose write fd is still open (bytes not yet on disk).
        self._retiring: list[Segment] = []
        self._progress: list[asyncio.Future[None]] = []
        # The directory, open for the store's life (fsyncs after rolls need no new fd).
        self._dir_fd = -1
        self.fd_errors = 0  # rolls that found no free fd (EMFILE/ENFILE), for the alarm
        self._overfull: Segment | None = None  # appended to past its size (no fd to roll)

    # -- opening -------------------------------------------------------------------

    def open_for_append(self, recovered: list[Segment]) -> None:
        """Start appending after recovery: always into a fresh segment."""
        self._loop = asyncio.get_running_loop()
        if self.fsync_interval_ms:
            log.warning(
                "fsync_interval_ms=%d: persistent messages are confirmed BEFORE they are "
                "fsynced; a power loss can lose up to %d ms (plus one write and fsync) of "
                "confirmed messages",
                self.fsync_interval_ms,
                self.fsync_interval_ms,
            )
            self._loop.call_later(self.fsync_interval_ms / 1000.0, self._fsync_tick)
        self.segments = recovered
        self.by_number = {seg.number: seg for seg in recovered}
        number = recovered[-1].number + 1 if recovered else 1
        self._dir_fd = os.open(self.directory, os.O_RDONLY | os.O_CLOEXEC)
        self._roll(number)

    def ensure_room(self) -> None:
        """Before a persistent publish is routed: start a new segment now if the active
        one is full, so that appending the messages needs no fd.  Out of fds: a clear
        ResourceError (506) for that publish, and nothing changed."""
        seg = self.active
        if seg is None or seg.size < self.segment_bytes or self._txid:
            return
        try:
            self._roll(seg.number + 1)
        except OSError as exc:
            if exc.errno not in FD_EXHAUSTED:
                raise
            raise ResourceError(
                "message store: cannot start a new segment, the broker is out of file "
                f"descriptors ({exc.strerror}); the message was not stored, retry later and "
                "raise the broker's open-file limit (ulimit -n / LimitNOFILE)",
                details={"errno": exc.errno},
            ) from exc

    def _roll_or_stay(self, seg: Segment) -> Segment:
        """Roll away from the full ``seg``; with no fd free, stay in it (past
        ``segment_bytes``) and try again at the next append."""
        try:
            return self._roll(seg.number + 1)
        except OSError as exc:
            if exc.errno not in FD_EXHAUSTED:
                raise
            if self._overfull is not seg:  # once per segment, not per record
                self._overfull = seg
                log.warning(
                    "message store: cannot start a new segment, out of file descriptors "
                    "(%s); appending to segment %d past its size until one is free",
                    exc.strerror,
                    seg.number,
                )
            return seg

    def _roll(self, number: int) -> Segment:
        """A new active segment; when its file cannot be opened, nothing is changed."""
        seg = Segment(number, segment_path(self.directory, number))
        try:
            seg.fd = os.open(seg.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        except OSError as exc:
            if exc.errno in FD_EXHAUSTED:
                self.fd_errors += 1
            raise
        old = self.active
        if old is not None and old.fd >= 0:
            self._retiring.append(old)
        self.segments.append(seg)
        self.by_number[number] = seg
        self.active = seg
        return seg

    # -- appending (event loop) ----------------------------------------------------

    def _append(self, data: bytes) -> Segment:
        seg = self.active
        assert seg is not None
        if seg.size >= self.segment_bytes and not self._txid:
            # (An atomic commit's records stay in one segment: begin_atomic rolled.)
            seg = self._roll_or_stay(seg)
        self._pending.append((seg, data))
        self._last_offset = seg.size
        seg.size += len(data)
        self._pending_bytes += len(data)
        if not self._scheduled:
            self._schedule()
        return seg

    def append_messages(
        self,
        queue_uid: int,
        first_position: int,
        exchange: str,
        routing_key: str,
        properties: dict[str, Any] | None,
        bodies: list[bytes] | tuple[bytes, ...],
        delivery_count: int = 0,
        durable: bool = True,
        expires_at: int = 0,
    ) -> tuple[Segment, int]:
        """Append one MSGS record; returns its segment and byte offset.

        ``durable=False`` stores the bodies of a long queue's transient messages (paging):
        flagged so that recovery skips them, and settled without an ACK record.
        """
        txid = self._txid if durable else 0
        if txid:
            self._tx_wrote = True
        rec = encode_record(
            MSGS,
            (
                queue_uid,
                first_position,
                exchange,
                routing_key,
                properties,
                bodies,
                delivery_count,
                0 if durable else FLAG_TRANSIENT,
                expires_at,
                txid,
            ),
        )
        seg = self._append(rec)
        seg.live += len(bodies)
        seg.total += len(bodies)
        offset = self._last_offset
        # Readable (paging) before its commit writes it: served from memory until then.
        key = (seg.number, offset)
        self._unwritten[key] = rec
        self._unwritten_keys.append(key)
        return seg, offset

    def settle(self, queue_uid: int, position: int, seg: Segment, durable: bool = True) -> None:
        """A stored message was acked, dropped or purged."""
        if not durable:
            seg.live -= 1
            return
        if self._txid:
            # Inside an atomic commit the segment may go only once the commit is on
            # disk (else a crash could keep the ack's effect and drop the rest).
            self._tx_segs[seg] = self._tx_segs.get(seg, 0) + 1
            pending = self._tx_acks
        else:
            seg.live -= 1
            pending = self._acks
        acks = pending.get(queue_uid)
        if acks is None:
            acks = pending[queue_uid] = []
        acks.append(position)
        if not self._scheduled:
            self._schedule()

    def delivered(self, queue_uid: int, position: int) -> None:
        self._watermarks[queue_uid] = position
        if not self._scheduled:
            self._schedule()

    def delays(self, queue_uid: int, position: int, due_ms: int) -> None:
        """A persistent message waits for a delayed retry until ``due_ms`` (epoch ms)."""
        self._append(encode_record(DELAYS, (queue_uid, [[position, due_ms]])))
        if not self._scheduled:
            self._schedule()

    def delays_many(self, queue_uid: int, entries: list[list[int]]) -> None:
        """DELAYS record for several ``[position, due_ms]`` (compaction carries them)."""
        if entries:
            self._append(encode_record(DELAYS, (queue_uid, entries)))

    def dedup(self, queue_uid: int, message_id: str, accepted_ms: int, expires_ms: int) -> None:
        """A deduplicating queue accepted a persistent message: its id goes into a DEDUP
        record of the same group commit as the message (no fsync of its own)."""
        pending = self._tx_dedups if self._txid else self._dedups
        entries = pending.get(queue_uid)
        if entries is None:
            entries = pending[queue_uid] = []
        entries.append([message_id, accepted_ms, expires_ms])
        if not self._scheduled:
            self._schedule()

    def _append_dedup(self, queue_uid: int, entries: list[list[Any]], txid: int = 0) -> None:
        seg = self._append(encode_record(DEDUP, (queue_uid, entries, txid)))
        seg.dedup_offsets.append(self._last_offset)
        until = max(e[2] for e in entries)
        if until > seg.dedup_until:
            seg.dedup_until = until

    # -- atomic commits (core/transactions.py) -----------------------------------------

    def begin_atomic(self) -> None:
        """Until ``end_atomic``, persistent records (messages, acks, DEDUP entries) belong
        to one transaction: tagged with its id, all in one segment, in one group commit
        (so one write and one fsync), and applied by recovery only if the TXEND record
        that ``end_atomic`` appends is on disk: all of them or none."""
        assert not self._txid, "atomic commits do not nest"
        seg = self.active
        if seg is not None and seg.size >= self.segment_bytes:
            self._roll_or_stay(seg)
        self._last_txid += 1
        self._txid = self._last_txid
        self._tx_wrote = False

    def end_atomic(self, commit: bool = True) -> int:
        """Close the transaction: its acks and DEDUP entries, then TXEND (``commit``
        False: no TXEND, recovery drops what was written).  Returns the batch that makes
        it durable (0: it wrote nothing persistent)."""
        txid = self._txid
        acks, self._tx_acks = self._tx_acks, {}
        dedups, self._tx_dedups = self._tx_dedups, {}
        segs, self._tx_segs = self._tx_segs, {}
        for seg, n in segs.items():
            self._moved.append((self.batch, seg, n))
        if not (self._tx_wrote or acks or dedups):
            self._txid = 0
            return 0
        # Still inside the transaction: these records stay in its segment too.
        for uid, positions in acks.items():
            self._append(encode_record(ACKS, (uid, positions, txid)))
        for uid, entries in dedups.items():
            self._append_dedup(uid, entries, txid)
        if commit:
            self._append(encode_record(TXEND, (txid,)))
        self._txid = 0
        return self.batch

    def when_durable(self, batch: int, callback: Callable[[bool], None]) -> None:
        """``callback(True)`` once ``batch`` is durable (now, if it is), ``callback(False)``
        if the store fails first."""
        if batch <= self.durable_batch:
            callback(True)
        elif self.failed is not None:
            callback(False)
        else:
            self._durable_waiters.append((batch, callback))

    def _tell_durable(self, ok: bool) -> None:
        waiters = self._durable_waiters
        if not waiters:
            return
        durable = self.durable_batch
        still = []
        for batch, callback in waiters:
            if not ok or batch <= durable:
                callback(ok)
            else:
                still.append((batch, callback))
        self._durable_waiters = still

    @property
    def tail_batch(self) -> int:
        """The newest batch holding anything appended so far, if it is not durable yet
        (0: everything appended is durable).  A duplicate publish's confirm waits for it:
        the original's records are in that batch or an older one."""
        if self._pending or self._acks or self._watermarks or self._counts or self._dedups:
            return self.batch
        newest = self._submitted_batch
        return newest if newest > self.durable_batch else 0

    def requeued(self, queue_uid: int, position: int, delivery_count: int) -> None:
        counts = self._counts.get(queue_uid)
        if counts is None:
            counts = self._counts[queue_uid] = []
        counts.append([position, delivery_count])
        if not self._scheduled:
            self._schedule()

    # -- group commit --------------------------------------------------------------

    def _schedule(self) -> None:
        self._scheduled = True
        loop = self._loop
        if loop is None:
            loop = self._loop = asyncio.get_running_loop()
        loop.call_soon(self._commit)

    def _drain_side_records(self) -> None:
        if self._dedups:
            for uid, entries in self._dedups.items():
                self._append_dedup(uid, entries)
            self._dedups = {}
        if self._acks:
            for uid, positions in self._acks.items():
                self._append(encode_record(ACKS, (uid, positions)))
            self._acks = {}
        if self._counts:
            for uid, counts in self._counts.items():
                self._append(encode_record(COUNTS, (uid, counts)))
            self._counts = {}
        if self._watermarks:
            for uid, pos in self._watermarks.items():
                self._append(encode_record(DELIVERED, (uid, pos)))
            self._watermarks = {}

    def _commit(self) -> None:
        self._scheduled = False
        if self._in_flight or self._closed:
            return
        self._drain_side_records()
        if not self._pending:
            if self._after_commit:
                # Everything appended so far is committed already.
                callbacks, self._after_commit = self._after_commit, []
                for cb in callbacks:
                    cb()
            return
        # _drain_side_records may have scheduled again; this commit covers it.
        pending = self._pending
        self._pending = []
        self._pending_bytes = 0
        keys = self._unwritten_keys
        self._unwritten_keys = []
        batch = self.batch
        self.batch += 1
        self._submitted_batch = batch
        self._in_flight = True
        assert self._loop is not None
        fut = self._loop.run_in_executor(self._executor, self._write_batch, pending)
        fut.add_done_callback(lambda f: self._committed(batch, keys, f))

    def _write_batch(self, pending: list[tuple[Segment, bytes]]) -> None:
        """Worker thread: write each segment's bytes, fsync each touched file."""
        if self.failed is not None:
            raise StoreFailed(self.failed)
        touched: dict[int, Segment] = {}
        chunks: dict[int, list[bytes]] = {}
        for seg, data in pending:
            touched[seg.number] = seg
            chunks.setdefault(seg.number, []).append(data)
        for number, seg in touched.items():
            if seg.fd < 0:
                # The lifetime rules make this unreachable; never write to a stale fd.
                raise StoreFailed(f"segment {number} was closed with bytes still to write")
            data = b"".join(chunks[number])
            write_all(seg.fd, data, seg.path)  # fsio: also the tests' fault point
            self.bytes_written += len(data)
            seg.written_size += len(data)
            if self.fsync_interval_ms:
                # Unsafe mode: confirms go out after the write; fsync_later() syncs.
                self._unsynced.add(seg)
            else:
                self._sync(seg)

    def _sync(self, seg: Segment) -> None:
        """Worker thread: fsync one segment (and its directory entry when new)."""
        target = seg.written_size
        if target <= seg.synced_size and not seg.new:
            return
        if seg.fd < 0:
            raise StoreFailed(f"segment {seg.number} was closed before its bytes were fsynced")
        fsync(seg.fd, seg.path)
        self.fsyncs += 1
        if seg.new:
            if self._dir_fd >= 0:
                fsync(self._dir_fd, self.directory)  # no new fd (module docstring)
            else:
                fsync_dir(self.directory)
            seg.new = False
        record_synced(seg.path, target)
        # Last: from here on the event loop may close the fd (see the lifetime rules).
        seg.synced_size = target

    def _sync_unsynced(self) -> None:
        while self._unsynced:
            self._sync(self._unsynced.pop())

    def _fsync_tick(self) -> None:
        assert self._loop is not None
        if self._closed:
            return
        self._request_sync()
        self._loop.call_later(self.fsync_interval_ms / 1000.0, self._fsync_tick)

    def _request_sync(self) -> None:
        """Queue an fsync of every written segment behind whatever the worker is doing.

        The worker runs jobs in order, so the fsync covers every batch submitted so far,
        the one in flight included.  It is never skipped because a write is in flight.
        """
        if self.failed is not None or self._sync_queued or self._closed:
            return
        covers = self._submitted_batch
        if covers <= self.synced_batch:
            return
        assert self._loop is not None
        self._sync_queued = True
        fut = self._loop.run_in_executor(self._executor, self._sync_unsynced)
        fut.add_done_callback(lambda f: self._synced(covers, f))

    def _synced(self, covers: int, fut: Any) -> None:
        self._sync_queued = False
        if self._closed:
            return
        exc = fut.exception()
        if exc is not None:
            self._fail(f"fsync failed: {exc!r}")
        else:
            if covers > self.synced_batch:
                self.synced_batch = covers
            self._release_moved()
            self._collect_garbage()
        self._wake()

    def _fail(self, reason: str) -> None:
        if self.failed is None:
            self.failed = reason
            log.error(
                "message store: %s; the segment is abandoned and persistent publishing stops",
                reason,
            )

    def _wake(self) -> None:
        waiters, self._progress = self._progress, []
        for w in waiters:
            if not w.done():
                w.set_result(None)

    def _release_moved(self) -> None:
        """Old copies of compacted messages stop counting once the new copies are fsynced."""
        if self._moved:
            still = []
            synced = self.synced_batch
            for b, seg, n in self._moved:
                if b <= synced:
                    seg.live -= n
                else:
                    still.append((b, seg, n))
            self._moved = still

    def _committed(self, batch: int, keys: list[tuple[int, int]], fut: Any) -> None:
        self._in_flight = False
        if self._closed:
            return
        exc = fut.exception()
        if exc is not None:
            self._fail(f"write/fsync failed: {exc!r}")
            for listener in list(self.listeners):
                listener(-batch)
            self._tell_durable(False)
            self._wake()
            return
        self.durable_batch = batch
        if not self.fsync_interval_ms:
            self.synced_batch = batch
        unwritten = self._unwritten
        for key in keys:
            unwritten.pop(key, None)
        self._release_moved()
        for listener in list(self.listeners):
            listener(batch)
        self._tell_durable(True)
        if self._after_commit:
            callbacks, self._after_commit = self._after_commit, []
            for cb in callbacks:
                cb()
        self._collect_garbage()
        self._wake()
        if self._pending or self._acks or self._watermarks or self._counts or self._dedups:
            self._commit()

    def _collect_garbage(self) -> None:
        """Event loop, after a commit or an interval fsync: close and delete what the
        lifetime rules (module docstring) allow, and nothing else."""
        if self._retiring:
            still = []
            for seg in self._retiring:
                if seg.synced_size >= seg.size and seg is not self.active:
                    os.close(seg.fd)
                    seg.fd = -1
                else:
                    still.append(seg)
            self._retiring = still
        segs = self.segments
        while (
            len(segs) > 1
            and segs[0] is not self.active
            and segs[0].live <= 0
            and segs[0].synced_size >= segs[0].size
        ):
            if segs[0].dedup_offsets and self._carry_dedup(segs[0]):
                break  # deleted once the copies are fsynced (the `moved` rule)
            seg = segs.pop(0)
            self.by_number.pop(seg.number, None)
            rfd = self._read_fds.pop(seg.number, None)
            if rfd is not None:
                os.close(rfd)
            if seg.fd >= 0:
                os.close(seg.fd)
                seg.fd = -1
            try:
                os.unlink(seg.path)
            except FileNotFoundError:
                pass

    def _carry_dedup(self, seg: Segment) -> bool:
        """Copy the unexpired DEDUP entries of ``seg`` (about to be deleted) into the
        active segment; True if there were any: ``seg`` then stays until the copies are
        fsynced, exactly as for messages moved by compaction."""
        now_ms = int(time.time() * 1000)
        offsets = seg.dedup_offsets
        seg.dedup_offsets = []
        if seg.dedup_until <= now_ms or self.failed is not None:
            return False
        carried: dict[int, list[list[Any]]] = {}
        for offset in offsets:
            uid, entries = self.read_record(seg.number, offset)[:2]
            live = [e for e in entries if e[2] > now_ms]
            if live:
                carried.setdefault(uid, []).extend(live)
        if not carried:
            return False
        for uid, entries in carried.items():
            self._append_dedup(uid, entries)
        seg.live += 1
        self.moved(seg, 1)
        return True

    # -- compaction -------------------------------------------------------------------

    def compaction_candidate(self) -> Segment | None:
        """The oldest segment, if it is mostly settled and pins newer segments on disk."""
        segs = self.segments
        if len(segs) < COMPACT_MIN_SEGMENTS or self._moved or self.failed is not None:
            return None
        seg = segs[0]
        if seg is self.active or seg.live <= 0 or seg.total <= 0:
            return None
        if seg.live / seg.total >= COMPACT_LIVE_RATIO:
            return None
        return seg

    def moved(self, old: Segment, n: int) -> None:
        """``n`` messages of ``old`` were copied forward in the batch now accumulating."""
        if n:
            self._moved.append((self.batch, old, n))
            if not self._scheduled:
                self._schedule()

    # -- reading back (paging) ------------------------------------------------------

    def after_commit(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` once after the next commit completes."""
        self._after_commit.append(callback)
        if not self._scheduled and not self._in_flight:
            self._schedule()

    def readable(self, segment: int, offset: int) -> bool:
        """True once the record at ``offset`` has been written to the file."""
        if (segment, offset) in self._unwritten:
            return True
        seg = self.by_number.get(segment)
        return seg is not None and offset < seg.written_size

    def read_record(self, segment: int, offset: int) -> Any:
        """The payload of the record at ``offset`` (checksum verified)."""
        data = self._unwritten.get((segment, offset))
        if data is not None:
            return decode_record(data)
        fd = self._read_fd(segment)
        head = os.pread(fd, HEADER.size, offset)
        length = HEADER.unpack(head)[0]
        return decode_record(head + os.pread(fd, length, offset + HEADER.size))

    def _read_fd(self, segment: int) -> int:
        fds = self._read_fds
        fd = fds.get(segment)
        if fd is not None:
            fds.move_to_end(segment)
            return fd
        fd = fds[segment] = os.open(self.by_number[segment].path, os.O_RDONLY)
        if len(fds) > MAX_READ_FDS:
            os.close(fds.popitem(last=False)[1])
        return fd

    # -- introspection / shutdown ---------------------------------------------------

    @property
    def idle(self) -> bool:
        """Nothing appended waits to be written (copies may still wait for an fsync)."""
        return not (
            self._in_flight
            or self._pending
            or self._acks
            or self._watermarks
            or self._counts
            or self._dedups
        )

    def disk_bytes(self) -> int:
        return sum(s.size for s in self.segments)

    def open_fds(self) -> int:
        """File descriptors the store holds now (write fds, the directory's, cached read
        fds)."""
        active = self.active
        writing = sum(1 for s in self._retiring if s.fd >= 0)
        held = int(active is not None and active.fd >= 0) + int(self._dir_fd >= 0)
        return writing + held + len(self._read_fds)

    async def flush(self) -> None:
        """Commit everything appended so far, fsync it, and wait (shutdown, tests)."""
        loop = asyncio.get_running_loop()
        while self.failed is None:
            if not self._in_flight:
                self._commit()
            if not self._in_flight and (self._moved or self.synced_batch < self.durable_batch):
                self._request_sync()
            if not (self._in_flight or self._sync_queued):
                return
            waiter: asyncio.Future[None] = loop.create_future()
            self._progress.append(waiter)
            await waiter

    def close(self) -> None:
        self._closed = True
        # Let queued jobs finish first: no file is closed under the worker's feet.
        self._executor.shutdown(wait=True)
        if self.failed is None:
            try:
                self._sync_unsynced()
            except OSError as exc:
                log.error("message store: final fsync failed: %r", exc)
        for seg in self.segments:
            if seg.fd >= 0:
                os.close(seg.fd)
                seg.fd = -1
        self._retiring.clear()
        for rfd in self._read_fds.values():
            os.close(rfd)
        self._read_fds.clear()
        if self._dir_fd >= 0:
            os.close(self._dir_fd)
            self._dir_fd = -1

    def adopt(self, segments: Iterable[Segment]) -> None:
        """Recovered segments, readable before ``open_for_append``."""
        self.segments = list(segments)
        self.by_number = {seg.number: seg for seg in self.segments}
