"""Log topics across kill -9 and simulated power loss during produce.

Producer connections append batches of uniquely numbered records to a topic with
small segments (so segments roll, and index files and producer snapshots are
written, while the broker dies); each cycle kills the broker with SIGKILL at a
random moment (seeded) and restarts it on the same data directory.  Judged after
every restart, from what the clients were told:

- kill -9: every batch acknowledged (acks "written" or "fsynced") is there, at the
  offsets its reply gave, once;
- power loss (``WHARF_TEST_SYNC_LOG``; files cut back to what was fsynced, see
  ``lose_power``): every batch acknowledged as "fsynced" is there, at its offsets;
- in both, offsets run without gaps from 0 and no record is invented or repeated;
- an idempotent producer's last acknowledged batch, sent again after the restart,
  is answered as a duplicate with its original offset, and not appended again.

``WHARF_LOG_CRASH_CYCLES`` sets the number of cycles (default 4), ``WHARF_CRASH_SEED``
the seed.
"""

from __future__ import annotations

import asyncio
import os
import random
from dataclasses import dataclass, field
from pathlib import Path

from harness import SEED_ENV, BrokerProcess, broker_process

import wharf
from wharf.protocol import frames as F
from wharf.protocol.records import encode_values

from ..helpers import FrameClient

TOPIC = "crash.log"
PARTITIONS = 2
SEGMENT_BYTES = 16 * 1024
PRODUCERS = 4
MAX_BATCH = 20
PAD_BYTES = 60
DEFAULT_CYCLES = 4
DEFAULT_SEED = 7_070_707
KILL_AFTER_S = (0.3, 1.0)
CLIENT_EXIT_TIMEOUT_S = 15.0
# Files whose content is only durable once fsynced (the rest are written atomically).
DURABLE_SUFFIXES = (".log", ".index", ".timeindex", ".snapshot")


@dataclass
class Ledger:
    # (partition, offset) -> value, for every record of an acknowledged batch.
    acked: dict[tuple[int, int], bytes] = field(default_factory=dict)
    fsynced: set[tuple[int, int]] = field(default_factory=set)
    errors: list[str] = field(default_factory=list)
    sent_batches: int = 0

    def add(self, partition: int, base: int, values: list[bytes], fsynced: bool) -> None:
        for i, v in enumerate(values):
            self.acked[(partition, base + i)] = v
            if fsynced:
                self.fsynced.add((partition, base + i))


async def read_partition(conn: wharf.Connection, partition: int) -> list[wharf.Record]:
    out: list[wharf.Record] = []
    offset, latest = await conn.list_offsets(TOPIC, partition)
    while offset < latest:
        recs = await conn.fetch(TOPIC, partition, offset, max_bytes=4 << 20)
        out += recs
        offset = recs[-1].offset + 1
    return out


async def producer(
    n: int, conn: wharf.Connection, ledger: Ledger, rng: random.Random, seq: list[int]
) -> None:
    while True:
        count = rng.randint(1, MAX_BATCH)
        partition = rng.randrange(PARTITIONS)
        acks = rng.choice(("written", "fsynced"))
        first = seq[n]
        seq[n] = first + count
        pad = b"." * rng.randint(0, PAD_BYTES)
        values = [b"p%d-%d|%s" % (n, i, pad) for i in range(first, first + count)]
        ledger.sent_batches += 1
        try:
            p, base = await conn.produce_many(TOPIC, values, partition=partition, acks=acks)
        except (wharf.ConnectionLost, wharf.ConnectionForced):
            return
        except wharf.WharfError as exc:
            ledger.errors.append(f"producer {n}: {exc!r}")
            return
        ledger.add(p, base, values, acks == "fsynced")


def lose_power(data_dir: Path, sync_log: Path) -> int:
    """Cut every log file back to its last fsynced length (a segment never fsynced to
    0 bytes; an index or snapshot never fsynced is deleted), as a machine that lost
    power would find them.  Returns the bytes cut."""
    synced: dict[str, int] = {}
    if sync_log.exists():
        for line in sync_log.read_text().splitlines(keepends=True):
            if line.endswith("\n"):
                path, _, length = line.strip().rpartition(" ")
                # Segments only grow, and fsyncs of one segment can finish in any
                # order (a roll's and a produce's): the durable length is the largest.
                synced[path] = max(synced.get(path, 0), int(length))
    cut = 0
    for f in sorted((data_dir / "logs").rglob("*")):
        if not f.is_file() or f.suffix not in DURABLE_SUFFIXES:
            continue
        size = f.stat().st_size
        length = synced.get(str(f))
        if length is None and f.suffix != ".log":
            f.unlink()
            cut += size
        elif (length or 0) < size:
            os.truncate(f, length or 0)
            cut += size - (length or 0)
    # From now on, what is on disk is durable.
    lines = [
        f"{f} {f.stat().st_size}\n"
        for f in sorted((data_dir / "logs").rglob("*"))
        if f.is_file() and f.suffix in DURABLE_SUFFIXES
    ]
    sync_log.write_text("".join(lines))
    return cut


async def check(conn: wharf.Connection, ledger: Ledger, power_loss: bool) -> int:
    """Everything the clients were promised is there; returns the records found."""
    found = 0
    seen: set[bytes] = set()
    latest: dict[int, int] = {}
    for p in range(PARTITIONS):
        recs = await read_partition(conn, p)
        latest[p] = len(recs)
        assert [r.offset for r in recs] == list(range(len(recs))), f"gap in partition {p}"
        for r in recs:
            assert r.value is not None and r.value not in seen, f"repeated {r.value!r}"
            seen.add(r.value)
        by_offset = {r.offset: r.value for r in recs}
        for (part, off), value in ledger.acked.items():
            if part != p:
                continue
            if power_loss and (part, off) not in ledger.fsynced:
                continue
            assert by_offset.get(off) == value, f"acked record {p}/{off} lost or changed"
        found += len(recs)
    # Records written but not acknowledged, or acknowledged only as written before a
    # power loss, may be gone; the next cycle must not promise them again.
    for key in [k for k in ledger.acked if k[1] >= latest[k[0]]]:
        del ledger.acked[key]
        ledger.fsynced.discard(key)
    return found


async def run_cycles(tmp_path: Path, *, power_loss: bool) -> None:
    cycles = int(os.environ.get("WHARF_LOG_CRASH_CYCLES", DEFAULT_CYCLES))
    rng = random.Random(int(os.environ.get(SEED_ENV, DEFAULT_SEED)) + power_loss)
    data_dir = tmp_path / "data"
    sync_log = tmp_path / "sync.log"
    env = {"WHARF_TEST_SYNC_LOG": str(sync_log)} if power_loss else {}
    ledger = Ledger()
    seq = [0] * PRODUCERS
    async with broker_process(data_dir, env=env, budget_s=40.0 + 20.0 * cycles) as bp:
        conn = await bp.connect()
        await conn.create_topic(TOPIC, partitions=PARTITIONS, segment_bytes=SEGMENT_BYTES)
        await conn.close()
        pid, last = await idempotent_batch(bp, None)
        for cycle in range(cycles):
            conns = [await bp.connect() for _ in range(PRODUCERS)]
            tasks = [
                asyncio.create_task(producer(n, conns[n], ledger, random.Random(rng.random()), seq))
                for n in range(PRODUCERS)
            ]
            await asyncio.sleep(rng.uniform(*KILL_AFTER_S))  # the moment of the crash
            await bp.kill()
            async with asyncio.timeout(CLIENT_EXIT_TIMEOUT_S):
                await asyncio.gather(*tasks)
            for c in conns:
                await c.close()
            if power_loss:
                lose_power(data_dir, sync_log)
            await bp.start()
            conn = await bp.connect()
            try:
                found = await check(conn, ledger, power_loss)
            finally:
                await conn.close()
            assert not ledger.errors, ledger.errors
            assert found > 0, f"cycle {cycle}: nothing was produced"
            assert not bp.log_problems(), bp.log_problems()
            pid, last = await idempotent_batch(bp, (pid, last))
    assert ledger.fsynced, "no batch was acknowledged as fsynced"


async def idempotent_batch(
    bp: BrokerProcess, previous: tuple[int, tuple[int, int, bytes]] | None
) -> tuple[int, tuple[int, int, bytes]]:
    """Resend the previous cycle's last idempotent batch (acked as fsynced): it must
    be a duplicate at its original offset.  Then send the next one."""
    conn = await FrameClient.open(bp.port)
    try:
        if previous is None:
            frame = await conn.request(F.INIT_PRODUCER)
            pid, seq = int(frame[2]["producer_id"]), 0
        else:
            pid, (seq, base, payload) = previous
            frame = await conn.request(F.PRODUCE, TOPIC, 0, payload, 0, "fsynced", pid, 0, seq)
            assert frame[2]["duplicate"] is True, frame
            assert frame[2]["base_offset"] == base, frame
            seq += 1
        payload = encode_values([b"idem-%d" % seq], None, None, 1000)
        frame = await conn.request(F.PRODUCE, TOPIC, 0, payload, 0, "fsynced", pid, 0, seq)
        assert frame[2]["duplicate"] is False, frame
        return pid, (seq, int(frame[2]["base_offset"]), payload)
    finally:
        await conn.close()


async def test_kill_9_during_produce_loses_no_acknowledged_batch(tmp_path: Path) -> None:
    await run_cycles(tmp_path, power_loss=False)


async def test_power_loss_during_produce_loses_no_fsynced_batch(tmp_path: Path) -> None:
    await run_cycles(tmp_path, power_loss=True)
