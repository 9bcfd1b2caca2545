"""Wharf Python SDK: ``conn = await wharf.connect("wharf://guest:guest@127.0.0.1:5680")``."""

from wharf.protocol.errors import (
    AccessRefused,
    CommandInvalid,
    ConnectionForced,
    ConnectionLost,
    ContentTooLarge,
    DeliveryAckTimeout,
    FencedInstanceId,
    FrameError,
    FrameTooLarge,
    HeartbeatTimeout,
    IllegalGeneration,
    InternalError,
    InvalidArgument,
    InvalidTxnState,
    NotFound,
    NotImplementedByBroker,
    OffsetOutOfRange,
    OutOfOrderSequence,
    PreconditionFailed,
    ProducerFenced,
    ProtocolMismatch,
    ProtocolSyntaxError,
    RebalanceInProgress,
    ResourceError,
    ResourceLocked,
    TransactionAborted,
    UnknownDeliveryTag,
    UnknownMember,
    Unroutable,
    WharfError,
)

from . import sync
from .confirms import PublishResult
from .connection import Connection, __version__, connect
from .consumer import Consumer
from .logs import Producer, Record
from .logs_api import FetchResult
from .message import Message, QueueInfo
from .recovery import ConnectionEvent
from .stream import Stream, TopicPartition
from .tls import TlsError
from .transactions import TransactionalProducer

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
    "FencedInstanceId",
    "FetchResult",
    "FrameError",
    "FrameTooLarge",
    "HeartbeatTimeout",
    "IllegalGeneration",
    "InternalError",
    "InvalidArgument",
    "InvalidTxnState",
    "Message",
    "NotFound",
    "NotImplementedByBroker",
    "OffsetOutOfRange",
    "OutOfOrderSequence",
    "PreconditionFailed",
    "Producer",
    "ProducerFenced",
    "ProtocolMismatch",
    "ProtocolSyntaxError",
    "PublishResult",
    "QueueInfo",
    "RebalanceInProgress",
    "Record",
    "ResourceError",
    "ResourceLocked",
    "Stream",
    "TlsError",
    "TopicPartition",
    "TransactionAborted",
    "TransactionalProducer",
    "UnknownDeliveryTag",
    "UnknownMember",
    "Unroutable",
    "WharfError",
    "__version__",
    "connect",
    "sync",
]
