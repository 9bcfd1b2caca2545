"""``python -m benchmarks logs``: log topics through the SDK, side by side with Redis 7 streams.

Three scenarios, each run ``--runs`` times on a fresh broker (a subprocess on free ports
with a temporary data directory); producers and consumers are separate processes:

- ``throughput``: one producer process appends ``--count`` values of ``--size`` bytes
  with ``produce_many`` in batches of ``--batch`` (acks "written"), keeping ``--inflight``
  batches awaiting their reply; then one consumer process reads them all back as
  ``Record`` objects (``subscribe(...)`` and ``getmany()``).  Next to it, in the same
  run and alternating which goes first, a Redis started for the purpose (``--save ''
  --appendonly no``) runs ``redis-benchmark -P 100 -n COUNT XADD s '*' f <SIZE bytes>``
  and ``redis-benchmark -P 10 -n 20000 XRANGE s - + COUNT 1000``.  Ratios are wharf /
  redis records/s.
- ``latency``: a producer appends at a fixed ``--rate`` (batches of ``--latency-batch``),
  every value starting with its 8-byte send time in ns; a subscribed consumer
  long-polls and takes ``now - send time`` per record: p50/p99/p99.9.
- ``rebalance``: a group of two members consumes a topic of ``--rebalance-partitions``;
  a third member joins (time from its ``subscribe`` to the moment all three hold a
  disjoint, complete assignment); then one member process is killed with SIGKILL (time
  until the two survivors own every partition).  The broker runs with
  ``group_initial_rebalance_delay_ms = --initial-delay-ms``.

Prints one JSON document: every run, the medians and the median of the per-run ratios.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import multiprocessing as mp
import os
import random
import statistics
import struct
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from multiprocessing.synchronize import Event as EventT
from pathlib import Path
from typing import Any, Final

from benchmarks.perf.common import (
    STAMP_BYTES,
    Target,
    emit,
    free_port,
    local_broker,
    log,
    percentiles_ms,
    rate,
    run_async,
    unique_name,
)

from .redis_side import REDIS_XRANGE_REQUESTS, Redis
from .workers import POLL_S, Workers, run_worker, wait_event, workers

SCENARIOS: Final = ("throughput", "latency", "rebalance")
WORKER_READY_TIMEOUT_S: Final = 60.0
REBALANCE_TIMEOUT_S: Final = 60.0
GETMANY_TIMEOUT_S: Final = 1.0
# A paced producer sleeps only when its next send is this far ahead.
PACE_SLEEP_MIN_S: Final = 0.0005
# The send time travels in the first 8 bytes of each value (big-endian ns).
_unpack_stamp = struct.Struct(">Q").unpack_from


@dataclass(frozen=True)
class Spec:
    """What one worker process does (pickled to the spawned process)."""

    url: str
    topic: str
    partitions: int
    count: int = 0
    size: int = 100
    batch: int = 1000
    inflight: int = 8
    rate: float = 0.0  # records/s; 0 = as fast as possible
    group: str | None = None
    heartbeat_s: float = 3.0
    session_s: float = 45.0
    timeout_s: float = 600.0


# ---------------------------------------------------------------- producer


def producer_main(name: str, spec: Spec, events: mp.Queue[tuple[Any, ...]], go: EventT) -> None:
    run_worker(name, events, lambda: _produce(spec, name, events, go))


async def _produce(
    spec: Spec, name: str, events: mp.Queue[tuple[Any, ...]], go: EventT
) -> dict[str, Any]:
    import wharf

    conn = await wharf.connect(spec.url)
    window = asyncio.Semaphore(spec.inflight)
    failures: list[BaseException] = []
    tasks: set[asyncio.Task[None]] = set()
    stamped = spec.rate > 0
    pad = b"v" * (spec.size - STAMP_BYTES)
    plain = [b"v" * spec.size] * spec.batch

    async def send(values: list[bytes], partition: int) -> None:
        try:
            await conn.produce_many(spec.topic, values, partition=partition, acks="written")
        except Exception as exc:
            failures.append(exc)
        finally:
            window.release()

    events.put(("ready", name))
    await wait_event(go)
    t_start = time.time_ns()
    t0 = time.perf_counter()
    sent = batches = 0
    try:
        while sent < spec.count:
            n = min(spec.batch, spec.count - sent)
            if stamped:
                ahead = t0 + sent / spec.rate - time.perf_counter()
                if ahead > PACE_SLEEP_MIN_S:
                    await asyncio.sleep(ahead)
                values = [time.time_ns().to_bytes(STAMP_BYTES, "big") + pad] * n
            else:
                values = plain if n == spec.batch else plain[:n]
            await window.acquire()
            if failures:
                raise failures[0]
            task = asyncio.ensure_future(send(values, batches % spec.partitions))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
            sent += n
            batches += 1
        if tasks:
            await asyncio.gather(*tasks)
        if failures:
            raise failures[0]
        t_end = time.time_ns()
    finally:
        await conn.close()
    return {"count": sent, "batches": batches, "t_start": t_start, "t_end": t_end}


# ---------------------------------------------------------------- consumer


def consumer_main(
    name: str, spec: Spec, events: mp.Queue[tuple[Any, ...]], go: EventT, stop: EventT
) -> None:
    run_worker(name, events, lambda: _consume(spec, name, events, go, stop))


async def _consume(
    spec: Spec, name: str, events: mp.Queue[tuple[Any, ...]], go: EventT, stop: EventT
) -> dict[str, Any]:
    """Read ``spec.count`` records; with ``spec.rate`` > 0 also time each one."""
    import wharf

    conn = await wharf.connect(spec.url)
    stamped = spec.rate > 0
    latencies: list[int] = []
    got = 0
    deadline = time.monotonic() + spec.timeout_s
    t_start = t_end = 0

    def tally(records: list[Any]) -> None:
        nonlocal got, t_end
        got += len(records)
        t_end = time.time_ns()
        if stamped:
            now = t_end
            latencies.extend([now - _unpack_stamp(r.value)[0] for r in records])

    def done() -> bool:
        return got >= spec.count or stop.is_set() or time.monotonic() > deadline

    try:
        if not stamped:
            events.put(("ready", name))
            await wait_event(go)
        t_start = time.time_ns()
        async with conn.subscribe(
            spec.topic, group=spec.group, auto_offset_reset="earliest"
        ) as stream:
            if stamped:
                events.put(("ready", name))
            while not done():
                tally(await stream.getmany(timeout=GETMANY_TIMEOUT_S))
    finally:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(conn.close(), 5)
    return {"count": got, "t_start": t_start, "t_end": t_end, "latencies": latencies}


# ---------------------------------------------------------------- group member


def member_main(name: str, spec: Spec, events: mp.Queue[tuple[Any, ...]], stop: EventT) -> None:
    run_worker(name, events, lambda: _member(spec, name, events, stop))


async def _member(
    spec: Spec, name: str, events: mp.Queue[tuple[Any, ...]], stop: EventT
) -> dict[str, Any]:
    import wharf

    conn = await wharf.connect(spec.url)

    def on_assign(tps: list[tuple[str, int]]) -> None:
        events.put(("assigned", name, sorted(p for _, p in tps), time.time_ns()))

    def on_revoke(tps: list[tuple[str, int]]) -> None:
        events.put(("revoked", name, sorted(p for _, p in tps), time.time_ns()))

    got = 0
    events.put(("joining", name, time.time_ns()))
    try:
        async with conn.subscribe(
            spec.topic,
            group=spec.group,
            auto_offset_reset="earliest",
            heartbeat_interval=spec.heartbeat_s,
            session_timeout=spec.session_s,
            on_assign=on_assign,
            on_revoke=on_revoke,
        ) as stream:
            while not stop.is_set():
                got += len(await stream.getmany(timeout=POLL_S * 2))
    finally:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(conn.close(), 5)
    return {"count": got}


# ---------------------------------------------------------------- the broker side


@contextlib.contextmanager
def _broker(settings: dict[str, int]) -> Iterator[Target]:
    """A local broker; ``settings`` go into a TOML file passed with ``--config``."""
    if not settings:
        with local_broker() as target:
            yield target
        return
    with tempfile.TemporaryDirectory(prefix="wharf-bench-conf-") as conf_dir:
        path = Path(conf_dir) / "wharf.toml"
        path.write_text("".join(f"{k} = {v}\n" for k, v in settings.items()), "utf-8")
        with local_broker(["--config", str(path)]) as target:
            yield target


def _group_settings(args: argparse.Namespace) -> dict[str, int]:
    return {"group_initial_rebalance_delay_ms": args.initial_delay_ms}


async def _create_topic(url: str, topic: str, partitions: int) -> None:
    import wharf

    conn = await wharf.connect(url)
    try:
        await conn.create_topic(topic, partitions=partitions)
    finally:
        await conn.close()


def _cpu_s(pid: int | None) -> float | None:
    """User + system CPU seconds of a process so far (/proc/PID/stat)."""
    if pid is None:
        return None
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _wharf_throughput(args: argparse.Namespace) -> dict[str, Any]:
    group = unique_name("g") if args.consume_group else None
    with _broker(_group_settings(args) if group else {}) as target:
        topic = unique_name("tp")
        run_async(_create_topic(target.url, topic, args.partitions))
        spec = Spec(
            url=target.url,
            topic=topic,
            partitions=args.partitions,
            count=args.count,
            size=args.size,
            batch=args.batch,
            inflight=args.inflight,
            group=group,
            timeout_s=args.timeout,
        )
        with workers() as w:
            w.start("producer", producer_main, spec, w.events, w.go)
            w.wait_for("ready", {"producer"}, WORKER_READY_TIMEOUT_S)
            cpu0 = _cpu_s(target.pid)
            w.go.set()
            prod = w.wait_for("result", {"producer"}, args.timeout)["producer"]
            cpu1 = _cpu_s(target.pid)
        with workers() as w:
            w.start("consumer", consumer_main, spec, w.events, w.go, w.stop)
            w.wait_for("ready", {"consumer"}, WORKER_READY_TIMEOUT_S)
            w.go.set()
            cons = w.wait_for("result", {"consumer"}, args.timeout)["consumer"]
            cpu2 = _cpu_s(target.pid)
    produce_s = rate(prod["count"], prod["t_start"], prod["t_end"])
    consume_s = rate(cons["count"], cons["t_start"], cons["t_end"])
    cpu = None
    if cpu0 is not None and cpu1 is not None and cpu2 is not None:
        cpu = [round(cpu1 - cpu0, 2), round(cpu2 - cpu1, 2)]
    return {
        "produce_records_s": produce_s,
        "consume_records_s": consume_s if cons["count"] >= args.count else None,
        "consumed": cons["count"],
        "consume_group": args.consume_group,
        "broker_cpu_s": cpu,  # [producing, consuming]
    }


# ---------------------------------------------------------------- scenarios


def _median(values: list[Any]) -> float | None:
    nums = [v for v in values if isinstance(v, (int, float))]
    return round(statistics.median(nums), 3) if nums else None


def _ratio(num: Any, den: Any) -> float | None:
    if not isinstance(num, (int, float)) or not isinstance(den, (int, float)):
        return None
    if num <= 0 or den <= 0:
        return None
    return round(num / den, 3)


def throughput(args: argparse.Namespace, redis: Redis) -> dict[str, Any]:
    rows: list[dict[str, Any]] = []
    for i in range(args.runs):
        row: dict[str, Any] = {"run": i + 1, "load_before": _load()}
        steps: list[tuple[str, Callable[[], dict[str, Any]]]] = [
            ("wharf", lambda: _wharf_throughput(args))
        ]
        if redis.problem is None:
            steps.append(
                ("redis", lambda: redis.throughput(args.count, args.size, args.xrange_requests))
            )
        if i % 2:
            steps.reverse()
        for name, step in steps:
            log(f"throughput run {i + 1}/{args.runs}: {name}")
            row[name] = step()
        for figure in ("produce", "consume"):
            key = f"{figure}_records_s"
            row[f"ratio_{figure}"] = _ratio(row["wharf"].get(key), row.get("redis", {}).get(key))
        row["load_after"] = _load()
        rows.append(row)
    out: dict[str, Any] = {"runs": rows}
    for figure in ("produce", "consume"):
        key = f"{figure}_records_s"
        out[figure] = {
            "median_wharf_records_s": _median([r["wharf"].get(key) for r in rows]),
            "median_redis_records_s": _median([r.get("redis", {}).get(key) for r in rows]),
            "median_ratio": _median([r[f"ratio_{figure}"] for r in rows]),
        }
    return out


def _latency_run(args: argparse.Namespace) -> dict[str, Any]:
    count = int(args.rate * args.seconds)
    with _broker({}) as target:
        topic = unique_name("lat")
        run_async(_create_topic(target.url, topic, 1))
        spec = Spec(
            url=target.url,
            topic=topic,
            partitions=1,
            count=count,
            size=args.size,
            batch=args.latency_batch,
            inflight=64,
            rate=args.rate,
            timeout_s=args.seconds + 60,
        )
        with workers() as w:
            w.start("consumer", consumer_main, spec, w.events, w.go, w.stop)
            w.wait_for("ready", {"consumer"}, WORKER_READY_TIMEOUT_S)
            w.start("producer", producer_main, spec, w.events, w.go)
            w.wait_for("ready", {"producer"}, WORKER_READY_TIMEOUT_S)
            w.go.set()
            results = w.wait_for("result", {"producer", "consumer"}, spec.timeout_s + 30)
    prod, cons = results["producer"], results["consumer"]
    return {
        "achieved_rate": rate(prod["count"], prod["t_start"], prod["t_end"]),
        "consumed": cons["count"],
        **percentiles_ms(cons["latencies"]),
    }


def latency(args: argparse.Namespace) -> dict[str, Any]:
    rows = []
    for i in range(args.runs):
        log(f"latency run {i + 1}/{args.runs}")
        rows.append({"run": i + 1, "load_before": _load(), **_latency_run(args)})
    keys = ("achieved_rate", "p50_ms", "p99_ms", "p999_ms", "max_ms")
    return {
        "rate": args.rate,
        "seconds": args.seconds,
        "batch": args.latency_batch,
        "runs": rows,
        "median": {k: _median([r.get(k) for r in rows]) for k in keys},
    }


class _Assignments:
    """The latest assignment event of each member, to tell when a generation settled."""

    def __init__(self, partitions: int) -> None:
        self.all = set(range(partitions))
        self.last: dict[str, tuple[str, list[int], int]] = {}

    def feed(self, event: tuple[Any, ...]) -> None:
        if event[0] in ("assigned", "revoked"):
            self.last[event[1]] = (event[0], event[2], event[3])

    def settled(self, members: set[str], since_ns: int) -> int | None:
        """When every member got, after ``since_ns``, an assignment and together they own
        each partition exactly once: the time of the last of those assignments."""
        owned: list[int] = []
        latest = 0
        for m in members:
            kind, parts, t = self.last.get(m, ("", [], 0))
            if kind != "assigned" or t < since_ns:
                return None
            owned += parts
            latest = max(latest, t)
        if len(owned) != len(set(owned)) or set(owned) != self.all:
            return None
        return latest

    def table(self, members: set[str]) -> dict[str, list[int]]:
        return {m: self.last[m][1] for m in sorted(members) if m in self.last}


def _await_settled(w: Workers, state: _Assignments, members: set[str], since_ns: int) -> int | None:
    deadline = time.monotonic() + REBALANCE_TIMEOUT_S
    while time.monotonic() < deadline:
        event = w.next(POLL_S)
        if event is None or event[1] in w.killed:
            continue
        state.feed(event)
        done = state.settled(members, since_ns)
        if done is not None:
            return done
    log(f"no settled assignment for {sorted(members)} in {REBALANCE_TIMEOUT_S}s")
    return None


def _ms(start_ns: int, end_ns: int | None) -> float | None:
    return None if end_ns is None else round((end_ns - start_ns) / 1e6, 1)


def _rebalance_run(args: argparse.Namespace) -> dict[str, Any]:
    partitions = args.rebalance_partitions
    with _broker(_group_settings(args)) as target:
        topic = unique_name("rb")
        run_async(_create_topic(target.url, topic, partitions))
        spec = Spec(
            url=target.url,
            topic=topic,
            partitions=partitions,
            group=unique_name("g"),
            heartbeat_s=args.heartbeat,
            session_s=args.session_timeout,
        )
        state = _Assignments(partitions)
        with workers() as w:
            first = {"m1", "m2"}
            for name in sorted(first):
                w.start(name, member_main, spec, w.events, w.stop)
            joined = w.wait_for("joining", first, WORKER_READY_TIMEOUT_S, state.feed)
            # From the later of the two subscribes: the group's initial delay plus one join.
            t_first = max(joined.values())
            t_initial = _await_settled(w, state, first, t_first)
            two = state.table(first)

            # Members heartbeat in step after a rebalance: join and kill at a random
            # phase of that cycle, not right after the previous rebalance settled.
            time.sleep(random.uniform(0, args.heartbeat))
            w.start("m3", member_main, spec, w.events, w.stop)
            t_join = w.wait_for("joining", {"m3"}, WORKER_READY_TIMEOUT_S, state.feed)["m3"]
            everyone = {"m1", "m2", "m3"}
            t_three = _await_settled(w, state, everyone, t_join)
            three = state.table(everyone)

            time.sleep(random.uniform(0, args.heartbeat))
            t_kill = time.time_ns()
            w.kill("m1")
            survivors = {"m2", "m3"}
            t_two = _await_settled(w, state, survivors, t_kill)
            after = state.table(survivors)
    return {
        "initial_two_members_ms": _ms(t_first, t_initial),
        "third_joins_ms": _ms(t_join, t_three),
        "member_killed_ms": _ms(t_kill, t_two),
        "assignments": {"two": two, "three": three, "after_kill": after},
    }


def rebalance(args: argparse.Namespace) -> dict[str, Any]:
    rows = []
    for i in range(args.runs):
        log(f"rebalance run {i + 1}/{args.runs}")
        rows.append({"run": i + 1, "load_before": _load(), **_rebalance_run(args)})
    keys = ("initial_two_members_ms", "third_joins_ms", "member_killed_ms")
    return {
        "partitions": args.rebalance_partitions,
        "group_initial_rebalance_delay_ms": args.initial_delay_ms,
        "heartbeat_interval_s": args.heartbeat,
        "session_timeout_s": args.session_timeout,
        "runs": rows,
        "median": {k: _median([r.get(k) for r in rows]) for k in keys},
    }


def _load() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


# ---------------------------------------------------------------- command line


def _positive(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks logs",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--scenarios", default=",".join(SCENARIOS), help="comma-separated subset")
    p.add_argument("--runs", type=_positive, default=3)
    p.add_argument("--count", type=_positive, default=2_000_000, help="records produced")
    p.add_argument("--size", type=_positive, default=100, help="value bytes (>= 8)")
    p.add_argument("--batch", type=_positive, default=1000, help="values per produce_many")
    p.add_argument("--inflight", type=_positive, default=8, help="produce requests in flight")
    p.add_argument("--partitions", type=_positive, default=1, help="throughput topic partitions")
    p.add_argument("--consume-group", action="store_true", help="consume through a consumer group")
    p.add_argument(
        "--xrange-requests", type=_positive, default=REDIS_XRANGE_REQUESTS, help="redis -n"
    )
    p.add_argument(
        "--redis-port",
        type=_positive,
        help="use the Redis answering on this port (default: start one on a free port)",
    )
    p.add_argument("--rate", type=_positive, default=10_000, help="latency records/s")
    p.add_argument("--seconds", type=float, default=10.0, help="latency duration")
    p.add_argument("--latency-batch", type=_positive, default=10, help="records per produce")
    p.add_argument("--rebalance-partitions", type=_positive, default=6)
    p.add_argument("--initial-delay-ms", type=int, default=100, help="broker setting")
    p.add_argument("--heartbeat", type=float, default=0.5, help="member heartbeat interval, s")
    p.add_argument("--session-timeout", type=float, default=10.0, help="member session, s")
    p.add_argument("--timeout", type=float, default=600.0, help="seconds per phase")
    p.add_argument(
        "--quick", action="store_true", help="a tiny run (1 run, 20000 records, 1 s latency)"
    )
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.quick:
        args.runs, args.count, args.xrange_requests = 1, 20_000, 200
        args.rate, args.seconds = 2000, 1.0
    if args.size < STAMP_BYTES:
        raise SystemExit(f"--size must be at least {STAMP_BYTES} bytes (the timestamp)")
    chosen = [s.strip() for s in args.scenarios.split(",") if s.strip()]
    unknown = sorted(set(chosen) - set(SCENARIOS))
    if unknown:
        raise SystemExit(f"unknown scenario(s): {', '.join(unknown)}")
    out: dict[str, Any] = {
        "scenario": "logs",
        "runs": args.runs,
        "count": args.count,
        "size": args.size,
        "batch": args.batch,
        "inflight": args.inflight,
        "partitions": args.partitions,
        "acks": "written",
        "cpus": os.cpu_count(),
        "load_before": _load(),
    }
    redis = Redis(args.redis_port or free_port())
    if "throughput" in chosen:
        redis.start()
        out["redis"] = redis.problem or (
            f"redis {redis.version} on 127.0.0.1:{redis.port}"
            + (" (started by the benchmark)" if redis.proc else " (already running)")
        )
    try:
        if "throughput" in chosen:
            out["throughput"] = throughput(args, redis)
        if "latency" in chosen:
            out["latency"] = latency(args)
        if "rebalance" in chosen:
            out["rebalance"] = rebalance(args)
    finally:
        redis.stop()
    out["load_after"] = _load()
    if "throughput" in chosen:
        tp = out["throughput"]
        out["targets"] = {
            f"{figure}_above_redis": (tp[figure]["median_ratio"] or 0) > 1.0
            for figure in ("produce", "consume")
        }
    emit(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
