"""The dedup window (x-dedup-window-ms) past segment rolls, reclaim and the paging
budget, then kill -9 or power loss; and ids forgotten once their window passed.

The broker runs with 1 MiB store segments and a 16 KiB per-queue memory budget, so a
few thousand ids with 1 KiB bodies roll many segments and most of the queue is paged
out.  The first half is consumed and acked, so the segments holding it are reclaimed
(their unexpired DEDUP entries carried forward).  After kill -9 (and after a power loss
that cuts every store segment back to what was fsynced) the producer resends every id:
none is enqueued twice, and the queue holds exactly the unacked half, each id once.

A second queue with a short window: once the window passed, the queue reports no ids
(``dedup_ids`` 0: memory freed), a restart does not bring them back, and a resend is
accepted as new.
"""

from __future__ import annotations

import asyncio
import urllib.request
from pathlib import Path
from typing import Final

import pytest
from harness import (
    SMALL_SEGMENT_BYTES,
    BrokerProcess,
    broker_process,
    http_json,
    segment_files,
    simulate_power_loss,
)

import wharf

LONG_WINDOW_MS: Final = 600_000
SHORT_WINDOW_MS: Final = 1_000
IDS: Final = [f"pay-{i:05d}" for i in range(3000)]
SHORT_IDS: Final = [f"short-{i}" for i in range(200)]
BODY: Final = b"b" * 1024
MEMORY_BUDGET_BYTES: Final = 16 * 1024
INFLIGHT: Final = 64
POLL_S: Final = 0.05
EXPIRY_TIMEOUT_S: Final = 30.0


async def publish_all(conn: wharf.Connection, queue: str, ids: list[str]) -> list[bool]:
    """Publish each id (persistent), ``INFLIGHT`` confirms outstanding; the duplicate
    flags in order."""
    sem = asyncio.Semaphore(INFLIGHT)

    async def one(mid: str) -> bool:
        async with sem:
            res = await conn.publish("", queue, BODY, message_id=mid, persistent=True)
            return res.duplicate

    return list(await asyncio.gather(*(one(mid) for mid in ids)))


async def queue_info(bp: BrokerProcess, conn: wharf.Connection, queue: str) -> dict[str, int]:
    doc = await asyncio.to_thread(http_json, bp, f"/api/queues/%2F/{queue}")
    messages = (await conn.declare_queue(queue, passive=True)).messages
    return {"messages": messages, "dedup_ids": doc["dedup_ids"]}


def paged_messages(bp: BrokerProcess, queue: str) -> int:
    """wharf_queue_messages_paged of ``queue`` (the ready messages kept on disk)."""
    req = urllib.request.Request(f"http://127.0.0.1:{bp.http_port}/metrics")
    with urllib.request.urlopen(req, timeout=30) as resp:
        text = resp.read().decode()
    for line in text.splitlines():
        if line.startswith("wharf_queue_messages_paged{") and f'queue="{queue}"' in line:
            return int(float(line.rsplit(" ", 1)[1]))
    raise AssertionError(f"no wharf_queue_messages_paged for {queue}")


async def drain_ids(conn: wharf.Connection, queue: str) -> list[str]:
    out: list[str] = []
    while (msg := await conn.get(queue)) is not None:
        assert msg.message_id is not None
        out.append(msg.message_id)
        await msg.ack()
    return out


@pytest.mark.parametrize("power_loss", [False, True])
async def test_window_past_rolls_reclaim_and_paging_then_kill(
    tmp_path: Path, power_loss: bool
) -> None:
    sync_log = tmp_path / "sync.log"
    env = {
        "WHARF_SEGMENT_BYTES": str(SMALL_SEGMENT_BYTES),
        "WHARF_QUEUE_MEMORY_BUDGET_BYTES": str(MEMORY_BUDGET_BYTES),
        "WHARF_TEST_SYNC_LOG": str(sync_log),
    }
    async with broker_process(tmp_path / "data", env=env, budget_s=180.0) as bp:
        conn = await bp.connect()
        args = {"x-dedup-window-ms": LONG_WINDOW_MS}
        await conn.declare_queue("pay", durable=True, arguments=args)
        assert not any(await publish_all(conn, "pay", IDS))
        first_segments = {p.name for p in segment_files(bp.data_dir)}
        assert len(first_segments) >= 3, first_segments  # rolled
        info = await queue_info(bp, conn, "pay")
        assert info["dedup_ids"] == len(IDS) and info["messages"] == len(IDS), info
        assert await asyncio.to_thread(paged_messages, bp, "pay") > len(IDS) // 2
        half = len(IDS) // 2
        acked = []
        for _ in range(half):
            msg = await conn.get("pay")
            assert msg is not None and msg.message_id is not None
            acked.append(msg.message_id)
            await msg.ack()
        assert acked == IDS[:half]  # in order, through the paged-out part
        # A confirm after the acks: they are on disk; the first segments reclaimed.
        await conn.declare_queue("barrier", durable=True)
        await conn.publish("", "barrier", b"x", persistent=True)
        left = {p.name for p in segment_files(bp.data_dir)}
        assert first_segments - left, (first_segments, left)
        await conn.close()
        await bp.stop("kill")
        if power_loss:
            simulate_power_loss(bp.data_dir, sync_log)
        await bp.start()
        conn = await bp.connect()
        info = await queue_info(bp, conn, "pay")
        assert info["dedup_ids"] == len(IDS) and info["messages"] == len(IDS) - half, info
        # The producer never saw its confirms: it resends everything.
        assert all(await publish_all(conn, "pay", IDS))
        assert (await queue_info(bp, conn, "pay"))["messages"] == len(IDS) - half
        assert await drain_ids(conn, "pay") == IDS[half:]
        await conn.close()
        assert not bp.log_problems(), bp.log_problems()[:5]


async def test_ids_are_forgotten_once_the_window_passed_also_across_a_restart(
    tmp_path: Path,
) -> None:
    async with broker_process(tmp_path / "data", budget_s=120.0) as bp:
        conn = await bp.connect()
        args = {"x-dedup-window-ms": SHORT_WINDOW_MS}
        await conn.declare_queue("short", durable=True, arguments=args)
        assert not any(await publish_all(conn, "short", SHORT_IDS))
        assert (await queue_info(bp, conn, "short"))["dedup_ids"] == len(SHORT_IDS)
        # The ids stored before the kill must not come back after it, once expired.
        await conn.close()
        await bp.stop("kill")
        await bp.start()
        conn = await bp.connect()
        for _ in range(int(EXPIRY_TIMEOUT_S / POLL_S)):  # bounded polling
            if (await queue_info(bp, conn, "short"))["dedup_ids"] == 0:
                break
            await asyncio.sleep(POLL_S)
        else:
            raise AssertionError(f"ids never expired: {await queue_info(bp, conn, 'short')}")
        await conn.close()
        await bp.stop("kill")
        await bp.start()
        conn = await bp.connect()
        assert (await queue_info(bp, conn, "short"))["dedup_ids"] == 0
        assert not any(await publish_all(conn, "short", SHORT_IDS))  # new again
        info = await queue_info(bp, conn, "short")
        assert info["messages"] == 2 * len(SHORT_IDS) and info["dedup_ids"] == len(SHORT_IDS)
        await conn.close()
        assert not bp.log_problems(), bp.log_problems()[:5]
