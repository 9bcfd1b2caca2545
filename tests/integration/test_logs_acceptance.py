"""Log topics and consumer groups as a Kafka user meets them: the SDK calls of the
docs, end to end over TCP, checked against Kafka's semantics (committed offset = the
next offset to read, auto_offset_reset, retention moving the log start, compaction
keeping offsets, fencing, static membership) and through ``wharf ctl``."""

from __future__ import annotations

import asyncio
import json
import random
import socket
import time
import zlib
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

import wharf
from wharf.broker.server import Broker
from wharf.logs import Record
from wharf.protocol import frames as F
from wharf.protocol.records import encode_values

from ..conftest import RawClient, make_settings
from ..helpers import wait_until
from .test_ctl import run_ctl

FAST: dict[str, Any] = {
    "heartbeat_interval": 0.1,
    "session_timeout": 3.0,
    "rebalance_timeout": 3.0,
    "fetch_max_wait": 0.05,
}
WAIT_S = 8.0
OLD_MS = 1_000_000  # a record timestamp far past any retention


@pytest.fixture
def settings_overrides() -> dict[str, Any]:
    return {
        "group_initial_rebalance_delay_ms": 100,
        "group_min_session_timeout_ms": 100,
        "log_retention_check_interval_ms": 50,
        "log_cleaner_interval_ms": 50,
    }


async def take(stream: wharf.Stream, n: int) -> list[Record]:
    """Exactly ``n`` records, in the order handed out."""
    out: list[Record] = []
    async with asyncio.timeout(WAIT_S):
        while len(out) < n:
            out += await stream.getmany(max_records=n - len(out))
    return out


# -- the issue's snippet -------------------------------------------------------------------


async def test_issue_snippet_end_to_end(conn: wharf.Connection) -> None:
    info = await conn.create_topic("events", partitions=6, retention_ms=7 * 86400_000)
    assert info["partitions"] == 6 and info["created"] is True
    assert info["config"]["retention_ms"] == 604_800_000
    before = int(time.time() * 1000)
    partition, offset = await conn.produce(
        "events", b"value", key=b"user-42", headers={"source": "web", "n": 1}
    )
    assert (partition, offset) == (zlib.crc32(b"user-42") % 6, 0)  # the documented hash
    assert await conn.produce_many("events", [b"a", b"b", b"c"], key=b"user-42") == (
        partition,
        1,
    )

    seen: list[Record] = []
    async with conn.subscribe(
        "events", group="billing", auto_offset_reset="earliest", **FAST
    ) as stream:
        # Timeouts while the group forms and after the records are read end nothing.
        timeouts = 0
        while len(seen) < 4 or timeouts < 3:
            try:
                seen.append(await asyncio.wait_for(anext(stream), 0.05))
            except TimeoutError:
                timeouts += 1
        await conn.produce("events", b"later", key=b"user-42")
        async for rec in stream:  # the iteration goes on after the timeouts
            seen.append(rec)
            break
        await stream.commit()

    first = seen[0]
    assert (first.topic, first.partition, first.offset) == ("events", partition, 0)
    assert (first.key, first.value, first.headers) == (
        b"user-42",
        b"value",
        {"source": "web", "n": 1},
    )
    assert before <= first.timestamp <= int(time.time() * 1000)
    assert [(r.offset, r.value) for r in seen] == [
        (0, b"value"),
        (1, b"a"),
        (2, b"b"),
        (3, b"c"),
        (4, b"later"),
    ]
    committed = await conn.committed_offsets("billing")
    assert committed[("events", partition)] == 5  # the next offset to read
    assert all(committed[("events", p)] == 0 for p in range(6) if p != partition)
    desc = await conn.describe_group("billing")
    assert desc["state"] == "Empty" and desc["members"] == []
    assert {(o["partition"], o["lag"]) for o in desc["offsets"]} == {(p, 0) for p in range(6)}


async def test_wait_for_timeouts_during_production_lose_and_repeat_nothing(
    conn: wharf.Connection, connect: Callable[..., Any]
) -> None:
    await conn.create_topic("t", partitions=3)
    producer_conn = await connect()
    total = 600

    async def produce() -> None:
        for i in range(total // 10):
            values = [b"%d" % (i * 10 + j) for j in range(10)]
            await producer_conn.produce_many("t", values, partition=i % 3)
            await asyncio.sleep(0)

    rng = random.Random(7)
    got: list[tuple[int, int]] = []
    async with conn.subscribe(
        "t", group="g", auto_offset_reset="earliest", max_partition_fetch_bytes=300, **FAST
    ) as stream:
        task = asyncio.create_task(produce())
        async with asyncio.timeout(WAIT_S * 2):
            while len(got) < total:
                try:
                    if rng.random() < 0.5:
                        rec = await asyncio.wait_for(anext(stream), rng.choice([0, 0.001, 0.01]))
                        got.append((rec.partition, rec.offset))
                    else:
                        wait = stream.getmany(max_records=rng.choice([None, 1, 7]))
                        recs = await asyncio.wait_for(wait, rng.choice([0, 0.001, 0.01]))
                        got += [(r.partition, r.offset) for r in recs]
                except TimeoutError:
                    pass
        await task
        assert await stream.getmany(timeout=0.2) == []
    for p in range(3):
        assert [o for q, o in got if q == p] == list(range(total // 3))


# -- committed offsets -----------------------------------------------------------------------


async def test_committed_offset_is_the_next_to_read_and_the_group_resumes_there(
    conn: wharf.Connection,
) -> None:
    await conn.create_topic("t", partitions=2)
    for p in range(2):
        await conn.produce_many("t", [b"%d" % i for i in range(10)], partition=p)
    opts: dict[str, Any] = {"auto_offset_reset": "earliest", **FAST}

    async with conn.subscribe("t", group="g", enable_auto_commit=False, **opts) as a:
        first = await take(a, 7)
        await a.commit()
        positions = {tp: a.position(tp) for tp in a.assignment()}
    committed = await conn.committed_offsets("g")
    assert committed == positions
    for p in range(2):
        read = [r.offset for r in first if r.partition == p]
        assert committed[("t", p)] == (read[-1] + 1 if read else 0)

    # A second member of the group starts exactly there: nothing skipped or repeated.
    async with conn.subscribe("t", group="g", enable_auto_commit=True, **opts) as b:
        rest = await take(b, 20 - 7)
        assert await b.getmany(timeout=0.2) == []
        assert b.lag() == {("t", 0): 0, ("t", 1): 0}
    both = sorted((r.partition, r.offset) for r in first + rest)
    assert both == [(p, o) for p in range(2) for o in range(10)]
    # ... and committed what it read when it closed (auto-commit).
    assert await conn.committed_offsets("g") == {("t", 0): 10, ("t", 1): 10}

    # commit() of explicit offsets; committed() asks the broker.
    async with conn.subscribe("t", group="g", enable_auto_commit=False, **opts) as c:
        await c.commit({("t", 0): 4})
        assert await c.committed(("t", 0)) == 4
        assert await c.committed(("t", 1)) == 10


async def test_default_auto_offset_reset_is_latest(conn: wharf.Connection) -> None:
    await conn.create_topic("t")
    await conn.produce_many("t", [b"old1", b"old2"])
    async with conn.subscribe("t", group="fresh", **FAST) as s:
        await wait_until(timeout=WAIT_S, check=lambda: _known(s, ("t", 0)))
        assert s.position(("t", 0)) == 2
        assert await s.getmany(timeout=0.2) == []
        await conn.produce("t", b"new")
        assert [r.value for r in await take(s, 1)] == [b"new"]
    assert await conn.committed_offsets("fresh") == {("t", 0): 3}


async def _known(stream: wharf.Stream, tp: tuple[str, int]) -> bool:
    return tp in stream.assignment() and stream.position(tp) is not None


async def test_committed_offset_past_the_end_is_reset(conn: wharf.Connection) -> None:
    await conn.create_topic("t")
    await conn.produce_many("t", [b"a", b"b"])
    # A standalone commit (manual assignment with a group) of an offset past the end is
    # stored as given, as Kafka does; the next member resets it per auto_offset_reset.
    manual: dict[str, Any] = {"partitions": [("t", 0)], "enable_auto_commit": False}
    async with conn.subscribe("t", group="g", **manual, **FAST) as s:
        await s.commit({("t", 0): 1000})
    assert await conn.committed_offsets("g") == {("t", 0): 1000}
    async with conn.subscribe("t", group="g", auto_offset_reset="earliest", **FAST) as s:
        assert [r.offset for r in await take(s, 2)] == [0, 1]


# -- retention -------------------------------------------------------------------------------


async def test_retention_deletes_whole_segments_and_readers_reset(conn: wharf.Connection) -> None:
    # One batch per segment: each record is bigger than half a segment.
    await conn.create_topic("t", segment_bytes=1024, retention_ms=-1)
    for i in range(6):
        await conn.produce("t", b"o" * 600, timestamp=OLD_MS + i)
    await conn.produce("t", b"new")
    assert (await conn.describe_topic("t"))["offsets"][0]["segments"] == 7
    async with conn.subscribe(
        "t", group="g", auto_offset_reset="earliest", enable_auto_commit=False, **FAST
    ) as s:
        await take(s, 2)
        await s.commit()
    assert await conn.committed_offsets("g") == {("t", 0): 2}

    await conn.alter_topic("t", retention_ms=60_000)

    async def trimmed() -> bool:
        # All six old segments: a segment whose roll job (fsync, index files) is still
        # running waits for a later retention check, so they may go in several steps.
        return (await conn.list_offsets("t", 0))[0] == 6

    await wait_until(timeout=WAIT_S, check=trimmed)
    offsets = (await conn.describe_topic("t"))["offsets"][0]
    assert (offsets["earliest"], offsets["latest"], offsets["segments"]) == (6, 7, 1)
    with pytest.raises(wharf.OffsetOutOfRange) as info:
        await conn.fetch("t", 0, 2)
    assert info.value.code == 416
    assert info.value.details == {"earliest": 6, "latest": 7, "offset": 2}
    # The group's committed offset (2) is gone: lag still counts from it, as in Kafka.
    desc = await conn.describe_group("g")
    assert [(o["committed"], o["latest"], o["lag"]) for o in desc["offsets"]] == [(2, 7, 5)]

    no_commit: dict[str, Any] = {"enable_auto_commit": False, **FAST}
    async with conn.subscribe("t", group="g", auto_offset_reset="none", **no_commit) as s:
        with pytest.raises(wharf.OffsetOutOfRange):
            await s.getmany(timeout=WAIT_S)
    async with conn.subscribe("t", group="g", auto_offset_reset="latest", **no_commit) as s:
        assert await s.getmany(timeout=0.3) == []

        async def reset_to_latest() -> bool:
            # As in Kafka, a record produced before the reset happens is skipped by it.
            return s.position(("t", 0)) == 7

        await wait_until(timeout=WAIT_S, check=reset_to_latest)
        await conn.produce("t", b"newer")
        assert [(r.offset, r.value) for r in await take(s, 1)] == [(7, b"newer")]
    async with conn.subscribe("t", group="g", auto_offset_reset="earliest", **FAST) as s:
        assert [r.offset for r in await take(s, 2)] == [6, 7]
    assert await conn.committed_offsets("g") == {("t", 0): 8}


async def test_reader_overtaken_by_retention_resets(conn: wharf.Connection) -> None:
    await conn.create_topic("t", segment_bytes=1024, retention_ms=-1)
    for i in range(4):
        await conn.produce("t", b"o" * 600, timestamp=OLD_MS + i)
    await conn.produce("t", b"new")
    async with conn.subscribe("t", partitions=[("t", 0)], auto_offset_reset="earliest") as s:
        assert [r.offset for r in await take(s, 1)] == [0]
        s.pause(("t", 0))
        await conn.alter_topic("t", retention_ms=60_000)

        async def trimmed() -> bool:
            return (await conn.list_offsets("t", 0))[0] == 4

        await wait_until(timeout=WAIT_S, check=trimmed)
        s.resume(("t", 0))
        assert [(r.offset, r.value) for r in await take(s, 1)] == [(4, b"new")]


# -- compaction ------------------------------------------------------------------------------


async def test_compaction_keeps_the_latest_per_key_at_its_offset(conn: wharf.Connection) -> None:
    await conn.create_topic(
        "accounts",
        cleanup_policy="compact",
        segment_bytes=1024,
        min_cleanable_dirty_ratio=0.01,
        delete_retention_ms=1500,
    )
    latest: dict[bytes, int] = {}
    for i in range(12):
        key = b"k%d" % (i % 3)
        _, latest[key] = await conn.produce("accounts", b"v%d-" % i + b"x" * 200, key=key)
    _, tombstone = await conn.produce("accounts", None, key=b"k0")
    for _ in range(8):  # later records, so the ones above are in closed segments
        await conn.produce("accounts", b"f" * 200, key=b"filler")
    records: list[Record] = []

    async def fetch_all() -> list[Record]:
        out: list[Record] = []
        offset = 0
        while batch := await conn.fetch("accounts", 0, offset):
            out += batch
            offset = batch[-1].offset + 1
        return [r for r in out if r.key != b"filler"]

    async def cleaned() -> bool:
        records[:] = await fetch_all()
        return [r.key for r in records] == [b"k1", b"k2", b"k0"]

    # A clean removes the older values of each key and keeps the tombstone for now.
    await wait_until(timeout=WAIT_S, check=cleaned)
    expected = [
        (latest[b"k1"], b"k1", b"v10-" + b"x" * 200),
        (latest[b"k2"], b"k2", b"v11-" + b"x" * 200),
        (tombstone, b"k0", None),
    ]
    assert [(r.offset, r.key, r.value) for r in records] == expected
    assert await conn.list_offsets("accounts", 0) == (0, tombstone + 9)
    # A group reading from the start sees the same records at the same offsets.
    read: list[Record] = []
    async with conn.subscribe("accounts", group="g", auto_offset_reset="earliest", **FAST) as s:
        while not read or read[-1].offset < tombstone + 8:
            read += await take(s, 1)
    assert [(r.offset, r.key, r.value) for r in read if r.key != b"filler"][:2] == expected[:2]

    async def tombstone_gone() -> bool:
        return [r.key for r in await fetch_all()] == [b"k1", b"k2"]

    await wait_until(timeout=WAIT_S, check=tombstone_gone)  # a clean after delete_retention_ms


# -- exchange bindings ----------------------------------------------------------------------


async def test_exchange_messages_become_records_as_documented(conn: wharf.Connection) -> None:
    await conn.create_topic("orders-log", partitions=3)
    await conn.declare_exchange("orders", "topic", durable=True)
    await conn.bind_topic("orders-log", "orders", "eu.#")
    await conn.publish(
        "orders",
        "eu.new",
        b'{"id": 7}',
        persistent=True,
        content_type="application/json",
        headers={"x-partition-key": "customer-42"},
    )
    # publish() returned on the confirm, which covers the (fsynced) append.
    partition = zlib.crc32(b"customer-42") % 3
    assert [r.value for r in await conn.fetch("orders-log", partition, 0)] == [b'{"id": 7}']
    await conn.publish("orders", "us.new", b"not bound")
    await conn.publish("orders", "eu.old", b"plain", timestamp=1_700_000_000_000)
    async with conn.subscribe("orders-log", group="g", auto_offset_reset="earliest", **FAST) as s:
        records = {r.value: r for r in await take(s, 2)}
        assert await s.getmany(timeout=0.2) == []
    rec = records[b'{"id": 7}']
    assert (rec.key, rec.partition, rec.offset) == (b"customer-42", partition, 0)
    assert rec.headers == {
        "x-partition-key": "customer-42",
        "x-exchange": "orders",
        "x-routing-key": "eu.new",
        "x-content-type": "application/json",
        "x-persistent": True,
    }
    plain = records[b"plain"]
    assert (plain.key, plain.timestamp) == (b"eu.old", 1_700_000_000_000)
    assert plain.partition == zlib.crc32(b"eu.old") % 3
    assert plain.headers["x-routing-key"] == "eu.old"


# -- errors ----------------------------------------------------------------------------------


async def test_errors_are_wharf_errors_and_the_connection_stays_usable(
    conn: wharf.Connection, frame_client: Callable[[], Any]
) -> None:
    await conn.create_topic("t", partitions=2)
    await conn.produce_many("t", [b"a", b"b"], partition=0)
    cases: list[tuple[type[wharf.WharfError], int, Callable[[], Awaitable[Any]]]] = [
        (wharf.NotFound, 404, lambda: conn.produce("nope", b"x")),
        (wharf.NotFound, 404, lambda: conn.fetch("nope", 0, 0)),
        (wharf.NotFound, 404, lambda: conn.describe_topic("nope")),
        (wharf.NotFound, 404, lambda: conn.delete_topic("nope")),
        (wharf.NotFound, 404, lambda: conn.produce("t", b"x", partition=2)),
        (wharf.NotFound, 404, lambda: conn.fetch("t", -1, 0)),
        (wharf.NotFound, 404, lambda: conn.list_offsets("t", 5)),
        (wharf.OffsetOutOfRange, 416, lambda: conn.fetch("t", 0, 3)),
        (wharf.InvalidArgument, 400, lambda: conn.create_topic("u", retention_mss=1)),
        (wharf.InvalidArgument, 400, lambda: conn.create_topic("u", retention_ms="1d")),
        (wharf.InvalidArgument, 400, lambda: conn.create_topic("u", timestamp_type="x")),
        (wharf.InvalidArgument, 400, lambda: conn.create_topic("u", partitions=0)),
        (wharf.InvalidArgument, 400, lambda: conn.create_topic("a/b")),
        (wharf.InvalidArgument, 400, lambda: conn.alter_topic("t", partitions=1)),
        (wharf.PreconditionFailed, 406, lambda: conn.create_topic("t", partitions=3)),
        (wharf.InvalidArgument, 400, lambda: conn.produce("t", b"x", acks="all")),
        (wharf.NotFound, 404, lambda: conn.describe_group("nobody")),
        (wharf.NotFound, 404, lambda: conn.reset_offsets("g", "nope", "earliest")),
    ]
    for cls, code, call in cases:
        with pytest.raises(cls) as info:
            await call()
        assert info.value.code == code, info.value
        assert isinstance(info.value, wharf.WharfError)
    with pytest.raises(wharf.OffsetOutOfRange) as oor:
        await conn.fetch("t", 0, 3)
    assert oor.value.details == {"earliest": 0, "latest": 2, "offset": 3}

    # A commit from a generation that is over: 410, from a member never seen: 411.
    raw = await frame_client()
    async with conn.subscribe("t", group="g", **FAST) as s:
        await wait_until(timeout=WAIT_S, check=lambda: _assigned(s))
        stale = s.generation - 1
        with pytest.raises(wharf.IllegalGeneration) as gen:
            await raw.request(F.OFFSET_COMMIT, "g", s.member_id, stale, [["t", 0, 1, None]])
        assert gen.value.code == 410
        with pytest.raises(wharf.UnknownMember) as unknown:
            await raw.request(F.OFFSET_COMMIT, "g", "ghost", s.generation, [["t", 0, 1, None]])
        assert unknown.value.code == 411
        # Groups with members refuse deletes and resets (Kafka's NON_EMPTY_GROUP).
        with pytest.raises(wharf.PreconditionFailed):
            await conn.delete_group("g")
        with pytest.raises(wharf.PreconditionFailed):
            await conn.reset_offsets("g", "t", "earliest")
    assert [r.value for r in await conn.fetch("t", 0, 0)] == [b"a", b"b"]


async def _assigned(stream: wharf.Stream) -> bool:
    return bool(stream.assignment())


# -- static membership -----------------------------------------------------------------------


async def test_second_live_stream_with_the_same_instance_id_fences_the_first(
    conn: wharf.Connection, connect: Callable[..., Any]
) -> None:
    await conn.create_topic("t", partitions=2)
    opts: dict[str, Any] = {"instance_id": "host-a", "auto_offset_reset": "earliest", **FAST}
    older = (await connect()).subscribe("t", group="g", **opts)
    newer = (await connect()).subscribe("t", group="g", **opts)
    async with older:
        await wait_until(timeout=WAIT_S, check=lambda: _assigned(older))
        await conn.produce("t", b"one", partition=0)
        assert [r.value for r in await take(older, 1)] == [b"one"]
        await older.commit()
        async with newer:
            # The newer one takes the slot at once (same generation, no rebalance) ...
            await wait_until(timeout=WAIT_S, check=lambda: _assigned(newer))
            assert newer.generation == older.generation
            # ... and the older one stops with FencedInstanceId instead of taking it back.
            with pytest.raises(wharf.FencedInstanceId) as info:
                await older.getmany(timeout=WAIT_S)
            assert info.value.code == 414
            assert info.value.details == {"group": "g", "instance_id": "host-a"}
            with pytest.raises(wharf.FencedInstanceId):
                await older.getmany(timeout=0.1)
            member = newer.member_id
            await asyncio.sleep(0.5)  # several heartbeats: nobody takes the slot back
            assert newer.member_id == member
            desc = await conn.describe_group("g")
            assert [m["member_id"] for m in desc["members"]] == [member]
            await conn.produce("t", b"two", partition=0)
            assert [(r.offset, r.value) for r in await take(newer, 1)] == [(1, b"two")]


# -- restart ---------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_restart_keeps_records_offsets_and_producer_state(tmp_path: Path) -> None:
    settings = {
        "port": _free_port(),
        "group_initial_rebalance_delay_ms": 0,
        "group_min_session_timeout_ms": 100,
    }
    broker = Broker(make_settings(tmp_path, **settings))
    await broker.start()
    url = f"wharf://guest:guest@127.0.0.1:{broker.port}"
    conn = await wharf.connect(url, reconnect=True, reconnect_max_delay=0.05)
    try:
        await conn.create_topic("t", partitions=2, retention_ms=-1, segment_bytes=4096)
        producer = conn.producer()
        for i in range(3):
            assert await producer.produce("t", b"v%d" % i, partition=0, acks="fsynced") == (0, i)
        async with conn.subscribe(
            "t", group="g", auto_offset_reset="earliest", enable_auto_commit=False, **FAST
        ) as s:
            await take(s, 2)
            await s.commit()

        await broker.stop()
        broker = Broker(make_settings(tmp_path, **settings))
        await broker.start()

        desc = await conn.describe_topic("t")
        assert desc["config"]["retention_ms"] == -1 and desc["config"]["segment_bytes"] == 4096
        assert await conn.committed_offsets("g") == {("t", 0): 2, ("t", 1): 0}
        # The idempotent producer goes on with its sequence numbers ...
        assert await producer.produce("t", b"v3", partition=0) == (0, 3)
        # ... and its last batch sent again is recognised, not appended twice.
        raw = await RawClient.open(broker.port)
        payload = encode_values([b"v3"], None, None, 1000)
        pid, epoch = producer.producer_id, producer.producer_epoch
        raw.send(F.Produce(2, "t", 0, payload, 0, "written", pid, epoch, 3))
        ok = await raw.recv()
        assert (ok[2]["base_offset"], ok[2]["duplicate"]) == (3, True)
        await raw.close()
        async with conn.subscribe("t", group="g", auto_offset_reset="earliest", **FAST) as s:
            assert [(r.offset, r.value) for r in await take(s, 2)] == [(2, b"v2"), (3, b"v3")]
            assert await s.getmany(timeout=0.2) == []
    finally:
        await conn.close()
        await broker.stop()


# -- wharf ctl ------------------------------------------------------------------------------


async def test_ctl_shows_topics_and_group_lag(broker: Broker, conn: wharf.Connection) -> None:
    http_url = f"http://127.0.0.1:{broker.http_port}"
    await conn.create_topic("t", partitions=2, retention_ms=3_600_000)
    await conn.produce_many("t", [b"r"] * 10, partition=0)
    await conn.produce_many("t", [b"r"] * 4, partition=1)
    async with conn.subscribe(
        "t", group="g", auto_offset_reset="earliest", enable_auto_commit=False, **FAST
    ) as s:
        await take(s, 14)
        await s.commit({("t", 0): 6, ("t", 1): 4})
        member = s.member_id

        r = await run_ctl("topics", "list", url=http_url)
        assert r.code == 0, r
        header, row = r.out.splitlines()
        assert header.split() == ["NAME", "PARTITIONS", "BYTES", "CLEANUP_POLICY", "RETENTION_MS"]
        assert row.split()[:2] == ["t", "2"] and row.split()[3:] == ["delete", "3600000"]

        r = await run_ctl("topics", "describe", "t", url=http_url)
        assert r.code == 0, r
        table = r.out.split("\n\n")[1].splitlines()
        assert table[0].split() == ["PARTITION", "EARLIEST", "LATEST", "BYTES", "SEGMENTS"]
        assert [line.split()[:3] for line in table[1:]] == [["0", "0", "10"], ["1", "0", "4"]]

        r = await run_ctl("groups", "describe", "g", url=http_url)
        assert r.code == 0, r
        rows = [line.split() for line in r.out.split("\n\n")[1].splitlines()]
        assert rows == [
            ["TOPIC", "PARTITION", "COMMITTED", "LATEST", "LAG", "MEMBER"],
            ["t", "0", "6", "10", "4", member],
            ["t", "1", "4", "4", "0", member],
        ]
        r = await run_ctl("--json", "groups", "describe", "g", url=http_url)
        described = json.loads(r.out)
        assert [(o["partition"], o["lag"]) for o in described["offsets"]] == [(0, 4), (1, 0)]
        # The stream's own view: it has handed out everything.
        assert s.lag() == {("t", 0): 0, ("t", 1): 0}
