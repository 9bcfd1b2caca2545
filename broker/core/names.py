"""The length rule for names: queues, exchanges, binding keys and consumer tags.

AMQP 0-9-1 carries a name as a short string: one length octet, so at most 255 *bytes* of
UTF-8, whatever the number of characters (a name of 200 two-byte characters does not fit).
The rule is the core's, so that every way in (native, HTTP, AMQP) refuses the same names
and a name made on one is always addressable from the others; over AMQP a longer name
cannot even be written (a frame that tries does not decode: 501 FRAME_ERROR, as RabbitMQ).
"""

from __future__ import annotations

from typing import Final

from wharf.protocol.errors import InvalidArgument

MAX_NAME_BYTES: Final = 255
# UTF-8 takes at most 4 bytes a character: a name of up to this many characters fits
# without being encoded to count (the common case, checked per declare and bind).
_ALWAYS_FITS_CHARS: Final = MAX_NAME_BYTES // 4


def name_bytes(name: str) -> int:
    """The length of ``name`` in UTF-8 (a lone surrogate, possible from JSON, counted as
    the 3 bytes it would take)."""
    return len(name.encode("utf-8", "surrogatepass"))


def check_name_length(what: str, name: str) -> None:
    """Refuse a name over MAX_NAME_BYTES bytes of UTF-8 (``what``: "queue name",
    "routing key", ...) with 400 InvalidArgument."""
    if len(name) > _ALWAYS_FITS_CHARS and name_bytes(name) > MAX_NAME_BYTES:
        raise InvalidArgument(
            f"{what} is {name_bytes(name)} bytes in UTF-8, longer than {MAX_NAME_BYTES}",
            details={"limit_bytes": MAX_NAME_BYTES},
        )
