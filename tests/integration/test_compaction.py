"""Compaction: a few long-lived messages do not keep settled history on disk."""

from __future__ import annotations

from pathlib import Path

import wharf
from wharf.broker.config import Settings
from wharf.broker.server import Broker

MIB = 1024 * 1024


def _settings(tmp_path: Path) -> Settings:
    return Settings(
        host="127.0.0.1",
        port=0,
        http_port=0,
        amqp_port=0,
        data_dir=str(tmp_path / "data"),
        segment_bytes=MIB,
    )


async def _churn(conn: wharf.Connection, queue: str, rounds: int) -> None:
    body = b"c" * 4000
    for _ in range(rounds):
        await conn.publish_many("", queue, [body] * 100, persistent=True)
        async with conn.consume(queue, prefetch=100) as messages:
            n = 0
            async for msg in messages:
                await msg.ack()
                n += 1
                if n == 100:
                    break


async def test_sparse_oldest_segment_is_compacted_and_deleted(tmp_path: Path) -> None:
    b = Broker(_settings(tmp_path))
    await b.start()
    try:
        store = b.store
        assert store is not None
        async with await wharf.connect(f"wharf://guest:guest@127.0.0.1:{b.port}") as conn:
            await conn.declare_queue("keep", durable=True)
            await conn.declare_queue("churn", durable=True)
            await conn.publish("", "keep", b"pinned-1", persistent=True)
            await _churn(conn, "churn", 2)
            await conn.publish("", "keep", b"pinned-2", persistent=True)
            held = await conn.get("keep")  # delivered, unacked: also pinned
            assert held is not None and held.body == b"pinned-1"
            await _churn(conn, "churn", 8)
            await store.flush()
            before = [s.number for s in store.segments]
            assert len(before) >= 4, before
            oldest = before[0]
            # Everything is settled except the two pinned messages: compaction copies
            # them forward and the old segments go once the copies are on disk.
            for _ in range(len(before)):
                b.compact_store()
                await store.flush()
            after = [s.number for s in store.segments]
            assert oldest not in after
            assert len(after) < len(before)
            assert not (Path(b.data_path) / "messages" / f"{oldest:016d}.seg").exists()
    finally:
        await b.stop()
    b = Broker(_settings(tmp_path))
    await b.start()
    try:
        async with await wharf.connect(f"wharf://guest:guest@127.0.0.1:{b.port}") as conn:
            first = await conn.get("keep")
            second = await conn.get("keep")
            assert first is not None and first.body == b"pinned-1" and first.redelivered
            assert second is not None and second.body == b"pinned-2"
            assert await conn.get("keep") is None
            assert await conn.get("churn") is None
    finally:
        await b.stop()
