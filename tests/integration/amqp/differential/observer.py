"""The differential harness's raw AMQP client: it records every frame the server sends.

An ``Observer`` is one AMQP connection driven frame by frame (pamqp marshals what we send
and unmarshals what we read; bad input is sent as raw bytes). Everything the server sends
becomes an *event*, a JSON-serialisable dict appended to the scenario's shared list:

    {"m": "Basic.Deliver", "ch": 1, "consumer_tag": ..., "delivery_tag": 1, ...,
     "props": {...}, "body": "..."}

A method that carries content (deliver, get-ok, return) is one event with its content
header's properties and its body. ``Channel.Close`` and ``Connection.Close`` are answered
with close-ok at once (as a client library does) and recorded; after a connection.close
the socket's end is recorded as ``{"m": "eof"}``, and a wait that nothing answers as
``{"m": "timeout"}``. Events of a second connection carry ``"c": 1`` (and so on).

The raw, unnormalised events are what this module produces; ``normalise.py`` removes what
legitimately differs between two servers.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import decimal
import struct
from typing import Any

from pamqp import body as pamqp_body
from pamqp import commands as C
from pamqp import frame as pamqp_frame
from pamqp import header as pamqp_header
from pamqp import heartbeat as pamqp_heartbeat

PROTOCOL_HEADER = b"AMQP\x00\x00\x09\x01"
FRAME_END = b"\xce"
FRAME_METHOD = 1
FRAME_HEADER = 2
FRAME_BODY = 3
# Long enough for either server to answer a method on loopback under a loaded machine;
# only a scenario whose two servers disagree ever waits it out.
WAIT_S = 2.0
# RabbitMQ closes the socket of a refused login 3 s after the refusal (SILENT_CLOSE_DELAY)
HANDSHAKE_WAIT_S = 6.0
CLIENT_CAPABILITIES: dict[str, Any] = {
    "publisher_confirms": True,
    "exchange_exchange_bindings": True,
    "basic.nack": True,
    "consumer_cancel_notify": True,
    "connection.blocked": True,
    "authentication_failure_close": True,
    "per_consumer_qos": True,
}
CONTENT_METHODS = ("Basic.Deliver", "Basic.GetOk", "Basic.Return")


def raw_frame(ftype: int, channel: int, payload: bytes) -> bytes:
    return struct.pack(">BHI", ftype, channel, len(payload)) + payload + FRAME_END


def method_bytes(channel: int, method: Any) -> bytes:
    return raw_frame(FRAME_METHOD, channel, struct.pack(">I", method.index) + method.marshal())


def jsonable(value: Any) -> Any:
    """A decoded AMQP value as JSON: bytes, decimals and timestamps tagged."""
    if isinstance(value, bool | int | float | str) or value is None:
        return value
    if isinstance(value, bytes | bytearray | memoryview):
        return {"$bytes": bytes(value).hex()}
    if isinstance(value, decimal.Decimal):
        return {"$decimal": str(value)}
    if isinstance(value, datetime.datetime):
        return {"$timestamp": int(value.replace(tzinfo=datetime.UTC).timestamp())}
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in sorted(value.items())}
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    return {"$repr": repr(value)}


# Bytes each fixed-size field type takes in a field table; S, x, F and A carry a 4-byte
# length instead, and D is a scale octet and a 4-byte value.
_FIELD_SIZES: dict[str, int] = {
    "t": 1, "b": 1, "B": 1, "s": 2, "u": 2, "I": 4, "i": 4, "l": 8, "L": 8,
    "f": 4, "d": 8, "D": 5, "T": 8, "V": 0,
}  # fmt: skip
_HEADERS_FLAG = 1 << 13
_PROPERTIES_OFFSET = 14  # class, weight, body size, property flags


def header_field_types(payload: bytes) -> dict[str, str]:
    """The field type of each top-level header of a content header frame's payload in
    which only content-type, content-encoding and headers may precede the table."""
    flags = struct.unpack_from(">H", payload, 12)[0]
    if not flags & _HEADERS_FLAG:
        return {}
    pos = _PROPERTIES_OFFSET
    for bit in (15, 14):  # content-type, content-encoding: short strings
        if flags & (1 << bit):
            pos += 1 + payload[pos]
    end = pos + 4 + struct.unpack_from(">I", payload, pos)[0]
    pos += 4
    out: dict[str, str] = {}
    while pos < end:
        klen = payload[pos]
        key = payload[pos + 1 : pos + 1 + klen].decode()
        pos += 1 + klen
        kind = chr(payload[pos])
        pos += 1
        out[key] = kind
        if kind in _FIELD_SIZES:
            pos += _FIELD_SIZES[kind]
        else:  # S x F A
            pos += 4 + struct.unpack_from(">I", payload, pos)[0]
    return dict(sorted(out.items()))


def method_event(channel: int, method: Any) -> dict[str, Any]:
    event: dict[str, Any] = {"m": method.name, "ch": channel}
    for slot in method.__slots__:
        event[slot] = jsonable(getattr(method, slot, None))
    return event


def properties_dict(props: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for slot in props.__slots__:
        value = getattr(props, slot, None)
        if value is not None:
            out[slot] = jsonable(value)
    return out


class Observer:
    """One AMQP connection whose server frames are all recorded in ``events``."""

    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        events: list[dict[str, Any]],
        index: int,
    ) -> None:
        self.reader = reader
        self.writer = writer
        self.events = events
        self.index = index
        self.buffer = b""
        self.closed = False
        self.last_payload = b""
        # With header_types, content events also carry the field type of each top-level
        # header ("I", "l", "d", ...): pamqp decodes every integer width to int.
        self.header_types = False

    @classmethod
    async def connect(cls, port: int, events: list[dict[str, Any]], index: int = 0) -> Observer:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        return cls(reader, writer, events, index)

    # ---- recording -------------------------------------------------------------------

    def record(self, event: dict[str, Any]) -> dict[str, Any]:
        if self.index:
            event = {"c": self.index, **event}
        self.events.append(event)
        return event

    def note(self, what: str, **fields: Any) -> None:
        """A client-side marker in the observation (what the scenario saw, in its words)."""
        self.record({"m": "note", "what": what, **{k: jsonable(v) for k, v in fields.items()}})

    # ---- sending ---------------------------------------------------------------------

    def send(self, channel: int, method: Any) -> None:
        self.writer.write(pamqp_frame.marshal(method, channel))

    def send_raw(self, data: bytes) -> None:
        self.writer.write(data)

    def publish(
        self,
        channel: int,
        exchange: str,
        routing_key: str,
        body: bytes = b"m",
        *,
        mandatory: bool = False,
        immediate: bool = False,
        properties: C.Basic.Properties | None = None,
    ) -> None:
        props = properties or C.Basic.Properties()
        self.writer.write(
            pamqp_frame.marshal(
                C.Basic.Publish(
                    exchange=exchange,
                    routing_key=routing_key,
                    mandatory=mandatory,
                    immediate=immediate,
                ),
                channel,
            )
            + pamqp_frame.marshal(pamqp_header.ContentHeader(0, len(body), props), channel)
            + (pamqp_frame.marshal(pamqp_body.ContentBody(body), channel) if body else b"")
        )

    # ---- receiving -------------------------------------------------------------------

    async def _frame(self, timeout: float) -> tuple[int, Any] | None:
        """The next non-heartbeat frame; None at the socket's end or after ``timeout``."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            if len(self.buffer) >= 8:
                size = struct.unpack_from(">I", self.buffer, 3)[0]
                if len(self.buffer) >= size + 8:
                    self.last_payload = self.buffer[7 : 7 + size]
                    used, channel, frame = pamqp_frame.unmarshal(self.buffer)
                    self.buffer = self.buffer[used:]
                    if isinstance(frame, pamqp_heartbeat.Heartbeat):
                        continue
                    return channel, frame
            remaining = deadline - loop.time()
            if remaining <= 0:
                return None
            try:
                data = await asyncio.wait_for(self.reader.read(65536), remaining)
            except TimeoutError:
                return None
            except ConnectionError:
                data = b""
            if not data:
                self.closed = True
                return None
            self.buffer += data

    async def next_event(self, timeout: float = WAIT_S) -> dict[str, Any]:
        """Reads one server method (with its content) and records it as an event."""
        if self.closed:
            return self.record({"m": "eof"})
        got = await self._frame(timeout)
        if got is None:
            return self.record({"m": "eof" if self.closed else "timeout"})
        channel, frame = got
        if isinstance(frame, pamqp_header.ContentHeader | pamqp_body.ContentBody):
            return self.record({"m": type(frame).__name__, "ch": channel})
        event = method_event(channel, frame)
        if frame.name in CONTENT_METHODS:
            got = await self._frame(timeout)
            if got is not None and isinstance(got[1], pamqp_header.ContentHeader):
                head = got[1]
                if self.header_types:
                    event["header_types"] = header_field_types(self.last_payload)
                body = b""
                while len(body) < head.body_size:
                    part = await self._frame(timeout)
                    if part is None or not isinstance(part[1], pamqp_body.ContentBody):
                        break
                    body += part[1].value
                event["props"] = properties_dict(head.properties)
                event["body"] = jsonable(body.decode() if body.isascii() else body)
            else:
                event["content"] = "missing"
        self.record(event)
        if isinstance(frame, C.Channel.Close):
            self.send(channel, C.Channel.CloseOk())
        elif isinstance(frame, C.Connection.Close):
            self.send(0, C.Connection.CloseOk())
            # when the server then closes the socket is a matter of timing: not observed
            self.closed = True
        return event

    async def expect(
        self, *names: str, ch: int | None = None, timeout: float = WAIT_S
    ) -> dict[str, Any]:
        """Records events until one named in ``names`` (on ``ch`` if given), a close of
        that channel or of the connection, the socket's end, or a timeout."""
        while True:
            event = await self.next_event(timeout)
            m = event["m"]
            if m in names and (ch is None or event.get("ch") == ch):
                return event
            if m in ("eof", "timeout", "Connection.Close"):
                return event
            if m == "Channel.Close" and (ch is None or event.get("ch") == ch):
                return event

    async def call(self, channel: int, method: Any, *replies: str) -> dict[str, Any]:
        """Sends a method and records up to its reply (``method.name + 'Ok'`` by default)."""
        self.send(channel, method)
        return await self.expect(*(replies or (method.name + "Ok",)), ch=channel)

    async def sync(self, channel: int) -> dict[str, Any]:
        """A no-op round trip on ``channel``: everything the server sent on it before is
        recorded (servers handle a channel's methods in order)."""
        return await self.call(
            channel, C.Exchange.Declare(exchange="amq.direct", passive=True), "Exchange.DeclareOk"
        )

    # ---- the handshake -----------------------------------------------------------------

    async def handshake(
        self,
        *,
        user: str = "guest",
        password: str = "guest",
        vhost: str = "/",
        mechanism: str = "PLAIN",
        response: bytes | str | None = None,
        capabilities: dict[str, Any] | None = None,
        channel_max: int | None = None,
        frame_max: int | None = None,
        record: bool = False,
    ) -> bool:
        """Logs in; True once connection.open-ok arrived. The handshake's own frames are
        recorded only with ``record=True`` (a failure is always recorded)."""
        mark = len(self.events)
        self.send_raw(PROTOCOL_HEADER)
        start = await self.expect("Connection.Start", timeout=HANDSHAKE_WAIT_S)
        if start["m"] != "Connection.Start":
            return False
        caps = CLIENT_CAPABILITIES if capabilities is None else capabilities
        self.send(
            0,
            C.Connection.StartOk(
                client_properties={"product": "wharf-differential", "capabilities": caps},
                mechanism=mechanism,
                response=response if response is not None else f"\0{user}\0{password}",
            ),
        )
        tune = await self.expect("Connection.Tune", timeout=HANDSHAKE_WAIT_S)
        if tune["m"] != "Connection.Tune":
            return False
        self.send(
            0,
            C.Connection.TuneOk(
                tune["channel_max"] if channel_max is None else channel_max,
                tune["frame_max"] if frame_max is None else frame_max,
                0,
            ),
        )
        self.send(0, C.Connection.Open(vhost))
        ok = await self.expect("Connection.OpenOk", timeout=HANDSHAKE_WAIT_S)
        if not record and ok["m"] == "Connection.OpenOk":
            del self.events[mark:]
        return ok["m"] == "Connection.OpenOk"

    async def open_channel(self, channel: int = 1) -> dict[str, Any]:
        return await self.call(channel, C.Channel.Open())

    async def close(self) -> None:
        """Closes the connection (recording the close-ok) unless the server closed it."""
        if not self.closed:
            self.send(0, C.Connection.Close(200, "bye", 0, 0))
            await self.expect("Connection.CloseOk", ch=0)
            self.closed = True
        self.writer.close()
        with contextlib.suppress(Exception):
            await self.writer.wait_closed()

    async def read_raw(self, timeout: float = WAIT_S) -> bytes:
        """Every byte until the server closes the socket (for a wrong protocol header)."""
        out = self.buffer
        self.buffer = b""
        with contextlib.suppress(ConnectionError, TimeoutError):
            while True:
                data = await asyncio.wait_for(self.reader.read(65536), timeout)
                if not data:
                    break
                out += data
        self.closed = True
        return out
