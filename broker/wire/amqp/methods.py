"""The methods the broker sends, encoded by hand (no validation of names: Wharf's names
are checked by the core, and pamqp's constructors would refuse some it allows).

Each function returns a whole method frame: frame header, class id u16, method id u16,
the arguments in the spec's order, the end octet.  Bits are packed into one octet,
lowest bit first.
"""

from __future__ import annotations

import struct
from typing import Any, Final

from .fields import encode_table

_head = struct.Struct(">BHI")
_ids = struct.Struct(">HH")
_u16 = struct.Struct(">H").pack
_u32 = struct.Struct(">I").pack
_u64 = struct.Struct(">Q").pack
FRAME_METHOD: Final = 1

VERSION_MAJOR: Final = 0
VERSION_MINOR: Final = 9


def _frame(channel: int, class_id: int, method_id: int, args: bytes = b"") -> bytes:
    payload = _ids.pack(class_id, method_id) + args
    return _head.pack(FRAME_METHOD, channel, len(payload)) + payload + b"\xce"


def shortstr(value: str) -> bytes:
    raw = value.encode("utf-8")
    if len(raw) > 255:
        raw = raw[:255].decode("utf-8", "ignore").encode("utf-8")
    return bytes((len(raw),)) + raw


def longstr(value: bytes) -> bytes:
    return _u32(len(value)) + value


# -- connection (class 10) -----------------------------------------------------------------


def connection_start(server_properties: dict[str, Any], mechanisms: str, locales: str) -> bytes:
    args = (
        bytes((VERSION_MAJOR, VERSION_MINOR))
        + encode_table(server_properties)
        + longstr(mechanisms.encode())
        + longstr(locales.encode())
    )
    return _frame(0, 10, 10, args)


def connection_tune(channel_max: int, frame_max: int, heartbeat: int) -> bytes:
    return _frame(0, 10, 30, _u16(channel_max) + _u32(frame_max) + _u16(heartbeat))


def connection_open_ok() -> bytes:
    return _frame(0, 10, 41, shortstr(""))


def close(channel: int, code: int, text: str, failing_method: int) -> bytes:
    """connection.close (channel 0) or channel.close: reply code and text, and the class
    and method ids of the method that failed (0, 0 for none)."""
    class_id = 10 if channel == 0 else 20
    args = _u16(code) + shortstr(text) + _u16(failing_method >> 16) + _u16(failing_method & 0xFFFF)
    return _frame(channel, class_id, 40 if class_id == 20 else 50, args)


def connection_close_ok() -> bytes:
    return _frame(0, 10, 51)


def connection_update_secret_ok() -> bytes:
    return _frame(0, 10, 71)


def connection_blocked(reason: str) -> bytes:
    return _frame(0, 10, 60, shortstr(reason))


def connection_unblocked() -> bytes:
    return _frame(0, 10, 61)


# -- channel (class 20) ----------------------------------------------------------------


def channel_open_ok(channel: int) -> bytes:
    return _frame(channel, 20, 11, longstr(b""))


def channel_flow_ok(channel: int, active: bool) -> bytes:
    return _frame(channel, 20, 21, b"\x01" if active else b"\x00")


def channel_close_ok(channel: int) -> bytes:
    return _frame(channel, 20, 41)


# -- exchange (40), queue (50) ---------------------------------------------------------


def exchange_declare_ok(channel: int) -> bytes:
    return _frame(channel, 40, 11)


def exchange_delete_ok(channel: int) -> bytes:
    return _frame(channel, 40, 21)


def exchange_bind_ok(channel: int) -> bytes:
    return _frame(channel, 40, 31)


def exchange_unbind_ok(channel: int) -> bytes:
    return _frame(channel, 40, 51)


def queue_declare_ok(channel: int, queue: str, messages: int, consumers: int) -> bytes:
    return _frame(channel, 50, 11, shortstr(queue) + _u32(messages) + _u32(consumers))


def queue_bind_ok(channel: int) -> bytes:
    return _frame(channel, 50, 21)


def queue_purge_ok(channel: int, messages: int) -> bytes:
    return _frame(channel, 50, 31, _u32(messages))


def queue_delete_ok(channel: int, messages: int) -> bytes:
    return _frame(channel, 50, 41, _u32(messages))


def queue_unbind_ok(channel: int) -> bytes:
    return _frame(channel, 50, 51)


# -- basic (60) ---------------------------------------------------------------------------


def basic_qos_ok(channel: int) -> bytes:
    return _frame(channel, 60, 11)


def basic_consume_ok(channel: int, consumer_tag: str) -> bytes:
    return _frame(channel, 60, 21, shortstr(consumer_tag))


def basic_cancel(channel: int, consumer_tag: str) -> bytes:
    """A consumer cancelled by the broker (consumer_cancel_notify); nowait set."""
    return _frame(channel, 60, 30, shortstr(consumer_tag) + b"\x01")


def basic_cancel_ok(channel: int, consumer_tag: str) -> bytes:
    return _frame(channel, 60, 31, shortstr(consumer_tag))


def basic_return(channel: int, code: int, text: str, exchange: str, routing_key: str) -> bytes:
    args = _u16(code) + shortstr(text) + shortstr(exchange) + shortstr(routing_key)
    return _frame(channel, 60, 50, args)


def basic_get_ok(
    channel: int, tag: int, redelivered: bool, exchange: str, routing_key: str, count: int
) -> bytes:
    args = (
        _u64(tag)
        + (b"\x01" if redelivered else b"\x00")
        + shortstr(exchange)
        + shortstr(routing_key)
        + _u32(count)
    )
    return _frame(channel, 60, 71, args)


def basic_get_empty(channel: int) -> bytes:
    return _frame(channel, 60, 72, shortstr(""))


def basic_ack(channel: int, tag: int, multiple: bool) -> bytes:
    return _frame(channel, 60, 80, _u64(tag) + (b"\x01" if multiple else b"\x00"))


def basic_nack(channel: int, tag: int, multiple: bool, requeue: bool) -> bytes:
    bits = (1 if multiple else 0) | (2 if requeue else 0)
    return _frame(channel, 60, 120, _u64(tag) + bytes((bits,)))


def basic_recover_ok(channel: int) -> bytes:
    return _frame(channel, 60, 111)


# -- confirm (85) -------------------------------------------------------------------------


def confirm_select_ok(channel: int) -> bytes:
    return _frame(channel, 85, 11)


# -- tx (90) ------------------------------------------------------------------------------


def tx_select_ok(channel: int) -> bytes:
    return _frame(channel, 90, 11)


def tx_commit_ok(channel: int) -> bytes:
    return _frame(channel, 90, 21)


def tx_rollback_ok(channel: int) -> bytes:
    return _frame(channel, 90, 31)
