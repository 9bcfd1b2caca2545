"""The one publish path: validation, routing, overflow, persistence.

Every way a message enters the queues goes through ``Publisher``: the native wire
(PUBLISH, PUBLISH_MANY), AMQP basic.publish, HTTP publish, dead-lettering and DLQ replay.
A publish to the default exchange with a direct reply-to name as routing key
(replies.py) goes to that name's reply consumer instead of a queue.  The publisher
knows nothing of frames or HTTP; it answers with a ``PublishResult`` from which each
adapter builds its own answer (confirms/nacks/RETURN frames, a JSON body).

Errors are raised before anything is enqueued: a validation error, a failed store for a
persistent message bound for a durable queue, a refused append to a bound log topic.
A queue refusing a message (x-overflow reject-publish) is not an error: it is counted in
``PublishResult.refused`` (the last ``refused`` messages of the call did not fit).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Final, Protocol

from wharf.protocol.errors import (
    AccessRefused,
    ContentTooLarge,
    InvalidArgument,
    NotFound,
    PreconditionFailed,
    ProtocolSyntaxError,
    ResourceError,
)

from .exchanges import Exchange, TopicTarget
from .names import check_name_length
from .replies import REPLY_TO_PREFIX, ReplyRegistry
from .routed import append_routed, routed_records

if TYPE_CHECKING:
    from ..logs.partition import Partition
    from .queues import Queue
    from .topology import Topology

# The largest integer a property may carry (msgpack's unsigned 64-bit range).
MAX_PROPERTY_INT: Final = 2**64 - 1
MAX_PRIORITY: Final = 255
DEFAULT_MAX_MESSAGE_BYTES: Final = 128 * 1024 * 1024
# Property name -> the type its value must have when present.
_TYPED_PROPERTIES: Final = (
    ("content_type", str),
    ("content_encoding", str),
    ("message_id", str),
    ("correlation_id", str),
    ("reply_to", str),
    ("type", str),
    ("app_id", str),
    ("user_id", str),
    ("persistent", bool),
)
QUEUE_FULL_MESSAGE: Final = "queue is full (x-max-length / x-overflow reject-publish)"


class PublishStats(Protocol):
    """The broker-wide counters the publish path keeps (plain ints)."""

    published: int
    unroutable: int


class _Stats:
    __slots__ = ("published", "unroutable")

    def __init__(self) -> None:
        self.published = 0
        self.unroutable = 0


class PublishResult:
    """What one publish call did.  ``Publisher`` reuses one instance (no allocation per
    message): read it before the next publish.  Every field is assigned at the end of
    the call, so a publish nested inside it (dead-lettering on overflow) cannot leave
    its values behind."""

    __slots__ = (
        "queues",
        "topics",
        "refused",
        "duplicates",
        "unroutable",
        "store_batch",
        "log_parts",
    )

    def __init__(self) -> None:
        # Queues and log topics the message(s) were routed to.
        self.queues = 0
        self.topics = 0
        # How many of the call's last messages a full queue refused (x-overflow).
        self.refused = 0
        # How many of the call's last messages were duplicates (x-dedup-window-ms): every
        # queue they were routed to had accepted their message_id within its window, so
        # none enqueued them.  Confirmed, flagged as duplicates where the wire can say so.
        self.duplicates = 0
        # Routed nowhere, or a direct reply whose consumer is gone (the adapter returns
        # mandatory messages).
        self.unroutable = False
        # The store batch a confirm must wait for (0: nothing written to the store).
        self.store_batch = 0
        # Log-topic partitions a persistent message was appended to: a confirm waits
        # for their fsync (None: nothing to wait for).
        self.log_parts: list[Partition] | None = None

    @property
    def routed(self) -> bool:
        """Reached a queue, a log topic or a reply consumer."""
        return not self.unroutable


class Publisher:
    """Owned by the topology; the broker sets ``stats``, ``alarms`` and
    ``max_message_bytes``."""

    __slots__ = ("topology", "stats", "alarms", "max_message_bytes", "result", "replies")

    def __init__(self, topology: Topology) -> None:
        self.topology = topology
        self.stats: PublishStats = _Stats()
        # Raised resource alarms; the broker replaces the set as alarms change.
        self.alarms: set[str] = set()
        self.max_message_bytes = DEFAULT_MAX_MESSAGE_BYTES
        self.result = PublishResult()
        # The vhost's direct reply-to consumers (replies.py).
        self.replies = ReplyRegistry()

    # -- validation ----------------------------------------------------------------

    @property
    def alarmed(self) -> bool:
        """A resource alarm is raised: the native wire stops reading publishers, HTTP
        publish is refused (``check_alarms``)."""
        return bool(self.alarms)

    def check_alarms(self) -> None:
        if self.alarms:
            raise ResourceError(
                f"publishing is blocked by resource alarm(s): {sorted(self.alarms)}"
            )

    def check(
        self,
        exchange_name: str,
        props: dict[str, Any] | None,
        bodies: list[bytes] | tuple[bytes, ...],
        user: str,
        routing_key: str,
    ) -> Exchange:
        """The exchange to publish to, after checking it, the routing key, the properties
        and bodies."""
        ex = self.topology.exchanges.get(exchange_name)
        if ex is None:
            raise NotFound(f"no exchange '{exchange_name}'", details={"exchange": exchange_name})
        if ex.internal:
            raise AccessRefused(
                f"cannot publish to internal exchange '{exchange_name}'",
                details={"exchange": exchange_name},
            )
        # An AMQP consumer must get the routing key whole (a short string).
        check_name_length("routing key", routing_key)
        if props:
            check_properties(props, user)
        limit = self.max_message_bytes
        for body in bodies:
            if type(body) is not bytes:
                # A malformed frame field (HTTP bodies are always bytes).
                raise ProtocolSyntaxError("a message body must be bin (bytes)")
            if len(body) > limit:
                raise ContentTooLarge(
                    f"message of {len(body)} bytes exceeds max_message_bytes={limit}"
                )
        return ex

    def check_store(self) -> None:
        """Raise if the message store has failed (persistent messages cannot be kept)."""
        store = self.topology.store
        if store is not None and store.failed is not None:
            raise ResourceError(f"message store unavailable: {store.failed}")

    # -- the entry point -----------------------------------------------------------

    def publish(
        self,
        exchange_name: str,
        routing_key: str,
        props: dict[str, Any] | None,
        bodies: list[bytes] | tuple[bytes, ...],
        user: str,
    ) -> PublishResult:
        """Check, route and enqueue ``bodies`` (one routing key and properties)."""
        ex = self.check(exchange_name, props, bodies, user, routing_key)
        # A direct reply (replies.py): the default exchange and a reply name.
        if not exchange_name and routing_key.startswith(REPLY_TO_PREFIX):
            return self.reply(routing_key, props, bodies)
        return self.route(ex, ex.name, routing_key, props, bodies)

    def reply(
        self, name: str, props: dict[str, Any] | None, bodies: list[bytes] | tuple[bytes, ...]
    ) -> PublishResult:
        """Checked messages published to the reply name ``name``: delivered to its consumer
        at once (nothing stored, so nothing for a confirm to wait for), or unroutable when
        the consumer is gone."""
        n = len(bodies)
        consumer = self.replies.get(name)
        if consumer is not None:
            consumer.deliver_replies(name, props, bodies)
        stats = self.stats
        stats.published += n
        if consumer is None:
            stats.unroutable += n
        res = self.result
        res.queues = 0
        res.topics = 0
        res.refused = 0
        res.duplicates = 0
        res.unroutable = consumer is None
        res.store_batch = 0
        res.log_parts = None
        return res

    def route(
        self,
        ex: Exchange | None,
        exchange_name: str,
        routing_key: str,
        props: dict[str, Any] | None,
        bodies: list[bytes] | tuple[bytes, ...],
        *,
        queues: list[Queue] | None = None,
        accept: Callable[[Queue], bool] | None = None,
        count: bool = True,
    ) -> PublishResult:
        """Route already checked messages and enqueue them.

        ``queues`` skips routing (replay: one named queue, the message keeps its
        exchange and routing key); ``accept`` filters the routed queues (dead-letter
        cycle detection); ``count`` is False for messages that were counted when first
        published (dead-lettering, replay).
        """
        n = len(bodies)
        topology = self.topology
        topics: list[TopicTarget] | None = None
        if queues is None:
            assert ex is not None
            headers = props.get("headers") if props else None
            topics = [] if topology.topic_targets else None
            queues = topology.route(ex, routing_key, headers, topics)
            if accept is not None:
                queues = [q for q in queues if accept(q)]
        persistent = props is not None and props.get("persistent") is True
        if queues:
            store = topology.store
            if store is not None and any(q.persist and (persistent or q.keeps_all) for q in queues):
                if store.failed is not None:
                    raise ResourceError(f"message store unavailable: {store.failed}")
                if count:
                    # A client's publish: a new segment, if one is due, before any queue
                    # takes the message, so that out of fds it is refused here with
                    # nothing changed.  (Dead-lettered and replayed messages, which
                    # nobody could retry, go to the full segment instead.)
                    store.ensure_room()
        log_parts: list[Partition] | None = None
        if topics:
            # Appended before the queues get the message: a refused append raises
            # without a copy left in any queue.
            registry = topology.topics
            assert registry is not None
            records = routed_records(exchange_name, routing_key, props, bodies)
            parts = append_routed(registry, topics, records, persistent=persistent)
            if persistent:
                log_parts = parts
        stats = self.stats
        if count:
            stats.published += n
        stored = False
        refused = 0
        # A message is a duplicate only if no queue (nor log topic) took it.
        duplicates = n if queues and not topics else 0
        durable_dup = False
        for q in queues:
            # Dead-lettered and replayed messages (count=False) are not deduplicated.
            durable, accepted, dups = q.enqueue_many(
                exchange_name, routing_key, props, bodies, persistent, count
            )
            if durable:
                stored = True
            if accepted + dups < n:
                refused = max(refused, n - accepted - dups)
            if dups < duplicates:
                duplicates = dups
            if dups and persistent and q.persist:
                durable_dup = True
        unroutable = not queues and not topics
        if unroutable and count:
            stats.unroutable += n
        batch = 0
        if stored:
            store = topology.store
            assert store is not None
            batch = store.batch
        elif durable_dup:
            # The original may still be on its way to the disk: the duplicate's confirm
            # must not overtake it.
            store = topology.store
            assert store is not None
            batch = store.tail_batch
        res = self.result
        res.queues = len(queues)
        res.topics = len(topics) if topics else 0
        res.refused = refused
        res.duplicates = duplicates
        res.unroutable = unroutable
        res.store_batch = batch
        res.log_parts = log_parts
        return res


def check_properties(props: dict[str, Any], user: str) -> None:
    """Message properties: types and ranges, and ``user_id`` is the publisher's user."""
    uid = props.get("user_id")
    if uid is not None and uid != user:
        raise PreconditionFailed(
            f"user_id property set to {uid!r} but authenticated user was {user!r}"
        )
    for key, kind in _TYPED_PROPERTIES:
        v = props.get(key)
        if v is not None and type(v) is not kind:
            raise InvalidArgument(
                f"property {key!r} must be a {kind.__name__}", details={"argument": key}
            )
    prio = props.get("priority")
    if prio is not None and (type(prio) is not int or not 0 <= prio <= MAX_PRIORITY):
        raise InvalidArgument(
            f"priority must be an integer 0..{MAX_PRIORITY}", details={"argument": "priority"}
        )
    exp = props.get("expiration")
    if exp is not None and (type(exp) is not int or not 0 <= exp <= MAX_PROPERTY_INT):
        raise InvalidArgument(
            "expiration must be a non-negative integer (ms)", details={"argument": "expiration"}
        )
    hdrs = props.get("headers")
    if hdrs is not None and not isinstance(hdrs, dict):
        raise InvalidArgument("headers must be a map", details={"argument": "headers"})
    ts = props.get("timestamp")
    if ts is not None and type(ts) is not int:
        raise InvalidArgument(
            "timestamp must be integer epoch milliseconds", details={"argument": "timestamp"}
        )
