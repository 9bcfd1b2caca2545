"""``python -m benchmarks txn``: the cost of transactions on log topics (issue 15 targets).

Each of ``--runs`` runs starts a fresh broker (default settings, a subprocess on free
ports with a temporary data directory) and measures, in that run and alternating which
goes first:

- **produce**: ``--count`` records of ``--size`` bytes appended with ``produce_many`` in
  batches of ``--batch`` (acks "written"), ``--inflight`` batches awaiting their reply at a
  time, to a one-partition topic: once plainly (an idempotent producer id, as every SDK
  produce) and once by a transactional producer, ``--txn-records`` records per
  transaction (begin, the batches, commit, and the next transaction only once committed).
  The two take turns in slices of ``--slice`` records (10 transactions by default), so
  that a change of the machine's load during the run (it may be shared) weighs on both
  alike.  Target: transactional >= 60% of plain records/s (``ratio_produce``: over the
  whole run; ``ratio_produce_slices_median``: the median over pairs of adjacent slices),
  and the broker's CPU seconds per record of each (``broker_cpu_us_per_record_*``: less
  sensitive to the load than the rates).
- **consume**: the transactional topic read back from offset 0 with ``fetch`` (1 MiB per
  request) as read_committed and as read_uncommitted, ``--consume-passes`` times each,
  the two levels taking turns.  Target: read_committed >= 90%.

Prints one JSON document: every run, the medians, the median of the per-run ratios,
and the load average before and after (``uptime``: the machine may be shared).

``python -m benchmarks txn-soak --minutes N``: the chaos test of tests/durability
(test_txn_chaos.py) for N minutes per variant (topic pipeline, queue worker), with the
broker's default settings, topics made with ``--segment-bytes`` so that their segments
roll many times, and a power loss every ``--power-every`` cycles.  Its ``txn-log``
variant soaks the transaction log at its default compaction threshold until it was
compacted ``--txn-compactions`` times (tests/durability/test_txn_log_soak.py).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Final

import wharf
from benchmarks.perf.common import emit, local_broker, log, run_async

TARGET_PRODUCE_RATIO: Final = 0.60
TARGET_CONSUME_RATIO: Final = 0.90
FETCH_BYTES: Final = 1 << 20
CLOCK_TICKS_PER_S: Final = os.sysconf("SC_CLK_TCK")


def _cpu_s(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS_PER_S


def _load() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


class _Producers:
    """The plain and the transactional producer of one run, each appending to its own
    one-partition topic, a slice at a time (``_slice``)."""

    def __init__(self, conn: wharf.Connection, index: int, args: argparse.Namespace) -> None:
        self.args = args
        self.topics = {"plain": f"plain-{index}", "txn": f"txn-{index}"}
        self.plain = conn.producer()
        self.txn = conn.transactional_producer(f"bench-txn-{index}")
        self.sem = asyncio.Semaphore(args.inflight)

    async def _send(self, kind: str, batch: list[bytes]) -> None:
        async with self.sem:
            p = self.plain if kind == "plain" else self.txn
            await p.produce_many(self.topics[kind], batch, partition=0)

    async def slice(self, kind: str, values: list[bytes]) -> float:
        """Seconds to append ``values``: plainly, ``--inflight`` batches at a time, or in
        transactions of ``--txn-records`` (begin, the batches, commit; the next
        transaction only once committed)."""
        args = self.args
        batches = [values[i : i + args.batch] for i in range(0, len(values), args.batch)]
        start = time.perf_counter()
        if kind == "plain":
            await asyncio.gather(*(self._send(kind, b) for b in batches))
        else:
            per_txn = max(1, args.txn_records // args.batch)
            for i in range(0, len(batches), per_txn):
                await self.txn.begin()
                await asyncio.gather(*(self._send(kind, b) for b in batches[i : i + per_txn]))
                await self.txn.commit()
        return time.perf_counter() - start


async def _produce(
    conn: wharf.Connection,
    values: list[bytes],
    args: argparse.Namespace,
    index: int,
    broker_pid: int,
) -> dict[str, Any]:
    """Both producers append ``values``, interleaved: slices of ``--slice`` records,
    plain and transactional in turn (the first alternating per run), so that both see
    the same machine load however it changes during the run."""
    producers = _Producers(conn, index, args)
    for topic in producers.topics.values():
        await conn.create_topic(topic, 1)
    seconds = {"plain": 0.0, "txn": 0.0}
    cpu = {"plain": 0.0, "txn": 0.0}
    pair_ratios = []
    order = ["plain", "txn"] if index % 2 == 0 else ["txn", "plain"]
    step = max(args.slice, args.txn_records)
    for at in range(0, len(values), step):
        chunk = values[at : at + step]
        took = {}
        for kind in order:
            cpu_before = _cpu_s(broker_pid)
            took[kind] = await producers.slice(kind, chunk)
            cpu[kind] += _cpu_s(broker_pid) - cpu_before
            seconds[kind] += took[kind]
        pair_ratios.append(took["plain"] / took["txn"])
        order.reverse()
    return {
        "plain_records_s": round(len(values) / seconds["plain"]),
        "txn_records_s": round(len(values) / seconds["txn"]),
        "slices": len(pair_ratios),
        "ratio_produce_slices_median": round(statistics.median(pair_ratios), 3),
        "broker_cpu_us_per_record_plain": round(cpu["plain"] / len(values) * 1e6, 2),
        "broker_cpu_us_per_record_txn": round(cpu["txn"] / len(values) * 1e6, 2),
    }


async def _consume(conn: wharf.Connection, topic: str, isolation: str, expected: int) -> float:
    """Seconds to read ``topic`` from offset 0 to its ``expected``-th record."""
    start = time.perf_counter()
    offset = n = 0
    while n < expected:
        recs = await conn.fetch(topic, 0, offset, max_bytes=FETCH_BYTES, isolation_level=isolation)
        if not recs:
            raise RuntimeError(f"{isolation}: {n} of {expected} records, then nothing")
        n += len(recs)
        offset = recs[-1].offset + 1
    return time.perf_counter() - start


async def _run(url: str, broker_pid: int, args: argparse.Namespace, index: int) -> dict[str, Any]:
    conn = await wharf.connect(url)
    try:
        values = [os.urandom(args.size) for _ in range(min(args.count, 1000))]
        values = (values * (args.count // len(values) + 1))[: args.count]
        row = await _produce(conn, values, args, index, broker_pid)
        levels = ["read_committed", "read_uncommitted"]
        if index % 2:
            levels.reverse()
        row["consume_order"] = levels
        # --consume-passes reads of the topic at each level, the levels taking turns, so
        # that neither gets the colder cache or a load spike alone (a pass takes well
        # under a second).
        seconds = dict.fromkeys(levels, 0.0)
        for _ in range(args.consume_passes):
            for level in levels:
                seconds[level] += await _consume(conn, f"txn-{index}", level, args.count)
        for level in levels:
            row[f"{level}_records_s"] = round(args.count * args.consume_passes / seconds[level])
        row["ratio_produce"] = round(row["txn_records_s"] / row["plain_records_s"], 3)
        row["ratio_consume"] = round(
            row["read_committed_records_s"] / row["read_uncommitted_records_s"], 3
        )
        return row
    finally:
        await conn.close()


def _median(values: list[float]) -> float:
    return round(statistics.median(values), 3)


def txn(args: argparse.Namespace) -> dict[str, Any]:
    rows = []
    load_before = _load()
    for i in range(args.runs):
        with local_broker() as target:
            log(f"run {i + 1}/{args.runs}")
            assert target.pid is not None  # a local broker
            row = run_async(_run(target.url, target.pid, args, i))
            log(f"run {i + 1}: {row}")
            rows.append(row)
    medians = {
        k: _median([r[k] for r in rows])
        for k in (
            "plain_records_s",
            "txn_records_s",
            "read_committed_records_s",
            "read_uncommitted_records_s",
            "ratio_produce",
            "ratio_produce_slices_median",
            "broker_cpu_us_per_record_plain",
            "broker_cpu_us_per_record_txn",
            "ratio_consume",
        )
    }
    return {
        "scenario": "txn",
        "runs": rows,
        "count": args.count,
        "size": args.size,
        "batch": args.batch,
        "txn_records": args.txn_records,
        "inflight": args.inflight,
        "slice": args.slice,
        "consume_passes": args.consume_passes,
        "median": medians,
        "targets": {
            "produce_ratio": TARGET_PRODUCE_RATIO,
            "produce_met": medians["ratio_produce"] >= TARGET_PRODUCE_RATIO,
            "consume_ratio": TARGET_CONSUME_RATIO,
            "consume_met": medians["ratio_consume"] >= TARGET_CONSUME_RATIO,
        },
        "load_before": load_before,
        "load_after": _load(),
        "cpus": os.cpu_count(),
    }


def soak(args: argparse.Namespace) -> dict[str, Any]:
    durability = Path(__file__).resolve().parent.parent / "tests" / "durability"
    if str(durability) not in sys.path:
        sys.path.insert(0, str(durability))
    import test_txn_chaos as chaos_mod

    out: dict[str, Any] = {
        "scenario": "txn-soak",
        "minutes": args.minutes,
        "load_before": _load(),
        "variants": {},
    }
    seed = args.seed if args.seed is not None else random.randrange(1 << 30)
    out["seed"] = seed
    for mode in ("topic", "queue"):
        if mode not in args.variants:
            continue
        start = time.monotonic()
        shape = chaos_mod.Shape(
            chunk=args.chunk,
            queue_chunk=args.queue_chunk,
            pad=args.pad,
            segment_bytes=args.segment_bytes,
            budget_s=args.minutes * 60 + 600,
            power_every=args.power_every,
            deadline=start + args.minutes * 60,
            finish_timeout_s=300.0,
        )
        with tempfile.TemporaryDirectory(prefix=f"wharf-txn-soak-{mode}-") as tmp:
            log(f"txn-soak {mode}: {args.minutes} min in {tmp}")
            run = asyncio.run(
                chaos_mod.chaos(Path(tmp), mode, cycles=10**9, seed=seed, env={}, shape=shape)
            )
            segments = len(list((Path(tmp) / "data" / "logs").rglob("*.log")))
        out["variants"][mode] = {
            "cycles": len(run.actions),
            "actions": {a: run.actions.count(a) for a in sorted(set(run.actions))},
            "inputs": sum(len(v) for v in run.inputs.values()),
            "aborted_output_records": run.aborted,
            "log_segment_files": segments,
            "seconds": round(time.monotonic() - start, 1),
            "ok": True,  # chaos() raises on any lost, duplicated or visible-aborted record
        }
    if "txn-log" in args.variants:
        out["variants"]["txn-log"] = _txn_log_soak(args, seed)
    out["load_after"] = _load()
    return out


def _txn_log_soak(args: argparse.Namespace, seed: int) -> dict[str, Any]:
    """The transaction log at its default compaction threshold (1 MiB): many
    transactional ids commit, abort and fence each other until it was compacted
    ``--txn-compactions`` times, with kill -9 and power loss between cycles
    (tests/durability/test_txn_log_soak.py; it raises on any lost epoch, visible aborted
    record, missing committed one, or a log above its bound)."""
    import test_txn_log_soak as soak_mod

    start = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="wharf-txn-soak-log-") as tmp:
        log(f"txn-soak txn-log: {args.txn_ids} ids in {tmp}")
        soak_run = soak_mod.TxnLogSoak(
            Path(tmp), ids=args.txn_ids, rounds=args.txn_rounds, seed=seed, compact_bytes=None
        )
        result = asyncio.run(soak_run.run(cycles=4, min_compactions=args.txn_compactions))
    return {
        **result.summary(),
        "ids": args.txn_ids,
        "compact_threshold_bytes": soak_mod.DEFAULT_COMPACT_BYTES,
        "log_bound_bytes": soak_run.bound(),
        "seconds": round(time.monotonic() - start, 1),
        "ok": result.compactions >= args.txn_compactions,
    }


def build_parser(prog: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=f"python -m benchmarks {prog}",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    if prog == "txn":
        p.add_argument("--runs", type=int, default=3)
        p.add_argument("--count", type=int, default=300_000, help="records per producer")
        p.add_argument("--size", type=int, default=100, help="value bytes")
        p.add_argument("--batch", type=int, default=100, help="records per produce_many")
        p.add_argument("--txn-records", type=int, default=1000, help="records per transaction")
        p.add_argument(
            "--consume-passes",
            type=int,
            default=5,
            help="reads of the topic at each isolation level, taking turns",
        )
        p.add_argument("--inflight", type=int, default=4, help="batches awaiting a reply")
        p.add_argument(
            "--slice",
            type=int,
            default=10_000,
            help="records per slice: plain and transactional slices take turns",
        )
    else:
        p.add_argument("--minutes", type=float, default=10.0, help="per variant")
        p.add_argument("--chunk", type=int, default=2000, help="inputs per partition per cycle")
        p.add_argument("--queue-chunk", type=int, default=200, help="jobs per cycle")
        p.add_argument("--pad", type=int, default=1000, help="bytes added to each input")
        p.add_argument("--segment-bytes", type=int, default=1 << 20, help="topic segment size")
        p.add_argument("--power-every", type=int, default=10, help="cycles between power losses")
        p.add_argument("--seed", type=int)
        p.add_argument(
            "--variants",
            type=lambda text: text.split(","),
            default=["topic", "queue", "txn-log"],
            help="comma-separated: topic, queue, txn-log",
        )
        p.add_argument("--txn-ids", type=int, default=200, help="txn-log: transactional ids")
        p.add_argument("--txn-rounds", type=int, default=20, help="txn-log: rounds per cycle")
        p.add_argument(
            "--txn-compactions", type=int, default=6, help="txn-log: compactions to reach"
        )
    return p


def main(argv: list[str], prog: str = "txn") -> int:
    args = build_parser(prog).parse_args(argv)
    emit(txn(args) if prog == "txn" else soak(args))
    return 0
