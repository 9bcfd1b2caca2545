"""Hostile clients cannot stall the broker or pin its memory (issue 11, section 6).

- Before AUTH_OK a frame may be at most PREAUTH_MAX_FRAME_BYTES: a bigger one is refused
  (fatal 508) from its length prefix alone, before anything is buffered or decoded.
- After login, an object bomb is refused (fatal 501) by the decoding limits.
- Unauthenticated connections are capped in total and per address (506) and do not count
  against max_connections.
- Partly received frames across connections share receive_buffer_budget_bytes: readers
  beyond it are paused, and resumed when the frames complete.

Each test runs a canary SDK connection that publishes and gets during the attack; it must
see no error.  (How long the loop stalls is measured by benchmarks/hostile.py, not here.)
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import struct
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import msgpack
import pytest

import wharf
from wharf.broker.server import Broker
from wharf.protocol import frames as F
from wharf.protocol.codec import PREAUTH_MAX_FRAME_BYTES, encode_array

from ..helpers import wait_until

Connect = Callable[..., Any]
RawFactory = Callable[..., Any]

TIMEOUT_S = 10.0
MIB = 1024 * 1024
BOMB_BYTES = 32 * MIB
UNFINISHED_FRAME_BYTES = 31 * MIB
SENT_OF_UNFINISHED_BYTES = 2 * MIB


def _bomb_frame() -> bytes:
    """One 32 MiB frame: an array of 32 million empty maps (0x80), as in the report."""
    count = BOMB_BYTES - 5
    payload = b"\xdd" + struct.pack(">I", count) + b"\x80" * count
    return struct.pack(">I", len(payload)) + payload


class Canary:
    """Publishes and gets on its own connection until stopped; records every error."""

    def __init__(self, conn: wharf.Connection) -> None:
        self.conn = conn
        self.errors: list[BaseException] = []
        self.rounds = 0
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self.queue = f"canary-{uuid.uuid4().hex[:8]}"
        await self.conn.declare_queue(self.queue)
        self._task = asyncio.ensure_future(self._run())

    async def _run(self) -> None:
        while not self._stop.is_set():
            try:
                await self.conn.publish("", self.queue, b"tweet")
                msg = await self.conn.get(self.queue, no_ack=True)
                if msg is None or msg.body != b"tweet":
                    raise AssertionError(f"canary got {msg!r}")
                self.rounds += 1
            except Exception as exc:
                self.errors.append(exc)
                return
            await asyncio.sleep(0)

    async def stop(self) -> None:
        # At least a few rounds after the attack, so a stalled broker is noticed.
        start = self.rounds
        await wait_until(
            timeout=TIMEOUT_S, check=lambda: self.rounds >= start + 3 or bool(self.errors)
        )
        self._stop.set()
        assert self._task is not None
        await asyncio.wait_for(self._task, TIMEOUT_S)
        assert self.errors == []


@pytest.fixture
async def canary(conn: wharf.Connection) -> AsyncIterator[Canary]:
    c = Canary(conn)
    await c.start()
    yield c


async def _open_raw(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(F.HANDSHAKE)
    return reader, writer


async def _send_ignoring_reset(writer: asyncio.StreamWriter, data: bytes) -> None:
    writer.write(data)
    with contextlib.suppress(ConnectionError):
        await writer.drain()


async def _fatal_error(rc: Any) -> list[Any]:
    frames = [f for f in await rc.recv_until_closed(TIMEOUT_S) if f[0] != F.HEARTBEAT]
    errors = [f for f in frames if f[0] == F.ERROR]
    assert len(errors) == 1 and errors[0][4] is True, frames
    return list(errors[0])


# -- pre-auth frame limit ------------------------------------------------------------------


async def test_object_bomb_before_auth_is_refused_from_its_length(
    broker: Broker, raw_client: RawFactory, canary: Canary
) -> None:
    rc = await raw_client(auth=False)
    rc.send_bytes(_bomb_frame())
    error = await _fatal_error(rc)
    assert error[2] == 508
    assert error[5]["limit"] == "preauth_max_frame_bytes"
    assert error[5]["max_frame_bytes"] == PREAUTH_MAX_FRAME_BYTES
    await canary.stop()
    await wait_until(
        timeout=TIMEOUT_S, check=lambda: broker.buffered_bytes == 0 and broker.unauthenticated == 0
    )


async def test_auth_frame_at_the_preauth_limit_is_accepted(raw_client: RawFactory) -> None:
    rc = await raw_client(auth=False)
    head = encode_array((F.AUTH, 1, "PLAIN", "guest", "guest", 0, {"pad": ""}))
    pad = PREAUTH_MAX_FRAME_BYTES - (len(head) - 4)
    rc.send(F.Auth(1, "PLAIN", "guest", "guest", 0, {"pad": "p" * (pad - 2)}))
    ok = await rc.recv(TIMEOUT_S)
    assert ok[0] == F.AUTH_OK, ok


async def test_oversize_frame_before_auth_gets_508(raw_client: RawFactory) -> None:
    rc = await raw_client(auth=False)
    rc.send(F.Auth(1, "PLAIN", "guest", "guest", 0, {"pad": "p" * PREAUTH_MAX_FRAME_BYTES}))
    error = await _fatal_error(rc)
    assert error[2] == 508 and error[5]["limit"] == "preauth_max_frame_bytes"


async def test_sdk_refuses_client_properties_over_the_preauth_limit(url: str) -> None:
    with pytest.raises(wharf.InvalidArgument):
        await wharf.connect(url, client_properties={"pad": "p" * PREAUTH_MAX_FRAME_BYTES})


# -- decoding limits after login -------------------------------------------------------------


async def test_object_bomb_after_login_is_refused_before_it_is_decoded(
    broker: Broker, raw_client: RawFactory, canary: Canary
) -> None:
    rc = await raw_client()
    rc.send_bytes(_bomb_frame())
    error = await _fatal_error(rc)
    assert error[2] == 501
    await canary.stop()
    await wait_until(timeout=TIMEOUT_S, check=lambda: broker.buffered_bytes == 0)


async def test_nested_bomb_in_publish_headers_is_refused(
    raw_client: RawFactory, canary: Canary
) -> None:
    rc = await raw_client()
    headers = {"x": [[{}] * 1000] * 2000}
    rc.send_array((F.PUBLISH, 0, "", canary.queue, {"headers": headers}, b"boom", 0))
    error = await _fatal_error(rc)
    assert error[2] == 501
    await canary.stop()


# -- unauthenticated connection caps ---------------------------------------------------------


@pytest.mark.parametrize(
    "settings_overrides",
    [{"max_unauthenticated_per_address": 3, "max_unauthenticated_connections": 100}],
)
async def test_unauthenticated_connections_per_address_are_capped(
    broker: Broker, raw_client: RawFactory, connect: Connect
) -> None:
    waiting = [await raw_client(auth=False) for _ in range(3)]
    assert broker.unauthenticated == 3
    refused = await raw_client(handshake=False)
    refused.send_bytes(F.HANDSHAKE)
    error = await _fatal_error(refused)
    assert error[2] == 506 and error[5]["limit"] == "max_unauthenticated_per_address"
    # One logs in: its slot frees up for the next newcomer.
    waiting[0].send(F.Auth(1, "PLAIN", "guest", "guest", 0, {}))
    assert (await waiting[0].recv(TIMEOUT_S))[0] == F.AUTH_OK
    await wait_until(timeout=TIMEOUT_S, check=lambda: broker.unauthenticated == 2)
    c = await connect()
    await c.declare_queue(f"q-{uuid.uuid4().hex[:8]}")


@pytest.mark.parametrize(
    "settings_overrides",
    [{"max_unauthenticated_connections": 4, "max_unauthenticated_per_address": 100}],
)
async def test_unauthenticated_connections_in_total_are_capped(
    broker: Broker, raw_client: RawFactory, conn: wharf.Connection
) -> None:
    for _ in range(4):
        await raw_client(auth=False)
    refused = await raw_client(handshake=False)
    refused.send_bytes(F.HANDSHAKE)
    error = await _fatal_error(refused)
    assert error[2] == 506 and error[5]["limit"] == "max_unauthenticated_connections"
    # The logged-in connection is not affected.
    await conn.declare_queue(f"q-{uuid.uuid4().hex[:8]}")


@pytest.mark.parametrize("settings_overrides", [{"max_connections": 2}])
async def test_unauthenticated_sockets_do_not_lock_out_clients(
    broker: Broker, raw_client: RawFactory, connect: Connect
) -> None:
    for _ in range(10):
        await raw_client(auth=False)
    first = await connect()
    second = await connect()
    q = f"q-{uuid.uuid4().hex[:8]}"
    await first.declare_queue(q)
    await second.publish("", q, b"in")
    assert (await first.get(q, no_ack=True)) is not None
    # The limit itself still holds for clients that log in.
    with pytest.raises(wharf.ResourceError):
        await connect()


@pytest.mark.parametrize(
    "settings_overrides",
    [{"max_unauthenticated_per_address": 1000, "max_unauthenticated_connections": 1000}],
)
async def test_sixty_unauthenticated_senders_of_unfinished_frames_are_refused(
    broker: Broker, canary: Canary
) -> None:
    head = struct.pack(">I", UNFINISHED_FRAME_BYTES) + b"\xc4" * SENT_OF_UNFINISHED_BYTES
    writers = []
    readers = []
    for _ in range(60):
        reader, writer = await _open_raw(broker.port)
        writers.append(writer)
        readers.append(reader)
    await asyncio.gather(*(_send_ignoring_reset(w, head) for w in writers))
    # Every one is closed by the broker (EOF on its side), none holds a buffer.
    for reader in readers:
        with contextlib.suppress(ConnectionError):
            async with asyncio.timeout(TIMEOUT_S):
                while await reader.read(65536):
                    pass
    await wait_until(
        timeout=TIMEOUT_S, check=lambda: broker.unauthenticated == 0 and broker.buffered_bytes == 0
    )
    await canary.stop()
    for w in writers:
        w.close()


# -- receive budget ------------------------------------------------------------------------


@pytest.mark.parametrize("settings_overrides", [{"receive_buffer_budget_bytes": 1 * MIB}])
async def test_readers_pause_beyond_the_receive_budget_and_resume(
    broker: Broker, raw_client: RawFactory, canary: Canary
) -> None:
    q = f"big-{uuid.uuid4().hex[:8]}"
    await canary.conn.declare_queue(q)
    frame = encode_array((F.PUBLISH, 0, "", q, None, b"b" * (2 * MIB), 0))
    senders = [await raw_client() for _ in range(6)]
    for rc in senders:
        rc.send_bytes(frame[: 700 * 1024])
    # The budget holds: only one connection may be past it by the rest of its frame.
    await wait_until(timeout=TIMEOUT_S, check=lambda: broker.budget_pauses > 0)
    assert broker.buffered_bytes <= 1 * MIB + 2 * MIB
    paused = [c for c in broker.connections.values() if c.budget_paused]
    assert paused
    # Everyone finishes their frame: every frame is read and handled.
    for rc in senders:
        rc.send_bytes(frame[700 * 1024 :])
    await wait_until(
        timeout=TIMEOUT_S,
        check=lambda: (
            broker.buffered_bytes == 0
            and not any(c.budget_paused for c in broker.connections.values())
        ),
    )
    await wait_until(timeout=TIMEOUT_S, check=lambda: broker.queues[q].ready_count >= 6)
    await canary.stop()


# -- nesting bombs and huge length prefixes inside a frame (issue 13, part 7) ----------------
#
# Every map field a client sends (client properties, message properties and headers,
# arguments, policy definitions, topic configs): deeper than msgpack's own 1,024 levels,
# or with a length prefix the frame cannot hold, the frame is not decoded (fatal 501);
# decodable but deeper than MAX_NESTING_DEPTH, the request is refused (502) before it
# changes anything, and the connection goes on (before AUTH_OK: fatal).

DEEP_LEVELS = 1_000  # msgpack decodes it; neither JSON nor a peer's decoder would take more
BEYOND_MSGPACK_LEVELS = 2_000


def _nested(levels: int) -> Any:
    value: Any = None
    for _ in range(levels):
        value = [value]
    return value


def _raw_frame(before: tuple[Any, ...], raw: bytes, after: tuple[Any, ...] = ()) -> bytes:
    """A frame: the fields ``before``, one field given as raw msgpack bytes, ``after``."""
    fields = [msgpack.packb(f, use_bin_type=True) for f in before]
    fields += [raw] + [msgpack.packb(f, use_bin_type=True) for f in after]
    payload = bytes([0x90 | len(fields)]) + b"".join(fields)
    return struct.pack(">I", len(payload)) + payload


# Raw map fields no decoder can build: {"x": 2,000 nested arrays}, a map announcing 2**32-1
# entries, {"x": a str, bin or array announcing 4 GiB}, in a frame of a few bytes.
_UNDECODABLE_MAPS = [
    pytest.param(b"\x81\xa1x" + b"\x91" * BEYOND_MSGPACK_LEVELS + b"\xc0", id="nesting-bomb"),
    pytest.param(b"\xdf\xff\xff\xff\xff", id="huge-map-length"),
    pytest.param(b"\x81\xa1x\xdb\xff\xff\xff\xff", id="huge-str-length"),
    pytest.param(b"\x81\xa1x\xc6\xff\xff\xff\xff", id="huge-bin-length"),
    pytest.param(b"\x81\xa1x\xdd\xff\xff\xff\xff", id="huge-array-length"),
]


@pytest.mark.parametrize("raw_map", _UNDECODABLE_MAPS)
async def test_undecodable_client_properties_before_auth_are_fatal_501(
    broker: Broker, raw_client: RawFactory, canary: Canary, raw_map: bytes
) -> None:
    rc = await raw_client(auth=False)
    rc.send_bytes(_raw_frame((F.AUTH, 1, "PLAIN", "guest", "guest", 0), raw_map))
    error = await _fatal_error(rc)
    assert error[2] == 501, error
    await canary.stop()
    await wait_until(timeout=TIMEOUT_S, check=lambda: broker.unauthenticated == 0)


async def test_deep_client_properties_before_auth_are_fatal_502(
    raw_client: RawFactory, canary: Canary
) -> None:
    rc = await raw_client(auth=False)
    rc.send(F.Auth(1, "PLAIN", "guest", "guest", 0, {"x": _nested(DEEP_LEVELS)}))
    error = await _fatal_error(rc)
    assert error[2] == 502 and f"deeper than {F.MAX_NESTING_DEPTH} levels" in error[3], error
    assert error[5]["max_depth"] == F.MAX_NESTING_DEPTH
    await canary.stop()


# (name, the frame's fields before its map field, after it): request id 5 (a publish: 0).
_MAP_FIELDS = [
    pytest.param((F.PUBLISH, 0, "", "nowhere"), (b"b", 0), id="publish-headers"),
    pytest.param((F.QUEUE_DECLARE, 5, "deep-q", True, False, False, False), (), id="queue-args"),
    pytest.param(
        (F.EXCHANGE_DECLARE, 5, "deep-x", "topic", True, False, False, False),
        (),
        id="exchange-args",
    ),
    pytest.param((F.POLICY_SET, 5, "deep-p", "^deep"), (0, "queues"), id="policy-definition"),
    pytest.param((F.TOPIC_CREATE, 5, "deep-t", 1), (), id="topic-config"),
]


@pytest.mark.parametrize(("before", "after"), _MAP_FIELDS)
async def test_a_deep_map_field_is_refused_and_the_connection_goes_on(
    raw_client: RawFactory,
    canary: Canary,
    frame_client: Callable[[], Any],
    before: tuple[Any, ...],
    after: tuple[Any, ...],
) -> None:
    rc = await raw_client()
    deep: dict[str, Any] = {"x": _nested(DEEP_LEVELS)}
    if before[0] == F.PUBLISH:
        deep = {"headers": deep}
    rc.send_array((*before, deep, *after))
    while (error := await rc.recv(TIMEOUT_S))[0] == F.HEARTBEAT:
        pass
    assert error[0] == F.ERROR and error[1] == before[1], error
    assert error[2] == 502 and error[4] is False, error
    assert f"deeper than {F.MAX_NESTING_DEPTH} levels" in error[3], error
    # Nothing was created, and the same connection is served.
    rc.send(F.QueueDeclare(6, "deep-q", passive=True))
    missing = await rc.recv(TIMEOUT_S)
    assert missing[:3] == [F.ERROR, 6, 404], missing
    rc.send(F.QueueDeclare(8, f"after-{uuid.uuid4().hex[:8]}"))
    while (ok := await rc.recv(TIMEOUT_S))[0] != F.OK or ok[1] != 8:
        assert ok[0] != F.ERROR or ok[1] != 8, ok
    # As deep as allowed is accepted.
    fc = await frame_client()
    allowed: Any = None
    for _ in range(F.MAX_NESTING_DEPTH - 1):
        allowed = [allowed]
    await fc.request(F.QUEUE_DECLARE, "deep-enough", False, False, False, False, {"x": allowed})
    await canary.stop()


@pytest.mark.parametrize(("before", "after"), _MAP_FIELDS)
async def test_a_nesting_bomb_in_a_map_field_after_login_is_fatal_501(
    raw_client: RawFactory, canary: Canary, before: tuple[Any, ...], after: tuple[Any, ...]
) -> None:
    rc = await raw_client()
    bomb = b"\x81\xa1x" + b"\x91" * BEYOND_MSGPACK_LEVELS + b"\xc0"
    if before[0] == F.PUBLISH:
        bomb = b"\x81\xa7headers" + bomb
    rc.send_bytes(_raw_frame(before, bomb, after))
    error = await _fatal_error(rc)
    assert error[2] == 501, error
    await canary.stop()


@pytest.mark.parametrize("raw_map", _UNDECODABLE_MAPS)
async def test_undecodable_arguments_after_login_are_fatal_501(
    raw_client: RawFactory, canary: Canary, raw_map: bytes
) -> None:
    rc = await raw_client()
    rc.send_bytes(_raw_frame((F.QUEUE_DECLARE, 5, "bad-q", True, False, False, False), raw_map))
    error = await _fatal_error(rc)
    assert error[2] == 501, error
    await canary.stop()


# -- deep JSON on the management API ---------------------------------------------------------

_GUEST = "Basic " + base64.b64encode(b"guest:guest").decode()
# (method, path, the body with {} where the deep value goes)
_API_BODIES = [
    pytest.param("PUT", "/api/queues/%2F/deep-q", '{"arguments": {"x": %s}}', id="queue-args"),
    pytest.param(
        "POST",
        "/api/exchanges/%2F/amq.default/publish",
        '{"routing_key": "nowhere", "payload": "p", "properties": {"headers": {"x": %s}}}',
        id="publish-headers",
    ),
    pytest.param(
        "PUT",
        "/api/policies/%2F/deep-p",
        '{"pattern": "^deep", "definition": {"x": %s}}',
        id="policy",
    ),
    pytest.param("PUT", "/api/topics/%2F/deep-t", '{"config": {"x": %s}}', id="topic-config"),
]


async def _api(port: int, method: str, path: str, body: bytes) -> tuple[int, Any]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(
            f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: {_GUEST}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
            "Connection: close\r\n\r\n".encode()
            + body
        )
        async with asyncio.timeout(TIMEOUT_S):
            data = await reader.read()
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
    head, _, payload = data.partition(b"\r\n\r\n")
    return int(head.split(b" ")[1]), json.loads(payload)


@pytest.mark.parametrize(("method", "path", "template"), _API_BODIES)
@pytest.mark.parametrize(
    "levels",
    [
        pytest.param(F.MAX_NESTING_DEPTH + 1, id="over-the-limit"),
        pytest.param(100_000, id="deeper-than-the-json-parser"),
    ],
)
async def test_deep_json_bodies_are_refused_400(
    broker: Broker, canary: Canary, method: str, path: str, template: str, levels: int
) -> None:
    body = (template % ("[" * levels + "]" * levels)).encode()
    status, answer = await _api(broker.http_port, method, path, body)
    assert status == 400 and answer["code"] == 400, answer
    status, _ = await _api(broker.http_port, "GET", path.removesuffix("/publish"), b"")
    assert status == (200 if path.endswith("/publish") else 404)  # nothing was created
    await canary.stop()
