"""A consume-transform-produce application for the transaction chaos tests
(test_txn_chaos.py, ``python -m benchmarks txn-soak``): run as its own process, so that
it can be killed with -9 mid-transaction.

``python txn_pipeline.py URL topic``: a member of group ``GROUP`` (static, so a restarted
process takes its slot back at once) reads ``IN`` read_committed and, per transaction,
appends ``out-<input value>`` for each record read to the same partition of ``OUT`` and
sends the next offsets with ``send_offsets``.

``python txn_pipeline.py URL queue``: a worker takes jobs from the durable queue
``JOBS`` one at a time and, per transaction, appends ``out-<job body>`` to partition 0 of
``OUT`` and acks the job in the same transaction (``msg.ack(transaction=p)``).

Every ``ABORT_EVERY``-th transaction is aborted on purpose after its produce (the topic
pipeline then does the same records again; the queue worker's job is requeued and comes
back), so aborted output is in the log however the kills land.

It runs until killed; any other error (the broker went away, a fenced epoch) ends it with exit
code 1, and the test starts it again.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
from typing import Final

import wharf

IN: Final = "chaos.in"
JOBS: Final = "chaos.jobs"
OUT: Final = "chaos.out"
GROUP: Final = "chaos-pipeline"
TRANSACTIONAL_ID: Final = "chaos-pipeline"
INSTANCE_ID: Final = "chaos-pipeline-0"
# Records per transaction at most: small, so that kills land mid-transaction often.
BATCH: Final = 16
POLL_TIMEOUT_S: Final = 0.5
# Time spent inside each transaction between its produce and its commit (the "work"), so
# that most kills land mid-transaction; WHARF_PIPELINE_WORK_S overrides it.
WORK_S: Final = float(os.environ.get("WHARF_PIPELINE_WORK_S", "0.02"))
# A static member's session outlives the process restarts of the test.
SESSION_TIMEOUT_S: Final = 30.0
ABORT_EVERY: Final = 5


class PlannedAbort(Exception):
    """Raised inside a transaction to abort it on purpose."""


def transform(value: bytes | None) -> bytes:
    return b"out-" + (value or b"")


async def topic_pipeline(url: str) -> None:
    conn = await wharf.connect(url, timeout=10.0)
    p = conn.transactional_producer(TRANSACTIONAL_ID)
    async with conn.subscribe(
        IN,
        group=GROUP,
        instance_id=INSTANCE_ID,
        session_timeout=SESSION_TIMEOUT_S,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        isolation_level="read_committed",
    ) as stream:
        done = 0
        while True:
            records = await stream.getmany(timeout=POLL_TIMEOUT_S, max_records=BATCH)
            if not records:
                continue
            done += 1
            by_partition: dict[int, list[bytes | None]] = {}
            offsets: dict[tuple[str, int], int] = {}
            for rec in records:
                by_partition.setdefault(rec.partition, []).append(transform(rec.value))
                offsets[(rec.topic, rec.partition)] = rec.offset + 1
            for planned_abort in (True, False) if done % ABORT_EVERY == 0 else (False,):
                with contextlib.suppress(PlannedAbort):
                    async with p.transaction():
                        for partition, values in by_partition.items():
                            await p.produce_many(OUT, values, partition=partition)
                        await asyncio.sleep(WORK_S)  # the work between reading and committing
                        if planned_abort:
                            raise PlannedAbort
                        await p.send_offsets(
                            GROUP,
                            offsets,
                            member_id=stream.member_id,
                            generation=stream.generation,
                        )


async def queue_worker(url: str) -> None:
    conn = await wharf.connect(url, timeout=10.0)
    p = conn.transactional_producer(TRANSACTIONAL_ID)
    # Registering first aborts what a killed predecessor left open, so its job is back
    # at its place in the queue before this worker takes the next one.
    await p.init()
    async with conn.consume(JOBS, prefetch=1) as jobs:
        done = 0
        async for job in jobs:
            done += 1
            with contextlib.suppress(PlannedAbort):
                async with p.transaction():
                    await p.produce(OUT, transform(job.body), partition=0)
                    await job.ack(transaction=p)
                    await asyncio.sleep(WORK_S)  # the work between taking and committing
                    if done % ABORT_EVERY == 0:
                        raise PlannedAbort  # the job is requeued and comes back


def main() -> None:
    url, mode = sys.argv[1], sys.argv[2]
    if mode == "topic":
        asyncio.run(topic_pipeline(url))
    elif mode == "queue":
        asyncio.run(queue_worker(url))
    else:
        raise SystemExit(f"unknown mode {mode!r}")


if __name__ == "__main__":
    main()
