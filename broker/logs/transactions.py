"""The transaction coordinator of log topics (docs/logs.md, "Transactions"; Kafka's KIP-98).

One coordinator per vhost owns every transactional producer's state:
``transactional_id -> Txn`` (producer id and epoch, state, partitions and consumer
group offsets of the open transaction, start time, timeout).  States::

    Empty --produce/send_offsets--> Ongoing --END_TXN--> PrepareCommit | PrepareAbort
    PrepareCommit --markers written--> CompleteCommit   (PrepareAbort -> CompleteAbort)
    Complete* --produce/send_offsets--> Ongoing (the next transaction)

Durability: every change is a record of the transaction log (``TxnLog`` below), fsynced
before anything depending on it is written elsewhere:

- a partition joins a transaction (its first transactional produce there) with an
  Ongoing record that is not waited for: a crash before PrepareX aborts the batches
  anyway (``_abort_dangling``: every open transaction the log does not show prepared),
  and PrepareX lists every partition.  Only a partition's first transactional batch
  ever waits, for its has-transactions flag (so recovery scans it);
- END_TXN(commit): the touched partitions (the data) and PrepareCommit (with the
  pending group offsets and ``Txn.ends``, each partition's log end) are fsynced at the
  same time; recovery commits only if every partition still reaches its end (else the
  answer was never sent: it aborts), and marks only an open transaction starting below
  it (later batches are the next transaction's).  Then the offsets are written to the
  offsets log (fsynced: visible before the records are) and the queue acks applied, a
  COMMIT marker is appended to each partition, and END_TXN is answered (Kafka's order:
  the outcome is decided once PrepareCommit is durable).  Then the markers are fsynced
  and CompleteCommit written, unless a record of the id's next transaction came first.
  Until the markers are durable, every record of the id carries ``Txn.prev`` (the
  outcome and each marker's partition and offset), so the next transaction need not
  wait for them: recovery writes again a marker that a power loss cut.  Abort: the same
  with ABORT markers, no offsets, the acks requeued first.

Recovery (``recover``, at start, before clients): the markers of ``prev`` missing from
their partitions (the log ends at or before their offset) are written again;
PrepareCommit is completed (COMMIT markers, offsets), Ongoing and PrepareAbort are
aborted.  Markers are idempotent: a partition where the producer has no open
transaction gets none.  A partition left with an open transaction of a producer the
coordinator does not know as Ongoing (its Ongoing record not written, or lost) gets an
ABORT marker too, so its last stable offset cannot stay stuck.

Fencing: INIT_TRANSACTIONS with a known transactional id bumps the epoch (a new
producer id once the epoch would pass 32767) and aborts the previous epoch's open
transaction; requests with an older epoch get ProducerFenced (413).

Timeouts: ``tick`` (about once a second) aborts transactions open longer than their
timeout; the producer's next produce, send_offsets or commit gets TransactionAborted
(417) until it calls END_TXN(abort), which then succeeds.

Transaction log file ``<vhost>/logs-internal/transactions/transactions.log``: record
batches (protocol/records.py), one record per change, key = the transactional id
(UTF-8), value = msgpack ``[producer_id, epoch, timeout_ms, state, [[topic,
partition], ...], {group: [[topic, partition, offset, metadata], ...]}, start_ms,
update_ms]``.  Read fully at start, once it and its directory are fsynced (a kill -9
leaves written but unfsynced records in the page cache), the last record of a key wins;
a torn tail is cut.
Group commit: one write+fsync job at a time in a worker thread.  Compaction: when the
file is above ``COMPACT_MIN_BYTES`` and twice the size of its live records, the next
job rewrites the live records to ``transactions.log.tmp`` (fsync, rename, fsync dir).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, Protocol

import msgpack

from wharf.protocol.errors import (
    InternalError,
    InvalidArgument,
    InvalidTxnState,
    NotFound,
    ProducerFenced,
    TransactionAborted,
    WharfError,
)
from wharf.protocol.records import build_batch, check_batch, decode_records, read_header

from ..store.fsio import FAULTS, fsync, fsync_dir, record_synced, write_all
from .offsets import Change
from .partition import Partition

if TYPE_CHECKING:
    from .groups import GroupCoordinator
    from .topics import TopicRegistry

log = logging.getLogger("wharf.transactions")

LOG_NAME: Final = "transactions.log"
COMPACT_MIN_BYTES: Final = 1024 * 1024
COMPACT_RATIO: Final = 2
MAX_TRANSACTIONAL_ID_CHARS: Final = 249
MAX_EPOCH: Final = 2**15 - 1
# Per transaction: partitions and group offsets it may touch (bounded memory per id).
MAX_TXN_PARTITIONS: Final = 10_000
COORDINATOR_EPOCH: Final = 0  # one coordinator per vhost, never moved

EMPTY: Final = "Empty"
ONGOING: Final = "Ongoing"
PREPARE_COMMIT: Final = "PrepareCommit"
PREPARE_ABORT: Final = "PrepareAbort"
COMPLETE_COMMIT: Final = "CompleteCommit"
COMPLETE_ABORT: Final = "CompleteAbort"
STATES: Final = (EMPTY, ONGOING, PREPARE_COMMIT, PREPARE_ABORT, COMPLETE_COMMIT, COMPLETE_ABORT)

TopicPartition = tuple[str, int]
# group -> {(topic, partition): (offset, metadata)}
PendingOffsets = dict[str, dict[TopicPartition, tuple[int, str | None]]]
# queue uid -> positions of the stored messages a transaction acks (issue 15 part 3)
PendingAcks = dict[int, list[int]]


class HeldSettlements(Protocol):
    """Queue deliveries acked inside a transaction, held by the core
    (core/transactions.py, ``TransactionAcks``) until the transaction ends."""

    def stored(self) -> PendingAcks:
        """Queue uid -> positions of the persistent messages among them."""
        ...

    def commit(self) -> asyncio.Future[None]:
        """Apply the acks; done once their store records are fsynced."""
        ...

    def abort(self) -> None:
        """Requeue the messages (redelivered)."""
        ...


def _now_ms() -> int:
    return int(time.time() * 1000)


class Txn:
    """The state of one transactional id."""

    __slots__ = (
        "tid",
        "producer_id",
        "epoch",
        "timeout_ms",
        "state",
        "partitions",
        "offsets",
        "start_ms",
        "update_ms",
        "timed_out",
        "durable",
        "adding",
        "completing",
        "marking",
        "prev",
        "writes",
        "ends",
        "lock",
        "settlements",
        "acks",
        "number",
    )

    def __init__(self, tid: str, producer_id: int, epoch: int, timeout_ms: int) -> None:
        self.tid = tid
        self.producer_id = producer_id
        self.epoch = epoch
        self.timeout_ms = timeout_ms
        self.state = EMPTY
        self.partitions: set[TopicPartition] = set()
        self.offsets: PendingOffsets = {}
        self.start_ms = -1
        self.update_ms = _now_ms()
        # Aborted by the coordinator (timeout): the producer is told once, at its next
        # request, and must abort (END_TXN abort) before a new transaction.
        self.timed_out = False
        # Partitions whose Ongoing record is fsynced; ``adding``: those being written.
        self.durable: set[TopicPartition] = set()
        self.adding: dict[TopicPartition, asyncio.Future[None]] = {}
        # The END_TXN (or abort) deciding, if any: done when the state is Complete* in
        # memory (PrepareX durable, offsets and acks applied, markers appended): the answer.
        self.completing: asyncio.Future[None] | None = None
        # The markers of the last ended transaction being fsynced after the answer, if
        # any.  Until they are, every record of this id carries ``prev``: [commit,
        # producer id, epoch, [[topic, partition, marker offset], ...]], so that recovery
        # writes again the markers a power loss took (the next transaction's records
        # need not wait for the fsync).
        self.marking: asyncio.Future[None] | None = None
        self.prev: list[Any] | None = None
        self.writes = 0  # records queued for this id (CompleteX is skipped if superseded)
        # PrepareX: each partition's log end when the outcome was decided.  The
        # transaction's batches lie below it, the next one's at or above (recovery).
        self.ends: dict[TopicPartition, int] = {}
        self.lock = asyncio.Lock()  # INIT_TRANSACTIONS of one id, one at a time
        # Queue acks of the open transaction: what applies or requeues them (in memory)
        # and the stored messages they ack (in the log, for recovery of PrepareCommit).
        self.settlements: list[HeldSettlements] = []
        self.acks: PendingAcks = {}
        # Counts the transactions begun under this id (in memory only): with the
        # producer id and epoch, it names one transaction, so that a callback
        # registered for one never changes the next (``before_produce``).
        self.number = 0

    def current(self) -> tuple[int, int, int]:
        """The transaction open now (or the last one): producer id, epoch, number."""
        return (self.producer_id, self.epoch, self.number)

    def value(self) -> bytes:
        packed: bytes = msgpack.packb(
            [
                self.producer_id,
                self.epoch,
                self.timeout_ms,
                self.state,
                [list(tp) for tp in sorted(self.partitions)],
                {
                    g: [[t, p, o, m] for (t, p), (o, m) in sorted(tps.items())]
                    for g, tps in self.offsets.items()
                },
                self.start_ms,
                self.update_ms,
                {uid: sorted(positions) for uid, positions in self.acks.items()},
                self.prev,
                [[t, p, e] for (t, p), e in sorted(self.ends.items())],
            ],
            use_bin_type=True,
        )
        return packed

    def describe(self, now_ms: int | None = None) -> dict[str, Any]:
        now = _now_ms() if now_ms is None else now_ms
        return {
            "transactional_id": self.tid,
            "producer_id": self.producer_id,
            "producer_epoch": self.epoch,
            "state": self.state,
            "timeout_ms": self.timeout_ms,
            "partitions": [list(tp) for tp in sorted(self.partitions)],
            "groups": sorted(self.offsets),
            "queue_acks": sum(len(s) for s in self.acks.values()) if self.acks else 0,
            "start_ms": self.start_ms,
            "age_ms": now - self.start_ms if self.state == ONGOING else 0,
        }


def _decode_value(tid: str, value: bytes) -> Txn:
    fields = msgpack.unpackb(value, raw=False, strict_map_key=False)
    pid, epoch, timeout_ms, state, parts, offsets, start_ms, update_ms = fields[:8]
    if state not in STATES:
        raise ValueError(f"unknown transaction state {state!r}")
    txn = Txn(tid, int(pid), int(epoch), int(timeout_ms))
    txn.state = state
    txn.partitions = {(str(t), int(p)) for t, p in parts}
    txn.durable = set(txn.partitions)
    txn.offsets = {
        str(g): {(str(t), int(p)): (int(o), m) for t, p, o, m in entries}
        for g, entries in offsets.items()
    }
    txn.start_ms = int(start_ms)
    txn.update_ms = int(update_ms)
    if len(fields) > 8:  # queue acks (records written before them have none)
        txn.acks = {int(uid): [int(p) for p in ps] for uid, ps in fields[8].items()}
    if len(fields) > 9 and fields[9] is not None:  # markers maybe not durable (``prev``)
        commit, pid, epoch, marks = fields[9]
        txn.prev = [
            bool(commit),
            int(pid),
            int(epoch),
            [[str(t), int(p), int(o)] for t, p, o in marks],
        ]
    if len(fields) > 10:
        txn.ends = {(str(t), int(p)): int(e) for t, p, e in fields[10]}
    return txn


# -- the transaction log ----------------------------------------------------------------


class TxnLog:
    """Owns ``transactions.log``: appends records group-committed, compacts itself."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.path = directory / LOG_NAME
        self.file_bytes = 0
        self.live: dict[str, int] = {}  # transactional id -> bytes of its last record
        self._next_offset = 0
        self._fd = -1
        self._failed = False
        self._pending: list[tuple[str, bytes]] = []
        self._futures: list[asyncio.Future[None]] = []
        self._job: asyncio.Future[Any] | None = None
        self._closed = False
        self.fsyncs = 0
        directory.mkdir(parents=True, exist_ok=True)

    def load(self) -> dict[str, bytes]:
        """Read the file: the last value of every transactional id."""
        tmp = self.path.with_name(LOG_NAME + ".tmp")
        if tmp.exists():
            tmp.unlink()  # an interrupted compaction: the old file is still whole
        self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o644)
        # Durable before recovery acts on it: after a kill -9 the file may end in
        # records written but never fsynced (in the page cache), such as a PrepareCommit
        # that recovery would complete; a power loss later must not take it back.
        fsync(self._fd, self.path)
        fsync_dir(self.directory)
        data = self.path.read_bytes()
        values: dict[str, bytes] = {}
        pos = 0
        while pos < len(data):
            problem = check_batch(data, pos)
            if problem is not None:
                side = self.path.with_name(f"{LOG_NAME}.torn-{_now_ms()}")
                side.write_bytes(data[pos:])
                os.ftruncate(self._fd, pos)
                fsync(self._fd, self.path)
                record_synced(self.path, pos)
                log.warning(
                    "transaction log %s: cut %d bytes at byte %d (%s); kept them in %s",
                    self.path,
                    len(data) - pos,
                    pos,
                    problem,
                    side.name,
                )
                break
            h = read_header(data, pos)
            try:
                for rec in decode_records(memoryview(data)[pos : pos + h.size]):
                    if rec[2] is not None and rec[3] is not None:
                        tid = rec[2].decode()
                        values[tid] = rec[3]
                        self.live[tid] = len(rec[2]) + len(rec[3])
            except Exception as exc:  # CRC-valid but undecodable: keep going
                log.warning("transaction log: skipping a batch at byte %d: %s", pos, exc)
            self._next_offset = h.next_offset
            pos += h.size
        self.file_bytes = pos
        if pos == len(data):  # (a cut tail reported its own length)
            record_synced(self.path, pos)
        return values

    def write_now(self, records: list[tuple[str, bytes]]) -> None:
        """Append and fsync on the calling thread (start-up recovery only)."""
        if records:
            data = self._encode(records, self._next_offset)
            _append_and_fsync(self._fd, data, self.path)
            self._next_offset += len(records)
            self.file_bytes += len(data)
            for tid, value in records:
                self.live[tid] = len(tid) + len(value)

    def write(self, tid: str, value: bytes) -> asyncio.Future[None]:
        """Queue one record; done once it is fsynced."""
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[None] = loop.create_future()
        if self._closed:
            fut.set_exception(InternalError("the transaction log is closed"))
            return fut
        self._pending.append((tid, value))
        self._futures.append(fut)
        if self._job is None:
            self._start_job(loop)
        return fut

    @staticmethod
    def _encode(records: list[tuple[str, bytes]], base_offset: int) -> bytes:
        now = _now_ms()
        rows = [[i, now, tid.encode(), value, None] for i, (tid, value) in enumerate(records)]
        return build_batch(
            base_offset,
            msgpack.packb(rows, use_bin_type=True),
            record_count=len(rows),
            last_offset_delta=len(rows) - 1,
            attributes=0,
            first_timestamp=now,
            max_timestamp=now,
        )

    def _start_job(self, loop: asyncio.AbstractEventLoop) -> None:
        records, self._pending = self._pending, []
        futures, self._futures = self._futures, []
        live_bytes = sum(self.live.values())
        rewrite = self._failed or (
            self.file_bytes > COMPACT_MIN_BYTES and self.file_bytes > COMPACT_RATIO * live_bytes
        )
        if rewrite:
            job: asyncio.Future[Any] = loop.run_in_executor(None, self._rewrite, records)
        else:
            data = self._encode(records, self._next_offset)
            self._next_offset += len(records)
            job = loop.run_in_executor(None, self._append, data)
        self._job = job

        def done(task: asyncio.Future[Any]) -> None:
            self._job = None
            exc = task.exception()
            if exc is None:
                if rewrite:
                    fd, size, count = task.result()
                    old, self._fd = self._fd, fd
                    self._next_offset = count
                    self.file_bytes = size
                    self._failed = False
                    try:
                        os.close(old)
                    except OSError:
                        pass
                else:
                    self.file_bytes += len(data)
                self.fsyncs += 1
                for tid, value in records:
                    self.live[tid] = len(tid) + len(value)
                for f in futures:
                    if not f.done():
                        f.set_result(None)
            else:
                self._failed = True
                log.error("transaction log %s: write failed: %s", self.path, exc)
                for f in futures:
                    if not f.done():
                        f.set_exception(
                            InternalError(
                                "writing the transaction log failed; the broker logged it"
                            )
                        )
            if self._futures and not self._closed:
                self._start_job(loop)

        job.add_done_callback(done)

    def _append(self, data: bytes) -> None:
        _append_and_fsync(self._fd, data, self.path)

    def _rewrite(self, records: list[tuple[str, bytes]]) -> tuple[int, int, int]:
        """Worker thread: the live records (read back from the file) plus ``records``
        as the new file."""
        values: dict[str, bytes] = {}
        data = self.path.read_bytes()
        pos = 0
        while pos < len(data) and check_batch(data, pos) is None:
            h = read_header(data, pos)
            for rec in decode_records(memoryview(data)[pos : pos + h.size]):
                if rec[2] is not None and rec[3] is not None:
                    values[rec[2].decode()] = rec[3]
            pos += h.size
        values.update(records)
        items = list(values.items())
        out = self._encode(items, 0) if items else b""
        tmp = self.path.with_name(LOG_NAME + ".tmp")
        fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND, 0o644)
        try:
            write_all(fd, out, tmp)
            fsync(fd, tmp)
            record_synced(tmp, len(out))
            os.rename(tmp, self.path)
            fsync_dir(self.directory)
        except BaseException:
            os.close(fd)
            raise
        record_synced(self.path, len(out))
        log.info("transaction log compacted to %d bytes", len(out))
        return fd, len(out), len(items)

    async def close(self) -> None:
        while self._job is not None:
            await asyncio.wait({self._job})
            await asyncio.sleep(0)
        self._closed = True
        for f in self._futures:
            if not f.done():
                f.set_exception(InternalError("the transaction log is closed"))
        self._futures = []
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


def _append_and_fsync(fd: int, data: bytes, path: Path) -> None:
    write_all(fd, data, path)
    fsync(fd, path)
    if FAULTS.sync_log:
        record_synced(path, os.fstat(fd).st_size)


def _all_of(*futures: asyncio.Future[None] | None) -> asyncio.Future[None]:
    """Done when every one of ``futures`` (None: none) is; failed with the first error."""
    waiting = [f for f in futures if f is not None]
    if len(waiting) == 1:
        return waiting[0]
    out: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    left = len(waiting)

    def one_done(f: asyncio.Future[None]) -> None:
        nonlocal left
        left -= 1
        exc = f.exception() if not f.cancelled() else InternalError("cancelled")
        if out.done():
            return
        if exc is not None:
            out.set_exception(exc)
        elif left == 0:
            out.set_result(None)

    for f in waiting:
        f.add_done_callback(one_done)
    return out


async def _halt_point(step: str) -> None:
    """The durability tests' crash point (fsio.FAULTS.halt_at): never returns there."""
    if FAULTS.halt_at == step:
        log.warning("halting at %s (WHARF_TEST_HALT_AT)", step)
        await asyncio.get_running_loop().create_future()


# -- the coordinator --------------------------------------------------------------------


def admit_produce(
    coordinator: TransactionCoordinator | None,
    producer_id: int,
    producer_epoch: int,
    topic: str,
    partition: int,
    acks: str,
    transactional: bool,
) -> asyncio.Future[None] | None:
    """The transaction rules of one produced batch, the same for every way in: raises
    when the batch is refused; None when it may be appended now; else a future done once
    its partition is durably part of the producer's transaction (then ask again: the
    transaction may have ended meanwhile).

    A transactional batch needs the producer's id and epoch, a running coordinator (the
    broker started), an answer (acks "written" or "fsynced": the client must learn
    whether it is in the transaction) and a partition number (a transaction names its
    partitions before it writes to them). A producer that is transactional sends all
    its batches in transactions. Plain batches of other producers pass."""
    if transactional:
        if producer_id < 0:
            raise InvalidArgument("a transactional produce needs its producer id and epoch")
        if coordinator is None:
            raise InvalidArgument("transactions are not available before the broker started")
        if acks == "none" or partition < 0:
            raise InvalidArgument(
                "a transactional produce needs acks 'written' or 'fsynced' and a partition number"
            )
        return coordinator.before_produce(producer_id, producer_epoch, topic, partition)
    if producer_id >= 0 and coordinator is not None:
        coordinator.check_plain_produce(producer_id)
    return None


class TransactionCoordinator:
    """Transactional producers of one vhost's log topics."""

    def __init__(
        self,
        topics: TopicRegistry,
        groups: GroupCoordinator,
        directory: Path,
        *,
        default_timeout_ms: int,
        max_timeout_ms: int,
    ) -> None:
        self.topics = topics
        self.groups = groups
        self.default_timeout_ms = default_timeout_ms
        self.max_timeout_ms = max_timeout_ms
        self.log = TxnLog(directory)
        self.txns: dict[str, Txn] = {}
        self.by_pid: dict[int, Txn] = {}
        self.commits = 0
        self.aborts = 0
        self.timeouts = 0
        self._tasks: set[asyncio.Future[Any]] = set()
        # Acks of transactions recovered in PrepareCommit, for the message store's
        # recovery to apply (``recovered_acks_applied``); their CompleteCommit waits.
        self.recovered_acks: dict[int, set[int]] = {}
        self._awaiting_acks: list[str] = []
        self._recover()

    # -- recovery --------------------------------------------------------------------

    def _recover(self) -> None:
        values = self.log.load()
        fixes: list[tuple[str, bytes]] = []
        for tid, value in values.items():
            try:
                txn = _decode_value(tid, value)
            except (ValueError, TypeError, KeyError) as exc:
                log.warning("transaction log: ignoring a bad record of %r: %s", tid, exc)
                continue
            self.txns[tid] = txn
            self.by_pid[txn.producer_id] = txn
            if txn.prev is not None:
                # The last transaction was answered; its markers may not be durable.
                self._rewrite_lost_markers(txn.prev)
                txn.prev = None
                fixes.append((tid, txn.value()))
            if txn.state in (ONGOING, PREPARE_ABORT, PREPARE_COMMIT):
                commit = txn.state == PREPARE_COMMIT
                if commit and self._data_lost(txn):
                    log.warning(
                        "transactional id %r: PrepareCommit was fsynced but not all of the "
                        "transaction's records (power lost before its commit was answered): "
                        "aborting it",
                        tid,
                    )
                    commit = False
                self._write_markers_now(txn, commit)
                if commit:
                    self.groups.offsets.commit_now(self._offset_changes(txn))
                if commit and txn.acks:
                    for uid, positions in txn.acks.items():
                        self.recovered_acks.setdefault(uid, set()).update(positions)
                    self._awaiting_acks.append(tid)
                log.warning(
                    "transactional id %r: %s a transaction left %s by the last run",
                    tid,
                    "committed" if commit else "aborted",
                    txn.state,
                )
                self._completed(txn, commit)
                if tid not in self._awaiting_acks:
                    fixes.append((tid, txn.value()))
                elif fixes and fixes[-1][0] == tid:
                    fixes.pop()  # its CompleteCommit waits for the acks (``prev`` is done)
        self._abort_dangling()
        self.log.write_now(fixes)
        if self.txns:
            log.info("transactions: %d transactional ids recovered", len(self.txns))

    def recovered_acks_applied(self) -> asyncio.Future[None]:
        """The message store applied ``recovered_acks`` and fsynced them: the
        transactions that held them are CompleteCommit in the log too."""
        tids, self._awaiting_acks = self._awaiting_acks, []
        self.recovered_acks = {}
        return self._track(_all_of(*(self._persist(self.txns[t]) for t in tids if t in self.txns)))

    def _rewrite_lost_markers(self, prev: list[Any]) -> None:
        """The markers of an answered transaction (``Txn.prev``) that a power loss cut:
        a partition whose log ends at or before its marker's offset lost it (and
        everything after it), so the producer's open transaction there is that one."""
        commit, pid, epoch, marks = prev
        for topic, number, at in marks:
            t = self.topics.topics.get(topic)
            if t is None or number >= len(t.partitions):
                continue
            part = t.partitions[number]
            if part.latest > at:
                continue  # the marker is there
            if part.append_marker(pid, epoch, commit, COORDINATOR_EPOCH) is not None:
                log.warning(
                    "topic %s partition %d: writing again the %s marker of producer %d "
                    "that the last run lost",
                    topic,
                    number,
                    "COMMIT" if commit else "ABORT",
                    pid,
                )
                part.sync_now()

    def _data_lost(self, txn: Txn) -> bool:
        """A partition of a PrepareX record ends below the log end it had then."""
        return any(
            part.latest < txn.ends.get((part.topic, part.number), -1)
            for part in self._partitions_of(txn)
        )

    def _write_markers_now(self, txn: Txn, commit: bool) -> None:
        for part in self._partitions_of(txn):
            end = txn.ends.get((part.topic, part.number))
            first = part.producers.open_txns.get(txn.producer_id)
            if end is not None and first is not None and first >= end:
                continue  # the next transaction's batches: ``_abort_dangling`` aborts them
            if (
                part.append_marker(txn.producer_id, txn.epoch, commit, COORDINATOR_EPOCH)
                is not None
            ):
                part.sync_now()

    def _abort_dangling(self) -> None:
        for topic in list(self.topics.topics.values()):
            for part in topic.partitions:
                for pid in list(part.producers.open_txns):
                    txn = self.by_pid.get(pid)
                    if txn is not None and txn.state == ONGOING:
                        continue
                    log.warning(
                        "topic %s partition %d: aborting an open transaction of producer %d "
                        "that the transaction log does not know",
                        topic.name,
                        part.number,
                        pid,
                    )
                    entry = part.producers.producers.get(pid)
                    epoch = entry.epoch if entry is not None else 0
                    part.append_marker(pid, epoch, False, COORDINATOR_EPOCH)
                    part.sync_now()

    # -- helpers ----------------------------------------------------------------------

    def _partitions_of(self, txn: Txn) -> list[Partition]:
        out = []
        for topic, number in sorted(txn.partitions):
            t = self.topics.topics.get(topic)
            if t is not None and number < len(t.partitions):
                out.append(t.partitions[number])
        return out

    @staticmethod
    def _offset_changes(txn: Txn) -> list[Change]:
        now = _now_ms()
        return [
            ((g, t, p), (off, meta, now))
            for g, tps in sorted(txn.offsets.items())
            for (t, p), (off, meta) in sorted(tps.items())
        ]

    def _completed(self, txn: Txn, commit: bool) -> None:
        txn.state = COMPLETE_COMMIT if commit else COMPLETE_ABORT
        txn.ends = {}
        txn.partitions = set()
        txn.durable = set()
        txn.offsets = {}
        txn.settlements = []
        txn.acks = {}
        txn.update_ms = _now_ms()
        if commit:
            self.commits += 1
        else:
            self.aborts += 1

    def _txn(self, tid: str, producer_id: int, epoch: int) -> Txn:
        """The transaction of a request from (``producer_id``, ``epoch``), checked."""
        txn = self.txns.get(tid)
        if txn is None:
            raise InvalidTxnState(
                f"transactional id {tid!r} is not registered: call INIT_TRANSACTIONS first",
                details={"transactional_id": tid},
            )
        self._check_epoch(txn, producer_id, epoch)
        return txn

    @staticmethod
    def _check_epoch(txn: Txn, producer_id: int, epoch: int) -> None:
        if producer_id != txn.producer_id or epoch < txn.epoch:
            raise ProducerFenced(
                f"transactional id {txn.tid!r}: producer {producer_id} epoch {epoch} was "
                f"fenced by a newer producer (now producer {txn.producer_id} epoch "
                f"{txn.epoch}); close this producer",
                details={"producer_id": txn.producer_id, "epoch": txn.epoch},
            )
        if epoch > txn.epoch:
            raise InvalidTxnState(
                f"transactional id {txn.tid!r}: epoch {epoch} was never handed out "
                f"(current {txn.epoch})",
                details={"epoch": txn.epoch},
            )

    @staticmethod
    def _check_open_for_work(txn: Txn) -> None:
        if txn.timed_out:
            raise TransactionAborted(
                f"transactional id {txn.tid!r}: the transaction was open longer than "
                f"{txn.timeout_ms} ms and the coordinator aborted it; abort and begin again",
                details={"timeout_ms": txn.timeout_ms},
            )
        if txn.state in (PREPARE_COMMIT, PREPARE_ABORT):
            raise InvalidTxnState(
                f"transactional id {txn.tid!r}: the transaction is being "
                f"{'committed' if txn.state == PREPARE_COMMIT else 'aborted'}; wait for it",
                details={"state": txn.state},
            )

    def _begin_if_needed(self, txn: Txn) -> None:
        if txn.state != ONGOING:
            txn.state = ONGOING
            txn.number += 1
            txn.ends = {}
            txn.partitions = set()
            txn.durable = set()
            # A partition of an earlier transaction whose flag is still being written
            # is not this one's: its callback checks the transaction (before_produce).
            txn.adding = {}
            txn.offsets = {}
            txn.settlements = []
            txn.acks = {}
            txn.start_ms = _now_ms()

    def _persist(self, txn: Txn) -> asyncio.Future[None]:
        """Write the state of ``txn``; done once fsynced."""
        txn.update_ms = _now_ms()
        txn.writes += 1
        return self.log.write(txn.tid, txn.value())

    def _track(self, fut: asyncio.Future[Any]) -> asyncio.Future[Any]:
        self._tasks.add(fut)
        fut.add_done_callback(self._done)
        return fut

    def _done(self, fut: asyncio.Future[Any]) -> None:
        self._tasks.discard(fut)
        if not fut.cancelled():
            fut.exception()  # logged where it happened; requests get it from the future

    # -- requests ---------------------------------------------------------------------

    def init(self, tid: str, timeout_ms: int) -> asyncio.Future[dict[str, Any]]:
        """INIT_TRANSACTIONS: (producer id, bumped epoch); aborts the previous epoch's
        open transaction first."""
        if not tid or len(tid) > MAX_TRANSACTIONAL_ID_CHARS:
            raise InvalidArgument(
                f"transactional_id must be 1..{MAX_TRANSACTIONAL_ID_CHARS} characters"
            )
        if timeout_ms == -1:
            timeout_ms = self.default_timeout_ms
        if timeout_ms <= 0:
            raise InvalidArgument(f"timeout_ms must be > 0 (or -1: the default), got {timeout_ms}")
        timeout_ms = min(timeout_ms, self.max_timeout_ms)
        return self._track(asyncio.ensure_future(self._init(tid, timeout_ms)))

    async def _init(self, tid: str, timeout_ms: int) -> dict[str, Any]:
        txn = self.txns.get(tid)
        if txn is None:
            txn = Txn(tid, self.topics.producer_ids.allocate(), 0, timeout_ms)
            self.txns[tid] = txn
            self.by_pid[txn.producer_id] = txn
        else:
            async with txn.lock:
                if txn.completing is not None:
                    with contextlib.suppress(Exception):
                        await asyncio.shield(txn.completing)
                # Fence first: from here on the old epoch's requests get 413.
                old_epoch = txn.epoch
                if txn.epoch >= MAX_EPOCH:
                    del self.by_pid[txn.producer_id]
                    txn.producer_id = self.topics.producer_ids.allocate()
                    txn.epoch = 0
                    self.by_pid[txn.producer_id] = txn
                else:
                    txn.epoch += 1
                if txn.state in (ONGOING, PREPARE_ABORT, PREPARE_COMMIT):
                    commit = txn.state == PREPARE_COMMIT
                    log.info(
                        "transactional id %r: a new producer (epoch %d) %s the transaction "
                        "of epoch %d",
                        tid,
                        txn.epoch,
                        "completes" if commit else "aborts",
                        old_epoch,
                    )
                    await self._start_end(txn, commit)
        txn.timeout_ms = timeout_ms
        txn.timed_out = False
        txn.state = EMPTY
        txn.partitions = set()
        txn.durable = set()
        txn.adding = {}  # the old epoch's (their callbacks check the epoch)
        txn.offsets = {}
        # Read now: a concurrent INIT_TRANSACTIONS may bump the epoch during the fsync.
        result = {
            "producer_id": txn.producer_id,
            "producer_epoch": txn.epoch,
            "timeout_ms": txn.timeout_ms,
        }
        await self._persist(txn)
        return result

    def check_plain_produce(self, producer_id: int) -> None:
        """A PRODUCE without the transactional flag: refused for a transactional producer."""
        txn = self.by_pid.get(producer_id)
        if txn is not None:
            raise InvalidTxnState(
                f"producer {producer_id} is the transactional producer {txn.tid!r}: its "
                "batches must be sent in a transaction (begin one first)",
                details={"transactional_id": txn.tid},
            )

    def before_produce(
        self, producer_id: int, epoch: int, topic: str, partition: int
    ) -> asyncio.Future[None] | None:
        """A transactional PRODUCE: None when it may be appended now; else a future done
        once the partition is durably part of the transaction (then call this again)."""
        txn = self.by_pid.get(producer_id)
        if txn is None:
            raise InvalidTxnState(
                f"producer {producer_id} is not a transactional producer: call "
                "INIT_TRANSACTIONS and send batches with its producer id and epoch"
            )
        self._check_epoch(txn, producer_id, epoch)
        self._check_open_for_work(txn)
        tp = (topic, partition)
        if txn.state == ONGOING and tp in txn.durable:
            return None
        pending = txn.adding.get(tp)
        if pending is not None:
            return pending
        part = self.topics.get(topic).partition(partition)  # 404 before it joins
        self._begin_if_needed(txn)
        if len(txn.partitions) >= MAX_TXN_PARTITIONS:
            raise InvalidArgument(
                f"a transaction may touch at most {MAX_TXN_PARTITIONS} partitions"
            )
        txn.partitions.add(tp)
        # The Ongoing record naming the partition is not waited for: a crash before
        # PrepareX aborts the transaction's batches anyway (``_abort_dangling``), and
        # PrepareX lists every partition.  Only the partition's has-transactions flag
        # must be durable first (once per partition), so recovery scans it for markers.
        self._track(self._persist(txn))
        marking = part.mark_transactional()
        if marking is None:
            txn.durable.add(tp)
            return None
        fut = marking
        txn.adding[tp] = fut
        # The flag's write may outlast this transaction (aborted on a timeout, by an
        # operator or by a new epoch's INIT_TRANSACTIONS; the flag job is shared, so
        # it may also finish for another producer): the partition is durably part of
        # the transaction it was added to, not of a later one, which must add it
        # again (else its batches there would get no marker).
        registered = txn.current()

        def added(f: asyncio.Future[None]) -> None:
            if txn.current() != registered:
                return  # a later transaction (which dropped ``adding``)
            if txn.adding.get(tp) is f:
                del txn.adding[tp]
            if txn.state == ONGOING and not f.cancelled() and f.exception() is None:
                txn.durable.add(tp)

        fut.add_done_callback(added)
        return fut

    def send_offsets(
        self,
        tid: str,
        producer_id: int,
        epoch: int,
        group: str,
        member_id: str,
        generation: int,
        offsets: Any,
    ) -> asyncio.Future[None]:
        """TXN_SEND_OFFSETS: the group's offsets, committed when the transaction is."""
        txn = self._txn(tid, producer_id, epoch)
        self._check_open_for_work(txn)
        entries = self.groups.check_commit(group, member_id, generation, offsets)
        self._begin_if_needed(txn)
        pending = txn.offsets.setdefault(group, {})
        for t, p, off, meta in entries:
            pending[(t, p)] = (off, meta)
        return self._persist(txn)

    def check_work(self, tid: str, producer_id: int, epoch: int) -> None:
        """Raise unless the producer may add work to its transaction now (before the
        core takes deliveries out of a session for ``add_acks``)."""
        self._check_open_for_work(self._txn(tid, producer_id, epoch))

    def add_acks(
        self, tid: str, producer_id: int, epoch: int, held: HeldSettlements
    ) -> asyncio.Future[None]:
        """TXN_ACK: queue acks applied if the transaction commits, requeued if it aborts
        (for any reason: END_TXN abort, timeout, fencing, an operator).  ``held`` owns
        the deliveries from here on; call ``check_work`` first."""
        txn = self._txn(tid, producer_id, epoch)
        self._check_open_for_work(txn)
        self._begin_if_needed(txn)
        txn.settlements.append(held)
        for uid, positions in held.stored().items():
            txn.acks.setdefault(uid, []).extend(positions)
        return self._persist(txn)

    def end(self, tid: str, producer_id: int, epoch: int, commit: bool) -> asyncio.Future[None]:
        """END_TXN: done once the transaction is CompleteCommit / CompleteAbort."""
        txn = self._txn(tid, producer_id, epoch)
        loop = asyncio.get_running_loop()
        done: asyncio.Future[None] = loop.create_future()
        if txn.timed_out:
            if commit:
                self._check_open_for_work(txn)  # raises TransactionAborted
            txn.timed_out = False  # the producer knows now
            if txn.completing is not None:
                return txn.completing
            done.set_result(None)
            return done
        if txn.state in (PREPARE_COMMIT, PREPARE_ABORT):
            if (txn.state == PREPARE_COMMIT) != commit:
                self._check_open_for_work(txn)  # raises: the other outcome is under way
            if txn.completing is not None:
                return txn.completing  # a retry while it runs
            return self._start_end(txn, commit)  # an earlier attempt failed: again
        if txn.state == (COMPLETE_COMMIT if commit else COMPLETE_ABORT):
            done.set_result(None)  # a retry of the END_TXN that completed it
            return done
        if txn.state != ONGOING:
            raise InvalidTxnState(
                f"transactional id {tid!r}: no transaction in progress to "
                f"{'commit' if commit else 'abort'} (state {txn.state}); begin one and "
                "produce or send offsets first",
                details={"state": txn.state},
            )
        if txn.adding:
            raise InvalidTxnState(
                f"transactional id {tid!r}: produce requests are still being added to the "
                "transaction; wait for their answers before ending it",
                details={"state": txn.state},
            )
        return self._start_end(txn, commit)

    def _start_end(self, txn: Txn, commit: bool) -> asyncio.Future[None]:
        # PrepareX in memory now, so that produces from here on are refused.
        txn.state = PREPARE_COMMIT if commit else PREPARE_ABORT
        task = asyncio.ensure_future(self._end(txn, commit))
        txn.completing = task
        self._track(task)
        return task

    async def _end(self, txn: Txn, commit: bool) -> None:
        """Decide ``txn``: (commit: fsync its partitions,) fsync PrepareX, (commit: apply
        its queue acks and group offsets,) append the markers, CompleteX in memory.  Done
        then, which answers END_TXN (as Kafka answers EndTxn once PrepareCommit is
        durable); ``_finish`` fsyncs the markers and writes CompleteX after the answer."""
        try:
            if txn.marking is not None:
                # The last transaction's markers: durable before ``prev`` names these.
                with contextlib.suppress(Exception):
                    await asyncio.shield(txn.marking)
                if txn.marking is not None:
                    raise InternalError(
                        "fsyncing the markers of the last transaction failed; the broker "
                        "logged it (a restart completes that transaction)"
                    )
            parts = self._partitions_of(txn)
            txn.ends = {(p.topic, p.number): p.latest for p in parts}
            txn.state = PREPARE_COMMIT if commit else PREPARE_ABORT
            if commit:
                # The data and PrepareCommit are fsynced at the same time: recovery
                # commits only if every partition still reaches its ``ends`` offset.
                await asyncio.gather(*(p.sync() for p in parts), self._persist(txn))
            else:
                settlements, txn.settlements = txn.settlements, []
                for held in settlements:
                    held.abort()  # the messages are redelivered
                await self._persist(txn)
            await _halt_point("txn-prepared")
            if commit:
                # Decided: the acks apply (recovery applies them from the PrepareCommit
                # record if the broker stops before they are fsynced), and the offsets
                # are durable and visible before the markers make the records visible.
                settlements, txn.settlements = txn.settlements, []
                waits = [held.commit() for held in settlements]
                changes = self._offset_changes(txn)
                if changes:
                    waits.append(self.groups.offsets.commit(changes))
                await asyncio.gather(*waits)
                await _halt_point("txn-acked")
            prepared = txn.writes
            marked = []
            marks = []
            for part in parts:
                if part.closed:
                    continue  # its topic was deleted meanwhile
                at = part.append_marker(txn.producer_id, txn.epoch, commit, COORDINATOR_EPOCH)
                if at is not None:
                    marked.append(part)
                    marks.append([part.topic, part.number, at])
            txn.prev = [commit, txn.producer_id, txn.epoch, marks] if marks else None
            self._completed(txn, commit)
            txn.marking = self._track(
                asyncio.ensure_future(self._finish(txn, marked, prepared, commit))
            )
        except WharfError as exc:
            log.error("transactional id %r: completing the transaction failed: %s", txn.tid, exc)
            raise
        except Exception as exc:
            log.exception("transactional id %r: completing the transaction failed", txn.tid)
            raise InternalError("completing the transaction failed; the broker logged it") from exc
        finally:
            txn.completing = None

    async def _finish(self, txn: Txn, marked: list[Partition], prepared: int, commit: bool) -> None:
        """After the answer: fsync the markers, then write CompleteX unless a later record
        of the id (the next transaction's, with ``prev``) already superseded PrepareX."""
        try:
            await _halt_point("txn-answered")
            await asyncio.gather(*(part.sync() for part in marked))
            await _halt_point("txn-marked")
        except Exception as exc:
            # Every record of this id keeps ``prev`` (or the log PrepareX): a restart
            # writes the markers again.  Until then this id ends no transaction (``_end``).
            log.error("transactional id %r: fsyncing the markers failed: %s", txn.tid, exc)
            return
        txn.marking = None
        txn.prev = None
        if txn.writes == prepared:  # the log still says PrepareX
            await self._persist(txn)

    # -- periodic ---------------------------------------------------------------------

    def tick(self, now_ms: int | None = None) -> int:
        """Abort transactions open past their timeout; returns how many."""
        now = _now_ms() if now_ms is None else now_ms
        n = 0
        for txn in list(self.txns.values()):
            if (
                txn.state == ONGOING
                and txn.completing is None
                and not txn.adding
                and now - txn.start_ms > txn.timeout_ms
            ):
                log.info(
                    "transactional id %r: aborting a transaction open for %d ms (timeout %d ms)",
                    txn.tid,
                    now - txn.start_ms,
                    txn.timeout_ms,
                )
                txn.timed_out = True
                self.timeouts += 1
                self._start_end(txn, False)
                n += 1
            elif txn.state in (PREPARE_COMMIT, PREPARE_ABORT) and txn.completing is None:
                # An earlier attempt failed (a disk error): try again.
                self._start_end(txn, txn.state == PREPARE_COMMIT)
        return n

    def abort(self, tid: str) -> asyncio.Future[None]:
        """An operator's abort (ctl, HTTP API): the open transaction of ``tid`` is
        aborted as on a timeout (its producer's next request gets TransactionAborted)."""
        txn = self.txns.get(tid)
        if txn is None:
            raise NotFound(f"no transactional id {tid!r}", details={"transactional_id": tid})
        if txn.completing is not None:
            return txn.completing
        if txn.state != ONGOING or txn.adding:
            raise InvalidTxnState(
                f"transactional id {tid!r} has no transaction to abort (state {txn.state})",
                details={"state": txn.state},
            )
        log.info("transactional id %r: the transaction is aborted by an operator", tid)
        txn.timed_out = True
        return self._start_end(txn, False)

    # -- introspection ----------------------------------------------------------------

    def describe(self, tid: str) -> dict[str, Any]:
        txn = self.txns.get(tid)
        if txn is None:
            raise NotFound(f"no transactional id {tid!r}", details={"transactional_id": tid})
        return txn.describe()

    def list(self) -> list[dict[str, Any]]:
        now = _now_ms()
        return [self.txns[t].describe(now) for t in sorted(self.txns)]

    @property
    def open_count(self) -> int:
        return sum(1 for t in self.txns.values() if t.state != EMPTY and "Complete" not in t.state)

    async def close(self) -> None:
        tasks = [t for t in self._tasks if not t.done()]
        if tasks:
            await asyncio.wait(tasks)
        await self.log.close()
