"""A transaction's queue acks left in the page cache by a kill -9, then a power loss
(the queue-to-topic chaos test's duplicate, test_txn_chaos.py).

The broker is killed after the acks' store unit is written but before its fsync
returned (PrepareCommit is durable).  The restarted broker reads the unit back (a
killed process leaves the page cache behind), so the job is acked and the recovered
PrepareCommit finds nothing left to ack and completes.  The unit's segment is never
appended to again; a power loss later must not take the acks with it: recovery makes
what it read durable.  Before, the job came back after the power loss and was
processed a second time, though its output had been committed.

In-process brokers: the kill -9 is a copy of the data directory taken while the
store's fsync is held (what the disk and the page cache hold then), the power loss is
``lose_power_everywhere`` with the sync log (``FAULTS.sync_log``).
"""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Final

import pytest
from test_txn_chaos import RC, lose_power_everywhere, read_all

import wharf
from wharf.broker.config import Settings
from wharf.broker.server import Broker
from wharf.broker.store.fsio import FAULTS

JOBS: Final = "jobs"
OUT: Final = "out"
POLL_S: Final = 0.01
POLLS: Final = 2000  # bounded polling: 20 s


def _settings(data: Path) -> Settings:
    return Settings(host="127.0.0.1", port=0, http_port=0, amqp_port=0, data_dir=str(data))


def _url(b: Broker) -> str:
    return f"wharf://guest:guest@127.0.0.1:{b.port}"


async def _until(done: Callable[[], bool]) -> None:
    for _ in range(POLLS):
        if done():
            return
        await asyncio.sleep(POLL_S)
    raise AssertionError("timed out")


def kill_copy(data: Path, sync_log: Path, to: Path) -> Path:
    """What a kill -9 leaves: the files as they are now (written bytes included,
    fsynced or not), and the sync log of what is durable, moved along with them."""
    shutil.copytree(data, to)
    copied = to.with_name(to.name + "-sync.log")
    copied.write_text(sync_log.read_text().replace(str(data), str(to)))
    return copied


async def _ready(conn: wharf.Connection) -> int:
    return (await conn.declare_queue(JOBS, durable=True, passive=True)).messages


async def test_acks_left_in_the_page_cache_by_a_kill_survive_a_later_power_loss(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    first, second = tmp_path / "first", tmp_path / "second"
    sync_log = tmp_path / "sync.log"
    monkeypatch.setattr(FAULTS, "sync_log", str(sync_log))
    b = Broker(_settings(first))
    await b.start()
    try:
        store = b.store
        assert store is not None and store.active is not None
        async with await wharf.connect(_url(b)) as conn:
            await conn.declare_queue(JOBS, durable=True)
            await conn.create_topic(OUT, 1)
            for body in (b"job-1", b"job-2"):
                await conn.publish("", JOBS, body, persistent=True)
            job = await conn.get(JOBS)
            assert job is not None and job.body == b"job-1"
            p = conn.transactional_producer("worker")
            await p.begin()
            await p.produce(OUT, b"out-job-1", partition=0)
            await p.ack_in_transaction(job)
            await store.flush()
            segment = store.active.path
            before = segment.stat().st_size
            with FAULTS.holding("fsync", under=first / "messages"):
                commit = asyncio.create_task(p.commit())
                # The acks' unit is written, its fsync held: kill -9 now.
                await _until(lambda: segment.stat().st_size > before)
                second_sync = kill_copy(first, sync_log, second)
            await commit
    finally:
        await b.stop()

    # The restart: recovery reads the unit back and completes the PrepareCommit.
    monkeypatch.setattr(FAULTS, "sync_log", str(second_sync))
    b = Broker(_settings(second))
    await b.start()
    try:
        assert b.store is not None
        async with await wharf.connect(_url(b)) as conn:
            assert await read_all(conn, OUT, 0, RC) == [b"out-job-1"]
            assert await _ready(conn) == 1  # job-2 only
    finally:
        await b.stop()

    # A power loss later: what the restarted broker acted on is still there.
    lose_power_everywhere(second, second_sync)
    b = Broker(_settings(second))
    await b.start()
    try:
        async with await wharf.connect(_url(b)) as conn:
            assert await read_all(conn, OUT, 0, RC) == [b"out-job-1"]
            left = await conn.get(JOBS)
            assert left is not None and left.body == b"job-2", "job-1 came back"
            await left.ack()
            assert await conn.get(JOBS) is None
    finally:
        await b.stop()
