"""Log topics over TCP: create/describe/alter/delete, settings, produce, fetch, restart."""

from __future__ import annotations

import asyncio
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgpack
import pytest

import wharf
from wharf.broker.config import Settings
from wharf.broker.server import Broker
from wharf.protocol import frames as F
from wharf.protocol.errors import (
    ContentTooLarge,
    InvalidArgument,
    NotFound,
    OffsetOutOfRange,
    PreconditionFailed,
)
from wharf.protocol.records import compress, encode_values, read_header

from ..conftest import RawClient


async def test_produce_fetch_round_trip(conn: wharf.Connection) -> None:
    info = await conn.create_topic("events", partitions=3)
    assert info["partitions"] == 3
    assert info["created"] is True
    p, off = await conn.produce("events", b"v1", key=b"user-42", headers={"h": "x"}, acks="fsynced")
    assert p == zlib.crc32(b"user-42") % 3
    assert off == 0
    recs = await conn.fetch("events", p, 0)
    assert len(recs) == 1
    rec = recs[0]
    assert (rec.topic, rec.partition, rec.offset) == ("events", p, 0)
    assert (rec.key, rec.value, rec.headers) == (b"user-42", b"v1", {"h": "x"})
    assert rec.timestamp > 1_600_000_000_000  # the client's clock


async def test_same_key_same_partition_offsets_increase(conn: wharf.Connection) -> None:
    await conn.create_topic("orders", partitions=4)
    placed = [await conn.produce("orders", b"%d" % i, key=b"k-7") for i in range(5)]
    assert {p for p, _ in placed} == {zlib.crc32(b"k-7") % 4}
    assert [o for _, o in placed] == [0, 1, 2, 3, 4]
    assert await conn.list_offsets("orders", placed[0][0]) == (0, 5)


async def test_round_robin_without_key_and_explicit_partition(conn: wharf.Connection) -> None:
    await conn.create_topic("rr", partitions=3)
    parts = [(await conn.produce("rr", b"x"))[0] for _ in range(6)]
    assert sorted(parts) == [0, 0, 1, 1, 2, 2]
    assert await conn.produce("rr", b"y", key=b"ignored", partition=1) == (1, 2)


async def test_produce_many_records_and_fetch_from_the_middle(conn: wharf.Connection) -> None:
    await conn.create_topic("t")
    assert await conn.produce_many("t", [b"a", b"b", b"c"], timestamp=1234) == (0, 0)
    assert await conn.produce_many("t", [b"d", b"e"], acks="fsynced") == (0, 3)
    recs = await conn.fetch("t", 0, 2)
    assert [(r.offset, r.value) for r in recs] == [(2, b"c"), (3, b"d"), (4, b"e")]
    assert recs[0].timestamp == 1234
    assert await conn.fetch("t", 0, 5) == []
    placed = await conn.produce_records(
        "t", [(b"k1", b"f", {"n": 1}, 50), (None, None, None, None)], acks="fsynced"
    )
    assert placed == (0, 5)
    recs = await conn.fetch("t", 0, 5)
    assert [(r.key, r.value, r.headers, r.timestamp) for r in recs[:1]] == [
        (b"k1", b"f", {"n": 1}, 50)
    ]
    assert (recs[1].key, recs[1].value) == (None, None)  # a tombstone-shaped record


async def test_fetch_max_bytes_returns_whole_batches_at_least_one(conn: wharf.Connection) -> None:
    await conn.create_topic("t")
    for i in range(4):
        await conn.produce_many("t", [bytes([65 + i]) * 500] * 2)
    one = await conn.fetch("t", 0, 1, max_bytes=1)
    assert [r.offset for r in one] == [1]  # the batch holding offset 1, first record skipped
    two = await conn.fetch("t", 0, 0, max_bytes=2200)
    assert [r.offset for r in two] == [0, 1, 2, 3]


async def test_gzip_batches_round_trip(conn: wharf.Connection) -> None:
    await conn.create_topic("z")
    value = b"compressible " * 200
    await conn.produce_many("z", [value] * 10, compression="gzip", acks="fsynced")
    desc = await conn.describe_topic("z")
    assert desc["offsets"][0]["bytes"] < len(value)  # stored compressed, as sent
    recs = await conn.fetch("z", 0, 3)
    assert [r.offset for r in recs] == list(range(3, 10))
    assert all(r.value == value for r in recs)
    with pytest.raises(InvalidArgument, match="compression"):
        await conn.produce("z", b"x", compression="zstd")


async def test_offset_out_of_range_is_a_clear_error(conn: wharf.Connection) -> None:
    await conn.create_topic("t")
    await conn.produce("t", b"a")
    with pytest.raises(OffsetOutOfRange) as info:
        await conn.fetch("t", 0, 7)
    assert info.value.code == 416
    assert info.value.details == {"earliest": 0, "latest": 1, "offset": 7}
    assert "0..1" in info.value.message
    assert [r.value for r in await conn.fetch("t", 0, 0)] == [b"a"]  # still usable


async def test_unknown_topic_and_partition(conn: wharf.Connection) -> None:
    with pytest.raises(NotFound):
        await conn.produce("nope", b"a")
    await conn.create_topic("t", partitions=2)
    with pytest.raises(NotFound):
        await conn.fetch("t", 2, 0)
    with pytest.raises(NotFound):
        await conn.list_offsets("nope", 0)


async def test_create_describe_alter_list_delete(conn: wharf.Connection) -> None:
    await conn.create_topic("t", partitions=2, retention_ms=60_000)
    again = await conn.create_topic("t", partitions=2, retention_ms=60_000)
    assert again["created"] is False
    with pytest.raises(PreconditionFailed):
        await conn.create_topic("t", partitions=3)
    with pytest.raises(PreconditionFailed):
        await conn.create_topic("t", partitions=2, retention_ms=1)
    with pytest.raises(InvalidArgument):
        await conn.create_topic("bad/name")
    info = await conn.alter_topic("t", 4)
    assert info["partitions"] == 4
    with pytest.raises(InvalidArgument, match="never shrink"):
        await conn.alter_topic("t", 2)
    await conn.produce("t", b"x", partition=3)
    desc = await conn.describe_topic("t")
    assert desc["offsets"][3]["partition"] == 3
    assert (desc["offsets"][3]["earliest"], desc["offsets"][3]["latest"]) == (0, 1)
    assert desc["offsets"][3]["segments"] == 1 and desc["offsets"][3]["bytes"] > 64
    assert desc["config"]["retention_ms"] == 60_000
    assert desc["config"]["segment_bytes"] == 1_073_741_824  # every effective setting
    assert desc["internal"] is False
    await conn.create_topic("u")
    assert [t["name"] for t in await conn.list_topics()] == ["t", "u"]
    await conn.delete_topic("t")
    with pytest.raises(NotFound):
        await conn.describe_topic("t")
    await conn.create_topic("t")
    assert await conn.list_offsets("t", 0) == (0, 0)
    assert (await conn.describe_topic("t"))["config"]["retention_ms"] == 604_800_000


async def test_settings_are_validated_and_altered(conn: wharf.Connection) -> None:
    with pytest.raises(InvalidArgument) as info:
        await conn.create_topic("t", retention_msec=5)
    assert info.value.details == {"config": "retention_msec"}
    with pytest.raises(InvalidArgument) as info:
        await conn.create_topic("t", segment_bytes=1)
    assert info.value.details == {"config": "segment_bytes"}
    await conn.create_topic("t", cleanup_policy="delete")
    with pytest.raises(InvalidArgument) as info:
        await conn.alter_topic("t", timestamp_type="sometime")
    assert info.value.details == {"config": "timestamp_type"}
    desc = await conn.alter_topic("t", retention_bytes=10_000, cleanup_policy="compact,delete")
    assert desc["partitions"] == 1
    assert desc["config"]["retention_bytes"] == 10_000
    assert desc["config"]["cleanup_policy"] == "compact,delete"


async def test_compacted_topic_refuses_records_without_key(conn: wharf.Connection) -> None:
    await conn.create_topic("c", cleanup_policy="compact")
    with pytest.raises(InvalidArgument, match="needs a key"):
        await conn.produce("c", b"v")
    assert await conn.produce("c", b"v", key=b"k") == (0, 0)
    assert await conn.produce("c", None, key=b"k") == (0, 1)  # a tombstone


async def test_log_append_time_topic(conn: wharf.Connection) -> None:
    await conn.create_topic("la", timestamp_type="log_append_time")
    before = (await conn.fetch("la", 0, 0)) == []
    assert before
    await conn.produce("la", b"old", timestamp=5)
    rec = (await conn.fetch("la", 0, 0))[0]
    assert rec.timestamp > 1_600_000_000_000  # the broker's clock, not 5


async def test_produce_reply_fields(raw_client: Callable[..., Any]) -> None:
    client: RawClient = await raw_client()
    client.send(F.TopicCreate(2, "t", 1, {"timestamp_type": "log_append_time"}))
    assert (await client.recv())[0] == F.OK
    payload = encode_values([b"a", b"b"], None, None, 10)
    client.send(F.Produce(3, "t", 0, payload))
    ok = await client.recv()
    assert ok[0] == F.OK and ok[1] == 3
    assert ok[2]["partition"] == 0 and ok[2]["base_offset"] == 0
    assert ok[2]["duplicate"] is False and ok[2]["log_append_time"] > 0
    client.send(F.Fetch(4, "t", 0, 0))
    ok = await client.recv()
    assert ok[2]["high_watermark"] == 2 and ok[2]["log_start"] == 0
    (batch,) = ok[2]["batches"]
    assert batch.endswith(payload)  # stored as sent, behind the broker's header
    assert read_header(batch).record_count == 2


@pytest.mark.parametrize(
    ("payload", "codec", "why"),
    [
        (b"\xc1", 0, "msgpack"),
        (msgpack.packb([]), 0, "at least one"),
        (msgpack.packb([[0, 1, "str-key", b"v", None]]), 0, "key must be bin"),
        (msgpack.packb([[1, 1, None, b"v", None]]), 0, "offset_delta"),
        (msgpack.packb([[0, -5, None, b"v", None]]), 0, "timestamp"),
        (msgpack.packb([[0, 1, None, b"v", 7]]), 0, "headers"),
        (msgpack.packb([[0, 2**64 - 1, None, b"v", None]]), 0, "at most"),
        (b"not gzip", 1, "gzip"),
        (compress(msgpack.packb([[0, 1, None, b"v", None]]), 1), 9, "codec"),
    ],
)
async def test_bad_batches_are_refused(
    raw_client: Callable[..., Any], payload: bytes, codec: int, why: str
) -> None:
    client: RawClient = await raw_client()
    client.send(F.TopicCreate(2, "t", 1, None))
    assert (await client.recv())[0] == F.OK
    client.send_array([F.PRODUCE, 3, "t", 0, payload, codec, "written"])
    err = await client.recv()
    assert (err[0], err[1], err[2]) == (F.ERROR, 3, 400)
    assert why in err[3]
    client.send_array([F.PRODUCE, 4, "t", 0, encode_values([b"v"], None, None, 1), 0, "later"])
    err = await client.recv()
    assert (err[0], err[1], err[2]) == (F.ERROR, 4, 400)
    client.send(F.ListOffsets(5, "t", 0))
    ok = await client.recv()
    assert ok[0] == F.OK and ok[2] == {"earliest": 0, "latest": 0, "last_stable": 0}


@pytest.mark.parametrize(
    ("pid", "epoch", "seq"), [(2**64 - 1, 0, 0), (1, 2**15, 0), (1, 0, 2**31), (-7, 0, 0)]
)
async def test_bad_producer_fields_are_refused(
    raw_client: Callable[..., Any], pid: int, epoch: int, seq: int
) -> None:
    client: RawClient = await raw_client()
    client.send(F.TopicCreate(2, "t", 1, None))
    assert (await client.recv())[0] == F.OK
    payload = encode_values([b"v"], None, None, 1)
    client.send_array([F.PRODUCE, 3, "t", 0, payload, 0, "written", pid, epoch, seq])
    err = await client.recv()
    assert (err[0], err[1], err[2]) == (F.ERROR, 3, 400)


@pytest.mark.parametrize("settings_overrides", [{"max_message_bytes": 4096}])
async def test_batch_bigger_than_max_message_bytes(conn: wharf.Connection) -> None:
    await conn.create_topic("t")
    with pytest.raises(ContentTooLarge):
        await conn.produce_many("t", [b"x" * 1000] * 5)
    assert await conn.produce_many("t", [b"x" * 1000] * 3) == (0, 0)


def _settings(tmp_path: Path, **extra: Any) -> Settings:
    return Settings(
        host="127.0.0.1", port=0, http_port=0, amqp_port=0, data_dir=str(tmp_path / "data"), **extra
    )


def _url(b: Broker) -> str:
    return f"wharf://guest:guest@127.0.0.1:{b.port}"


async def test_topic_and_settings_survive_restart(tmp_path: Path) -> None:
    b = Broker(_settings(tmp_path))
    await b.start()
    try:
        async with await wharf.connect(_url(b)) as conn:
            await conn.create_topic("events", partitions=2, segment_bytes=2048, retention_ms=-1)
            for i in range(20):
                await conn.produce_many("events", [b"v%d" % i] * 10, partition=1)
            await conn.produce("events", b"c", key=b"k", partition=0, acks="fsynced")
            before = await conn.describe_topic("events")
    finally:
        await b.stop()
    b = Broker(_settings(tmp_path))
    await b.start()
    try:
        async with await wharf.connect(_url(b)) as conn:
            desc = await conn.describe_topic("events")
            assert desc == before
            assert desc["offsets"][1]["segments"] > 1
            values: list[bytes | None] = []
            offset = 0
            while recs := await conn.fetch("events", 1, offset):
                values += [r.value for r in recs]
                offset = recs[-1].offset + 1
            assert values == [b"v%d" % (i // 10) for i in range(200)]
            assert await conn.produce("events", b"d", partition=1) == (1, 200)
    finally:
        await b.stop()


async def test_blocking_client_log_verbs(url: str) -> None:
    def use_it() -> list[wharf.Record]:
        with wharf.sync.connect(url, call_timeout=10.0) as c:
            c.create_topic("s", partitions=2, retention_ms=-1)
            assert c.produce("s", b"a", partition=1) == (1, 0)
            assert c.produce_many("s", [b"b", b"c"], partition=1, acks="fsynced") == (1, 1)
            assert c.list_offsets("s", 1) == (0, 3)
            assert [t["name"] for t in c.list_topics()] == ["s"]
            return c.fetch("s", 1, 1, max_wait=0.1)

    recs = await asyncio.to_thread(use_it)
    assert [(r.offset, r.value) for r in recs] == [(1, b"b"), (2, b"c")]
