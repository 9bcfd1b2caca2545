"""Log topics: readers see only what a power loss cannot take back.

A producer appends with acks="fsynced" while a consumer long-polls the partition and
notes every record it is given.  The broker is killed (-9) the moment the consumer
has seen enough, and the files are cut back to what was fsynced (``lose_power``, as
a machine that lost power would find them).  After the restart every record the
consumer saw must still be there, at the same offset: a record is shown to readers
only once fsynced (docs/logs.md, "When a record becomes visible").

Then a consumer group whose committed offset lies past the log's end after a power
loss (records produced with acks="written" and never fsynced, but consumed and
committed) is reset per ``auto_offset_reset``, as Kafka's consumer does.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from pathlib import Path

import pytest
from harness import broker_process

import wharf

from .test_logs_crash import lose_power

TOPIC = "seen.log"
SEGMENT_BYTES = 16 * 1024
PRODUCERS = 4
BATCH = 5
# The consumer has seen this many records when the power goes.
SEEN_BEFORE_KILL = 400
TIMEOUT_S = 30.0


async def _produce(conn: wharf.Connection, n: int, acks: str) -> None:
    i = 0
    while True:
        values = [b"p%d-%d" % (n, i + j) for j in range(BATCH)]
        i += BATCH
        try:
            await conn.produce_many(TOPIC, values, partition=0, acks=acks)
        except (wharf.ConnectionLost, wharf.ConnectionForced):
            return


async def test_a_consumer_never_sees_a_record_a_power_loss_takes_back(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    sync_log = tmp_path / "sync.log"
    async with broker_process(data_dir, env={"WHARF_TEST_SYNC_LOG": str(sync_log)}) as bp:
        conn = await bp.connect()
        await conn.create_topic(TOPIC, partitions=1, segment_bytes=SEGMENT_BYTES)
        producers = [await bp.connect() for _ in range(PRODUCERS)]
        tasks = [asyncio.create_task(_produce(c, n, "fsynced")) for n, c in enumerate(producers)]
        seen: dict[int, bytes | None] = {}
        offset = 0
        async with asyncio.timeout(TIMEOUT_S):
            while len(seen) < SEEN_BEFORE_KILL:
                for rec in await conn.fetch(TOPIC, 0, offset, max_wait=1.0):
                    seen[rec.offset] = rec.value
                    offset = rec.offset + 1
        # At once, while appends and their fsyncs are in flight.
        await bp.kill()
        async with asyncio.timeout(TIMEOUT_S):
            await asyncio.gather(*tasks, return_exceptions=True)
        for c in [conn, *producers]:
            with contextlib.suppress(wharf.WharfError, OSError):
                await c.close()
        cut = lose_power(data_dir, sync_log)
        await bp.start()
        conn = await bp.connect()
        earliest, latest = await conn.list_offsets(TOPIC, 0)
        stored: dict[int, bytes | None] = {}
        offset = earliest
        while offset < latest:
            for rec in await conn.fetch(TOPIC, 0, offset, max_bytes=4 << 20):
                stored[rec.offset] = rec.value
                offset = rec.offset + 1
        lost = {o: v for o, v in seen.items() if stored.get(o) != v}
        assert not lost, (
            f"{len(lost)} records a consumer saw were taken back by the power loss "
            f"({cut} bytes cut), e.g. offsets {sorted(lost)[:5]}"
        )
        assert max(seen) < latest
        await conn.close()
        assert not bp.log_problems(), bp.log_problems()


async def test_committed_offset_past_the_end_after_power_loss_is_reset(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    data_dir = tmp_path / "data"
    sync_log = tmp_path / "sync.log"
    async with broker_process(data_dir, env={"WHARF_TEST_SYNC_LOG": str(sync_log)}) as bp:
        conn = await bp.connect()
        await conn.create_topic(TOPIC, partitions=1)
        # acks="written" and nothing else fsyncs the partition: visible at once, and
        # all of it lost to the power loss.  The group's commit is fsynced.
        for i in range(10):
            await conn.produce_many(TOPIC, [b"old-%d" % i], partition=0, acks="written")
        async with conn.subscribe(TOPIC, group="g", auto_offset_reset="earliest") as s:
            got = [await anext(s) for _ in range(10)]
            await s.commit()
        assert [r.value for r in got] == [b"old-%d" % i for i in range(10)]
        assert await conn.committed_offsets("g", [TOPIC]) == {(TOPIC, 0): 10}
        await conn.close()
        await bp.kill()
        lose_power(data_dir, sync_log)
        await bp.start()
        conn = await bp.connect()
        assert await conn.list_offsets(TOPIC, 0) == (0, 0)  # the records are gone
        assert await conn.committed_offsets("g", [TOPIC]) == {(TOPIC, 0): 10}
        for i in range(3):
            await conn.produce_many(TOPIC, [b"new-%d" % i], partition=0, acks="fsynced")
        with caplog.at_level(logging.WARNING, logger="wharf.client"):
            async with conn.subscribe(TOPIC, group="g", auto_offset_reset="earliest") as s:
                async with asyncio.timeout(TIMEOUT_S):
                    again = [await anext(s) for _ in range(3)]
        assert [(r.offset, r.value) for r in again] == [(i, b"new-%d" % i) for i in range(3)]
        assert "out of range" in caplog.text and "auto_offset_reset='earliest'" in caplog.text
        await conn.close()
