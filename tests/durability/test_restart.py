"""What survives a restart of a ``wharf serve`` process, clean (SIGTERM) or not (kill -9).

Durable exchanges, queues and bindings (with their types and arguments) and
persistent messages in durable queues survive; non-durable definitions, exclusive
queues and transient messages do not.  Messages keep their properties, headers and
order; delivered-but-unacked ones come back ready, in their original order, flagged
redelivered; acked, purged and deleted ones never come back.  One broker per data
directory.

kill -9 tests that depend on records the broker writes after it answered (acks,
delivery marks, requeues) first publish a persistent message with a confirm on the
same connection: its confirm means everything the broker appended before it is on
disk (``settle_before_stop``).  Publisher confirms and queue/exchange declarations need no
barrier: their answer already means "on disk".
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from harness import START_TIMEOUT_S, BrokerProcess, broker_process

import wharf
from wharf.protocol import frames as F
from wharf.protocol.codec import FrameDecoder, encode_array

STOP_MODES = ["sigterm", "kill"]
TIMEOUT_S = 10.0
BARRIER_QUEUE = "durability.barrier"


async def settle_before_stop(conn: wharf.Connection, mode: str) -> None:
    """Make the broker's records of this connection's one-way frames (acks, nacks)
    survive ``mode``.

    A round trip means the broker has handled every earlier frame; a clean shutdown
    then writes what they changed.  A kill -9 needs more: a persistent publish whose
    confirm means everything the broker appended before it is on disk.
    """
    await conn.declare_queue(BARRIER_QUEUE, durable=True)
    if mode == "kill":
        await conn.publish("", BARRIER_QUEUE, b"barrier", persistent=True)


async def restart(bp: BrokerProcess, conn: wharf.Connection, mode: str) -> None:
    """Stop the broker with ``conn`` still open (a SIGTERM shutdown closes it with 320
    and requeues what it holds), then start it again."""
    await bp.stop(mode)
    await conn.close()
    await bp.start()


async def get_all(conn: wharf.Connection, queue: str) -> list[wharf.Message]:
    """Every ready message of ``queue``, by basic.get, acked."""
    out: list[wharf.Message] = []
    while (msg := await conn.get(queue)) is not None:
        out.append(msg)
        await msg.ack()
    return out


async def receive(messages: wharf.Consumer, n: int) -> list[wharf.Message]:
    out: list[wharf.Message] = []
    async with asyncio.timeout(TIMEOUT_S):
        while len(out) < n:
            out.append(await anext(messages))
    return out


# -- definitions ----------------------------------------------------------------------------


@pytest.mark.parametrize("mode", STOP_MODES)
async def test_durable_definitions_survive_and_transient_ones_do_not(
    tmp_path: Path, mode: str
) -> None:
    topic_args = {"alternate-exchange": "d.ae"}
    # x-max-length-bytes: an argument a redeclare is compared on (as RabbitMQ, a
    # difference in an unknown one like x-note is accepted).
    queue_args = {"x-note": "kept", "x-bin": b"\x00\xff", "x-max-length-bytes": 10**9}
    headers_binding = {"x-match": "any", "kind": "audit", "tag": b"\x01\x02"}
    async with broker_process(tmp_path / "data") as bp:
        conn = await bp.connect()
        await conn.declare_exchange("d.ae", "fanout", durable=True)
        await conn.declare_exchange("d.topic", "topic", durable=True, arguments=topic_args)
        await conn.declare_exchange("d.fanout", "fanout", durable=True)
        await conn.declare_exchange("d.headers", "headers", durable=True)
        await conn.declare_exchange("t.direct", "direct")
        await conn.declare_queue("d.orders", durable=True, arguments=queue_args)
        await conn.declare_queue("d.audit", durable=True)
        await conn.declare_queue("d.unrouted", durable=True)
        await conn.declare_queue("d.headers", durable=True)
        await conn.declare_queue("t.orders")
        await conn.declare_queue("d.exclusive", durable=True, exclusive=True)
        await conn.bind_queue("d.orders", "d.topic", "orders.*")
        await conn.bind_exchange("d.fanout", "d.topic", "audit.#")
        await conn.bind_queue("d.audit", "d.fanout")
        await conn.bind_queue("d.unrouted", "d.ae")
        await conn.bind_queue("d.headers", "d.headers", "", headers_binding)
        await conn.bind_queue("t.orders", "d.topic", "orders.*")
        await conn.bind_queue("d.audit", "t.direct", "x")
        await restart(bp, conn, mode)

        conn = await bp.connect()
        try:
            # Same attributes: re-declaring is a no-op; different ones are refused.
            await conn.declare_exchange("d.topic", "topic", durable=True, arguments=topic_args)
            with pytest.raises(wharf.PreconditionFailed):
                await conn.declare_exchange("d.topic", "direct", durable=True)
            info = await conn.declare_queue("d.orders", durable=True, arguments=queue_args)
            assert info == wharf.QueueInfo("d.orders", 0, 0)
            with pytest.raises(wharf.PreconditionFailed):
                await conn.declare_queue("d.orders", durable=True)
            # Non-durable definitions, and exclusive queues, are gone.
            for queue in ("t.orders", "d.exclusive"):
                with pytest.raises(wharf.NotFound):
                    await conn.declare_queue(queue, passive=True)
            with pytest.raises(wharf.NotFound):
                await conn.declare_exchange("t.direct", passive=True)
            # Durable bindings route as before: queue, exchange-to-exchange, alternate
            # exchange, headers binding with a binary argument.
            await conn.publish("d.topic", "orders.new", b"order", mandatory=True)
            await conn.publish("d.topic", "audit.login", b"audit", mandatory=True)
            await conn.publish("d.topic", "nobody.listens", b"stray", mandatory=True)
            await conn.publish("d.headers", "", b"hdr", headers={"tag": b"\x01\x02"})
            assert [m.body for m in await get_all(conn, "d.orders")] == [b"order"]
            assert [m.body for m in await get_all(conn, "d.audit")] == [b"audit"]
            assert [m.body for m in await get_all(conn, "d.unrouted")] == [b"stray"]
            assert [m.body for m in await get_all(conn, "d.headers")] == [b"hdr"]
        finally:
            await conn.close()


# -- messages -------------------------------------------------------------------------------

FULL_PROPERTIES: dict[str, Any] = {
    "headers": {
        "str": "value",
        "int": -7,
        "big": 2**62,
        "float": 1.5,
        "bool": True,
        "none": None,
        "bin": b"\x00\x01\xff",
        "list": [1, "two", b"3"],
        "map": {"nested": {"deeper": [True]}},
    },
    "content_type": "application/json",
    "content_encoding": "gzip",
    "message_id": "m-1",
    "correlation_id": "c-1",
    "reply_to": "replies",
    "timestamp": 1_700_000_000_123,
    "type": "order.created",
    "app_id": "crash-tests",
    "user_id": "guest",
    "persistent": True,
    "priority": 7,
    "expiration": 3_600_000,
}


async def raw_publish(port: int, queue: str, properties: dict[str, Any], body: bytes) -> None:
    """Publish through the default exchange with a hand-made properties map (the SDK
    cannot send unknown keys) and wait for the confirm."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    decoder = FrameDecoder(use_list=True)
    pending: list[Any] = []

    async def recv() -> Any:
        while not pending:
            data = await reader.read(65536)
            if not data:
                raise EOFError("broker closed the connection")
            pending.extend(decoder.feed(data))
        return pending.pop(0)

    try:
        async with asyncio.timeout(TIMEOUT_S):
            writer.write(F.HANDSHAKE)
            assert (await recv())[0] == F.HELLO
            writer.write(encode_array((F.AUTH, 1, "PLAIN", "guest", "guest", 0, {})))
            assert (await recv())[0] == F.AUTH_OK
            writer.write(encode_array((F.PUBLISH, 1, "", queue, properties, body, 0)))
            frame = await recv()
            assert frame[:3] == [F.CONFIRM, 0, 1], frame
    finally:
        writer.close()
        await writer.wait_closed()


@pytest.mark.parametrize("mode", STOP_MODES)
async def test_persistent_messages_survive_with_properties_in_order(
    tmp_path: Path, mode: str
) -> None:
    async with broker_process(tmp_path / "data") as bp:
        conn = await bp.connect()
        await conn.declare_queue("d.q", durable=True)
        await conn.declare_queue("t.q")
        expected: list[tuple[bytes, dict[str, Any] | None]] = []
        props = dict(FULL_PROPERTIES)
        kwargs = {k: v for k, v in props.items() if k != "persistent"}
        await conn.publish("", "d.q", b"full", persistent=True, **kwargs)
        expected.append((b"full", props))
        for i in range(30):
            body = f"m{i}".encode()
            # Transient messages to the durable queue are not stored.
            await conn.publish("", "d.q", b"transient-" + body)
            if i % 3 == 0:
                headers = {"i": i, "bin": bytes([i])}
                await conn.publish("", "d.q", body, persistent=True, headers=headers)
                expected.append((body, {"headers": headers, "persistent": True}))
            else:
                await conn.publish_many("", "d.q", [body], persistent=True, priority=i)
                expected.append((body, {"priority": i, "persistent": True}))
        # Properties the broker does not know are carried through untouched.
        unknown = {"persistent": True, "x-trace": {"span": b"\x07", "depth": 3}}
        await raw_publish(bp.port, "d.q", unknown, b"unknown-keys")
        expected.append((b"unknown-keys", unknown))
        # A persistent message in a non-durable queue goes with its queue.
        await conn.publish("", "t.q", b"gone", persistent=True)
        await restart(bp, conn, mode)

        conn = await bp.connect()
        try:
            with pytest.raises(wharf.NotFound):
                await conn.declare_queue("t.q", passive=True)
            got = await get_all(conn, "d.q")
            assert [(m.body, m.properties) for m in got] == expected
            assert all(not m.redelivered and m.delivery_count == 1 for m in got)
            first = got[0]
            assert first.headers == FULL_PROPERTIES["headers"]
            assert first.timestamp == FULL_PROPERTIES["timestamp"]
            assert first.user_id == "guest" and first.persistent
        finally:
            await conn.close()


@pytest.mark.parametrize("mode", STOP_MODES)
async def test_unacked_messages_come_back_in_order_redelivered(tmp_path: Path, mode: str) -> None:
    bodies = [f"m{i}".encode() for i in range(10)]
    acked = {b"m0", b"m3", b"m6"}
    async with broker_process(tmp_path / "data") as bp:
        conn = await bp.connect()
        await conn.declare_queue("d.q", durable=True)
        await conn.declare_queue("d.get", durable=True)
        await conn.publish_many("", "d.q", bodies, persistent=True)
        await conn.publish_many("", "d.get", [b"g0", b"g1", b"g2"], persistent=True)
        consumer = await conn.consume("d.q", prefetch=len(bodies))
        got = await receive(consumer, len(bodies))
        assert [m.body for m in got] == bodies
        for m in got:
            if m.body in acked:
                await m.ack()
        # basic.get: one with no_ack, one acked, one left unacked.
        g0 = await conn.get("d.get", no_ack=True)
        g1 = await conn.get("d.get")
        g2 = await conn.get("d.get")
        assert g0 is not None and g1 is not None and g2 is not None
        await g1.ack()
        await settle_before_stop(conn, mode)
        await restart(bp, conn, mode)

        conn = await bp.connect()
        try:
            await conn.publish("", "d.q", b"after", persistent=True)
            consumer = await conn.consume("d.q", prefetch=20)
            expect = [b for b in bodies if b not in acked]
            back = await receive(consumer, len(expect) + 1)
            assert [m.body for m in back] == [*expect, b"after"]
            for m in back[:-1]:
                assert m.redelivered, m.body
                assert m.delivery_count >= 2, (m.body, m.delivery_count)
            assert not back[-1].redelivered and back[-1].delivery_count == 1
            for m in back:
                await m.ack()
            await consumer.cancel()
            assert (await conn.declare_queue("d.q", passive=True)).messages == 0
            rest = await get_all(conn, "d.get")
            assert [m.body for m in rest] == [b"g2"]
            assert rest[0].redelivered and rest[0].delivery_count >= 2
        finally:
            await conn.close()


@pytest.mark.parametrize("mode", ["sigterm", "kill"])
async def test_delivery_count_keeps_growing_across_a_restart(tmp_path: Path, mode: str) -> None:
    async with broker_process(tmp_path / "data") as bp:
        conn = await bp.connect()
        await conn.declare_queue("d.q", durable=True)
        await conn.publish("", "d.q", b"poison", persistent=True)
        consumer = await conn.consume("d.q", prefetch=1)
        (first,) = await receive(consumer, 1)
        assert first.delivery_count == 1
        await first.nack(requeue=True)
        (second,) = await receive(consumer, 1)
        assert second.body == b"poison" and second.delivery_count == 2
        await settle_before_stop(conn, mode)
        await restart(bp, conn, mode)

        conn = await bp.connect()
        try:
            consumer = await conn.consume("d.q", prefetch=1)
            (third,) = await receive(consumer, 1)
            assert third.body == b"poison"
            assert third.redelivered
            assert third.delivery_count == 3
        finally:
            await conn.close()


@pytest.mark.parametrize("mode", STOP_MODES)
async def test_fanned_out_message_is_settled_per_queue(tmp_path: Path, mode: str) -> None:
    async with broker_process(tmp_path / "data") as bp:
        conn = await bp.connect()
        await conn.declare_exchange("d.fan", "fanout", durable=True)
        for q in ("d.a", "d.b"):
            await conn.declare_queue(q, durable=True)
            await conn.bind_queue(q, "d.fan")
        await conn.publish_many("d.fan", "", [b"f0", b"f1", b"f2"], persistent=True)
        assert [m.body for m in await get_all(conn, "d.a")] == [b"f0", b"f1", b"f2"]
        await settle_before_stop(conn, mode)
        await restart(bp, conn, mode)

        conn = await bp.connect()
        try:
            assert await get_all(conn, "d.a") == []
            assert [m.body for m in await get_all(conn, "d.b")] == [b"f0", b"f1", b"f2"]
        finally:
            await conn.close()


# -- purge and delete -----------------------------------------------------------------------


@pytest.mark.parametrize("mode", STOP_MODES)
async def test_purged_messages_do_not_come_back(tmp_path: Path, mode: str) -> None:
    async with broker_process(tmp_path / "data") as bp:
        conn = await bp.connect()
        await conn.declare_queue("d.q", durable=True)
        await conn.publish_many("", "d.q", [b"p0", b"p1", b"p2", b"p3", b"p4"], persistent=True)
        # One delivered and unacked at purge time: purge leaves it with the consumer.
        held = await conn.get("d.q")
        assert held is not None and held.body == b"p0"
        assert await conn.purge_queue("d.q") == 4
        # Confirmed after the purge: the purge's records precede it on disk.
        await conn.publish_many("", "d.q", [b"a0", b"a1"], persistent=True)
        await restart(bp, conn, mode)

        conn = await bp.connect()
        try:
            got = await get_all(conn, "d.q")
            assert [m.body for m in got] == [b"p0", b"a0", b"a1"]
            assert got[0].redelivered
        finally:
            await conn.close()


@pytest.mark.parametrize("mode", STOP_MODES)
async def test_deleted_queue_stays_deleted_with_its_messages(tmp_path: Path, mode: str) -> None:
    async with broker_process(tmp_path / "data") as bp:
        conn = await bp.connect()
        await conn.declare_exchange("d.ex", "direct", durable=True)
        await conn.declare_queue("d.q", durable=True)
        await conn.bind_queue("d.q", "d.ex", "k")
        await conn.publish_many("d.ex", "k", [b"x0", b"x1", b"x2"], persistent=True)
        assert await conn.delete_queue("d.q") == 3
        # No barrier: the delete was answered after the definitions were on disk.
        await restart(bp, conn, mode)

        conn = await bp.connect()
        try:
            with pytest.raises(wharf.NotFound):
                await conn.declare_queue("d.q", passive=True)
            info = await conn.declare_queue("d.q", durable=True)
            assert info.messages == 0
            with pytest.raises(wharf.Unroutable):
                await conn.publish("d.ex", "k", b"nobody", mandatory=True)
            assert await get_all(conn, "d.q") == []
        finally:
            await conn.close()


@pytest.mark.parametrize("mode", STOP_MODES)
async def test_restarts_without_traffic_keep_everything(tmp_path: Path, mode: str) -> None:
    """Recovery is repeatable: restarting again and again changes nothing."""
    async with broker_process(tmp_path / "data") as bp:
        conn = await bp.connect()
        await conn.declare_queue("d.q", durable=True)
        await conn.publish_many("", "d.q", [f"m{i}".encode() for i in range(50)], persistent=True)
        for _ in range(3):
            await restart(bp, conn, mode)
            conn = await bp.connect()
            assert (await conn.declare_queue("d.q", passive=True)).messages == 50
        got = await get_all(conn, "d.q")
        assert [m.body for m in got] == [f"m{i}".encode() for i in range(50)]
        await conn.close()


# -- one broker per data directory ----------------------------------------------------------


async def test_second_broker_on_the_same_data_dir_refuses_to_start(tmp_path: Path) -> None:
    data = tmp_path / "data"
    async with broker_process(data) as first:
        second = BrokerProcess(data, log_dir=tmp_path / "second")
        try:
            second.spawn()
            code = await second.wait_exit(START_TIMEOUT_S)
            assert code != 0
            assert str(data.resolve()) in second.output(), second.output()
            # The first broker is unaffected.
            conn = await first.connect()
            await conn.declare_queue("d.q", durable=True)
            await conn.publish("", "d.q", b"still-here", persistent=True)
            # kill -9 releases the lock: the directory can be used at once.
            await first.kill()
            await second.start()
            conn = await second.connect()
            assert [m.body for m in await get_all(conn, "d.q")] == [b"still-here"]
            await conn.close()
            assert await second.terminate() == 0
        finally:
            await second.close()


# -- long queues: bodies paged out to the segments ------------------------------------------

# A per-queue memory budget this small keeps all but the first few dozen messages of a
# queue on disk, behind the paged index.
SMALL_MEMORY_BUDGET = {"WHARF_QUEUE_MEMORY_BUDGET_BYTES": "8192"}


@pytest.mark.parametrize("mode", STOP_MODES)
async def test_long_queue_survives_with_order_properties_and_unacked(
    tmp_path: Path, mode: str
) -> None:
    batches = 30
    per_batch = 100
    held = 150
    async with broker_process(tmp_path / "data", env=SMALL_MEMORY_BUDGET) as bp:
        conn = await bp.connect()
        await conn.declare_queue("d.long", durable=True)
        expected: list[tuple[bytes, dict[str, Any] | None]] = []
        for b in range(batches):
            bodies = [f"b{b}-m{i}".encode() for i in range(per_batch)]
            headers = {"batch": b, "bin": bytes([b])}
            await conn.publish_many("", "d.long", bodies, persistent=True, headers=headers)
            expected += [(body, {"headers": headers, "persistent": True}) for body in bodies]
        # Transient messages paged to disk behind them must not come back.
        for _ in range(batches):
            await conn.publish_many("", "d.long", [b"transient"] * per_batch)
        # basic.get, not a consumer: acking would let a consumer's prefetch pull more.
        got: list[wharf.Message] = []
        for _ in range(held):
            msg = await conn.get("d.long")
            assert msg is not None
            got.append(msg)
        assert [m.body for m in got] == [body for body, _ in expected[:held]]
        for m in got[::2]:
            await m.ack()
        acked = {m.body for m in got[::2]}
        await settle_before_stop(conn, mode)
        await restart(bp, conn, mode)

        conn = await bp.connect()
        try:
            expected = [e for e in expected if e[0] not in acked]
            info = await conn.declare_queue("d.long", passive=True)
            assert info.messages == len(expected)
            consumer = await conn.consume("d.long", prefetch=0)
            back = await receive(consumer, len(expected))
            assert [(m.body, m.properties) for m in back] == expected
            redelivered = held // 2
            assert all(m.redelivered and m.delivery_count >= 2 for m in back[:redelivered])
            flagged = [(m.body, m.delivery_count) for m in back[redelivered:] if m.redelivered]
            assert not flagged, (len(flagged), flagged[:5], flagged[-5:])
            for m in back:
                await m.ack()
            await consumer.cancel()
            assert (await conn.declare_queue("d.long", passive=True)).messages == 0
        finally:
            await conn.close()
