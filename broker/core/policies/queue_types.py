"""Queue types (``x-queue-type``) and the equivalence check of a redeclare, in RabbitMQ's words.

Wharf has one queue implementation.  ``classic`` is the default; ``quorum`` is the same
queue with RabbitMQ 3.10's quorum rules: it must be durable, not exclusive and not
auto-delete, every message it takes is kept on disk (whatever its delivery mode), and the
arguments RabbitMQ refuses for quorum queues are refused.  Wharf runs on one node, so
there is no replication: a quorum queue is as safe as any durable queue (fsync before the
confirm).  ``stream`` is refused: Wharf's log topics are its streams.

The texts are RabbitMQ 3.10's without the "in vhost '/'" part, which the AMQP adapter
inserts after the queue's or exchange's name (``details`` carries the name).

This module is pure logic (no I/O).
"""

from __future__ import annotations

from typing import Any, Final

from wharf.protocol.errors import PreconditionFailed, ResourceLocked, WharfError

QUEUE_TYPE_ARG: Final = "x-queue-type"
CLASSIC: Final = "classic"
QUORUM: Final = "quorum"
STREAM: Final = "stream"
QUEUE_TYPES: Final = (CLASSIC, QUORUM)
# Arguments of other queue types that RabbitMQ 3.10 refuses on a quorum queue.
QUORUM_REFUSED_ARGS: Final = frozenset(
    {
        "x-max-priority",
        "x-queue-mode",
        "x-queue-master-locator",
        "x-queue-version",
        "x-max-age",
        "x-stream-max-segment-size-bytes",
        "x-initial-cluster-size",
    }
)
# Quorum arguments RabbitMQ accepts that mean nothing on one node with one queue
# implementation: accepted, kept, ignored.
QUORUM_IGNORED_ARGS: Final = frozenset(
    {
        "x-quorum-initial-group-size",
        "x-max-in-memory-length",
        "x-max-in-memory-bytes",
        "x-dead-letter-strategy",
        "x-queue-leader-locator",
    }
)
# The queue arguments compared on a redeclare, in RabbitMQ's order; a difference in any
# other argument is ignored, as RabbitMQ does.
EQUIVALENCE_ARGS: Final = (
    "x-expires",
    "x-message-ttl",
    "x-dead-letter-exchange",
    "x-dead-letter-routing-key",
    "x-max-length",
    "x-max-length-bytes",
    "x-max-in-memory-length",
    "x-max-in-memory-bytes",
    "x-max-priority",
    "x-overflow",
    "x-queue-mode",
    "x-queue-version",
    "x-single-active-consumer",
    "x-queue-type",
    "x-quorum-initial-group-size",
    "x-max-age",
    "x-stream-max-segment-size-bytes",
    "x-initial-cluster-size",
    "x-queue-leader-locator",
    "x-delivery-limit",
    "x-dead-letter-strategy",
    # Wharf's delayed retry
    "x-retry-delays",
    "x-retry-jitter",
)
EXCHANGE_EQUIVALENCE_ARGS: Final = ("alternate-exchange",)
_INT32: Final = 2**31
LOCKED_TEXT: Final = (
    "cannot obtain exclusive access to locked queue '{}'. It could be originally declared "
    "on another connection or the exclusive property value does not match that of the "
    "original declaration."
)


def queue_type_of(arguments: dict[str, Any]) -> str:
    qtype = arguments.get(QUEUE_TYPE_ARG)
    return qtype if isinstance(qtype, str) else CLASSIC


def _field_type(value: Any) -> str:
    """The AMQP field type a client sends ``value`` as (pika's choice for ints)."""
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int):
        return "signedint" if -_INT32 <= value < _INT32 else "long"
    if isinstance(value, float):
        return "double"
    if isinstance(value, dict):
        return "table"
    if isinstance(value, (list, tuple)):
        return "array"
    if value is None:
        return "void"
    return "longstr"


def _text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return str(value)


def _val(value: Any, typed: bool) -> str:
    """RabbitMQ's ``val/1``: none, 'v', or the value 'v' of type 't'."""
    if value is None:
        return "none"
    if typed:
        return f"the value '{_text(value)}' of type '{_field_type(value)}'"
    return f"'{_text(value)}'"


def inequivalent(kind: str, name: str, key: str, received: Any, current: Any) -> WharfError:
    """406 for a redeclare that differs from the existing queue or exchange in ``key``.

    A missing value reads "none"; when one side is missing the other is given with its
    type, as RabbitMQ words it.
    """
    typed = received is None or current is None
    return PreconditionFailed(
        f"inequivalent arg '{key}' for {kind} '{name}': "
        f"received {_val(received, typed)} but current is {_val(current, typed)}",
        details={kind: name, "argument": key},
    )


def locked(name: str) -> WharfError:
    return ResourceLocked(LOCKED_TEXT.format(name), details={"queue": name})


def check_queue_declare(
    name: str, *, durable: bool, exclusive: bool, auto_delete: bool, arguments: dict[str, Any]
) -> str:
    """The declared queue's type; PreconditionFailed with RabbitMQ's text if the type or
    the type's rules refuse the declaration (checked in RabbitMQ's order)."""
    qtype = arguments.get(QUEUE_TYPE_ARG, CLASSIC)
    if qtype == STREAM:
        raise PreconditionFailed(
            f"invalid arg '{QUEUE_TYPE_ARG}' for queue '{name}': stream queues are not "
            "supported by Wharf; use a log topic (partitioned, replayable by offset, "
            "docs/logs.md), which exchanges can also route to",
            details={"queue": name, "argument": QUEUE_TYPE_ARG},
        )
    if not isinstance(qtype, str):
        raise PreconditionFailed(
            f"invalid arg '{QUEUE_TYPE_ARG}' for queue '{name}': "
            f"{{unacceptable_type,{_field_type(qtype)}}}",
            details={"queue": name, "argument": QUEUE_TYPE_ARG},
        )
    if qtype not in QUEUE_TYPES:
        raise PreconditionFailed(
            f"invalid arg '{QUEUE_TYPE_ARG}' for queue '{name}': "
            f"\"unsupported queue type '{qtype}'\"",
            details={"queue": name, "argument": QUEUE_TYPE_ARG},
        )
    if qtype == QUORUM:
        for key in arguments:
            if key in QUORUM_REFUSED_ARGS:
                raise PreconditionFailed(
                    f"invalid arg '{key}' for queue '{name}' of queue type rabbit_quorum_queue",
                    details={"queue": name, "argument": key},
                )
        for bad, prop in (
            (auto_delete, "auto-delete"),
            (exclusive, "exclusive-owner"),
            (not durable, "non-durable"),
        ):
            if bad:
                raise PreconditionFailed(
                    f"invalid property '{prop}' for queue '{name}'",
                    details={"queue": name, "argument": prop},
                )
    return qtype


def check_queue_equivalent(
    name: str,
    current: dict[str, Any],
    *,
    durable: bool,
    exclusive: bool,
    auto_delete: bool,
    arguments: dict[str, Any],
    was: tuple[bool, bool, bool],
) -> None:
    """Raise unless a redeclare matches the queue; ``was`` is its (durable, exclusive,
    auto_delete), ``current`` its arguments.  RabbitMQ's order: durable, auto_delete,
    exclusive (405), then the known arguments."""
    cur_durable, cur_exclusive, cur_auto_delete = was
    if durable != cur_durable:
        raise inequivalent("queue", name, "durable", durable, cur_durable)
    if auto_delete != cur_auto_delete:
        raise inequivalent("queue", name, "auto_delete", auto_delete, cur_auto_delete)
    if exclusive != cur_exclusive:
        raise locked(name)
    for key in EQUIVALENCE_ARGS:
        new, cur = arguments.get(key), current.get(key)
        if key == QUEUE_TYPE_ARG:
            if queue_type_of(arguments) == queue_type_of(current):
                continue  # no x-queue-type is the default type, classic
        elif new == cur and type(new) is type(cur):
            continue
        raise inequivalent("queue", name, key, new, cur)


def check_exchange_equivalent(
    name: str,
    was: tuple[str, bool, bool, bool],
    current: dict[str, Any],
    *,
    type_: str,
    durable: bool,
    auto_delete: bool,
    internal: bool,
    arguments: dict[str, Any],
) -> None:
    """Raise unless an exchange redeclare matches ``was`` (type, durable, auto_delete,
    internal) and the known arguments."""
    for key, new, cur in zip(
        ("type", "durable", "auto_delete", "internal"),
        (type_, durable, auto_delete, internal),
        was,
        strict=True,
    ):
        if new != cur:
            raise inequivalent("exchange", name, key, new, cur)
    for key in EXCHANGE_EQUIVALENCE_ARGS:
        new_arg, cur_arg = arguments.get(key), current.get(key)
        if new_arg != cur_arg:
            raise inequivalent("exchange", name, key, new_arg, cur_arg)


DELIVERY_COUNT_HEADER: Final = "x-delivery-count"


def with_delivery_count(properties: dict[str, Any] | None, returns: int) -> dict[str, Any]:
    """A quorum queue's delivery as RabbitMQ 3.10 marks it: header ``x-delivery-count``,
    how many times the message was returned to the queue before (a header of that name
    from the publisher is replaced)."""
    props = dict(properties or {})
    headers = props.get("headers")
    headers = dict(headers) if isinstance(headers, dict) else {}
    headers[DELIVERY_COUNT_HEADER] = returns
    props["headers"] = headers
    return props
