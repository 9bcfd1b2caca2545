"""AMQP 0-9-1 framing: the protocol header, the frame reader, and the frames we write.

A frame on the wire (big-endian)::

    type u8 | channel u16 | size u32 | payload (size bytes) | 0xCE

Types: 1 method (class id u16, method id u16, arguments), 2 content header, 3 content
body, 8 heartbeat (channel 0, empty payload).  ``frame_max`` counts the whole frame,
its 7 header bytes and the end octet included.

Methods are decoded with pamqp (``pamqp.commands``), except the hot ones, read and
written here by hand (docs/decisions.md): basic.publish and basic.ack in, and
basic.deliver, content headers and bodies out.  Every decoding error becomes
``AmqpError`` (a hard error): 501 FRAME_ERROR for framing and for arguments that do not
fill the method's layout exactly (short of it, or bytes behind it: RabbitMQ's decoder
matches the whole payload and answers ``cannot decode <<...>>``), 502 SYNTAX_ERROR for
arguments of the right length that still do not decode (a field table, a string that is
not UTF-8).
"""

from __future__ import annotations

import struct
from typing import Any, Final

from pamqp import commands as C

from .errors import FRAME_ERROR, SYNTAX_ERROR, AmqpError

PROTOCOL_HEADER: Final = b"AMQP\x00\x00\x09\x01"
PROTOCOL_HEADER_BYTES: Final = 8
FRAME_METHOD: Final = 1
FRAME_HEADER: Final = 2
FRAME_BODY: Final = 3
FRAME_HEARTBEAT: Final = 8
FRAME_END: Final = 0xCE
FRAME_OVERHEAD_BYTES: Final = 8  # 7 header bytes + the end octet
# The smallest frame_max a peer may ask for (AMQP 0-9-1: frame-min-size).
FRAME_MIN_BYTES: Final = 4096
MAX_SHORTSTR_BYTES: Final = 255
HEARTBEAT_FRAME: Final = b"\x08\x00\x00\x00\x00\x00\x00\xce"

# Method ids as pamqp numbers them: class id << 16 | method id.
BASIC_PUBLISH: Final = 0x003C0028
BASIC_ACK: Final = 0x003C0050
BASIC_DELIVER: Final = 0x003C003C

_frame_head = struct.Struct(">BHI")
_method_head = struct.Struct(">I")
_u64_bit = struct.Struct(">QB")
# basic.ack: method id, delivery-tag, bits.
_ACK_PAYLOAD_BYTES: Final = _method_head.size + _u64_bit.size
_deliver_mid = struct.Struct(">QB")
_pack_head = _frame_head.pack
# The argument bytes printed in a "cannot decode" reply: a reply text is cut at 255 bytes
# anyway, and each byte prints as up to 4 characters.
CANNOT_DECODE_SHOWN_BYTES: Final = 128
# Fixed-width AMQP argument types (pamqp's names) and their sizes in bytes.
_FIXED_BYTES: Final[dict[str, int]] = {"octet": 1, "short": 2, "long": 4, "longlong": 8}
_LENGTH_PREFIX: Final[dict[str, struct.Struct]] = {
    "shortstr": struct.Struct(">B"),
    "longstr": struct.Struct(">I"),
    "table": struct.Struct(">I"),
}
_BITS_PER_OCTET: Final = 8


class Publish:
    """basic.publish, decoded by hand (the hot path)."""

    __slots__ = ("exchange", "routing_key", "mandatory", "immediate")

    def __init__(self, exchange: str, routing_key: str, mandatory: bool, immediate: bool) -> None:
        self.exchange = exchange
        self.routing_key = routing_key
        self.mandatory = mandatory
        self.immediate = immediate


class Ack:
    """basic.ack from a client, decoded by hand."""

    __slots__ = ("delivery_tag", "multiple")

    def __init__(self, delivery_tag: int, multiple: bool) -> None:
        self.delivery_tag = delivery_tag
        self.multiple = multiple


def _shortstr_at(payload: bytes, pos: int) -> tuple[str, int]:
    n = payload[pos]
    pos += 1
    end = pos + n
    if end > len(payload):
        raise IndexError
    return payload[pos:end].decode("utf-8"), end


def cannot_decode(mid: int, args: bytes | memoryview) -> AmqpError:
    """RabbitMQ's 501 for method arguments that do not match the method's layout: the
    bytes as Erlang prints a binary (``<<0,0,32,97>>``)."""
    shown = ",".join(map(str, bytes(args[:CANNOT_DECODE_SHOWN_BYTES])))
    more = ",..." if len(args) > CANNOT_DECODE_SHOWN_BYTES else ""
    return AmqpError(FRAME_ERROR, f"cannot decode <<{shown}{more}>>", mid)


_layouts: dict[int, tuple[str, ...]] = {}


def _layout(mid: int, cls: Any) -> tuple[str, ...]:
    """The method's argument types in order, a run of up to 8 bits as one ``octet``."""
    layout = _layouts.get(mid)
    if layout is None:
        types: list[str] = []
        bits = 0
        for name in cls.__slots__:
            kind = cls.amqp_type(name)
            if kind == "bit":
                if bits % _BITS_PER_OCTET == 0:
                    types.append("octet")
                bits += 1
                continue
            bits = 0
            types.append(kind)
        layout = _layouts[mid] = tuple(types)
    return layout


def _fills_layout(layout: tuple[str, ...], args: bytes) -> bool:
    """Whether the argument bytes are exactly the layout's, no byte short and none over
    (the length prefixes read, not the contents)."""
    pos = 0
    n = len(args)
    for kind in layout:
        width = _FIXED_BYTES.get(kind)
        if width is not None:
            pos += width
            continue
        prefix = _LENGTH_PREFIX[kind]
        if pos + prefix.size > n:
            return False
        (length,) = prefix.unpack_from(args, pos)
        pos += prefix.size + length
        if pos > n:
            return False
    return pos == n


_last_publish: list[Any] = [b"", None]  # the last basic.publish payload and its method


def decode_method(payload: bytes) -> tuple[int, Any]:
    """(method id, the method) from a method frame's payload."""
    if payload == _last_publish[0]:
        # Publishers repeat the same exchange and routing key: one bytes comparison
        # instead of a decode (Publish is never changed once made).
        return BASIC_PUBLISH, _last_publish[1]
    try:
        (mid,) = _method_head.unpack_from(payload, 0)
    except struct.error:
        raise AmqpError(FRAME_ERROR, "method frame too short for a method id") from None
    if mid == BASIC_PUBLISH:
        try:
            # reserved-1 (short), exchange, routing-key, bits: mandatory, immediate
            exchange, pos = _shortstr_at(payload, 6)
            routing_key, pos = _shortstr_at(payload, pos)
            bits = payload[pos]
            if pos + 1 != len(payload):
                # Bytes behind the arguments (a short string longer than its length octet
                # said: a name over 255 bytes): not a publish to guess at.
                raise IndexError
        except IndexError:
            raise cannot_decode(mid, payload[4:]) from None
        except UnicodeDecodeError:
            raise AmqpError(SYNTAX_ERROR, "malformed basic.publish", mid) from None
        publish = Publish(exchange, routing_key, bool(bits & 1), bool(bits & 2))
        _last_publish[0] = payload
        _last_publish[1] = publish
        return mid, publish
    if mid == BASIC_ACK:
        if len(payload) != _ACK_PAYLOAD_BYTES:
            raise cannot_decode(mid, payload[4:])
        tag, bits = _u64_bit.unpack_from(payload, 4)
        return mid, Ack(tag, bool(bits & 1))
    cls = C.INDEX_MAPPING.get(mid)
    if cls is None:
        raise AmqpError(
            FRAME_ERROR, f"unknown method class {mid >> 16}, method {mid & 0xFFFF}", mid
        )
    args = payload[4:]
    if not _fills_layout(_layout(mid, cls), args):
        raise cannot_decode(mid, args)
    method = cls()
    try:
        method.unmarshal(args)
    except Exception:  # pamqp raises struct.error, ValueError, TypeError, IndexError...
        raise AmqpError(SYNTAX_ERROR, f"malformed {method.name}", mid) from None
    return mid, method


def _too_large(ftype: int, size: int, frame_max: int) -> AmqpError:
    return AmqpError(
        FRAME_ERROR,
        f"type {ftype}, frame of {size + FRAME_OVERHEAD_BYTES} bytes exceeds "
        f"the negotiated frame_max {frame_max}",
    )


class FrameReader:
    """Splits received bytes into frames: ``feed`` returns (type, channel, payload)s.

    A frame larger than ``frame_max`` or without its end octet raises ``AmqpError``
    (501 FRAME_ERROR); the connection closes then.
    """

    __slots__ = ("_buf", "frame_max")

    def __init__(self, frame_max: int) -> None:
        self._buf = bytearray()
        self.frame_max = frame_max

    @property
    def buffered(self) -> int:
        return len(self._buf)

    def feed(self, data: bytes) -> list[tuple[int, int, bytes]]:
        out: list[tuple[int, int, bytes]] = []
        pos = 0
        buf = self._buf
        if buf:
            # Only the frame begun in an earlier read is completed in the buffer; the
            # rest of this read is parsed in place (a stream of small frames mostly
            # leaves a partial one at the end of every read, and copying every read
            # into the buffer cost a copy of each frame more).
            pos = self._complete(buf, data, out)
            if buf:
                return out
        total = len(data)
        frame_max = self.frame_max
        while total - pos >= 7:
            ftype, channel, size = _frame_head.unpack_from(data, pos)
            if size + FRAME_OVERHEAD_BYTES > frame_max:
                raise _too_large(ftype, size, frame_max)
            end = pos + 7 + size
            if end >= total:
                break
            if data[end] != FRAME_END:
                raise AmqpError(FRAME_ERROR, f"type {ftype}, frame end octet missing")
            out.append((ftype, channel, data[pos + 7 : end]))
            pos = end + 1
        if pos < total:
            buf += data[pos:]
        return out

    def _complete(self, buf: bytearray, data: bytes, out: list[tuple[int, int, bytes]]) -> int:
        """Complete the partial frame in ``buf`` from the front of ``data``: the bytes of
        ``data`` used (all of them if the frame is still incomplete; ``buf`` is then not
        empty)."""
        used = 0
        if len(buf) < 7:
            used = 7 - len(buf)
            buf += data[:used]
            if len(buf) < 7:
                return len(data)
        ftype: int
        channel: int
        size: int
        ftype, channel, size = _frame_head.unpack_from(buf, 0)
        if size + FRAME_OVERHEAD_BYTES > self.frame_max:
            raise _too_large(ftype, size, self.frame_max)
        need = 7 + size + 1 - len(buf)
        buf += data[used : used + need]
        if len(buf) < 7 + size + 1:
            return len(data)
        if buf[7 + size] != FRAME_END:
            raise AmqpError(FRAME_ERROR, f"type {ftype}, frame end octet missing")
        out.append((ftype, channel, bytes(buf[7 : 7 + size])))
        buf.clear()
        return used + need

    def discard(self) -> None:
        self._buf = bytearray()


# -- frames we write -----------------------------------------------------------------------


def _shortstr(value: str) -> bytes:
    raw = value.encode("utf-8")
    if len(raw) > MAX_SHORTSTR_BYTES:
        # A name longer than AMQP can carry (possible from a native client): cut it at a
        # character boundary rather than fail the delivery.
        raw = raw[:MAX_SHORTSTR_BYTES].decode("utf-8", "ignore").encode("utf-8")
    return bytes((len(raw),)) + raw


_content_prefix = struct.Struct(">BHIHHQ")  # header frame head + class, weight, body size


def delivery(
    channel: int,
    method_args: bytes,
    props_raw: bytes,
    body: bytes,
    frame_max: int,
) -> bytes:
    """A whole delivery in one bytes object: the method frame (basic.deliver, get-ok or
    return: ``method_args`` starts with its class and method ids), the content header
    and the body frame(s)."""
    n = len(body)
    parts: list[bytes | memoryview] = [
        _pack_head(FRAME_METHOD, channel, len(method_args)),
        method_args,
        b"\xce",
        _content_prefix.pack(FRAME_HEADER, channel, 12 + len(props_raw), 60, 0, n),
        props_raw,
        b"\xce",
    ]
    chunk = frame_max - FRAME_OVERHEAD_BYTES
    if n <= chunk:
        if n:
            parts += (_pack_head(FRAME_BODY, channel, n), body, b"\xce")
    else:
        view = memoryview(body)
        for start in range(0, n, chunk):
            part = view[start : start + chunk]
            parts += (_pack_head(FRAME_BODY, channel, len(part)), part, b"\xce")
    return b"".join(parts)


_last_address: list[Any] = ["", "", b"\x00\x00"]  # exchange, routing key, their encoding


def deliver_args(
    consumer_tag: bytes, delivery_tag: int, redelivered: bool, exchange: str, routing_key: str
) -> bytes:
    """basic.deliver's ids and arguments: consumer-tag (shortstr, pre-encoded),
    delivery-tag u64, redelivered bit, exchange and routing-key shortstrs."""
    last = _last_address
    if exchange == last[0] and routing_key == last[1]:
        address: bytes = last[2]
    else:
        address = _shortstr(exchange) + _shortstr(routing_key)
        last[0] = exchange
        last[1] = routing_key
        last[2] = address
    return b"".join(
        (
            b"\x00\x3c\x00\x3c",
            consumer_tag,
            _deliver_mid.pack(delivery_tag, 1 if redelivered else 0),
            address,
        )
    )


def shortstr(value: str) -> bytes:
    return _shortstr(value)


def content_frames(channel: int, header: bytes, body: bytes, frame_max: int) -> list[bytes]:
    """The content header frame and the body frames (each within ``frame_max``)."""
    out = [_pack_head(FRAME_HEADER, channel, len(header)) + header + b"\xce"]
    chunk = frame_max - FRAME_OVERHEAD_BYTES
    n = len(body)
    if n <= chunk:
        if n:
            out.append(_pack_head(FRAME_BODY, channel, n) + body + b"\xce")
        return out
    view = memoryview(body)
    for start in range(0, n, chunk):
        part = view[start : start + chunk]
        out.append(_pack_head(FRAME_BODY, channel, len(part)) + bytes(part) + b"\xce")
    return out
