"""Log compaction over TCP: latest value per key, offsets kept, tombstones, restart."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pytest

import wharf
from wharf.broker.logs.cleaner import CHECKPOINT_FILE, read_checkpoint
from wharf.broker.server import Broker
from wharf.protocol import frames as F
from wharf.protocol.errors import InvalidArgument
from wharf.protocol.records import encode_values

from ..conftest import RawClient, make_settings
from ..helpers import wait_until

# The cleaner looks for work this often in these tests (default 15 s).
CLEANER_INTERVAL_MS = 20
# Bound on waiting for the cleaner to do something it should do.
WAIT_S = 15.0
# The smallest segment a topic accepts: a few records per segment, so segments roll.
SEGMENT_BYTES = 1024
PAD = b"." * 100

pytestmark = pytest.mark.parametrize(
    "settings_overrides", [{"log_cleaner_interval_ms": CLEANER_INTERVAL_MS}]
)

COMPACTED: dict[str, Any] = {
    "cleanup_policy": "compact",
    "segment_bytes": SEGMENT_BYTES,
    "min_cleanable_dirty_ratio": 0.01,
}


async def read_all(conn: wharf.Connection, topic: str, partition: int = 0) -> list[wharf.Record]:
    """Every record from earliest to latest (one record per produced batch here, so a
    page never ends in a batch whose records all lie before the asked offset)."""
    offset, latest = await conn.list_offsets(topic, partition)
    out: list[wharf.Record] = []
    while offset < latest:
        page = await conn.fetch(topic, partition, offset)
        if not page:
            break
        out += page
        offset = page[-1].offset + 1
    return out


def value(key: bytes, version: int) -> bytes:
    return key + b"=%d|" % version + PAD


async def produce_versions(
    conn: wharf.Connection, topic: str, keys: list[bytes], versions: int
) -> dict[bytes, tuple[int, bytes]]:
    """``versions`` values per key, interleaved; returns key -> (offset, value) of the last."""
    latest: dict[bytes, tuple[int, bytes]] = {}
    for v in range(versions):
        for key in keys:
            _, offset = await conn.produce(topic, value(key, v), key=key, partition=0)
            latest[key] = (offset, value(key, v))
    return latest


async def close_segments(conn: wharf.Connection, topic: str, count: int = 20) -> set[int]:
    """Unique-key records that push everything before them out of the active segment;
    returns their offsets."""
    offsets = set()
    for i in range(count):
        _, offset = await conn.produce(topic, PAD, key=b"filler-%d" % i, partition=0)
        offsets.add(offset)
    return offsets


async def compacted(
    conn: wharf.Connection, topic: str, keys: Iterable[bytes]
) -> list[wharf.Record]:
    """Wait until each of ``keys`` has at most one record left (the cleaner runs as
    segments close, so it may take several passes); returns every record."""
    wanted = set(keys)
    recs: list[wharf.Record] = []

    async def done() -> bool:
        nonlocal recs
        recs = await read_all(conn, topic)
        seen = [r.key for r in recs if r.key in wanted]
        return len(seen) == len(set(seen))

    await wait_until(timeout=WAIT_S, check=done, what=f"one record per key in {topic}")
    return recs


async def cleaner_runs(broker: Broker, at_least: int = 1) -> None:
    async def ran() -> bool:
        assert broker.log_cleaner is not None
        return broker.log_cleaner.runs >= at_least

    await wait_until(timeout=WAIT_S, check=ran, what=f"{at_least} cleaner runs")


async def test_keeps_the_latest_value_per_key_at_its_offset(
    broker: Broker, conn: wharf.Connection
) -> None:
    await conn.create_topic("state", **COMPACTED)
    keys = [b"k%d" % i for i in range(5)]
    latest = await produce_versions(conn, "state", keys, versions=6)
    fillers = await close_segments(conn, "state")
    before = (await conn.describe_topic("state"))["offsets"][0]

    recs = await compacted(conn, "state", latest)
    versions = [(r.offset, r.value) for r in recs if r.key in latest]
    assert versions == sorted(latest.values())  # one per key: the last, where it was
    assert {r.offset for r in recs if r.key not in latest} == fillers
    after = (await conn.describe_topic("state"))["offsets"][0]
    assert (after["earliest"], after["latest"]) == (before["earliest"], before["latest"])
    assert after["bytes"] < before["bytes"]
    # Small neighbouring segments are merged (up to segment_bytes), never split.
    assert 1 <= after["segments"] <= before["segments"]
    # A consumer reading from the start crosses the gaps.
    assert await conn.fetch("state", 0, 0) != []


async def test_offsets_in_a_gap_fetch_the_next_record(
    broker: Broker, conn: wharf.Connection
) -> None:
    await conn.create_topic("gaps", **COMPACTED)
    await produce_versions(conn, "gaps", [b"a"], versions=10)
    await close_segments(conn, "gaps")
    await compacted(conn, "gaps", [b"a"])
    first = await conn.fetch("gaps", 0, 0)
    assert first[0].offset == 9 and first[0].key == b"a"
    assert (await conn.fetch("gaps", 0, 4))[0].offset == 9
    assert await conn.list_offsets("gaps", 0) == (0, 30)


async def test_tombstone_is_kept_for_delete_retention_then_removed(
    broker: Broker, conn: wharf.Connection
) -> None:
    await conn.create_topic("users", **COMPACTED, delete_retention_ms=2000)
    keys = [b"alice", b"bob", b"carol"]
    latest = await produce_versions(conn, "users", keys, versions=3)
    _, tomb = await conn.produce("users", None, key=b"bob", partition=0)
    await close_segments(conn, "users")

    recs = [r for r in await compacted(conn, "users", latest) if r.key in latest]
    assert [(r.offset, r.key, r.value) for r in recs] == [
        (latest[b"alice"][0], b"alice", latest[b"alice"][1]),
        (latest[b"carol"][0], b"carol", latest[b"carol"][1]),
        (tomb, b"bob", None),  # every value of bob went; the tombstone stays for now
    ]

    async def tombstone_gone() -> bool:
        return all(r.key != b"bob" for r in await read_all(conn, "users"))

    await wait_until(
        timeout=WAIT_S, check=tombstone_gone, what="the tombstone removed after delete_retention_ms"
    )
    left = [r.key for r in await read_all(conn, "users") if r.key in latest]
    assert left == [b"alice", b"carol"]


async def test_record_without_key_is_refused(conn: wharf.Connection) -> None:
    await conn.create_topic("keyed", cleanup_policy="compact")
    with pytest.raises(InvalidArgument, match="key"):
        await conn.produce("keyed", b"no key")
    with pytest.raises(InvalidArgument, match="key"):
        await conn.produce_records("keyed", [(b"k", b"v", None, None), (None, b"v", None, None)])
    assert await conn.list_offsets("keyed", 0) == (0, 0)
    await conn.produce("keyed", None, key=b"k")  # a tombstone needs a key too, and has one


async def test_nothing_is_cleaned_below_the_dirty_ratio(
    broker: Broker, conn: wharf.Connection
) -> None:
    await conn.create_topic("lazy", **{**COMPACTED, "min_cleanable_dirty_ratio": 1.0})
    latest = await produce_versions(conn, "lazy", [b"x", b"y"], versions=5)
    await close_segments(conn, "lazy")
    # Time is the behaviour here: a few cleaner intervals pass without a clean.
    await asyncio.sleep(10 * CLEANER_INTERVAL_MS / 1000)
    assert broker.log_cleaner is not None and broker.log_cleaner.runs == 0
    assert len([r for r in await read_all(conn, "lazy") if r.key in latest]) == 10

    await conn.alter_topic("lazy", min_cleanable_dirty_ratio=0.5)
    recs = await compacted(conn, "lazy", latest)
    assert [r.offset for r in recs if r.key in latest] == sorted(o for o, _ in latest.values())


async def test_delete_topic_to_compact_keeps_keyed_latest_values(
    broker: Broker, conn: wharf.Connection
) -> None:
    await conn.create_topic("switch", segment_bytes=SEGMENT_BYTES)
    await conn.produce("switch", b"no key", partition=0)
    latest = await produce_versions(conn, "switch", [b"a", b"b"], versions=3)
    await close_segments(conn, "switch")
    await conn.alter_topic("switch", cleanup_policy="compact", min_cleanable_dirty_ratio=0.01)
    recs = await compacted(conn, "switch", latest)
    assert recs[0].key is not None  # as in Kafka, a record without a key is not kept
    assert [r.offset for r in recs if r.key in latest] == sorted(o for o, _ in latest.values())


async def test_batch_losing_its_last_records_keeps_the_stream_going(
    broker: Broker, conn: wharf.Connection
) -> None:
    await conn.create_topic("batches", **COMPACTED)
    await conn.produce_records(
        "batches", [(b"keep", b"1", None, None), (b"gone", b"1", None, None)], partition=0
    )
    await conn.produce("batches", b"2", key=b"gone", partition=0)
    fillers = await close_segments(conn, "batches")
    await compacted(conn, "batches", [b"gone"])
    got: list[tuple[int, bytes | None]] = []
    async with conn.subscribe("batches", auto_offset_reset="earliest") as stream:
        while len(got) < 2 + len(fillers):
            rec = await asyncio.wait_for(anext(stream), WAIT_S)
            got.append((rec.offset, rec.key))
    assert got[:3] == [(0, b"keep"), (2, b"gone"), (3, b"filler-0")]


async def test_compact_and_delete_both_apply(broker: Broker, conn: wharf.Connection) -> None:
    await conn.create_topic(
        "both", **{**COMPACTED, "cleanup_policy": "compact,delete"}, retention_ms=3_600_000
    )
    old = int(time.time() * 1000) - 7_200_000  # older than retention_ms
    for i in range(10):
        await conn.produce("both", PAD, key=b"old-%d" % i, partition=0, timestamp=old)
    latest = await produce_versions(conn, "both", [b"a", b"b"], versions=4)
    await close_segments(conn, "both")
    logs = broker.logs
    assert logs is not None

    async def retention_applied() -> bool:
        # Retention (a periodic check) deletes a closed segment once its roll finished.
        logs.check_retention(int(time.time() * 1000))
        return (await conn.list_offsets("both", 0))[0] > 0

    await wait_until(timeout=WAIT_S, check=retention_applied, what="retention of the old segments")
    recs = await compacted(conn, "both", latest)
    earliest, _ = await conn.list_offsets("both", 0)
    assert earliest > 0  # retention deleted whole segments of old records...
    old_left = [r.offset for r in recs if r.key is not None and r.key.startswith(b"old-")]
    assert len(old_left) < 10 and all(o >= earliest for o in old_left)
    assert [r.offset for r in recs if r.key in latest] == sorted(o for o, _ in latest.values())


async def test_metrics_count_runs_and_bytes_removed(broker: Broker, conn: wharf.Connection) -> None:
    await conn.create_topic("m", **COMPACTED)
    await produce_versions(conn, "m", [b"k"], versions=10)
    await close_segments(conn, "m")
    await cleaner_runs(broker)
    reader, writer = await asyncio.open_connection("127.0.0.1", broker.http_port)
    writer.write(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    metrics = (await asyncio.wait_for(reader.read(), 5)).decode()
    writer.close()
    lines = dict(
        line.rsplit(" ", 1) for line in metrics.splitlines() if line.startswith("wharf_log_cleaner")
    )
    assert float(lines["wharf_log_cleaner_runs_total"]) >= 1
    assert float(lines["wharf_log_cleaner_bytes_removed_total"]) > 0


async def test_compacted_data_survives_a_restart(
    tmp_path: Path, settings_overrides: dict[str, Any]
) -> None:
    settings = make_settings(tmp_path, **settings_overrides)
    b = Broker(settings)
    await b.start()
    try:
        conn = await wharf.connect(f"wharf://guest:guest@127.0.0.1:{b.port}")
        await conn.create_topic("durable", **COMPACTED, delete_retention_ms=3_600_000)
        latest = await produce_versions(conn, "durable", [b"p", b"q", b"r"], versions=4)
        _, tomb = await conn.produce("durable", None, key=b"q", partition=0, acks="fsynced")
        await close_segments(conn, "durable")
        before = await compacted(conn, "durable", latest)
        assert b.logs is not None
        part = b.logs.get("durable").partitions[0]
        checkpoint = part.path / CHECKPOINT_FILE

        async def all_closed_segments_cleaned() -> bool:
            active = part.segments[-1].base_offset
            return checkpoint.exists() and read_checkpoint(part.path).dirty_offset == active

        await wait_until(
            timeout=WAIT_S,
            check=all_closed_segments_cleaned,
            what="the checkpoint at the active segment",
        )
        await conn.close()
    finally:
        await b.stop()
    assert not list((tmp_path / "data").rglob("*.cleaned"))

    b = Broker(settings)
    await b.start()
    try:
        conn = await wharf.connect(f"wharf://guest:guest@127.0.0.1:{b.port}")
        after = await read_all(conn, "durable")
        assert [(r.offset, r.key, r.value) for r in after] == [
            (r.offset, r.key, r.value) for r in before
        ]
        kept = [(r.offset, r.value) for r in after if r.key in latest]
        assert kept == sorted([latest[b"p"], latest[b"r"], (tomb, None)])
        # The checkpoint survived too: with nothing new, no pass runs again.
        await asyncio.sleep(10 * CLEANER_INTERVAL_MS / 1000)
        assert b.log_cleaner is not None and b.log_cleaner.runs == 0
        # New versions are compacted against the old ones.
        await conn.produce("durable", b"p-new", key=b"p", partition=0)
        await close_segments(conn, "durable", 20)
        await cleaner_runs(b)
        ps = [r.value for r in await compacted(conn, "durable", [b"p"]) if r.key == b"p"]
        assert ps == [b"p-new"]
        await conn.close()
    finally:
        await b.stop()


async def test_idempotent_producer_state_survives_compaction_and_restart(
    tmp_path: Path, settings_overrides: dict[str, Any]
) -> None:
    settings = make_settings(tmp_path, **settings_overrides)

    async def produce(client: RawClient, rid: int, pid: int, seq: int, v: bytes) -> Any:
        payload = encode_values([v], b"x", None, int(time.time() * 1000))
        client.send(F.Produce(rid, "idem", 0, payload, 0, "written", pid, 0, seq))
        return await client.recv()

    b = Broker(settings)
    await b.start()
    try:
        conn = await wharf.connect(f"wharf://guest:guest@127.0.0.1:{b.port}")
        await conn.create_topic("idem", **COMPACTED)
        client = await RawClient.open(b.port)
        client.send(F.InitProducer(2))
        pid = (await client.recv())[2]["producer_id"]
        assert (await produce(client, 3, pid, 0, b"old"))[2]["base_offset"] == 0
        # A later value for the same key from someone else: the producer's only batch
        # holds nothing but a superseded record, and is kept all the same.
        await conn.produce("idem", b"new", key=b"x", partition=0)
        await close_segments(conn, "idem")
        await cleaner_runs(b)
        kept = [r.value for r in await read_all(conn, "idem") if r.key == b"x"]
        assert kept == [b"old", b"new"]
        await client.close()
        await conn.close()
    finally:
        await b.stop()
    # Without snapshots the producer's state is read back from the batches themselves.
    for snap in (tmp_path / "data").rglob("*.snapshot"):
        snap.unlink()

    b = Broker(settings)
    await b.start()
    try:
        client = await RawClient.open(b.port)
        again = await produce(client, 4, pid, 0, b"old")  # a retry of the first batch
        assert (again[0], again[2]["base_offset"], again[2]["duplicate"]) == (F.OK, 0, True)
        ok = await produce(client, 5, pid, 1, b"next")  # the next one, in sequence
        assert (ok[0], ok[2]["base_offset"], ok[2]["duplicate"]) == (F.OK, 22, False)
        await client.close()
    finally:
        await b.stop()
