"""Bad input over a real socket: every mistake gets a clear ERROR, the broker keeps serving.

Fatal mistakes (framing, handshake, anything before AUTH) end in one ERROR with
``fatal = true`` and request id 0, then the server closes.  Request-level mistakes
answer the request id they came with and leave the connection usable.  After each test
a separate, healthy SDK connection still publishes and gets.
"""

from __future__ import annotations

import asyncio
import struct
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import msgpack
import pytest

import wharf
from wharf.broker.server import Broker
from wharf.protocol import frames as F
from wharf.protocol.codec import encode

Connect = Callable[..., Any]
RawFactory = Callable[..., Any]

TIMEOUT_S = 5.0


def _qname(prefix: str = "q") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


async def assert_broker_healthy(connect: Connect) -> None:
    """A fresh SDK connection can still declare, publish (confirmed) and get."""
    c: wharf.Connection = await connect()
    q = _qname("healthy")
    await c.declare_queue(q)
    await c.publish("", q, b"still-serving")
    msg = await c.get(q, no_ack=True)
    assert msg is not None
    assert msg.body == b"still-serving"
    await c.delete_queue(q)


@pytest.fixture(autouse=True)
async def broker_still_serves(connect: Connect) -> AsyncIterator[None]:
    """After every test here, a separate healthy SDK connection still works."""
    yield
    await assert_broker_healthy(connect)


def assert_error(frame: Any, code: int, *, request_id: int, fatal: bool) -> None:
    assert frame[0] == F.ERROR, frame
    assert frame[1] == request_id, frame
    assert frame[2] == code, frame
    assert isinstance(frame[3], str) and frame[3], frame
    assert bool(frame[4]) is fatal, frame


def single_fatal_error(frames: list[Any]) -> Any:
    """The frames a connection got before the server closed it end in one fatal ERROR."""
    errors = [f for f in frames if f[0] == F.ERROR]
    assert len(errors) == 1, frames
    assert frames[-1] is errors[0], frames
    return errors[0]


async def recv_type(rc: Any, ftype: int) -> Any:
    """Next frame of ``ftype``, skipping heartbeats."""
    while True:
        frame = await rc.recv(TIMEOUT_S)
        if frame[0] == F.HEARTBEAT:
            continue
        assert frame[0] == ftype, frame
        return frame


async def raw_consume(rc: Any, queue: str, rid: int, expect: int) -> list[Any]:
    """CONSUME on the raw client; returns the first ``expect`` delivery entries."""
    rc.send(F.Consume(rid, queue, f"raw-{rid}", 100))
    ok = await recv_type(rc, F.OK)
    assert ok[1] == rid
    entries: list[Any] = []
    while len(entries) < expect:
        deliver = await recv_type(rc, F.DELIVER)
        entries.extend(deliver[3])
    return entries


# -- handshake and framing (connection-fatal) --------------------------------------------


async def test_garbage_instead_of_handshake_gets_505_then_close(raw_client: RawFactory) -> None:
    rc = await raw_client(handshake=False)
    rc.send_bytes(b"GET / HTTP/1.1\r\nHost: wharf\r\n\r\n")
    error = single_fatal_error(await rc.recv_until_closed(TIMEOUT_S))
    assert_error(error, 505, request_id=0, fatal=True)


async def test_wrong_protocol_version_gets_505(raw_client: RawFactory) -> None:
    rc = await raw_client(handshake=False)
    rc.send_bytes(F.MAGIC + bytes([F.PROTOCOL_VERSION + 1, 0]))
    error = single_fatal_error(await rc.recv_until_closed(TIMEOUT_S))
    assert_error(error, 505, request_id=0, fatal=True)
    assert error[5] == {"supported": [F.PROTOCOL_VERSION]}


async def test_other_minor_version_is_accepted(raw_client: RawFactory) -> None:
    rc = await raw_client(handshake=False)
    rc.send_bytes(F.MAGIC + bytes([F.PROTOCOL_VERSION, 7]))
    hello = await rc.recv(TIMEOUT_S)
    assert hello[0] == F.HELLO
    rc.send(F.Auth(1, "PLAIN", "guest", "guest", 0, {}))
    assert (await rc.recv(TIMEOUT_S))[0] == F.AUTH_OK


async def test_length_prefix_over_max_frame_bytes_gets_508(
    broker: Broker, raw_client: RawFactory
) -> None:
    rc = await raw_client()
    # Only the length prefix: the server refuses before waiting for the payload.
    rc.send_bytes(struct.pack(">I", broker.settings.max_frame_bytes + 1))
    error = single_fatal_error(await rc.recv_until_closed(TIMEOUT_S))
    assert_error(error, 508, request_id=0, fatal=True)


@pytest.mark.parametrize(
    "settings_overrides", [{"max_frame_bytes": 4096, "max_message_bytes": 1024}]
)
async def test_real_frame_over_a_small_max_frame_bytes_gets_508(raw_client: RawFactory) -> None:
    rc = await raw_client()
    rc.send(F.Publish(1, "", "anywhere", None, b"x" * 5000))
    error = single_fatal_error(await rc.recv_until_closed(TIMEOUT_S))
    assert_error(error, 508, request_id=0, fatal=True)


@pytest.mark.parametrize(
    "payload",
    [
        pytest.param(b"", id="zero-length"),
        pytest.param(b"\xc1", id="invalid-msgpack"),
        pytest.param(b"\x92\x14", id="truncated-msgpack-array"),
        pytest.param(msgpack.packb(5), id="not-an-array"),
        pytest.param(msgpack.packb({"type": 20}), id="map-not-array"),
        pytest.param(msgpack.packb([20]), id="array-too-short"),
        pytest.param(msgpack.packb(["20", 1]), id="type-not-int"),
    ],
)
async def test_malformed_payload_gets_501_fatal(raw_client: RawFactory, payload: bytes) -> None:
    rc = await raw_client()
    rc.send_bytes(struct.pack(">I", len(payload)) + payload)
    error = single_fatal_error(await rc.recv_until_closed(TIMEOUT_S))
    assert_error(error, 501, request_id=0, fatal=True)


async def test_malformed_frame_after_good_ones_still_answers_the_good_ones(
    raw_client: RawFactory,
) -> None:
    rc = await raw_client()
    q = _qname()
    rc.send_bytes(encode(F.QueueDeclare(3, q)) + struct.pack(">I", 1) + b"\xc1")
    frames = await rc.recv_until_closed(TIMEOUT_S)
    assert frames[0][:2] == [F.OK, 3], frames
    assert_error(single_fatal_error(frames), 501, request_id=0, fatal=True)


# -- before AUTH (everything fatal) ------------------------------------------------------


async def test_request_before_auth_is_fatal_503(raw_client: RawFactory) -> None:
    rc = await raw_client(auth=False)
    rc.send(F.QueueDeclare(1, _qname()))
    error = single_fatal_error(await rc.recv_until_closed(TIMEOUT_S))
    assert_error(error, 503, request_id=0, fatal=True)


async def test_publish_before_auth_is_fatal_and_not_routed(
    broker: Broker, raw_client: RawFactory, conn: wharf.Connection
) -> None:
    q = _qname()
    await conn.declare_queue(q)
    rc = await raw_client(auth=False)
    rc.send(F.Publish(0, "", q, None, b"sneaky"))
    error = single_fatal_error(await rc.recv_until_closed(TIMEOUT_S))
    assert_error(error, 503, request_id=0, fatal=True)
    assert broker.queues[q].ready_count == 0
    assert await conn.get(q) is None


async def test_second_auth_before_auth_ok_is_fatal_503(raw_client: RawFactory) -> None:
    rc = await raw_client(auth=False)
    auth = F.Auth(1, "PLAIN", "guest", "guest", 0, {})
    rc.send_bytes(encode(auth) + encode(auth._replace(request_id=2)))
    error = single_fatal_error(await rc.recv_until_closed(TIMEOUT_S))
    assert_error(error, 503, request_id=0, fatal=True)


async def test_mistyped_auth_is_fatal_502(raw_client: RawFactory) -> None:
    rc = await raw_client(auth=False)
    rc.send_array([F.AUTH, 1, "PLAIN", "guest", 12345])
    error = single_fatal_error(await rc.recv_until_closed(TIMEOUT_S))
    assert_error(error, 502, request_id=0, fatal=True)


async def test_heartbeat_before_auth_is_ignored(raw_client: RawFactory) -> None:
    rc = await raw_client(auth=False)
    rc.send(F.Heartbeat(0))
    rc.send(F.Auth(4, "PLAIN", "guest", "guest", 0, {}))
    ok = await rc.recv(TIMEOUT_S)
    assert ok[0] == F.AUTH_OK and ok[1] == 4, ok


# -- request-level errors (connection stays usable) --------------------------------------


@pytest.mark.parametrize(
    "bad",
    [
        pytest.param([F.QUEUE_DECLARE, 7, 123], id="name-is-int"),
        pytest.param([F.QUEUE_DECLARE, 7, "q", "yes"], id="durable-is-str"),
        pytest.param([F.QUEUE_DECLARE, 7], id="missing-name"),
        pytest.param([F.CONSUME, 7, "q", "", "ten"], id="prefetch-is-str"),
        pytest.param([F.QUEUE_BIND, 7, "q", b"bin-exchange"], id="exchange-is-bin"),
    ],
)
async def test_wrong_field_types_get_502_with_request_id(
    raw_client: RawFactory, bad: list[Any]
) -> None:
    rc = await raw_client()
    rc.send_array(bad)
    assert_error(await recv_type(rc, F.ERROR), 502, request_id=7, fatal=False)
    q = _qname()
    rc.send(F.QueueDeclare(8, q))
    ok = await recv_type(rc, F.OK)
    assert ok[1] == 8 and ok[2]["queue"] == q, ok


async def test_unknown_frame_type_gets_540_with_request_id(raw_client: RawFactory) -> None:
    rc = await raw_client()
    rc.send_array([99, 9, "future", "fields"])
    error = await recv_type(rc, F.ERROR)
    assert_error(error, 540, request_id=9, fatal=False)
    assert error[5] == {"frame_type": 99}
    rc.send(F.QueueDeclare(10, _qname()))
    assert (await recv_type(rc, F.OK))[1] == 10


async def test_extra_trailing_fields_and_nil_optionals_are_accepted(
    raw_client: RawFactory,
) -> None:
    rc = await raw_client()
    q = _qname()
    rc.send_array([F.QUEUE_DECLARE, 13, q, False, False, False, False, None, "from-v1.9"])
    ok = await recv_type(rc, F.OK)
    assert ok[1] == 13 and ok[2]["queue"] == q, ok
    # nil for optional fields means their defaults; publish with flags omitted.
    rc.send_array([F.PUBLISH, 1, "", q, None, b"hi"])
    assert (await recv_type(rc, F.CONFIRM))[2] == 1
    rc.send_array([F.GET, 14, q, None])
    get_ok = await recv_type(rc, F.GET_OK)
    assert get_ok[2][6] == b"hi"
    # ACK with multiple omitted settles the GET (no ERROR comes back before the OK).
    rc.send_array([F.ACK, 0, get_ok[2][0]])
    rc.send(F.QueueDeclare(15, q))
    ok = await recv_type(rc, F.OK)
    assert ok[1] == 15 and ok[2]["messages"] == 0, ok


@pytest.mark.parametrize(
    "server_frame",
    [
        pytest.param([F.DELIVER, 11, "tag", []], id="DELIVER"),
        pytest.param([F.CONFIRM, 11, 5], id="CONFIRM"),
        pytest.param([F.HELLO, 11, 1, "x", 1, 1, 1, ["PLAIN"]], id="HELLO"),
        pytest.param([F.GET_OK, 11, None, 0], id="GET_OK"),
    ],
)
async def test_server_only_frame_from_client_gets_503(
    raw_client: RawFactory, server_frame: list[Any]
) -> None:
    rc = await raw_client()
    rc.send_array(server_frame)
    assert_error(await recv_type(rc, F.ERROR), 503, request_id=11, fatal=False)
    rc.send(F.QueueDeclare(12, _qname()))
    assert (await recv_type(rc, F.OK))[1] == 12


async def test_mistyped_publish_is_nacked_by_seq_not_answered_with_error(
    broker: Broker, raw_client: RawFactory
) -> None:
    rc = await raw_client()
    q = _qname()
    rc.send(F.QueueDeclare(1, q))
    assert (await recv_type(rc, F.OK))[1] == 1
    # A str body fails validation (502): nacked for seq 3, never an ERROR echoing 3.
    rc.send_array([F.PUBLISH, 3, "", q, None, "text-not-bin", 0])
    nack = await recv_type(rc, F.PUBLISH_NACK)
    assert nack[1:4] == [0, 3, 502], nack
    # PUBLISH_MANY with a bad body: one nack for every seq the frame covers.
    rc.send_array([F.PUBLISH_MANY, 4, "", q, None, [b"ok", "bad", b"ok"], 0])
    nacks = [await recv_type(rc, F.PUBLISH_NACK) for _ in range(3)]
    assert [n[2] for n in nacks] == [4, 5, 6], nacks
    assert len({n[3] for n in nacks}) == 1, nacks
    # Seq 0 (fire-and-forget): a request-level ERROR with request id 0.
    rc.send_array([F.PUBLISH, 0, "", q, None, 12345, 0])
    assert_error(await recv_type(rc, F.ERROR), 502, request_id=0, fatal=False)
    # Later good publishes are confirmed; nothing bad reached the queue.
    rc.send(F.Publish(7, "", q, None, b"good"))
    confirm = await recv_type(rc, F.CONFIRM)
    assert confirm[2] == 7, confirm
    assert broker.queues[q].ready_count == 1


async def test_publish_many_with_a_non_bin_body_is_nacked_with_502(
    raw_client: RawFactory,
) -> None:
    rc = await raw_client()
    q = _qname()
    rc.send(F.QueueDeclare(1, q))
    assert (await recv_type(rc, F.OK))[1] == 1
    rc.send_array([F.PUBLISH_MANY, 1, "", q, None, [b"ok", "bad"], 0])
    nacks = [await recv_type(rc, F.PUBLISH_NACK) for _ in range(2)]
    assert [n[1:4] for n in nacks] == [[0, 1, 502], [0, 2, 502]], nacks


async def test_ack_many_with_a_non_int_tag_gets_502(raw_client: RawFactory) -> None:
    rc = await raw_client()
    rc.send_array([F.ACK_MANY, 6, [1, "two"]])
    assert_error(await recv_type(rc, F.ERROR), 502, request_id=6, fatal=False)


async def test_unknown_queue_and_exchange_get_404_and_connection_stays_usable(
    conn: wharf.Connection,
) -> None:
    missing = _qname("missing")
    with pytest.raises(wharf.NotFound) as info:
        await conn.get(missing)
    assert info.value.code == 404
    with pytest.raises(wharf.NotFound):
        await conn.declare_queue(missing, passive=True)
    with pytest.raises(wharf.NotFound):
        async with conn.consume(missing):
            pass
    with pytest.raises(wharf.NotFound):
        await conn.purge_queue(missing)
    with pytest.raises(wharf.NotFound):
        await conn.publish("no-such-exchange", "k", b"x")
    q = _qname()
    await conn.declare_queue(q)
    with pytest.raises(wharf.NotFound):
        await conn.bind_queue(q, "no-such-exchange", "k")
    with pytest.raises(wharf.NotFound):
        await conn.declare_exchange("no-such-exchange", passive=True)
    # The same connection still works.
    await conn.publish("", q, b"after-404s")
    msg = await conn.get(q, no_ack=True)
    assert msg is not None and msg.body == b"after-404s"
    assert not conn.is_closed


async def test_unknown_queue_on_raw_client_echoes_request_id(raw_client: RawFactory) -> None:
    rc = await raw_client()
    rc.send(F.QueueDeclare(21, _qname("missing"), passive=True))
    error = await recv_type(rc, F.ERROR)
    assert_error(error, 404, request_id=21, fatal=False)
    rc.send(F.Get(22, _qname("missing")))
    assert_error(await recv_type(rc, F.ERROR), 404, request_id=22, fatal=False)
    rc.send(F.QueueDeclare(23, _qname()))
    assert (await recv_type(rc, F.OK))[1] == 23


async def test_fire_and_forget_publish_to_unknown_exchange_gets_error_with_id_0(
    raw_client: RawFactory,
) -> None:
    rc = await raw_client()
    rc.send(F.Publish(0, "no-such-exchange", "k", None, b"x"))
    assert_error(await recv_type(rc, F.ERROR), 404, request_id=0, fatal=False)
    rc.send(F.Publish(1, "no-such-exchange", "k", None, b"x"))
    nack = await recv_type(rc, F.PUBLISH_NACK)
    assert nack[1:4] == [0, 1, 404], nack


# -- acks ----------------------------------------------------------------------------------


async def test_double_ack_and_unknown_tags_get_407_echoing_the_ack_id(
    broker: Broker, raw_client: RawFactory, conn: wharf.Connection
) -> None:
    q = _qname()
    await conn.declare_queue(q)
    await conn.publish_many("", q, [b"a", b"b"])
    rc = await raw_client()
    entries = await raw_consume(rc, q, rid=5, expect=2)
    tag_a, tag_b = entries[0][0], entries[1][0]

    rc.send(F.Ack(5, tag_a))
    rc.send(F.Ack(5, tag_a))
    error = await recv_type(rc, F.ERROR)
    assert_error(error, 407, request_id=5, fatal=False)
    assert error[5] == {"delivery_tag": tag_a}

    rc.send(F.Ack(77, 999))
    error = await recv_type(rc, F.ERROR)
    assert_error(error, 407, request_id=77, fatal=False)
    assert error[5] == {"delivery_tag": 999}

    rc.send(F.Nack(78, 998, False, True))
    assert_error(await recv_type(rc, F.ERROR), 407, request_id=78, fatal=False)
    rc.send(F.Reject(79, 997, True))
    assert_error(await recv_type(rc, F.ERROR), 407, request_id=79, fatal=False)

    # ACK_MANY with one good and one bad tag: the good one is settled, the bad one named.
    rc.send(F.AckMany(80, [tag_b, 12345]))
    error = await recv_type(rc, F.ERROR)
    assert_error(error, 407, request_id=80, fatal=False)
    assert error[5] == {"delivery_tag": 12345}

    rc.send(F.QueueDeclare(81, q))
    ok = await recv_type(rc, F.OK)
    assert ok[1] == 81 and ok[2]["messages"] == 0, ok
    assert broker.queues[q].unacked_count == 0


async def test_sdk_double_ack_raises_unknown_delivery_tag_from_the_consumer(
    conn: wharf.Connection,
) -> None:
    q = _qname()
    await conn.declare_queue(q)
    await conn.publish_many("", q, [b"one", b"two"])
    async with asyncio.timeout(TIMEOUT_S), conn.consume(q) as messages:
        first = await anext(messages)
        await first.ack()
        await first.ack()
        # Acks are one-way: a round trip makes sure the broker's ERROR has arrived.
        await conn.declare_queue(q)
        with pytest.raises(wharf.UnknownDeliveryTag) as info:
            await anext(messages)
        assert info.value.details.get("delivery_tag") == first.delivery_tag
        second = await anext(messages)
        assert second.body == b"two"
        await second.ack()
    assert not conn.is_closed


# -- a client that vanishes ----------------------------------------------------------------


async def test_client_vanishing_mid_frame_requeues_its_unacked_deliveries(
    broker: Broker, raw_client: RawFactory, conn: wharf.Connection, connect: Connect
) -> None:
    q = _qname()
    await conn.declare_queue(q)
    bodies = [b"m1", b"m2", b"m3"]
    await conn.publish_many("", q, bodies)
    rc = await raw_client()
    entries = await raw_consume(rc, q, rid=5, expect=3)
    assert [e[6] for e in entries] == bodies
    assert broker.queues[q].unacked_count == 3

    # Half of an ACK frame, then the socket goes away.
    rc.send_bytes(encode(F.Ack(5, entries[0][0]))[:3])
    await rc.writer.drain()
    rc.writer.transport.abort()

    other = await connect()
    got: list[wharf.Message] = []
    async with asyncio.timeout(TIMEOUT_S), other.consume(q) as messages:
        async for msg in messages:
            got.append(msg)
            await msg.ack()
            if len(got) == len(bodies):
                break
    assert [m.body for m in got] == bodies
    assert all(m.redelivered for m in got)
    assert all(m.delivery_count == 2 for m in got)
