"""Persistent publishing across many segment rolls, with a consumer acking as it goes.

Small segments make the store roll every few hundred messages, so acks regularly
settle the whole of a segment whose last bytes are still waiting for the next group
commit: the segment must stay (and its fd stay open) until they are on disk.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import wharf
from wharf.broker.server import Broker
from wharf.broker.store.segments import MAX_READ_FDS

SEGMENT_BYTES = 64 * 1024
PUBLISHERS = 3
BATCHES = 250
BATCH = 20
BODY = b"x" * 200
TOTAL = PUBLISHERS * BATCHES * BATCH
# Besides the active segment, one whose last bytes are in flight, and the settled
# history behind a consumer that is a little behind.
MAX_SEGMENTS_AFTER_DRAIN = 3
MAX_WRITE_FDS = 3
DIRECTORY_FDS = 1  # messages/, open for the store's life (its fsync after a roll)


@pytest.fixture
def settings_overrides() -> dict[str, Any]:
    return {"segment_bytes": SEGMENT_BYTES}


def data_bytes(broker: Broker) -> int:
    return sum(p.stat().st_size for p in (Path(broker.data_path) / "messages").glob("*.seg"))


async def test_many_rolls_with_an_acking_consumer(
    broker: Broker, connect: Callable[..., Any]
) -> None:
    store = broker.store
    assert store is not None
    first = await connect()
    await first.declare_queue("r", durable=True)
    errors: list[BaseException] = []
    peak_fds = 0

    async def publisher() -> None:
        nonlocal peak_fds
        conn = await connect()
        for _ in range(BATCHES):
            try:
                await conn.publish_many("", "r", [BODY] * BATCH, persistent=True)
            except wharf.WharfError as exc:
                errors.append(exc)
                return
            peak_fds = max(peak_fds, store.open_fds())

    received = 0

    async def consumer() -> None:
        nonlocal received
        conn = await connect()
        async with conn.consume("r", prefetch=200) as messages:
            async for msg in messages:
                await msg.ack()
                received += 1
                if received == TOTAL:
                    return

    async with asyncio.timeout(90):
        consuming = asyncio.create_task(consumer())
        await asyncio.gather(*(publisher() for _ in range(PUBLISHERS)))
        assert not errors, errors[:3]
        await consuming
    await store.flush()
    assert store.failed is None
    assert store.active is not None and store.active.number > 40, "too few rolls"
    # Everything was acked: the settled segments are gone.
    assert len(store.segments) <= MAX_SEGMENTS_AFTER_DRAIN, store.segments
    assert data_bytes(broker) <= MAX_SEGMENTS_AFTER_DRAIN * SEGMENT_BYTES * 2
    assert peak_fds <= MAX_WRITE_FDS + DIRECTORY_FDS + MAX_READ_FDS
