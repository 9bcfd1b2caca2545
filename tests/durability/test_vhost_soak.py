"""Endurance in a non-default vhost: a durable queue and a log topic in ``orders`` past
several segment rolls, past the paging budget and past retention, then kill -9 and a
restart on the same data directory.

A vhost keeps its own store under ``<data>/vhosts/<name>/`` (docs/storage.md): what is
checked here is that its messages survive a crash there, once and in order, that they
never show up in the default vhost (which holds a queue and a topic of the same names),
and that its segments are deleted once everything in them is settled.
"""

from __future__ import annotations

import asyncio
import base64
import urllib.request
from pathlib import Path

from harness import SMALL_SEGMENT_BYTES, BrokerProcess, broker_process

import wharf

VHOST = "orders"
QUEUE = "soak.q"
TOPIC = "soak.log"
BARRIER_QUEUE = "soak.barrier"
# Each message is 2 KiB, so 1 MiB segments roll about every 500 messages: 2,400 messages
# fill about five segments.
BODY_PAD = b"." * 2048
BATCH = 40
BATCHES = 60
TOTAL = BATCH * BATCHES
# Acked before the crash, then held unacked (delivered) at the kill.
ACKED = 900
HELD = 100
# A budget this small pages every queue beyond its first few messages.
MEMORY_BUDGET_BYTES = 8192
# Log topic: tiny segments and a byte retention of a few segments, checked often.
LOG_SEGMENT_BYTES = 4096
LOG_RETENTION_BYTES = 16384
LOG_RECORDS = 1200
LOG_BATCH = 20
LOG_PAD = b"#" * 180
RETENTION_CHECK_MS = 50
# Whole reads of a topic retention may shorten meanwhile.
READ_ATTEMPTS = 20
POLL_S = 0.05
WAIT_S = 15.0
TIMEOUT_S = 15.0


def body(i: int) -> bytes:
    return b"m%06d|" % i + BODY_PAD


def http_put(bp: BrokerProcess, path: str) -> int:
    auth = base64.b64encode(b"guest:guest").decode()
    req = urllib.request.Request(
        f"http://127.0.0.1:{bp.http_port}{path}",
        method="PUT",
        headers={"Authorization": f"Basic {auth}"},
    )
    with urllib.request.urlopen(req, timeout=10) as resp:
        return int(resp.status)


def segments(data_dir: Path, vhost: str | None) -> list[str]:
    root = data_dir if vhost is None else data_dir / "vhosts" / vhost
    return sorted(p.name for p in (root / "messages").glob("*.seg"))


async def vhost_connect(bp: BrokerProcess) -> wharf.Connection:
    return await wharf.connect(f"{bp.url}/{VHOST}", timeout=10.0)


async def test_vhost_queue_past_rolls_and_paging_survives_kill_and_is_reclaimed(
    tmp_path: Path,
) -> None:
    data = tmp_path / "data"
    env = {
        "WHARF_SEGMENT_BYTES": str(SMALL_SEGMENT_BYTES),
        "WHARF_QUEUE_MEMORY_BUDGET_BYTES": str(MEMORY_BUDGET_BYTES),
    }
    async with broker_process(data, env=env) as bp:
        assert await asyncio.to_thread(http_put, bp, f"/api/vhosts/{VHOST}") in (201, 204)
        conn = await vhost_connect(bp)
        default = await bp.connect()
        # The same queue name in the default vhost, with messages of its own.
        await default.declare_queue(QUEUE, durable=True)
        await default.publish_many("", QUEUE, [b"default-1", b"default-2"], persistent=True)
        await conn.declare_queue(QUEUE, durable=True)
        for b in range(BATCHES):
            bodies = [body(b * BATCH + i) for i in range(BATCH)]
            # publish_many returns once the batch is confirmed: on disk.
            await conn.publish_many("", QUEUE, bodies, persistent=True)
        before_kill = segments(data, VHOST)
        assert len(before_kill) >= 4, before_kill  # several rolls happened
        # The long queue is paged: its memory stays bounded by the budget, not the backlog.
        info = await conn.declare_queue(QUEUE, passive=True)
        assert info.messages == TOTAL

        # Consume part: ack the first ACKED, hold the next HELD unacked.
        got: list[wharf.Message] = []
        for _ in range(ACKED + HELD):
            msg = await conn.get(QUEUE)
            assert msg is not None
            got.append(msg)
        assert [m.body for m in got] == [body(i) for i in range(ACKED + HELD)]
        for m in got[:ACKED]:
            await m.ack()
        # A confirmed publish on this connection: every ack before it is on disk.
        await conn.declare_queue(BARRIER_QUEUE, durable=True)
        await conn.publish("", BARRIER_QUEUE, b"barrier", persistent=True)
        await bp.kill()
        await conn.close()
        await default.close()

        await bp.start()
        conn = await vhost_connect(bp)
        default = await bp.connect()
        try:
            expected = [body(i) for i in range(ACKED, TOTAL)]
            info = await conn.declare_queue(QUEUE, passive=True)
            assert info.messages == len(expected)
            back: list[wharf.Message] = []
            async with asyncio.timeout(TIMEOUT_S):
                async with conn.consume(QUEUE, prefetch=200) as messages:
                    async for msg in messages:
                        back.append(msg)
                        await msg.ack()
                        if len(back) == len(expected):
                            break
            # Every confirmed, unacked message once, in publish order; only the held
            # ones flagged redelivered.
            assert [m.body for m in back] == expected
            assert all(m.redelivered for m in back[:HELD])
            assert not [m.body[:8] for m in back[HELD:] if m.redelivered]
            assert (await conn.declare_queue(QUEUE, passive=True)).messages == 0
            # The default vhost's queue of the same name kept its own two, no more.
            info = await default.declare_queue(QUEUE, passive=True)
            assert info.messages == 2
            msg = await default.get(QUEUE)
            assert msg is not None and msg.body == b"default-1"
            await msg.nack(requeue=True)

            # Fully consumed: every segment written before the crash is deleted (recovery
            # starts a fresh one for appends; bounded polling, deletion follows a commit).
            # The barrier settled too (it would pin its segment); each tick is a persistent
            # message taken and acked, so commits keep coming.
            assert await conn.purge_queue(BARRIER_QUEUE) == 1
            deadline = asyncio.get_running_loop().time() + WAIT_S
            while left := set(before_kill) & set(segments(data, VHOST)):
                assert asyncio.get_running_loop().time() < deadline, (
                    f"segments never reclaimed after a full consume: {sorted(left)}"
                )
                await conn.publish("", BARRIER_QUEUE, b"tick", persistent=True)
                tick = await conn.get(BARRIER_QUEUE)
                assert tick is not None
                await tick.ack()
                await asyncio.sleep(POLL_S)
            assert len(segments(data, VHOST)) <= 2, segments(data, VHOST)
        finally:
            await conn.close()
            await default.close()
        assert not bp.log_problems(), bp.log_problems()


async def read_all(conn: wharf.Connection, topic: str) -> tuple[int, list[wharf.Record]]:
    """(earliest, every record from it): read again from the start when retention
    deletes a segment while it reads (it runs on its interval)."""
    for _ in range(READ_ATTEMPTS):
        earliest, latest = await conn.list_offsets(topic, 0)
        out: list[wharf.Record] = []
        offset = earliest
        try:
            while offset < latest:
                recs = await conn.fetch(topic, 0, offset, max_bytes=1 << 20)
                out += recs
                offset = recs[-1].offset + 1
        except wharf.OffsetOutOfRange:
            continue
        return earliest, out
    raise AssertionError(f"retention moved {topic} under every one of {READ_ATTEMPTS} reads")


def log_value(i: int) -> bytes:
    return b"r%06d|" % i + LOG_PAD


async def test_vhost_log_topic_past_rolls_and_retention_survives_kill(tmp_path: Path) -> None:
    data = tmp_path / "data"
    env = {"WHARF_LOG_RETENTION_CHECK_INTERVAL_MS": str(RETENTION_CHECK_MS)}
    async with broker_process(data, env=env) as bp:
        assert await asyncio.to_thread(http_put, bp, f"/api/vhosts/{VHOST}") in (201, 204)
        conn = await vhost_connect(bp)
        default = await bp.connect()
        await default.create_topic(TOPIC, partitions=1)
        await default.produce_many(TOPIC, [b"default"], partition=0, acks="fsynced")
        await conn.create_topic(
            TOPIC,
            partitions=1,
            segment_bytes=LOG_SEGMENT_BYTES,
            retention_bytes=LOG_RETENTION_BYTES,
        )
        for first in range(0, LOG_RECORDS, LOG_BATCH):
            values = [log_value(i) for i in range(first, first + LOG_BATCH)]
            _, base = await conn.produce_many(TOPIC, values, partition=0, acks="fsynced")
            assert base == first
        # Retention deletes the oldest closed segments (bounded polling: it runs on its
        # interval).
        async with asyncio.timeout(WAIT_S):
            while (await conn.list_offsets(TOPIC, 0))[0] == 0:  # noqa: ASYNC110 (polling)
                await asyncio.sleep(POLL_S)
        earliest_before, recs = await read_all(conn, TOPIC)
        assert [r.offset for r in recs] == list(range(earliest_before, LOG_RECORDS))
        logs_dir = data / "vhosts" / VHOST / "logs"
        assert list(logs_dir.rglob("*.log")), "the vhost's topic lives in its own directory"
        await bp.kill()
        await conn.close()
        await default.close()

        await bp.start()
        conn = await vhost_connect(bp)
        default = await bp.connect()
        try:
            earliest, recs = await read_all(conn, TOPIC)
            # Nothing retention deleted comes back, and every kept record is there once.
            assert earliest >= earliest_before > 0
            assert [r.offset for r in recs] == list(range(earliest, LOG_RECORDS))
            assert [r.value for r in recs] == [log_value(i) for i in range(earliest, LOG_RECORDS)]
            # Produce continues at the next offset, and retention keeps running.
            _, base = await conn.produce_many(TOPIC, [log_value(LOG_RECORDS)], partition=0)
            assert base == LOG_RECORDS
            # The default vhost's topic of the same name holds its one record only.
            _, other = await read_all(default, TOPIC)
            assert [r.value for r in other] == [b"default"]
        finally:
            await conn.close()
            await default.close()
        assert not bp.log_problems(), bp.log_problems()
