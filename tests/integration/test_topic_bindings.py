"""Log topics bound to exchanges (docs/logs.md, "Exchange bindings to topics"): routing
for every exchange type, the record a message becomes, confirms that cover the append,
durability of the bindings, and their removal with the topic or the exchange."""

from __future__ import annotations

import asyncio
import json
import shutil
import socket
import time
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import wharf
from wharf.broker.config import Settings
from wharf.broker.logs.partition import Partition
from wharf.broker.server import Broker
from wharf.protocol import frames as F
from wharf.protocol.errors import AccessRefused, InternalError, InvalidArgument, NotFound

from ..conftest import RawClient
from .test_api import api
from .test_ctl import run_ctl

TIMEOUT_S = 5.0


async def records_of(conn: wharf.Connection, topic: str) -> list[Any]:
    """Every record of every partition of ``topic``, partition by partition, once
    everything appended is visible (persistent messages once fsynced)."""
    async with asyncio.timeout(TIMEOUT_S):
        while True:
            info = await conn.describe_topic(topic)
            if all(o["latest"] == o["log_end"] for o in info["offsets"]):
                break
            await asyncio.sleep(0.01)  # bounded polling: the broker's fsync runs alone
    out: list[Any] = []
    for p in range(info["partitions"]):
        offset, latest = await conn.list_offsets(topic, p)
        while offset < latest:
            batch = await conn.fetch(topic, p, offset)
            out.extend(batch)
            offset = batch[-1].offset + 1
    return out


async def values_of(conn: wharf.Connection, topic: str) -> list[bytes]:
    return [r.value for r in await records_of(conn, topic)]


# -- routing, per exchange type ----------------------------------------------------------


async def test_direct_exchange_appends_matching_messages(conn: wharf.Connection) -> None:
    await conn.create_topic("t-direct")
    await conn.declare_exchange("x-direct", "direct")
    await conn.bind_topic("t-direct", "x-direct", "eu")
    await conn.publish("x-direct", "eu", b"one")
    await conn.publish("x-direct", "us", b"other")
    await conn.publish("x-direct", "eu", b"two")
    recs = await records_of(conn, "t-direct")
    assert [r.value for r in recs] == [b"one", b"two"]
    assert [r.key for r in recs] == [b"eu", b"eu"]
    assert [r.offset for r in recs] == [0, 1]


async def test_fanout_exchange_appends_everything(conn: wharf.Connection) -> None:
    await conn.create_topic("t-fanout")
    await conn.declare_exchange("x-fanout", "fanout")
    await conn.bind_topic("t-fanout", "x-fanout")
    await conn.publish("x-fanout", "a", b"1")
    await conn.publish("x-fanout", "b.c", b"2")
    assert await values_of(conn, "t-fanout") == [b"1", b"2"]


async def test_topic_exchange_patterns(conn: wharf.Connection) -> None:
    await conn.create_topic("t-pattern")
    await conn.declare_exchange("x-topic", "topic")
    await conn.bind_topic("t-pattern", "x-topic", "eu.#")
    await conn.bind_topic("t-pattern", "x-topic", "*.urgent")
    for key in ("eu.new", "eu.a.b", "us.new", "us.urgent", "eu.urgent", "eu"):
        await conn.publish("x-topic", key, key.encode())
    # eu.urgent matches both bindings and is still appended once.
    assert await values_of(conn, "t-pattern") == [
        b"eu.new",
        b"eu.a.b",
        b"us.urgent",
        b"eu.urgent",
        b"eu",
    ]


async def test_headers_exchange_x_match(conn: wharf.Connection) -> None:
    await conn.create_topic("t-all")
    await conn.create_topic("t-any")
    await conn.declare_exchange("x-headers", "headers")
    await conn.bind_topic("t-all", "x-headers", arguments={"x-match": "all", "a": 1, "b": 2})
    await conn.bind_topic("t-any", "x-headers", arguments={"x-match": "any", "a": 1, "b": 2})
    await conn.publish("x-headers", "", b"both", headers={"a": 1, "b": 2})
    await conn.publish("x-headers", "", b"only-a", headers={"a": 1})
    await conn.publish("x-headers", "", b"neither", headers={"a": 2})
    assert await values_of(conn, "t-all") == [b"both"]
    assert await values_of(conn, "t-any") == [b"both", b"only-a"]


async def test_exchange_to_exchange_chain(conn: wharf.Connection) -> None:
    await conn.create_topic("t-chain")
    await conn.declare_exchange("x-front", "topic")
    await conn.declare_exchange("x-back", "direct")
    await conn.bind_exchange("x-back", "x-front", "orders.*")
    await conn.bind_topic("t-chain", "x-back", "orders.eu")
    await conn.publish("x-front", "orders.eu", b"routed")
    await conn.publish("x-front", "orders.us", b"not")
    recs = await records_of(conn, "t-chain")
    assert [r.value for r in recs] == [b"routed"]
    # The record names the exchange the message was published to.
    assert recs[0].headers["x-exchange"] == "x-front"


async def test_alternate_exchange(conn: wharf.Connection) -> None:
    await conn.create_topic("t-unrouted")
    await conn.declare_exchange("x-ae", "fanout")
    await conn.declare_exchange("x-main", "direct", arguments={"alternate-exchange": "x-ae"})
    await conn.bind_topic("t-unrouted", "x-ae")
    await conn.declare_queue("q-main")
    await conn.bind_queue("q-main", "x-main", "known")
    await conn.publish("x-main", "known", b"to-queue")
    await conn.publish("x-main", "unknown", b"to-ae")
    assert await values_of(conn, "t-unrouted") == [b"to-ae"]


async def test_topic_binding_counts_as_routed_for_the_alternate_exchange(
    conn: wharf.Connection,
) -> None:
    await conn.create_topic("t-main")
    await conn.declare_queue("q-ae")
    await conn.declare_exchange("x-ae2", "fanout")
    await conn.bind_queue("q-ae", "x-ae2")
    await conn.declare_exchange("x-main2", "direct", arguments={"alternate-exchange": "x-ae2"})
    await conn.bind_topic("t-main", "x-main2", "k")
    await conn.publish("x-main2", "k", b"m")
    assert await values_of(conn, "t-main") == [b"m"]
    assert await conn.get("q-ae") is None


async def test_mixed_queue_and_topic_routing(conn: wharf.Connection) -> None:
    await conn.create_topic("t-mixed")
    await conn.declare_exchange("x-mixed", "fanout")
    await conn.declare_queue("q-mixed")
    await conn.bind_queue("q-mixed", "x-mixed")
    await conn.bind_topic("t-mixed", "x-mixed")
    await conn.publish_many("x-mixed", "k", [b"a", b"b"], persistent=True)
    assert await values_of(conn, "t-mixed") == [b"a", b"b"]
    got = [await conn.get("q-mixed", no_ack=True) for _ in range(2)]
    assert [m.body for m in got if m is not None] == [b"a", b"b"]


async def test_mandatory_message_routed_only_to_a_topic_is_not_returned(
    conn: wharf.Connection,
) -> None:
    await conn.create_topic("t-mandatory")
    await conn.declare_exchange("x-mandatory", "direct")
    await conn.bind_topic("t-mandatory", "x-mandatory", "k")
    await conn.publish("x-mandatory", "k", b"kept", mandatory=True)
    await conn.publish_many("x-mandatory", "k", [b"a", b"b"], mandatory=True)
    with pytest.raises(wharf.Unroutable):
        await conn.publish("x-mandatory", "nowhere", b"lost", mandatory=True)
    assert await values_of(conn, "t-mandatory") == [b"kept", b"a", b"b"]


# -- the record ------------------------------------------------------------------------


async def test_key_is_the_routing_key_or_x_partition_key(conn: wharf.Connection) -> None:
    await conn.create_topic("t-keys", partitions=4)
    await conn.declare_exchange("x-keys", "fanout")
    await conn.bind_topic("t-keys", "x-keys")
    await conn.publish("x-keys", "order-7", b"rk")
    await conn.publish("x-keys", "rk", b"str", headers={"x-partition-key": "customer-42"})
    await conn.publish("x-keys", "rk", b"bin", headers={"x-partition-key": b"\x00\x01"})
    await conn.publish("x-keys", "rk", b"int", headers={"x-partition-key": 1234})
    by_value = {r.value: r for r in await records_of(conn, "t-keys")}
    expected = {b"rk": b"order-7", b"str": b"customer-42", b"bin": b"\x00\x01", b"int": b"1234"}
    for value, key in expected.items():
        rec = by_value[value]
        assert rec.key == key
        # The partition is chosen from the key as for produce: stable, documented.
        assert rec.partition == zlib.crc32(key) % 4


async def test_bad_x_partition_key_is_refused_everywhere(conn: wharf.Connection) -> None:
    await conn.create_topic("t-badkey")
    await conn.declare_exchange("x-badkey", "fanout")
    await conn.declare_queue("q-badkey")
    await conn.bind_queue("q-badkey", "x-badkey")
    await conn.bind_topic("t-badkey", "x-badkey")
    with pytest.raises(InvalidArgument) as info:
        await conn.publish("x-badkey", "", b"m", headers={"x-partition-key": [1, 2]})
    assert "x-partition-key" in info.value.message
    assert await values_of(conn, "t-badkey") == []
    assert await conn.get("q-badkey") is None
    await conn.publish("x-badkey", "", b"fine")  # the connection keeps working
    assert await values_of(conn, "t-badkey") == [b"fine"]


async def test_empty_routing_key_gives_nil_key_round_robin(conn: wharf.Connection) -> None:
    await conn.create_topic("t-nilkey", partitions=3)
    await conn.declare_exchange("x-nilkey", "fanout")
    await conn.bind_topic("t-nilkey", "x-nilkey")
    for i in range(6):
        await conn.publish("x-nilkey", "", b"%d" % i)
    recs = await records_of(conn, "t-nilkey")
    assert all(r.key is None for r in recs)
    assert sorted(r.partition for r in recs) == [0, 0, 1, 1, 2, 2]


async def test_headers_and_properties_mapping(conn: wharf.Connection) -> None:
    await conn.create_topic("t-props")
    await conn.declare_exchange("x-props", "topic")
    await conn.bind_topic("t-props", "x-props", "#")
    await conn.publish(
        "x-props",
        "orders.eu",
        b"{}",
        headers={"source": "web", "n": 3, "x-exchange": "spoofed"},
        content_type="application/json",
        content_encoding="identity",
        message_id="m-1",
        correlation_id="c-1",
        reply_to="replies",
        timestamp=1_700_000_000_123,
        type="order.created",
        app_id="shop",
        user_id="guest",
        persistent=True,
        priority=3,
        expiration=60_000,
    )
    (rec,) = await records_of(conn, "t-props")
    assert rec.value == b"{}"
    assert rec.key == b"orders.eu"
    assert rec.timestamp == 1_700_000_000_123
    assert rec.headers == {
        "source": "web",
        "n": 3,
        "x-exchange": "x-props",  # the broker's names win over message headers
        "x-routing-key": "orders.eu",
        "x-content-type": "application/json",
        "x-content-encoding": "identity",
        "x-message-id": "m-1",
        "x-correlation-id": "c-1",
        "x-reply-to": "replies",
        "x-timestamp": 1_700_000_000_123,
        "x-type": "order.created",
        "x-app-id": "shop",
        "x-user-id": "guest",
        "x-persistent": True,
        "x-priority": 3,
        "x-expiration": 60_000,
    }


async def test_timestamp_defaults_to_the_broker_clock(conn: wharf.Connection) -> None:
    await conn.create_topic("t-clock")
    await conn.declare_exchange("x-clock", "fanout")
    await conn.bind_topic("t-clock", "x-clock")
    before = int(time.time() * 1000)
    await conn.publish("x-clock", "", b"now")
    after = int(time.time() * 1000)
    (rec,) = await records_of(conn, "t-clock")
    assert before <= rec.timestamp <= after
    assert rec.headers == {"x-exchange": "x-clock", "x-routing-key": ""}


async def test_publish_many_is_one_batch_per_topic(conn: wharf.Connection) -> None:
    await conn.create_topic("t-batch-a", partitions=3)
    await conn.create_topic("t-batch-b", partitions=2)
    await conn.declare_exchange("x-batch", "fanout")
    await conn.bind_topic("t-batch-a", "x-batch")
    await conn.bind_topic("t-batch-b", "x-batch")
    bodies = [b"m%d" % i for i in range(50)]
    # Without a key each append goes to the next partition: one batch, one partition.
    await conn.publish_many("x-batch", "", bodies)
    for topic in ("t-batch-a", "t-batch-b"):
        recs = await records_of(conn, topic)
        assert [r.value for r in recs] == bodies
        assert len({r.partition for r in recs}) == 1
        assert [r.offset for r in recs] == list(range(50))
        assert len({r.timestamp for r in recs}) == 1


# -- confirms --------------------------------------------------------------------------


async def test_confirm_means_the_record_is_there(
    conn: wharf.Connection, connect: Callable[..., Any]
) -> None:
    await conn.create_topic("t-confirm", partitions=2)
    await conn.declare_exchange("x-confirm", "direct")
    await conn.bind_topic("t-confirm", "x-confirm", "k")
    reader = await connect()
    for i in range(20):
        await conn.publish("x-confirm", "k", b"%d" % i, persistent=i % 2 == 0)
        assert len(await values_of(reader, "t-confirm")) == i + 1


def _hold_syncs(monkeypatch: pytest.MonkeyPatch) -> tuple[list[asyncio.Future[None]], Any]:
    """Make Partition.sync() answer only when the test says so."""
    held: list[asyncio.Future[None]] = []

    def held_sync(self: Partition) -> asyncio.Future[None]:
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        held.append(fut)
        return fut

    monkeypatch.setattr(Partition, "sync", held_sync)
    return held, held_sync


async def _until_ok(client: RawClient, rid: int) -> list[Any]:
    frames: list[Any] = []
    while True:
        frame = await client.recv(TIMEOUT_S)
        frames.append(frame)
        if frame[0] == F.OK and frame[1] == rid:
            return frames


async def test_persistent_confirm_waits_for_the_fsync_in_order(
    conn: wharf.Connection, raw_client: Callable[..., Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    await conn.create_topic("t-order")
    await conn.declare_exchange("x-order", "direct")
    await conn.bind_topic("t-order", "x-order", "log")
    await conn.declare_queue("q-order")
    await conn.bind_queue("q-order", "x-order", "queue")
    held, _ = _hold_syncs(monkeypatch)
    client: RawClient = await raw_client()
    client.send(F.Publish(1, "x-order", "log", {"persistent": True}, b"p", 0))
    client.send(F.Publish(2, "x-order", "queue", None, b"t", 0))
    client.send(F.TopicDescribe(3, "t-order"))
    client.send(F.TopicDescribe(4, "t-order"))
    frames = await _until_ok(client, 3) + await _until_ok(client, 4)
    # Written but not fsynced: no confirm yet, not even for the later transient message.
    assert [f for f in frames if f[0] == F.CONFIRM] == []
    assert await values_of(conn, "t-order") == [b"p"]
    assert len(held) == 1
    held[0].set_result(None)
    assert await client.recv(TIMEOUT_S) == [F.CONFIRM, 0, 2]


async def test_failed_fsync_nacks_the_publish(
    conn: wharf.Connection, monkeypatch: pytest.MonkeyPatch
) -> None:
    await conn.create_topic("t-fail")
    await conn.declare_exchange("x-fail", "fanout")
    await conn.bind_topic("t-fail", "x-fail")
    held, _ = _hold_syncs(monkeypatch)
    publish = asyncio.ensure_future(conn.publish("x-fail", "", b"p", persistent=True))
    async with asyncio.timeout(TIMEOUT_S):
        while not held:  # noqa: ASYNC110 (the broker asks for the fsync; nothing to await)
            await asyncio.sleep(0.01)
    held[0].set_exception(InternalError("fsync failed"))
    with pytest.raises(InternalError):
        await publish
    # Transient messages need no fsync and are confirmed.
    await conn.publish("x-fail", "", b"t")


# -- bindings: errors, listing, removal ----------------------------------------------------


async def test_bind_errors(conn: wharf.Connection) -> None:
    await conn.create_topic("t-errors")
    await conn.declare_exchange("x-errors", "direct")
    with pytest.raises(NotFound):
        await conn.bind_topic("no-such-topic", "x-errors", "k")
    with pytest.raises(NotFound):
        await conn.bind_topic("t-errors", "no-such-exchange", "k")
    with pytest.raises(AccessRefused):
        await conn.bind_topic("t-errors", "", "k")
    with pytest.raises(NotFound):
        await conn.unbind_topic("no-such-topic", "x-errors", "k")
    with pytest.raises(NotFound):
        await conn.unbind_topic("t-errors", "no-such-exchange", "k")
    # Binding twice is a no-op, unbinding a missing binding succeeds (as for queues).
    await conn.bind_topic("t-errors", "x-errors", "k")
    await conn.bind_topic("t-errors", "x-errors", "k")
    await conn.unbind_topic("t-errors", "x-errors", "other")
    await conn.publish("x-errors", "k", b"once")
    assert await values_of(conn, "t-errors") == [b"once"]


async def test_unbind_stops_appending(conn: wharf.Connection) -> None:
    await conn.create_topic("t-unbind")
    await conn.declare_exchange("x-unbind", "topic")
    await conn.bind_topic("t-unbind", "x-unbind", "a.*")
    await conn.publish("x-unbind", "a.b", b"before")
    await conn.unbind_topic("t-unbind", "x-unbind", "a.*")
    await conn.publish("x-unbind", "a.b", b"after")
    assert await values_of(conn, "t-unbind") == [b"before"]


async def test_bindings_listed_with_destination_type_topic(
    broker: Broker, conn: wharf.Connection
) -> None:
    await conn.create_topic("t-listed")
    await conn.declare_exchange("x-listed", "headers")
    await conn.bind_topic("t-listed", "x-listed", "", {"x-match": "any", "a": 1})
    r = await api(broker, "GET", "/api/bindings")
    assert r.status == 200
    assert {
        "source": "x-listed",
        "destination": "t-listed",
        "destination_type": "topic",
        "routing_key": "",
        "arguments": {"x-match": "any", "a": 1},
        "vhost": "/",
    } in r.json()


async def test_deleting_the_topic_removes_its_bindings(
    broker: Broker, conn: wharf.Connection
) -> None:
    await conn.create_topic("t-doomed")
    await conn.declare_exchange("x-doomed", "fanout", durable=True)
    await conn.declare_exchange("x-auto", "fanout", auto_delete=True)
    await conn.bind_topic("t-doomed", "x-doomed")
    await conn.bind_topic("t-doomed", "x-auto")
    await conn.delete_topic("t-doomed")
    bindings = (await api(broker, "GET", "/api/bindings")).json()
    assert [b for b in bindings if b["destination"] == "t-doomed"] == []
    # An auto-delete exchange goes with its last binding, as when a queue is deleted.
    with pytest.raises(NotFound):
        await conn.declare_exchange("x-auto", "fanout", passive=True)
    # A new topic with the same name is not bound.
    await conn.create_topic("t-doomed")
    await conn.publish("x-doomed", "", b"m")
    assert await values_of(conn, "t-doomed") == []
    definitions = json.loads((Path(broker.data_path) / "definitions.json").read_text())
    assert [b for b in definitions["bindings"] if b["destination_type"] == "topic"] == []


async def test_deleting_the_exchange_removes_its_topic_bindings(
    broker: Broker, conn: wharf.Connection
) -> None:
    await conn.create_topic("t-stays")
    await conn.declare_exchange("x-goes", "fanout")
    await conn.bind_topic("t-stays", "x-goes")
    await conn.delete_exchange("x-goes")
    await conn.declare_exchange("x-goes", "fanout")
    await conn.publish("x-goes", "", b"m")
    assert await values_of(conn, "t-stays") == []
    bindings = (await api(broker, "GET", "/api/bindings")).json()
    assert [b for b in bindings if b["destination"] == "t-stays"] == []


async def test_dead_lettering_to_a_bound_topic(conn: wharf.Connection) -> None:
    await conn.create_topic("t-dlx")
    await conn.declare_exchange("x-dlx", "fanout")
    await conn.bind_topic("t-dlx", "x-dlx")
    await conn.declare_queue("q-dies", arguments={"x-dead-letter-exchange": "x-dlx"})
    await conn.publish("", "q-dies", b"dead", persistent=True)
    msg = await conn.get("q-dies")
    assert msg is not None
    await msg.reject(requeue=False)
    # The reject is handled before the next request: the append is done by then.
    recs = await records_of(conn, "t-dlx")
    assert [r.value for r in recs] == [b"dead"]
    assert recs[0].headers["x-routing-key"] == "q-dies"


# -- durability ------------------------------------------------------------------------


def _settings(tmp_path: Path) -> Settings:
    return Settings(
        host="127.0.0.1", port=0, http_port=0, amqp_port=0, data_dir=str(tmp_path / "data")
    )


def _url(b: Broker) -> str:
    return f"wharf://guest:guest@127.0.0.1:{b.port}"


async def test_durable_bindings_survive_restart(tmp_path: Path) -> None:
    b = Broker(_settings(tmp_path))
    await b.start()
    try:
        async with await wharf.connect(_url(b)) as conn:
            await conn.create_topic("t-kept", partitions=2)
            await conn.create_topic("t-gone")
            await conn.declare_exchange("x-durable", "topic", durable=True)
            await conn.declare_exchange("x-transient", "fanout")
            await conn.bind_topic("t-kept", "x-durable", "a.#")
            await conn.bind_topic("t-gone", "x-durable", "#")
            await conn.bind_topic("t-kept", "x-transient")
            await conn.publish("x-durable", "a.b", b"before", persistent=True)
    finally:
        await b.stop()
    # A topic whose directory disappeared while the broker was down loses its binding.
    shutil.rmtree(tmp_path / "data" / "logs" / "t-gone")
    b = Broker(_settings(tmp_path))
    await b.start()
    try:
        async with await wharf.connect(_url(b)) as conn:
            bindings = [
                (x["source"], x["destination"], x["routing_key"])
                for x in b.topology.bindings_of()
                if x["destination_type"] == "topic"
            ]
            assert bindings == [("x-durable", "t-kept", "a.#")]
            await conn.publish("x-durable", "a.c", b"after", persistent=True)
            assert sorted(await values_of(conn, "t-kept")) == [b"after", b"before"]
    finally:
        await b.stop()


async def test_http_api_binds_and_publishes_to_topics(
    broker: Broker, conn: wharf.Connection
) -> None:
    await conn.create_topic("t-http")
    await conn.declare_exchange("x-http", "direct")
    body = {
        "source": "x-http",
        "destination": "t-http",
        "destination_type": "topic",
        "routing_key": "k",
        "arguments": {},
    }
    r = await api(broker, "POST", "/api/bindings/%2F", body)
    assert r.status == 201, r
    assert r.json() == body
    assert (await api(broker, "POST", "/api/bindings/%2F", body)).status == 200
    missing = {**body, "destination": "no-such-topic"}
    assert (await api(broker, "POST", "/api/bindings/%2F", missing)).status == 404
    r = await api(
        broker,
        "POST",
        "/api/exchanges/%2F/x-http/publish",
        {"routing_key": "k", "payload": "hello", "properties": {"persistent": True}},
    )
    assert r.status == 200 and r.json() == {"routed": True}
    (rec,) = await records_of(conn, "t-http")
    assert (rec.key, rec.value, rec.headers["x-persistent"]) == (b"k", b"hello", True)
    assert (await api(broker, "DELETE", "/api/bindings/%2F", body)).status == 200
    assert (await api(broker, "DELETE", "/api/bindings/%2F", body)).status == 404
    await conn.publish("x-http", "k", b"unbound")
    assert len(await records_of(conn, "t-http")) == 1


async def test_compacted_topic_refuses_keyless_routed_messages(conn: wharf.Connection) -> None:
    await conn.create_topic("t-compact", cleanup_policy="compact")
    await conn.declare_exchange("x-compact", "fanout")
    await conn.bind_topic("t-compact", "x-compact")
    with pytest.raises(InvalidArgument):
        await conn.publish("x-compact", "", b"no key")
    await conn.publish("x-compact", "user-1", b"keyed")
    (rec,) = await records_of(conn, "t-compact")
    assert (rec.key, rec.value) == (b"user-1", b"keyed")


async def test_publish_without_confirm_is_appended(conn: wharf.Connection) -> None:
    await conn.create_topic("t-noconfirm")
    await conn.declare_exchange("x-noconfirm", "fanout")
    await conn.bind_topic("t-noconfirm", "x-noconfirm")
    await conn.publish("x-noconfirm", "", b"p", persistent=True, confirm=False)
    await conn.publish_many("x-noconfirm", "", [b"a", b"b"], confirm=False)
    # Requests are handled in order: the appends are done before this answer.
    assert await values_of(conn, "t-noconfirm") == [b"p", b"a", b"b"]


async def test_sdk_binds_the_topic_again_after_a_reconnect(tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    settings = Settings(
        host="127.0.0.1", port=port, http_port=0, amqp_port=0, data_dir=str(tmp_path / "d")
    )
    b = Broker(settings)
    await b.start()
    conn = await wharf.connect(
        f"wharf://guest:guest@127.0.0.1:{port}", reconnect=True, reconnect_max_delay=0.2
    )
    reconnected = asyncio.Event()
    events: list[str] = []

    def on_event(event: wharf.ConnectionEvent) -> None:
        events.append(event.name)
        if event.name == "reconnected":
            reconnected.set()

    conn.on_event(on_event)
    try:
        await conn.create_topic("t-recover")
        await conn.create_topic("t-forgotten")
        await conn.declare_exchange("x-recover", "fanout")  # not durable: gone after a restart
        await conn.bind_topic("t-recover", "x-recover")
        await conn.bind_topic("t-forgotten", "x-recover")
        await conn.delete_topic("t-forgotten")  # its binding is not restored
        await b.stop()
        b = Broker(settings)
        await b.start()
        async with asyncio.timeout(TIMEOUT_S):
            await reconnected.wait()
        await conn.publish("x-recover", "", b"after")
        assert await values_of(conn, "t-recover") == [b"after"]
        bindings = [x["destination"] for x in b.topology.bindings_of()]
        assert bindings == ["t-recover"]
        assert "recovery_error" not in events  # nothing tried to bind the deleted topic
    finally:
        await conn.close()
        await b.stop()


async def test_ctl_binds_lists_and_removes_topic_bindings(
    broker: Broker, conn: wharf.Connection
) -> None:
    url = f"http://127.0.0.1:{broker.http_port}"
    await conn.create_topic("t-ctl")
    await conn.declare_exchange("x-ctl", "topic")
    r = await run_ctl("bindings", "add", "x-ctl", "t-ctl", "-t", "topic", "-k", "a.#", url=url)
    assert r.code == 0, r
    r = await run_ctl("bindings", "list", url=url)
    assert ["x-ctl", "topic", "t-ctl", "a.#", "-"] in [line.split() for line in r.out.splitlines()]
    await conn.publish("x-ctl", "a.b", b"m")
    assert await values_of(conn, "t-ctl") == [b"m"]
    r = await run_ctl("bindings", "remove", "x-ctl", "t-ctl", "-t", "topic", "-k", "a.#", url=url)
    assert r.code == 0, r
    assert [b for b in broker.topology.bindings_of() if b["destination"] == "t-ctl"] == []


async def test_log_append_time_topic_uses_the_broker_clock(conn: wharf.Connection) -> None:
    await conn.create_topic("t-append-time", timestamp_type="log_append_time")
    await conn.declare_exchange("x-append-time", "fanout")
    await conn.bind_topic("t-append-time", "x-append-time")
    before = int(time.time() * 1000)
    await conn.publish("x-append-time", "", b"m", timestamp=1_000)
    (rec,) = await records_of(conn, "t-append-time")
    assert rec.timestamp >= before
    assert rec.headers["x-timestamp"] == 1_000
