"""Log topics over TCP: a record appended with acks="fsynced" is shown to readers only
once it is fsynced (docs/logs.md, "When a record becomes visible").  The broker's
fsyncs of log partitions are held back here until the test lets them run."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import wharf
from wharf.broker.server import Broker
from wharf.broker.store.fsio import FAULTS

TIMEOUT_S = 5.0


@pytest.fixture
def hold_fsyncs(broker: Broker) -> Iterator[Callable[[str], threading.Event]]:
    """``hold_fsyncs(topic)``: from now on the fsyncs of the topic's partitions (worker
    threads) wait until the returned event is set, as on a stalled disk; through the
    fault-injection point of store/fsio.py.  Call it after creating the topic: its
    creation fsyncs on the event loop."""
    with contextlib.ExitStack() as holds:

        def hold(topic: str) -> threading.Event:
            under = Path(broker.settings.data_dir) / "logs" / topic
            return holds.enter_context(
                FAULTS.holding("fsync", under=under, max_hold_s=TIMEOUT_S * 4)
            )

        yield hold


async def test_a_record_is_fetched_only_once_fsynced(
    conn: wharf.Connection, connect: Any, hold_fsyncs: Callable[[str], threading.Event]
) -> None:
    await conn.create_topic("t")
    held_fsyncs = hold_fsyncs("t")
    await conn.produce("t", b"written", acks="written")
    producer: wharf.Connection = await connect()
    produce = asyncio.create_task(producer.produce("t", b"fsynced", acks="fsynced"))
    await producer.describe_topic("t")  # the produce was handled: appended, not fsynced
    assert not produce.done()
    # Not visible: not to fetch, not as "latest" of list_offsets or describe.
    assert [r.value for r in await conn.fetch("t", 0, 0)] == [b"written"]
    assert await conn.fetch("t", 0, 1) == []
    assert await conn.list_offsets("t", 0) == (0, 1)
    (offsets,) = (await conn.describe_topic("t"))["offsets"]
    assert (offsets["latest"], offsets["log_end"]) == (1, 2)
    # A long poll waiting at the end is answered when the fsync ends, with the record.
    waiting = asyncio.create_task(conn.fetch("t", 0, 1, max_wait=20.0))
    await conn.describe_topic("t")
    assert not waiting.done()
    held_fsyncs.set()
    assert await asyncio.wait_for(produce, TIMEOUT_S) == (0, 1)
    recs = await asyncio.wait_for(waiting, TIMEOUT_S)
    assert [(r.offset, r.value) for r in recs] == [(1, b"fsynced")]
    assert await conn.list_offsets("t", 0) == (0, 2)


async def test_written_records_behind_a_waiting_fsynced_one_wait_with_it(
    conn: wharf.Connection, connect: Any, hold_fsyncs: Callable[[str], threading.Event]
) -> None:
    await conn.create_topic("t")
    held_fsyncs = hold_fsyncs("t")
    producer: wharf.Connection = await connect()
    produce = asyncio.create_task(producer.produce("t", b"first", acks="fsynced"))
    await producer.describe_topic("t")
    await conn.produce("t", b"second", acks="written")  # acknowledged as written
    assert await conn.fetch("t", 0, 0) == []  # but shown only after the one before it
    held_fsyncs.set()
    await asyncio.wait_for(produce, TIMEOUT_S)
    assert await conn.list_offsets("t", 0) == (0, 2)
    assert [r.value for r in await conn.fetch("t", 0, 0)] == [b"first", b"second"]
