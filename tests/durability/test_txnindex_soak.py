"""``.txnindex`` files past many segment rolls and retention deletes, then restarts.

A topic with 1 KiB segments and a small ``retention_bytes`` gets hundreds of
transactions, committed and aborted in turn, from two transactional producers: every
few records roll a segment, each ABORT marker puts an entry in its segment's
``.txnindex``, and retention deletes old segments every 100 ms.  Then:

- every ``.txnindex`` belongs to a segment that still exists (they go together), and
  the broker's open fds after the soak are no more than before it (plus a small
  allowance): no leaked files or descriptors;
- read-committed readers see exactly the committed records still retained, none of an
  aborted transaction, before and after a restart (SIGTERM and kill -9);
- with one ``.txnindex`` deleted and another truncated while the broker is down, the
  next start rebuilds both from their segments' markers and reads stay right.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Final

from harness import BrokerProcess, broker_process

import wharf

TOPIC: Final = "txi"
PARTITIONS: Final = 2
SEGMENT_BYTES: Final = 1024
RETENTION_BYTES: Final = 16 * 1024  # per partition: about 16 segments kept
TRANSACTIONS: Final = 200
PAD: Final = b"." * 200  # a few records per 1 KiB segment
ENV: Final = {"WHARF_LOG_RETENTION_CHECK_INTERVAL_MS": "100"}
# Sockets and transient worker-thread fds that may differ between two counts.
FD_ALLOWANCE: Final = 8
EMPTY_TXNINDEX_BYTES: Final = 5  # the CRC and an empty msgpack array
POLL_S: Final = 0.05
SETTLE_TIMEOUT_S: Final = 30.0


def broker_fds(bp: BrokerProcess) -> int:
    return len(fd_targets(bp))


def fd_targets(bp: BrokerProcess) -> list[str]:
    assert bp.proc is not None
    out = []
    for fd in os.listdir(f"/proc/{bp.proc.pid}/fd"):
        try:
            out.append(os.readlink(f"/proc/{bp.proc.pid}/fd/{fd}"))
        except FileNotFoundError:
            pass
    return sorted(out)


def check_fds(bp: BrokerProcess, fds_before: int) -> None:
    """No fd of a deleted file, none of a .txnindex (read whole and closed), and beyond
    the count before the soak only the segments still there (the broker keeps up to
    ``log_max_open_segments`` of them open)."""
    targets = fd_targets(bp)
    deleted = [t for t in targets if t.endswith("(deleted)")]
    assert not deleted, deleted[:5]
    assert not [t for t in targets if ".txnindex" in t]
    segments = [t for t in targets if t.endswith(".log") and "/logs/" in t]
    assert all(Path(t).exists() for t in segments)
    assert len(targets) <= fds_before + len(segments) + FD_ALLOWANCE, "\n".join(targets)


def partition_dir(bp: BrokerProcess, part: int) -> Path:
    return bp.data_dir / "logs" / TOPIC / str(part)


def files(bp: BrokerProcess, part: int, suffix: str) -> set[str]:
    return {p.stem for p in partition_dir(bp, part).glob(f"*{suffix}")}


async def read(conn: wharf.Connection, part: int, isolation: str) -> list[bytes]:
    earliest, _ = await conn.list_offsets(TOPIC, part)
    out: list[bytes] = []
    offset = earliest
    while True:
        recs = await conn.fetch(TOPIC, part, offset, max_bytes=1 << 20, isolation_level=isolation)
        if not recs:
            return out
        out += [r.value or b"" for r in recs]
        offset = recs[-1].offset + 1


async def check_reads(conn: wharf.Connection, committed: set[bytes], aborted: set[bytes]) -> int:
    """Read-committed sees exactly the retained committed records; returns how many."""
    visible_total = 0
    for part in range(PARTITIONS):
        everything = await read(conn, part, "read_uncommitted")
        visible = await read(conn, part, "read_committed")
        assert len(visible) == len(set(visible))
        assert not set(visible) & aborted, sorted(set(visible) & aborted)[:3]
        retained_committed = [v for v in everything if v in committed]
        assert visible == retained_committed, (part, len(visible), len(retained_committed))
        desc = (await conn.describe_topic(TOPIC))["offsets"][part]
        assert desc["last_stable"] == desc["latest"], desc
        visible_total += len(visible)
    return visible_total


def check_files_go_together(bp: BrokerProcess, stopped: bool = True) -> int:
    """Every .txnindex has its segment, and a stopped broker left no temp file; returns
    how many .txnindex files there are."""
    n = 0
    for part in range(PARTITIONS):
        txnindex = files(bp, part, ".txnindex")
        logs = files(bp, part, ".log")
        assert txnindex <= logs, sorted(txnindex - logs)[:5]
        if stopped:
            assert not list(partition_dir(bp, part).glob("*.tmp"))
        n += len(txnindex)
    return n


async def wait_for_retention(conn: wharf.Connection) -> None:
    """Until retention brought every partition down to its bytes limit (bounded)."""
    for _ in range(int(SETTLE_TIMEOUT_S / POLL_S)):
        offsets = (await conn.describe_topic(TOPIC))["offsets"]
        if all(o["bytes"] <= RETENTION_BYTES + 2 * SEGMENT_BYTES for o in offsets):
            return
        await asyncio.sleep(POLL_S)
    raise AssertionError(f"retention never caught up: {offsets}")


async def test_txnindex_files_follow_their_segments_through_rolls_retention_and_damage(
    tmp_path: Path,
) -> None:
    async with broker_process(tmp_path / "data", env=ENV, budget_s=240.0) as bp:
        conn = await bp.connect()
        await conn.create_topic(
            TOPIC, PARTITIONS, segment_bytes=SEGMENT_BYTES, retention_bytes=RETENTION_BYTES
        )
        producers = [conn.transactional_producer(f"txi-{i}") for i in range(2)]
        # A first transaction of each, then the fd count the soak must not grow.
        committed: set[bytes] = set()
        aborted: set[bytes] = set()
        for i, p in enumerate(producers):
            async with p.transaction():
                for part in range(PARTITIONS):
                    v = b"warm-%d-%d|" % (i, part) + PAD
                    await p.produce(TOPIC, v, partition=part)
                    committed.add(v)
        fds_before = broker_fds(bp)
        first_segments = {part: files(bp, part, ".log") for part in range(PARTITIONS)}

        async def run(i: int, p: wharf.TransactionalProducer) -> None:
            for n in range(TRANSACTIONS):
                values = [b"p%d-t%d-r%d|" % (i, n, r) + PAD for r in range(3)]
                await p.begin()
                for r, v in enumerate(values):
                    await p.produce(TOPIC, v, partition=(n + r) % PARTITIONS)
                if n % 3 == 0:
                    await p.abort()
                    aborted.update(values)
                else:
                    await p.commit()
                    committed.update(values)

        await asyncio.gather(*(run(i, p) for i, p in enumerate(producers)))
        await wait_for_retention(conn)
        # Retention stops here, so that the reads below compare the same records.
        await conn.alter_topic(TOPIC, retention_bytes=-1)
        for part in range(PARTITIONS):
            gone = first_segments[part] - files(bp, part, ".log")
            assert gone, f"partition {part}: retention deleted no segment"
        assert check_files_go_together(bp, stopped=False) > 0
        assert await check_reads(conn, committed, aborted) > 0
        check_fds(bp, fds_before)

        # Restarts: graceful, then kill -9.
        await conn.close()
        assert await bp.terminate() == 0
        check_files_go_together(bp)
        await bp.start()
        conn = await bp.connect()
        await check_reads(conn, committed, aborted)
        check_fds(bp, fds_before)
        await conn.close()
        await bp.kill()
        check_files_go_together(bp)

        # Damage: one .txnindex deleted, another cut short; the start rebuilds them.
        damaged: dict[Path, bytes] = {}
        for part in range(PARTITIONS):
            indexes = sorted(partition_dir(bp, part).glob("*.txnindex"))
            with_entries = [p for p in indexes if p.stat().st_size > EMPTY_TXNINDEX_BYTES]
            assert len(with_entries) >= 2, indexes
            gone, cut = with_entries[0], with_entries[-1]
            damaged[gone] = gone.read_bytes()
            damaged[cut] = cut.read_bytes()
            gone.unlink()
            os.truncate(cut, cut.stat().st_size // 2)
        await bp.start()
        conn = await bp.connect()
        await check_reads(conn, committed, aborted)
        await conn.close()
        assert await bp.terminate() == 0
        for path, before in damaged.items():  # rebuilt from the segment's markers
            assert path.exists() and path.read_bytes() == before, path
        check_files_go_together(bp)
        await bp.start()
        conn = await bp.connect()
        await check_reads(conn, committed, aborted)
        await conn.close()
        assert not bp.log_problems(), bp.log_problems()[:5]
