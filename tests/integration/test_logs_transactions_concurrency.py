"""Transactional producers that start at the same moment on the same partitions."""

from __future__ import annotations

import asyncio

import wharf

PRODUCERS = 8


async def test_first_transactional_produces_to_a_partition_at_once(conn: wharf.Connection) -> None:
    """The first transactional batch of a partition makes it write its has-transactions
    flag file; several producers' first batches at once share that write (two jobs
    renamed the same temp file: all but one produce failed with 541)."""
    await conn.create_topic("tx-race", 2)
    producers = [conn.transactional_producer(f"race-{i}") for i in range(PRODUCERS)]

    async def one(i: int, p: wharf.TransactionalProducer) -> None:
        await p.begin()
        await p.produce("tx-race", b"v%d" % i, partition=i % 2)
        await p.commit()

    await asyncio.gather(*(one(i, p) for i, p in enumerate(producers)))
    got: list[bytes | None] = []
    for part in (0, 1):
        recs = await conn.fetch("tx-race", part, 0, isolation_level="read_committed")
        got += [r.value for r in recs]
    assert sorted(v or b"" for v in got) == sorted(b"v%d" % i for i in range(PRODUCERS))
