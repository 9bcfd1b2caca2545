"""A minimal raw AMQP 0-9-1 client for bad-input tests (frames built with pamqp)."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
from typing import Any

from pamqp import commands as C
from pamqp import frame as pamqp_frame
from pamqp import heartbeat as pamqp_heartbeat

PROTOCOL_HEADER = b"AMQP\x00\x00\x09\x01"
HEARTBEAT = b"\x08\x00\x00\x00\x00\x00\x00\xce"
FRAME_END = b"\xce"
RECV_TIMEOUT_S = 5.0


def free_port() -> int:
    """A port that was free a moment ago (an AMQP port of 0 turns the listener off)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def raw_frame(ftype: int, channel: int, payload: bytes) -> bytes:
    return struct.pack(">BHI", ftype, channel, len(payload)) + payload + FRAME_END


def method_payload(method: Any) -> bytes:
    return struct.pack(">I", method.index) + method.marshal()


class RawAmqp:
    """A minimal AMQP client: bytes out, (channel, pamqp frame) in."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.buffer = b""

    @classmethod
    async def open(
        cls,
        port: int,
        *,
        channel_max: int = 2047,
        heartbeat: int = 0,
        login: bool = True,
        client_properties: dict[str, Any] | None = None,
    ) -> RawAmqp:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        client = cls(reader, writer)
        if login:
            writer.write(PROTOCOL_HEADER)
            _, start = await client.recv()
            assert isinstance(start, C.Connection.Start), start
            client.send(
                0,
                C.Connection.StartOk(
                    client_properties=client_properties or {}, response="\0guest\0guest"
                ),
            )
            _, tune = await client.recv()
            assert isinstance(tune, C.Connection.Tune), tune
            client.send(0, C.Connection.TuneOk(channel_max, tune.frame_max, heartbeat))
            client.send(0, C.Connection.Open("/"))
            _, ok = await client.recv()
            assert isinstance(ok, C.Connection.OpenOk), ok
        return client

    def send(self, channel: int, method: Any) -> None:
        self.writer.write(pamqp_frame.marshal(method, channel))

    def send_bytes(self, data: bytes) -> None:
        self.writer.write(data)

    async def recv(self, timeout: float = RECV_TIMEOUT_S) -> tuple[int, Any]:
        """The next frame that is not a heartbeat: (channel, frame)."""
        while True:
            if len(self.buffer) >= 8:
                try:
                    used, channel, frame = pamqp_frame.unmarshal(self.buffer)
                except Exception:
                    used = 0
                if used:
                    self.buffer = self.buffer[used:]
                    if isinstance(frame, pamqp_heartbeat.Heartbeat):
                        continue
                    return channel, frame
            data = await asyncio.wait_for(self.reader.read(65536), timeout)
            if not data:
                raise EOFError("the broker closed the connection")
            self.buffer += data

    async def read_all(self, timeout: float = RECV_TIMEOUT_S) -> bytes:
        """Every byte until the broker closes the socket."""
        out = self.buffer
        with contextlib.suppress(ConnectionError):
            while True:
                data = await asyncio.wait_for(self.reader.read(65536), timeout)
                if not data:
                    break
                out += data
        return out

    async def expect_connection_close(self) -> C.Connection.Close:
        while True:
            _, frame = await self.recv()
            if isinstance(frame, C.Connection.Close):
                self.send(0, C.Connection.CloseOk())
                return frame

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(Exception):
            await self.writer.wait_closed()
