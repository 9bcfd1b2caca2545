"""Wharf wire protocol: frame types, incremental codec and error codes.  No I/O."""

from .codec import FrameDecoder, FrameEncoder, encode, encode_array
from .errors import ERRORS_BY_CODE, WharfError, error_from_code
from .frames import HANDSHAKE, PROTOCOL_VERSION, Frame, parse

__all__ = [
    "ERRORS_BY_CODE",
    "HANDSHAKE",
    "PROTOCOL_VERSION",
    "Frame",
    "FrameDecoder",
    "FrameEncoder",
    "WharfError",
    "encode",
    "encode_array",
    "error_from_code",
    "parse",
]
