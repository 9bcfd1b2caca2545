"""The transaction log soaked past its compaction threshold, then kill -9 and power loss.

The transaction log (``<vhost>/logs-internal/transactions/transactions.log``) is one
self-compacting file: once it is above ``COMPACT_MIN_BYTES`` and twice its live records,
the next write rewrites it to the last record of every transactional id.  Here the
broker runs with that threshold at 8 KiB (BrokerProcess ``constants``), and many
transactional ids begin, commit, abort and fence each other for rounds that rewrite the
log dozens of times; each cycle ends with some transactions left open and the broker
killed (kill -9, every other cycle with the files cut back to what was fsynced), every
third cycle at a random moment in the middle of the transactions instead (a
registration, a commit or a rewrite of the log may be under way: the restarted broker
decides, and the check takes its decision only where the outcome was unknown: a commit
is all visible or none, an epoch bump happened or not).  After each restart:

- the coordinator knows every id's producer id and epoch as its producer last saw them,
  and the transactions left open are aborted (their records never visible);
- read-committed readers see exactly the committed transactions' records, once each,
  in order per producer, and every partition's last stable offset is its end;
- a fenced producer's requests get ProducerFenced (413);
- the log's size stayed bounded (below the threshold plus twice the live records) and
  it was compacted several times (the broker's "transaction log compacted" lines).

``python -m benchmarks txn-soak`` runs ``txn_log_soak`` with the default threshold.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import re
import signal
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from harness import BrokerProcess, http_json

import wharf

TOPIC: Final = "txlog.out"
PARTITIONS: Final = 4
TXN_LOG: Final = Path("logs-internal") / "transactions" / "transactions.log"
COMPACTED_RE: Final = re.compile(r"transaction log compacted to (\d+) bytes")
SMALL_COMPACT_BYTES: Final = 8 * 1024
CONSTANT: Final = "wharf.broker.logs.transactions.COMPACT_MIN_BYTES"
# The coordinator's own threshold and ratio (broker/logs/transactions.py).
DEFAULT_COMPACT_BYTES: Final = 1024 * 1024
COMPACT_RATIO: Final = 2
# Bytes of one transactional id's last record in the log, generously (a record of the
# ids used here is about 80 bytes with its framing).
MAX_LIVE_RECORD_BYTES: Final = 200
# One write of the log appends at most this much beyond the threshold check.
MAX_APPEND_BYTES: Final = 64 * 1024
MAX_EXTRA_CYCLES: Final = 20
SAMPLE_S: Final = 0.01  # how often the log's size is sampled during traffic
OPEN_AT_KILL: Final = 0.2
# Every third cycle kills the broker this many seconds into its transactions instead.
KILL_AFTER_S: Final = (0.3, 2.0)  # share of ids whose transaction is left open at each kill


@dataclass
class IdState:
    producer: wharf.TransactionalProducer | None = None
    producer_id: int = -1
    epoch: int = -1
    txns: int = 0
    open_values: list[bytes] = field(default_factory=list)
    # A kill in the middle of a request: its outcome is known only after the restart.
    doubt_init: bool = False  # a registration (epoch bump) was under way
    doubt_values: list[bytes] = field(default_factory=list)  # a commit was under way


@dataclass
class SoakResult:
    cycles: int = 0
    transactions: dict[str, int] = field(default_factory=dict)
    compactions: int = 0
    max_log_bytes: int = 0
    log_bytes_after: list[int] = field(default_factory=list)
    committed_records: int = 0
    aborted_records: int = 0
    power_losses: int = 0

    def summary(self) -> dict[str, Any]:
        return {
            "cycles": self.cycles,
            "transactions": self.transactions,
            "txn_log_compactions": self.compactions,
            "txn_log_max_bytes": self.max_log_bytes,
            "txn_log_bytes_after_each_cycle": self.log_bytes_after,
            "committed_records": self.committed_records,
            "aborted_records": self.aborted_records,
            "power_losses": self.power_losses,
        }


def lose_power(data_dir: Path, sync_log: Path) -> None:
    """Cut every file of the log topics and the internal logs back to its last fsynced
    length, deleting files never fsynced except segment logs.  For the internal logs the
    last line of a file in the sync log wins (one writer at a time, and a compacted log
    is shorter than before); for segments, which only grow and whose fsyncs may be
    reported by two worker threads out of order, the longest."""
    synced: dict[str, int] = {}
    if sync_log.exists():
        for line in sync_log.read_text().splitlines(keepends=True):
            if line.endswith("\n"):
                path, _, length = line.strip().rpartition(" ")
                if "/logs-internal/" in path:
                    synced[path] = int(length)
                else:
                    synced[path] = max(synced.get(path, 0), int(length))
    roots = (data_dir / "logs", data_dir / "logs-internal")
    for root in roots:
        for f in sorted(root.rglob("*")):
            if not f.is_file() or ".torn-" in f.name or f.name.endswith(".json"):
                continue
            length = synced.get(str(f))
            if length is None and f.suffix != ".log":
                f.unlink()
            elif (length or 0) < f.stat().st_size:
                os.truncate(f, length or 0)
    files = [f for root in roots for f in sorted(root.rglob("*")) if f.is_file()]
    lines = [f"{f} {f.stat().st_size}\n" for f in files]
    sync_log.write_text("".join(lines))


def value_of(tid: str, epoch: int, txn: int, i: int) -> bytes:
    return f"{tid}|{epoch}|{txn}|{i}".encode()


class TxnLogSoak:
    """Drives ``ids`` transactional ids against one broker directory, cycle after cycle."""

    def __init__(
        self,
        work: Path,
        *,
        ids: int,
        rounds: int,
        seed: int,
        compact_bytes: int | None,
        segment_bytes: int = 64 * 1024,
    ) -> None:
        self.work = work
        self.sync_log = work / "sync.log"
        constants = {CONSTANT: compact_bytes} if compact_bytes is not None else None
        self.compact_bytes = compact_bytes or DEFAULT_COMPACT_BYTES
        self.bp = BrokerProcess(
            work / "data", env={"WHARF_TEST_SYNC_LOG": str(self.sync_log)}, constants=constants
        )
        self.tids = [f"soak-{i:04d}" for i in range(ids)]
        self.rounds = rounds
        self.rng = random.Random(seed)
        self.segment_bytes = segment_bytes
        self.state = {tid: IdState() for tid in self.tids}
        self.committed: set[bytes] = set()
        self.aborted: set[bytes] = set()
        self.result = SoakResult()
        self.result.transactions = {
            "commit": 0,
            "abort": 0,
            "fenced": 0,
            "left_open": 0,
            "killed_midway": 0,
        }
        self.log_path = self.bp.data_dir / TXN_LOG

    def _observe_log(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            size = self.log_path.stat().st_size
            self.result.max_log_bytes = max(self.result.max_log_bytes, size)

    def bound(self) -> int:
        live = len(self.tids) * MAX_LIVE_RECORD_BYTES
        return max(self.compact_bytes, COMPACT_RATIO * live) + MAX_APPEND_BYTES

    async def _one(self, conn: wharf.Connection, tid: str) -> None:
        """One transaction of ``tid``: commit, abort, or a new producer fencing the old."""
        st = self.state[tid]
        kind = self.rng.choices(("commit", "abort", "fence"), (6, 3, 1))[0]
        if st.producer is None or kind == "fence":
            old = st.producer
            if old is not None:  # a zombie: its open transaction is aborted by the fence
                await old.begin()
                zombie = value_of(tid, st.epoch, st.txns + 1, 99)
                await old.produce(TOPIC, zombie, partition=self.rng.randrange(PARTITIONS))
                self.aborted.add(zombie)
            st.producer = conn.transactional_producer(tid)
            st.doubt_init = True
            await st.producer.begin()
            st.doubt_init = False
            st.producer_id, st.epoch = st.producer.producer_id, st.producer.producer_epoch
            if old is not None:
                for call in (
                    lambda: old.produce(TOPIC, b"zombie", partition=0),
                    old.commit,
                ):
                    try:
                        await call()
                    except wharf.ProducerFenced as exc:
                        assert exc.code == 413
                    else:
                        raise AssertionError(f"{tid}: the fenced epoch was obeyed")
                self.result.transactions["fenced"] += 1
            kind = "commit"
        else:
            await st.producer.begin()
        p = st.producer
        st.txns += 1
        values = [value_of(tid, st.epoch, st.txns, i) for i in range(self.rng.randint(1, 3))]
        if kind == "commit":
            st.doubt_values = values
        else:
            self.aborted.update(values)  # aborted, or left open by a kill: aborted then
        for v in values:
            await p.produce(TOPIC, v, partition=self.rng.randrange(PARTITIONS))
        if kind == "commit":
            await p.commit()
            self.committed.update(values)
            st.doubt_values = []
        else:
            await p.abort()
        self.result.transactions[kind] += 1

    async def _leave_open(self, conn: wharf.Connection, tid: str) -> None:
        st = self.state[tid]
        if st.producer is None:
            st.producer = conn.transactional_producer(tid)
        await st.producer.begin()
        st.producer_id, st.epoch = st.producer.producer_id, st.producer.producer_epoch
        st.txns += 1
        values = [value_of(tid, st.epoch, st.txns, 0)]
        await st.producer.produce(TOPIC, values[0], partition=self.rng.randrange(PARTITIONS))
        st.open_values = values
        self.result.transactions["left_open"] += 1

    async def _sample_log(self) -> None:
        while True:  # polling a file size, not synchronisation
            self._observe_log()
            await asyncio.sleep(SAMPLE_S)

    async def _traffic(self, conn: wharf.Connection) -> None:
        sampler = asyncio.ensure_future(self._sample_log())
        try:
            for _ in range(self.rounds):
                await asyncio.gather(*(self._one(conn, tid) for tid in self.tids))
        finally:
            sampler.cancel()
        self._observe_log()
        for tid in self.rng.sample(self.tids, max(1, int(len(self.tids) * OPEN_AT_KILL))):
            await self._leave_open(conn, tid)

    async def _traffic_killed(self, conn: wharf.Connection) -> None:
        """Rounds of transactions until a kill -9 at a random moment of them (during a
        registration, a produce, a commit, a compaction of the log...)."""
        assert self.bp.proc is not None
        pid = self.bp.proc.pid
        sampler = asyncio.ensure_future(self._sample_log())
        loop = asyncio.get_running_loop()
        killer = loop.call_later(self.rng.uniform(*KILL_AFTER_S), os.kill, pid, signal.SIGKILL)
        try:
            for _ in range(self.rounds * 10):
                outcomes = await asyncio.gather(
                    *(self._one(conn, tid) for tid in self.tids), return_exceptions=True
                )
                errors = [e for e in outcomes if isinstance(e, BaseException)]
                unexpected = [e for e in errors if not isinstance(e, wharf.ConnectionLost)]
                if unexpected:
                    raise unexpected[0]
                if errors:
                    self.result.transactions["killed_midway"] += len(errors)
                    return
            raise AssertionError("the kill came after every round")
        finally:
            killer.cancel()
            sampler.cancel()

    def _settle_doubts(self, known: dict[str, Any], visible: set[bytes]) -> None:
        """What the restarted broker decided for the requests a kill interrupted."""
        for tid, st in self.state.items():
            t = known[tid]
            if st.doubt_init:  # the new epoch registered, or not
                assert t["producer_epoch"] in (st.epoch, st.epoch + 1) or st.epoch < 0, (tid, t)
                st.producer_id, st.epoch = t["producer_id"], t["producer_epoch"]
                st.doubt_init = False
            if st.doubt_values:  # the commit completed (all visible) or not (none)
                shown = [v in visible for v in st.doubt_values]
                assert all(shown) or not any(shown), (tid, st.doubt_values, shown)
                (self.committed if all(shown) else self.aborted).update(st.doubt_values)
                st.doubt_values = []

    async def _check(self, conn: wharf.Connection) -> None:
        """After a restart: every id's epoch known, open transactions aborted, exactly
        the committed records visible to read-committed readers."""
        for st in self.state.values():
            self.aborted.update(st.open_values)
            st.open_values = []
            st.producer = None  # its connection died with the broker
        leftovers = [p.name for p in self.log_path.parent.iterdir() if p.name.endswith(".tmp")]
        assert not leftovers, leftovers  # an interrupted compaction's file is gone
        doc = await asyncio.to_thread(http_json, self.bp, "/api/transactions/%2F")
        known = {t["transactional_id"]: t for t in doc}
        assert set(known) >= {tid for tid, st in self.state.items() if st.epoch >= 0}
        assert set(known) <= set(self.tids), set(known) - set(self.tids)
        seen: list[bytes] = []
        for part in range(PARTITIONS):
            offset = 0
            while True:
                recs = await conn.fetch(
                    TOPIC, part, offset, max_bytes=1 << 20, isolation_level="read_committed"
                )
                if not recs:
                    break
                seen += [r.value or b"" for r in recs]
                offset = recs[-1].offset + 1
            desc = (await conn.describe_topic(TOPIC))["offsets"][part]
            assert desc["last_stable"] == desc["latest"], desc
        assert len(seen) == len(set(seen)), "a committed record is visible twice"
        visible = set(seen)
        self._settle_doubts(known, visible)
        for tid, st in self.state.items():
            t = known.get(tid)
            if t is None:  # never registered: its first registration was killed
                assert st.epoch < 0, tid
                continue
            assert (t["producer_id"], t["producer_epoch"]) == (st.producer_id, st.epoch), (tid, t)
            assert t["state"] in ("Empty", "CompleteCommit", "CompleteAbort"), (tid, t)
        assert not visible & self.aborted, sorted(visible & self.aborted)[:5]
        assert visible == self.committed, (
            sorted(self.committed - visible)[:5],
            sorted(visible - self.committed)[:5],
        )
        self.result.committed_records = len(self.committed)
        self.result.aborted_records = len(self.aborted)

    def _count_compactions(self) -> None:
        self.result.compactions += len(COMPACTED_RE.findall(self.bp.output()))

    async def cycle(self, n: int) -> None:
        await self.bp.start()
        conn = await self.bp.connect()
        try:
            if n == 0:
                await conn.create_topic(TOPIC, PARTITIONS, segment_bytes=self.segment_bytes)
            else:
                await self._check(conn)
            if n % 3 == 2:
                await self._traffic_killed(conn)
            else:
                await self._traffic(conn)
        finally:
            await conn.close()
        self._observe_log()
        await self.bp.kill()
        self._count_compactions()
        assert not self.bp.log_problems(), self.bp.log_problems()[:5]
        if n % 2 == 1:
            lose_power(self.bp.data_dir, self.sync_log)
            self.result.power_losses += 1
        size = self.log_path.stat().st_size
        self.result.log_bytes_after.append(size)
        assert self.result.max_log_bytes <= self.bound(), (self.result.max_log_bytes, self.bound())
        self.result.cycles += 1

    async def run(self, cycles: int, *, min_compactions: int = 0) -> SoakResult:
        """``cycles`` cycles, and more (at most ``MAX_EXTRA_CYCLES``) until the log was
        compacted ``min_compactions`` times."""
        try:
            n = 0
            while n < cycles or (
                self.result.compactions < min_compactions and n < cycles + MAX_EXTRA_CYCLES
            ):
                await self.cycle(n)
                n += 1
            await self.bp.start()  # the last restart's recovery, checked
            conn = await self.bp.connect()
            try:
                await self._check(conn)
                # Each id goes on with the next epoch of the one the coordinator kept.
                for tid in self.rng.sample(self.tids, min(10, len(self.tids))):
                    p = conn.transactional_producer(tid)
                    await p.begin()
                    st = self.state[tid]
                    assert (p.producer_id, p.producer_epoch) == (st.producer_id, st.epoch + 1)
                    await p.abort()
            finally:
                await conn.close()
            self._count_compactions()
            assert not self.bp.log_problems(), self.bp.log_problems()[:5]
        finally:
            await self.bp.close()
        return self.result


async def test_transaction_log_compacts_many_times_and_survives_kill_and_power_loss(
    tmp_path: Path,
) -> None:
    soak = TxnLogSoak(tmp_path, ids=60, rounds=5, seed=15, compact_bytes=SMALL_COMPACT_BYTES)
    async with asyncio.timeout(300):
        result = await soak.run(cycles=6)
    assert result.compactions >= 8, result.summary()
    assert result.power_losses == 3
    assert all(t > 0 for t in result.transactions.values()), result.transactions
