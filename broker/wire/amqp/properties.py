"""Basic properties of a content header <-> Wharf message properties.

One AMQP property maps to one Wharf property (docs/amqp.md has the table):

| AMQP (flag bit) | Wharf | conversion |
| --- | --- | --- |
| content-type (15) | content_type | shortstr <-> str |
| content-encoding (14) | content_encoding | shortstr <-> str |
| headers (13) | headers | field table <-> map (fields.py) |
| delivery-mode (12) | persistent | 2 <-> True, anything else <-> False |
| priority (11) | priority | octet <-> int |
| correlation-id (10) | correlation_id | shortstr <-> str |
| reply-to (9) | reply_to | shortstr <-> str |
| expiration (8) | expiration | decimal digits (ms) <-> int |
| message-id (7) | message_id | shortstr <-> str |
| timestamp (6) | timestamp | u64 seconds <-> int epoch ms (x 1000, // 1000) |
| type (5) | type | shortstr <-> str |
| user-id (4) | user_id | shortstr <-> str (checked by the core: 406) |
| app-id (3) | app_id | shortstr <-> str |
| cluster-id (2) | cluster_id | shortstr <-> str (kept, unused) |

Content header payload (big-endian): class id u16 (60), weight u16 (0), body size u64,
property flags u16 (bit 15 first; bit 0 would announce a further flags word, which
RabbitMQ never sends for basic), then the present properties in flag order.
"""

from __future__ import annotations

import struct
from typing import Any, Final

import msgpack

from .fields import FieldError, Long, decode_table, encode_table

BASIC_CLASS: Final = 60
MAX_SHORTSTR_BYTES: Final = 255
MS_PER_S: Final = 1000

_header_prefix = struct.Struct(">HHQH")
_u64 = struct.Struct(">Q")

# (flag bit, Wharf name) of the short-string properties.
_SHORTSTR: Final[dict[int, str]] = {
    15: "content_type",
    14: "content_encoding",
    10: "correlation_id",
    9: "reply_to",
    7: "message_id",
    5: "type",
    4: "user_id",
    3: "app_id",
    2: "cluster_id",
}
_FLAG_HEADERS: Final = 13
_FLAG_DELIVERY_MODE: Final = 12
_FLAG_PRIORITY: Final = 11
_FLAG_EXPIRATION: Final = 8
_FLAG_TIMESTAMP: Final = 6
PERSISTENT_DELIVERY_MODE: Final = 2
TRANSIENT_DELIVERY_MODE: Final = 1


class PropertyError(ValueError):
    """A property value RabbitMQ refuses with 406 (e.g. an expiration that is not a
    non-negative integer)."""


def parse_content_header(payload: bytes) -> tuple[int, int, bytes]:
    """(class id, body size, the raw property bytes: flags onwards)."""
    try:
        class_id, _weight, size, _flags = _header_prefix.unpack_from(payload, 0)
    except struct.error:
        raise FieldError("truncated content header") from None
    return class_id, size, payload[12:]


def decode_properties(raw: bytes) -> dict[str, Any] | None:
    """Wharf properties from the flags word and property list (None: none set)."""
    if len(raw) < 2:
        raise FieldError("truncated property flags")
    flags = (raw[0] << 8) | raw[1]
    if not flags:
        return None
    if flags & 1:
        raise FieldError("more than one property flags word")
    props: dict[str, Any] = {}
    pos = 2
    end = len(raw)
    try:
        for bit in range(15, 1, -1):
            if not flags & (1 << bit):
                continue
            name = _SHORTSTR.get(bit)
            if name is not None:
                n = raw[pos]
                pos += 1
                if pos + n > end:
                    raise FieldError("short string longer than its frame")
                try:
                    props[name] = raw[pos : pos + n].decode("utf-8")
                except UnicodeDecodeError:
                    raise FieldError(f"property {name} is not UTF-8") from None
                pos += n
            elif bit == _FLAG_HEADERS:
                props["headers"], pos = decode_table(raw, pos)
            elif bit == _FLAG_DELIVERY_MODE:
                props["persistent"] = raw[pos] == PERSISTENT_DELIVERY_MODE
                pos += 1
            elif bit == _FLAG_PRIORITY:
                props["priority"] = raw[pos]
                pos += 1
            elif bit == _FLAG_EXPIRATION:
                n = raw[pos]
                pos += 1
                if pos + n > end:
                    raise FieldError("short string longer than its frame")
                props["expiration"] = parse_expiration(raw[pos : pos + n])
                pos += n
            elif bit == _FLAG_TIMESTAMP:
                (seconds,) = _u64.unpack_from(raw, pos)
                props["timestamp"] = seconds * MS_PER_S
                pos += 8
    except (IndexError, struct.error):
        raise FieldError("truncated basic properties") from None
    return props


def parse_expiration(raw: bytes) -> int:
    """RabbitMQ's rule: the expiration is a non-negative integer in decimal digits."""
    text = raw.decode("utf-8", "replace")
    stripped = text.lstrip("-")
    if not stripped.isdigit() or not stripped.isascii():
        raise PropertyError(f"invalid expiration '{text}': no_integer")
    value = int(text)
    if value < 0:
        raise PropertyError(f"invalid expiration '{text}': {{value_negative,{value}}}")
    return value


def _amqp_death(entry: Any) -> Any:
    """An x-death entry as RabbitMQ writes it: ``time`` a timestamp (Wharf keeps epoch
    ms), ``count`` a long, ``original-expiration`` the expiration property's string of
    milliseconds (Wharf keeps an integer)."""
    if not isinstance(entry, dict):
        return entry
    out = dict(entry)
    count = out.get("count")
    if type(count) is int:
        out["count"] = Long(count)
    t = out.get("time")
    if type(t) is int and t >= 0:
        out["time"] = msgpack.Timestamp(t // MS_PER_S)
    expiration = out.get("original-expiration")
    if type(expiration) is int:
        out["original-expiration"] = str(expiration)
    return out


def _shortstr(value: Any) -> bytes:
    raw = value.encode("utf-8") if isinstance(value, str) else str(value).encode("utf-8")
    if len(raw) > MAX_SHORTSTR_BYTES:
        # Longer than AMQP can carry (a native publisher's property): cut at a character.
        raw = raw[:MAX_SHORTSTR_BYTES].decode("utf-8", "ignore").encode("utf-8")
    return bytes((len(raw),)) + raw


def encode_properties(props: dict[str, Any] | None) -> bytes:
    """The flags word and property list for Wharf properties (unknown keys are left
    out: AMQP has no place for them)."""
    if not props:
        return b"\x00\x00"
    flags = 0
    parts: list[bytes] = []
    get = props.get
    v = get("content_type")
    if v is not None:
        flags |= 1 << 15
        parts.append(_shortstr(v))
    v = get("content_encoding")
    if v is not None:
        flags |= 1 << 14
        parts.append(_shortstr(v))
    v = get("headers")
    if isinstance(v, dict):
        flags |= 1 << 13
        deaths = v.get("x-death")
        if isinstance(deaths, list) and deaths:
            v = {**v, "x-death": [_amqp_death(d) for d in deaths]}
        parts.append(encode_table(v))
    v = get("persistent")
    if v is not None:
        flags |= 1 << 12
        parts.append(b"\x02" if v is True else b"\x01")
    v = get("priority")
    if type(v) is int and 0 <= v <= 255:
        flags |= 1 << 11
        parts.append(bytes((v,)))
    v = get("correlation_id")
    if v is not None:
        flags |= 1 << 10
        parts.append(_shortstr(v))
    v = get("reply_to")
    if v is not None:
        flags |= 1 << 9
        parts.append(_shortstr(v))
    v = get("expiration")
    if type(v) is int:
        flags |= 1 << 8
        parts.append(_shortstr(str(v)))
    v = get("message_id")
    if v is not None:
        flags |= 1 << 7
        parts.append(_shortstr(v))
    v = get("timestamp")
    if type(v) is int and 0 <= v // MS_PER_S < 2**64:
        flags |= 1 << 6
        parts.append(_u64.pack(v // MS_PER_S))
    for bit, name in ((5, "type"), (4, "user_id"), (3, "app_id"), (2, "cluster_id")):
        v = get(name)
        if v is not None:
            flags |= 1 << bit
            parts.append(_shortstr(v))
    return bytes((flags >> 8, flags & 0xFF)) + b"".join(parts)


def content_header(props_raw: bytes, body_size: int) -> bytes:
    """A basic content header payload (class 60, weight 0) around encoded properties."""
    return struct.pack(">HHQ", BASIC_CLASS, 0, body_size) + props_raw
