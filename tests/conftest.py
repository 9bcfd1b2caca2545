"""Shared fixtures: a real broker on port 0 in this process, SDK connections, a raw client."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

import wharf
from wharf.broker.config import Settings
from wharf.broker.server import Broker
from wharf.protocol import frames as F
from wharf.protocol.codec import FrameDecoder, encode, encode_array

from .helpers import FrameClient, TcpProxy

# uvloop for every asyncio test, and a hung one fails alone with its tasks' stacks
# (tests/loop_watchdog.py): pytest picks these hooks up from this module.
from .loop_watchdog import pytest_asyncio_loop_factories, pytest_runtest_protocol

__all__ = ["pytest_asyncio_loop_factories", "pytest_runtest_protocol"]


def make_settings(tmp_path: Path, **overrides: Any) -> Settings:
    base: dict[str, Any] = {
        "host": "127.0.0.1",
        "port": 0,
        "http_port": 0,
        "amqp_port": 0,  # off: a test that wants it passes a free port
        "amqps_port": 0,  # off too (5671 may be taken here)
        "data_dir": str(tmp_path / "data"),
    }
    base.update(overrides)
    return Settings(**base)


@pytest.fixture
def settings_overrides() -> dict[str, Any]:
    """Override in a test module to start the broker with other settings."""
    return {}


@pytest.fixture
async def broker(tmp_path: Path, settings_overrides: dict[str, Any]) -> AsyncIterator[Broker]:
    b = Broker(make_settings(tmp_path, **settings_overrides))
    await b.start()
    try:
        yield b
    finally:
        await b.stop()


@pytest.fixture
def url(broker: Broker) -> str:
    return f"wharf://guest:guest@127.0.0.1:{broker.port}"


@pytest.fixture
async def conn(url: str) -> AsyncIterator[wharf.Connection]:
    c = await wharf.connect(url)
    try:
        yield c
    finally:
        with contextlib.suppress(Exception):
            await c.close()


@pytest.fixture
async def connect(url: str) -> AsyncIterator[Callable[..., Any]]:
    """Open more SDK connections; all are closed at teardown."""
    opened: list[wharf.Connection] = []

    async def _connect(**kwargs: Any) -> wharf.Connection:
        c = await wharf.connect(kwargs.pop("url", url), **kwargs)
        opened.append(c)
        return c

    yield _connect
    for c in opened:
        with contextlib.suppress(Exception):
            await c.close()


class RawClient:
    """A minimal protocol client for bad-input tests: bytes in, raw frame arrays out."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.decoder = FrameDecoder()
        self.pending: list[Any] = []

    @classmethod
    async def open(cls, port: int, *, handshake: bool = True, auth: bool = True) -> RawClient:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        client = cls(reader, writer)
        if handshake:
            writer.write(F.HANDSHAKE)
            hello = await client.recv()
            assert hello[0] == F.HELLO, hello
            if auth:
                client.send(F.Auth(1, "PLAIN", "guest", "guest", 0, {}))
                ok = await client.recv()
                assert ok[0] == F.AUTH_OK, ok
        return client

    def send(self, frame: F.Frame) -> None:
        self.writer.write(encode(frame))

    def send_array(self, array: list[Any] | tuple[Any, ...]) -> None:
        self.writer.write(encode_array(array))

    def send_bytes(self, data: bytes) -> None:
        self.writer.write(data)

    async def recv(self, timeout: float = 5.0) -> Any:
        while not self.pending:
            data = await asyncio.wait_for(self.reader.read(65536), timeout)
            if not data:
                raise EOFError("server closed the connection")
            self.pending.extend(self.decoder.feed(data))
        return self.pending.pop(0)

    async def recv_until_closed(self, timeout: float = 5.0) -> list[Any]:
        frames: list[Any] = []
        with contextlib.suppress(EOFError, ConnectionError):
            while True:
                frames.append(await self.recv(timeout))
        return frames

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(Exception):
            await self.writer.wait_closed()


@pytest.fixture
async def raw_client(broker: Broker) -> AsyncIterator[Callable[..., Any]]:
    clients: list[RawClient] = []

    async def _open(**kwargs: Any) -> RawClient:
        c = await RawClient.open(broker.port, **kwargs)
        clients.append(c)
        return c

    yield _open
    for c in clients:
        await c.close()


@pytest.fixture
async def proxy(broker: Broker) -> AsyncIterator[TcpProxy]:
    """A TCP proxy in front of the broker (connect with ``url=proxy.url()``) whose
    ``cut()`` drops the connections through it, as a failing network would."""
    p = await TcpProxy(broker.port).start()
    try:
        yield p
    finally:
        await p.close()


@pytest.fixture
async def frame_client(broker: Broker) -> AsyncIterator[Callable[[], Any]]:
    """Open protocol connections that send any request and match its answer
    (``await (await frame_client()).request(F.GROUP_HEARTBEAT, ...)``)."""
    clients: list[FrameClient] = []

    async def _open() -> FrameClient:
        c = await FrameClient.open(broker.port)
        clients.append(c)
        return c

    yield _open
    for c in clients:
        await c.close()
