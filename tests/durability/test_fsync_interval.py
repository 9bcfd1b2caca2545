"""The bound of ``fsync_interval_ms`` under load, through a simulated power loss.

With ``fsync_interval_ms = N`` a publish is confirmed once written, and an fsync runs
every N ms whatever is in flight.  So a power loss may take back messages confirmed in
the last N ms (plus the time one write and one fsync take), never older ones.  Here
publishers keep the store busy without a pause, the broker is killed with -9 and the
segments are cut back to what was fsynced; every message confirmed more than
N ms + FSYNC_SLACK_S before the kill must be delivered after the restart.

Writes here are far faster than on the disks where the bound broke (a FUSE file
system), so the broker runs with ``WHARF_TEST_WRITE_DELAY_MS``: each batch write takes
that much longer and one is in flight nearly all the time, as it was there.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from harness import BrokerProcess, broker_process, simulate_power_loss

FSYNC_INTERVAL_MS = 200
# One write and one fsync on a loaded 2-core machine, generously.
FSYNC_SLACK_S = 1.0
WRITE_DELAY_MS = 50
PUBLISHERS = 4
BATCH = 50
PAD = b"." * 200
LOAD_S = 3.0
QUEUE = "bound"
DRAIN_PREFETCH = 2000


async def publisher(
    bp: BrokerProcess, p: int, stop: asyncio.Event, confirmed: list[tuple[float, int, int]]
) -> None:
    """Publishes batches until ``stop``; records (confirm time, first seq, n)."""
    conn = await bp.connect()
    seq = 0
    try:
        while not stop.is_set():
            bodies = [b"%d-%d|" % (p, s) + PAD for s in range(seq, seq + BATCH)]
            await conn.publish_many("", QUEUE, bodies, persistent=True)
            confirmed.append((time.monotonic(), seq, BATCH))
            seq += BATCH
    finally:
        await conn.close()


async def test_no_message_confirmed_before_the_interval_is_lost(tmp_path: Path) -> None:
    sync_log = tmp_path / "sync.log"
    env = {
        "WHARF_FSYNC_INTERVAL_MS": str(FSYNC_INTERVAL_MS),
        "WHARF_TEST_SYNC_LOG": str(sync_log),
        "WHARF_TEST_WRITE_DELAY_MS": str(WRITE_DELAY_MS),
    }
    data = tmp_path / "data"
    async with broker_process(data, env=env, budget_s=90.0) as bp:
        conn = await bp.connect()
        await conn.declare_queue(QUEUE, durable=True)
        await conn.close()
        stop = asyncio.Event()
        confirmed: list[list[tuple[float, int, int]]] = [[] for _ in range(PUBLISHERS)]
        tasks = [
            asyncio.create_task(publisher(bp, p, stop, confirmed[p])) for p in range(PUBLISHERS)
        ]
        # The one sleep that is not synchronisation: how long the load runs.
        await asyncio.sleep(LOAD_S)
        killed_at = time.monotonic()
        await bp.kill()
        stop.set()
        await asyncio.gather(*tasks, return_exceptions=True)
        simulate_power_loss(data, sync_log)
        await bp.start()
        conn = await bp.connect()
        got: set[bytes] = set()
        info = await conn.declare_queue(QUEUE, durable=True, passive=True)
        if info.messages:
            async with conn.consume(QUEUE, prefetch=DRAIN_PREFETCH) as messages:
                async for msg in messages:
                    got.add(msg.body.partition(b"|")[0])
                    await msg.ack()
                    if len(got) >= info.messages:
                        break
        await conn.close()
    must_survive = killed_at - FSYNC_INTERVAL_MS / 1000 - FSYNC_SLACK_S
    lost: list[str] = []
    old_enough = 0
    for p, batches in enumerate(confirmed):
        for at, first, n in batches:
            if at > must_survive:
                continue
            for s in range(first, first + n):
                old_enough += 1
                if b"%d-%d" % (p, s) not in got:
                    lost.append(f"p{p}-{s} confirmed {killed_at - at:.2f} s before the kill")
    assert old_enough > 0, "no message was confirmed early enough to judge"
    assert not lost, f"{len(lost)} of {old_enough} lost, e.g. {lost[:5]}"
    print(f"{old_enough} messages confirmed before the bound, {len(got)} recovered")
