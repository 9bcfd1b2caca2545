"""Incremental, sans-I/O codec for Wharf frames.

Wire layout of one frame::

    +----------------+-----------------------------------------------+
    | length: u32 BE | payload: msgpack array [type, request_id, ...] |
    +----------------+-----------------------------------------------+

``length`` counts payload bytes only and must be 1..max_frame_bytes.  A client
connection starts with the 8-byte handshake ``b"WHARF\\x00" major minor`` before
its first frame.  Until it has authenticated, the broker's limit is
``PREAUTH_MAX_FRAME_BYTES`` (``set_max_frame_bytes`` raises it after AUTH_OK).

Decoding limits (``schema_limits=True``, the broker's side).  One msgpack byte can
become a 64-byte Python object (an empty map), so the frame size alone does not bound
the work and memory of decoding.  Before a payload is decoded, its top-level array
header and frame type are read; the frame type's ``DecodeLimits`` then bound every
array and map length and, through hooks called once per container, the total number
of container elements in the frame.  A frame over a limit is a ``FrameError`` raised
after at most ``max_items`` elements were built, whatever its size.

``FrameDecoder.feed`` (or ``get_buffer`` + ``buffer_updated``) accepts bytes in any
split and returns the complete frames as raw arrays (lists or tuples); it raises only
``FrameError``, ``FrameTooLarge`` or ``ProtocolMismatch`` (all connection-fatal).
"""

from __future__ import annotations

import struct
from typing import Any, Final, NamedTuple

import msgpack

from . import frames as F
from .errors import FrameError, FrameTooLarge, ProtocolMismatch, WharfError
from .frames import HANDSHAKE_BYTES, MAGIC, PROTOCOL_VERSION, TYPE_OF, Frame

LENGTH_BYTES: Final = 4
DEFAULT_MAX_FRAME_BYTES: Final = 32 * 1024 * 1024
# Compact the receive buffer once this many consumed bytes sit at its front.
_COMPACT_AT_BYTES: Final = 256 * 1024
# ``get_buffer`` offers at least this much room to receive into.
RECEIVE_BYTES: Final = 256 * 1024
# Before AUTH_OK a frame may hold only a HEARTBEAT or an AUTH: a few hundred bytes, plus
# credentials and client properties.  Nothing bigger is buffered for an unknown peer.
PREAUTH_MAX_FRAME_BYTES: Final = 8 * 1024
# After a frame this big has been consumed, the receive buffer is given back at once
# rather than kept at its peak size by a partial frame that follows.
_SHRINK_AT_BYTES: Final = 1024 * 1024

# Decoding limits, counted in msgpack elements (see the module docstring).
# Fields of a frame array, with room for trailing fields a newer peer may add.
MAX_FRAME_FIELDS: Final = 64
# Entries of one map or elements of one array nested in a frame (properties,
# headers, arguments, configs, lists of partitions or offsets).
MAX_CONTAINER_LEN: Final = 65_536
# Elements of all containers of one frame together, besides a batch array.
MAX_FRAME_ITEMS: Final = 131_072
# Elements of a batch array: PUBLISH_MANY bodies, ACK_MANY delivery tags.  The SDK
# splits bigger batches.  ~25 ms of decoding for 1-byte bodies at worst.
MAX_BATCH_ITEMS: Final = 262_144


class DecodeLimits(NamedTuple):
    max_array_len: int  # longest array anywhere in the frame (the frame array included)
    max_map_len: int  # most entries in any map
    max_items: int  # elements of all arrays and maps of the frame, plus one per container


GENERIC_LIMITS: Final = DecodeLimits(MAX_CONTAINER_LEN, MAX_CONTAINER_LEN, MAX_FRAME_ITEMS)
BATCH_LIMITS: Final = DecodeLimits(
    MAX_BATCH_ITEMS, MAX_CONTAINER_LEN, MAX_BATCH_ITEMS + MAX_FRAME_ITEMS
)
# Frame types a client sends with a batch array; every other type (including types
# only the broker sends, and unknown ones) gets GENERIC_LIMITS.
LIMITS_BY_TYPE: Final[dict[int, DecodeLimits]] = {
    F.PUBLISH_MANY: BATCH_LIMITS,
    F.ACK_MANY: BATCH_LIMITS,
}

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
        "_schema_limits",
        "_limit_name",
    )

    def __init__(
        self,
        max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES,
        *,
        expect_handshake: bool = False,
        use_list: bool = True,
        retain_bytes: int = 0,
        schema_limits: bool = False,
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
        # True on the broker: decode with the frame type's DecodeLimits.  A client
        # trusts its broker's frames (DELIVER batches may be larger) and skips them.
        self._schema_limits = schema_limits
        self._limit_name = "max_frame_bytes"

    @property
    def max_frame_bytes(self) -> int:
        return self._max

    def set_max_frame_bytes(
        self, max_frame_bytes: int, limit_name: str = "max_frame_bytes"
    ) -> None:
        """Change the frame size limit (the broker raises it after authentication);
        ``limit_name`` names the limit in FrameTooLarge errors."""
        self._max = max_frame_bytes
        self._limit_name = limit_name

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
            if len(buf) >= _SHRINK_AT_BYTES and self._end - pos < len(buf) // 4:
                # A big frame was consumed: copy the rest out rather than keep the peak.
                self._buf = bytearray(memoryview(buf)[pos : self._end])
            else:
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

    def discard(self) -> None:
        """The connection is closing: drop whatever is buffered, decode nothing more."""
        self.closed = True
        self._deferred = None
        self._buf = bytearray()
        self._pos = self._end = 0

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
        decode = _decode_payload_limited if self._schema_limits else _decode_payload
        try:
            while end - pos >= LENGTH_BYTES:
                (length,) = _unpack_length(buf, pos)
                if length > max_len:
                    name = self._limit_name
                    details: dict[str, Any] = {"length": length, "max_frame_bytes": max_len}
                    if name != "max_frame_bytes":
                        details["limit"] = name
                    raise FrameTooLarge(
                        f"frame of {length} bytes exceeds {name}={max_len}", details=details
                    )
                if length == 0:
                    raise FrameError("empty frame payload")
                start = pos + LENGTH_BYTES
                stop = start + length
                if stop > end:
                    break
                frames.append(decode(memoryview(buf)[start:stop], use_list))
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
    return _check_shape(raw)


def _check_shape(raw: Any) -> Any:
    if (
        not isinstance(raw, (list, tuple))
        or len(raw) < 2
        or type(raw[0]) is not int
        or type(raw[1]) is not int
    ):
        raise FrameError("payload must be an array [type:int, request_id:int, ...]")
    return raw


class _TooManyItems(Exception):
    pass


def _frame_header(payload: memoryview) -> tuple[int, int]:
    """(elements of the frame array, frame type or -1) from the first bytes, so the
    limits are chosen before anything is decoded."""
    n = len(payload)
    first = payload[0]
    if 0x90 <= first <= 0x9F:
        count, at = first & 0x0F, 1
    elif first == 0xDC and n >= 3:
        count, at = (payload[1] << 8) | payload[2], 3
    elif first == 0xDD and n >= 5:
        count, at = int.from_bytes(payload[1:5], "big"), 5
    else:
        raise FrameError("payload must be an array [type:int, request_id:int, ...]")
    if at >= n:
        return count, -1
    t = payload[at]
    if t <= 0x7F:
        return count, t
    if t == 0xCC and at + 1 < n:
        return count, payload[at + 1]
    return count, -1  # an odd type number: generic limits, parse() answers it


def _decode_payload_limited(payload: memoryview, use_list: bool) -> Any:
    try:
        count, ftype = _frame_header(payload)
        if count > MAX_FRAME_FIELDS:
            raise FrameError(
                f"frame array has {count} elements; at most {MAX_FRAME_FIELDS}",
                details={"elements": count, "max_elements": MAX_FRAME_FIELDS},
            )
        limits = LIMITS_BY_TYPE.get(ftype, GENERIC_LIMITS)
        budget = limits.max_items
        if 2 * len(payload) <= budget:
            # Every msgpack object takes at least one byte and is counted at most twice
            # (as an element and as a container), so this frame cannot exceed the
            # budget: decode without the per-container hooks (the common, small frame).
            return _check_shape(
                _unpack_limited(payload, use_list, limits.max_array_len, limits.max_map_len)
            )
        items = 0

        def count_items(container: Any) -> Any:
            nonlocal items
            items += len(container) + 1
            if items > budget:
                raise _TooManyItems
            return container

        try:
            raw = msgpack.unpackb(
                payload,
                raw=False,
                use_list=use_list,
                strict_map_key=False,
                max_array_len=limits.max_array_len,
                max_map_len=limits.max_map_len,
                list_hook=count_items,
                object_hook=count_items,
            )
        except _TooManyItems:
            raise FrameError(
                f"frame holds more than {budget} msgpack elements",
                details={"max_items": budget},
            ) from None
        except Exception as exc:  # msgpack raises several unrelated types on bad input
            raise FrameError(
                f"payload is not valid msgpack or exceeds a decoding limit: "
                f"{exc.__class__.__name__}"
            ) from None
    finally:
        payload.release()
    return _check_shape(raw)


def _unpack_limited(payload: memoryview, use_list: bool, max_array: int, max_map: int) -> Any:
    try:
        return msgpack.unpackb(
            payload,
            raw=False,
            use_list=use_list,
            strict_map_key=False,
            max_array_len=max_array,
            max_map_len=max_map,
        )
    except Exception as exc:  # msgpack raises several unrelated types on bad input
        raise FrameError(
            f"payload is not valid msgpack or exceeds a decoding limit: {exc.__class__.__name__}"
        ) from None


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
