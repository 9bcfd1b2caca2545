"""Fuzz target: the native frame decoder (protocol/codec.py) and frames.parse.

Input: one control byte, then the bytes a client sends.  The control byte picks how the
broker's decoder is set up and how the bytes arrive:

    bit 0      the handshake is expected first (a fresh connection) or already done
    bit 1      feed() or the get_buffer()/buffer_updated() path (the broker's)
    bit 2      the pre-authentication frame limit (8 KiB) or a 1 MiB one
    bits 3-5   chunk size: 1, 2, 3, 7, 64, 512 or 4096 bytes, or all at once (in at
               most MAX_PIECES pieces)

The decoder is set up as the broker's native connection sets it up (use_list=False,
schema_limits=True).  Fine: frames, then at most one of the decoder's three
connection-fatal errors; parse() ends in a frame or a request-level error.  Anything
else, and an error of the wrong kind, is a crash.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Final

from wharf.protocol import frames as F
from wharf.protocol.codec import PREAUTH_MAX_FRAME_BYTES, FrameDecoder
from wharf.protocol.errors import (
    FrameError,
    FrameTooLarge,
    NotImplementedByBroker,
    ProtocolMismatch,
    ProtocolSyntaxError,
    WharfError,
)

TARGET: Final = "frames"
# libFuzzer's -max_len: a few frames, and one past the pre-auth limit.
MAX_LEN: Final = 9 * 1024
# At most this many pieces per input, whatever the chunk size (keeps executions fast).
MAX_PIECES: Final = 64
DECODER_ERRORS: Final = (FrameError, FrameTooLarge, ProtocolMismatch)
PARSE_ERRORS: Final = (ProtocolSyntaxError, NotImplementedByBroker)
_CHUNKS: Final = (1, 2, 3, 7, 64, 512, 4096, 0)  # 0: all at once
_AUTHENTICATED_MAX_FRAME_BYTES: Final = 1024 * 1024
VECTORS: Final = Path(__file__).parents[2] / "protocol" / "vectors.json"


def one_input(data: bytes) -> None:
    if not data:
        return
    control, stream = data[0], data[1:]
    max_frame = PREAUTH_MAX_FRAME_BYTES if control & 4 else _AUTHENTICATED_MAX_FRAME_BYTES
    decoder = FrameDecoder(
        max_frame, expect_handshake=bool(control & 1), use_list=False, schema_limits=True
    )
    chunk = max(_CHUNKS[(control >> 3) & 7], -(-len(stream) // MAX_PIECES), 1)
    receive_into = bool(control & 2)
    for start in range(0, len(stream), chunk):
        piece = stream[start : start + chunk]
        try:
            if receive_into:
                room = decoder.get_buffer()
                assert len(room) >= len(piece), "get_buffer() offered too little room"
                room[: len(piece)] = piece
                room.release()
                raws = decoder.buffer_updated(len(piece))
            else:
                raws = decoder.feed(piece)
        except WharfError as exc:
            if not isinstance(exc, DECODER_ERRORS) or not exc.fatal:
                raise AssertionError(f"decoder raised {exc!r}") from exc
            assert decoder.closed, "a fatal decoder error left the decoder open"
            return
        for raw in raws:
            _check_raw(raw)
    # Good frames followed by a bad one: the error comes with the next call.
    if decoder.error_pending:
        try:
            decoder.feed(b"")
        except DECODER_ERRORS:
            return
        raise AssertionError("error_pending, but the next feed() raised nothing")


def _check_raw(raw: Any) -> None:
    assert isinstance(raw, tuple) and len(raw) >= 2, f"decoder returned {raw!r}"
    assert type(raw[0]) is int and type(raw[1]) is int, f"decoder returned {raw!r}"
    try:
        frame = F.parse(raw)
    except WharfError as exc:
        if not isinstance(exc, PARSE_ERRORS) or exc.fatal:
            raise AssertionError(f"parse() raised {exc!r}") from exc
        assert exc.details["request_id"] == raw[1]
        return
    assert F.TYPE_OF[type(frame)] == raw[0]


def seeds() -> Iterator[bytes]:
    """Real frames: every test vector, alone and after the handshake, in a few splits."""
    vectors = json.loads(VECTORS.read_text())["vectors"]
    wire = [bytes.fromhex(v["hex"]) for v in vectors]
    for i, frame in enumerate(wire):
        yield bytes([0b000_000]) + frame
        yield bytes([0b010_101 if i % 2 else 0b000_111]) + F.HANDSHAKE + frame
    yield bytes([0b000_101]) + F.HANDSHAKE + b"".join(wire[:8])
    yield bytes([0b001_010]) + b"".join(wire)


def dictionary() -> list[bytes]:
    return [F.HANDSHAKE, F.MAGIC, b"\xdc\x00\x10", b"\xdd\x00\x00\x00\x10", b"\xc4\x10"]
