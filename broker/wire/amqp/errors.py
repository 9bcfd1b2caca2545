"""AMQP reply codes, RabbitMQ's reply texts, and Wharf errors mapped onto them.

Soft errors (channel exceptions) close the channel with channel.close; hard errors
(connection exceptions, 320 and 5xx) close the connection with connection.close.  The
reply text is RabbitMQ's: the code's name, " - ", then what happened
("NOT_FOUND - no queue 'q' in vhost '/'").
"""

from __future__ import annotations

from typing import Final

from wharf.protocol.errors import WharfError

from ...core.queues import EXCLUSIVE_USE

SHORTSTR_MAX_BYTES: Final = 255
CONTENT_TOO_LARGE: Final = 311
NO_ROUTE: Final = 312
NO_CONSUMERS: Final = 313
CONNECTION_FORCED: Final = 320
INVALID_PATH: Final = 402
ACCESS_REFUSED: Final = 403
NOT_FOUND: Final = 404
RESOURCE_LOCKED: Final = 405
PRECONDITION_FAILED: Final = 406
FRAME_ERROR: Final = 501
SYNTAX_ERROR: Final = 502
COMMAND_INVALID: Final = 503
CHANNEL_ERROR: Final = 504
UNEXPECTED_FRAME: Final = 505
RESOURCE_ERROR: Final = 506
NOT_ALLOWED: Final = 530
NOT_IMPLEMENTED: Final = 540
INTERNAL_ERROR: Final = 541

REPLY_NAMES: Final[dict[int, str]] = {
    CONTENT_TOO_LARGE: "CONTENT_TOO_LARGE",
    NO_ROUTE: "NO_ROUTE",
    NO_CONSUMERS: "NO_CONSUMERS",
    CONNECTION_FORCED: "CONNECTION_FORCED",
    INVALID_PATH: "INVALID_PATH",
    ACCESS_REFUSED: "ACCESS_REFUSED",
    NOT_FOUND: "NOT_FOUND",
    RESOURCE_LOCKED: "RESOURCE_LOCKED",
    PRECONDITION_FAILED: "PRECONDITION_FAILED",
    FRAME_ERROR: "FRAME_ERROR",
    SYNTAX_ERROR: "SYNTAX_ERROR",
    COMMAND_INVALID: "COMMAND_INVALID",
    CHANNEL_ERROR: "CHANNEL_ERROR",
    UNEXPECTED_FRAME: "UNEXPECTED_FRAME",
    RESOURCE_ERROR: "RESOURCE_ERROR",
    NOT_ALLOWED: "NOT_ALLOWED",
    NOT_IMPLEMENTED: "NOT_IMPLEMENTED",
    INTERNAL_ERROR: "INTERNAL_ERROR",
}
# Channel exceptions; every other code closes the connection.
SOFT_CODES: Final = frozenset(
    {CONTENT_TOO_LARGE, NO_ROUTE, NO_CONSUMERS, ACCESS_REFUSED, NOT_FOUND, RESOURCE_LOCKED,
     PRECONDITION_FAILED}
)  # fmt: skip

# Wharf error code -> AMQP reply code.  Wharf's request-level codes that AMQP has no
# channel exception for are refusals of the request, as RabbitMQ's 406.
_FROM_WHARF: Final[dict[int, int]] = {
    311: CONTENT_TOO_LARGE,
    312: NO_ROUTE,
    320: CONNECTION_FORCED,
    400: PRECONDITION_FAILED,
    403: ACCESS_REFUSED,
    404: NOT_FOUND,
    405: RESOURCE_LOCKED,
    406: PRECONDITION_FAILED,
    407: PRECONDITION_FAILED,
    408: PRECONDITION_FAILED,
    501: FRAME_ERROR,
    502: SYNTAX_ERROR,
    503: COMMAND_INVALID,
    505: FRAME_ERROR,
    506: PRECONDITION_FAILED,
    507: CONNECTION_FORCED,
    508: FRAME_ERROR,
    540: NOT_IMPLEMENTED,
    541: INTERNAL_ERROR,
}


class AmqpError(Exception):
    """An AMQP exception to send: ``code`` (reply code), the text after "NAME - ", and
    the method (pamqp's id: class << 16 | method) that caused it, 0 if none."""

    def __init__(self, code: int, text: str, method: int = 0) -> None:
        super().__init__(text)
        self.code = code
        self.text = text
        self.method = method

    @property
    def hard(self) -> bool:
        return self.code not in SOFT_CODES

    def reply_text(self) -> str:
        name = REPLY_NAMES.get(self.code, "INTERNAL_ERROR")
        text = f"{name} - {self.text}"
        # reply-text is a short string: RabbitMQ cuts a longer one to 252 bytes and "..."
        raw = text.encode("utf-8")
        if len(raw) <= SHORTSTR_MAX_BYTES:
            return text
        return raw[: SHORTSTR_MAX_BYTES - 3].decode("utf-8", "ignore") + "..."

    def __str__(self) -> str:
        return self.reply_text()


def from_wharf(exc: WharfError, method: int, vhost: str) -> AmqpError:
    """The AMQP exception for a Wharf error raised by the core, worded as RabbitMQ words
    it where the error's details say which refusal it is."""
    code = _FROM_WHARF.get(exc.code, INTERNAL_ERROR)
    if code == RESOURCE_LOCKED and exc.details.get("reason") == EXCLUSIVE_USE:
        # RabbitMQ refuses a consume that an exclusive consumer blocks with 403, not
        # the 405 of another connection's exclusive queue.
        code = ACCESS_REFUSED
    return AmqpError(code, with_vhost(exc, vhost), method)


def with_vhost(exc: WharfError, vhost: str) -> str:
    """The core's text with " in vhost '/'" after the queue's or exchange's name, where
    RabbitMQ's text has it ("no queue 'q' in vhost '/'", "queue 'q' in vhost '/' in use")."""
    text = exc.message
    details = exc.details or {}
    for kind in ("queue", "exchange"):
        name = details.get(kind)
        if not isinstance(name, str):
            continue
        needle = f"{kind} '{name}'"
        at = text.find(needle)
        if at >= 0 and not text.startswith(" in vhost", at + len(needle)):
            end = at + len(needle)
            return f"{text[:end]} in vhost '{vhost}'{text[end:]}"
    return text
