"""Transactional producers that start at the same moment on the same partitions."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

import wharf
from wharf.broker.server import Broker
from wharf.broker.store.fsio import FAULTS

from ..helpers import wait_until

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


async def test_a_flag_write_slower_than_its_transaction_leaves_the_next_one_alone(
    broker: Broker, conn: wharf.Connection, connect: Any
) -> None:
    """A partition's first transactional batch waits for its has-transactions flag to be
    fsynced; the transaction can end meanwhile (here: a new epoch of its id fences it).
    The flag's callback then marked the partition as durably part of whatever
    transaction the id had by then: the next one's batch there was appended without
    the partition joining it, got no marker at commit and kept the partition's last
    stable offset below it for good (read_committed readers saw nothing)."""
    await conn.create_topic("slow-flag", 1)
    await conn.create_topic("flagged", 1)
    warm = conn.transactional_producer("warm")  # "flagged" has its flag already
    await warm.begin()
    await warm.produce("flagged", b"warm", partition=0)
    await warm.commit()

    old = (await connect()).transactional_producer("tid")
    await old.begin()
    partition_dir = Path(broker.settings.data_dir) / "logs" / "slow-flag" / "0"
    with FAULTS.holding("fsync", under=partition_dir) as release:
        fenced = asyncio.create_task(old.produce("slow-flag", b"fenced", partition=0))
        await wait_until(
            lambda: (partition_dir / "has-transactions.tmp").exists(), what="the flag's write"
        )
        new = (await connect()).transactional_producer("tid")
        await new.begin()  # INIT_TRANSACTIONS: the old epoch's transaction is aborted
        await new.produce("flagged", b"first", partition=0)  # the next transaction
        release.set()
        with pytest.raises(wharf.ProducerFenced):
            await fenced
    await new.produce("slow-flag", b"second", partition=0)
    await new.commit()
    recs = await conn.fetch("slow-flag", 0, 0, isolation_level="read_committed")
    assert [r.value for r in recs] == [b"second"]
    recs = await conn.fetch("flagged", 0, 0, isolation_level="read_committed")
    assert [r.value for r in recs] == [b"warm", b"first"]
