"""RSS per message id of a queue's deduplication window (x-dedup-window-ms).

``python -m benchmarks.dedup_memory [ids]`` fills one ``DedupWindow`` with ``ids``
distinct uuid4 message ids (default 1,000,000) and prints one JSON object: the RSS
growth of the process divided by the ids (the id strings themselves are made before
the first reading: the window keeps only their hashes).  Target: <= 120 bytes per id.
"""

from __future__ import annotations

import gc
import json
import os
import sys
import time
import uuid

from wharf.broker.core.dedup import DedupWindow

DEFAULT_IDS = 1_000_000
WINDOW_MS = 3_600_000


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


if __name__ == "__main__":
    print(json.dumps(main(int(sys.argv[1]) if len(sys.argv) > 1 else DEFAULT_IDS)))
