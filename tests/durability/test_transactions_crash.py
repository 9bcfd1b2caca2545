"""Transactions across kill -9 and simulated power loss (docs/logs.md, "Transactions").

- A commit whose PrepareCommit reached the transaction log (the broker halts right
  after it: ``WHARF_TEST_HALT_AT=txn-prepared``) and is then killed is committed by the
  restarted broker: its records become visible to read-committed readers and its
  ``send_offsets`` offsets are committed.  The same once ``commit()`` was answered, with
  the markers appended but not fsynced (``txn-answered``; a power loss cuts them) and
  once they are (``txn-marked``), and with the files cut back to what was fsynced.
- A transaction killed while Ongoing is aborted at restart: read-committed readers never
  see its records, the last stable offset is the log end again, and its offsets are not
  committed.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Callable
from pathlib import Path

import pytest
from harness import broker_process

import wharf

IN = "txn.in"
OUT = "txn.out"
GROUP = "txn-pipeline"
HALT_LINE_TIMEOUT_S = 20.0
POLL_S = 0.02


def lose_power(data_dir: Path, sync_log: Path) -> int:
    """Cut every file of the log topics, the offsets log and the transaction log back
    to its last fsynced length (deleting files never fsynced, but keeping empty segment
    logs), as a machine that lost power would find them.  Returns the bytes cut.

    The offsets and transaction logs are rewritten shorter when they compact: their
    last line in the sync log wins (one writer at a time each).  Segments only grow,
    and two worker threads may report their fsyncs out of order: the longest wins."""
    synced: dict[str, int] = {}
    if sync_log.exists():
        for line in sync_log.read_text().splitlines(keepends=True):
            if line.endswith("\n"):
                path, _, length = line.strip().rpartition(" ")
                if "/logs-internal/" in path:
                    synced[path] = int(length)
                else:
                    synced[path] = max(synced.get(path, 0), int(length))
    cut = 0
    for root in (data_dir / "logs", data_dir / "logs-internal"):
        for f in sorted(root.rglob("*")):
            if not f.is_file() or ".torn-" in f.name or f.name.endswith(".json"):
                continue
            size = f.stat().st_size
            length = synced.get(str(f))
            if length is None and f.suffix != ".log":
                f.unlink()
                cut += size
            elif (length or 0) < size:
                os.truncate(f, length or 0)
                cut += size - (length or 0)
    lines = [
        f"{f} {f.stat().st_size}\n"
        for root in (data_dir / "logs", data_dir / "logs-internal")
        for f in sorted(root.rglob("*"))
        if f.is_file()
    ]
    sync_log.write_text("".join(lines))
    return cut


async def wait_for_line(output: Callable[[], str], text: str) -> None:
    for _ in range(int(HALT_LINE_TIMEOUT_S / POLL_S)):  # bounded polling of the log
        if text in output():
            return
        await asyncio.sleep(POLL_S)
    raise AssertionError(f"the broker never logged {text!r}")


async def committed_values(conn: wharf.Connection, topic: str) -> list[bytes | None]:
    return [r.value for r in await conn.fetch(topic, 0, 0, isolation_level="read_committed")]


@pytest.mark.parametrize(
    ("halt_at", "power_loss", "answered"),
    [
        ("txn-prepared", False, False),
        ("txn-prepared", True, False),
        # commit() returned; the markers are appended but not fsynced (a power loss
        # drops them), then once they are.
        ("txn-answered", False, True),
        ("txn-answered", True, True),
        ("txn-marked", False, True),
    ],
)
async def test_a_prepared_commit_is_completed_after_a_crash(
    tmp_path: Path, halt_at: str, power_loss: bool, answered: bool
) -> None:
    data_dir = tmp_path / "data"
    sync_log = tmp_path / "sync.log"
    env = {"WHARF_TEST_HALT_AT": halt_at, "WHARF_TEST_SYNC_LOG": str(sync_log)}
    async with broker_process(data_dir, env=env) as bp:
        conn = await bp.connect()
        await conn.create_topic(IN, 1)
        await conn.create_topic(OUT, 2)
        await conn.produce_many(IN, [b"a", b"b", b"c"], partition=0)
        p = conn.transactional_producer("crash-commit")
        await p.begin()
        await p.produce_many(OUT, [b"A", b"B"], partition=0)
        await p.produce(OUT, b"C", partition=1)
        await p.send_offsets(GROUP, {(IN, 0): 3})
        commit = asyncio.create_task(p.commit())
        await wait_for_line(bp.output, f"halting at {halt_at}")
        if answered:
            await commit  # answered once PrepareCommit is durable, markers or not
            assert await committed_values(conn, OUT) == [b"A", b"B"]
            assert await conn.committed_offsets(GROUP) == {(IN, 0): 3}
        else:
            assert not commit.done()
        await bp.kill()
        with contextlib.suppress(wharf.WharfError):
            await commit
        if power_loss:
            lose_power(bp.data_dir, sync_log)
        bp.extra_env.pop("WHARF_TEST_HALT_AT")
        await bp.start()
        conn = await bp.connect()
        await _first_committed_then_next(conn, "crash-commit", b"D")
        assert not bp.log_problems(), bp.log_problems()


async def _first_committed_then_next(conn: wharf.Connection, tid: str, value: bytes) -> None:
    """After recovery: the transaction of A, B (partition 0), C (partition 1) and the
    offset 3 is committed, every LSO is at its partition's end, and the producer goes on
    with a new epoch (``value`` committed after A, B)."""
    assert await committed_values(conn, OUT) == [b"A", b"B"]
    recs = await conn.fetch(OUT, 1, 0, isolation_level="read_committed")
    assert [r.value for r in recs] == [b"C"]
    assert await conn.committed_offsets(GROUP) == {(IN, 0): 3}
    for part in (0, 1):
        desc = (await conn.describe_topic(OUT))["offsets"][part]
        assert desc["last_stable"] == desc["latest"]
    p2 = conn.transactional_producer(tid)
    async with p2.transaction():
        await p2.produce(OUT, value, partition=0)
    assert await committed_values(conn, OUT) == [b"A", b"B", value]


@pytest.mark.parametrize("power_loss", [False, True])
async def test_an_ongoing_transaction_is_aborted_after_a_crash(
    tmp_path: Path, power_loss: bool
) -> None:
    data_dir = tmp_path / "data"
    sync_log = tmp_path / "sync.log"
    async with broker_process(data_dir, env={"WHARF_TEST_SYNC_LOG": str(sync_log)}) as bp:
        conn = await bp.connect()
        await conn.create_topic(IN, 1)
        await conn.create_topic(OUT, 1)
        await conn.produce(OUT, b"before", partition=0, acks="fsynced")
        p = conn.transactional_producer("crash-ongoing")
        await p.begin()
        await p.produce_many(OUT, [b"x", b"y"], partition=0, acks="fsynced")
        await p.send_offsets(GROUP, {(IN, 0): 9})
        await conn.produce(OUT, b"after", partition=0, acks="fsynced")
        desc = (await conn.describe_topic(OUT))["offsets"][0]
        assert desc["last_stable"] == 1
        await bp.kill()
        if power_loss:
            lose_power(bp.data_dir, sync_log)
        await bp.start()
        conn = await bp.connect()
        assert await committed_values(conn, OUT) == [b"before", b"after"]
        uncommitted = await conn.fetch(OUT, 0, 0)
        assert [r.value for r in uncommitted] == [b"before", b"x", b"y", b"after"]
        desc = (await conn.describe_topic(OUT))["offsets"][0]
        # before 0, x 1, y 2, after 3, the ABORT marker written at recovery 4.
        assert desc["last_stable"] == desc["latest"] == 5
        assert await conn.committed_offsets(GROUP) == {}
        assert not bp.log_problems(), bp.log_problems()


@pytest.mark.parametrize("power_loss", [False, True])
async def test_the_next_transaction_begins_before_the_markers_are_durable(
    tmp_path: Path, power_loss: bool
) -> None:
    """commit() returned, its markers are not fsynced (the broker halts that step), and
    the producer's next transaction writes its first record and batches meanwhile.  After
    kill -9 (and a power loss, which cuts the markers and the new batches) the first
    transaction is committed, the second aborted."""
    data_dir = tmp_path / "data"
    sync_log = tmp_path / "sync.log"
    env = {"WHARF_TEST_HALT_AT": "txn-answered", "WHARF_TEST_SYNC_LOG": str(sync_log)}
    async with broker_process(data_dir, env=env) as bp:
        conn = await bp.connect()
        await conn.create_topic(IN, 1)
        await conn.create_topic(OUT, 2)
        p = conn.transactional_producer("crash-next")
        await p.begin()
        await p.produce_many(OUT, [b"A", b"B"], partition=0)
        await p.produce(OUT, b"C", partition=1)
        await p.send_offsets(GROUP, {(IN, 0): 3})
        await p.commit()
        await wait_for_line(bp.output, "halting at txn-answered")
        await p.begin()
        await p.produce(OUT, b"D", partition=0)  # its partition is part of it: logged
        await p.produce(OUT, b"E", partition=1)
        await bp.kill()
        if power_loss:
            assert lose_power(bp.data_dir, sync_log) > 0
        bp.extra_env.pop("WHARF_TEST_HALT_AT")
        await bp.start()
        conn = await bp.connect()
        await _first_committed_then_next(conn, "crash-next", b"F")
        assert not bp.log_problems(), bp.log_problems()


async def test_a_prepared_commit_whose_records_were_lost_is_aborted(tmp_path: Path) -> None:
    """The records and PrepareCommit are fsynced at the same time.  Power lost when
    PrepareCommit was durable but the records were not (the sync log is cut back to
    before them, as if their fsync never completed): commit() was never answered, and
    recovery aborts the transaction instead of committing what is left of it."""
    data_dir = tmp_path / "data"
    sync_log = tmp_path / "sync.log"
    env = {"WHARF_TEST_HALT_AT": "txn-prepared", "WHARF_TEST_SYNC_LOG": str(sync_log)}
    async with broker_process(data_dir, env=env) as bp:
        conn = await bp.connect()
        await conn.create_topic(IN, 1)
        await conn.create_topic(OUT, 1)
        await conn.produce(OUT, b"before", partition=0, acks="fsynced")
        segment = next((bp.data_dir / "logs" / OUT / "0").glob("*.log"))
        synced_before = segment.stat().st_size
        p = conn.transactional_producer("crash-lost")
        await p.begin()
        await p.produce_many(OUT, [b"x", b"y"], partition=0)
        await p.send_offsets(GROUP, {(IN, 0): 9})
        commit = asyncio.create_task(p.commit())
        await wait_for_line(bp.output, "halting at txn-prepared")
        assert not commit.done()
        await bp.kill()
        with contextlib.suppress(wharf.WharfError):
            await commit
        lines = sync_log.read_text().splitlines(keepends=True)
        kept = [ln for ln in lines if not ln.startswith(f"{segment} ")]
        sync_log.write_text("".join([*kept, f"{segment} {synced_before}\n"]))
        assert lose_power(bp.data_dir, sync_log) > 0
        bp.extra_env.pop("WHARF_TEST_HALT_AT")
        await bp.start()
        conn = await bp.connect()
        assert await committed_values(conn, OUT) == [b"before"]
        assert await conn.committed_offsets(GROUP) == {}
        desc = (await conn.describe_topic(OUT))["offsets"][0]
        assert desc["last_stable"] == desc["latest"] == 1
        assert not bp.log_problems(), bp.log_problems()
