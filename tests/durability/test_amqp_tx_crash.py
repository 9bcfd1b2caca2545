"""AMQP tx.commit is one atomic, durable unit (core/transactions.py).

A pika channel in tx mode acks what it consumed and publishes persistent messages, then
commits; tx.commit-ok comes once the whole commit is fsynced (one group commit).  The
broker is killed with SIGKILL right after commit-ok and its segments are cut back to what
was fsynced (simulated power loss): every message of the commit is there and every ack
of it applied.  A commit still in flight when the broker dies is all or nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections.abc import Callable
from pathlib import Path

import pika
from harness import broker_process, free_port, simulate_power_loss

QUEUE = "tx.jobs"
OUT = "tx.results"
JOBS = 20
# Big enough that a commit's write takes a moment.
RESULTS_PER_JOB = 50


def _params(port: int) -> pika.ConnectionParameters:
    return pika.ConnectionParameters(
        host="127.0.0.1",
        port=port,
        credentials=pika.PlainCredentials("guest", "guest"),
        connection_attempts=1,
        socket_timeout=10,
    )


def _work(port: int, commits: int, kill: Callable[[], None]) -> None:
    """Take each job, publish its result and ack it in one transaction per job; kill
    the broker the moment the last commit-ok arrives."""
    conn = pika.BlockingConnection(_params(port))
    ch = conn.channel()
    ch.tx_select()
    persistent = pika.BasicProperties(delivery_mode=2)
    for _ in range(commits):
        method, _, body = ch.basic_get(QUEUE)
        assert method is not None
        for copy in range(RESULTS_PER_JOB):
            ch.basic_publish("", OUT, b"result-%d-" % copy + body, persistent)
        ch.basic_ack(method.delivery_tag)
        ch.tx_commit()
    kill()
    with contextlib.suppress(Exception):
        conn.close()


def _counts(port: int) -> tuple[int, int]:
    with pika.BlockingConnection(_params(port)) as conn:
        ch = conn.channel()
        jobs = ch.queue_declare(QUEUE, durable=True, passive=True).method.message_count
        out = ch.queue_declare(OUT, durable=True, passive=True).method.message_count
        return jobs, out


async def test_committed_transactions_survive_kill_9_and_power_loss(tmp_path: Path) -> None:
    sync_log = tmp_path / "sync.log"
    amqp_port = free_port()
    env = {"WHARF_TEST_SYNC_LOG": str(sync_log), "WHARF_AMQP_PORT": str(amqp_port)}
    async with broker_process(tmp_path / "data", env=env) as bp:
        conn = await bp.connect()
        await conn.declare_queue(QUEUE, durable=True)
        await conn.declare_queue(OUT, durable=True)
        for i in range(JOBS):
            await conn.publish("", QUEUE, f"job-{i}".encode(), persistent=True)
        assert bp.proc is not None
        pid = bp.proc.pid
        await asyncio.to_thread(_work, amqp_port, JOBS // 2, lambda: os.kill(pid, signal.SIGKILL))
        await bp.stop("kill")
        await conn.close()
        simulate_power_loss(bp.data_dir, sync_log)
        await bp.start()
        jobs, out = await asyncio.to_thread(_counts, amqp_port)
        # Every committed transaction: its result is there and its job is gone.
        assert (jobs, out) == (JOBS - JOBS // 2, JOBS // 2 * RESULTS_PER_JOB)
