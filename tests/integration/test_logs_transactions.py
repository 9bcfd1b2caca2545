"""Transactions on log topics over TCP: commit/abort visibility per isolation level, the
last stable offset, fencing, timeouts, send_offsets, and the requests refused with a
clear error that change nothing."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import pytest

import wharf
from wharf.broker.server import Broker
from wharf.protocol import frames as F
from wharf.protocol.records import encode_values

from ..conftest import RawClient

RC = "read_committed"


async def values(
    conn: wharf.Connection, topic: str, isolation: str, partition: int = 0
) -> list[bytes | None]:
    recs = await conn.fetch(topic, partition, 0, isolation_level=isolation)
    return [r.value for r in recs]


async def test_commit_visible_abort_invisible(conn: wharf.Connection) -> None:
    await conn.create_topic("t", 2)
    p = conn.transactional_producer("tx-1")
    async with p.transaction():
        await p.produce("t", b"c1", partition=0)
        await p.produce_many("t", [b"c2", b"c3"], partition=1)
    await p.begin()
    await p.produce("t", b"a1", partition=0)
    await p.abort()
    await conn.produce("t", b"plain", partition=0)
    with pytest.raises(RuntimeError):
        async with p.transaction():
            await p.produce("t", b"a2", partition=0)
            raise RuntimeError("the application failed")
    async with p.transaction():
        await p.produce("t", b"c4", partition=0)
    assert await values(conn, "t", RC) == [b"c1", b"plain", b"c4"]
    assert await values(conn, "t", RC, 1) == [b"c2", b"c3"]
    # read_uncommitted sees everything but the markers.
    assert await values(conn, "t", "read_uncommitted") == [b"c1", b"a1", b"plain", b"a2", b"c4"]
    # Markers count in offsets: c1 0, marker 1, a1 2, marker 3, plain 4, a2 5, m 6, c4 7, m 8.
    offsets = [r.offset for r in await conn.fetch("t", 0, 0, isolation_level=RC)]
    assert offsets == [0, 4, 7]
    assert (await conn.list_offsets("t", 0))[1] == 9


async def test_last_stable_offset_held_by_an_open_transaction(conn: wharf.Connection) -> None:
    await conn.create_topic("lso", 1)
    await conn.produce("lso", b"before")
    p = conn.transactional_producer("tx-lso")
    await p.begin()
    await p.produce("lso", b"open", partition=0)
    await conn.produce("lso", b"after")  # non-transactional, behind the open one
    info = (await conn.describe_topic("lso"))["offsets"][0]
    assert info["last_stable"] == 1 and info["latest"] == 3
    assert await values(conn, "lso", RC) == [b"before"]
    res = await conn.fetch_batch("lso", 0, 0, isolation_level=RC)
    assert res.high_watermark == 1
    assert await values(conn, "lso", "read_uncommitted") == [b"before", b"open", b"after"]
    await p.commit()
    assert await values(conn, "lso", RC) == [b"before", b"open", b"after"]


async def test_read_committed_stream_and_lag(conn: wharf.Connection) -> None:
    await conn.create_topic("s", 1)
    p = conn.transactional_producer("tx-s")
    async with p.transaction():
        await p.produce_many("s", [b"1", b"2"], partition=0)
    await p.begin()
    await p.produce("s", b"x", partition=0)
    await p.abort()
    async with p.transaction():
        await p.produce("s", b"3", partition=0)
    got: list[bytes | None] = []
    async with conn.subscribe(
        "s", auto_offset_reset="earliest", isolation_level=RC, fetch_max_wait=0.05
    ) as stream:
        async for rec in stream:
            got.append(rec.value)
            if rec.value == b"3":
                break
        assert got == [b"1", b"2", b"3"]
        # Records 0-1, marker 2, aborted 3, marker 4, record 5, marker 6: the LSO is 7.
        assert stream.highwater(("s", 0)) == 7
        assert await stream.getmany(timeout=0.1) == []  # the position moves past marker 6
        assert stream.position(("s", 0)) == 7
        assert stream.lag() == {("s", 0): 0}


async def test_fencing_aborts_the_old_epoch(connect: Callable[..., Any]) -> None:
    c1: wharf.Connection = await connect()
    c2: wharf.Connection = await connect()
    await c1.create_topic("f", 1)
    old = c1.transactional_producer("tx-f")
    await old.begin()
    await old.produce("f", b"zombie", partition=0)
    new = c2.transactional_producer("tx-f")
    await new.begin()  # fences old; its open transaction is aborted
    assert new.producer_epoch == old.producer_epoch + 1
    with pytest.raises(wharf.ProducerFenced) as info:
        await old.produce("f", b"late", partition=0)
    assert info.value.code == 413
    with pytest.raises(wharf.ProducerFenced):
        await old.commit()
    await new.produce("f", b"fresh", partition=0)
    await new.commit()
    assert await values(c1, "f", RC) == [b"fresh"]
    assert await values(c1, "f", "read_uncommitted") == [b"zombie", b"fresh"]


# Long enough that no transaction below reaches it by the wall clock, however loaded the
# machine: the test moves the clock past it by calling the coordinator's tick itself.
TXN_TIMEOUT_MS = 60_000


@pytest.mark.parametrize("settings_overrides", [{"transaction_timeout_ms": TXN_TIMEOUT_MS}])
async def test_timeout_aborts(conn: wharf.Connection, broker: Broker) -> None:
    await conn.create_topic("to", 1)
    p = conn.transactional_producer("tx-to")
    await p.begin()
    before_ms = int(time.time() * 1000)
    await p.produce("to", b"slow", partition=0)
    after_ms = int(time.time() * 1000)
    coordinator = broker.vhosts.get("/").transactions
    assert coordinator is not None
    assert coordinator.describe("tx-to")["timeout_ms"] == TXN_TIMEOUT_MS  # the broker's default
    # The broker's tick calls this once a second with the wall clock (test_txn_queue_acks
    # waits for that one); here the clock is given, so the quick transaction below can
    # never be aborted by a tick that a loaded machine delayed into it.
    assert coordinator.tick(before_ms + TXN_TIMEOUT_MS) == 0  # not yet past the timeout
    assert coordinator.tick(after_ms + TXN_TIMEOUT_MS + 1) == 1
    assert coordinator.timeouts == 1
    with pytest.raises(wharf.TransactionAborted) as info:
        await p.commit()
    assert info.value.code == 417
    await p.abort()  # acknowledged; a new transaction works
    async with p.transaction():
        await p.produce("to", b"quick", partition=0)
    assert coordinator.timeouts == 1
    assert await values(conn, "to", RC) == [b"quick"]


async def test_send_offsets_committed_only_on_commit(conn: wharf.Connection) -> None:
    await conn.create_topic("in", 1)
    await conn.create_topic("out", 1)
    p = conn.transactional_producer("tx-o")
    await p.begin()
    await p.produce("out", b"r", partition=0)
    await p.send_offsets("g", {("in", 0): 5})
    assert await conn.committed_offsets("g") == {}
    await p.abort()
    assert await conn.committed_offsets("g") == {}
    async with p.transaction():
        await p.produce("out", b"r", partition=0)
        await p.send_offsets("g", {("in", 0): 7})
        assert await conn.committed_offsets("g") == {}
    assert await conn.committed_offsets("g") == {("in", 0): 7}


async def test_bad_requests_change_nothing(
    conn: wharf.Connection, connect: Callable[..., Any], raw_client: Callable[..., Any]
) -> None:
    await conn.create_topic("b", 1)
    await conn.create_topic("src", 1)
    p = conn.transactional_producer("tx-b")
    with pytest.raises(wharf.InvalidTxnState) as info:
        await p.commit()  # commit without begin
    assert info.value.code == 415
    with pytest.raises(wharf.InvalidTxnState):
        await p.produce("b", b"outside", partition=0)  # produce outside a transaction
    await p.begin()
    await p.commit()  # an empty transaction: nothing to do
    # On the wire: a produce without the transactional flag from the transactional
    # producer's id, a transactional one without a transaction's producer, END_TXN
    # with no transaction open, and a fenced epoch.
    raw: RawClient = await raw_client()
    payload = encode_values([b"sneaky"], None, None, 1000)
    pid, epoch = p.producer_id, p.producer_epoch
    raw.send(F.Produce(2, "b", 0, payload, 0, "written", pid, epoch, 0))
    assert (await raw.recv())[:3] == [F.ERROR, 2, 415]
    raw.send(F.InitProducer(3))
    plain_pid = (await raw.recv())[2]["producer_id"]
    raw.send(F.Produce(4, "b", 0, payload, 0, "written", plain_pid, 0, 0, True))
    assert (await raw.recv())[:3] == [F.ERROR, 4, 415]
    raw.send(F.EndTxn(5, "tx-b", pid, epoch, True))
    assert (await raw.recv())[:3] == [F.ERROR, 5, 415]
    raw.send(F.EndTxn(6, "tx-b", pid, epoch - 1 if epoch else epoch, True))
    if epoch:
        assert (await raw.recv())[:3] == [F.ERROR, 6, 413]
    else:
        assert (await raw.recv())[:3] == [F.ERROR, 6, 415]
    raw.send(F.Produce(7, "src", 0, payload, 0, "written", pid, epoch, 0, True))
    ok = await raw.recv()  # a raw transactional produce of the producer: begins one
    assert ok[0] == F.OK, ok
    raw.send(F.EndTxn(8, "tx-b", pid, epoch, False))
    assert (await raw.recv())[0] == F.OK
    # send_offsets for a group that moved to a new generation.
    other: wharf.Connection = await connect()
    async with other.subscribe(
        "src", group="grp", auto_offset_reset="earliest", enable_auto_commit=False
    ) as stream:
        for _ in range(200):
            if stream.generation >= 1:
                break
            await asyncio.sleep(0.02)
        gen = stream.generation
        member = stream.member_id
        await p.begin()
        await p.produce("b", b"x", partition=0)
        with pytest.raises(wharf.IllegalGeneration) as gi:
            await p.send_offsets("grp", {("src", 0): 1}, member_id=member, generation=gen + 1)
        assert gi.value.code == 410
        await p.commit()
    assert await conn.committed_offsets("grp") == {}
    assert await values(conn, "b", RC) == [b"x"]


async def test_exchange_routed_records_and_read_committed(conn: wharf.Connection) -> None:
    await conn.create_topic("ex", 1)
    await conn.declare_exchange("x", "fanout")
    await conn.bind_topic("ex", "x")
    p = conn.transactional_producer("tx-ex")
    await p.begin()
    await p.produce("ex", b"txn", partition=0)
    await conn.publish("x", "", b"routed")
    assert await values(conn, "ex", RC) == []
    await p.commit()
    assert await values(conn, "ex", RC) == [b"txn", b"routed"]


COMPACTED: dict[str, Any] = {
    "cleanup_policy": "compact",
    "segment_bytes": 1024,
    "min_cleanable_dirty_ratio": 0.01,
}
PAD = b"." * 100


@pytest.mark.parametrize("settings_overrides", [{"log_cleaner_interval_ms": 20}])
async def test_compaction_keeps_markers_and_never_revives_aborted_values(
    conn: wharf.Connection, broker: Broker
) -> None:
    await conn.create_topic("kv", 1, **COMPACTED)
    p = conn.transactional_producer("tx-kv")
    async with p.transaction():
        await p.produce("kv", b"committed" + PAD, key=b"k", partition=0)
    await p.begin()
    await p.produce("kv", b"aborted" + PAD, key=b"k", partition=0)
    await p.abort()
    async with p.transaction():  # the aborted batch is no longer the producer's last
        await p.produce("kv", b"other" + PAD, key=b"k2", partition=0)
    for i in range(20):  # unique keys: everything before them leaves the active segment
        await conn.produce("kv", PAD, key=b"filler-%d" % i, partition=0)
    cleaner = broker.log_cleaner
    assert cleaner is not None
    for _ in range(500):  # bounded: the cleaner runs every 20 ms
        if cleaner.runs >= 1:
            break
        await asyncio.sleep(0.02)
    assert cleaner.runs >= 1
    committed = [
        r.value
        for r in await conn.fetch("kv", 0, 0, max_bytes=1 << 20, isolation_level=RC)
        if r.key == b"k"
    ]
    assert committed == [b"committed" + PAD]  # not dropped for the aborted later value
    everything = [r.value for r in await conn.fetch("kv", 0, 0, max_bytes=1 << 20)]
    assert b"aborted" + PAD not in everything  # aborted data may go, and did
    assert b"committed" + PAD in everything
    desc = (await conn.describe_topic("kv"))["offsets"][0]
    assert desc["last_stable"] == desc["latest"]


async def test_read_committed_pages_across_aborted_ranges(conn: wharf.Connection) -> None:
    """A read-committed reader pages across many transactions and aborted ranges."""
    await conn.create_topic("many", 1)
    p = conn.transactional_producer("tx-many")
    expected = []
    for i in range(30):
        await p.begin()
        await p.produce_many("many", [b"%d-a" % i, b"%d-b" % i], partition=0)
        await conn.produce("many", b"plain-%d" % i, partition=0)
        if i % 3:
            await p.commit()
            expected += [b"%d-a" % i, b"%d-b" % i, b"plain-%d" % i]
        else:
            await p.abort()
            expected.append(b"plain-%d" % i)
    got: list[bytes | None] = []
    offset = 0
    while True:
        res = await conn.fetch_batch("many", 0, offset, max_bytes=1, isolation_level=RC)
        got += [r.value for r in res.records]
        if res.next_offset >= res.high_watermark:
            break
        offset = res.next_offset
    assert got == expected


async def test_read_committed_long_poll_waits_for_the_commit(connect: Callable[..., Any]) -> None:
    reader: wharf.Connection = await connect()
    writer: wharf.Connection = await connect()
    await writer.create_topic("lp", 1)
    p = writer.transactional_producer("tx-lp")
    poll = asyncio.create_task(reader.fetch("lp", 0, 0, max_wait=10.0, isolation_level=RC))
    await p.begin()
    await p.produce("lp", b"v", partition=0)  # wakes the poll: nothing stable yet
    await writer.produce("lp", b"plain", partition=0)  # nor now
    done, _ = await asyncio.wait({poll}, timeout=0.3)
    assert not done  # still waiting, not answered empty
    await p.commit()
    recs = await asyncio.wait_for(poll, 5.0)
    assert [r.value for r in recs] == [b"v", b"plain"]


async def test_operator_abort_and_introspection(conn: wharf.Connection, broker: Broker) -> None:
    await conn.create_topic("op", 1)
    coordinator = broker.vhosts.get("/").transactions
    assert coordinator is not None
    p = conn.transactional_producer("tx-op")
    await p.begin()
    await p.produce("op", b"v", partition=0)
    desc = coordinator.describe("tx-op")
    assert desc["state"] == "Ongoing" and desc["partitions"] == [["op", 0]]
    assert coordinator.open_count == 1
    await coordinator.abort("tx-op")
    assert coordinator.describe("tx-op")["state"] == "CompleteAbort"
    with pytest.raises(wharf.TransactionAborted):
        await p.produce("op", b"w", partition=0)
    await p.abort()
    assert await values(conn, "op", RC) == []
    assert [t["transactional_id"] for t in coordinator.list()] == ["tx-op"]
    assert (coordinator.commits, coordinator.aborts) == (0, 1)
