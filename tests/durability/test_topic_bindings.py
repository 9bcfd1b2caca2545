"""Exchange bindings to log topics across kill -9 and simulated power loss: a confirmed
persistent message routed to a topic is in the topic after the restart (its confirm
waited for the fsync), and durable bindings keep routing."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

from harness import broker_process

import wharf

PUBLISHERS = 4
MESSAGES_PER_PUBLISHER = 200
BATCH = 10


async def records(conn: wharf.Connection, topic: str) -> list[wharf.Record]:
    info = await conn.describe_topic(topic)
    out: list[wharf.Record] = []
    for p in range(info["partitions"]):
        offset, latest = await conn.list_offsets(topic, p)
        while offset < latest:
            batch = await conn.fetch(topic, p, offset)
            out.extend(batch)
            offset = batch[-1].offset + 1
    return out


async def test_confirmed_routed_records_survive_kill9(tmp_path: Path) -> None:
    async with broker_process(tmp_path / "data") as bp:
        conn = await bp.connect()
        await conn.create_topic("audit", partitions=3)
        await conn.declare_exchange("orders", "topic", durable=True)
        await conn.declare_queue("orders.eu", durable=True)
        await conn.bind_queue("orders.eu", "orders", "eu.#")
        await conn.bind_topic("audit", "orders", "#")

        confirmed: list[bytes] = []

        async def publish(n: int) -> None:
            pub = await bp.connect()
            try:
                for i in range(0, MESSAGES_PER_PUBLISHER, BATCH):
                    bodies = [b"p%d-%d" % (n, i + j) for j in range(BATCH)]
                    await pub.publish_many(
                        "orders", f"eu.p{n}", bodies, persistent=True, headers={"n": n}
                    )
                    confirmed.extend(bodies)
            finally:
                await pub.close()

        await asyncio.gather(*(publish(n) for n in range(PUBLISHERS)))
        # Killed right after the last confirm: nothing confirmed may be missing.
        await bp.kill()
        await conn.close()
        await bp.start()

        conn = await bp.connect()
        try:
            got = await records(conn, "audit")
            values = [r.value for r in got]
            assert sorted(values) == sorted(confirmed)
            # Per publisher (one routing key, so one partition) in publish order.
            for n in range(PUBLISHERS):
                mine = [r.value for r in got if r.headers.get("n") == n]
                assert mine == [b"p%d-%d" % (n, i) for i in range(MESSAGES_PER_PUBLISHER)]
            # The durable binding came back with the exchange.
            await conn.publish("orders", "us.x", b"after", persistent=True)
            assert b"after" in [r.value for r in await records(conn, "audit")]
        finally:
            await conn.close()
        assert bp.log_problems() == []


def cut_log_segments_to_fsynced(data_dir: Path, sync_log: Path) -> int:
    """Power loss for log topics: every segment file under ``logs/`` is cut back to the
    last fsynced length the broker logged for its full path (0 if never logged).
    Returns the bytes cut."""
    synced: dict[str, int] = {}
    for line in sync_log.read_text().splitlines(keepends=True):
        if line.endswith("\n"):
            path, _, length = line.strip().rpartition(" ")
            # Segments only grow, and fsyncs of one segment can finish in any order:
            # the durable length is the largest one reported.
            key = str(Path(path).resolve())
            synced[key] = max(synced.get(key, 0), int(length))
    cut = 0
    for seg in (data_dir / "logs").glob("*/*/*.log"):
        size = seg.stat().st_size
        keep = synced.get(str(seg.resolve()), 0)
        if keep < size:
            os.truncate(seg, keep)
            cut += size - keep
    return cut


async def test_persistent_confirm_covers_the_fsync_of_the_append(tmp_path: Path) -> None:
    sync_log = tmp_path / "sync.log"
    data_dir = tmp_path / "data"
    async with broker_process(data_dir, env={"WHARF_TEST_SYNC_LOG": str(sync_log)}) as bp:
        conn = await bp.connect()
        await conn.create_topic("audit", partitions=2)
        await conn.declare_exchange("events", "fanout", durable=True)
        await conn.bind_topic("audit", "events")
        confirmed: list[bytes] = []
        for i in range(0, 300, BATCH):
            bodies = [b"m%d" % (i + j) for j in range(BATCH)]
            if i % 20 == 0:
                await conn.publish_many("events", f"k{i % 3}", bodies, persistent=True)
            else:
                for body in bodies:
                    await conn.publish("events", f"k{i % 3}", body, persistent=True)
            confirmed.extend(bodies)
        # Transient messages are only written: a power loss may take them.
        await conn.publish_many("events", "k0", [b"transient"] * BATCH)
        await bp.kill()
        await conn.close()
        cut_log_segments_to_fsynced(data_dir, sync_log)
        await bp.start()
        conn = await bp.connect()
        try:
            values = [r.value for r in await records(conn, "audit")]
            assert sorted(v for v in values if v != b"transient") == sorted(confirmed)
        finally:
            await conn.close()
