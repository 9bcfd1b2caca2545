"""Shutdown has one time budget: ``shutdown_timeout_s`` bounds the whole of ``Broker.stop``,
not each of its stages.

Three stages are stuck at once: a client that never reads (drain), the message store's
last commit and the offsets log's last commit (both made to hang, as on a disk that stopped
answering).  With a timeout per stage, stop took three budgets; with one deadline it takes
one.  The margin is generous: this checks that the budget is shared, not how fast stop is.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any, Final

import pytest

import wharf
from wharf.broker.logs.groups import GroupCoordinator
from wharf.broker.server import Broker
from wharf.broker.store.segments import MessageStore
from wharf.protocol.frames import Consume

from ..helpers import wait_until

BUDGET_S: Final = 2.0
# Well under one more budget: a per-stage timeout makes stop last at least 3 * BUDGET_S.
MARGIN_S: Final = 3.0
TIMEOUT_S: Final = 5.0
POLL_S: Final = 0.05


async def _hang_forever(*_args: Any) -> None:
    await asyncio.get_running_loop().create_future()


@pytest.mark.parametrize("settings_overrides", [{"shutdown_timeout_s": BUDGET_S}])
async def test_stuck_stages_share_one_shutdown_budget(
    broker: Broker,
    conn: wharf.Connection,
    raw_client: Callable[..., Any],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    info = await conn.declare_queue("")
    body = b"x" * (512 * 1024)
    await conn.publish_many("", info.name, [body] * 40)
    rc = await raw_client()
    rc.send(Consume(2, info.name, "never-reads", 0))
    # The raw client never reads again: its socket fills and the broker's writes back up.
    await wait_until(lambda: broker.queues[info.name].ready_count < 40, timeout=TIMEOUT_S)
    monkeypatch.setattr(MessageStore, "flush", _hang_forever)
    monkeypatch.setattr(GroupCoordinator, "close", _hang_forever)

    loop = asyncio.get_running_loop()
    started = loop.time()
    async with asyncio.timeout(3 * BUDGET_S + TIMEOUT_S):
        await broker.stop()
    elapsed = loop.time() - started

    assert elapsed < BUDGET_S + MARGIN_S, f"stop took {elapsed:.1f} s for a {BUDGET_S} s budget"
    assert not broker.connections
    assert conn.is_closed
