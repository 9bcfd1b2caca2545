"""A handshake flood (issue 13, part 7): a few hundred sockets opened at once that send
nothing or half a handshake, on the native plain and TLS ports.

- The caps on connections that have not logged in hold, per peer address and in total:
  ``max_unauthenticated_per_address`` / ``max_unauthenticated_connections`` for the plain
  port (a refused socket gets a fatal 506 instead of HELLO), and the same numbers for TLS
  handshakes in progress on the TLS port (a refused socket is closed at once).
- The broker stays responsive: a normal SDK client connects and round-trips a message
  during the flood (from another address; or, when the flood fills the total, on a
  connection it had opened before).
- Every flooding socket is eventually closed (``handshake_timeout_ms``), and the counts
  of /metrics go back to zero.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import uuid
from pathlib import Path
from typing import Any

import pytest
import trustme

import wharf
from wharf.broker.server import Broker
from wharf.protocol import frames as F
from wharf.protocol.codec import FrameDecoder

from ..helpers import metric, scrape_metrics, wait_until

PER_ADDRESS = 40
TOTAL = 100
FLOOD = 200  # sockets per flood
# Long enough that the flood is still held while the test looks at it, short enough
# for the test to wait for the end of it.  On a loaded machine opening the floods took
# over 3 s: admitted sockets timed out and their slots went to later ones (106 HELLOs
# for a cap of 100), so the cap could not be seen.
HANDSHAKE_TIMEOUT_MS = 10_000
# Waits for the broker to close the flood: the handshake timeout, the tick, and slack.
TIMEOUT_S = 30.0

Socket = tuple[asyncio.StreamReader, asyncio.StreamWriter]


@pytest.fixture
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
def settings_overrides(tmp_path: Path, ca: trustme.CA) -> dict[str, Any]:
    leaf = ca.issue_cert("127.0.0.1", "localhost")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    leaf.private_key_pem.write_to_path(str(key))
    cert.write_bytes(b"".join(blob.bytes() for blob in leaf.cert_chain_pems))
    return {
        "tls_port": 0,
        "https_port": 0,
        "tls_cert_file": str(cert),
        "tls_key_file": str(key),
        "handshake_timeout_ms": HANDSHAKE_TIMEOUT_MS,
        "max_unauthenticated_per_address": PER_ADDRESS,
        "max_unauthenticated_connections": TOTAL,
    }


@pytest.fixture
def context(ca: trustme.CA) -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    ca.configure_trust(ctx)
    return ctx


def half_client_hello(context: ssl.SSLContext) -> bytes:
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = context.wrap_bio(incoming, outgoing, server_hostname="127.0.0.1")
    with contextlib.suppress(ssl.SSLWantReadError):
        tls.do_handshake()
    hello = outgoing.read()
    return hello[: len(hello) // 2]


async def flood(port: int, sources: list[str], half: bytes) -> list[Socket]:
    """FLOOD sockets opened at once, spread over ``sources``; every second one sends
    ``half`` (half a handshake), the others nothing."""
    opened = await asyncio.gather(
        *(
            asyncio.open_connection("127.0.0.1", port, local_addr=(sources[i % len(sources)], 0))
            for i in range(FLOOD)
        )
    )
    for i, (_, writer) in enumerate(opened):
        if i % 2:
            writer.write(half)
    return list(opened)


async def first_frame(reader: asyncio.StreamReader) -> Any:
    """The first frame the broker sent on a plain socket, None if it closed first (a
    socket closed with unread input may be reset before the 506 is read)."""
    decoder = FrameDecoder()
    with contextlib.suppress(ConnectionError):
        async with asyncio.timeout(TIMEOUT_S):
            while data := await reader.read(65536):
                frames = decoder.feed(data)
                if frames:
                    return frames[0]
    return None


async def closed_by_broker(reader: asyncio.StreamReader) -> bool:
    with contextlib.suppress(ConnectionError, ssl.SSLError):
        async with asyncio.timeout(TIMEOUT_S):
            while await reader.read(65536):
                pass
    return True


async def close_all(sockets: list[Socket]) -> None:
    for _, writer in sockets:
        writer.close()
    for _, writer in sockets:
        with contextlib.suppress(Exception):
            await writer.wait_closed()


async def round_trip(conn: wharf.Connection) -> None:
    queue = f"flood-{uuid.uuid4().hex[:8]}"
    await conn.declare_queue(queue, exclusive=True)
    await conn.publish("", queue, b"still served")
    msg = await conn.get(queue, no_ack=True)
    assert msg is not None and msg.body == b"still served"


async def sample(broker: Broker, name: str, **labels: str) -> int:
    return int(metric(await scrape_metrics(broker.http_port), name, **labels))


def check_plain_outcomes(frames: list[Any], admitted: int, limit: str) -> None:
    """``admitted`` sockets got HELLO; every silent socket beyond got the 506 naming
    ``limit`` (one that had sent half a handshake may have been reset instead)."""
    hellos = [f for f in frames if f is not None and f[0] == F.HELLO]
    assert len(hellos) == admitted, [f for f in frames if f is None or f[0] != F.HELLO][:3]
    for i, f in enumerate(frames):
        if f is not None and f[0] == F.HELLO:
            continue
        if f is None:
            assert i % 2, "a silent socket was closed without its 506"
            continue
        assert f[0] == F.ERROR and f[2] == 506 and f[4] is True, f
        assert f[5]["limit"] == limit, f


async def test_plain_flood_from_one_address(broker: Broker) -> None:
    flooding = await flood(broker.port, ["127.0.0.2"], F.HANDSHAKE[:4])
    try:
        frames = await asyncio.gather(*(first_frame(r) for r, _ in flooding))
        check_plain_outcomes(frames, PER_ADDRESS, "max_unauthenticated_per_address")
        assert await sample(broker, "wharf_connections_unauthenticated") == PER_ADDRESS
        # Another address logs in and is served while the flood holds its slots.
        conn = await wharf.connect(f"wharf://guest:guest@127.0.0.1:{broker.port}")
        await round_trip(conn)
        await conn.close()
        assert all(await asyncio.gather(*(closed_by_broker(r) for r, _ in flooding)))
    finally:
        await close_all(flooding)
    await wait_until(
        lambda: _is_zero(broker, "wharf_connections_unauthenticated"), timeout=TIMEOUT_S
    )


async def test_tls_flood_from_one_address(broker: Broker, context: ssl.SSLContext) -> None:
    flooding = await flood(broker.tls_port, ["127.0.0.3"], half_client_hello(context))
    refused = "wharf_tls_handshakes_refused_total"
    running = "wharf_tls_handshakes_in_progress"
    try:

        async def all_accepted() -> bool:
            per_address = await sample(broker, refused, listener="native", reason="per_address")
            return per_address == FLOOD - PER_ADDRESS

        await wait_until(all_accepted, timeout=TIMEOUT_S)
        assert await sample(broker, running, listener="native") == PER_ADDRESS
        assert await sample(broker, refused, listener="native", reason="total") == 0
        # Another address's TLS handshake and login go through meanwhile.
        url = f"wharfs://guest:guest@127.0.0.1:{broker.tls_port}"
        conn = await wharf.connect(url, ssl=context)
        await round_trip(conn)
        await conn.close()
        assert all(await asyncio.gather(*(closed_by_broker(r) for r, _ in flooding)))
    finally:
        await close_all(flooding)
    await wait_until(lambda: _is_zero(broker, running, listener="native"), timeout=TIMEOUT_S)
    # The admitted ones timed out (the refused ones never started a handshake).
    assert await sample(broker, "wharf_tls_handshake_failures_total") >= PER_ADDRESS


async def test_flood_from_many_addresses_fills_the_total_and_no_more(
    broker: Broker, context: ssl.SSLContext
) -> None:
    # Connections opened before the flood keep working through it.
    plain_url = f"wharf://guest:guest@127.0.0.1:{broker.port}"
    tls_url = f"wharfs://guest:guest@127.0.0.1:{broker.tls_port}"
    before = [await wharf.connect(plain_url), await wharf.connect(tls_url, ssl=context)]
    sources = [f"127.0.0.{n}" for n in range(10, 15)]  # FLOOD / 5 = PER_ADDRESS each
    plain = await flood(broker.port, sources, F.HANDSHAKE[:4])
    sources = [f"127.0.0.{n}" for n in range(20, 25)]
    tls = await flood(broker.tls_port, sources, half_client_hello(context))
    refused = "wharf_tls_handshakes_refused_total"
    running = "wharf_tls_handshakes_in_progress"
    try:
        frames = await asyncio.gather(*(first_frame(r) for r, _ in plain))
        check_plain_outcomes(frames, TOTAL, "max_unauthenticated_connections")

        async def all_accepted() -> bool:
            total = await sample(broker, refused, listener="native", reason="total")
            return total == FLOOD - TOTAL

        await wait_until(all_accepted, timeout=TIMEOUT_S)
        assert await sample(broker, running, listener="native") == TOTAL
        for conn in before:
            await round_trip(conn)
        flooding = plain + tls
        assert all(await asyncio.gather(*(closed_by_broker(r) for r, _ in flooding)))
    finally:
        await close_all(plain + tls)
    await wait_until(lambda: _is_zero(broker, running, listener="native"), timeout=TIMEOUT_S)
    await wait_until(
        lambda: _is_zero(broker, "wharf_connections_unauthenticated"), timeout=TIMEOUT_S
    )
    # Once the flood is over, new clients get in again.
    after = [await wharf.connect(plain_url), await wharf.connect(tls_url, ssl=context)]
    for conn in before + after:
        await round_trip(conn)
        await conn.close()


async def _is_zero(broker: Broker, name: str, **labels: str) -> bool:
    return await sample(broker, name, **labels) == 0
