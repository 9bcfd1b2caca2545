"""A minimal Wharf client on raw asyncio streams, for measuring the broker without the SDK.

It speaks just enough of the protocol (handshake, AUTH, request/OK, PUBLISH_MANY,
CONFIRM, CONSUME, DELIVER, ACK multiple) and works on the decoded msgpack arrays from
``wharf.protocol.codec`` directly, never building typed frames on the hot path.
"""

from __future__ import annotations

import asyncio
import itertools
from collections import deque
from ssl import SSLContext
from typing import Any, Final

from wharf.protocol import frames as F
from wharf.protocol.codec import FrameDecoder, FrameEncoder
from wharf.protocol.errors import WharfError, error_from_code

READ_BYTES: Final = 1 << 20
CLIENT_PROPERTIES: Final = {"product": "wharf-benchmarks/raw"}


class RawConnection:
    """One TCP connection.  ``call`` is for setup requests, the hot loops read frames."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.decoder = FrameDecoder(use_list=False)
        self.encoder = FrameEncoder()
        self.pending: deque[Any] = deque()
        self._rids = itertools.count(1)

    @classmethod
    async def open(
        cls,
        host: str,
        port: int,
        username: str = "guest",
        password: str = "guest",
        ssl: SSLContext | None = None,
    ) -> RawConnection:
        reader, writer = await asyncio.open_connection(
            host, port, limit=READ_BYTES, ssl=ssl, server_hostname=host if ssl else None
        )
        conn = cls(reader, writer)
        writer.write(F.HANDSHAKE)
        hello = await conn.next_frame()
        if hello[0] != F.HELLO:
            raise _as_error(hello) if hello[0] == F.ERROR else RuntimeError(f"got {hello!r}")
        writer.write(
            conn.encoder.encode_array(
                (F.AUTH, 0, "PLAIN", username, password, 0, CLIENT_PROPERTIES)
            )
        )
        ok = await conn.next_frame()
        if ok[0] != F.AUTH_OK:
            raise _as_error(ok) if ok[0] == F.ERROR else RuntimeError(f"got {ok!r}")
        return conn

    def next_rid(self) -> int:
        return next(self._rids)

    async def read_frames(self) -> list[Any]:
        """The next batch of raw frame arrays (at least one); answers heartbeats itself."""
        while True:
            if self.pending:
                out = list(self.pending)
                self.pending.clear()
                return out
            data = await self.reader.read(READ_BYTES)
            if not data:
                raise ConnectionError("broker closed the connection")
            frames = self.decoder.feed(data)
            if not frames:
                continue
            for frame in frames:
                if frame[0] == F.HEARTBEAT:
                    self.writer.write(self.encoder.encode_array((F.HEARTBEAT, 0)))
            return frames

    async def next_frame(self) -> Any:
        while not self.pending:
            self.pending.extend(await self.read_frames())
        return self.pending.popleft()

    async def call(self, array: tuple[Any, ...]) -> Any:
        """Send a request (``array[1]`` is its request id) and return the OK result.

        Frames that arrive meanwhile and answer nothing else (deliveries right after a
        CONSUME's OK, confirms) stay queued for ``read_frames``.
        """
        rid = array[1]
        self.writer.write(self.encoder.encode_array(array))
        skipped: list[Any] = []
        try:
            while True:
                frame = await self.next_frame()
                if frame[1] == rid and frame[0] == F.OK:
                    return frame[2] if len(frame) > 2 else None
                if frame[1] == rid and frame[0] == F.ERROR:
                    raise _as_error(frame)
                if frame[0] == F.HEARTBEAT:
                    continue
                skipped.append(frame)
        finally:
            self.pending.extendleft(reversed(skipped))

    async def declare_queue(
        self,
        name: str,
        *,
        passive: bool = False,
        durable: bool = False,
        arguments: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        result = await self.call(
            (F.QUEUE_DECLARE, self.next_rid(), name, durable, False, False, passive, arguments)
        )
        return dict(result or {})

    async def delete_queue(self, name: str) -> None:
        await self.call((F.QUEUE_DELETE, self.next_rid(), name, False, False))

    async def consume(self, queue: str, prefetch: int, *, no_ack: bool = False) -> int:
        """Start a consumer; returns the ack id (the CONSUME request id) for its acks."""
        rid = self.next_rid()
        await self.call((F.CONSUME, rid, queue, "", prefetch, no_ack, False, None))
        return rid

    async def close(self) -> None:
        try:
            self.writer.write(self.encoder.encode_array((F.CLOSE, self.next_rid(), 0, "")))
            await asyncio.wait_for(self.writer.drain(), 2)
        except (TimeoutError, OSError):
            pass
        self.writer.close()
        try:
            await asyncio.wait_for(self.writer.wait_closed(), 2)
        except (TimeoutError, OSError):
            pass


def _as_error(frame: Any) -> WharfError:
    code = frame[2] if len(frame) > 2 else 541
    message = frame[3] if len(frame) > 3 else "error"
    return error_from_code(code, message)
