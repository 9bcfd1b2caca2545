"""Decoding limits of the broker's FrameDecoder (``schema_limits=True``).

An object bomb (a frame whose msgpack body is millions of tiny containers) is refused
before it is built: the frame array's header, the frame type's array/map limits and the
per-frame element budget stop decoding early, whatever the frame's size.
"""

from __future__ import annotations

import struct
import tracemalloc

import msgpack
import pytest

from wharf.protocol import frames as F
from wharf.protocol.codec import (
    BATCH_LIMITS,
    GENERIC_LIMITS,
    MAX_BATCH_ITEMS,
    MAX_FRAME_FIELDS,
    PREAUTH_MAX_FRAME_BYTES,
    FrameDecoder,
    encode_array,
)
from wharf.protocol.errors import FrameError, FrameTooLarge

BOMB_MAPS = 4_000_000
# Building the bomb would take ~256 MB; refusing it may allocate a small fraction.
MAX_TRACED_PEAK_BYTES = 16 * 1024 * 1024


def _frame(payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + payload


def _broker_decoder() -> FrameDecoder:
    return FrameDecoder(64 * 1024 * 1024, use_list=False, schema_limits=True)


def _refused_with_small_peak(data: bytes) -> FrameError:
    decoder = _broker_decoder()
    tracemalloc.start()
    try:
        with pytest.raises(FrameError) as info:
            decoder.feed(data)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # The receive buffer holds the frame (len(data)); decoding must add little to it.
    assert peak - len(data) < MAX_TRACED_PEAK_BYTES, peak
    return info.value


def test_flat_map_bomb_is_refused_at_the_array_header() -> None:
    # [0x80 x 4M]: a 4-MB frame of empty maps, as in the report (there 32 MiB).
    payload = b"\xdd" + struct.pack(">I", BOMB_MAPS) + b"\x80" * BOMB_MAPS
    err = _refused_with_small_peak(_frame(payload))
    assert err.details["max_elements"] == MAX_FRAME_FIELDS


def test_bomb_inside_a_known_frame_is_refused_by_the_array_limit() -> None:
    payload = msgpack.packb([F.PUBLISH, 1, "", "q", {"headers": {"x": [{}] * BOMB_MAPS}}, b"", 0])
    _refused_with_small_peak(_frame(payload))


def test_nested_bomb_is_refused_by_the_element_budget() -> None:
    # Arrays below every per-array limit, nested: only the total budget catches it.
    inner = [{}] * 1000
    payload = msgpack.packb(
        [F.PUBLISH, 1, "", "q", {"headers": {"x": [inner] * (BOMB_MAPS // 1000)}}, b"", 0]
    )
    err = _refused_with_small_peak(_frame(payload))
    assert err.details["max_items"] == GENERIC_LIMITS.max_items


def test_bomb_in_a_batch_frame_is_refused_too() -> None:
    payload = msgpack.packb([F.PUBLISH_MANY, 1, "", "q", None, [[{}] * 100] * 40_000, 0])
    err = _refused_with_small_peak(_frame(payload))
    assert err.details["max_items"] == BATCH_LIMITS.max_items


def test_frame_types_only_the_broker_sends_get_the_generic_limits() -> None:
    # A client sending DELIVER gets CommandInvalid later; its decoding is bounded first.
    entry = [1, False, 1, "", "", None, b""]
    payload = msgpack.packb([F.DELIVER, 0, "ctag", [entry] * (GENERIC_LIMITS.max_items // 4)])
    _refused_with_small_peak(_frame(payload))


def test_a_full_batch_still_decodes() -> None:
    bodies = [b"x"] * MAX_BATCH_ITEMS
    props = {"headers": {f"h{i}": [i, str(i)] for i in range(1000)}}
    data = encode_array((F.PUBLISH_MANY, 1, "", "q", props, bodies, 0))
    (raw,) = _broker_decoder().feed(data)
    assert len(raw[5]) == MAX_BATCH_ITEMS and raw[4] == {
        "headers": {f"h{i}": (i, str(i)) for i in range(1000)}
    }


def test_one_more_body_than_the_batch_limit_is_refused() -> None:
    data = encode_array((F.PUBLISH_MANY, 1, "", "q", None, [b""] * (MAX_BATCH_ITEMS + 1), 0))
    with pytest.raises(FrameError):
        _broker_decoder().feed(data)


def test_a_client_decoder_keeps_no_schema_limits() -> None:
    entry = (1, False, 1, "", "", None, b"")
    data = encode_array((F.DELIVER, 0, "ctag", [entry] * GENERIC_LIMITS.max_items))
    (raw,) = FrameDecoder(use_list=False).feed(data)
    assert len(raw[3]) == GENERIC_LIMITS.max_items


def test_preauth_limit_refuses_a_big_frame_from_its_length_alone() -> None:
    decoder = FrameDecoder(expect_handshake=True, schema_limits=True)
    decoder.set_max_frame_bytes(PREAUTH_MAX_FRAME_BYTES, "preauth_max_frame_bytes")
    with pytest.raises(FrameTooLarge) as info:
        decoder.feed(F.HANDSHAKE + struct.pack(">I", 32 * 1024 * 1024) + b"\x80" * 100)
    assert info.value.details == {
        "length": 32 * 1024 * 1024,
        "max_frame_bytes": PREAUTH_MAX_FRAME_BYTES,
        "limit": "preauth_max_frame_bytes",
    }


def test_raised_limit_applies_to_the_next_frames() -> None:
    decoder = FrameDecoder(expect_handshake=True, schema_limits=True)
    decoder.set_max_frame_bytes(PREAUTH_MAX_FRAME_BYTES, "preauth_max_frame_bytes")
    auth = encode_array((F.AUTH, 1, "PLAIN", "u", "p", 0, {}))
    assert decoder.feed(F.HANDSHAKE + auth)[0][0] == F.AUTH
    decoder.set_max_frame_bytes(1024 * 1024)
    big = encode_array((F.PUBLISH, 2, "", "q", None, b"x" * (PREAUTH_MAX_FRAME_BYTES * 4), 0))
    assert decoder.feed(big)[0][5] == b"x" * (PREAUTH_MAX_FRAME_BYTES * 4)


def test_buffer_is_given_back_after_a_big_frame() -> None:
    decoder = _broker_decoder()
    big = encode_array((F.PUBLISH, 1, "", "q", None, b"x" * (8 * 1024 * 1024), 0))
    small = encode_array((F.PUBLISH, 2, "", "q", None, b"y", 0))
    # The big frame and the start of a small one arrive together.
    assert len(decoder.feed(big + small[:5])) == 1
    assert decoder.buffered == 5
    assert len(decoder._buf) < 1024 * 1024
