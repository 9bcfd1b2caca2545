"""Wharf Python SDK: ``conn = await wharf.connect("wharf://guest:guest@127.0.0.1:5680")``."""

from wharf.protocol.errors import (
    AccessRefused,
    CommandInvalid,
    ConnectionForced,
    ConnectionLost,
    ContentTooLarge,
    DeliveryAckTimeout,
    FrameError,
    FrameTooLarge,
    HeartbeatTimeout,
    InternalError,
    InvalidArgument,
    NotFound,
    NotImplementedByBroker,
    PreconditionFailed,
    ProtocolMismatch,
    ProtocolSyntaxError,
    ResourceError,
    ResourceLocked,
    UnknownDeliveryTag,
    Unroutable,
    WharfError,
)

from . import sync
from .connection import Connection, __version__, connect
from .consumer import Consumer
from .message import Message, QueueInfo
from .recovery import ConnectionEvent

__all__ = [
    "AccessRefused",
    "CommandInvalid",
    "Connection",
    "ConnectionEvent",
    "ConnectionForced",
    "ConnectionLost",
    "Consumer",
    "ContentTooLarge",
    "DeliveryAckTimeout",
    "FrameError",
    "FrameTooLarge",
    "HeartbeatTimeout",
    "InternalError",
    "InvalidArgument",
    "Message",
    "NotFound",
    "NotImplementedByBroker",
    "PreconditionFailed",
    "ProtocolMismatch",
    "ProtocolSyntaxError",
    "QueueInfo",
    "ResourceError",
    "ResourceLocked",
    "UnknownDeliveryTag",
    "Unroutable",
    "WharfError",
    "__version__",
    "connect",
    "sync",
]
