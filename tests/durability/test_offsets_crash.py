"""Committed offsets of consumer groups across kill -9 of a ``wharf serve`` process.

Committers keep committing growing offsets (standalone commits, several per fsync)
while the broker is killed at a random moment.  After the restart every partition's
committed offset must be one that was sent, and no older than the last one whose
commit was answered: an answered commit is on disk, whatever happened after it.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from pathlib import Path

from harness import broker_process

import wharf
from wharf.protocol import frames as F

from ..helpers import FrameClient

TOPIC = "crash.offsets"
PARTITIONS = 4
COMMITTERS = 4
CYCLES = 3
KILL_AFTER_MIN_S = 0.2
KILL_AFTER_MAX_S = 0.8
TIMEOUT_S = 10.0


async def committer(
    conn: FrameClient,
    group: str,
    sent: dict[int, int],
    answered: dict[int, int],
    start: int,
) -> None:
    """Commit offsets start+1, start+2, ... to every partition until the broker dies."""
    offset = start
    with contextlib.suppress(wharf.WharfError, OSError):
        while True:
            offset += 1
            entries = [[TOPIC, p, offset, None] for p in range(PARTITIONS)]
            for p in range(PARTITIONS):
                sent[p] = offset
            await conn.request(F.OFFSET_COMMIT, group, "", -1, entries)
            for p in range(PARTITIONS):
                answered[p] = offset


async def test_answered_commits_survive_kill_9(tmp_path: Path) -> None:
    rng = random.Random(7)
    groups = [f"g{i}" for i in range(COMMITTERS)]
    sent: dict[str, dict[int, int]] = {g: {} for g in groups}
    answered: dict[str, dict[int, int]] = {g: {} for g in groups}
    async with broker_process(tmp_path / "data", budget_s=120.0) as bp:
        conn = await bp.connect()
        await conn.create_topic(TOPIC, partitions=PARTITIONS)
        await conn.close()
        for _cycle in range(CYCLES):
            conns = [await FrameClient.open(bp.port) for _ in groups]
            tasks = [
                asyncio.ensure_future(
                    committer(c, g, sent[g], answered[g], max(sent[g].values(), default=0))
                )
                for c, g in zip(conns, groups, strict=True)
            ]
            await asyncio.sleep(rng.uniform(KILL_AFTER_MIN_S, KILL_AFTER_MAX_S))
            await bp.kill()
            async with asyncio.timeout(TIMEOUT_S):
                await asyncio.gather(*tasks)
            for c in conns:
                with contextlib.suppress(Exception):
                    await c.close()
            await bp.start()
            conn = await bp.connect()
            for g in groups:
                committed = await conn.committed_offsets(g)
                restored = {p: off for (_, p), off in committed.items()}
                for p, acked in answered[g].items():
                    assert acked <= restored[p] <= sent[g][p], (g, p, acked, restored)
                # The next cycle continues from what the broker has.
                sent[g] = dict(restored)
                answered[g] = dict(restored)
            await conn.close()
        assert all(answered[g] for g in groups), "no commit was answered before a kill"
        assert not bp.log_problems(), bp.output()
