"""Hypothesis on the codec: whatever bytes arrive, in whatever split, the decoder ends in
frames or in one of its three connection-fatal errors, and parse() ends in a frame or a
request-level error.  Never any other exception: a bad client must not crash the broker.
"""

from __future__ import annotations

import os
from typing import Any

import msgpack
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from wharf.protocol import frames as F
from wharf.protocol.codec import DEFAULT_MAX_FRAME_BYTES, FrameDecoder, encode, encode_array
from wharf.protocol.errors import (
    FrameError,
    FrameTooLarge,
    NotImplementedByBroker,
    ProtocolMismatch,
    ProtocolSyntaxError,
    WharfError,
)

DECODER_ERRORS = (FrameError, FrameTooLarge, ProtocolMismatch)
PARSE_ERRORS = (ProtocolSyntaxError, NotImplementedByBroker)

# WHARF_FUZZ_EXAMPLES=20000 for a long run; the default keeps `make test` fast.
FUZZ = settings(
    max_examples=int(os.environ.get("WHARF_FUZZ_EXAMPLES", "300")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

# -- strategies ------------------------------------------------------------------------

INTS = st.integers(min_value=-(2**63), max_value=2**64 - 1)
SMALL_TEXT = st.text(max_size=20)
SMALL_BIN = st.binary(max_size=64)
MSGPACK_LEAVES = (
    st.none() | st.booleans() | INTS | st.floats(allow_nan=False) | SMALL_TEXT | SMALL_BIN
)
MSGPACK_VALUES = st.recursive(
    MSGPACK_LEAVES,
    lambda children: (
        st.lists(children, max_size=6) | st.dictionaries(st.text(max_size=8), children, max_size=5)
    ),
    max_leaves=10,
)
MAPS = st.dictionaries(st.text(max_size=8), MSGPACK_VALUES, max_size=5)
# Mostly known frame types, sometimes unknown ones.
FRAME_TYPES = st.sampled_from(sorted(F.SPECS)) | st.integers(-3, 300) | INTS
MAX_FRAME = st.sampled_from([8, 64, 1024, DEFAULT_MAX_FRAME_BYTES])

DELIVERY = st.tuples(INTS, st.booleans(), INTS, SMALL_TEXT, SMALL_TEXT, st.none() | MAPS, SMALL_BIN)
_BY_FIELD: dict[tuple[type, str], st.SearchStrategy[Any]] = {
    (F.Hello, "mechanisms"): st.lists(SMALL_TEXT, max_size=4),
    (F.PublishMany, "bodies"): st.lists(SMALL_BIN, max_size=6),
    (F.Deliver, "deliveries"): st.lists(DELIVERY, max_size=4),
    (F.GetOk, "delivery"): st.none() | DELIVERY,
    (F.AckMany, "delivery_tags"): st.lists(INTS, max_size=8),
}
_BY_TYPES: dict[tuple[type, ...], st.SearchStrategy[Any]] = {
    (int,): INTS,
    (str,): SMALL_TEXT,
    (bool,): st.booleans(),
    (bytes,): st.binary(max_size=256),
    (dict,): MAPS,
    (dict, type(None)): st.none() | MAPS,
    (list, tuple): st.lists(MSGPACK_VALUES, max_size=4),
    (str, type(None)): st.none() | SMALL_TEXT,
    (int, type(None)): st.none() | INTS,
    (list, tuple, type(None)): st.none() | st.lists(MSGPACK_VALUES, max_size=4),
}


def _frame_strategy(spec: Any) -> st.SearchStrategy[F.Frame]:
    fields = [
        _BY_FIELD[spec.cls, name] if (spec.cls, name) in _BY_FIELD else _BY_TYPES[allowed]
        for name, allowed in zip(spec.cls._fields, spec.types, strict=True)
    ]
    return st.tuples(*fields).map(spec.cls._make)


# A well-formed frame of any known type, with arbitrary field values.
TYPED_FRAMES: st.SearchStrategy[F.Frame] = st.one_of(
    [_frame_strategy(spec) for spec in F.SPECS.values()]
)


@st.composite
def frame_arrays(draw: st.DrawFn) -> list[Any]:
    """[type, request_id, ...] with arbitrary msgpack fields: valid framing, any content."""
    return [draw(FRAME_TYPES), draw(INTS), *draw(st.lists(MSGPACK_VALUES, max_size=7))]


@st.composite
def splits(draw: st.DrawFn, data: bytes) -> list[bytes]:
    """``data`` cut into chunks at arbitrary points (empty chunks included)."""
    if not data:
        return [data]
    cuts = sorted(draw(st.lists(st.integers(0, len(data)), max_size=12)))
    chunks, start = [], 0
    for cut in [*cuts, len(data)]:
        chunks.append(data[start:cut])
        start = cut
    return chunks


@st.composite
def mutations(draw: st.DrawFn, data: bytes) -> bytes:
    """``data`` with a few bytes flipped, inserted, deleted, duplicated or cut off."""
    buf = bytearray(data)
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["flip", "set", "insert", "delete", "truncate", "duplicate"]))
        pos = draw(st.integers(0, max(len(buf) - 1, 0)))
        if op == "flip" and buf:
            buf[pos] ^= 1 << draw(st.integers(0, 7))
        elif op == "set" and buf:
            buf[pos] = draw(st.sampled_from([0x00, 0xC0, 0xC1, 0xC4, 0xD9, 0xDC, 0xDD, 0xFF]))
        elif op == "insert":
            buf[pos:pos] = draw(st.binary(min_size=1, max_size=8))
        elif op == "delete" and buf:
            del buf[pos : pos + draw(st.integers(1, 8))]
        elif op == "truncate":
            del buf[pos:]
        elif op == "duplicate":
            buf[pos:pos] = buf[pos : pos + draw(st.integers(1, 16))]
    return bytes(buf)


# -- helpers -----------------------------------------------------------------------------


def decode_all(decoder: FrameDecoder, chunks: list[bytes]) -> tuple[list[Any], WharfError | None]:
    """Feed every chunk; return the frames and the decoder's error, if it raised one."""
    raws: list[Any] = []
    for chunk in chunks:
        try:
            raws.extend(decoder.feed(chunk))
        except WharfError as exc:
            assert isinstance(exc, DECODER_ERRORS), repr(exc)
            assert exc.fatal
            assert decoder.closed
            assert decoder.feed(b"\x00\x00\x00\x03\x92\x04\x00") == []
            return raws, exc
    return raws, None


def check_raw(raw: Any) -> None:
    """What the codec hands out is an array starting with two ints; parse() handles it."""
    assert isinstance(raw, (list, tuple))
    assert len(raw) >= 2
    assert type(raw[0]) is int
    assert type(raw[1]) is int
    parse_or_error(raw)


def parse_or_error(raw: Any) -> None:
    try:
        frame = F.parse(raw)
    except WharfError as exc:
        assert isinstance(exc, PARSE_ERRORS), repr(exc)
        assert not exc.fatal
        assert exc.details["request_id"] == raw[1]
        assert exc.details["frame_type"] == raw[0]
    else:
        assert F.TYPE_OF[type(frame)] == raw[0]


def norm(value: Any) -> Any:
    if isinstance(value, (list, tuple)):
        return [norm(v) for v in value]
    if isinstance(value, dict):
        return {k: norm(v) for k, v in value.items()}
    return value


# -- arbitrary bytes ----------------------------------------------------------------------


@FUZZ
@given(data=st.data(), payload=st.binary(max_size=2048), max_frame=MAX_FRAME, lists=st.booleans())
def test_arbitrary_bytes(data: st.DataObject, payload: bytes, max_frame: int, lists: bool) -> None:
    decoder = FrameDecoder(max_frame, use_list=lists)
    raws, _ = decode_all(decoder, data.draw(splits(payload)))
    for raw in raws:
        check_raw(raw)


@FUZZ
@given(data=st.data(), payload=st.binary(max_size=2048), max_frame=MAX_FRAME)
def test_arbitrary_bytes_after_the_handshake(
    data: st.DataObject, payload: bytes, max_frame: int
) -> None:
    decoder = FrameDecoder(max_frame, expect_handshake=True)
    raws, error = decode_all(decoder, data.draw(splits(F.HANDSHAKE + payload)))
    assert not isinstance(error, ProtocolMismatch)
    for raw in raws:
        check_raw(raw)


@FUZZ
@given(
    data=st.data(),
    prefix=st.sampled_from([F.HANDSHAKE[:k] for k in range(F.HANDSHAKE_BYTES + 1)]),
    rest=st.binary(max_size=64),
)
def test_arbitrary_bytes_where_a_handshake_is_expected(
    data: st.DataObject, prefix: bytes, rest: bytes
) -> None:
    payload = prefix + rest
    raws, error = decode_all(FrameDecoder(expect_handshake=True), data.draw(splits(payload)))
    if not F.MAGIC.startswith(payload[: len(F.MAGIC)]):
        assert isinstance(error, ProtocolMismatch)
        assert raws == []
    elif len(payload) < F.HANDSHAKE_BYTES:
        assert (raws, error) == ([], None)
    elif payload[len(F.MAGIC)] != F.PROTOCOL_VERSION:
        assert isinstance(error, ProtocolMismatch)
        assert raws == []
    else:
        assert not isinstance(error, ProtocolMismatch)
    for raw in raws:
        check_raw(raw)


@FUZZ
@given(
    data=st.data(),
    payloads=st.lists(st.binary(max_size=200) | MSGPACK_VALUES.map(msgpack.packb), max_size=6),
)
def test_length_prefixed_arbitrary_payloads(data: st.DataObject, payloads: list[bytes]) -> None:
    # Correct lengths, so the payload checks are reached far more often than with random bytes.
    stream = b"".join(len(p).to_bytes(4, "big") + p for p in payloads)
    raws, _ = decode_all(FrameDecoder(), data.draw(splits(stream)))
    for raw in raws:
        check_raw(raw)


# -- valid-ish and mutated frames ---------------------------------------------------------


@FUZZ
@given(data=st.data(), arrays=st.lists(frame_arrays(), min_size=1, max_size=3))
def test_valid_framing_any_fields(data: st.DataObject, arrays: list[list[Any]]) -> None:
    stream = b"".join(encode_array(a) for a in arrays)
    raws, error = decode_all(FrameDecoder(), data.draw(splits(stream)))
    assert error is None
    assert norm(raws) == norm(arrays)
    for raw in raws:
        check_raw(raw)


@FUZZ
@given(data=st.data(), arrays=st.lists(frame_arrays(), min_size=1, max_size=2))
def test_mutated_frames(data: st.DataObject, arrays: list[list[Any]]) -> None:
    stream = data.draw(mutations(b"".join(encode_array(a) for a in arrays)))
    raws, _ = decode_all(FrameDecoder(4096), data.draw(splits(stream)))
    for raw in raws:
        check_raw(raw)


@FUZZ
@given(data=st.data(), frames=st.lists(TYPED_FRAMES, min_size=1, max_size=3))
def test_mutated_typed_frames_after_the_handshake(
    data: st.DataObject, frames: list[F.Frame]
) -> None:
    stream = data.draw(mutations(F.HANDSHAKE + b"".join(encode(f) for f in frames)))
    raws, _ = decode_all(FrameDecoder(expect_handshake=True), data.draw(splits(stream)))
    for raw in raws:
        check_raw(raw)


@FUZZ
@given(raw=frame_arrays(), lists=st.booleans())
def test_parse_any_array(raw: list[Any], lists: bool) -> None:
    parse_or_error(raw if lists else tuple(raw))


# -- well-formed frames round-trip ---------------------------------------------------------


@FUZZ
@given(data=st.data(), frames=st.lists(TYPED_FRAMES, min_size=1, max_size=4), lists=st.booleans())
def test_typed_frames_round_trip_in_any_split(
    data: st.DataObject, frames: list[F.Frame], lists: bool
) -> None:
    stream = F.HANDSHAKE + b"".join(encode(f) for f in frames)
    decoder = FrameDecoder(expect_handshake=True, use_list=lists)
    raws, error = decode_all(decoder, data.draw(splits(stream)))
    assert error is None
    assert decoder.buffered == 0
    parsed = [F.parse(raw) for raw in raws]
    assert [type(p) for p in parsed] == [type(f) for f in frames]
    assert norm([tuple(p) for p in parsed]) == norm([tuple(f) for f in frames])


@FUZZ
@given(frame=TYPED_FRAMES, extra=st.lists(MSGPACK_VALUES, min_size=1, max_size=3))
def test_extra_trailing_fields_never_change_the_frame(frame: F.Frame, extra: list[Any]) -> None:
    raw = FrameDecoder().feed(encode_array([*F.as_array(frame), *extra]))[0]
    assert norm(tuple(F.parse(raw))) == norm(tuple(frame))
