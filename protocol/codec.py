"""Incremental, sans-I/O codec for Wharf frames.

Wire layout of one frame::

    +----------------+-----------------------------------------------+
    | length: u32 BE | payload: msgpack array [type, request_id, ...] |
    +----------------+-----------------------------------------------+

``length`` counts payload bytes only and must be 1..max_frame_bytes.  A client
connection starts with the 8-byte handshake ``b"WHARF\\x00" major minor`` before
its first frame.  ``FrameDecoder.feed`` (or ``get_buffer`` + ``buffer_updated``)
accepts bytes in any split and returns the complete frames as raw arrays (lists or
tuples); it raises only ``FrameError``, ``FrameTooLarge`` or ``ProtocolMismatch`` (all
connection-fatal).
"""

from __future__ import annotations

import struct
from typing import Any, Final

import msgpack

from .errors import FrameError, FrameTooLarge, ProtocolMismatch, WharfError
from .frames import HANDSHAKE_BYTES, MAGIC, PROTOCOL_VERSION, TYPE_OF, Frame

LENGTH_BYTES: Final = 4
DEFAULT_MAX_FRAME_BYTES: Final = 32 * 1024 * 1024
# Compact the receive buffer once this many consumed bytes sit at its front.
_COMPACT_AT_BYTES: Final = 256 * 1024
# ``get_buffer`` offers at least this much room to receive into.
RECEIVE_BYTES: Final = 256 * 1024

_unpack_length = struct.Struct(">I").unpack_from
_pack_length = struct.Struct(">I").pack


class FrameDecoder:
    """Bytes in, raw frame arrays out.  One per connection direction.

    Bytes come in with ``feed(data)``, or are received straight into the decoder's
    buffer (``asyncio.BufferedProtocol``): ``get_buffer()``, then
    ``buffer_updated(nbytes)``, which saves a copy.  ``retain_bytes``: buffer capacity
    kept while nothing is buffered (0: released every time, right for a server with
    many mostly idle connections; a client receiving big frames keeps its buffer
    rather than getting fresh memory from the system for every frame).
    """

    __slots__ = (
        "_buf",
        "_pos",
        "_end",
        "_max",
        "_use_list",
        "_retain",
        "_need_handshake",
        "closed",
        "_deferred",
    )

    def __init__(
        self,
        max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES,
        *,
        expect_handshake: bool = False,
        use_list: bool = True,
        retain_bytes: int = 0,
    ) -> None:
        # Received, not yet decoded: _buf[_pos:_end]; _buf[_end:] is free room.
        self._buf = bytearray()
        self._pos = 0
        self._end = 0
        self._max = max_frame_bytes
        self._use_list = use_list
        self._retain = retain_bytes
        self._need_handshake = expect_handshake
        self.closed = False
        self._deferred: WharfError | None = None

    @property
    def error_pending(self) -> bool:
        return self._deferred is not None

    @property
    def buffered(self) -> int:
        return self._end - self._pos

    def feed(self, data: bytes | bytearray | memoryview) -> list[Any]:
        """Complete frames in ``data`` (plus what was buffered).

        When good frames precede a bad one in the same input, they are returned and
        the error is raised by the next call (``error_pending`` tells), so a caller
        answers the good requests before closing.
        """
        if self._deferred is not None:
            exc, self._deferred = self._deferred, None
            raise exc
        if self.closed:
            return []
        buf = self._buf
        end = self._end
        if end == len(buf):
            buf += data
        else:  # room left by get_buffer() or kept by retain_bytes
            n = len(data)
            if end + n <= len(buf):
                buf[end : end + n] = data
            else:
                del buf[end:]
                buf += data
        self._end = end + len(data)
        frames = self._decode()
        pos = self._pos
        if pos == self._end:
            self._drained()
        elif pos >= _COMPACT_AT_BYTES:
            del buf[:pos]
            self._end -= pos
            self._pos = 0
        return frames

    def get_buffer(self, sizehint: int = -1) -> memoryview:
        """Room to receive into, for ``buffer_updated``: at least ``RECEIVE_BYTES``
        and the rest of the frame being received."""
        if self._pos == self._end:
            self._drained()
        buf = self._buf
        pos = self._pos
        end = self._end
        want = RECEIVE_BYTES
        if end - pos >= LENGTH_BYTES:
            (length,) = _unpack_length(buf, pos)
            if length <= self._max:
                want = max(want, pos + LENGTH_BYTES + length - end)
        if end + want > len(buf):
            # Never resized in place: the transport may still hold a view of it.
            pending = end - pos
            if pending + want <= len(buf):
                buf[:pending] = buf[pos:end]
            else:
                new = bytearray(pending + want)
                new[:pending] = memoryview(buf)[pos:end]
                self._buf = buf = new
            self._pos = 0
            self._end = end = pending
        return memoryview(buf)[end:]

    def buffer_updated(self, nbytes: int) -> list[Any]:
        """``nbytes`` arrived in the view from ``get_buffer()``: the complete frames
        (errors as with ``feed``)."""
        self._end += nbytes
        if self._deferred is not None:
            exc, self._deferred = self._deferred, None
            raise exc
        if self.closed:
            return []
        return self._decode()

    def _drained(self) -> None:
        self._pos = self._end = 0
        if len(self._buf) > self._retain:
            self._buf = bytearray()

    def _decode(self) -> list[Any]:
        buf = self._buf
        end = self._end
        pos = self._pos
        if self._need_handshake:
            if end - pos < HANDSHAKE_BYTES:
                if not MAGIC.startswith(bytes(buf[pos : min(end, pos + len(MAGIC))])):
                    self.closed = True
                    raise ProtocolMismatch("bad magic: this port speaks the Wharf protocol")
                return []
            check_handshake(bytes(buf[pos : pos + HANDSHAKE_BYTES]), self)
            self._need_handshake = False
            pos = self._pos = pos + HANDSHAKE_BYTES
        frames: list[Any] = []
        max_len = self._max
        use_list = self._use_list
        try:
            while end - pos >= LENGTH_BYTES:
                (length,) = _unpack_length(buf, pos)
                if length > max_len:
                    raise FrameTooLarge(
                        f"frame of {length} bytes exceeds max_frame_bytes={max_len}",
                        details={"length": length, "max_frame_bytes": max_len},
                    )
                if length == 0:
                    raise FrameError("empty frame payload")
                start = pos + LENGTH_BYTES
                stop = start + length
                if stop > end:
                    break
                frames.append(_decode_payload(memoryview(buf)[start:stop], use_list))
                pos = stop
        except WharfError as exc:
            self.closed = True
            self._pos = pos
            if frames:
                self._deferred = exc
                return frames
            raise
        self._pos = pos
        return frames


def check_handshake(head: bytes, decoder: FrameDecoder | None = None) -> None:
    if not head.startswith(MAGIC):
        if decoder is not None:
            decoder.closed = True
        raise ProtocolMismatch("bad magic: this port speaks the Wharf protocol")
    major = head[len(MAGIC)]
    if major != PROTOCOL_VERSION:
        if decoder is not None:
            decoder.closed = True
        raise ProtocolMismatch(
            f"protocol version {major} not supported; this broker speaks {PROTOCOL_VERSION}",
            details={"supported": [PROTOCOL_VERSION]},
        )


def _decode_payload(payload: memoryview, use_list: bool) -> Any:
    try:
        raw = msgpack.unpackb(payload, raw=False, use_list=use_list, strict_map_key=False)
    except Exception as exc:  # msgpack raises several unrelated types on bad input
        raise FrameError(f"payload is not valid msgpack: {exc.__class__.__name__}") from None
    finally:
        payload.release()
    if (
        not isinstance(raw, (list, tuple))
        or len(raw) < 2
        or type(raw[0]) is not int
        or type(raw[1]) is not int
    ):
        raise FrameError("payload must be an array [type:int, request_id:int, ...]")
    return raw


class FrameEncoder:
    """Frames out as bytes.  One per connection; not thread-safe."""

    __slots__ = ("_packer", "_buffered")

    def __init__(self) -> None:
        self._packer = msgpack.Packer(use_bin_type=True, autoreset=True)
        self._buffered = msgpack.Packer(use_bin_type=True, autoreset=False)

    def encode_array(self, array: tuple[Any, ...] | list[Any]) -> bytes:
        # Packed into the packer's own buffer, then copied once behind the length: one
        # new bytes object per frame, not two (for a fetch answer of a megabyte, fresh
        # memory costs more in page faults than the copy; ~0.1 us more per small frame).
        packer = self._buffered
        packer.pack(array)
        view: memoryview = packer.getbuffer()
        try:
            return _pack_length(len(view)) + view
        finally:
            view.release()
            packer.reset()

    def encode(self, frame: Frame) -> bytes:
        payload: bytes = self._packer.pack((TYPE_OF[type(frame)], *frame))
        return _pack_length(len(payload)) + payload


_default_encoder = FrameEncoder()


def encode(frame: Frame) -> bytes:
    """Encode one frame (convenience for tests and cold paths)."""
    return _default_encoder.encode(frame)


def encode_array(array: tuple[Any, ...] | list[Any]) -> bytes:
    return _default_encoder.encode_array(array)
