"""AMQP 0-9-1 field tables and arrays <-> Wharf values (msgpack-safe), by hand.

Wharf keeps message headers as msgpack values (the store, the native protocol), so a
decoded table must hold only what msgpack can carry, and a Wharf value must come back
as the AMQP type a RabbitMQ client expects:

| AMQP type (RabbitMQ's letters) | Wharf value | back to AMQP |
| --- | --- | --- |
| ``t`` boolean | bool | ``t`` |
| ``b B s u I i l L`` integers | int | ``I`` (signed 32) or ``l`` (signed 64); beyond: ``S`` |
| ``f`` float, ``d`` double | float | ``d`` |
| ``D`` decimal | ``msgpack.ExtType(DECIMAL_EXT, scale + value)`` | ``D`` |
| ``S`` long string | str (bytes if not UTF-8) | ``S`` (bytes: ``x``) |
| ``x`` byte array | bytes | ``x`` |
| ``T`` timestamp | ``msgpack.Timestamp`` (seconds) | ``T`` |
| ``F`` table, ``A`` array | dict, list | ``F``, ``A`` |
| ``V`` void | None | ``V`` |

Layouts (big-endian): a table is a u32 byte length, then per field a short string name
(u8 length + bytes), a type octet and the value; an array is a u32 byte length, then
values (type octet + value).  A decimal is a u8 scale then a signed 32-bit value; a
timestamp is u64 seconds since the epoch.

Malformed input raises ``FieldError`` (never another exception): the caller closes the
connection with 502 SYNTAX_ERROR as RabbitMQ does.
"""

from __future__ import annotations

import struct
from typing import Any, Final

import msgpack

# The msgpack extension code Wharf uses for an AMQP decimal (5 bytes: scale, i32 value).
DECIMAL_EXT: Final = 1
# Nesting of tables and arrays inside each other, beyond which input is refused (a
# hostile frame must not exhaust the interpreter's recursion limit).
MAX_FIELD_DEPTH: Final = 64
MAX_SHORTSTR_BYTES: Final = 255

_u8 = struct.Struct(">B").unpack_from
_i8 = struct.Struct(">b").unpack_from
_u16 = struct.Struct(">H").unpack_from
_i16 = struct.Struct(">h").unpack_from
_u32 = struct.Struct(">I").unpack_from
_i32 = struct.Struct(">i").unpack_from
_u64 = struct.Struct(">Q").unpack_from
_i64 = struct.Struct(">q").unpack_from
_f32 = struct.Struct(">f").unpack_from
_f64 = struct.Struct(">d").unpack_from
_pack_u32 = struct.Struct(">I").pack
_pack_i32 = struct.Struct(">i").pack
_pack_i64 = struct.Struct(">q").pack
_pack_u64 = struct.Struct(">Q").pack
_pack_f64 = struct.Struct(">d").pack
_pack_decimal = struct.Struct(">Bi").pack
_unpack_decimal = struct.Struct(">Bi").unpack

_I32_MIN: Final = -(2**31)
_I32_MAX: Final = 2**31 - 1
_I64_MIN: Final = -(2**63)
_I64_MAX: Final = 2**63 - 1


class Long(int):
    """An integer sent as a signed 64-bit ``l`` whatever its size: where RabbitMQ's
    clients expect a long (x-death's ``count``), not the narrowest width."""


class FieldError(ValueError):
    """A field table, array or value that cannot be decoded or encoded."""


# -- decoding ----------------------------------------------------------------------------


def decode_table(data: bytes | memoryview, pos: int, depth: int = 0) -> tuple[dict[str, Any], int]:
    """The table at ``pos`` (its u32 length first) and the position after it."""
    try:
        (length,) = _u32(data, pos)
    except struct.error:
        raise FieldError("truncated field table length") from None
    pos += 4
    end = pos + length
    if end > len(data):
        raise FieldError("field table longer than its frame")
    return decode_fields(data, pos, end, depth), end


def decode_fields(data: bytes | memoryview, pos: int, end: int, depth: int = 0) -> dict[str, Any]:
    """The fields of a table between ``pos`` and ``end`` (no length prefix: AMQPLAIN's
    response is a table without one)."""
    if depth > MAX_FIELD_DEPTH:
        raise FieldError(f"field tables nested deeper than {MAX_FIELD_DEPTH}")
    out: dict[str, Any] = {}
    while pos < end:
        n = data[pos]
        pos += 1
        if pos + n > end:
            raise FieldError("field name longer than its table")
        try:
            name = bytes(data[pos : pos + n]).decode("utf-8")
        except UnicodeDecodeError:
            raise FieldError("field name is not UTF-8") from None
        pos += n
        value, pos = _decode_value(data, pos, end, depth)
        out[name] = value
    if pos != end:
        raise FieldError("field value runs past its table")
    return out


def _decode_array(data: bytes | memoryview, pos: int, end: int, depth: int) -> list[Any]:
    if depth > MAX_FIELD_DEPTH:
        raise FieldError(f"field arrays nested deeper than {MAX_FIELD_DEPTH}")
    out: list[Any] = []
    while pos < end:
        value, pos = _decode_value(data, pos, end, depth)
        out.append(value)
    if pos != end:
        raise FieldError("field value runs past its array")
    return out


def _decode_value(data: bytes | memoryview, pos: int, end: int, depth: int) -> tuple[Any, int]:
    if pos >= end:
        raise FieldError("field value missing")
    kind = data[pos]
    pos += 1
    try:
        if kind == 0x53:  # S
            (n,) = _u32(data, pos)
            pos += 4
            if pos + n > end:
                raise FieldError("long string longer than its table")
            raw = bytes(data[pos : pos + n])
            try:
                return raw.decode("utf-8"), pos + n
            except UnicodeDecodeError:
                return raw, pos + n
        if kind == 0x49:  # I
            return _i32(data, pos)[0], _end(pos + 4, end)
        if kind == 0x6C:  # l
            return _i64(data, pos)[0], _end(pos + 8, end)
        if kind == 0x74:  # t
            return data[_end(pos + 1, end) - 1] != 0, pos + 1
        if kind == 0x46:  # F
            (n,) = _u32(data, pos)
            pos += 4
            stop = _end(pos + n, end)
            return decode_fields(data, pos, stop, depth + 1), stop
        if kind == 0x41:  # A
            (n,) = _u32(data, pos)
            pos += 4
            stop = _end(pos + n, end)
            return _decode_array(data, pos, stop, depth + 1), stop
        if kind == 0x62:  # b
            return _i8(data, pos)[0], _end(pos + 1, end)
        if kind == 0x42:  # B
            return _u8(data, pos)[0], _end(pos + 1, end)
        if kind == 0x73 or kind == 0x55:  # s (RabbitMQ), U (the spec): signed 16
            return _i16(data, pos)[0], _end(pos + 2, end)
        if kind == 0x75:  # u
            return _u16(data, pos)[0], _end(pos + 2, end)
        if kind == 0x69:  # i
            return _u32(data, pos)[0], _end(pos + 4, end)
        if kind == 0x4C:  # L
            return _u64(data, pos)[0], _end(pos + 8, end)
        if kind == 0x66:  # f
            return _f32(data, pos)[0], _end(pos + 4, end)
        if kind == 0x64:  # d
            return _f64(data, pos)[0], _end(pos + 8, end)
        if kind == 0x44:  # D
            stop = _end(pos + 5, end)
            return msgpack.ExtType(DECIMAL_EXT, bytes(data[pos:stop])), stop
        if kind == 0x54:  # T
            return msgpack.Timestamp(_u64(data, pos)[0]), _end(pos + 8, end)
        if kind == 0x78:  # x
            (n,) = _u32(data, pos)
            pos += 4
            stop = _end(pos + n, end)
            return bytes(data[pos:stop]), stop
        if kind == 0x56:  # V
            return None, pos
    except struct.error:
        raise FieldError("truncated field value") from None
    raise FieldError(f"unknown field type {chr(kind)!r}")


def _end(stop: int, end: int) -> int:
    if stop > end:
        raise FieldError("field value longer than its table")
    return stop


def decimal_parts(value: msgpack.ExtType) -> tuple[int, int]:
    """(scale, unscaled value) of a decimal kept as ``ExtType(DECIMAL_EXT)``."""
    scale, unscaled = _unpack_decimal(value.data)
    return int(scale), int(unscaled)


# -- encoding ----------------------------------------------------------------------------


def encode_table(table: dict[Any, Any] | None, depth: int = 0) -> bytes:
    """A table with its u32 length prefix (an empty or missing table: 4 zero bytes).

    Never raises: what AMQP cannot carry (a native client's field name over 255 bytes,
    nesting deeper than ``MAX_FIELD_DEPTH``) is cut, so a delivery cannot fail here."""
    if not table or depth > MAX_FIELD_DEPTH:
        return b"\x00\x00\x00\x00"
    parts: list[bytes] = []
    for key, value in table.items():
        name = (key if isinstance(key, str) else str(key)).encode("utf-8")
        if len(name) > MAX_SHORTSTR_BYTES:
            name = name[:MAX_SHORTSTR_BYTES].decode("utf-8", "ignore").encode("utf-8")
        parts.append(bytes((len(name),)))
        parts.append(name)
        parts.append(encode_value(value, depth))
    body = b"".join(parts)
    return _pack_u32(len(body)) + body


def encode_value(value: Any, depth: int = 0) -> bytes:
    """One typed value (its type octet first)."""
    if isinstance(value, str):
        raw = value.encode("utf-8")
        return b"S" + _pack_u32(len(raw)) + raw
    if isinstance(value, bool):
        return b"t\x01" if value else b"t\x00"
    if isinstance(value, int):
        if type(value) is Long and _I64_MIN <= value <= _I64_MAX:
            return b"l" + _pack_i64(value)
        if _I32_MIN <= value <= _I32_MAX:
            return b"I" + _pack_i32(value)
        if _I64_MIN <= value <= _I64_MAX:
            return b"l" + _pack_i64(value)
        raw = str(value).encode()  # beyond AMQP's integers: its decimal digits
        return b"S" + _pack_u32(len(raw)) + raw
    if isinstance(value, float):
        return b"d" + _pack_f64(value)
    if isinstance(value, (bytes, bytearray, memoryview)):
        raw = bytes(value)
        return b"x" + _pack_u32(len(raw)) + raw
    if value is None:
        return b"V"
    if isinstance(value, dict):
        return b"F" + encode_table(value, depth + 1)
    if isinstance(value, msgpack.ExtType):  # before tuple: ExtType is a namedtuple
        data = bytes(value.data)
        if value.code == DECIMAL_EXT and len(data) == 5:
            return b"D" + data
        return b"x" + _pack_u32(len(data)) + data
    if isinstance(value, (list, tuple)):
        if depth > MAX_FIELD_DEPTH:
            return b"A\x00\x00\x00\x00"
        body = b"".join(encode_value(v, depth + 1) for v in value)
        return b"A" + _pack_u32(len(body)) + body
    if isinstance(value, msgpack.Timestamp):
        seconds = value.seconds
        return b"T" + _pack_u64(seconds if 0 <= seconds < 2**64 else 0)
    raw = str(value).encode("utf-8")
    return b"S" + _pack_u32(len(raw)) + raw


def make_decimal(scale: int, unscaled: int) -> msgpack.ExtType:
    """A decimal as Wharf keeps it (what a native client sends for an AMQP ``D``)."""
    return msgpack.ExtType(DECIMAL_EXT, _pack_decimal(scale, unscaled))
