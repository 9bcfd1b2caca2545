"""Messages routed from exchanges into log topics (docs/logs.md, "Exchange bindings to
topics").

A topic bound to an exchange gets every message its bindings match, as one record:

- key: the ``x-partition-key`` header when the message has one (str as UTF-8, bin as
  is, an integer as its decimal digits), else the routing key as UTF-8; an empty
  routing key gives a nil key, which the topic spreads round-robin, as Kafka does
  with keyless records.
- value: the body.
- headers: the message headers, plus ``x-exchange`` and ``x-routing-key``, plus each
  property that is set as ``x-<name>`` with ``_`` written ``-`` (``content_type`` ->
  ``x-content-type``, ``persistent`` -> ``x-persistent``).  These names replace
  message headers of the same name.
- timestamp: the ``timestamp`` property when it is a positive integer (epoch ms),
  else the broker's clock.

The messages of one PUBLISH_MANY share their routing key and properties, so they
become one batch in one partition of each topic: one append per topic, not one per
message.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Final

from wharf.protocol.errors import InvalidArgument

if TYPE_CHECKING:
    from ..logs.partition import Partition
    from ..logs.topics import TopicRegistry
    from .exchanges import TopicTarget

log = logging.getLogger("wharf.topics")

PARTITION_KEY_HEADER: Final = "x-partition-key"
EXCHANGE_HEADER: Final = "x-exchange"
ROUTING_KEY_HEADER: Final = "x-routing-key"
# Properties that are not copied into record headers (headers are merged instead).
_NOT_COPIED: Final = frozenset({"headers"})

RoutedRecord = tuple[bytes | None, bytes, dict[str, Any], int]


def record_key(routing_key: str, headers: dict[str, Any] | None) -> bytes | None:
    """The record key of a routed message (see the module docstring)."""
    if headers:
        key = headers.get(PARTITION_KEY_HEADER)
        if key is not None:
            if isinstance(key, str):
                return key.encode("utf-8")
            if isinstance(key, bytes):
                return key
            if type(key) is int:
                return str(key).encode("ascii")
            raise InvalidArgument(
                f"header {PARTITION_KEY_HEADER} must be a string, bin or integer "
                f"(it chooses the partition of the topics the message is routed to), "
                f"got {type(key).__name__}",
                details={"header": PARTITION_KEY_HEADER},
            )
    return routing_key.encode("utf-8") if routing_key else None


def record_headers(exchange: str, routing_key: str, props: dict[str, Any] | None) -> dict[str, Any]:
    """Record headers: message headers, then the exchange, routing key and properties."""
    headers: dict[str, Any] = {}
    if props:
        message_headers = props.get("headers")
        if message_headers:
            headers.update(message_headers)
    headers[EXCHANGE_HEADER] = exchange
    headers[ROUTING_KEY_HEADER] = routing_key
    if props:
        for name, value in props.items():
            if value is not None and name not in _NOT_COPIED and isinstance(name, str):
                headers["x-" + name.replace("_", "-")] = value
    return headers


def routed_records(
    exchange: str,
    routing_key: str,
    props: dict[str, Any] | None,
    bodies: Sequence[bytes],
) -> list[RoutedRecord]:
    """The records for ``bodies`` published with one routing key and properties.

    Raises InvalidArgument for a bad ``x-partition-key`` before anything is appended.
    """
    key = record_key(routing_key, props.get("headers") if props else None)
    headers = record_headers(exchange, routing_key, props)
    ts = props.get("timestamp") if props else None
    if type(ts) is not int or ts <= 0:
        ts = int(time.time() * 1000)
    return [(key, body, headers, ts) for body in bodies]


def append_routed(
    registry: TopicRegistry,
    topics: Sequence[TopicTarget],
    records: list[RoutedRecord],
    *,
    persistent: bool,
) -> list[Partition]:
    """Append ``records`` as one batch to each of ``topics``; returns the partitions
    written (the caller waits for ``Partition.sync()`` of each for persistent
    messages).  A failure raises the partition's WharfError; topics earlier in the
    list keep their append (the publisher is nacked and may publish again)."""
    acks = "fsynced" if persistent else "written"
    parts: list[Partition] = []
    for target in topics:
        part, _ = registry.append_records(target.name, -1, records, acks=acks)
        parts.append(part)
    return parts


def sync_in_background(parts: Sequence[Partition], why: str) -> None:
    """Ask for an fsync of ``parts`` that nothing waits for; a failure is logged."""

    def done(fut: asyncio.Future[None]) -> None:
        exc = fut.exception()
        if exc is not None:
            log.warning("fsync of a log topic partition (%s) failed: %s", why, exc)

    for part in parts:
        part.sync().add_done_callback(done)
