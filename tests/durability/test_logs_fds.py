"""Log topics under a low open-file limit (``ulimit -n``): thousands of segment rolls
with zero errors, a bounded fd count, and a restart on that directory.

Every record here fills a segment of its own (``segment_bytes`` = 1024), so each
produce rolls.  Before bounded fds (broker/logs/handles.py) each segment kept an fd
until retention deleted it: the broker ran out of fds after a few hundred rolls
(541 at the roll, connections reset) and could not start on the directory again.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

from harness import broker_process

import wharf

MAX_OPEN_FILES = 256
MAX_OPEN_SEGMENTS = 32
TOPICS = 3
ROLLS_PER_TOPIC = 1000
PRODUCE_CONCURRENCY = 4
VALUE_BYTES = 900
# fds of a broker beyond the log layer's (sockets, store segments, definitions,
# offsets log, worker threads' transient fds): a generous allowance.
OTHER_FDS = 64


def broker_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def value(topic: int, i: int) -> bytes:
    return (b"t%d-%d|" % (topic, i)).ljust(VALUE_BYTES, b".")


async def read_all(conn: wharf.Connection, topic: str) -> list[bytes | None]:
    earliest, latest = await conn.list_offsets(topic, 0)
    out: list[bytes | None] = []
    offset = earliest
    while offset < latest:
        recs = await conn.fetch(topic, 0, offset, max_bytes=1 << 20)
        out += [r.value for r in recs]
        offset = recs[-1].offset + 1
    return out


async def test_thousands_of_rolls_under_a_low_fd_limit_then_a_restart(tmp_path: Path) -> None:
    env = {"WHARF_LOG_MAX_OPEN_SEGMENTS": str(MAX_OPEN_SEGMENTS)}
    async with broker_process(
        tmp_path / "data", env=env, max_open_files=MAX_OPEN_FILES, budget_s=300.0
    ) as bp:
        assert bp.proc is not None
        conn = await bp.connect()
        names = [f"fd{t}" for t in range(TOPICS)]
        for name in names:
            await conn.create_topic(name, partitions=1, segment_bytes=1024)
        await conn.declare_queue("durable", durable=True)
        peak = 0

        async def produce(t: int, start: int) -> None:
            nonlocal peak
            for i in range(start, ROLLS_PER_TOPIC, PRODUCE_CONCURRENCY):
                await conn.produce_many(names[t], [value(t, i)], partition=0, acks="fsynced")
                if i % 50 == 0:
                    assert bp.proc is not None
                    peak = max(peak, broker_fds(bp.proc.pid))

        await asyncio.gather(
            *(produce(t, s) for t in range(TOPICS) for s in range(PRODUCE_CONCURRENCY))
        )
        for t, name in enumerate(names):
            got = await read_all(conn, name)
            assert sorted(v or b"" for v in got) == sorted(
                value(t, i) for i in range(ROLLS_PER_TOPIC)
            )
            peak = max(peak, broker_fds(bp.proc.pid))
            info = await conn.describe_topic(name)
            assert info["offsets"][0]["segments"] >= ROLLS_PER_TOPIC
        # The rest of the broker is unaffected: a persistent publish, a new connection.
        await conn.publish("", "durable", b"still fine", persistent=True)
        other = await bp.connect()
        await other.close()
        assert peak <= TOPICS + MAX_OPEN_SEGMENTS + OTHER_FDS, peak
        assert not bp.log_problems(), bp.log_problems()[:5]
        await conn.close()
        assert await bp.terminate() == 0
        # A directory with far more segments than the fd limit starts, and reads back.
        await bp.start()
        conn = await bp.connect()
        for name in names:
            assert len(await read_all(conn, name)) == ROLLS_PER_TOPIC, name
        assert broker_fds(bp.proc.pid) <= TOPICS + MAX_OPEN_SEGMENTS + OTHER_FDS
        async with conn.consume("durable") as consumer:
            msg = await asyncio.wait_for(anext(aiter(consumer)), 10.0)
            assert msg.body == b"still fine"
        await conn.close()
        assert not bp.log_problems(), bp.log_problems()[:5]
