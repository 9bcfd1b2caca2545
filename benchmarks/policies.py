"""``python -m benchmarks.policies``: queue policies against a plain queue, side by side.

Runs the throughput scenario (SDK, 100-byte messages) alternately on a plain queue, a
plain queue whose messages carry a priority property, a priority queue
(``x-max-priority=10``, priorities cycling per batch) and a TTL queue
(``x-message-ttl``), ``--runs`` times, and prints each run and the median ratios against
the plain queue.  ``--delayed N`` also measures the broker's RSS growth per message with N
messages pending a delayed retry.  Prints one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
from typing import Any

from benchmarks.perf import scenarios
from benchmarks.perf.common import emit, local_broker, log, rss_bytes

VARIANTS: dict[str, dict[str, Any]] = {
    "plain": {},
    "plain_with_priority_property": {"priorities": 10},
    "priority_queue": {"queue_arguments": {"x-max-priority": 10}, "priorities": 10},
    "ttl_queue": {"queue_arguments": {"x-message-ttl": 600_000}},
}


def _throughput(count: int, variant: dict[str, Any]) -> float:
    result = scenarios.throughput(
        url=None,
        count=count,
        size=100,
        producers=1,
        consumers=1,
        batch=500,
        prefetch=2000,
        msg_rate=0.0,
        confirm=True,
        inflight=4,
        raw=False,
        timeout_s=300.0,
        **variant,
    )
    return float(result["end_to_end_msgs_s"])


async def _delayed_rss(n: int) -> dict[str, Any]:
    import wharf

    with local_broker() as target:
        assert target.pid is not None
        conn = await wharf.connect(target.url)
        await conn.declare_queue("delayed", arguments={"x-retry-delays": [3_600_000]})
        before = rss_bytes(target.pid)
        body = b"d" * 100
        for _ in range(0, n, 1000):
            await conn.publish_many("", "delayed", [body] * 1000)
        async with conn.consume("delayed", prefetch=5000) as messages:
            seen = 0
            async for msg in messages:
                await msg.reject(requeue=False)  # first failure: wait an hour
                seen += 1
                if seen == n:
                    break
        await asyncio.sleep(1.0)
        after = rss_bytes(target.pid)
        await conn.close()
    return {"delayed": n, "rss_bytes_per_delayed_msg": (after - before) // n}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.policies", description=__doc__)
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--count", type=int, default=300_000)
    p.add_argument("--delayed", type=int, default=0, help="also measure N delayed messages")
    args = p.parse_args(argv)
    runs: list[dict[str, float]] = []
    for i in range(args.runs):
        run: dict[str, float] = {}
        for name, variant in VARIANTS.items():
            log(f"run {i + 1}/{args.runs}: {name}")
            run[name] = _throughput(args.count, variant)
        runs.append(run)
    ratios = {
        name: statistics.median(r[name] / r["plain"] for r in runs)
        for name in VARIANTS
        if name != "plain"
    }
    ratios["priority_queue_vs_same_messages"] = statistics.median(
        r["priority_queue"] / r["plain_with_priority_property"] for r in runs
    )
    out: dict[str, Any] = {
        "scenario": "policies",
        "runs": runs,
        "median_ratio_vs_plain": {k: round(v, 3) for k, v in ratios.items()},
    }
    if args.delayed:
        out["delayed_memory"] = asyncio.run(_delayed_rss(args.delayed))
    emit(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
