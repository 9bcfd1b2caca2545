"""Validated queue arguments (RabbitMQ's names) and the limits they set.

Unknown ``x-`` arguments are kept and ignored, as RabbitMQ does; a known argument with a
bad value is refused with an error that names it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final

from wharf.protocol.errors import InvalidArgument

OVERFLOW_MODES: Final = ("drop-head", "reject-publish", "reject-publish-dlx")
MAX_PRIORITY_LIMIT: Final = 255
MAX_RETRY_DELAY_MS: Final = 7 * 24 * 3600 * 1000
# The longest deduplication window (ids stay in memory and in the store that long).
MAX_DEDUP_WINDOW_MS: Final = 7 * 24 * 3600 * 1000


@dataclass(frozen=True, slots=True)
class QueueLimits:
    dead_letter_exchange: str | None = None
    dead_letter_routing_key: str | None = None
    message_ttl_ms: int | None = None
    expires_ms: int | None = None
    max_length: int | None = None
    max_length_bytes: int | None = None
    overflow: str = "drop-head"
    delivery_limit: int | None = None
    max_priority: int | None = None
    single_active_consumer: bool = False
    # Wharf's delayed retry: on reject/nack without requeue, the n-th failure waits
    # retry_delays_ms[n-1] (with +/- retry_jitter) and is redelivered; past the schedule
    # the message is dead-lettered as usual.
    retry_delays_ms: tuple[int, ...] = ()
    retry_jitter: float = 0.0
    # x-dedup-window-ms: a publish whose message_id this queue accepted less than this
    # long ago is confirmed as a duplicate and not enqueued (core/dedup.py).
    dedup_window_ms: int | None = None

    @property
    def bounded(self) -> bool:
        return self.max_length is not None or self.max_length_bytes is not None


NO_LIMITS: Final = QueueLimits()


def _int(args: dict[str, Any], name: str, lo: int, hi: int | None = None) -> int | None:
    value = args.get(name)
    if value is None:
        return None
    if type(value) is not int or value < lo or (hi is not None and value > hi):
        bound = f">= {lo}" if hi is None else f"{lo}..{hi}"
        raise InvalidArgument(
            f"queue argument {name} must be an integer {bound}, got {value!r}",
            details={"argument": name},
        )
    return value


def _str(args: dict[str, Any], name: str) -> str | None:
    value = args.get(name)
    if value is None:
        return None
    if not isinstance(value, str):
        raise InvalidArgument(
            f"queue argument {name} must be a string, got {value!r}", details={"argument": name}
        )
    return value


def parse_queue_arguments(args: dict[str, Any] | None) -> QueueLimits:
    if not args:
        return NO_LIMITS
    overflow = args.get("x-overflow", "drop-head")
    if overflow not in OVERFLOW_MODES:
        raise InvalidArgument(
            f"queue argument x-overflow must be one of {', '.join(OVERFLOW_MODES)}, "
            f"got {overflow!r}",
            details={"argument": "x-overflow"},
        )
    sac = args.get("x-single-active-consumer", False)
    if not isinstance(sac, bool):
        raise InvalidArgument(
            "queue argument x-single-active-consumer must be true or false",
            details={"argument": "x-single-active-consumer"},
        )
    delays = args.get("x-retry-delays", [])
    if not isinstance(delays, (list, tuple)) or not all(
        type(d) is int and 0 <= d <= MAX_RETRY_DELAY_MS for d in delays
    ):
        raise InvalidArgument(
            "queue argument x-retry-delays must be a list of integers "
            f"0..{MAX_RETRY_DELAY_MS} (ms)",
            details={"argument": "x-retry-delays"},
        )
    jitter = args.get("x-retry-jitter", 0.0)
    if isinstance(jitter, bool) or not isinstance(jitter, (int, float)) or not 0 <= jitter <= 1:
        raise InvalidArgument(
            "queue argument x-retry-jitter must be a number 0..1",
            details={"argument": "x-retry-jitter"},
        )
    return QueueLimits(
        retry_delays_ms=tuple(delays),
        retry_jitter=float(jitter),
        dead_letter_exchange=_str(args, "x-dead-letter-exchange"),
        dead_letter_routing_key=_str(args, "x-dead-letter-routing-key"),
        message_ttl_ms=_int(args, "x-message-ttl", 0),
        expires_ms=_int(args, "x-expires", 1),
        max_length=_int(args, "x-max-length", 0),
        max_length_bytes=_int(args, "x-max-length-bytes", 0),
        overflow=overflow,
        delivery_limit=_int(args, "x-delivery-limit", 0),
        max_priority=_int(args, "x-max-priority", 1, MAX_PRIORITY_LIMIT),
        single_active_consumer=sac,
        dedup_window_ms=_int(args, "x-dedup-window-ms", 1, MAX_DEDUP_WINDOW_MS),
    )
