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
import contextlib
import struct
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

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
