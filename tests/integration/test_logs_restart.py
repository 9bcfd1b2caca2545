"""A broker stopped while segment rolls finish in worker threads, and started again at
once in the same process on the same data directory."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import pytest

import wharf
from wharf.broker.server import Broker

from ..conftest import make_settings

PARTITIONS = 4
CYCLES = 6
# Each batch is more than half the smallest segment: every produce rolls a segment.
SEGMENT_BYTES = 1024
VALUE = b"v" * 600
BATCHES_PER_CYCLE = 40


def unfinished_files(topic_dir: Path) -> list[str]:
    """Closed segments without both index files, and temp files left behind."""
    out = [p.name for p in topic_dir.glob("*/*.tmp")]
    for part in topic_dir.iterdir():
        if not part.is_dir():
            continue
        logs = sorted(part.glob("*.log"))
        # The last is the active segment: no index files yet.
        indexes = [log.with_suffix(s) for log in logs[:-1] for s in (".index", ".timeindex")]
        out += [f"{part.name}/{p.name}" for p in indexes if not p.exists()]
    return out


async def test_restart_right_after_many_rolls(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    settings = make_settings(tmp_path)
    topic_dir = Path(settings.data_dir) / "logs" / "t"
    b = Broker(settings)
    await b.start()
    try:
        url = f"wharf://guest:guest@127.0.0.1:{b.port}"
        conn = await wharf.connect(url)
        await conn.create_topic("t", PARTITIONS, segment_bytes=SEGMENT_BYTES)
        await conn.close()
        produced = 0
        for _cycle in range(CYCLES):
            conn = await wharf.connect(f"wharf://guest:guest@127.0.0.1:{b.port}")
            # All in flight at once: the last rolls are still finishing as stop() begins.
            await asyncio.gather(
                *(
                    conn.produce("t", VALUE, partition=i % PARTITIONS)
                    for i in range(BATCHES_PER_CYCLE)
                )
            )
            produced += BATCHES_PER_CYCLE
            await conn.close()
            await b.stop()
            # Every roll finished before stop() returned.
            assert unfinished_files(topic_dir) == []
            caplog.clear()
            with caplog.at_level(logging.WARNING, logger="wharf.topics"):
                b = Broker(make_settings(tmp_path))
                await b.start()
            assert "rebuilt the indexes" not in caplog.text
        conn = await wharf.connect(f"wharf://guest:guest@127.0.0.1:{b.port}")
        try:
            total = 0
            for p in range(PARTITIONS):
                earliest, latest = await conn.list_offsets("t", p)
                assert earliest == 0
                total += latest
                assert len(await conn.fetch("t", p, latest - 1)) == 1
            assert total == produced
        finally:
            await conn.close()
    finally:
        await b.stop()
