"""Slowloris on every listener (issue 13, part 7): a client that sends its handshake or its
request one byte at a time, each byte well within the timeout, is still closed once
``handshake_timeout_ms`` has passed since the accept; a well-behaved client on the same
listener is served meanwhile.

| listener | what the slowloris trickles | closed by |
| --- | --- | --- |
| native plain | the Wharf handshake, then an AUTH frame | the login deadline (fatal ERROR) |
| native TLS | a TLS ClientHello | the TLS handshake timeout (closed without a byte) |
| native TLS | after the TLS handshake: the Wharf handshake and AUTH | the login deadline |
| HTTP, HTTPS | a request head | the request-head timeout (closed without an answer) |
| HTTP, HTTPS | the body of an /api request | the body timeout (408) |
| every listener | nothing at all (TCP open, no ClientHello on TLS) | the same deadlines |

The HTTP caps under a slowloris are in test_http_protections.py.  The pacing between two
bytes is the behaviour under test, not synchronisation.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import ssl
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import trustme

import wharf
from wharf.broker.server import Broker
from wharf.protocol import frames as F
from wharf.protocol.codec import FrameDecoder, encode

TIMEOUT_S = 10.0
HANDSHAKE_TIMEOUT_MS = 2000
# Between two bytes of a slowloris: a tenth of the timeout, so that a timer restarted by
# every byte (the mistake these tests catch) would never fire.
PACE_S = HANDSHAKE_TIMEOUT_MS / 1000 / 10
PAD_BYTES = 4000  # more bytes than the slowloris can send within TIMEOUT_S
GUEST_AUTH = "Basic " + base64.b64encode(b"guest:guest").decode()


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
    }


@pytest.fixture
def context(ca: trustme.CA) -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    ca.configure_trust(ctx)
    return ctx


def client_hello(context: ssl.SSLContext) -> bytes:
    """The bytes of a TLS ClientHello, as a client would send them first."""
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = context.wrap_bio(incoming, outgoing, server_hostname="127.0.0.1")
    with contextlib.suppress(ssl.SSLWantReadError):
        tls.do_handshake()
    return outgoing.read()


def native_login() -> bytes:
    """The Wharf handshake and a long AUTH frame (never finished by a slowloris)."""
    return F.HANDSHAKE + encode(F.Auth(1, "PLAIN", "guest", "guest", 0, {"pad": "p" * PAD_BYTES}))


def http_head(method: str = "GET", path: str = "/api/overview", body_bytes: int = 0) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", "Host: localhost", f"Authorization: {GUEST_AUTH}"]
    if body_bytes:
        lines += ["Content-Type: application/json", f"Content-Length: {body_bytes}"]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


async def trickle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, data: bytes) -> bytes:
    """Send ``data`` one byte every PACE_S until the broker closes the connection; what
    the broker sent.  Fails when all of ``data`` went out first or TIMEOUT_S passed."""
    received = bytearray()

    async def read_all() -> None:
        with contextlib.suppress(ConnectionError, ssl.SSLError):
            while chunk := await reader.read(65536):
                received.extend(chunk)

    reading = asyncio.ensure_future(read_all())
    try:
        async with asyncio.timeout(TIMEOUT_S):
            for i in range(len(data)):
                if reading.done() or received:  # answered or closed: stop writing
                    break
                writer.write(data[i : i + 1])
                with contextlib.suppress(ConnectionError, ssl.SSLError):
                    await writer.drain()
                await asyncio.wait([reading], timeout=PACE_S)  # wakes at once on a close
            else:
                raise AssertionError("the slowloris sent everything without being closed")
            await reading
    finally:
        reading.cancel()
        writer.close()
        with contextlib.suppress(Exception):
            await writer.wait_closed()
    return bytes(received)


async def http_get(port: int, context: ssl.SSLContext | None = None) -> int:
    """A well-behaved request: the status of GET /api/overview."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=context)
    try:
        writer.write(http_head().replace(b"\r\n\r\n", b"\r\nConnection: close\r\n\r\n"))
        async with asyncio.timeout(TIMEOUT_S):
            answer = await reader.read()
    finally:
        writer.close()
        with contextlib.suppress(Exception):
            await writer.wait_closed()
    return int(answer.split(b" ", 2)[1])


async def round_trip(url: str, **kwargs: Any) -> None:
    """A well-behaved Wharf client: connect, publish, get."""
    conn = await wharf.connect(url, timeout=TIMEOUT_S, **kwargs)
    try:
        queue = f"served-{uuid.uuid4().hex[:8]}"
        await conn.declare_queue(queue, exclusive=True)
        await conn.publish("", queue, b"served")
        msg = await conn.get(queue, no_ack=True)
        assert msg is not None and msg.body == b"served"
    finally:
        await conn.close()


async def while_trickling(
    slowloris: Awaitable[bytes], well_behaved: Callable[[], Awaitable[None]]
) -> bytes:
    """Run the well-behaved client while the slowloris trickles; what the broker sent
    the slowloris before closing it."""
    trickling = asyncio.ensure_future(slowloris)
    try:
        await well_behaved()
    except BaseException:
        trickling.cancel()
        raise
    got = await trickling
    await well_behaved()  # and after it
    return got


async def read_hello(reader: asyncio.StreamReader) -> None:
    """The broker greets a native connection with HELLO at once; read it first."""
    decoder = FrameDecoder()
    async with asyncio.timeout(TIMEOUT_S):
        while not (frames := decoder.feed(await reader.read(65536))):
            pass
    assert frames[0][0] == F.HELLO and len(frames) == 1, frames


def fatal_errors(data: bytes) -> list[Any]:
    return [f for f in FrameDecoder().feed(data) if f[0] == F.ERROR and f[4] is True]


async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bytes:
    """Send nothing; what the broker sent before it closed the connection."""
    got = bytearray()
    try:
        with contextlib.suppress(ConnectionError, ssl.SSLError):
            async with asyncio.timeout(TIMEOUT_S):
                while chunk := await reader.read(65536):
                    got.extend(chunk)
    finally:
        writer.close()
        with contextlib.suppress(Exception):
            await writer.wait_closed()
    return bytes(got)


@pytest.mark.parametrize("listener", ["native", "native-tls", "http", "https"])
async def test_silent_sockets_are_closed_while_others_are_served(
    broker: Broker, context: ssl.SSLContext, listener: str
) -> None:
    """TCP open, then nothing (on the TLS listeners: no ClientHello)."""
    port = {
        "native": broker.port,
        "native-tls": broker.tls_port,
        "http": broker.http_port,
        "https": broker.https_port,
    }[listener]
    reader, writer = await asyncio.open_connection("127.0.0.1", port)

    async def served() -> None:
        if listener == "native":
            await round_trip(f"wharf://guest:guest@127.0.0.1:{port}")
        elif listener == "native-tls":
            await round_trip(f"wharfs://guest:guest@127.0.0.1:{port}", ssl=context)
        else:
            assert await http_get(port, context if listener == "https" else None) == 200

    got = await while_trickling(silent(reader, writer), served)
    if listener == "native":  # greeted with HELLO, then refused for its silence
        (error,) = fatal_errors(got)
        assert "not completed in time" in error[3], error
    else:
        assert got == b""


# -- the native listeners -----------------------------------------------------------------


async def test_native_plain_login_trickled_byte_by_byte(broker: Broker) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", broker.port)
    await read_hello(reader)
    url = f"wharf://guest:guest@127.0.0.1:{broker.port}"
    got = await while_trickling(trickle(reader, writer, native_login()), lambda: round_trip(url))
    (error,) = fatal_errors(got)
    assert "not completed in time" in error[3], error


async def test_native_tls_client_hello_trickled_byte_by_byte(
    broker: Broker, context: ssl.SSLContext
) -> None:
    hello = client_hello(context)
    assert len(hello) * PACE_S > TIMEOUT_S  # it cannot be finished within the test
    reader, writer = await asyncio.open_connection("127.0.0.1", broker.tls_port)
    url = f"wharfs://guest:guest@127.0.0.1:{broker.tls_port}"
    got = await while_trickling(
        trickle(reader, writer, hello), lambda: round_trip(url, ssl=context)
    )
    assert got == b""  # no ServerHello: closed in the middle of the ClientHello


async def test_native_tls_login_trickled_after_the_tls_handshake(
    broker: Broker, context: ssl.SSLContext
) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", broker.tls_port, ssl=context)
    await read_hello(reader)
    url = f"wharfs://guest:guest@127.0.0.1:{broker.tls_port}"
    got = await while_trickling(
        trickle(reader, writer, native_login()), lambda: round_trip(url, ssl=context)
    )
    (error,) = fatal_errors(got)
    assert "not completed in time" in error[3], error


# -- HTTP and HTTPS ----------------------------------------------------------------------------


@pytest.mark.parametrize("scheme", ["http", "https"])
async def test_http_request_head_trickled_byte_by_byte(
    broker: Broker, context: ssl.SSLContext, scheme: str
) -> None:
    tls = context if scheme == "https" else None
    port = broker.https_port if tls else broker.http_port
    reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=tls)
    head = http_head()[:-2] + b"X-Pad: " + b"a" * PAD_BYTES  # a header line never ended

    async def served() -> None:
        assert await http_get(port, tls) == 200

    got = await while_trickling(trickle(reader, writer, head), served)
    assert got == b""  # closed without an answer: no request was ever complete


@pytest.mark.parametrize("scheme", ["http", "https"])
async def test_http_request_body_trickled_byte_by_byte(
    broker: Broker, context: ssl.SSLContext, scheme: str
) -> None:
    tls = context if scheme == "https" else None
    port = broker.https_port if tls else broker.http_port
    reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=tls)
    writer.write(http_head("PUT", "/api/queues/%2F/trickled", body_bytes=PAD_BYTES))

    async def served() -> None:
        assert await http_get(port, tls) == 200

    got = await while_trickling(trickle(reader, writer, b" " * PAD_BYTES), served)
    assert got.startswith(b"HTTP/1.1 408 "), got[:200]
    # Nothing of the request was acted on.
    reader, writer = await asyncio.open_connection("127.0.0.1", broker.http_port)
    writer.write(
        http_head("GET", "/api/queues/%2F/trickled").replace(
            b"\r\n\r\n", b"\r\nConnection: close\r\n\r\n"
        )
    )
    async with asyncio.timeout(TIMEOUT_S):
        assert (await reader.read()).startswith(b"HTTP/1.1 404 ")
    writer.close()
