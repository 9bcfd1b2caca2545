"""Store compaction while a queue message is held in a log transaction (TXN_ACK).

Compaction copies forward the ready messages and the sessions' unacked deliveries; a
delivery held by a transaction is neither, so it is not copied.  Its segment then stays
(the held message still counts as live in it) until the transaction ends: a commit's
ACKS record lets it go, an abort requeues the message and the next compaction copies it.
After a restart the job is back exactly when the transaction aborted.
"""

from __future__ import annotations

from pathlib import Path

import pytest

import wharf
from wharf.broker.server import Broker

from .test_compaction import _churn, _settings

JOBS = "jobs"
OUT = "out"


async def _read(conn: wharf.Connection) -> list[bytes]:
    recs = await conn.fetch(OUT, 0, 0, isolation_level="read_committed")
    return [r.value or b"" for r in recs]


@pytest.mark.parametrize("commit", [True, False])
async def test_compaction_while_a_job_is_held_in_a_transaction(
    tmp_path: Path, commit: bool
) -> None:
    b = Broker(_settings(tmp_path))
    await b.start()
    try:
        store = b.store
        assert store is not None
        url = f"wharf://guest:guest@127.0.0.1:{b.port}"
        async with await wharf.connect(url) as conn:
            await conn.declare_queue(JOBS, durable=True)
            await conn.declare_queue("churn", durable=True)
            await conn.create_topic(OUT, 1)
            await conn.publish("", JOBS, b"job-1", persistent=True)
            await _churn(conn, "churn", 2)
            job = await conn.get(JOBS)
            assert job is not None and job.body == b"job-1"
            p = conn.transactional_producer("worker")
            await p.begin()
            await p.produce(OUT, b"out-job-1", partition=0)
            await p.ack_in_transaction(job)
            await _churn(conn, "churn", 8)
            await store.flush()
            before = [s.number for s in store.segments]
            assert len(before) >= 4, before
            for _ in range(len(before)):
                b.compact_store()
                await store.flush()
            # The held job pins the oldest segment: it was not copied forward, so its
            # segment stays until the transaction ends.
            assert store.segments[0].number == before[0]
            if commit:
                await p.commit()
            else:
                await p.abort()
            for _ in range(len(before)):
                b.compact_store()
                await store.flush()
            assert before[0] not in [s.number for s in store.segments]
            if not commit:
                again = await conn.get(JOBS)
                assert again is not None and again.body == b"job-1"
                await again.nack(requeue=True)
    finally:
        await b.stop()
    b = Broker(_settings(tmp_path))
    await b.start()
    try:
        async with await wharf.connect(f"wharf://guest:guest@127.0.0.1:{b.port}") as conn:
            assert await _read(conn) == ([b"out-job-1"] if commit else [])
            left = await conn.get(JOBS)
            if commit:
                assert left is None
            else:
                assert left is not None and left.body == b"job-1"
                await left.ack()
            assert await conn.get(JOBS) is None
            assert await conn.get("churn") is None
    finally:
        await b.stop()
