"""Wharf error codes and the exception hierarchy shared by broker and SDK.

Every error that crosses the wire is an ERROR frame carrying one of the numeric codes
below.  A code is either *request-level* (the request fails, the connection stays
usable) or *connection-fatal* (the sender closes the connection after the frame).
The table is the single source of truth: protocol/SPEC.md lists the same codes and
the exception classes are generated from it.
"""

from __future__ import annotations

from typing import Any, ClassVar, Final, NamedTuple, cast


class ErrorSpec(NamedTuple):
    code: int
    name: str
    fatal: bool
    retriable: bool
    doc: str


ERROR_TABLE: Final[tuple[ErrorSpec, ...]] = (
    ErrorSpec(311, "ContentTooLarge", False, False, "message body exceeds max_message_bytes"),
    ErrorSpec(312, "Unroutable", False, False, "mandatory message routed to no queue"),
    ErrorSpec(320, "ConnectionForced", True, True, "broker shutting down or operator closed"),
    ErrorSpec(400, "InvalidArgument", False, False, "a field or argument has a bad value"),
    ErrorSpec(403, "AccessRefused", False, False, "authentication failed or not permitted"),
    ErrorSpec(404, "NotFound", False, False, "exchange, queue or consumer does not exist"),
    ErrorSpec(405, "ResourceLocked", False, True, "exclusive queue/consumer held elsewhere"),
    ErrorSpec(406, "PreconditionFailed", False, False, "equivalence or if-unused/if-empty check"),
    ErrorSpec(407, "UnknownDeliveryTag", False, False, "ack/nack/reject of unknown tag"),
    ErrorSpec(408, "DeliveryAckTimeout", False, True, "delivery unacked past ack timeout"),
    ErrorSpec(409, "RebalanceInProgress", False, True, "consumer group is rebalancing: rejoin"),
    ErrorSpec(410, "IllegalGeneration", False, False, "request from an old group generation"),
    ErrorSpec(411, "UnknownMember", False, True, "member id not in the group: join again"),
    ErrorSpec(412, "OutOfOrderSequence", False, False, "producer sequence number gap"),
    ErrorSpec(413, "ProducerFenced", False, False, "producer epoch older than the current"),
    ErrorSpec(414, "FencedInstanceId", False, False, "a newer member took this static instance id"),
    ErrorSpec(415, "InvalidTxnState", False, False, "request not valid in the transaction's state"),
    ErrorSpec(416, "OffsetOutOfRange", False, False, "offset outside earliest..latest"),
    ErrorSpec(417, "TransactionAborted", False, False, "the coordinator aborted the transaction"),
    ErrorSpec(501, "FrameError", True, False, "malformed framing or msgpack payload"),
    ErrorSpec(502, "ProtocolSyntaxError", False, False, "frame fields have wrong types/count"),
    ErrorSpec(503, "CommandInvalid", False, False, "frame not valid in this state"),
    ErrorSpec(505, "ProtocolMismatch", True, False, "wrong magic bytes or unsupported version"),
    ErrorSpec(506, "ResourceError", False, True, "a broker limit was reached"),
    ErrorSpec(507, "HeartbeatTimeout", True, True, "peer silent for two heartbeat intervals"),
    ErrorSpec(508, "FrameTooLarge", True, False, "frame exceeds max_frame_bytes"),
    ErrorSpec(540, "NotImplementedByBroker", False, False, "unknown frame type"),
    ErrorSpec(541, "InternalError", False, True, "unexpected broker failure"),
    ErrorSpec(599, "ConnectionLost", True, True, "SDK only: the socket closed or timed out"),
)


class WharfError(Exception):
    """Root of every Wharf error.  ``code`` is the numeric wire code."""

    code: ClassVar[int] = 0
    fatal: ClassVar[bool] = False
    retriable: ClassVar[bool] = False

    def __init__(self, message: str = "", *, details: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.details: dict[str, Any] = details or {}

    def __str__(self) -> str:
        return f"[{self.code}] {self.message}"


def _make(spec: ErrorSpec) -> type[WharfError]:
    namespace = {
        "__doc__": spec.doc,
        "__module__": __name__,
        "code": spec.code,
        "fatal": spec.fatal,
        "retriable": spec.retriable,
    }
    return cast("type[WharfError]", type(spec.name, (WharfError,), namespace))


ERRORS_BY_CODE: Final[dict[int, type[WharfError]]] = {s.code: _make(s) for s in ERROR_TABLE}
_BY_NAME = {cls.__name__: cls for cls in ERRORS_BY_CODE.values()}

# Named aliases so that code and type checkers can refer to each class.
ContentTooLarge: type[WharfError] = _BY_NAME["ContentTooLarge"]
Unroutable: type[WharfError] = _BY_NAME["Unroutable"]
ConnectionForced: type[WharfError] = _BY_NAME["ConnectionForced"]
InvalidArgument: type[WharfError] = _BY_NAME["InvalidArgument"]
AccessRefused: type[WharfError] = _BY_NAME["AccessRefused"]
NotFound: type[WharfError] = _BY_NAME["NotFound"]
ResourceLocked: type[WharfError] = _BY_NAME["ResourceLocked"]
PreconditionFailed: type[WharfError] = _BY_NAME["PreconditionFailed"]
UnknownDeliveryTag: type[WharfError] = _BY_NAME["UnknownDeliveryTag"]
DeliveryAckTimeout: type[WharfError] = _BY_NAME["DeliveryAckTimeout"]
RebalanceInProgress: type[WharfError] = _BY_NAME["RebalanceInProgress"]
IllegalGeneration: type[WharfError] = _BY_NAME["IllegalGeneration"]
UnknownMember: type[WharfError] = _BY_NAME["UnknownMember"]
OutOfOrderSequence: type[WharfError] = _BY_NAME["OutOfOrderSequence"]
ProducerFenced: type[WharfError] = _BY_NAME["ProducerFenced"]
FencedInstanceId: type[WharfError] = _BY_NAME["FencedInstanceId"]
InvalidTxnState: type[WharfError] = _BY_NAME["InvalidTxnState"]
OffsetOutOfRange: type[WharfError] = _BY_NAME["OffsetOutOfRange"]
TransactionAborted: type[WharfError] = _BY_NAME["TransactionAborted"]
FrameError: type[WharfError] = _BY_NAME["FrameError"]
ProtocolSyntaxError: type[WharfError] = _BY_NAME["ProtocolSyntaxError"]
CommandInvalid: type[WharfError] = _BY_NAME["CommandInvalid"]
ProtocolMismatch: type[WharfError] = _BY_NAME["ProtocolMismatch"]
ResourceError: type[WharfError] = _BY_NAME["ResourceError"]
HeartbeatTimeout: type[WharfError] = _BY_NAME["HeartbeatTimeout"]
FrameTooLarge: type[WharfError] = _BY_NAME["FrameTooLarge"]
NotImplementedByBroker: type[WharfError] = _BY_NAME["NotImplementedByBroker"]
InternalError: type[WharfError] = _BY_NAME["InternalError"]
ConnectionLost: type[WharfError] = _BY_NAME["ConnectionLost"]


def error_from_code(code: int, message: str, details: dict[str, Any] | None = None) -> WharfError:
    """Build the exception for a wire code; unknown codes map to the root class."""
    cls = ERRORS_BY_CODE.get(code)
    if cls is None:
        err = WharfError(message, details=details)
        err.code = code  # type: ignore[misc]
        return err
    return cls(message, details=details)


def is_fatal(code: int) -> bool:
    cls = ERRORS_BY_CODE.get(code)
    return cls.fatal if cls is not None else False
