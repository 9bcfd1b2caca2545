"""Dead-lettering: the x-death history, as RabbitMQ writes it.

Each dead-lettering adds (or updates) one entry per (queue, reason) in the message's
``x-death`` header, most recent first, with RabbitMQ's field names: queue, reason, count,
time (epoch ms here; RabbitMQ uses seconds), exchange, routing-keys and, when the message
had a per-message TTL, original-expiration (the ``expiration`` property is removed so the
message does not expire again downstream).  ``x-first-death-*`` are set once,
``x-last-death-*`` every time.
"""

from __future__ import annotations

from typing import Any, Final

REJECTED: Final = "rejected"
EXPIRED: Final = "expired"
MAXLEN: Final = "maxlen"
DELIVERY_LIMIT: Final = "delivery_limit"
REASONS: Final = (REJECTED, EXPIRED, MAXLEN, DELIVERY_LIMIT)


def with_death(
    properties: dict[str, Any] | None,
    *,
    queue: str,
    reason: str,
    exchange: str,
    routing_key: str,
    now_ms: int,
) -> dict[str, Any]:
    """A copy of ``properties`` with this death recorded in the headers."""
    props = dict(properties or {})
    headers = dict(props.get("headers") or {})
    deaths: list[Any] = [d for d in (headers.get("x-death") or []) if isinstance(d, dict)]
    expiration = props.pop("expiration", None)
    for i, old in enumerate(deaths):
        if old.get("queue") == queue and old.get("reason") == reason:
            entry = dict(old)
            count = entry.get("count")
            entry["count"] = (count if isinstance(count, int) else 0) + 1
            entry["time"] = now_ms
            del deaths[i]
            break
    else:
        entry = {
            "queue": queue,
            "reason": reason,
            "count": 1,
            "time": now_ms,
            "exchange": exchange,
            "routing-keys": [routing_key],
        }
        if expiration is not None:
            entry["original-expiration"] = expiration
    deaths.insert(0, entry)
    headers["x-death"] = deaths
    headers.setdefault("x-first-death-queue", queue)
    headers.setdefault("x-first-death-reason", reason)
    headers.setdefault("x-first-death-exchange", exchange)
    headers["x-last-death-queue"] = queue
    headers["x-last-death-reason"] = reason
    headers["x-last-death-exchange"] = exchange
    props["headers"] = headers
    return props


def is_cycle(properties: dict[str, Any], target_queue: str) -> bool:
    """True if delivering to ``target_queue`` closes a dead-letter cycle with no rejection.

    RabbitMQ: messages that reach the same queue twice through dead-lettering are
    dropped unless a consumer rejected them somewhere in the cycle (a retry loop).
    """
    headers = properties.get("headers") or {}
    deaths = headers.get("x-death") or []
    seen = False
    for d in deaths:
        if not isinstance(d, dict):
            continue
        if d.get("reason") == REJECTED:
            return False
        if d.get("queue") == target_queue:
            seen = True
    return seen
