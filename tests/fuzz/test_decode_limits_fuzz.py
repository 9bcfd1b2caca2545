"""Hypothesis on the broker's decoding limits (``FrameDecoder(schema_limits=True)``).

Whatever a client sends, the broker's decoder ends in frames or a connection-fatal
error; every frame it returns stays within its type's limits (so decoding it cost at
most that many elements); and well-formed frames within the limits decode exactly as
without limits.
"""

from __future__ import annotations

import os
from typing import Any

import msgpack
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from wharf.protocol import frames as F
from wharf.protocol.codec import (
    GENERIC_LIMITS,
    LIMITS_BY_TYPE,
    MAX_FRAME_FIELDS,
    DecodeLimits,
    FrameDecoder,
    encode_array,
)
from wharf.protocol.errors import FrameError, FrameTooLarge, ProtocolMismatch

DECODER_ERRORS = (FrameError, FrameTooLarge, ProtocolMismatch)
FUZZ = settings(
    max_examples=int(os.environ.get("WHARF_FUZZ_EXAMPLES", "300")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
# Small limits, so hypothesis reaches them with small inputs.
SMALL = DecodeLimits(max_array_len=8, max_map_len=4, max_items=40)

LEAVES = (
    st.none() | st.booleans() | st.integers(-5, 300) | st.text(max_size=3) | st.binary(max_size=3)
)
VALUES = st.recursive(
    LEAVES,
    lambda children: (
        st.lists(children, max_size=12) | st.dictionaries(st.text(max_size=3), children, max_size=6)
    ),
    max_leaves=80,
)
TYPES = st.sampled_from([F.PUBLISH, F.PUBLISH_MANY, F.ACK_MANY, F.QUEUE_DECLARE, F.DELIVER, 250])


def _items(value: Any) -> tuple[int, int, int]:
    """(elements + containers, longest array, largest map) of a decoded value."""
    if isinstance(value, (list, tuple)):
        parts = [_items(v) for v in value]
        return (
            len(value) + 1 + sum(p[0] for p in parts),
            max([len(value), *(p[1] for p in parts)]),
            max([0, *(p[2] for p in parts)]),
        )
    if isinstance(value, dict):
        parts = [_items(k) for k in value] + [_items(v) for v in value.values()]
        return (
            len(value) + 1 + sum(p[0] for p in parts),
            max([0, *(p[1] for p in parts)]),
            max([len(value), *(p[2] for p in parts)]),
        )
    return 0, 0, 0


def _decode(data: bytes) -> tuple[list[Any], Exception | None]:
    decoder = FrameDecoder(use_list=True, schema_limits=True)
    try:
        return decoder.feed(data), None
    except DECODER_ERRORS as exc:
        return [], exc


def _with_small_limits(test: Any) -> Any:
    def run(*args: Any, **kwargs: Any) -> Any:
        saved = dict(LIMITS_BY_TYPE)
        import wharf.protocol.codec as codec

        generic = codec.GENERIC_LIMITS
        LIMITS_BY_TYPE.clear()
        codec.GENERIC_LIMITS = SMALL  # type: ignore[misc]
        try:
            return test(*args, **kwargs)
        finally:
            codec.GENERIC_LIMITS = generic  # type: ignore[misc]
            LIMITS_BY_TYPE.update(saved)

    run.__name__ = test.__name__
    return run


@FUZZ
@given(ftype=TYPES, fields=st.lists(VALUES, max_size=6))
@_with_small_limits
def test_decoded_frames_stay_within_their_limits(ftype: int, fields: list[Any]) -> None:
    array = [ftype, 1, *fields]
    raws, error = _decode(encode_array(array))
    total, longest, widest = _items(array)
    within = total <= SMALL.max_items and longest <= SMALL.max_array_len
    within = within and widest <= SMALL.max_map_len
    if within:
        assert error is None and raws == [array]
    else:
        assert isinstance(error, FrameError) and raws == []


@FUZZ
@given(data=st.binary(max_size=512))
def test_any_payload_ends_in_a_frame_or_a_decoder_error(data: bytes) -> None:
    raws, error = _decode(len(data).to_bytes(4, "big") + data)
    assert error is not None or len(raws) <= 1
    for raw in raws:
        assert len(raw) <= MAX_FRAME_FIELDS
        assert _items(raw)[0] <= GENERIC_LIMITS.max_items + GENERIC_LIMITS.max_array_len


@FUZZ
@given(ftype=TYPES, fields=st.lists(VALUES, max_size=6))
def test_within_the_limits_the_result_equals_plain_msgpack(ftype: int, fields: list[Any]) -> None:
    array = [ftype, 7, *fields]
    raws, error = _decode(encode_array(array))
    assert error is None
    assert raws == [msgpack.unpackb(msgpack.packb(array), strict_map_key=False)]
