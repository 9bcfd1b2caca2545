"""Committed offsets of consumer groups across simulated power loss.

The broker runs with ``WHARF_TEST_SYNC_LOG``, so every fsync of the offsets log
(``<data_dir>/logs-internal/offsets/offsets.log``, and of a compaction's
``offsets.log.tmp``) is logged with the length made durable.  Committers keep
committing growing offsets for several groups and partitions (standalone commits,
several per fsync) while the broker is killed with SIGKILL at a random moment
(seeded); then the offsets files are cut back to their last fsynced length, as a
machine that lost power would find them (``lose_power``), and the broker restarts.
Every partition's committed offset must then be one that was sent, and no older than
the last one whose commit was answered: an answer promises the commit is fsynced.

``WHARF_CRASH_SEED`` sets the seed.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
from dataclasses import dataclass, field
from pathlib import Path

from harness import SEED_ENV, broker_process

import wharf
from wharf.protocol import frames as F

from ..helpers import FrameClient

TOPIC = "power.offsets"
PARTITIONS = 4
GROUPS = 6
CYCLES = 3
DEFAULT_SEED = 4_242
KILL_AFTER_S = (0.2, 0.8)
CLIENT_EXIT_TIMEOUT_S = 10.0
OFFSETS_FILES = ("offsets.log", "offsets.log.tmp")


@dataclass
class Group:
    name: str
    # partition -> newest offset sent / newest offset whose commit was answered
    sent: dict[int, int] = field(default_factory=dict)
    answered: dict[int, int] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)


async def committer(conn: FrameClient, group: Group, rng: random.Random) -> None:
    """Commit growing offsets to random subsets of the partitions until the broker
    dies."""
    try:
        while True:
            parts = rng.sample(range(PARTITIONS), rng.randint(1, PARTITIONS))
            entries = []
            for p in parts:
                offset = group.sent.get(p, 0) + rng.randint(1, 5)
                group.sent[p] = offset
                entries.append([TOPIC, p, offset, None])
            await conn.request(F.OFFSET_COMMIT, group.name, "", -1, entries)
            for _, p, offset, _ in entries:
                group.answered[p] = offset
    except (wharf.ConnectionLost, wharf.ConnectionForced, OSError):
        return
    except wharf.WharfError as exc:
        group.errors.append(f"{group.name}: {exc!r}")


def offsets_dir(data_dir: Path) -> Path:
    return data_dir / "logs-internal" / "offsets"


def lose_power(data_dir: Path, sync_log: Path) -> int:
    """Cut the offsets log (and a compaction's tmp file) back to its last fsynced
    length, 0 if never fsynced, as a machine that lost power would find it.  Returns
    the bytes cut.  Call only while no broker runs on ``data_dir``."""
    synced: dict[str, int] = {}
    if sync_log.exists():
        for line in sync_log.read_text().splitlines(keepends=True):
            if line.endswith("\n"):  # a final line without it confirmed nothing yet
                path, _, length = line.strip().rpartition(" ")
                synced[path] = int(length)
    cut = 0
    files = [offsets_dir(data_dir) / name for name in OFFSETS_FILES]
    for f in files:
        if not f.exists():
            continue
        size = f.stat().st_size
        length = synced.get(str(f), 0)
        if length < size:
            os.truncate(f, length)
            cut += size - length
    # From now on, what is on disk is durable.
    for f in files:
        synced.pop(str(f), None)
        if f.exists():
            synced[str(f)] = f.stat().st_size
    sync_log.write_text("".join(f"{p} {n}\n" for p, n in synced.items()))
    return cut


async def test_power_loss_during_commits_loses_no_answered_offset(tmp_path: Path) -> None:
    rng = random.Random(int(os.environ.get(SEED_ENV) or DEFAULT_SEED))
    sync_log = tmp_path / "sync.log"
    groups = [Group(f"pg{i}") for i in range(GROUPS)]
    cut_total = 0
    env = {"WHARF_TEST_SYNC_LOG": str(sync_log)}
    async with broker_process(tmp_path / "data", env=env, budget_s=60.0) as bp:
        log_path = str(offsets_dir(bp.data_dir) / "offsets.log")
        conn = await bp.connect()
        await conn.create_topic(TOPIC, partitions=PARTITIONS)
        await conn.close()
        for cycle in range(CYCLES):
            conns = [await FrameClient.open(bp.port) for _ in groups]
            tasks = [
                asyncio.create_task(committer(c, g, random.Random(rng.random())))
                for c, g in zip(conns, groups, strict=True)
            ]
            await asyncio.sleep(rng.uniform(*KILL_AFTER_S))  # the moment of the power loss
            await bp.kill()
            async with asyncio.timeout(CLIENT_EXIT_TIMEOUT_S):
                await asyncio.gather(*tasks)
            for c in conns:
                with contextlib.suppress(Exception):
                    await c.close()
            assert log_path in sync_log.read_text(), "the offsets log reported no fsync"
            cut_total += lose_power(bp.data_dir, sync_log)
            await bp.start()
            conn = await bp.connect()
            try:
                for g in groups:
                    assert not g.errors, g.errors
                    committed = await conn.committed_offsets(g.name)
                    restored = {p: off for (_, p), off in committed.items()}
                    for p, acked in g.answered.items():
                        got = restored.get(p)
                        assert got is not None and acked <= got <= g.sent[p], (
                            f"cycle {cycle}, {g.name} partition {p}: answered {acked}, "
                            f"last sent {g.sent[p]}, restored {got} ({cut_total} bytes cut)"
                        )
                    assert set(restored) <= set(g.sent), (g.name, restored, g.sent)
                    # The next cycle continues from what the broker has.
                    g.sent = dict(restored)
                    g.answered = dict(restored)
            finally:
                await conn.close()
            assert not bp.log_problems(), bp.log_problems()
        assert all(g.answered for g in groups), "no commit was answered before a power loss"
