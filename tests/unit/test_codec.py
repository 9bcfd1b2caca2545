"""FrameDecoder / FrameEncoder: framing, limits, handshake, any split of the byte stream."""

from __future__ import annotations

import random
import struct
from typing import Any

import msgpack
import pytest

from wharf.protocol import frames as F
from wharf.protocol.codec import (
    DEFAULT_MAX_FRAME_BYTES,
    RECEIVE_BYTES,
    FrameDecoder,
    FrameEncoder,
    check_handshake,
    encode,
    encode_array,
)
from wharf.protocol.errors import FrameError, FrameTooLarge, ProtocolMismatch, WharfError

STREAM_FRAMES: list[F.Frame] = [
    F.Heartbeat(0),
    F.QueueDeclare(1, "orders", True, False, False, False, {"x-max-length": 5}),
    F.Publish(1, "", "orders", {"headers": {"n": 1}, "persistent": True}, b"x" * 1000, 0),
    F.PublishMany(2, "ex", "rk", None, [b"a", b"b" * 70_000, b""], F.FLAG_MANDATORY),
    F.Deliver(0, "ctag", [(1, False, 1, "ex", "rk", None, b"\x00" * 300)]),
    F.AckMany(5, [1, 2, 3]),
    F.Close(9, 0, "bye"),
]
STREAM = b"".join(encode(f) for f in STREAM_FRAMES)
STREAM_ARRAYS = [list(F.as_array(f)) for f in STREAM_FRAMES]


def norm(value: Any) -> Any:
    if isinstance(value, (list, tuple)):
        return [norm(v) for v in value]
    if isinstance(value, dict):
        return {k: norm(v) for k, v in value.items()}
    return value


def frame_bytes(payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + payload


def feed_in_chunks(decoder: FrameDecoder, data: bytes, cuts: list[int]) -> list[Any]:
    out: list[Any] = []
    start = 0
    for cut in [*sorted(cuts), len(data)]:
        out.extend(decoder.feed(data[start:cut]))
        start = cut
    return out


def random_cuts(rng: random.Random, length: int) -> list[int]:
    return rng.sample(range(1, length), k=min(length - 1, rng.randint(1, 40)))


# -- splits ---------------------------------------------------------------------------


def test_whole_stream_in_one_chunk() -> None:
    assert norm(FrameDecoder().feed(STREAM)) == norm(STREAM_ARRAYS)


def test_one_byte_at_a_time() -> None:
    decoder = FrameDecoder()
    out: list[Any] = []
    for i in range(len(STREAM)):
        out.extend(decoder.feed(STREAM[i : i + 1]))
    assert norm(out) == norm(STREAM_ARRAYS)
    assert decoder.buffered == 0


@pytest.mark.parametrize("seed", range(20))
def test_random_splits(seed: int) -> None:
    rng = random.Random(seed)
    out = feed_in_chunks(FrameDecoder(), STREAM, random_cuts(rng, len(STREAM)))
    assert norm(out) == norm(STREAM_ARRAYS)


@pytest.mark.parametrize("seed", range(5))
def test_random_splits_with_handshake(seed: int) -> None:
    rng = random.Random(1000 + seed)
    data = F.HANDSHAKE + STREAM
    out = feed_in_chunks(FrameDecoder(expect_handshake=True), data, random_cuts(rng, len(data)))
    assert norm(out) == norm(STREAM_ARRAYS)


def test_multiple_frames_in_one_chunk_then_a_partial_one() -> None:
    first = encode(F.Confirm(0, 1)) + encode(F.Confirm(0, 2)) + encode(F.Confirm(0, 3))
    last = encode(F.Confirm(0, 4))
    decoder = FrameDecoder()
    assert decoder.feed(first + last[:3]) == [[32, 0, 1], [32, 0, 2], [32, 0, 3]]
    assert decoder.buffered == 3
    assert decoder.feed(last[3:5]) == []
    assert decoder.buffered == 5
    assert decoder.feed(last[5:]) == [[32, 0, 4]]
    assert decoder.buffered == 0


def test_empty_feed_is_harmless() -> None:
    decoder = FrameDecoder(expect_handshake=True)
    assert decoder.feed(b"") == []
    assert decoder.feed(F.HANDSHAKE) == []
    assert decoder.feed(b"") == []
    assert decoder.feed(encode(F.Heartbeat(0))) == [[4, 0]]


@pytest.mark.parametrize("kind", [bytes, bytearray, memoryview])
def test_accepts_bytes_like_input(kind: type) -> None:
    decoder = FrameDecoder()
    assert norm(decoder.feed(kind(STREAM))) == norm(STREAM_ARRAYS)


def test_long_stream_compacts_its_buffer() -> None:
    # More than the compaction threshold passes through while a partial frame stays
    # buffered, so the consumed front of the buffer must be dropped on the way.
    body = bytes(range(256)) * 400  # 100 KiB
    frames = [F.Publish(i, "ex", "rk", None, body, 0) for i in range(1, 21)]
    data = b"".join(encode(f) for f in frames)
    decoder = FrameDecoder()
    out: list[Any] = []
    step = 70_001
    for start in range(0, len(data), step):
        out.extend(decoder.feed(data[start : start + step]))
        assert decoder.buffered < 2 * step
    assert [F.parse(raw) for raw in out] == frames
    assert decoder.buffered == 0


# -- receiving into the decoder's buffer (asyncio.BufferedProtocol) -------------------


def receive(decoder: FrameDecoder, data: bytes, rng: random.Random | None = None) -> list[Any]:
    """What a transport does: ask for room, fill some of it, report how much."""
    out: list[Any] = []
    pos = 0
    while pos < len(data):
        view = decoder.get_buffer(-1)
        assert len(view) >= min(RECEIVE_BYTES, len(data) - pos)
        n = min(len(view), len(data) - pos)
        if rng is not None:
            n = rng.randint(1, n)
        view[:n] = data[pos : pos + n]
        del view  # a transport holds the view only while it receives
        out.extend(decoder.buffer_updated(n))
        pos += n
    return out


@pytest.mark.parametrize("seed", range(10))
def test_receive_into_buffer_in_random_pieces(seed: int) -> None:
    rng = random.Random(seed)
    body = bytes(range(256)) * 1500  # frames bigger than one receive
    frames = [*STREAM_FRAMES, F.Publish(1, "ex", "rk", None, body, 0), *STREAM_FRAMES]
    data = b"".join(encode(f) for f in frames) * 3
    decoder = FrameDecoder(retain_bytes=1 << 20)
    out = receive(decoder, data, rng)
    assert norm(out) == norm([list(F.as_array(f)) for f in frames * 3])
    assert decoder.buffered == 0


def test_room_for_a_whole_big_frame() -> None:
    body = b"x" * (3 * RECEIVE_BYTES)
    data = encode(F.Publish(1, "ex", "rk", None, body, 0))
    decoder = FrameDecoder()
    view = decoder.get_buffer(-1)
    view[:8] = data[:8]
    del view
    assert decoder.buffer_updated(8) == []
    # Once the length is known, the rest of the frame fits in one receive.
    view = decoder.get_buffer(-1)
    assert len(view) >= len(data) - 8
    view[: len(data) - 8] = data[8:]
    del view
    assert [F.parse(raw) for raw in decoder.buffer_updated(len(data) - 8)] == [
        F.Publish(1, "ex", "rk", None, body, 0)
    ]


def test_retained_buffer_is_kept_and_a_bigger_one_released() -> None:
    small = encode(F.Publish(1, "ex", "rk", None, b"x" * 1000, 0))
    big = encode(F.Publish(2, "ex", "rk", None, b"y" * (2 * RECEIVE_BYTES), 0))
    decoder = FrameDecoder(retain_bytes=RECEIVE_BYTES * 4)
    assert len(receive(decoder, big)) == 1
    kept = decoder.get_buffer(-1).obj
    assert len(receive(decoder, small)) == 1
    assert decoder.get_buffer(-1).obj is kept  # the same memory, frame after frame
    released = FrameDecoder(retain_bytes=0)
    assert len(receive(released, big)) == 1
    assert len(released.get_buffer(-1)) == RECEIVE_BYTES  # a fresh, small one


def test_feed_after_receiving_into_the_buffer() -> None:
    decoder = FrameDecoder(retain_bytes=1 << 20)
    data = b"".join(encode(f) for f in STREAM_FRAMES)
    first = receive(decoder, data[:1000])
    rest = decoder.feed(data[1000:])
    assert norm(first + rest) == norm(STREAM_ARRAYS)
    assert decoder.buffered == 0


def test_errors_when_receiving_into_the_buffer() -> None:
    decoder = FrameDecoder(max_frame_bytes=100)
    view = decoder.get_buffer(-1)
    good = encode(F.Heartbeat(0))
    data = good + struct.pack(">I", 101)
    view[: len(data)] = data
    del view
    assert decoder.buffer_updated(len(data)) == [[4, 0]]
    assert decoder.error_pending
    with pytest.raises(FrameTooLarge):
        decoder.buffer_updated(0)
    assert decoder.buffer_updated(0) == []  # closed


@pytest.mark.parametrize("use_list", [True, False])
def test_use_list(use_list: bool) -> None:
    raw = FrameDecoder(use_list=use_list).feed(encode(STREAM_FRAMES[4]))[0]
    array_type = list if use_list else tuple
    assert type(raw) is array_type
    assert type(raw[3]) is array_type
    assert type(raw[3][0]) is array_type
    assert norm(raw) == norm(F.as_array(STREAM_FRAMES[4]))


# -- size limits ------------------------------------------------------------------------


def test_oversize_frame_fails_as_soon_as_the_length_arrives() -> None:
    decoder = FrameDecoder(max_frame_bytes=100)
    with pytest.raises(FrameTooLarge) as info:
        decoder.feed(struct.pack(">I", 101))
    err = info.value
    assert err.code == 508
    assert err.fatal
    assert err.details == {"length": 101, "max_frame_bytes": 100}
    assert decoder.closed


def test_oversize_length_split_across_feeds() -> None:
    decoder = FrameDecoder(max_frame_bytes=100)
    header = struct.pack(">I", 0xFFFFFFFF)
    assert decoder.feed(header[:2]) == []
    with pytest.raises(FrameTooLarge):
        decoder.feed(header[2:])


def test_frame_of_exactly_max_bytes_is_accepted() -> None:
    frame = encode(F.Publish(1, "", "q", None, b"z" * 200))
    payload_len = len(frame) - 4
    assert FrameDecoder(max_frame_bytes=payload_len).feed(frame)[0][5] == b"z" * 200
    with pytest.raises(FrameTooLarge):
        FrameDecoder(max_frame_bytes=payload_len - 1).feed(frame)


def test_oversize_frame_after_good_frames() -> None:
    decoder = FrameDecoder(max_frame_bytes=50)
    assert decoder.feed(encode(F.Heartbeat(0))) == [[4, 0]]
    with pytest.raises(FrameTooLarge):
        decoder.feed(encode(F.Publish(1, "", "q", None, b"z" * 100)))


def test_default_limit() -> None:
    assert DEFAULT_MAX_FRAME_BYTES == 32 * 1024 * 1024
    decoder = FrameDecoder()
    with pytest.raises(FrameTooLarge):
        decoder.feed(struct.pack(">I", DEFAULT_MAX_FRAME_BYTES + 1))


# -- malformed payloads -------------------------------------------------------------------


@pytest.mark.parametrize(
    "payload",
    [
        pytest.param(b"", id="zero-length"),
        pytest.param(b"\xc1", id="reserved-byte"),
        pytest.param(b"\x93\x04\x00", id="truncated-array"),
        pytest.param(b"\x92\x04\x00\x00", id="trailing-bytes"),
        pytest.param(b"\x92\x04\x00" + b"\x92\x04\x00", id="two-values"),
        pytest.param(b"\x93\x04\x00\xa2\xff\xfe", id="invalid-utf8"),
        pytest.param(b"\x93\x04\x00\xd9\x10abc", id="short-str"),
        pytest.param(b"\x92\x04\xdd\xff\xff\xff\xff", id="huge-array-header"),
        pytest.param(b"\x93\x04\x00\xd4\xff\x00", id="bad-timestamp-ext"),
        pytest.param(msgpack.packb(4), id="int-not-array"),
        pytest.param(msgpack.packb({"type": 4}), id="map-not-array"),
        pytest.param(msgpack.packb("frame"), id="str-not-array"),
        pytest.param(msgpack.packb(None), id="nil-not-array"),
        pytest.param(msgpack.packb([]), id="empty-array"),
        pytest.param(msgpack.packb([4]), id="one-element"),
        pytest.param(msgpack.packb(["4", 0]), id="type-is-str"),
        pytest.param(msgpack.packb([True, 0]), id="type-is-bool"),
        pytest.param(msgpack.packb([4.0, 0]), id="type-is-float"),
        pytest.param(msgpack.packb([4, None]), id="rid-is-nil"),
        pytest.param(msgpack.packb([4, False]), id="rid-is-bool"),
        pytest.param(msgpack.packb([4, b"\x00"]), id="rid-is-bin"),
        pytest.param(msgpack.packb([4, 0, {(1, 2): 3}]), id="array-map-key"),
    ],
)
def test_malformed_payload_is_frame_error(payload: bytes) -> None:
    decoder = FrameDecoder()
    with pytest.raises(FrameError) as info:
        decoder.feed(frame_bytes(payload))
    assert info.value.code == 501
    assert info.value.fatal
    assert decoder.closed


def test_map_keys_of_any_hashable_type_decode() -> None:
    raw = FrameDecoder().feed(frame_bytes(msgpack.packb([7, 1, {1: "a", "b": 2}])))
    assert raw == [[7, 1, {1: "a", "b": 2}]]


def test_closed_decoder_ignores_further_input() -> None:
    decoder = FrameDecoder()
    with pytest.raises(FrameError):
        decoder.feed(frame_bytes(b"\xc1"))
    assert decoder.feed(encode(F.Heartbeat(0))) == []
    assert decoder.closed


def test_error_in_a_later_frame_of_the_same_chunk() -> None:
    # The good frame is returned; the error comes from the next call.
    decoder = FrameDecoder()
    assert decoder.feed(encode(F.Heartbeat(0)) + frame_bytes(b"")) == [[4, 0]]
    assert decoder.closed and decoder.error_pending
    with pytest.raises(FrameError):
        decoder.feed(b"")
    assert not decoder.error_pending


# -- handshake ------------------------------------------------------------------------


def test_handshake_then_frame_in_one_chunk() -> None:
    decoder = FrameDecoder(expect_handshake=True)
    assert decoder.feed(F.HANDSHAKE + encode(F.Heartbeat(0))) == [[4, 0]]


def test_partial_handshake_fed_byte_by_byte() -> None:
    decoder = FrameDecoder(expect_handshake=True)
    for i in range(len(F.HANDSHAKE)):
        assert decoder.feed(F.HANDSHAKE[i : i + 1]) == []
    assert decoder.feed(encode(F.Confirm(0, 1))) == [[32, 0, 1]]


def test_handshake_bytes_without_expect_handshake_are_a_frame_error() -> None:
    # "WHAR" read as a length is far over the limit.
    with pytest.raises(FrameTooLarge):
        FrameDecoder().feed(F.HANDSHAKE)


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(b"GET / HTTP/1.1\r\n", id="http"),
        pytest.param(b"AMQP\x00\x00\x09\x01", id="amqp"),
        pytest.param(b"X", id="bad-first-byte"),
        pytest.param(b"WHARX", id="bad-fifth-byte"),
        pytest.param(b"WHARF\x01\x01\x00", id="bad-nul"),
        pytest.param(b"\x00\x00\x00\x03\x92\x04\x00\x00", id="frame-without-handshake"),
    ],
)
def test_bad_magic(data: bytes) -> None:
    decoder = FrameDecoder(expect_handshake=True)
    with pytest.raises(ProtocolMismatch) as info:
        decoder.feed(data)
    assert info.value.code == 505
    assert info.value.fatal
    assert decoder.closed


def test_bad_magic_detected_byte_by_byte() -> None:
    decoder = FrameDecoder(expect_handshake=True)
    assert decoder.feed(b"W") == []
    assert decoder.feed(b"H") == []
    with pytest.raises(ProtocolMismatch):
        decoder.feed(b"Y")


@pytest.mark.parametrize("major", [0, 2, 255])
def test_bad_version(major: int) -> None:
    decoder = FrameDecoder(expect_handshake=True)
    with pytest.raises(ProtocolMismatch) as info:
        decoder.feed(F.MAGIC + bytes([major, 0]))
    assert info.value.details == {"supported": [1]}
    assert str(major) in info.value.message
    assert decoder.closed


def test_bad_version_split_across_feeds() -> None:
    decoder = FrameDecoder(expect_handshake=True)
    assert decoder.feed(F.MAGIC) == []
    with pytest.raises(ProtocolMismatch):
        decoder.feed(b"\x02\x00")


@pytest.mark.parametrize("minor", [0, 1, 255])
def test_any_minor_version_is_accepted(minor: int) -> None:
    decoder = FrameDecoder(expect_handshake=True)
    assert decoder.feed(F.MAGIC + bytes([1, minor]) + encode(F.Heartbeat(0))) == [[4, 0]]


def test_check_handshake_directly() -> None:
    check_handshake(F.HANDSHAKE)
    with pytest.raises(ProtocolMismatch):
        check_handshake(b"WHARF\x00\x02\x00")
    with pytest.raises(ProtocolMismatch):
        check_handshake(b"HTTP/1.1")


def test_frame_after_handshake_is_still_limited() -> None:
    decoder = FrameDecoder(max_frame_bytes=10, expect_handshake=True)
    with pytest.raises(FrameTooLarge):
        decoder.feed(F.HANDSHAKE + struct.pack(">I", 11))


# -- encoder ------------------------------------------------------------------------------


def test_length_prefix_counts_the_payload() -> None:
    data = encode(F.Confirm(0, 300))
    (length,) = struct.unpack(">I", data[:4])
    assert length == len(data) - 4
    assert msgpack.unpackb(data[4:]) == [F.CONFIRM, 0, 300]


def test_bytes_encode_as_bin_and_str_as_str() -> None:
    data = encode(F.Publish(0, "ex", "rk", None, b"body"))
    # fixarray(7), 30, 0, fixstr "ex", fixstr "rk", nil, bin8 "body", flags 0
    assert data[4:] == b"\x97\x1e\x00\xa2ex\xa2rk\xc0\xc4\x04body\x00"


def test_encoder_instances_agree_and_survive_a_failed_pack() -> None:
    encoder = FrameEncoder()
    with pytest.raises(TypeError):
        encoder.encode_array([F.PUBLISH, 1, "ex", "rk", None, object()])
    frame = F.Ack(3, 4, True)
    assert encoder.encode(frame) == encode(frame) == encode_array(F.as_array(frame))


def test_decoder_errors_are_wharf_errors() -> None:
    for exc in (FrameError, FrameTooLarge, ProtocolMismatch):
        assert issubclass(exc, WharfError)
