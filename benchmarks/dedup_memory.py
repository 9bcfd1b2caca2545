"""RSS per message id of a queue's deduplication window (x-dedup-window-ms), and the
publish throughput of a deduplicated durable queue beside a plain one.

``python -m benchmarks.dedup_memory [ids]`` fills one ``DedupWindow`` with ``ids``
distinct uuid4 message ids (default 1,000,000) and prints one JSON object: the RSS
growth of the process divided by the ids (the id strings themselves are made before
the first reading: the window keeps only their hashes).  Target: <= 120 bytes per id.

``python -m benchmarks.dedup_memory --throughput [messages]`` starts a broker in this
process and publishes persistent messages with distinct message ids, with confirms
(1000 in flight), to a durable queue with and without ``x-dedup-window-ms``, three runs
each, alternating; it prints the medians (msg/s) and their ratio.  Target: >= 0.8.
"""

from __future__ import annotations

import asyncio
import gc
import json
import os
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

from wharf.broker.core.dedup import DedupWindow

DEFAULT_IDS = 1_000_000
WINDOW_MS = 3_600_000
DEFAULT_MESSAGES = 20_000
IN_FLIGHT = 1000
RUNS = 3


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def main(n: int) -> dict[str, float]:
    ids = [str(uuid.uuid4()) for _ in range(n)]
    gc.collect()
    before = rss_bytes()
    window = DedupWindow(WINDOW_MS)
    now = int(time.time() * 1000)
    started = time.perf_counter()
    for i, mid in enumerate(ids):
        window.add(mid, now + i // 1000)  # 1000 ids per ms
    added = time.perf_counter() - started
    gc.collect()
    after = rss_bytes()
    assert len(window) == n
    return {
        "ids": n,
        "rss_bytes_per_id": round((after - before) / n, 1),
        "add_us_per_id": round(added / n * 1e6, 3),
    }


async def _publish_rate(url: str, queue: str, n: int, arguments: dict[str, int]) -> float:
    import wharf

    async with await wharf.connect(url) as conn:
        await conn.declare_queue(queue, durable=True, arguments=arguments)
        started = time.perf_counter()
        for first in range(0, n, IN_FLIGHT):
            await asyncio.gather(
                *(
                    conn.publish("", queue, b"x" * 100, message_id=f"{queue}-{i}", persistent=True)
                    for i in range(first, min(n, first + IN_FLIGHT))
                )
            )
        rate = n / (time.perf_counter() - started)
        await conn.delete_queue(queue)
        return rate


async def throughput(n: int) -> dict[str, float]:
    from wharf.broker.config import Settings
    from wharf.broker.server import Broker

    with tempfile.TemporaryDirectory() as tmp:
        settings = Settings(
            host="127.0.0.1", port=0, http_port=0, amqp_port=0, amqps_port=0,
            data_dir=str(Path(tmp) / "data"),
        )  # fmt: skip
        broker = Broker(settings)
        await broker.start()
        try:
            url = f"wharf://guest:guest@127.0.0.1:{broker.port}"
            plain: list[float] = []
            dedup: list[float] = []
            for run in range(RUNS):
                plain.append(await _publish_rate(url, f"plain{run}", n, {}))
                args = {"x-dedup-window-ms": WINDOW_MS}
                dedup.append(await _publish_rate(url, f"dedup{run}", n, args))
        finally:
            await broker.stop()
    return {
        "messages": n,
        "plain_msgs_per_s": round(statistics.median(plain)),
        "dedup_msgs_per_s": round(statistics.median(dedup)),
        "ratio": round(statistics.median(dedup) / statistics.median(plain), 3),
    }


if __name__ == "__main__":
    args = sys.argv[1:]
    if args and args[0] == "--throughput":
        count = int(args[1]) if len(args) > 1 else DEFAULT_MESSAGES
        print(json.dumps(asyncio.run(throughput(count))))
    else:
        print(json.dumps(main(int(args[0]) if args else DEFAULT_IDS)))
