"""SDK logic without sockets: URLs, properties, confirm bookkeeping, and the connection
core driven through a fake transport (broker frames in, client frames out)."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Any

import pytest

import wharf
from wharf.confirms import ConfirmTracker, PublishResult
from wharf.connection import Connection
from wharf.core import NEW_REQUEST, ConnectionCore, Reply
from wharf.message import build_properties, messages_from_entries
from wharf.protocol import frames as F
from wharf.protocol.codec import FrameDecoder, encode_array
from wharf.protocol.errors import ERRORS_BY_CODE
from wharf.recovery import Backoff, BindingRecord, ExchangeRecord, QueueRecord, Topology
from wharf.state import State
from wharf.url import parse_url

# -- URL ---------------------------------------------------------------------------------


def test_url_defaults() -> None:
    p = parse_url("wharf://")
    assert (p.host, p.port, p.username, p.password) == ("127.0.0.1", 5680, "guest", "guest")


def test_url_full_and_percent_decoded() -> None:
    p = parse_url("wharf://us%40er:p%3Ass%2Fw@broker.example:7000")
    assert (p.host, p.port, p.username, p.password) == ("broker.example", 7000, "us@er", "p:ss/w")


def test_url_default_port_and_ipv6() -> None:
    assert parse_url("wharf://a:b@myhost").port == 5680
    assert parse_url("wharf://a:b@[::1]:5681").host == "::1"
    assert parse_url("wharf://a:b@host/").host == "host"


def test_url_user_without_password() -> None:
    p = parse_url("wharf://alice@host")
    assert (p.username, p.password) == ("alice", "")


@pytest.mark.parametrize(
    "url",
    [
        "amqp://guest:guest@host",
        "host:5680",
        "wharf://h:notaport",
        "wharf://h/vhost/extra",  # one path segment: the vhost (a / inside it is %2F)
        "wharf://h?x=1",
    ],
)
def test_url_rejects(url: str) -> None:
    with pytest.raises(wharf.InvalidArgument):
        parse_url(url)


def test_url_error_hides_password() -> None:
    with pytest.raises(wharf.InvalidArgument) as info:
        parse_url("amqp://bob:s3cret@host")
    assert "s3cret" not in str(info.value)


# -- properties and messages -------------------------------------------------------------


def _props(**kw: Any) -> dict[str, Any] | None:
    names = ["headers", "content_type", "content_encoding", "message_id", "correlation_id"]
    names += ["reply_to", "timestamp", "type", "app_id", "user_id", "priority", "expiration"]
    args: dict[str, Any] = dict.fromkeys(names)
    args["persistent"] = False
    args.update(kw)
    return build_properties(**args)


def test_properties_empty_is_nil() -> None:
    assert _props() is None


def test_properties_only_set_keys() -> None:
    assert _props(message_id="1", persistent=True, priority=0) == {
        "message_id": "1",
        "persistent": True,
        "priority": 0,
    }
    assert _props(persistent=False, headers={}) == {"headers": {}}


def test_properties_timestamp_datetime_to_epoch_ms() -> None:
    ts = datetime(2024, 1, 2, 3, 4, 5, 678000, tzinfo=UTC)
    assert _props(timestamp=ts) == {"timestamp": int(ts.timestamp() * 1000)}
    assert _props(timestamp=1234) == {"timestamp": 1234}


def test_message_from_entries() -> None:
    props = {"headers": {"k": "v"}, "message_id": "m1", "persistent": True, "x-new": 1}
    entries = [
        [7, True, 3, "ex", "rk", props, b"body"],
        [8, False, 1, "", "q", None, b"", "a future field"],
    ]
    first, second = messages_from_entries(entries, None)
    assert (first.delivery_tag, first.redelivered, first.delivery_count) == (7, True, 3)
    assert (first.exchange, first.routing_key, first.body) == ("ex", "rk", b"body")
    assert first.headers == {"k": "v"} and first.message_id == "m1" and first.persistent
    assert first.properties is not None and first.properties["x-new"] == 1
    assert second.headers == {} and second.message_id is None and not second.persistent
    assert second.delivery_tag == 8 and second.body == b""


def test_every_error_class_is_exported() -> None:
    for cls in ERRORS_BY_CODE.values():
        assert getattr(wharf, cls.__name__) is cls
    assert wharf.Unroutable.code == 312 and issubclass(wharf.Unroutable, wharf.WharfError)


# -- confirm tracker -----------------------------------------------------------------------


def _future() -> asyncio.Future[None]:
    return asyncio.get_running_loop().create_future()


async def test_confirms_cumulative_over_batches() -> None:
    t = ConfirmTracker()
    a, b, c = _future(), _future(), _future()
    assert t.add(1, a) == 1
    assert t.add(3, b) == 2
    assert t.add(1, c) == 5
    t.confirm(3)
    assert a.done() and not b.done() and not c.done()
    t.confirm(5)
    assert b.result() == PublishResult() and c.result() == PublishResult()
    assert len(t) == 0


async def test_confirms_stale_up_to_is_ignored() -> None:
    t = ConfirmTracker()
    a = _future()
    t.add(2, a)
    t.confirm(1)
    t.confirm(0)
    assert not a.done()
    t.confirm(2)
    assert a.done()


async def test_nack_of_single_publish_resolves_without_confirm() -> None:
    t = ConfirmTracker()
    a, b = _future(), _future()
    t.add(1, a)
    t.add(1, b)
    t.nack(1, 404, "no exchange 'x'")
    with pytest.raises(wharf.NotFound) as info:
        a.result()
    assert info.value.details["seq"] == 1
    assert not b.done() and len(t) == 1
    t.confirm(2)
    assert b.result() == PublishResult()


async def test_nack_later_batch_first_then_confirm_earlier() -> None:
    t = ConfirmTracker()
    a, b = _future(), _future()
    t.add(1, a)
    t.add(1, b)
    t.nack(2, 311, "too large")
    assert b.done() and not a.done()
    t.confirm(1)
    assert a.result() == PublishResult() and len(t) == 0


async def test_batch_with_a_nack_fails_with_indexes() -> None:
    t = ConfirmTracker()
    a = _future()
    first = t.add(4, a)
    t.nack(first + 2, 400, "bad priority")
    assert not a.done()
    t.confirm(first + 3)
    with pytest.raises(wharf.InvalidArgument) as info:
        a.result()
    assert info.value.details["failed_indexes"] == [2]
    assert info.value.details["failed_seqs"] == [first + 2]
    assert info.value.details["count"] == 4


async def test_whole_batch_nacked_resolves_at_once() -> None:
    t = ConfirmTracker()
    a = _future()
    t.add(3, a)
    for seq in (1, 2, 3):
        t.nack(seq, 404, "no exchange")
    with pytest.raises(wharf.NotFound) as info:
        a.result()
    assert info.value.details["failed_indexes"] == [0, 1, 2]
    assert len(t) == 0


async def test_return_then_confirm_raises_unroutable_with_message() -> None:
    t = ConfirmTracker()
    a = _future()
    t.add(1, a)
    t.returned(1, 312, "NO_ROUTE", "orders", "eu.x", {"message_id": "9"}, b"payload")
    assert not a.done()
    t.confirm(1)
    with pytest.raises(wharf.Unroutable) as info:
        a.result()
    d = info.value.details
    assert (d["exchange"], d["routing_key"], d["body"]) == ("orders", "eu.x", b"payload")
    assert d["properties"] == {"message_id": "9"}


async def test_confirm_skips_cancelled_publisher() -> None:
    t = ConfirmTracker()
    a, b = _future(), _future()
    t.add(1, a)
    t.add(1, b)
    a.cancel()
    t.confirm(2)
    assert b.result() == PublishResult()


async def test_fail_all() -> None:
    t = ConfirmTracker()
    a, b = _future(), _future()
    t.add(1, a)
    t.add(2, b)
    t.fail_all(wharf.ConnectionLost("gone"))
    for f in (a, b):
        with pytest.raises(wharf.ConnectionLost):
            f.result()
    assert len(t) == 0


async def test_nack_for_unknown_seq_is_ignored() -> None:
    t = ConfirmTracker()
    a = _future()
    t.add(1, a)
    t.nack(99, 404, "x")
    t.returned(42, 312, "NO_ROUTE", "", "", None, b"")
    t.confirm(1)
    assert a.result() == PublishResult()


# -- the connection core over a fake transport ------------------------------------------


class FakeTransport(asyncio.Transport):
    """Records writes; closing reports connection_lost on the next loop iteration."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__()
        self.loop = loop
        self.writes: list[bytes] = []
        self.closing = False
        self.protocol: ConnectionCore | None = None

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.writes.append(bytes(data))

    def is_closing(self) -> bool:
        return self.closing

    def close(self) -> None:
        if not self.closing:
            self.closing = True
            assert self.protocol is not None
            self.loop.call_soon(self.protocol.connection_lost, None)

    def abort(self) -> None:
        self.close()

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        pass


class Peer:
    """The broker side: feeds frames to the core, decodes what the core wrote."""

    def __init__(self, core: ConnectionCore, transport: FakeTransport) -> None:
        self.core = core
        self.transport = transport
        self.decoder = FrameDecoder(expect_handshake=True, use_list=True)
        self.read = 0

    def send(self, *frame: Any) -> None:
        self.core.data_received(encode_array(frame))

    def frames(self) -> list[list[Any]]:
        """Frames the client wrote since the last call (without the port probe that
        follows the handshake: test_client_sends_a_port_probe_after_the_handshake)."""
        out: list[list[Any]] = []
        for data in self.transport.writes[self.read :]:
            out.extend(f for f in self.decoder.feed(data) if f != PORT_PROBE)
        self.read = len(self.transport.writes)
        return out


PORT_PROBE = [F.HEARTBEAT, 0, "\r\n\r\n"]


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


async def open_connection(
    heartbeat_s: int = 0, max_frame_bytes: int = 1 << 20
) -> tuple[Connection, Peer]:
    loop = asyncio.get_running_loop()
    core = ConnectionCore(loop)
    transport = FakeTransport(loop)
    transport.protocol = core
    core.connection_made(transport)
    peer = Peer(core, transport)
    task = loop.create_task(core.handshake("guest", "guest", heartbeat_s, {}))
    peer.send(F.HELLO, 0, 1, "wharf", max_frame_bytes, 1 << 19, 60, ["PLAIN"])
    await settle()
    (auth,) = peer.frames()
    assert auth[:5] == [F.AUTH, auth[1], "PLAIN", "guest", "guest"]
    peer.send(F.AUTH_OK, auth[1], "conn-1", heartbeat_s, {"product": "wharf"})
    await task
    return Connection(core, "fake", 5680), peer


async def test_handshake_refused() -> None:
    loop = asyncio.get_running_loop()
    core = ConnectionCore(loop)
    transport = FakeTransport(loop)
    transport.protocol = core
    core.connection_made(transport)
    peer = Peer(core, transport)
    task = loop.create_task(core.handshake("guest", "nope", 60, {}))
    peer.send(F.HELLO, 0, 1, "wharf", 1 << 20, 1 << 19, 60, ["PLAIN"])
    await settle()
    peer.send(F.ERROR, 0, 403, "bad credentials", True, None)
    with pytest.raises(wharf.AccessRefused):
        await task
    assert transport.closing


async def test_request_ok_error_and_still_usable() -> None:
    conn, peer = await open_connection()
    declare = asyncio.ensure_future(conn.declare_queue("q1", durable=True))
    await settle()
    (frame,) = peer.frames()
    assert frame == [F.QUEUE_DECLARE, frame[1], "q1", True, False, False, False, None]
    peer.send(F.OK, frame[1], {"queue": "q1", "messages": 3, "consumers": 1})
    assert await declare == wharf.QueueInfo("q1", 3, 1)

    purge = asyncio.ensure_future(conn.purge_queue("nope"))
    await settle()
    (frame,) = peer.frames()
    peer.send(F.ERROR, frame[1], 404, "no queue 'nope'", False, {"queue": "nope"})
    with pytest.raises(wharf.NotFound) as info:
        await purge
    assert info.value.code == 404 and info.value.details == {"queue": "nope"}

    delete = asyncio.ensure_future(conn.delete_queue("q1"))
    await settle()
    (frame,) = peer.frames()
    peer.send(F.OK, frame[1], {"messages": 5})
    assert await delete == 5


async def test_callback_request_gets_answer_error_and_loss() -> None:
    conn, peer = await open_connection()
    core = conn._core
    got: list[tuple[Any, Any]] = []

    def callback(frame: Reply | None, error: wharf.WharfError | None) -> None:
        got.append((frame, error))

    rid = core.start_request_cb(F.ListOffsets(NEW_REQUEST, "t", 0), callback=callback)
    core.flush()
    (frame,) = peer.frames()
    assert frame == [F.LIST_OFFSETS, rid, "t", 0, None]
    peer.send(F.OK, rid, {"earliest": 0, "latest": 5})
    assert got == [(F.Ok(rid, {"earliest": 0, "latest": 5}), None)]  # at once, typed

    got.clear()
    rid = core.start_request_cb(F.ListOffsets(NEW_REQUEST, "nope", 0), callback=callback)
    peer.send(F.ERROR, rid, 404, "no topic 'nope'", False, None)
    assert got[0][0] is None and isinstance(got[0][1], wharf.NotFound)

    def broken(frame: Reply | None, error: wharf.WharfError | None) -> None:
        raise RuntimeError("a bug in the handler")

    rid = core.start_request_cb(F.ListOffsets(NEW_REQUEST, "t", 0), callback=broken)
    peer.send(F.OK, rid, {})  # logged, and the connection stays up
    assert core.closed_error is None

    got.clear()
    core.start_request_cb(F.ListOffsets(NEW_REQUEST, "t", 0), callback=callback)
    core.fail(wharf.ConnectionLost("gone"))
    assert got == []  # like a future's callbacks: once the loss is handled
    await settle()
    assert got[0][0] is None and isinstance(got[0][1], wharf.ConnectionLost)
    with pytest.raises(wharf.ConnectionLost):
        core.start_request_cb(F.ListOffsets(NEW_REQUEST, "t", 0), callback=callback)


async def test_big_frames_are_written_at_once() -> None:
    conn, peer = await open_connection()
    before = len(peer.transport.writes)
    await conn.publish("ex", "rk", b"m", confirm=False)
    assert len(peer.transport.writes) == before  # small: with this iteration's others
    core = conn._core
    core.send_frame(F.Publish(0, "ex", "rk", None, b"x" * 70_000))
    assert len(peer.transport.writes) == before + 1  # both, now, in order
    frames = peer.frames()
    assert [f[0] for f in frames[-2:]] == [F.PUBLISH, F.PUBLISH]


async def test_writes_are_coalesced_per_iteration() -> None:
    conn, peer = await open_connection()
    before = len(peer.transport.writes)
    for i in range(10):
        await conn.publish("ex", "rk", b"m%d" % i, confirm=False)
    assert len(peer.transport.writes) == before
    await settle()
    assert len(peer.transport.writes) == before + 1
    frames = peer.frames()
    assert [f[0] for f in frames] == [F.PUBLISH] * 10
    assert frames[0] == [F.PUBLISH, 0, "ex", "rk", None, b"m0", 0]


async def test_publish_confirm_and_properties() -> None:
    conn, peer = await open_connection()
    pub = asyncio.ensure_future(
        conn.publish("ex", "rk", b"x", message_id="1", persistent=True, mandatory=True)
    )
    await settle()
    (frame,) = peer.frames()
    assert frame == [
        F.PUBLISH, 1, "ex", "rk", {"message_id": "1", "persistent": True}, b"x", F.FLAG_MANDATORY,
    ]  # fmt: skip
    assert not pub.done()
    peer.send(F.CONFIRM, 0, 1)
    await pub


async def test_publish_many_one_frame_consecutive_seqs() -> None:
    conn, peer = await open_connection()
    first = asyncio.ensure_future(conn.publish_many("ex", "rk", [b"a", b"b", b"c"]))
    second = asyncio.ensure_future(conn.publish("ex", "rk", b"d"))
    await settle()
    frames = peer.frames()
    assert frames[0] == [F.PUBLISH_MANY, 1, "ex", "rk", None, [b"a", b"b", b"c"], 0]
    assert frames[1][:2] == [F.PUBLISH, 4]
    peer.send(F.RETURN, 0, 2, 312, "NO_ROUTE", "ex", "rk", None, b"b")
    peer.send(F.CONFIRM, 0, 4)
    with pytest.raises(wharf.Unroutable) as info:
        await first
    assert info.value.details["failed_indexes"] == [1]
    await second
    await conn.publish_many("ex", "rk", [])  # empty: returns at once


async def test_publish_many_split_over_frame_limit() -> None:
    conn, peer = await open_connection(max_frame_bytes=200 * 1024)
    bodies = [bytes(60 * 1024)] * 5
    pub = asyncio.ensure_future(conn.publish_many("ex", "rk", bodies))
    await settle()
    frames = peer.frames()
    assert len(frames) > 1
    assert [f[1] for f in frames] == [
        1 + sum(len(g[5]) for g in frames[:i]) for i in range(len(frames))
    ]
    assert sum(len(f[5]) for f in frames) == 5
    peer.send(F.CONFIRM, 0, 5)
    await pub


async def test_publish_waits_while_transport_paused() -> None:
    conn, peer = await open_connection()
    conn._core.pause_writing()
    pub = asyncio.ensure_future(conn.publish("ex", "rk", b"x", confirm=False))
    await settle()
    assert not pub.done() and peer.frames() == []
    conn._core.resume_writing()
    await pub
    await settle()
    assert [f[0] for f in peer.frames()] == [F.PUBLISH]


async def test_body_over_broker_limit_is_refused_locally() -> None:
    conn, _ = await open_connection()
    with pytest.raises(wharf.ContentTooLarge):
        await conn.publish("ex", "rk", bytes((1 << 19) + 1))


async def start_consumer(
    conn: Connection, peer: Peer, **kw: Any
) -> tuple[wharf.Consumer, list[Any]]:
    consumer = conn.consume("q", **kw)
    start = asyncio.ensure_future(consumer.__aenter__())
    await settle()
    (frame,) = peer.frames()
    assert frame[0] == F.CONSUME
    peer.send(F.OK, frame[1], {"consumer_tag": frame[3]})
    assert await start is consumer
    return consumer, frame


def entry(tag: int, body: bytes = b"m", count: int = 1) -> list[Any]:
    return [tag, count > 1, count, "ex", "rk", None, body]


async def test_acks_coalesced_and_flushed_before_nack() -> None:
    conn, peer = await open_connection()
    consumer, consume = await start_consumer(conn, peer, prefetch=10)
    ack_id, tag = consume[1], consume[3]
    assert consume == [F.CONSUME, ack_id, "q", tag, 10, False, False, None]
    peer.send(F.DELIVER, 0, tag, [entry(1), entry(2), entry(3), entry(4)])
    got = [await consumer.__anext__() for _ in range(4)]
    assert [m.delivery_tag for m in got] == [1, 2, 3, 4]
    await got[0].ack()
    await got[1].ack()
    await got[2].nack(requeue=False)
    await got[3].ack()
    await settle()
    assert peer.frames() == [
        [F.ACK_MANY, ack_id, [1, 2]],
        [F.NACK, ack_id, 3, False, False, 0],
        [F.ACK_MANY, ack_id, [4]],
    ]


async def test_consumer_wait_for_timeout_loses_nothing() -> None:
    conn, peer = await open_connection()
    consumer, consume = await start_consumer(conn, peer)
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(consumer.__anext__(), 0.01)
    peer.send(F.DELIVER, 0, consume[3], [entry(1, b"a")])
    msg = await asyncio.wait_for(consumer.__anext__(), 1)
    assert msg.body == b"a"


async def test_consumer_cancel_requeues_unyielded() -> None:
    conn, peer = await open_connection()
    consumer, consume = await start_consumer(conn, peer)
    peer.send(F.DELIVER, 0, consume[3], [entry(1), entry(2), entry(3)])
    first = await consumer.__anext__()
    await first.ack()
    cancel = asyncio.ensure_future(consumer.cancel())
    await settle()
    frames = peer.frames()
    assert frames[0] == [F.ACK_MANY, consume[1], [1]]
    assert frames[1][0] == F.CANCEL and frames[1][2] == consume[3]
    peer.send(F.OK, frames[1][1], {"consumer_tag": consume[3]})
    await cancel
    await settle()
    assert peer.frames() == [
        [F.NACK, consume[1], 2, False, True, 0],
        [F.NACK, consume[1], 3, False, True, 0],
    ]
    with pytest.raises(StopAsyncIteration):
        await consumer.__anext__()


async def test_server_cancel_raises_after_buffer_then_stops() -> None:
    conn, peer = await open_connection()
    consumer, consume = await start_consumer(conn, peer)
    peer.send(F.DELIVER, 0, consume[3], [entry(1)])
    peer.send(F.CANCELLED, 0, consume[3], 404, "queue deleted")
    assert (await consumer.__anext__()).delivery_tag == 1
    with pytest.raises(wharf.NotFound):
        await consumer.__anext__()
    with pytest.raises(StopAsyncIteration):
        await consumer.__anext__()


async def test_ack_error_routed_to_consumer_once() -> None:
    conn, peer = await open_connection()
    consumer, consume = await start_consumer(conn, peer)
    peer.send(F.DELIVER, 0, consume[3], [entry(1), entry(2)])
    peer.send(F.ERROR, consume[1], 407, "unknown delivery tag 9", False, {"delivery_tag": 9})
    with pytest.raises(wharf.UnknownDeliveryTag):
        await consumer.__anext__()
    assert (await consumer.__anext__()).delivery_tag == 1
    assert (await consumer.__anext__()).delivery_tag == 2


async def test_get_ack_error_goes_to_on_error_not_the_next_request() -> None:
    conn, peer = await open_connection()
    errors: list[wharf.WharfError] = []
    conn.on_error(errors.append)
    get = asyncio.ensure_future(conn.get("q"))
    await settle()
    (frame,) = peer.frames()
    assert frame == [F.GET, frame[1], "q", False]
    peer.send(F.GET_OK, frame[1], entry(5, b"g"), 0)
    msg = await get
    assert msg is not None and msg.body == b"g"
    await msg.ack()
    await settle()
    assert peer.frames() == [[F.ACK_MANY, 0, [5]]]
    peer.send(F.ERROR, 0, 407, "unknown delivery tag 5", False, None)
    assert [type(e) for e in errors] == [wharf.UnknownDeliveryTag]
    purge = asyncio.ensure_future(conn.purge_queue("q"))
    await settle()
    (frame,) = peer.frames()
    peer.send(F.OK, frame[1], {"messages": 0})
    assert await purge == 0


async def test_get_empty_queue() -> None:
    conn, peer = await open_connection()
    get = asyncio.ensure_future(conn.get("q", no_ack=True))
    await settle()
    (frame,) = peer.frames()
    peer.send(F.GET_OK, frame[1], None, 0)
    assert await get is None


async def test_fatal_error_fails_everything() -> None:
    conn, peer = await open_connection()
    consumer, _ = await start_consumer(conn, peer)
    pending = asyncio.ensure_future(conn.declare_exchange("x", "topic"))
    pub = asyncio.ensure_future(conn.publish("x", "k", b"b"))
    await settle()
    peer.send(F.ERROR, 0, 320, "broker shutting down", True, None)
    for fut in (pending, pub):
        with pytest.raises(wharf.ConnectionForced):
            await fut
    with pytest.raises(wharf.ConnectionForced):
        await consumer.__anext__()
    assert conn.is_closed
    with pytest.raises(wharf.ConnectionForced):
        await conn.purge_queue("q")
    await conn.close()


async def test_server_close_answered_with_close_ok() -> None:
    conn, peer = await open_connection()
    peer.send(F.CLOSE, 9, 320, "maintenance")
    assert peer.frames() == [[F.CLOSE_OK, 9]]
    assert peer.transport.closing
    with pytest.raises(wharf.ConnectionForced):
        await conn.publish("x", "k", b"b")


async def test_client_close_sends_close_and_is_idempotent() -> None:
    conn, peer = await open_connection()
    closing = asyncio.ensure_future(conn.close())
    await settle()
    (frame,) = peer.frames()
    assert frame[0] == F.CLOSE
    peer.send(F.CLOSE_OK, frame[1])
    await closing
    assert conn.is_closed and peer.transport.closing
    await conn.close()
    with pytest.raises(wharf.ConnectionLost):
        await conn.declare_queue("q")


async def test_heartbeat_sent_when_idle_and_timeout_when_silent() -> None:
    conn, peer = await open_connection(heartbeat_s=10)
    core = conn._core
    peer.frames()
    core._heartbeat_tick()  # the AUTH frame and AUTH_OK count as traffic in this window
    assert peer.frames() == []
    core._heartbeat_tick()  # silent 1
    assert peer.frames() == [[F.HEARTBEAT, 0]]
    core._heartbeat_tick()  # silent 2: a heartbeat every tick while idle
    assert peer.frames() == [[F.HEARTBEAT, 0]]
    peer.send(F.HEARTBEAT, 0)
    for _ in range(4):  # received resets the count; then 4 silent ticks = 2 heartbeats
        assert not conn.is_closed
        core._heartbeat_tick()
    assert not conn.is_closed
    core._heartbeat_tick()
    assert conn.is_closed
    with pytest.raises(wharf.HeartbeatTimeout):
        await conn.declare_queue("q")


async def test_rpc_round_trip_and_timeout() -> None:
    conn, peer = await open_connection()
    call = asyncio.ensure_future(conn.rpc("", "rpc-q", b"req", timeout=5))
    await settle()
    (declare,) = peer.frames()
    assert declare[0] == F.QUEUE_DECLARE and declare[2:7] == ["", False, True, True, False]
    peer.send(F.OK, declare[1], {"queue": "amq.gen-1", "messages": 0, "consumers": 0})
    await settle()
    (consume,) = peer.frames()
    assert consume[0] == F.CONSUME and consume[2] == "amq.gen-1" and consume[5] is True
    peer.send(F.OK, consume[1], {"consumer_tag": consume[3]})
    await settle()
    (publish,) = peer.frames()
    props = publish[4]
    assert publish[0] == F.PUBLISH and props["reply_to"] == "amq.gen-1"
    peer.send(F.CONFIRM, 0, publish[1])
    reply = [1, False, 1, "", "amq.gen-1", {"correlation_id": props["correlation_id"]}, b"resp"]
    peer.send(F.DELIVER, 0, consume[3], [reply])
    assert (await call).body == b"resp"

    with pytest.raises(TimeoutError):
        await conn.rpc("", "rpc-q", b"req", timeout=0.05)
    assert conn._rpc is not None and conn._rpc.waiters == {}


# -- reconnect: backoff ------------------------------------------------------------------


def test_backoff_ceiling_doubles_from_base_up_to_the_cap() -> None:
    b = Backoff(0.1, 2.0, rng=lambda: 1.0)
    assert [b.delay_s(n) for n in range(7)] == pytest.approx([0.1, 0.2, 0.4, 0.8, 1.6, 2.0, 2.0])
    assert b.ceiling_s(10_000) == 2.0  # no float overflow however long the outage
    assert b.ceiling_s(-1) == pytest.approx(0.1)


def test_backoff_full_jitter_spans_zero_to_the_ceiling() -> None:
    assert Backoff(0.1, 30.0, rng=lambda: 0.0).delay_s(5) == 0.0
    assert Backoff(0.1, 30.0, rng=lambda: 0.5).delay_s(3) == pytest.approx(0.4)
    b = Backoff(0.1, 1.0)
    delays = [b.delay_s(n) for n in range(50) for _ in range(20)]
    assert all(0.0 <= d <= 1.0 for d in delays)
    assert len(set(delays)) > 900  # random, not a fixed schedule


@pytest.mark.parametrize(("base", "cap"), [(0.0, 1.0), (0.1, 0.0), (-1.0, 1.0)])
def test_backoff_rejects_non_positive_delays(base: float, cap: float) -> None:
    with pytest.raises(ValueError):
        Backoff(base, cap)


async def test_connect_rejects_bad_reconnect_settings() -> None:
    with pytest.raises(wharf.InvalidArgument):
        await wharf.connect("wharf://127.0.0.1:1", reconnect=True, reconnect_max_delay=0)
    with pytest.raises(wharf.InvalidArgument):
        await wharf.connect("wharf://127.0.0.1:1", reconnect_wait_timeout=-1)


# -- reconnect: the recorded topology ----------------------------------------------------


def _binding(queue: str, exchange: str, key: str = "") -> BindingRecord:
    return BindingRecord(queue, exchange, key)


def test_topology_keeps_declaration_order_and_forgets_deletions() -> None:
    t = Topology()
    t.exchange_declared(ExchangeRecord("b", "topic"))
    t.exchange_declared(ExchangeRecord("a", "fanout"))
    t.exchange_declared(ExchangeRecord("b", "topic"))  # a redeclare keeps its place
    t.queue_declared(QueueRecord("q2"))
    t.queue_declared(QueueRecord("q1"))
    t.bound(_binding("q1", "a"))
    t.bound(_binding("q2", "b", "k.#"))
    t.bound(_binding("q1", "a"))  # the same binding twice is one binding
    t.bound(BindingRecord("a", "b", "x", None, to_exchange=True))
    assert list(t.exchanges) == ["b", "a"] and list(t.queues) == ["q2", "q1"]
    assert [(b.destination, b.source) for b in t.bindings] == [("q1", "a"), ("q2", "b"), ("a", "b")]

    t.queue_deleted("q1")  # its bindings go with it
    assert list(t.queues) == ["q2"]
    assert [(b.destination, b.source) for b in t.bindings] == [("q2", "b"), ("a", "b")]
    t.exchange_deleted("a")  # as source and as destination
    assert [(b.destination, b.source) for b in t.bindings] == [("q2", "b")]
    t.unbound(_binding("q2", "b", "k.#"))
    t.unbound(_binding("q2", "b", "other"))  # unknown: nothing happens
    assert t.bindings == [] and len(t) == 2


def test_topology_auto_delete_exchange_goes_with_its_last_binding() -> None:
    t = Topology()
    t.exchange_declared(ExchangeRecord("ad", "direct", auto_delete=True))
    t.exchange_declared(ExchangeRecord("keep", "direct"))
    t.queue_declared(QueueRecord("q"))
    t.bound(_binding("q", "ad", "1"))
    t.bound(_binding("q", "ad", "2"))
    t.bound(_binding("q", "keep"))
    t.unbound(_binding("q", "ad", "1"))
    assert "ad" in t.exchanges
    t.queue_deleted("q")  # removes the last binding from "ad"
    assert list(t.exchanges) == ["keep"]


def test_topology_auto_delete_queue_forgotten_when_unused() -> None:
    t = Topology()
    t.queue_declared(QueueRecord("ad", auto_delete=True))
    t.queue_declared(QueueRecord("plain"))
    t.bound(_binding("ad", "x"))
    t.queue_unused("plain")
    t.queue_unused("ad")
    assert list(t.queues) == ["plain"] and t.bindings == []


def test_topology_rename_keeps_order_and_bindings() -> None:
    t = Topology()
    t.queue_declared(QueueRecord("amq.gen-1", exclusive=True, server_named=True))
    t.queue_declared(QueueRecord("later"))
    t.bound(_binding("amq.gen-1", "x", "k"))
    t.bound(BindingRecord("amq.gen-1", "y", "", None, to_exchange=True))  # an exchange!
    t.queue_renamed("amq.gen-1", "amq.gen-2")
    assert list(t.queues) == ["amq.gen-2", "later"]
    assert t.queues["amq.gen-2"].name == "amq.gen-2"
    assert t.bindings[0] == _binding("amq.gen-2", "x", "k")
    assert t.bindings[1].destination == "amq.gen-1"


# -- reconnect: the whole sequence over fake transports -----------------------------------


class FakeBroker:
    """Hands out fake connections to a reconnecting Connection: each ``dial`` gets a
    new core and peer (handshake done), or the error in ``refuse``."""

    def __init__(self) -> None:
        self.peers: asyncio.Queue[Peer] = asyncio.Queue()
        self.refuse: wharf.WharfError | None = None
        self.dials = 0
        self.dialed = asyncio.Event()

    async def dial(self) -> ConnectionCore:
        self.dials += 1
        self.dialed.set()
        if self.refuse is not None:
            raise self.refuse
        loop = asyncio.get_running_loop()
        core = ConnectionCore(loop)
        transport = FakeTransport(loop)
        transport.protocol = core
        core.connection_made(transport)
        peer = Peer(core, transport)
        task = loop.create_task(core.handshake("guest", "guest", 0, {}))
        peer.send(F.HELLO, 0, 1, "wharf", 1 << 20, 1 << 19, 60, ["PLAIN"])
        await settle()
        (auth,) = peer.frames()
        peer.send(F.AUTH_OK, auth[1], f"conn-{self.dials + 1}", 0, {})
        await task
        self.peers.put_nowait(peer)
        return core

    async def next_peer(self) -> Peer:
        return await asyncio.wait_for(self.peers.get(), 5)


async def open_reconnecting(
    wait_timeout_s: float | None = 5.0,
) -> tuple[Connection, Peer, FakeBroker, list[wharf.ConnectionEvent]]:
    conn, peer = await open_connection()
    broker = FakeBroker()
    conn._enable_reconnect(broker.dial, 1.0, wait_timeout_s)
    assert conn._reconnector is not None
    conn._reconnector.backoff = Backoff(0.1, 1.0, rng=lambda: 0.0)  # no waiting in tests
    events: list[wharf.ConnectionEvent] = []
    conn.on_event(events.append)
    return conn, peer, broker, events


def answer(peer: Peer, frame: list[Any], renames: dict[str, str]) -> None:
    """Answer a request as a broker that accepts everything would."""
    ftype, rid = frame[0], frame[1]
    if ftype == F.QUEUE_DECLARE:
        name = frame[2] or renames.pop("", f"amq.gen-{rid}")
        peer.send(F.OK, rid, {"queue": name, "messages": 0, "consumers": 0})
    elif ftype == F.CONSUME:
        peer.send(F.OK, rid, {"consumer_tag": frame[3]})
    elif ftype not in (F.PUBLISH, F.PUBLISH_MANY, F.ACK, F.ACK_MANY, F.NACK, F.REJECT):
        peer.send(F.OK, rid, None)


async def serve_until_quiet(peer: Peer, renames: dict[str, str] | None = None) -> list[list[Any]]:
    """Answer requests until the client sends nothing more; returns what it sent."""
    seen: list[list[Any]] = []
    while True:
        await settle()
        frames = peer.frames()
        if not frames:
            return seen
        for frame in frames:
            answer(peer, frame, renames if renames is not None else {})
        seen.extend(frames)


async def served(peer: Peer, aw: Any, renames: dict[str, str] | None = None) -> Any:
    task = asyncio.ensure_future(aw)
    await serve_until_quiet(peer, renames)
    return await asyncio.wait_for(task, 5)


async def test_reconnect_replays_topology_in_order_and_resumes_consumers() -> None:
    conn, peer, broker, events = await open_reconnecting()
    await served(peer, conn.declare_exchange("x", "topic", durable=True))
    await served(peer, conn.declare_exchange("gone", "direct"))
    await served(peer, conn.declare_queue("q", durable=True, arguments={"x-max-length": 5}))
    tmp = await served(peer, conn.declare_queue("", exclusive=True), {"": "amq.gen-old"})
    assert tmp.name == "amq.gen-old"
    await served(peer, conn.bind_queue("q", "x", "a.*"))
    await served(peer, conn.bind_queue("amq.gen-old", "x", "#"))
    await served(peer, conn.declare_queue("tmp2"))
    await served(peer, conn.delete_queue("tmp2"))
    await served(peer, conn.delete_exchange("gone"))
    await served(peer, conn.declare_queue("q", passive=True))  # passive: not recorded
    on_q = await served(peer, conn.consume("q", prefetch=7).__aenter__())
    on_tmp = await served(peer, conn.consume("amq.gen-old", no_ack=True).__aenter__())
    old_ack_id = on_q.ack_id
    peer.send(F.DELIVER, 0, on_q.consumer_tag, [entry(1, b"old")])
    old = await on_q.__anext__()
    waiting = asyncio.ensure_future(on_q.__anext__())
    publish = asyncio.ensure_future(conn.publish("x", "a.b", b"in flight"))
    await settle()
    peer.frames()

    peer.send(F.ERROR, 0, 320, "broker shutting down", True, None)
    with pytest.raises(wharf.ConnectionLost) as info:  # not ConnectionForced: one error
        await publish
    assert info.value.retriable and info.value.details["cause_code"] == 320
    assert [e.name for e in events] == ["disconnected"]
    assert isinstance(events[0].error, wharf.ConnectionLost)
    assert not conn.is_connected and not conn.is_closed and conn.reconnecting
    await old.ack()  # a delivery of the lost connection: a no-op, no error
    await old.nack()
    assert not waiting.done()  # the iterator waits across the outage

    peer2 = await broker.next_peer()
    sent = await serve_until_quiet(peer2, {"": "amq.gen-new"})
    assert [f[0] for f in sent] == [
        F.EXCHANGE_DECLARE, F.QUEUE_DECLARE, F.QUEUE_DECLARE,
        F.QUEUE_BIND, F.QUEUE_BIND, F.CONSUME, F.CONSUME,
    ]  # fmt: skip
    assert sent[0][2:] == ["x", "topic", True, False, False, False, None]
    assert sent[1][2:] == ["q", True, False, False, False, {"x-max-length": 5}]
    assert sent[2][2:] == ["", False, True, False, False, None]
    assert sent[3][2:] == ["q", "x", "a.*", None]
    assert sent[4][2:] == ["amq.gen-new", "x", "#", None]
    assert sent[5][2:] == ["q", on_q.consumer_tag, 7, False, False, None]
    assert sent[6][2:] == ["amq.gen-new", on_tmp.consumer_tag, 100, True, False, None]
    await settle()
    assert [e.name for e in events] == ["disconnected", "queue_renamed", "reconnected"]
    assert (events[1].old_name, events[1].new_name) == ("amq.gen-old", "amq.gen-new")
    assert on_tmp.queue == "amq.gen-new" and conn.is_connected
    assert conn.connection_id == "conn-2"

    peer2.send(F.DELIVER, 0, on_q.consumer_tag, [entry(1, b"new")])
    msg = await asyncio.wait_for(waiting, 5)
    assert msg.body == b"new"
    await msg.ack()
    await settle()
    assert on_q.ack_id != old_ack_id
    assert peer2.frames() == [[F.ACK_MANY, on_q.ack_id, [1]]]
    assert peer.frames() == []  # nothing went to the dead connection


async def test_requests_during_an_outage_wait_then_run_on_the_new_connection() -> None:
    conn, peer, broker, events = await open_reconnecting(wait_timeout_s=5)
    broker.refuse = wharf.ConnectionLost("refused")
    peer.transport.close()
    await settle()
    assert events[0].name == "disconnected"
    declare = asyncio.ensure_future(conn.declare_queue("later"))
    async with asyncio.timeout(5):
        while broker.dials < 3:  # dials keep failing (retriable) meanwhile
            broker.dialed.clear()
            await broker.dialed.wait()
    assert not declare.done()
    broker.refuse = None
    peer2 = await broker.next_peer()
    await serve_until_quiet(peer2)
    assert (await asyncio.wait_for(declare, 5)).name == "later"
    assert [e.name for e in events] == ["disconnected", "reconnected"]
    assert events[1].attempt == broker.dials
    # Lost again before the new connection proved stable: the backoff keeps growing.
    reconnector = conn._reconnector
    assert reconnector is not None and reconnector._attempt == broker.dials
    peer2.transport.close()
    await serve_until_quiet(await broker.next_peer())
    assert reconnector._attempt == broker.dials and events[-1].attempt == 1


async def test_fail_fast_during_an_outage_and_close_stops_reconnecting() -> None:
    conn, peer, broker, events = await open_reconnecting(wait_timeout_s=0)
    consumer = await served(peer, conn.consume("q").__aenter__())
    broker.refuse = wharf.ConnectionLost("refused")
    peer.transport.close()
    await settle()
    with pytest.raises(wharf.ConnectionLost) as info:
        await conn.publish("", "q", b"x")
    assert info.value.retriable and info.value.details["reconnecting"]
    iterating = asyncio.ensure_future(consumer.__anext__())
    await conn.close()
    assert conn.is_closed and not conn.reconnecting
    with pytest.raises(wharf.ConnectionLost):
        await iterating
    with pytest.raises(wharf.ConnectionLost):
        await conn.declare_queue("q")
    assert [e.name for e in events] == ["disconnected", "closed"]
    dials = broker.dials
    await settle()
    assert broker.dials == dials


async def test_refused_reconnect_closes_for_good() -> None:
    conn, peer, broker, events = await open_reconnecting()
    consumer = await served(peer, conn.consume("q").__aenter__())
    broker.refuse = wharf.AccessRefused("user 'guest' was deleted")
    peer.transport.close()
    with pytest.raises(wharf.AccessRefused):
        await asyncio.wait_for(consumer.__anext__(), 5)
    assert [e.name for e in events] == ["disconnected", "closed"]
    assert isinstance(events[1].error, wharf.AccessRefused)
    assert conn.is_closed
    with pytest.raises(wharf.AccessRefused):
        await conn.publish("", "q", b"x")
    await conn.close()
    assert [e.name for e in events] == ["disconnected", "closed"]  # "closed" fires once


async def test_retriable_recovery_error_retries_and_other_errors_skip_one_item() -> None:
    conn, peer, broker, events = await open_reconnecting()
    await served(peer, conn.declare_queue("excl", exclusive=True))
    await served(peer, conn.bind_queue("excl", "gone-exchange"))
    consumer = await served(peer, conn.consume("someone-elses").__aenter__())
    peer.transport.close()

    peer2 = await broker.next_peer()  # the lost connection still holds "excl": 405
    await settle()
    (declare,) = peer2.frames()
    peer2.send(F.ERROR, declare[1], 405, "queue 'excl' is exclusive to another", False, None)
    peer3 = await broker.next_peer()  # so the attempt was abandoned and retried
    assert peer2.transport.closing
    await settle()
    (declare,) = peer3.frames()
    answer(peer3, declare, {})
    await settle()
    (bind,) = peer3.frames()
    peer3.send(F.ERROR, bind[1], 404, "no exchange 'gone-exchange'", False, None)
    await settle()
    (consume,) = peer3.frames()
    peer3.send(F.ERROR, consume[1], 404, "no queue 'someone-elses'", False, None)
    await settle()
    assert conn.is_connected
    names = [e.name for e in events]
    assert names == ["disconnected", "recovery_error", "recovery_error", "reconnected"]
    assert isinstance(events[1].error, wharf.NotFound) and "binding" in (events[1].old_name or "")
    with pytest.raises(wharf.NotFound):  # that consumer could not be resumed: it ended
        await consumer.__anext__()


async def test_events_without_reconnect_and_blocked_events() -> None:
    conn, peer = await open_connection()
    events: list[wharf.ConnectionEvent] = []
    reasons: list[str | None] = []
    conn.on_event(events.append)
    conn.on_blocked(reasons.append)
    peer.send(F.BLOCKED, 0, "memory")
    peer.send(F.UNBLOCKED, 0)
    assert reasons == ["memory", None]
    peer.send(F.ERROR, 0, 320, "broker shutting down", True, None)
    assert [(e.name, e.reason) for e in events] == [
        ("blocked", "memory"), ("unblocked", None), ("disconnected", None), ("closed", None),
    ]  # fmt: skip
    assert isinstance(events[2].error, wharf.ConnectionForced)  # unchanged without reconnect


async def test_throttled_frames_become_callbacks_events_and_totals() -> None:
    conn, peer = await open_connection()
    events: list[wharf.ConnectionEvent] = []
    calls: list[tuple[str, int]] = []
    conn.on_event(events.append)
    conn.on_throttled(lambda direction, ms: calls.append((direction, ms)))
    peer.send(F.THROTTLED, 0, "produce", 120)
    peer.send(F.THROTTLED, 0, "consume", 30)
    peer.send(F.THROTTLED, 0, "produce", 5)
    assert calls == [("produce", 120), ("consume", 30), ("produce", 5)]
    assert [(e.name, e.direction, e.throttle_ms) for e in events] == [
        ("throttled", "produce", 120), ("throttled", "consume", 30), ("throttled", "produce", 5),
    ]  # fmt: skip
    assert conn.throttled_ms == {"produce": 125, "consume": 30}


async def test_async_event_callbacks_run_as_tasks() -> None:
    conn, peer = await open_connection()
    seen = asyncio.Event()

    async def callback(event: wharf.ConnectionEvent) -> None:
        seen.set()

    conn.on_event(callback)
    peer.send(F.BLOCKED, 0, "disk")
    await asyncio.wait_for(seen.wait(), 5)


async def test_server_named_shared_queue_keeps_its_name_while_it_exists() -> None:
    conn, peer, broker, events = await open_reconnecting()
    kept = await served(peer, conn.declare_queue("", durable=True), {"": "amq.gen-a"})
    lost = await served(peer, conn.declare_queue(""), {"": "amq.gen-b"})
    assert (kept.name, lost.name) == ("amq.gen-a", "amq.gen-b")
    peer.transport.close()

    peer2 = await broker.next_peer()
    await settle()
    first, second = peer2.frames()
    assert first[2:] == ["amq.gen-a", True, False, False, True, None]  # passive
    assert second[2:] == ["amq.gen-b", False, False, False, True, None]
    answer(peer2, first, {})
    peer2.send(F.ERROR, second[1], 404, "no queue 'amq.gen-b'", False, None)
    sent = await serve_until_quiet(peer2, {"": "amq.gen-c"})
    assert [f[2:] for f in sent] == [["", False, False, False, False, None]]
    await settle()
    assert [(e.name, e.old_name, e.new_name) for e in events] == [
        ("disconnected", None, None),
        ("queue_renamed", "amq.gen-b", "amq.gen-c"),
        ("reconnected", None, None),
    ]


# -- the port probe: an HTTP server answers at once ------------------------------------


def test_client_sends_a_port_probe_after_the_handshake() -> None:
    loop = asyncio.new_event_loop()
    try:
        core = ConnectionCore(loop)
        transport = FakeTransport(loop)
        transport.protocol = core
        core.connection_made(transport)
        (sent,) = transport.writes
        assert sent.startswith(F.HANDSHAKE)
        # The probe is a HEARTBEAT (ignored by a broker, before AUTH too) whose bytes end
        # an HTTP request head, so that an HTTP server answers without waiting.
        assert sent.endswith(b"\r\n\r\n")
        assert FrameDecoder(expect_handshake=True, use_list=True).feed(sent) == [PORT_PROBE]
    finally:
        loop.close()


@pytest.mark.parametrize("chunk", [1, 3, 100])
async def test_http_answer_fails_the_handshake_whatever_the_split(chunk: int) -> None:
    loop = asyncio.get_running_loop()
    core = ConnectionCore(loop)
    transport = FakeTransport(loop)
    transport.protocol = core
    core.connection_made(transport)
    handshake = loop.create_task(core.handshake("guest", "guest", 0, {}))
    answer = b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    for i in range(0, len(answer), chunk):
        core.data_received(answer[i : i + chunk])
    with pytest.raises(wharf.ProtocolMismatch, match="this port speaks HTTP; the Wharf port"):
        await handshake


async def test_a_wharf_hello_split_into_single_bytes_is_not_mistaken_for_http() -> None:
    loop = asyncio.get_running_loop()
    core = ConnectionCore(loop)
    transport = FakeTransport(loop)
    transport.protocol = core
    core.connection_made(transport)
    peer = Peer(core, transport)
    task = loop.create_task(core.handshake("guest", "guest", 0, {}))
    hello = encode_array((F.HELLO, 0, 1, "wharf", 1 << 20, 1 << 19, 60, ["PLAIN"]))
    for i in range(len(hello)):
        core.data_received(hello[i : i + 1])
    await settle()
    (auth,) = peer.frames()
    assert auth[0] == F.AUTH
    peer.send(F.AUTH_OK, auth[1], "conn-1", 0, {})
    await task
    assert core.connection_id == "conn-1"


# -- the connection state machine (client/state.py) as the core drives it -------------


async def test_core_states_from_connect_to_close() -> None:
    loop = asyncio.get_running_loop()
    core = ConnectionCore(loop)
    assert core.state is State.CONNECTING
    transport = FakeTransport(loop)
    transport.protocol = core
    core.connection_made(transport)
    assert core.state is State.HANDSHAKING
    peer = Peer(core, transport)
    task = loop.create_task(core.handshake("guest", "guest", 0, {}))
    peer.send(F.HELLO, 0, 1, "wharf", 1 << 20, 1 << 19, 60, ["PLAIN"])
    assert core.state is State.AUTHENTICATING
    await settle()
    (auth,) = peer.frames()
    peer.send(F.AUTH_OK, auth[1], "conn-1", 0, None)
    await task
    assert core.state is State.OPEN and not core.ended
    closing = asyncio.ensure_future(core.close(5.0))
    await settle()
    assert core.state is State.CLOSING
    (close,) = peer.frames()
    peer.send(F.CLOSE_OK, close[1])
    await closing
    assert core.state is State.CLOSED and core.ended
    assert isinstance(core.closed_error, wharf.ConnectionLost)


async def test_core_failed_by_the_broker_close() -> None:
    conn, peer = await open_connection()
    peer.send(F.CLOSE, 9, 320, "maintenance")
    assert conn._core.state is State.FAILED
    assert isinstance(conn._core.closed_error, wharf.ConnectionForced)


async def test_close_while_the_broker_closes_too_ends_closed() -> None:
    conn, peer = await open_connection()
    closing = asyncio.ensure_future(conn.close())
    await settle()
    peer.send(F.CLOSE, 9, 320, "maintenance")
    await closing
    assert conn._core.state is State.CLOSED and conn.is_closed


async def test_a_second_hello_fails_the_connection() -> None:
    # A broker speaking out of turn is a protocol error, not something to ignore.
    conn, peer = await open_connection()
    peer.send(F.HELLO, 0, 1, "wharf", 1 << 20, 1 << 19, 60, ["PLAIN"])
    assert conn._core.state is State.FAILED and conn.is_closed
    with pytest.raises(wharf.FrameError, match="hello is not expected in state open"):
        await conn.declare_queue("q")


async def test_confirm_with_duplicates_resolves_to_their_indexes() -> None:
    t = ConfirmTracker()
    a, b = _future(), _future()
    t.add(1, a)
    t.add(3, b)
    t.duplicates([1, 3, 4, 99, "junk"])  # unknown seqs and bad entries are ignored
    t.confirm(4)
    assert a.result().duplicate and a.result().duplicates == (0,)
    assert b.result().duplicates == (1, 2)
    c = _future()
    t.add(1, c)
    t.confirm(5)
    assert not c.result().duplicate
