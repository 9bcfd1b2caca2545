"""Frame types of the Wharf wire protocol (version 1).  No I/O here.

Every frame on the wire is ``u32 big-endian length`` followed by a msgpack array::

    [frame_type: int, request_id: int, field_2, field_3, ...]

Each class below is one frame type; its fields after ``request_id`` are listed in
order and documented byte-exactly in protocol/SPEC.md.  Forward compatibility:
a receiver ignores trailing fields it does not know, and fields after the
required ones may be omitted by the sender (the defaults below apply).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Final, NamedTuple

from .errors import NotImplementedByBroker, ProtocolSyntaxError

PROTOCOL_VERSION: Final = 1
# Client opens with these 8 bytes: b"WHARF" 0x00 <major u8> <minor u8>.
MAGIC: Final = b"WHARF\x00"
HANDSHAKE: Final = MAGIC + bytes([PROTOCOL_VERSION, 0])
HANDSHAKE_BYTES: Final = len(HANDSHAKE)

# Frame type numbers (the first element of every frame array).
ERROR: Final = 0
HELLO: Final = 1
AUTH: Final = 2
AUTH_OK: Final = 3
HEARTBEAT: Final = 4
CLOSE: Final = 5
CLOSE_OK: Final = 6
OK: Final = 7
AUTH_CHALLENGE: Final = 8
AUTH_RESPONSE: Final = 9
EXCHANGE_DECLARE: Final = 10
EXCHANGE_DELETE: Final = 11
EXCHANGE_BIND: Final = 12
EXCHANGE_UNBIND: Final = 13
QUEUE_DECLARE: Final = 20
QUEUE_BIND: Final = 21
QUEUE_UNBIND: Final = 22
QUEUE_PURGE: Final = 23
QUEUE_DELETE: Final = 24
QUEUE_REPLAY: Final = 25
POLICY_SET: Final = 26
POLICY_DELETE: Final = 27
POLICY_LIST: Final = 28
PUBLISH: Final = 30
PUBLISH_MANY: Final = 31
CONFIRM: Final = 32
PUBLISH_NACK: Final = 33
RETURN: Final = 34
CONSUME: Final = 40
CANCEL: Final = 41
CANCELLED: Final = 42
DELIVER: Final = 43
GET: Final = 44
GET_OK: Final = 45
ACK: Final = 50
NACK: Final = 51
REJECT: Final = 52
ACK_MANY: Final = 53
BLOCKED: Final = 60
UNBLOCKED: Final = 61
THROTTLED: Final = 62
# --- log topics (broker/logs, docs/logs.md) ---
TOPIC_CREATE: Final = 80
TOPIC_DELETE: Final = 81
TOPIC_DESCRIBE: Final = 82
PRODUCE: Final = 83
FETCH: Final = 84
LIST_OFFSETS: Final = 85
TOPIC_ALTER: Final = 86
FETCH_MANY: Final = 87
TOPIC_LIST: Final = 88
INIT_PRODUCER: Final = 89
TOPIC_BIND: Final = 90
TOPIC_UNBIND: Final = 91
INIT_TRANSACTIONS: Final = 92
TXN_SEND_OFFSETS: Final = 93
END_TXN: Final = 94
TXN_ACK: Final = 95
GROUP_JOIN: Final = 100
GROUP_HEARTBEAT: Final = 101
GROUP_LEAVE: Final = 102
OFFSET_COMMIT: Final = 103
OFFSET_FETCH: Final = 104
GROUP_LIST: Final = 105
GROUP_DESCRIBE: Final = 106
GROUP_DELETE: Final = 107
GROUP_RESET_OFFSETS: Final = 108
# --- end log topics ---

# PUBLISH / PUBLISH_MANY flag bits.
FLAG_MANDATORY: Final = 0x01

# Levels of maps and arrays the broker accepts in one map field of a client's frame
# (message properties and headers, arguments, configs, policy definitions, client
# properties), as in the management API's JSON bodies.  msgpack alone decodes up to 1,024
# levels, which neither the definitions file (JSON) nor a peer reading the value back
# inside a bigger frame could take.  Deeper: request-level 502 (fatal before AUTH_OK).
MAX_NESTING_DEPTH: Final = 32

# Message property keys (the ``properties`` map).  Unknown keys are carried through.
PROPERTY_KEYS: Final = (
    "headers",
    "content_type",
    "content_encoding",
    "message_id",
    "correlation_id",
    "reply_to",
    "timestamp",
    "type",
    "app_id",
    "user_id",
    "persistent",
    "priority",
    "expiration",
)

Props = dict[str, Any] | None
Args = dict[str, Any]

_STR = (str,)
_INT = (int,)
_BOOL = (bool,)
_BIN = (bytes,)
_MAP = (dict,)
_OPT_MAP = (dict, type(None))
_LIST = (list, tuple)
_OPT_INT = (int, type(None))
_OPT_STR = (str, type(None))
_OPT_LIST = (list, tuple, type(None))


class Error(NamedTuple):
    request_id: int
    code: int
    message: str
    fatal: bool = False
    details: dict[str, Any] | None = None


class Hello(NamedTuple):
    request_id: int
    version: int
    server: str
    max_frame_bytes: int
    max_message_bytes: int
    heartbeat_s: int
    mechanisms: list[str]


class Auth(NamedTuple):
    request_id: int
    mechanism: str
    username: str
    # The mechanism's initial response: PLAIN's password, SCRAM-SHA-256's client-first
    # message, "" for EXTERNAL (SPEC.md, "Authentication mechanisms").
    password: str
    heartbeat_s: int = 0
    client_properties: dict[str, Any] | None = None


class AuthOk(NamedTuple):
    request_id: int
    connection_id: str
    heartbeat_s: int
    server_properties: dict[str, Any] | None = None
    # SCRAM-SHA-256's server-final message ("v=<server signature>"); None otherwise.
    server_final: str | None = None


class AuthChallenge(NamedTuple):
    """A step of a multi-step mechanism, server to client (SCRAM: server-first)."""

    request_id: int
    data: str


class AuthResponse(NamedTuple):
    """The client's answer to AUTH_CHALLENGE (SCRAM: client-final)."""

    request_id: int
    data: str


class Heartbeat(NamedTuple):
    request_id: int = 0


class Close(NamedTuple):
    request_id: int
    code: int = 0
    reason: str = ""


class CloseOk(NamedTuple):
    request_id: int


class Ok(NamedTuple):
    request_id: int
    result: dict[str, Any] | None = None


class ExchangeDeclare(NamedTuple):
    request_id: int
    name: str
    type: str = "direct"
    durable: bool = False
    auto_delete: bool = False
    internal: bool = False
    passive: bool = False
    arguments: dict[str, Any] | None = None


class ExchangeDelete(NamedTuple):
    request_id: int
    name: str
    if_unused: bool = False


class ExchangeBind(NamedTuple):
    request_id: int
    destination: str
    source: str
    routing_key: str = ""
    arguments: dict[str, Any] | None = None


class ExchangeUnbind(NamedTuple):
    request_id: int
    destination: str
    source: str
    routing_key: str = ""
    arguments: dict[str, Any] | None = None


class QueueDeclare(NamedTuple):
    request_id: int
    name: str
    durable: bool = False
    exclusive: bool = False
    auto_delete: bool = False
    passive: bool = False
    arguments: dict[str, Any] | None = None


class QueueBind(NamedTuple):
    request_id: int
    queue: str
    exchange: str
    routing_key: str = ""
    arguments: dict[str, Any] | None = None


class QueueUnbind(NamedTuple):
    request_id: int
    queue: str
    exchange: str
    routing_key: str = ""
    arguments: dict[str, Any] | None = None


class QueuePurge(NamedTuple):
    request_id: int
    queue: str


class QueueReplay(NamedTuple):
    """Move dead-lettered messages out of ``queue`` (a DLQ) back to where they died."""

    request_id: int
    queue: str
    target: str | None = None  # nil: the queue each message last died in
    reason: str | None = None  # only messages whose last death had this reason
    limit: int = 0  # at most this many (0 = all)
    max_deaths: int = 0  # only messages that died at most this many times there (0 = any)


class PolicySet(NamedTuple):
    """Create or replace a server-side queue policy (administrator only)."""

    request_id: int
    name: str
    pattern: str
    definition: dict[str, Any]
    priority: int = 0
    apply_to: str = "queues"


class PolicyDelete(NamedTuple):
    request_id: int
    name: str


class PolicyList(NamedTuple):
    request_id: int


class QueueDelete(NamedTuple):
    request_id: int
    queue: str
    if_unused: bool = False
    if_empty: bool = False


class Publish(NamedTuple):
    """``request_id`` is the publisher sequence number (0 = no confirm wanted)."""

    request_id: int
    exchange: str
    routing_key: str
    properties: dict[str, Any] | None
    body: bytes
    flags: int = 0


class PublishMany(NamedTuple):
    """Bodies get consecutive sequence numbers starting at ``request_id`` (0 = none)."""

    request_id: int
    exchange: str
    routing_key: str
    properties: dict[str, Any] | None
    bodies: list[bytes]
    flags: int = 0


class Confirm(NamedTuple):
    """Every sequence number <= ``up_to`` not already nacked is confirmed."""

    request_id: int
    up_to: int


class PublishNack(NamedTuple):
    request_id: int
    seq: int
    code: int
    message: str


class Return(NamedTuple):
    request_id: int
    seq: int
    code: int
    reason: str
    exchange: str
    routing_key: str
    properties: dict[str, Any] | None
    body: bytes


class Consume(NamedTuple):
    request_id: int
    queue: str
    consumer_tag: str = ""
    prefetch: int = 0
    no_ack: bool = False
    exclusive: bool = False
    arguments: dict[str, Any] | None = None


class Cancel(NamedTuple):
    request_id: int
    consumer_tag: str


class Cancelled(NamedTuple):
    request_id: int
    consumer_tag: str
    code: int
    reason: str


# One delivery inside DELIVER / GET_OK:
# [delivery_tag, redelivered, delivery_count, exchange, routing_key, properties, body]
Delivery = tuple[int, bool, int, str, str, "dict[str, Any] | None", bytes]


class Deliver(NamedTuple):
    request_id: int
    consumer_tag: str
    deliveries: list[Any]


class Get(NamedTuple):
    request_id: int
    queue: str
    no_ack: bool = False


class GetOk(NamedTuple):
    request_id: int
    delivery: Any
    message_count: int = 0


class Ack(NamedTuple):
    request_id: int
    delivery_tag: int
    multiple: bool = False


class Nack(NamedTuple):
    request_id: int
    delivery_tag: int
    multiple: bool = False
    requeue: bool = True
    delay_ms: int = 0  # with requeue: back in the queue after this long (Wharf)


class Reject(NamedTuple):
    request_id: int
    delivery_tag: int
    requeue: bool = True


class AckMany(NamedTuple):
    request_id: int
    delivery_tags: list[int]


class Blocked(NamedTuple):
    """Server -> client: a resource alarm; the broker stops reading publishes."""

    request_id: int
    reason: str


class Unblocked(NamedTuple):
    request_id: int


class Throttled(NamedTuple):
    """Server -> client: the user is over a byte-rate quota; the broker holds this
    connection back for ``throttle_ms`` (``direction``: "produce" or "consume")."""

    request_id: int
    direction: str
    throttle_ms: int


# --- log topics ---
class TopicCreate(NamedTuple):
    request_id: int
    name: str
    partitions: int = 1
    config: dict[str, Any] | None = None


class TopicDelete(NamedTuple):
    request_id: int
    name: str


class TopicDescribe(NamedTuple):
    request_id: int
    name: str


class TopicAlter(NamedTuple):
    """Grow a topic to ``partitions`` partitions (never shrinks; nil = unchanged) and/or
    change settings (``config`` keys replace the current values)."""

    request_id: int
    name: str
    partitions: int | None = None
    config: dict[str, Any] | None = None


class TopicList(NamedTuple):
    request_id: int


class Produce(NamedTuple):
    """Append one batch.  ``payload``: the records as protocol/records.py describes
    (a msgpack array, gzip-compressed when ``codec`` is 1), stored as sent.
    ``partition`` -1 = crc32(first record's key) % partitions, or round-robin without
    a key.  ``acks``: "none" (no reply at all), "written" or "fsynced".  An idempotent
    producer sets producer_id/epoch (from INIT_PRODUCER) and the sequence number of
    the first record, counted per partition from 0."""

    request_id: int
    topic: str
    partition: int
    payload: bytes
    codec: int = 0
    acks: str = "written"
    producer_id: int = -1
    producer_epoch: int = -1
    base_sequence: int = -1
    transactional: bool = False


# Fetch isolation levels (FETCH / FETCH_MANY ``isolation_level``).
READ_UNCOMMITTED: Final = 0
READ_COMMITTED: Final = 1


class Fetch(NamedTuple):
    """Stored batches from ``offset`` on; waits up to ``max_wait_ms`` for data when
    there is none yet (long poll).  ``isolation_level`` 1 (read committed): only up to
    the last stable offset, without the batches of aborted transactions."""

    request_id: int
    topic: str
    partition: int
    offset: int
    max_bytes: int = 1_048_576
    max_wait_ms: int = 0
    isolation_level: int = READ_UNCOMMITTED


class FetchMany(NamedTuple):
    """``partitions``: array of [topic, partition, offset, max_bytes].  Answers as soon
    as any partition has data, or after ``max_wait_ms``."""

    request_id: int
    partitions: list[Any]
    max_wait_ms: int = 0
    max_bytes: int = 52_428_800
    isolation_level: int = READ_UNCOMMITTED


class ListOffsets(NamedTuple):
    """Earliest and latest offsets; with ``timestamp`` (epoch ms) also the first offset
    whose record timestamp is >= it (latest when there is none)."""

    request_id: int
    topic: str
    partition: int
    timestamp: int | None = None


class InitProducer(NamedTuple):
    """Allocate an idempotent producer id (answered with producer_id, producer_epoch)."""

    request_id: int


class InitTransactions(NamedTuple):
    """Register a transactional producer: answers ``producer_id`` and a bumped
    ``producer_epoch`` (fencing older ones) and aborts a transaction the previous epoch
    left open.  ``timeout_ms`` -1: the broker's transaction_timeout_ms."""

    request_id: int
    transactional_id: str
    timeout_ms: int = -1


class TxnSendOffsets(NamedTuple):
    """Add consumed offsets of ``group`` to the transaction: committed only if it
    commits.  ``offsets``: array of [topic, partition, offset, metadata str|nil]."""

    request_id: int
    transactional_id: str
    producer_id: int
    producer_epoch: int
    group: str
    offsets: list[Any]
    member_id: str = ""
    generation: int = -1


class TxnAck(NamedTuple):
    """Ack deliveries of this connection in the transaction: applied only if it commits,
    requeued (redelivered) if it aborts.  ``delivery_tags``: array of unacked tags."""

    request_id: int
    transactional_id: str
    producer_id: int
    producer_epoch: int
    delivery_tags: list[Any]


class EndTxn(NamedTuple):
    """Commit (``commit`` true) or abort the producer's open transaction."""

    request_id: int
    transactional_id: str
    producer_id: int
    producer_epoch: int
    commit: bool


class TopicBind(NamedTuple):
    """Append messages routed by ``exchange`` with ``routing_key`` to ``topic``."""

    request_id: int
    topic: str
    exchange: str
    routing_key: str = ""
    arguments: dict[str, Any] | None = None


class TopicUnbind(NamedTuple):
    request_id: int
    topic: str
    exchange: str
    routing_key: str = ""
    arguments: dict[str, Any] | None = None


class GroupJoin(NamedTuple):
    """Join (or rejoin) a consumer group.  The answer comes when the group's next
    generation is formed: {member_id, generation, assignment: [[topic, [partitions]]],
    strategy, members}.  ``member_id`` "" for a new member; ``instance_id`` for static
    membership; ``owned`` = [[topic, [partitions]]] the member holds (sticky)."""

    request_id: int
    group: str
    topics: list[Any]
    member_id: str = ""
    instance_id: str | None = None
    strategy: str = "range"
    session_timeout_ms: int = 45_000
    rebalance_timeout_ms: int = 60_000
    owned: list[Any] | None = None


class GroupHeartbeat(NamedTuple):
    request_id: int
    group: str
    member_id: str
    generation: int


class GroupLeave(NamedTuple):
    request_id: int
    group: str
    member_id: str


class OffsetCommit(NamedTuple):
    """``offsets``: array of [topic, partition, offset, metadata str|nil]; offset = the
    next offset to read.  member_id "" and generation -1 commit for a group that has
    no members (as Kafka's standalone commits)."""

    request_id: int
    group: str
    member_id: str
    generation: int
    offsets: list[Any]


class OffsetFetch(NamedTuple):
    request_id: int
    group: str
    topics: list[Any] | None = None


class GroupList(NamedTuple):
    request_id: int


class GroupDescribe(NamedTuple):
    request_id: int
    group: str


class GroupDelete(NamedTuple):
    request_id: int
    group: str


class GroupResetOffsets(NamedTuple):
    """Move a group's committed offsets (only while it has no members): ``to`` is
    "earliest", "latest", "offset" (``value`` = the offset) or "timestamp" (``value``
    = epoch ms).  ``partitions`` nil = all partitions of the topic."""

    request_id: int
    group: str
    topic: str
    to: str
    value: int | None = None
    partitions: list[Any] | None = None


# --- end log topics ---


Frame = (
    Error
    | Hello
    | Auth
    | AuthOk
    | AuthChallenge
    | AuthResponse
    | Heartbeat
    | Close
    | CloseOk
    | Ok
    | ExchangeDeclare
    | ExchangeDelete
    | ExchangeBind
    | ExchangeUnbind
    | QueueDeclare
    | QueueBind
    | QueueUnbind
    | QueuePurge
    | QueueDelete
    | QueueReplay
    | PolicySet
    | PolicyDelete
    | PolicyList
    | Publish
    | PublishMany
    | Confirm
    | PublishNack
    | Return
    | Consume
    | Cancel
    | Cancelled
    | Deliver
    | Get
    | GetOk
    | Ack
    | Nack
    | Reject
    | AckMany
    | Blocked
    | Unblocked
    | Throttled
    | TopicCreate
    | TopicDelete
    | TopicDescribe
    | TopicAlter
    | Produce
    | Fetch
    | ListOffsets
    | FetchMany
    | TopicList
    | InitProducer
    | TopicBind
    | TopicUnbind
    | InitTransactions
    | TxnSendOffsets
    | TxnAck
    | EndTxn
    | GroupJoin
    | GroupHeartbeat
    | GroupLeave
    | OffsetCommit
    | OffsetFetch
    | GroupList
    | GroupDescribe
    | GroupDelete
    | GroupResetOffsets
)


TYPE_OF: Final[dict[type, int]] = {
    Error: ERROR,
    Hello: HELLO,
    Auth: AUTH,
    AuthOk: AUTH_OK,
    AuthChallenge: AUTH_CHALLENGE,
    AuthResponse: AUTH_RESPONSE,
    Heartbeat: HEARTBEAT,
    Close: CLOSE,
    CloseOk: CLOSE_OK,
    Ok: OK,
    ExchangeDeclare: EXCHANGE_DECLARE,
    ExchangeDelete: EXCHANGE_DELETE,
    ExchangeBind: EXCHANGE_BIND,
    ExchangeUnbind: EXCHANGE_UNBIND,
    QueueDeclare: QUEUE_DECLARE,
    QueueBind: QUEUE_BIND,
    QueueUnbind: QUEUE_UNBIND,
    QueuePurge: QUEUE_PURGE,
    QueueDelete: QUEUE_DELETE,
    QueueReplay: QUEUE_REPLAY,
    PolicySet: POLICY_SET,
    PolicyDelete: POLICY_DELETE,
    PolicyList: POLICY_LIST,
    Publish: PUBLISH,
    PublishMany: PUBLISH_MANY,
    Confirm: CONFIRM,
    PublishNack: PUBLISH_NACK,
    Return: RETURN,
    Consume: CONSUME,
    Cancel: CANCEL,
    Cancelled: CANCELLED,
    Deliver: DELIVER,
    Get: GET,
    GetOk: GET_OK,
    Ack: ACK,
    Nack: NACK,
    Reject: REJECT,
    AckMany: ACK_MANY,
    Blocked: BLOCKED,
    Unblocked: UNBLOCKED,
    Throttled: THROTTLED,
    TopicCreate: TOPIC_CREATE,
    TopicDelete: TOPIC_DELETE,
    TopicDescribe: TOPIC_DESCRIBE,
    TopicAlter: TOPIC_ALTER,
    Produce: PRODUCE,
    Fetch: FETCH,
    ListOffsets: LIST_OFFSETS,
    FetchMany: FETCH_MANY,
    TopicList: TOPIC_LIST,
    InitProducer: INIT_PRODUCER,
    TopicBind: TOPIC_BIND,
    TopicUnbind: TOPIC_UNBIND,
    InitTransactions: INIT_TRANSACTIONS,
    TxnSendOffsets: TXN_SEND_OFFSETS,
    TxnAck: TXN_ACK,
    EndTxn: END_TXN,
    GroupJoin: GROUP_JOIN,
    GroupHeartbeat: GROUP_HEARTBEAT,
    GroupLeave: GROUP_LEAVE,
    OffsetCommit: OFFSET_COMMIT,
    OffsetFetch: OFFSET_FETCH,
    GroupList: GROUP_LIST,
    GroupDescribe: GROUP_DESCRIBE,
    GroupDelete: GROUP_DELETE,
    GroupResetOffsets: GROUP_RESET_OFFSETS,
}


class _Spec(NamedTuple):
    cls: Any
    types: tuple[tuple[type, ...], ...]
    required: int
    defaults: tuple[Any, ...]
    map_fields: tuple[int, ...]  # positions of the map fields (nesting depth checked)


# Accepted Python types per field (after msgpack decoding), in field order.
_FIELD_TYPES: dict[Any, tuple[tuple[type, ...], ...]] = {
    Error: (_INT, _INT, _STR, _BOOL, _OPT_MAP),
    Hello: (_INT, _INT, _STR, _INT, _INT, _INT, _LIST),
    Auth: (_INT, _STR, _STR, _STR, _INT, _OPT_MAP),
    AuthOk: (_INT, _STR, _INT, _OPT_MAP, _OPT_STR),
    AuthChallenge: (_INT, _STR),
    AuthResponse: (_INT, _STR),
    Heartbeat: (_INT,),
    Close: (_INT, _INT, _STR),
    CloseOk: (_INT,),
    Ok: (_INT, _OPT_MAP),
    ExchangeDeclare: (_INT, _STR, _STR, _BOOL, _BOOL, _BOOL, _BOOL, _OPT_MAP),
    ExchangeDelete: (_INT, _STR, _BOOL),
    ExchangeBind: (_INT, _STR, _STR, _STR, _OPT_MAP),
    ExchangeUnbind: (_INT, _STR, _STR, _STR, _OPT_MAP),
    QueueDeclare: (_INT, _STR, _BOOL, _BOOL, _BOOL, _BOOL, _OPT_MAP),
    QueueBind: (_INT, _STR, _STR, _STR, _OPT_MAP),
    QueueUnbind: (_INT, _STR, _STR, _STR, _OPT_MAP),
    QueuePurge: (_INT, _STR),
    QueueDelete: (_INT, _STR, _BOOL, _BOOL),
    QueueReplay: (_INT, _STR, (str, type(None)), (str, type(None)), _INT, _INT),
    PolicySet: (_INT, _STR, _STR, _MAP, _INT, _STR),
    PolicyDelete: (_INT, _STR),
    PolicyList: (_INT,),
    Publish: (_INT, _STR, _STR, _OPT_MAP, _BIN, _INT),
    PublishMany: (_INT, _STR, _STR, _OPT_MAP, _LIST, _INT),
    Confirm: (_INT, _INT),
    PublishNack: (_INT, _INT, _INT, _STR),
    Return: (_INT, _INT, _INT, _STR, _STR, _STR, _OPT_MAP, _BIN),
    Consume: (_INT, _STR, _STR, _INT, _BOOL, _BOOL, _OPT_MAP),
    Cancel: (_INT, _STR),
    Cancelled: (_INT, _STR, _INT, _STR),
    Deliver: (_INT, _STR, _LIST),
    Get: (_INT, _STR, _BOOL),
    GetOk: (_INT, (list, tuple, type(None)), _INT),
    Ack: (_INT, _INT, _BOOL),
    Nack: (_INT, _INT, _BOOL, _BOOL, _INT),
    Reject: (_INT, _INT, _BOOL),
    AckMany: (_INT, _LIST),
    Blocked: (_INT, _STR),
    Unblocked: (_INT,),
    Throttled: (_INT, _STR, _INT),
    TopicCreate: (_INT, _STR, _INT, _OPT_MAP),
    TopicDelete: (_INT, _STR),
    TopicDescribe: (_INT, _STR),
    TopicAlter: (_INT, _STR, _OPT_INT, _OPT_MAP),
    TopicList: (_INT,),
    Produce: (_INT, _STR, _INT, _BIN, _INT, _STR, _INT, _INT, _INT, _BOOL),
    Fetch: (_INT, _STR, _INT, _INT, _INT, _INT, _INT),
    FetchMany: (_INT, _LIST, _INT, _INT, _INT),
    ListOffsets: (_INT, _STR, _INT, _OPT_INT),
    InitProducer: (_INT,),
    TopicBind: (_INT, _STR, _STR, _STR, _OPT_MAP),
    TopicUnbind: (_INT, _STR, _STR, _STR, _OPT_MAP),
    InitTransactions: (_INT, _STR, _INT),
    TxnSendOffsets: (_INT, _STR, _INT, _INT, _STR, _LIST, _STR, _INT),
    TxnAck: (_INT, _STR, _INT, _INT, _LIST),
    EndTxn: (_INT, _STR, _INT, _INT, _BOOL),
    GroupJoin: (_INT, _STR, _LIST, _STR, _OPT_STR, _STR, _INT, _INT, _OPT_LIST),
    GroupHeartbeat: (_INT, _STR, _STR, _INT),
    GroupLeave: (_INT, _STR, _STR),
    OffsetCommit: (_INT, _STR, _STR, _INT, _LIST),
    OffsetFetch: (_INT, _STR, _OPT_LIST),
    GroupList: (_INT,),
    GroupDescribe: (_INT, _STR),
    GroupDelete: (_INT, _STR),
    GroupResetOffsets: (_INT, _STR, _STR, _STR, _OPT_INT, _OPT_LIST),
}


def _build_specs() -> dict[int, _Spec]:
    specs: dict[int, _Spec] = {}
    for cls, types in _FIELD_TYPES.items():
        fields: tuple[str, ...] = cls._fields
        field_defaults: dict[str, Any] = cls._field_defaults
        assert len(fields) == len(types), cls
        defaults = tuple(field_defaults.get(f) for f in fields)
        required = len([f for f in fields if f not in field_defaults])
        maps = tuple(i for i, t in enumerate(types) if t is _MAP or t is _OPT_MAP)
        specs[TYPE_OF[cls]] = _Spec(cls, types, required, defaults, maps)
    return specs


SPECS: Final[dict[int, _Spec]] = _build_specs()
FRAME_NAMES: Final[dict[int, str]] = {t: s.cls.__name__ for t, s in SPECS.items()}


def _is_delivery(entry: Any) -> bool:
    # [delivery_tag, redelivered, delivery_count, exchange, routing_key, properties, body, ...]
    return (
        type(entry) in _LIST
        and len(entry) >= 7
        and type(entry[0]) is int
        and type(entry[1]) is bool
        and type(entry[2]) is int
        and type(entry[3]) is str
        and type(entry[4]) is str
        and (entry[5] is None or type(entry[5]) is dict)
        and type(entry[6]) is bytes
    )


def _all_strs(items: Any) -> bool:
    return all(type(item) is str for item in items)


def _all_deliveries(items: Any) -> bool:
    return all(_is_delivery(item) for item in items)


def _delivery_or_nil(item: Any) -> bool:
    return item is None or _is_delivery(item)


# Element checks for array fields, by frame type: (field index, check, what it must hold).
# Without them a list of the wrong things would pass parse() and fail in the receiver.
# PublishMany.bodies and AckMany.delivery_tags are deliberately not checked here: the
# broker checks them itself so that it can answer with PUBLISH_NACK per sequence number
# (or an ERROR echoing the ack id) instead of an ERROR echoing a sequence number.
_ITEM_CHECKS: Final[dict[int, tuple[tuple[int, Callable[[Any], bool], str], ...]]] = {
    HELLO: ((6, _all_strs, "an array of str"),),
    DELIVER: ((2, _all_deliveries, "an array of delivery entries"),),
    GET_OK: ((1, _delivery_or_nil, "a delivery entry or nil"),),
}


def parse(raw: list[Any] | tuple[Any, ...], max_depth: int = 0) -> Frame:
    """Turn a decoded frame array into its typed frame.

    ``raw`` has already been checked by the codec to be an array whose first two
    elements are ints.  Raises ``NotImplementedByBroker`` for an unknown type and
    ``ProtocolSyntaxError`` for missing or mistyped fields, or (``max_depth`` > 0, the
    broker's side: MAX_NESTING_DEPTH) for a map field whose maps and arrays nest deeper
    than ``max_depth`` levels; both carry the request id in ``details`` so the caller
    can answer the right request.
    """
    spec = SPECS.get(raw[0])
    rid = raw[1]
    if spec is None:
        raise NotImplementedByBroker(
            f"unknown frame type {raw[0]}", details={"request_id": rid, "frame_type": raw[0]}
        )
    types = spec.types
    n = len(types)
    values = list(raw[1 : n + 1])
    got = len(values)
    if got < spec.required:
        raise ProtocolSyntaxError(
            f"{spec.cls.__name__} needs {spec.required} fields after the type, got {got}",
            details={"request_id": rid, "frame_type": raw[0]},
        )
    if got < n:
        values.extend(spec.defaults[got:])
    for i in range(n):
        value = values[i]
        allowed = types[i]
        if not isinstance(value, allowed) or (allowed is _INT and isinstance(value, bool)):
            if value is None and spec.defaults[i] is not None and i >= spec.required:
                values[i] = spec.defaults[i]
                continue
            raise ProtocolSyntaxError(
                f"{spec.cls.__name__}.{spec.cls._fields[i]} must be "
                f"{'/'.join(t.__name__ for t in allowed)}, got {type(value).__name__}",
                details={"request_id": rid, "frame_type": raw[0]},
            )
    checks = _ITEM_CHECKS.get(raw[0])
    if checks is not None:
        for i, check, expected in checks:
            if not check(values[i]):
                raise ProtocolSyntaxError(
                    f"{spec.cls.__name__}.{spec.cls._fields[i]} must be {expected}",
                    details={"request_id": rid, "frame_type": raw[0]},
                )
    if max_depth:
        for i in spec.map_fields:
            value = values[i]
            if value and _deeper_than(value, max_depth):
                raise ProtocolSyntaxError(
                    f"{spec.cls.__name__}.{spec.cls._fields[i]} nests maps and arrays "
                    f"deeper than {max_depth} levels",
                    details={"request_id": rid, "frame_type": raw[0], "max_depth": max_depth},
                )
    frame: Frame = spec.cls._make(values)
    return frame


_NESTED: Final = frozenset({dict, list, tuple})


def _deeper_than(container: Any, levels: int) -> bool:
    """Whether maps and arrays nest more than ``levels`` levels in ``container`` (itself
    the first level).  Recurses at most ``levels`` deep; a flat map costs one pass."""
    if levels <= 0:
        return True
    below = levels - 1
    if type(container) is dict:
        for key, value in container.items():
            if type(value) in _NESTED and _deeper_than(value, below):
                return True
            if type(key) is tuple and _deeper_than(key, below):  # msgpack array keys
                return True
        return False
    return any(type(v) in _NESTED and _deeper_than(v, below) for v in container)


def as_array(frame: Frame) -> tuple[Any, ...]:
    """The msgpack array for a frame: its type number followed by its fields."""
    return (TYPE_OF[type(frame)], *frame)


# The AUTH client property that names the virtual host to work in (SPEC.md, "AUTH");
# a client that sends none gets the default vhost "/".
AUTH_VHOST_PROPERTY: Final = "vhost"
