"""Exactly once from a queue into a topic across crashes (docs/logs.md, "Acks of queue
messages in a transaction"): a worker takes a job from a durable queue and appends its
result to a topic with the job's ack in the same transaction.

- kill -9 of the worker mid-transaction: no output visible to read_committed, and the
  job is redelivered (to the next worker with the same transactional id at once);
- kill -9 of the broker after the commit: the ack stays, the output is visible;
- kill -9 of the broker right after PrepareCommit reached the transaction log (before
  the ack was applied), also with a power loss: the restarted broker completes the
  commit, the ack included;
- kill -9 of the broker once the ack's store unit is fsynced, before the markers
  (``WHARF_TEST_HALT_AT=txn-acked``), also with a power loss: the commit is completed
  with nothing left to ack, and the job stays acked across the next kill -9.
"""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

import pytest
import txn_pipeline as app
from harness import BrokerProcess, broker_process
from test_transactions_crash import wait_for_line
from test_txn_chaos import RC, lose_power_everywhere, read_all

import wharf

APP = Path(__file__).with_name("txn_pipeline.py")
POLL_S = 0.02
POLLS = 1000  # bounded polling: 20 s


async def _setup(bp: BrokerProcess, jobs: list[bytes]) -> wharf.Connection:
    conn = await bp.connect()
    await conn.declare_queue(app.JOBS, durable=True)
    await conn.create_topic(app.OUT, 1)
    for body in jobs:
        await conn.publish("", app.JOBS, body, persistent=True)
    return conn


async def _ready(conn: wharf.Connection) -> int:
    return (await conn.declare_queue(app.JOBS, durable=True, passive=True)).messages


async def _worker(bp: BrokerProcess, log: Path, work_s: float) -> asyncio.subprocess.Process:
    with log.open("wb") as out:
        return await asyncio.create_subprocess_exec(
            sys.executable, str(APP), bp.url, "queue", stdout=out, stderr=out,
            env={**os.environ, "WHARF_PIPELINE_WORK_S": str(work_s)},
        )  # fmt: skip


async def test_worker_killed_mid_transaction(tmp_path: Path) -> None:
    async with broker_process(tmp_path / "data") as bp:
        conn = await _setup(bp, [b"job-1"])
        # The worker appends, acks in the transaction, then "works" for a minute.
        worker = await _worker(bp, tmp_path / "w1.log", 60.0)
        try:
            for _ in range(POLLS):
                desc = (await conn.describe_topic(app.OUT))["offsets"][0]
                if desc["open_transactions"] == 1 and await _ready(conn) == 0:
                    break
                await asyncio.sleep(POLL_S)
            else:
                raise AssertionError("the worker never got into its transaction")
        finally:
            worker.kill()
            await worker.wait()
        assert await read_all(conn, app.OUT, 0, RC) == []
        # The next worker with the same transactional id aborts the dead one's
        # transaction: the job is back, processed once, acked with its output.
        worker = await _worker(bp, tmp_path / "w2.log", 0.0)
        try:
            for _ in range(POLLS):
                if await read_all(conn, app.OUT, 0, RC):
                    break
                await asyncio.sleep(POLL_S)
        finally:
            worker.kill()
            await worker.wait()
        assert await read_all(conn, app.OUT, 0, RC) == [b"out-job-1"]
        assert await read_all(conn, app.OUT, 0, "read_uncommitted") == [b"out-job-1"] * 2
        assert await _ready(conn) == 0
        assert not bp.log_problems(), bp.log_problems()


async def _commit_job_1_halted(bp: BrokerProcess, sync_log: Path, power_loss: bool) -> None:
    """Jobs job-1 and job-2; a transaction outputs job-1 and acks it, its commit halts at
    the broker's WHARF_TEST_HALT_AT step; kill -9 there (then a power loss if asked) and
    restart without the halt."""
    step = bp.extra_env["WHARF_TEST_HALT_AT"]
    conn = await _setup(bp, [b"job-1", b"job-2"])
    p = conn.transactional_producer("worker")
    m = await conn.get(app.JOBS)
    assert m is not None and m.body == b"job-1"
    await p.begin()
    await p.produce(app.OUT, b"out-job-1", partition=0)
    await p.ack_in_transaction(m)
    commit = asyncio.create_task(p.commit())
    await wait_for_line(bp.output, f"halting at {step}")
    await bp.kill()
    with pytest.raises(wharf.WharfError):
        await commit
    if power_loss:
        lose_power_everywhere(bp.data_dir, sync_log)
    bp.extra_env.pop("WHARF_TEST_HALT_AT")
    await bp.start()


async def test_broker_killed_after_commit(tmp_path: Path) -> None:
    async with broker_process(tmp_path / "data") as bp:
        conn = await _setup(bp, [b"job-1", b"job-2"])
        p = conn.transactional_producer("worker")
        for _ in range(2):
            m = await conn.get(app.JOBS)
            assert m is not None
            async with p.transaction():
                await p.produce(app.OUT, b"out-" + m.body, partition=0)
                await p.ack_in_transaction(m)
        await bp.kill()
        await bp.start()
        conn = await bp.connect()
        assert await read_all(conn, app.OUT, 0, RC) == [b"out-job-1", b"out-job-2"]
        assert await conn.get(app.JOBS) is None
        assert not bp.log_problems(), bp.log_problems()


@pytest.mark.parametrize("power_loss", [False, True])
async def test_prepared_commit_applies_the_ack_at_recovery(
    tmp_path: Path, power_loss: bool
) -> None:
    sync_log = tmp_path / "sync.log"
    env = {"WHARF_TEST_HALT_AT": "txn-prepared", "WHARF_TEST_SYNC_LOG": str(sync_log)}
    async with broker_process(tmp_path / "data", env=env) as bp:
        await _commit_job_1_halted(bp, sync_log, power_loss)
        assert "acked 1 messages of committed transactions" in bp.output()
        conn = await bp.connect()
        assert await read_all(conn, app.OUT, 0, RC) == [b"out-job-1"]
        left = await conn.get(app.JOBS)
        assert left is not None and left.body == b"job-2"
        await left.ack()
        assert await conn.get(app.JOBS) is None
        # Once more after a clean restart: the ack was made durable.
        await bp.restart("sigterm")
        conn = await bp.connect()
        assert await conn.get(app.JOBS) is None
        assert not bp.log_problems(), bp.log_problems()


@pytest.mark.parametrize("power_loss", [False, True])
async def test_acks_fsynced_before_the_markers_stay_after_a_crash(
    tmp_path: Path, power_loss: bool
) -> None:
    """Killed after the acks' store unit is fsynced, before the markers: recovery
    completes the PrepareCommit (markers) with nothing left to ack, and the job stays
    acked across a second kill -9."""
    sync_log = tmp_path / "sync.log"
    env = {"WHARF_TEST_HALT_AT": "txn-acked", "WHARF_TEST_SYNC_LOG": str(sync_log)}
    async with broker_process(tmp_path / "data", env=env) as bp:
        await _commit_job_1_halted(bp, sync_log, power_loss)
        assert "acked 1 messages of committed transactions" not in bp.output()
        conn = await bp.connect()
        assert await read_all(conn, app.OUT, 0, RC) == [b"out-job-1"]
        # A new producer with the id, and its own transaction, after the recovery.
        p = conn.transactional_producer("worker")
        left = await conn.get(app.JOBS)
        assert left is not None and left.body == b"job-2"
        async with p.transaction():
            await p.produce(app.OUT, b"out-job-2", partition=0)
            await p.ack_in_transaction(left)
        await bp.kill()
        await bp.start()
        conn = await bp.connect()
        assert await read_all(conn, app.OUT, 0, RC) == [b"out-job-1", b"out-job-2"]
        assert await conn.get(app.JOBS) is None
        assert not bp.log_problems(), bp.log_problems()
