"""The AMQP adapter's pure parts: field tables, basic properties, the frame reader.

pika's own codec (pika.data, pika.spec) is the independent reference: what pika writes,
Wharf reads as the same values, and what Wharf writes, pika reads back unchanged.
"""

from __future__ import annotations

import datetime
import decimal
import struct
from typing import Any

import msgpack
import pika.data
import pika.spec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pamqp import commands as pamqp_commands
from pamqp import decode as pamqp_decode

from wharf.broker.wire.amqp.errors import FRAME_ERROR, AmqpError
from wharf.broker.wire.amqp.fields import (
    MAX_FIELD_DEPTH,
    FieldError,
    decimal_parts,
    decode_table,
    encode_table,
    make_decimal,
)
from wharf.broker.wire.amqp.frames import FrameReader, content_frames, decode_method
from wharf.broker.wire.amqp.properties import (
    PropertyError,
    decode_properties,
    encode_properties,
    parse_expiration,
)

EXAMPLES = 300


def pika_table(table: dict[str, Any]) -> bytes:
    pieces: list[bytes] = []
    pika.data.encode_table(pieces, table)
    return b"".join(pieces)


def pika_decode(raw: bytes) -> dict[str, Any]:
    table, _ = pika.data.decode_table(raw, 0)
    return dict(table)


def naive(value: Any) -> Any:
    if isinstance(value, datetime.datetime) and value.tzinfo is not None:
        return value.astimezone(datetime.UTC).replace(tzinfo=None)
    return value


# -- field tables --------------------------------------------------------------------------


def test_every_field_type_pika_writes_reads_as_a_wharf_value() -> None:
    when = datetime.datetime(2026, 12, 6, 17, 0, 0)
    raw = pika_table(
        {
            "str": "héllo",
            "int": 7,
            "long": 2**40,
            "neg": -5,
            "true": True,
            "void": None,
            "bytes": b"\x00\xff",
            "array": [1, "a", [None]],
            "table": {"k": {"deep": 1}},
            "dec": decimal.Decimal("-12.345"),
            "ts": when,
        }
    )
    table, end = decode_table(raw, 0)
    assert end == len(raw)
    assert table["str"] == "héllo"
    assert table["int"] == 7 and table["long"] == 2**40 and table["neg"] == -5
    assert table["true"] is True and table["void"] is None  # pika cannot write floats
    assert table["bytes"] == b"\x00\xff"
    assert table["array"] == [1, "a", [None]]
    assert table["table"] == {"k": {"deep": 1}}
    assert decimal_parts(table["dec"]) == (3, -12345)
    assert table["ts"] == msgpack.Timestamp(int(when.replace(tzinfo=datetime.UTC).timestamp()))
    # msgpack-safe: the store and the native protocol can carry it as it is.
    assert msgpack.unpackb(msgpack.packb(table)) == table


def test_wharf_values_read_back_in_pika_unchanged() -> None:
    when = datetime.datetime(2026, 12, 6, 17, 0, 0)
    seconds = int(when.replace(tzinfo=datetime.UTC).timestamp())
    table = {
        "str": "héllo",
        "int": -(2**31),
        "long": 2**62,
        "float": 0.1,
        "yes": False,
        "void": None,
        "bytes": b"\x01\x02",
        "array": [1, [2, {"x": "y"}]],
        "dec": make_decimal(2, 1234),
        "ts": msgpack.Timestamp(seconds),
    }
    back = pika_decode(encode_table(table))
    assert back["str"] == "héllo" and back["int"] == -(2**31) and back["long"] == 2**62
    assert back["yes"] is False and back["void"] is None
    # pika reads a double as an integer (its bug); pamqp (aio-pika's codec) reads it right.
    assert pamqp_decode.field_table(encode_table(table))[1]["float"] == 0.1
    assert back["bytes"] == b"\x01\x02"
    assert back["array"] == [1, [2, {"x": "y"}]]
    assert back["dec"] == decimal.Decimal("12.34")
    assert naive(back["ts"]) == when


@pytest.mark.parametrize(
    ("kind", "payload", "value"),
    [
        (b"b", b"\xff", -1),
        (b"B", b"\xff", 255),
        (b"s", b"\xff\xfe", -2),
        (b"u", b"\xff\xfe", 65534),
        (b"I", b"\xff\xff\xff\xfe", -2),
        (b"i", b"\xff\xff\xff\xfe", 2**32 - 2),
        (b"l", b"\xff" * 8, -1),
        (b"f", struct.pack(">f", 1.5), 1.5),
        (b"d", struct.pack(">d", 1.5), 1.5),
        (b"t", b"\x01", True),
        (b"V", b"", None),
        (b"S", b"\x00\x00\x00\x02\xc3\xa9", "é"),
        (b"S", b"\x00\x00\x00\x01\xff", b"\xff"),  # not UTF-8: kept as bytes
        (b"x", b"\x00\x00\x00\x01\xff", b"\xff"),
    ],
)
def test_each_field_type_decodes(kind: bytes, payload: bytes, value: Any) -> None:
    entry = b"\x01k" + kind + payload
    table, _ = decode_table(struct.pack(">I", len(entry)) + entry, 0)
    assert table == {"k": value}


@pytest.mark.parametrize(
    "raw",
    [
        b"\x00\x00\x00\x05\x01kZ\x00\x00",  # unknown type
        b"\x00\x00\x00\x09\x01kS\x00\x00\x00\x09ab",  # string longer than the table
        b"\x00\x00\x00\x10\x01kI",  # table longer than the data
        b"\x00\x00\x00\x03\x05abc",  # name longer than the table
        b"\x00\x00\x00\x02\x01k",  # value missing
        b"\x00\x00",  # length truncated
    ],
)
def test_malformed_tables_raise_field_error(raw: bytes) -> None:
    with pytest.raises(FieldError):
        decode_table(raw, 0)


def test_nesting_beyond_the_limit_is_refused() -> None:
    inner = b""
    for _ in range(MAX_FIELD_DEPTH + 2):
        entry = b"\x01kF" + struct.pack(">I", len(inner)) + inner
        inner = entry
    with pytest.raises(FieldError):
        decode_table(struct.pack(">I", len(inner)) + inner, 0)


@settings(max_examples=EXAMPLES, deadline=None)
@given(st.binary(max_size=200))
def test_any_bytes_decode_to_a_table_or_field_error(raw: bytes) -> None:
    try:
        decode_table(struct.pack(">I", len(raw)) + raw, 0)
    except FieldError:
        pass


wharf_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**63 - 1)
    | st.floats(allow_nan=False)
    | st.text(max_size=20)
    | st.binary(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4)
    ),
    max_leaves=20,
)


@settings(max_examples=EXAMPLES, deadline=None)
@given(st.dictionaries(st.text(max_size=10), wharf_values, max_size=6))
def test_wharf_tables_round_trip(table: dict[str, Any]) -> None:
    raw = encode_table(table)
    back, end = decode_table(raw, 0)
    assert end == len(raw)
    assert back == table


# -- basic properties ------------------------------------------------------------------------


def test_pika_properties_map_to_wharf_properties_and_back() -> None:
    props = pika.spec.BasicProperties(
        content_type="application/json",
        content_encoding="gzip",
        headers={"x": 1},
        delivery_mode=2,
        priority=9,
        correlation_id="c",
        reply_to="r",
        expiration="1500",
        message_id="m",
        timestamp=1_700_000_000,
        type="t",
        user_id="guest",
        app_id="a",
        cluster_id="cl",
    )
    raw = b"".join(props.encode())
    wharf_props = decode_properties(raw)
    assert wharf_props == {
        "content_type": "application/json",
        "content_encoding": "gzip",
        "headers": {"x": 1},
        "persistent": True,
        "priority": 9,
        "correlation_id": "c",
        "reply_to": "r",
        "expiration": 1500,
        "message_id": "m",
        "timestamp": 1_700_000_000_000,
        "type": "t",
        "user_id": "guest",
        "app_id": "a",
        "cluster_id": "cl",
    }
    back = pika.spec.BasicProperties()
    back.decode(encode_properties(wharf_props))
    for name in (
        "content_type", "content_encoding", "headers", "delivery_mode", "priority",
        "correlation_id", "reply_to", "expiration", "message_id", "timestamp", "type",
        "user_id", "app_id", "cluster_id",
    ):  # fmt: skip
        assert getattr(back, name) == getattr(props, name), name


def test_x_death_reads_as_rabbitmq_writes_it() -> None:
    deaths = [{"queue": "q", "reason": "rejected", "count": 2, "time": 1_700_000_000_500}]
    back = pika.spec.BasicProperties()
    back.decode(encode_properties({"headers": {"x-death": deaths}}))
    (entry,) = back.headers["x-death"]
    assert entry["count"] == 2 and entry["reason"] == "rejected"
    assert naive(entry["time"]) == datetime.datetime(2023, 11, 14, 22, 13, 20)


def test_x_death_original_expiration_reads_as_a_string() -> None:
    # Wharf keeps the expiration in integer ms; RabbitMQ copies the property's text.
    deaths = [{"queue": "q", "reason": "expired", "count": 1, "original-expiration": 500}]
    back = pika.spec.BasicProperties()
    back.decode(encode_properties({"headers": {"x-death": deaths}}))
    assert back.headers["x-death"][0]["original-expiration"] == "500"


def test_no_properties() -> None:
    assert decode_properties(b"\x00\x00") is None
    assert encode_properties(None) == b"\x00\x00"
    assert decode_properties(encode_properties({"persistent": False})) == {"persistent": False}


@pytest.mark.parametrize(("text", "ok"), [("0", 0), ("60000", 60000), ("-1", None), ("x", None)])
def test_expiration_as_rabbitmq_reads_it(text: str, ok: int | None) -> None:
    if ok is None:
        with pytest.raises(PropertyError):
            parse_expiration(text.encode())
    else:
        assert parse_expiration(text.encode()) == ok


@pytest.mark.parametrize(
    "raw", [b"\x00", b"\x80\x00", b"\x80\x00\x09ab", b"\x20\x00\x00\x00\x00\x09"]
)
def test_truncated_properties_raise_field_error(raw: bytes) -> None:
    with pytest.raises(FieldError):
        decode_properties(raw)


# -- the frame reader -------------------------------------------------------------------------


def frame(ftype: int, channel: int, payload: bytes) -> bytes:
    return struct.pack(">BHI", ftype, channel, len(payload)) + payload + b"\xce"


frames_strategy = st.lists(
    st.tuples(st.sampled_from([1, 2, 3, 8]), st.integers(0, 65535), st.binary(max_size=300)),
    max_size=8,
)


@settings(max_examples=EXAMPLES, deadline=None)
@given(frames_strategy, st.lists(st.integers(1, 400), max_size=20))
def test_frames_come_out_whole_at_any_split(
    frames: list[tuple[int, int, bytes]], cuts: list[int]
) -> None:
    stream = b"".join(frame(*f) for f in frames)
    reader = FrameReader(4096)
    out: list[tuple[int, int, bytes]] = []
    pos = 0
    for cut in cuts:
        out += reader.feed(stream[pos : pos + cut])
        pos += cut
    out += reader.feed(stream[pos:])
    assert out == frames
    assert reader.buffered == 0


@settings(max_examples=EXAMPLES, deadline=None)
@given(frames_strategy, st.lists(st.integers(1, 400), max_size=20))
def test_the_reader_buffers_at_most_the_frame_a_read_ends_in(
    frames: list[tuple[int, int, bytes]], cuts: list[int]
) -> None:
    stream = b"".join(frame(*f) for f in frames)
    longest = max((len(f[2]) + 8 for f in frames), default=0)
    reader = FrameReader(4096)
    pos = 0
    for cut in cuts:
        reader.feed(stream[pos : pos + cut])
        pos += cut
        assert reader.buffered < max(longest, 1)


@settings(max_examples=EXAMPLES, deadline=None)
@given(st.binary(max_size=600), st.lists(st.integers(1, 100), max_size=10))
def test_any_bytes_end_in_frames_or_a_frame_error(data: bytes, cuts: list[int]) -> None:
    reader = FrameReader(4096)
    pos = 0
    try:
        for cut in [*cuts, len(data)]:
            reader.feed(data[pos : pos + cut])
            pos += cut
    except AmqpError as exc:
        assert exc.code == FRAME_ERROR


def test_a_frame_over_frame_max_is_refused_before_it_arrives() -> None:
    reader = FrameReader(4096)
    with pytest.raises(AmqpError) as info:
        reader.feed(struct.pack(">BHI", 3, 1, 5000))  # only the header
    assert info.value.code == FRAME_ERROR


def test_a_missing_frame_end_is_refused() -> None:
    with pytest.raises(AmqpError) as info:
        FrameReader(4096).feed(struct.pack(">BHI", 3, 1, 2) + b"ab\x00")
    assert info.value.code == FRAME_ERROR


def test_bodies_are_split_at_frame_max() -> None:
    out = content_frames(1, b"h" * 14, b"x" * 10_000, 4096)
    reader = FrameReader(4096)
    parsed = reader.feed(b"".join(out))
    assert [f[0] for f in parsed] == [2, 3, 3, 3]
    assert b"".join(f[2] for f in parsed[1:]) == b"x" * 10_000
    assert all(len(f) <= 4096 for f in out)


# -- method arguments: exactly the method's layout ---------------------------------------

_SAMPLE_BY_TYPE: dict[str, Any] = {
    "shortstr": "s",
    "longstr": "long",
    "table": {"k": 1, "t": {"n": "v"}},
    "octet": 1,
    "short": 2,
    "long": 3,
    "longlong": 4,
    "bit": True,
}

# Values pamqp's marshal insists on (deprecated fields).
_FIXED_BY_NAME: dict[str, Any] = {
    "capabilities": "",
    "insist": False,
    "known_hosts": "",
    "out_of_band": "0",
    "channel_id": "0",
    "cluster_id": "",
    "ticket": 0,
}


def _every_method() -> list[tuple[int, bytes]]:
    """Each method pamqp knows, every argument set, as (method id, argument bytes)."""
    out = []
    for mid, cls in sorted(pamqp_commands.INDEX_MAPPING.items()):
        method = cls.__new__(cls)
        for name in cls.__slots__:
            setattr(method, name, _FIXED_BY_NAME.get(name, _SAMPLE_BY_TYPE[cls.amqp_type(name)]))
        out.append((mid, method.marshal()))
    return out


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # pamqp's basic.recover-async
@pytest.mark.parametrize(("mid", "args"), _every_method())
def test_every_method_decodes_and_a_byte_more_or_less_is_cannot_decode(
    mid: int, args: bytes
) -> None:
    """RabbitMQ matches a method's whole argument payload: one byte short of it or one
    behind it is 501 `cannot decode <<...>>` naming the method; the exact layout decodes."""
    got_mid, _ = decode_method(struct.pack(">I", mid) + args)
    assert got_mid == mid
    for bad in (args + b"\x07", args[:-1]) if args else (b"\x07",):
        with pytest.raises(AmqpError) as info:
            decode_method(struct.pack(">I", mid) + bad)
        shown = ",".join(str(b) for b in bad)
        assert (info.value.code, info.value.method) == (FRAME_ERROR, mid)
        assert info.value.text == f"cannot decode <<{shown}>>"
