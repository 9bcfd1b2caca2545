"""Simulated power loss: after kill -9, segments lose everything that was not fsynced.

The broker runs with ``WHARF_TEST_SYNC_LOG``, so it logs every fsynced segment
length; after each kill the harness cuts every segment back to the last logged
length and deletes segments that were never fsynced, as a machine that lost power
would find them.  A confirm means "fsynced", so every confirmed message must still be
delivered.  Also here: torn and corrupt records are cut off at recovery and the cut
bytes are kept in a side file.

``WHARF_POWER_LOSS_CYCLES`` sets the number of cycles (default 6), ``WHARF_CRASH_SEED``
the seed.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from harness import (
    BrokerProcess,
    CrashLoop,
    broker_process,
    crash_config_from_env,
    crash_loop_timeout_s,
    describe_failure,
    read_sync_log,
    segment_files,
    simulate_power_loss,
)

from wharf.broker.store.records import HEADER_BYTES, MSGS, encode_record, scan

DEFAULT_CYCLES = 6
DEFAULT_SEED = 19_700_101


@pytest.mark.timeout(crash_loop_timeout_s("WHARF_POWER_LOSS_CYCLES", DEFAULT_CYCLES))
async def test_power_loss_loses_no_confirmed_message(tmp_path: Path) -> None:
    config = crash_config_from_env(
        "WHARF_POWER_LOSS_CYCLES", DEFAULT_CYCLES, DEFAULT_SEED, power_loss=True
    )
    report = await CrashLoop(tmp_path, config).run()
    assert report.cycles == config.cycles
    assert not report.failures(), describe_failure(report)
    totals = report.ledger.totals()
    assert totals["confirmed"] > 0, describe_failure(report)
    assert totals["drained_never_delivered_before"] > 0, describe_failure(report)
    assert totals["lost"] == 0
    print(report.summary())


# -- torn and corrupt records ------------------------------------------------------------


async def publish_batches(bp: BrokerProcess, queue: str, batches: int, size: int) -> list[bytes]:
    """``batches`` confirmed publish_many calls (one MSGS record each); returns the bodies."""
    conn = await bp.connect()
    try:
        await conn.declare_queue(queue, durable=True)
        bodies: list[bytes] = []
        for b in range(batches):
            batch = [f"b{b}-m{i}".encode() for i in range(size)]
            await conn.publish_many("", queue, batch, persistent=True)
            bodies += batch
        return bodies
    finally:
        await conn.close()


async def drain(bp: BrokerProcess, queue: str) -> list[bytes]:
    conn = await bp.connect()
    try:
        out: list[bytes] = []
        while (msg := await conn.get(queue)) is not None:
            out.append(msg.body)
            await msg.ack()
        return out
    finally:
        await conn.close()


def side_files(data_dir: Path) -> list[Path]:
    return sorted((data_dir / "messages").glob("*.seg.cut-*"))


def last_written_segment(data_dir: Path) -> Path:
    segments = [s for s in segment_files(data_dir) if s.stat().st_size > 0]
    assert segments, "no segment holds data"
    return segments[-1]


async def test_torn_tail_is_cut_and_kept_in_a_side_file(tmp_path: Path) -> None:
    data = tmp_path / "data"
    async with broker_process(data) as bp:
        bodies = await publish_batches(bp, "d.q", 4, 5)
        await bp.kill()
        seg = last_written_segment(data)
        size = seg.stat().st_size
        # A record whose write was cut short by the crash: header and part of the body.
        torn = encode_record(MSGS, [1, 10_000, "", "d.q", None, [b"torn" * 50], 0, 0])[:-17]
        with seg.open("ab") as f:
            f.write(torn)
        await bp.start()
        assert seg.stat().st_size == size
        (side,) = side_files(data)
        assert side.name.startswith(seg.name + ".cut-")
        assert side.read_bytes() == torn
        log = bp.output()
        assert f"truncated {len(torn)} bytes" in log and seg.name in log, log
        assert await drain(bp, "d.q") == bodies
        # Nothing more to cut on the next start.
        await bp.restart("sigterm")
        assert len(side_files(data)) == 1
        assert "truncated" not in bp.output()


async def test_a_corrupt_record_is_cut_with_everything_after_it(tmp_path: Path) -> None:
    """Recovery never uses a record after a bad one: the rest of the segment goes to the
    side file (and the log says so) instead of being skipped silently."""
    data = tmp_path / "data"
    async with broker_process(data) as bp:
        bodies = await publish_batches(bp, "d.q", 3, 5)
        await bp.kill()
        seg = last_written_segment(data)
        with seg.open("rb") as f:
            records = scan(f).records
        msgs = [r for r in records if r.rtype == MSGS]
        assert len(msgs) == 3
        bad = msgs[1].offset
        raw = bytearray(seg.read_bytes())
        original_tail = bytes(raw[bad:])
        raw[bad + HEADER_BYTES + 3] ^= 0xFF  # one flipped bit pattern inside the payload
        seg.write_bytes(bytes(raw))
        await bp.start()
        log = bp.output()
        assert "checksum mismatch" in log and seg.name in log, log
        assert seg.stat().st_size == bad
        (side,) = side_files(data)
        cut = side.read_bytes()
        assert len(cut) == len(original_tail)
        assert cut[HEADER_BYTES + 4 :] == original_tail[HEADER_BYTES + 4 :]
        # The first batch survives; the corrupt one and the one after it were cut.
        assert await drain(bp, "d.q") == bodies[:5]


async def test_sync_log_covers_every_confirmed_message(tmp_path: Path) -> None:
    """The power-loss simulation itself: after a kill -9 right after a confirm, the
    fsynced prefix of the segments holds every confirmed message."""
    data = tmp_path / "data"
    sync_log = tmp_path / "sync.log"
    async with broker_process(data, env={"WHARF_TEST_SYNC_LOG": str(sync_log)}) as bp:
        bodies = await publish_batches(bp, "d.q", 20, 7)
        await bp.kill()
        synced = read_sync_log(sync_log)
        for seg in segment_files(data):
            if seg.name in synced:
                assert synced[seg.name] <= seg.stat().st_size
        loss = simulate_power_loss(data, sync_log)
        # The rewritten log names exactly the files the simulation left, at their sizes.
        assert read_sync_log(sync_log) == {s.name: s.stat().st_size for s in segment_files(data)}
        await bp.start()
        assert await drain(bp, "d.q") == bodies, loss
