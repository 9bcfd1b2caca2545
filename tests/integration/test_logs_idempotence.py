"""The idempotent producer over TCP: producer ids, duplicates, sequence gaps, fencing,
resending after a lost connection, and producer state across a broker restart."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import wharf
from wharf.broker.server import Broker
from wharf.protocol import frames as F
from wharf.protocol.records import encode_values

from ..conftest import RawClient, make_settings
from ..helpers import TcpProxy, is_answer_to


async def init_producer(client: RawClient, rid: int) -> tuple[int, int]:
    client.send(F.InitProducer(rid))
    ok = await client.recv()
    assert ok[0] == F.OK, ok
    return int(ok[2]["producer_id"]), int(ok[2]["producer_epoch"])


def produce(
    client: RawClient, rid: int, pid: int, seq: int, values: list[bytes], epoch: int = 0
) -> None:
    payload = encode_values(values, None, None, 1000)
    client.send(F.Produce(rid, "t", 0, payload, 0, "written", pid, epoch, seq))


async def test_producer_ids_are_unique(raw_client: Callable[..., Any]) -> None:
    client: RawClient = await raw_client()
    ids = [await init_producer(client, rid) for rid in range(2, 6)]
    assert len({pid for pid, _ in ids}) == 4
    assert {epoch for _, epoch in ids} == {0}


async def test_duplicates_gaps_and_fencing_on_the_wire(raw_client: Callable[..., Any]) -> None:
    client: RawClient = await raw_client()
    client.send(F.TopicCreate(2, "t", 1, None))
    assert (await client.recv())[0] == F.OK
    pid, epoch = await init_producer(client, 3)
    produce(client, 4, pid, 0, [b"a", b"b"])
    ok = await client.recv()
    assert ok[2]["base_offset"] == 0 and ok[2]["duplicate"] is False
    produce(client, 5, pid, 0, [b"a", b"b"])  # a retry of the same batch
    ok = await client.recv()
    assert ok[2]["base_offset"] == 0 and ok[2]["duplicate"] is True
    produce(client, 6, pid, 5, [b"c"])  # sequences 2..4 never came
    err = await client.recv()
    assert (err[0], err[1], err[2]) == (F.ERROR, 6, 412)
    assert err[5] == {"expected": 2, "sequence": 5}
    produce(client, 7, pid, 0, [b"new epoch"], epoch=epoch + 1)
    assert (await client.recv())[2]["base_offset"] == 2
    produce(client, 8, pid, 1, [b"old epoch"], epoch=epoch)
    err = await client.recv()
    assert (err[0], err[1], err[2]) == (F.ERROR, 8, 413)
    client.send(F.ListOffsets(9, "t", 0))
    assert (await client.recv())[2]["latest"] == 3


async def test_sdk_producer_numbers_batches_per_partition(conn: wharf.Connection) -> None:
    await conn.create_topic("t", partitions=3)
    producer = conn.producer()
    placed = [await producer.produce("t", b"%d" % i, key=b"user-%d" % i) for i in range(12)]
    by_partition: dict[int, list[int]] = {}
    for p, off in placed:
        by_partition.setdefault(p, []).append(off)
    for offs in by_partition.values():
        assert offs == list(range(len(offs)))
    assert await producer.produce_many("t", [b"x", b"y"], partition=2) == (
        2,
        len(by_partition.get(2, [])),
    )
    records = [(b"k", b"v", {"h": "1"}, 5), (b"k", b"w", None, None)]
    p, off = await producer.produce_records("t", records)
    recs = await conn.fetch("t", p, off)
    assert [(r.key, r.value, r.headers) for r in recs] == [
        (b"k", b"v", {"h": "1"}),
        (b"k", b"w", {}),
    ]
    with pytest.raises(wharf.InvalidArgument):
        await producer.produce("t", b"v", acks="none")


async def test_producer_resends_after_a_lost_reply_without_duplicates(broker: Broker) -> None:
    """The broker appends the batch, then the connection dies before the reply: the
    producer resends it on the new connection and the broker answers with the first
    append's offset."""
    dropped: list[int] = []

    def lose_the_first_reply(frame: list[Any]) -> Callable[[list[Any]], bool] | None:
        if frame[0] != F.PRODUCE or dropped:
            return None
        produce = F.parse(frame)
        assert isinstance(produce, F.Produce)
        if produce.producer_id < 0:
            return None
        dropped.append(produce.request_id)
        return is_answer_to(produce.request_id)  # cut before the OK reaches the client

    proxy = await TcpProxy(broker.port, cut_when=lose_the_first_reply).start()
    conn = await wharf.connect(proxy.url(), reconnect=True, reconnect_max_delay=0.05)
    try:
        await conn.create_topic("t")
        producer = conn.producer()
        assert await producer.produce("t", b"once", partition=0) == (0, 0)
        assert dropped and proxy.cuts == 1
        assert await producer.produce("t", b"next", partition=0) == (0, 1)
        recs = await conn.fetch("t", 0, 0)
        assert [r.value for r in recs] == [b"once", b"next"]
    finally:
        await conn.close()
        await proxy.close()


async def restart(tmp_path: Path, broker: Broker | None) -> Broker:
    if broker is not None:
        await broker.stop()
    b = Broker(make_settings(tmp_path))
    await b.start()
    return b


async def test_producer_state_survives_restart(tmp_path: Path) -> None:
    b = await restart(tmp_path, None)
    try:
        client = await RawClient.open(b.port)
        client.send(F.TopicCreate(2, "t", 1, {"segment_bytes": 1024}))
        assert (await client.recv())[0] == F.OK
        pid, _ = await init_producer(client, 3)
        for seq in range(8):
            produce(client, 10 + seq, pid, seq, [b"v" * 300])
            assert (await client.recv())[2]["base_offset"] == seq
        await client.close()
        b = await restart(tmp_path, b)
        client = await RawClient.open(b.port)
        produce(client, 20, pid, 7, [b"v" * 300])  # the last batch, resent
        ok = await client.recv()
        assert ok[2] == {
            "partition": 0,
            "base_offset": 7,
            "duplicate": True,
            "log_append_time": -1,
        }
        produce(client, 21, pid, 9, [b"gap"])
        assert (await client.recv())[2] == 412
        produce(client, 22, pid, 8, [b"w"])
        assert (await client.recv())[2]["base_offset"] == 8
        new_pid, _ = await init_producer(client, 23)
        assert new_pid > pid  # ids never repeat after a restart
        await client.close()
    finally:
        await b.stop()


async def test_producer_starts_over_after_a_sequence_error(conn: wharf.Connection) -> None:
    await conn.create_topic("t")
    producer = conn.producer()
    assert await producer.produce("t", b"a", partition=0) == (0, 0)
    first_id = producer.producer_id
    # The partition forgets the producer (a new topic of the same name): the producer's
    # next sequence (1) is not one the broker can accept, as if batches had been lost.
    await conn.delete_topic("t")
    await conn.create_topic("t")
    with pytest.raises(wharf.OutOfOrderSequence):
        await producer.produce("t", b"b", partition=0)
    # A new producer id: the next batch cannot be mistaken for a retry of a lost one.
    assert await producer.produce("t", b"c", partition=0) == (0, 0)
    assert producer.producer_id > first_id
