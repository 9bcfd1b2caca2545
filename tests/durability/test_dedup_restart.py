"""The deduplication window (x-dedup-window-ms) of a durable queue survives kill -9.

The ids of persistent messages are stored with them (DEDUP records in the same group
commit), so a producer that resends everything after the broker died enqueues each
message_id once, also for messages that were consumed and acked before the crash, and
also after the segments holding those records were reclaimed (their unexpired entries
are carried forward first).
"""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path

import pytest
from harness import SMALL_SEGMENT_BYTES, BrokerProcess, broker_process, simulate_power_loss

import wharf

WINDOW_MS = 600_000
IDS = [f"order-{i}" for i in range(40)]
# Messages big enough that a few of them fill a (1 MiB) segment.
BIG_BODY = b"x" * 100_000
ENV = {"WHARF_SEGMENT_BYTES": str(SMALL_SEGMENT_BYTES)}


async def _publish_all(conn: wharf.Connection, queue: str, body: bytes) -> list[bool]:
    return [
        (await conn.publish("", queue, body, message_id=mid, persistent=True)).duplicate
        for mid in IDS
    ]


async def _ack_all(conn: wharf.Connection, queue: str) -> int:
    n = 0
    while (msg := await conn.get(queue)) is not None:
        await msg.ack()
        n += 1
    return n


async def _barrier(conn: wharf.Connection) -> None:
    """A persistent publish's confirm: the acks sent before it are on disk."""
    await conn.declare_queue("barrier", durable=True)
    await conn.publish("", "barrier", b"barrier", persistent=True)


async def _kill_and_restart(
    bp: BrokerProcess, conn: wharf.Connection, sync_log: Path | None = None
) -> wharf.Connection:
    await bp.stop("kill")
    await conn.close()
    if sync_log is not None:  # and the power goes: segments cut to what was fsynced
        simulate_power_loss(bp.data_dir, sync_log)
    await bp.start()
    return await bp.connect()


@pytest.mark.parametrize(
    ("via", "power_loss"), [("argument", False), ("policy", False), ("argument", True)]
)
async def test_window_survives_kill_9_also_for_acked_messages(
    tmp_path: Path, via: str, power_loss: bool
) -> None:
    sync_log = tmp_path / "sync.log" if power_loss else None
    env = {"WHARF_TEST_SYNC_LOG": str(sync_log)} if sync_log is not None else None
    async with broker_process(tmp_path / "data", env=env) as bp:
        conn = await bp.connect()
        if via == "policy":
            await conn.set_policy("dedup", "^orders$", {"dedup-window-ms": WINDOW_MS})
            await conn.declare_queue("orders", durable=True)
        else:
            args = {"x-dedup-window-ms": WINDOW_MS}
            await conn.declare_queue("orders", durable=True, arguments=args)
        assert not any(await _publish_all(conn, "orders", b"first"))
        # Half consumed and acked before the crash: their ids must still count.
        for _ in range(len(IDS) // 2):
            msg = await conn.get("orders")
            assert msg is not None
            await msg.ack()
        await _barrier(conn)
        conn = await _kill_and_restart(bp, conn, sync_log)
        # The producer never saw its confirms: it resends everything.
        assert all(await _publish_all(conn, "orders", b"retry"))
        bodies = []
        while (msg := await conn.get("orders")) is not None:
            bodies.append(msg.body)
            await msg.ack()
        assert bodies == [b"first"] * (len(IDS) // 2)
        # Non-persistent resends go through the same window.
        dup = await conn.publish("", "orders", b"t", message_id=IDS[0])
        assert dup.duplicate
        await conn.close()


async def test_window_survives_segment_reclaim_and_kill_9(tmp_path: Path) -> None:
    """The segments that held the messages and their DEDUP records are deleted once
    everything in them is acked; the ids live on in the segment they were carried to."""
    async with broker_process(tmp_path / "data", env=ENV) as bp:
        conn = await bp.connect()
        args = {"x-dedup-window-ms": WINDOW_MS}
        await conn.declare_queue("orders", durable=True, arguments=args)
        await conn.declare_queue("filler", durable=True)
        assert not any(await _publish_all(conn, "orders", BIG_BODY))
        assert await _ack_all(conn, "orders") == len(IDS)
        first_segments = {p.name for p in bp.data_dir.glob("messages/*.seg")}
        # Push the store past those segments: they are reclaimed from the front.
        for _ in range(3):
            for _ in range(20):
                await conn.publish("", "filler", BIG_BODY, persistent=True)
            await _ack_all(conn, "filler")
            await _barrier(conn)
        left = {p.name for p in bp.data_dir.glob("messages/*.seg")}
        assert not (first_segments - {max(first_segments)}) & left, (first_segments, left)
        conn = await _kill_and_restart(bp, conn)
        assert all(await _publish_all(conn, "orders", b"retry"))
        assert (await conn.declare_queue("orders", passive=True)).messages == 0
        await conn.close()


async def test_resend_everything_after_kill_9_mid_stream_enqueues_each_id_once(
    tmp_path: Path,
) -> None:
    """The broker dies while confirms are outstanding; the producer cannot know what
    arrived and resends all of it: each id ends up in the queue exactly once."""
    total = 5000
    ids = [f"evt-{i}" for i in range(total)]
    async with broker_process(tmp_path / "data") as bp:
        conn = await bp.connect()
        args = {"x-dedup-window-ms": WINDOW_MS}
        await conn.declare_queue("events", durable=True, arguments=args)
        confirmed = 0
        killed = asyncio.Event()
        assert bp.proc is not None
        pid = bp.proc.pid

        # A bounded window of publishes in flight, as a real producer keeps: the kill
        # lands while most of the stream is still unsent or unconfirmed, however fast
        # the broker confirms what it was sent.
        window = asyncio.Semaphore(500)

        async def publish(mid: str) -> None:
            nonlocal confirmed
            async with window:
                await conn.publish("", "events", mid.encode(), message_id=mid, persistent=True)
            confirmed += 1
            if confirmed == total // 20:
                os.kill(pid, signal.SIGKILL)  # at once, with most confirms outstanding
                killed.set()

        tasks = [asyncio.ensure_future(publish(mid)) for mid in ids]
        await killed.wait()
        await bp.stop("kill")
        results = await asyncio.gather(*tasks, return_exceptions=True)
        assert any(isinstance(r, Exception) for r in results), "the kill came too late"
        await conn.close()
        await bp.start()
        conn = await bp.connect()
        flags = [
            (
                await conn.publish("", "events", mid.encode(), message_id=mid, persistent=True)
            ).duplicate
            for mid in ids
        ]
        assert sum(flags) >= confirmed  # everything confirmed before the kill
        bodies = []
        while (msg := await conn.get("events", no_ack=True)) is not None:
            bodies.append(msg.body.decode())
        assert sorted(bodies) == sorted(ids)
        await conn.close()
