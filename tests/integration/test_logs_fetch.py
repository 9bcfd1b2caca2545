"""Log topics over TCP: long-poll FETCH and FETCH_MANY, and produce with acks="none"."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

import pytest

import wharf
from wharf.broker.server import Broker
from wharf.broker.wire.native.log_requests import MAX_PENDING_FETCHES
from wharf.protocol import frames as F
from wharf.protocol.records import decode_records, encode_values

from ..conftest import RawClient
from ..helpers import wait_until
from .test_http import scrape

LONG_WAIT_MS = 20_000  # never reached: these tests end by data or by closing


async def fetches_waiting(broker: Broker, topic: str, partition: int = 0) -> float:
    """The partition's parked long-poll fetches, as /metrics shows them."""
    samples = await scrape(broker)
    labels = frozenset({"topic": topic, "partition": str(partition), "vhost": "/"}.items())
    return samples[("wharf_topic_partition_fetches_waiting", labels)]


async def test_fetch_waits_for_a_record(
    broker: Broker, conn: wharf.Connection, connect: Any
) -> None:
    await conn.create_topic("t")
    await conn.produce("t", b"first")
    waiting = asyncio.create_task(conn.fetch("t", 0, 1, max_wait=LONG_WAIT_MS / 1000))

    async def parked() -> bool:
        return await fetches_waiting(broker, "t") == 1

    await wait_until(parked, what="the fetch to wait at the end of the partition")
    assert not waiting.done()
    other: wharf.Connection = await connect()
    await other.produce("t", b"second")
    recs = await asyncio.wait_for(waiting, 5.0)
    assert [(r.offset, r.value) for r in recs] == [(1, b"second")]


async def test_fetch_wait_ends_empty(conn: wharf.Connection) -> None:
    await conn.create_topic("t")
    assert await conn.fetch("t", 0, 0, max_wait=0.1) == []


async def test_fetch_with_data_answers_at_once(conn: wharf.Connection) -> None:
    await conn.create_topic("t")
    await conn.produce("t", b"x")
    recs = await asyncio.wait_for(conn.fetch("t", 0, 0, max_wait=LONG_WAIT_MS / 1000), 5.0)
    assert [r.value for r in recs] == [b"x"]


async def fetch_many(client: RawClient, rid: int, entries: list[Any], wait_ms: int = 0) -> None:
    client.send(F.FetchMany(rid, entries, wait_ms))


async def test_fetch_many_answers_per_partition(raw_client: Callable[..., Any]) -> None:
    client: RawClient = await raw_client()
    client.send(F.TopicCreate(2, "t", 2, None))
    assert (await client.recv())[0] == F.OK
    client.send(F.Produce(3, "t", 1, encode_values([b"a", b"b"], None, None, 7)))
    assert (await client.recv())[0] == F.OK
    entries = [["t", 0, 0, 1000], ["t", 1, 1, 1000], ["nope", 0, 0, 1000], ["t", 1, 9, 1000]]
    await fetch_many(client, 4, entries, LONG_WAIT_MS)
    ok = await client.recv()
    assert ok[0] == F.OK and ok[1] == 4
    results = ok[2]["results"]
    assert [r[:5] for r in results] == [
        ["t", 0, 0, 0, 0],
        ["t", 1, 0, 2, 0],
        ["nope", 0, 404, -1, -1],
        ["t", 1, 416, 2, 0],
    ]
    assert results[0][5] == []
    (batch,) = results[1][5]
    assert [r[3] for r in decode_records(batch, 1)] == [b"b"]
    assert "no topic" in results[2][5] and "out of range" in results[3][5]


async def test_fetch_many_waits_until_any_partition_has_data(
    raw_client: Callable[..., Any],
) -> None:
    client: RawClient = await raw_client()
    producer: RawClient = await raw_client()
    client.send(F.TopicCreate(2, "a", 1, None))
    client.send(F.TopicCreate(3, "b", 1, None))
    assert [(await client.recv())[0] for _ in range(2)] == [F.OK, F.OK]
    await fetch_many(client, 4, [["a", 0, 0, 1000], ["b", 0, 0, 1000]], LONG_WAIT_MS)
    with pytest.raises(TimeoutError):
        await client.recv(timeout=0.1)
    producer.send(F.Produce(2, "b", 0, encode_values([b"v"], None, None, 7)))
    assert (await producer.recv())[0] == F.OK
    ok = await client.recv()
    assert ok[1] == 4
    a, b = ok[2]["results"]
    assert a[:6] == ["a", 0, 0, 0, 0, []]
    assert b[:5] == ["b", 0, 0, 1, 0] and len(b[5]) == 1


async def test_fetch_many_total_max_bytes(raw_client: Callable[..., Any]) -> None:
    client: RawClient = await raw_client()
    client.send(F.TopicCreate(2, "t", 2, None))
    assert (await client.recv())[0] == F.OK
    for p in (0, 1):
        client.send(F.Produce(3, "t", p, encode_values([b"x" * 1000], None, None, 7)))
        assert (await client.recv())[0] == F.OK
    client.send(F.FetchMany(4, [["t", 0, 0, 10_000], ["t", 1, 0, 10_000]], 0, 1500))
    first, second = (await client.recv())[2]["results"]
    assert len(first[5]) == 1  # over the total, but the first batch always comes
    assert second[2] == 0 and second[5] == []


async def test_fetch_many_reads_of_one_answer_do_not_overlap(
    raw_client: Callable[..., Any],
) -> None:
    # One answer holds reads of several partitions, of several segments of one
    # partition, and of one partition twice; the next answer reuses the broker's read
    # memory.  Every batch must come back as it was produced.
    client: RawClient = await raw_client()
    client.send(F.TopicCreate(2, "t", 2, {"segment_bytes": 4096}))
    assert (await client.recv())[0] == F.OK
    produced: dict[int, list[bytes]] = {0: [], 1: []}
    for i in range(12):
        for p in (0, 1):
            values = [b"%d-%d-%d-" % (p, i, j) + bytes([i]) * 700 for j in range(3)]
            produced[p] += values
            client.send(F.Produce(3, "t", p, encode_values(values, None, None, 7)))
            assert (await client.recv())[0] == F.OK
    entries = [["t", 0, 0, 1 << 20], ["t", 1, 5, 1 << 20], ["t", 0, 9, 1 << 20]]
    for rid in (4, 5):
        await fetch_many(client, rid, entries)
        results = (await client.recv())[2]["results"]
        got = [
            [r[3] for b in res[5] for r in decode_records(b, offset)]
            for res, (_t, _p, offset, _m) in zip(results, entries, strict=True)
        ]
        assert got == [produced[0], produced[1][5:], produced[0][9:]]


async def test_long_poll_answers_when_the_topic_is_deleted(
    raw_client: Callable[..., Any],
) -> None:
    client: RawClient = await raw_client()
    admin: RawClient = await raw_client()
    client.send(F.TopicCreate(2, "t", 1, None))
    assert (await client.recv())[0] == F.OK
    client.send(F.Fetch(3, "t", 0, 0, 1000, LONG_WAIT_MS))
    admin.send(F.TopicDelete(2, "t"))
    assert (await admin.recv())[0] == F.OK
    err = await client.recv()
    assert (err[0], err[1], err[2]) == (F.ERROR, 3, 404)


async def test_closed_connection_drops_its_waiting_fetches(
    raw_client: Callable[..., Any], broker: Broker
) -> None:
    client: RawClient = await raw_client()
    client.send(F.TopicCreate(2, "t", 1, None))
    assert (await client.recv())[0] == F.OK
    for rid in range(3, 6):
        client.send(F.Fetch(rid, "t", 0, 0, 1000, LONG_WAIT_MS))
    client.send(F.ListOffsets(9, "t", 0))
    assert (await client.recv())[1] == 9  # the fetches before it are waiting
    assert await fetches_waiting(broker, "t") == 3
    await client.close()

    async def dropped() -> bool:  # the broker notices the close on its own time
        return await fetches_waiting(broker, "t") == 0

    await wait_until(dropped, what="the closed connection's fetches to be dropped")


async def test_wait_limits(raw_client: Callable[..., Any]) -> None:
    client: RawClient = await raw_client()
    client.send(F.TopicCreate(2, "t", 1, None))
    assert (await client.recv())[0] == F.OK
    client.send(F.Fetch(3, "t", 0, 0, 1000, -1))
    err = await client.recv()
    assert (err[0], err[2]) == (F.ERROR, 400)
    for rid in range(10, 10 + MAX_PENDING_FETCHES + 1):
        client.send(F.Fetch(rid, "t", 0, 0, 1000, LONG_WAIT_MS))
    err = await client.recv()
    assert (err[0], err[1], err[2]) == (F.ERROR, 10 + MAX_PENDING_FETCHES, 506)


# -- acks "none" --------------------------------------------------------------------------


async def test_acks_none_does_not_wait(conn: wharf.Connection) -> None:
    await conn.create_topic("t", partitions=2)
    assert await conn.produce("t", b"a", acks="none") == (-1, -1)
    assert await conn.produce_many("t", [b"b", b"c"], partition=1, acks="none") == (1, -1)
    # Frames are handled in order: this answer comes after both appends.
    assert (await conn.list_offsets("t", 1))[1] >= 2
    recs = await conn.fetch("t", 0, 0) + await conn.fetch("t", 1, 0)
    values = sorted(r.value or b"" for r in recs)
    assert values == [b"a", b"b", b"c"]


async def test_acks_none_errors_are_logged_once_not_sent(
    conn: wharf.Connection, caplog: pytest.LogCaptureFixture
) -> None:
    await conn.create_topic("c", cleanup_policy="compact")
    with caplog.at_level(logging.WARNING, logger="wharf.topics"):
        for _ in range(3):
            await conn.produce("nope", b"x", acks="none")
            await conn.produce("c", b"no key", acks="none")
        assert await conn.list_offsets("c", 0) == (0, 0)  # still usable, nothing came back
    lines = [r.getMessage() for r in caplog.records if "acks=none" in r.getMessage()]
    assert len(lines) == 2  # once per kind (404, 400) on this connection
    assert any("404" in line for line in lines) and any("400" in line for line in lines)
