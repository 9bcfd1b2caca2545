"""The Wharf-only scenarios: ``throughput``, ``latency`` and ``mem``.

Each returns one JSON-ready dict; ``__main__`` prints it.  Field names follow the
RabbitMQ anchors (``publish_msgs_s``, ``end_to_end_msgs_s``, ``p99_ms``,
``rss_bytes_per_msg``) so that ``compare`` can put the two side by side.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any, Final

from benchmarks.perf.rawclient import RawConnection
from wharf.protocol import frames as F

from .common import (
    Target,
    broker_target,
    log,
    percentiles_ms,
    rate,
    rss_bytes,
    run_async,
    scrape_metric,
    unique_name,
)
from .flow import Plan, run_flow

MEM_PUBLISH_BATCH: Final = 1000
MEM_SETTLE_BEFORE_S: Final = 1.0
MEM_SETTLE_AFTER_S: Final = 2.0
MEM_POLL_S: Final = 0.5
READY_METRIC: Final = "wharf_queue_messages_ready"


def throughput(
    *,
    url: str | None,
    count: int,
    size: int,
    producers: int,
    consumers: int,
    batch: int,
    prefetch: int,
    msg_rate: float,
    confirm: bool,
    inflight: int,
    raw: bool,
    timeout_s: float,
    persistent: bool = False,
    queue_arguments: dict[str, Any] | None = None,
    priorities: int = 0,
    tls_dir: str | None = None,
) -> dict[str, Any]:
    with broker_target(url, tls_dir=tls_dir) as target:
        plan = Plan(
            persistent=persistent,
            queue_arguments=tuple(sorted((queue_arguments or {}).items())),
            priorities=priorities,
            target=target,
            queue=unique_name("tp"),
            count=count,
            size=size,
            producers=producers,
            consumers=consumers,
            batch=batch,
            prefetch=prefetch,
            rate=msg_rate,
            confirm=confirm,
            inflight=inflight,
            raw=raw,
            timeout_s=timeout_s,
        )
        flow = run_flow(plan)
    t_start = min(p["t_start"] for p in flow.producers)
    t_sent = max(p["t_sent"] for p in flow.producers)
    confirmed = [p["t_confirmed"] for p in flow.producers if p["t_confirmed"] is not None]
    t_last = max((c["t_last"] for c in flow.consumers if c["count"]), default=0)
    return {
        "broker": "wharf",
        "scenario": "throughput",
        "client": "raw" if raw else "sdk",
        "tls": target.cafile is not None,
        "n": count,
        "size": size,
        "producers": producers,
        "consumers": consumers,
        "batch": batch,
        "prefetch": prefetch,
        "rate": msg_rate,
        "confirm": confirm,
        "inflight": inflight,
        "publish_msgs_s": rate(count, t_start, t_sent),
        "confirmed_msgs_s": rate(count, t_start, max(confirmed)) if confirmed else None,
        "end_to_end_msgs_s": rate(flow.consumed, t_start, t_last) if t_last else None,
        **percentiles_ms(flow.latencies_ns),
        "consumed": flow.consumed,
        "nacked": sum(p["nacked"] for p in flow.producers),
        "timed_out": flow.timed_out,
    }


def latency(
    *,
    url: str | None,
    msg_rate: int,
    seconds: float,
    size: int,
    prefetch: int,
    confirm: bool,
    raw: bool,
    timeout_s: float,
) -> dict[str, Any]:
    count = int(msg_rate * seconds)
    with broker_target(url) as target:
        plan = Plan(
            target=target,
            queue=unique_name("lat"),
            count=count,
            size=size,
            batch=1,
            prefetch=prefetch,
            rate=msg_rate,
            confirm=confirm,
            inflight=64,
            raw=raw,
            timeout_s=timeout_s,
        )
        flow = run_flow(plan)
    t_start = min(p["t_start"] for p in flow.producers)
    t_sent = max(p["t_sent"] for p in flow.producers)
    return {
        "broker": "wharf",
        "scenario": "latency",
        "client": "raw" if raw else "sdk",
        "rate": msg_rate,
        "n": count,
        "size": size,
        "confirm": confirm,
        "achieved_rate": rate(count, t_start, t_sent),
        **percentiles_ms(flow.latencies_ns),
        "consumed": flow.consumed,
        "timed_out": flow.timed_out,
    }


def mem(
    *,
    url: str | None,
    http_url: str | None,
    pid: int | None,
    count: int,
    size: int,
    timeout_s: float,
) -> dict[str, Any]:
    with broker_target(url, http_url, pid) as target:
        if target.pid is None:
            raise SystemExit("mem needs the broker's pid: pass --pid with --url")
        return run_async(_mem(target, target.pid, count, size, timeout_s))


async def _mem(target: Target, pid: int, count: int, size: int, timeout_s: float) -> dict[str, Any]:
    queue = unique_name("mem")
    conn = await RawConnection.open(
        target.host, target.port, target.username, target.password, target.ssl_context()
    )
    try:
        await conn.declare_queue(queue)
        await asyncio.sleep(MEM_SETTLE_BEFORE_S)
        before = rss_bytes(pid)
        body = b"x" * size
        t0 = time.perf_counter()
        sent = 0
        while sent < count:
            n = min(MEM_PUBLISH_BATCH, count - sent)
            conn.writer.write(
                conn.encoder.encode_array((F.PUBLISH_MANY, 0, "", queue, None, [body] * n, 0))
            )
            await conn.writer.drain()
            sent += n
        ready, source = await _wait_ready(conn, target, queue, count, timeout_s)
        t_ready = time.perf_counter()
        await asyncio.sleep(MEM_SETTLE_AFTER_S)
        after = rss_bytes(pid)
        await conn.delete_queue(queue)
    finally:
        await conn.close()
    log(f"{ready} ready after {t_ready - t0:.1f}s (counted by {source})")
    return {
        "broker": "wharf",
        "scenario": "mem",
        "ready": ready,
        "size": size,
        "rss_bytes_per_msg": round((after - before) / count),
        "rss_before_mb": round(before / 2**20),
        "rss_after_mb": round(after / 2**20),
        "ready_counted_by": source,
    }


async def _wait_ready(
    conn: RawConnection, target: Target, queue: str, count: int, timeout_s: float
) -> tuple[int, str]:
    """Poll the ready count (metrics, or a passive declare if the metric is absent)."""
    deadline = time.monotonic() + timeout_s
    ready = 0
    source = "metrics"
    while True:
        value = None
        if target.http_url and source == "metrics":
            value = await asyncio.to_thread(
                scrape_metric, target.http_url, READY_METRIC, {"queue": queue}
            )
        if value is None:
            source = "queue_declare"
            value = (await conn.declare_queue(queue, passive=True)).get("messages", 0)
        ready = int(value)
        if ready >= count:
            return ready, source
        if time.monotonic() > deadline:
            raise SystemExit(f"only {ready}/{count} messages ready after {timeout_s}s")
        await asyncio.sleep(MEM_POLL_S)
