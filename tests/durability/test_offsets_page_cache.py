"""A group offset commit left in the page cache by a kill -9, then a power loss.

The broker is killed after the commit's batch is written to the offsets log but
before its fsync returned (the commit was never answered).  The restarted broker reads
the batch back (a killed process leaves the page cache behind) and the group resumes
from that offset; nothing else is committed, so the offsets log is never fsynced again
by that run.  A power loss later must not take the offset back (the group would rewind
under consumers that had resumed from it): recovery makes what it read durable, as the
message store's does (test_txn_ack_page_cache.py).  Before, the offset went back to the
last answered commit.

In-process brokers: the kill -9 is a copy of the data directory taken while the
offsets log's fsync is held, the power loss is ``lose_power_everywhere`` with the sync
log (``FAULTS.sync_log``).
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Final

import pytest
from test_txn_ack_page_cache import kill_copy
from test_txn_chaos import lose_power_everywhere

import wharf
from wharf.broker.config import Settings
from wharf.broker.server import Broker
from wharf.broker.store.fsio import FAULTS

from ..helpers import wait_until

TOPIC: Final = "events"
GROUP: Final = "readers"
ANSWERED: Final = 3  # the last commit answered before the kill
IN_PAGE_CACHE: Final = 7  # the commit the kill cut short (written, fsync held)


def _settings(data: Path) -> Settings:
    return Settings(host="127.0.0.1", port=0, http_port=0, amqp_port=0, data_dir=str(data))


def _url(b: Broker) -> str:
    return f"wharf://guest:guest@127.0.0.1:{b.port}"


async def _committed(b: Broker) -> int:
    async with await wharf.connect(_url(b)) as conn:
        return (await conn.committed_offsets(GROUP))[(TOPIC, 0)]


async def test_an_offset_left_in_the_page_cache_by_a_kill_survives_a_later_power_loss(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    first, second = tmp_path / "first", tmp_path / "second"
    sync_log = tmp_path / "sync.log"
    monkeypatch.setattr(FAULTS, "sync_log", str(sync_log))
    b = Broker(_settings(first))
    await b.start()
    try:
        async with await wharf.connect(_url(b)) as conn:
            await conn.create_topic(TOPIC, 1)
            await conn.produce_many(TOPIC, [b"r%d" % i for i in range(10)], partition=0)
            await conn.reset_offsets(GROUP, TOPIC, ANSWERED)
            offsets = first / "logs-internal" / "offsets"
            offsets_log = offsets / "offsets.log"
            before = offsets_log.stat().st_size
            with FAULTS.holding("fsync", under=offsets):
                commit = asyncio.create_task(conn.reset_offsets(GROUP, TOPIC, IN_PAGE_CACHE))
                await wait_until(
                    lambda: offsets_log.stat().st_size > before, what="the commit's write"
                )
                # The commit is written, its fsync held: kill -9 now.
                second_sync = kill_copy(first, sync_log, second)
            await commit
    finally:
        await b.stop()

    # The restart: the group resumes from the offset the page cache kept.
    monkeypatch.setattr(FAULTS, "sync_log", str(second_sync))
    b = Broker(_settings(second))
    await b.start()
    try:
        assert await _committed(b) == IN_PAGE_CACHE
    finally:
        await b.stop()

    # A power loss later: the offset the restarted broker served is still there.
    lose_power_everywhere(second, second_sync)
    b = Broker(_settings(second))
    await b.start()
    try:
        assert await _committed(b) == IN_PAGE_CACHE, "the group's offset went back"
    finally:
        await b.stop()
