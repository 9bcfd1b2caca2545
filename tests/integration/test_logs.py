"""Log topics over TCP: create/describe/alter/delete, produce, fetch, offsets, restart."""

from __future__ import annotations

import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import wharf
from wharf.broker.config import Settings
from wharf.broker.server import Broker
from wharf.protocol import frames as F
from wharf.protocol.errors import InvalidArgument, NotFound, PreconditionFailed

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
    assert rec.timestamp > 1_600_000_000_000  # filled in by the broker


async def test_same_key_same_partition_offsets_increase(conn: wharf.Connection) -> None:
    await conn.create_topic("orders", partitions=4)
    placed = [await conn.produce("orders", b"%d" % i, key=b"k-7") for i in range(5)]
    assert {p for p, _ in placed} == {zlib.crc32(b"k-7") % 4}
    assert [o for _, o in placed] == [0, 1, 2, 3, 4]
    p = placed[0][0]
    assert await conn.list_offsets("orders", p) == (0, 5)


async def test_round_robin_without_key_and_explicit_partition(conn: wharf.Connection) -> None:
    await conn.create_topic("rr", partitions=3)
    parts = [(await conn.produce("rr", b"x"))[0] for _ in range(6)]
    assert sorted(parts) == [0, 0, 1, 1, 2, 2]
    assert await conn.produce("rr", b"y", key=b"ignored", partition=1) == (1, 2)


async def test_produce_many_and_fetch_from_the_middle(conn: wharf.Connection) -> None:
    await conn.create_topic("t")
    assert await conn.produce_many("t", [b"a", b"b", b"c"]) == (0, 0)
    assert await conn.produce_many("t", [b"d", b"e"], acks="fsynced") == (0, 3)
    recs = await conn.fetch("t", 0, 2)
    assert [(r.offset, r.value) for r in recs] == [(2, b"c"), (3, b"d"), (4, b"e")]
    assert await conn.fetch("t", 0, 5) == []
    # max_bytes limits whole batches but always returns something.
    small = await conn.fetch("t", 0, 0 + 1, max_bytes=1)
    assert [r.offset for r in small] == [1, 2]


async def test_offset_out_of_range_is_a_clear_error(conn: wharf.Connection) -> None:
    await conn.create_topic("t")
    await conn.produce("t", b"a")
    with pytest.raises(InvalidArgument) as info:
        await conn.fetch("t", 0, 7)
    assert info.value.details == {"earliest": 0, "latest": 1, "offset": 7}
    assert "0..1" in info.value.message
    # The connection stays usable.
    assert [r.value for r in await conn.fetch("t", 0, 0)] == [b"a"]


async def test_unknown_topic_and_partition(conn: wharf.Connection) -> None:
    with pytest.raises(NotFound):
        await conn.produce("nope", b"a")
    await conn.create_topic("t", partitions=2)
    with pytest.raises(NotFound):
        await conn.fetch("t", 2, 0)
    with pytest.raises(NotFound):
        await conn.list_offsets("nope", 0)


async def test_create_describe_alter_delete(conn: wharf.Connection) -> None:
    await conn.create_topic("t", partitions=2)
    assert (await conn.create_topic("t", partitions=2))["created"] is False
    with pytest.raises(PreconditionFailed):
        await conn.create_topic("t", partitions=3)
    with pytest.raises(InvalidArgument):
        await conn.create_topic("bad/name")
    with pytest.raises(InvalidArgument, match="not supported yet"):
        await conn.create_topic("u", retention_ms=1000)
    info = await conn.alter_topic("t", 4)
    assert info["partitions"] == 4
    with pytest.raises(InvalidArgument, match="never shrink"):
        await conn.alter_topic("t", 2)
    await conn.produce("t", b"x", partition=3)
    desc = await conn.describe_topic("t")
    assert desc["offsets"][3] == {"partition": 3, "earliest": 0, "latest": 1}
    await conn.delete_topic("t")
    with pytest.raises(NotFound):
        await conn.describe_topic("t")
    # Re-created empty.
    await conn.create_topic("t")
    assert await conn.list_offsets("t", 0) == (0, 0)


async def test_bad_records_are_rejected(raw_client: Callable[..., Any]) -> None:
    client: RawClient = await raw_client()
    client.send(F.TopicCreate(2, "t", 1, None))
    assert (await client.recv())[0] == F.OK
    client.send_array([F.PRODUCE, 3, "t", 0, [["key-not-bin", b"v", None, 0]], "written"])
    err = await client.recv()
    assert (err[0], err[1], err[2]) == (F.ERROR, 3, 400)
    client.send_array([F.PRODUCE, 4, "t", 0, [[None, b"v", None, 0]], "sometimes"])
    err = await client.recv()
    assert (err[0], err[1], err[2]) == (F.ERROR, 4, 400)
    client.send(F.ListOffsets(5, "t", 0))
    ok = await client.recv()
    assert ok[0] == F.OK
    assert ok[2] == {"earliest": 0, "latest": 0}


def _settings(tmp_path: Path) -> Settings:
    return Settings(host="127.0.0.1", port=0, http_port=0, data_dir=str(tmp_path / "data"))


def _url(b: Broker) -> str:
    return f"wharf://guest:guest@127.0.0.1:{b.port}"


async def test_topic_survives_restart(tmp_path: Path) -> None:
    b = Broker(_settings(tmp_path))
    await b.start()
    try:
        async with await wharf.connect(_url(b)) as conn:
            await conn.create_topic("events", partitions=2)
            await conn.produce_many("events", [b"a", b"b"], partition=1, acks="fsynced")
            await conn.produce("events", b"c", key=b"k", headers={"n": 1}, acks="fsynced")
    finally:
        await b.stop()
    b = Broker(_settings(tmp_path))
    await b.start()
    try:
        async with await wharf.connect(_url(b)) as conn:
            desc = await conn.describe_topic("events")
            assert desc["partitions"] == 2
            assert (await conn.list_offsets("events", 1))[1] >= 2
            values = [r.value for p in (0, 1) for r in await conn.fetch("events", p, 0)]
            assert sorted(values) == [b"a", b"b", b"c"]
            p, off = await conn.produce("events", b"d", partition=1)
            assert off == (await conn.list_offsets("events", 1))[1] - 1
            assert p == 1
    finally:
        await b.stop()
