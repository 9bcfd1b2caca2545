"""Per-user limits and byte-rate quotas: what a user may hold, and how long it must wait.

Every way in (the native wire today, AMQP later) asks this module and applies the answer
with its own mechanism: the decision is here, the mechanism (stop reading a socket,
hold an answer back, stop pushing deliveries) is the wire adapter's.

Limits (RabbitMQ's user limits, set with ``PUT /api/user-limits/{user}/{name}``):

* ``max-connections``: authenticated connections the user may hold at once; one more is
  refused after authentication (``UserLimits.admit`` raises 506).
* ``max-channels``: channels the user may hold open at once over all its AMQP
  connections (RabbitMQ's); one more is refused (``UserLimits.admit_channel``).  The
  native protocol has no channels.
* ``max-publish-bytes-per-second`` (Kafka's ``producer_byte_rate``): message bodies
  published plus record batches produced, per second, over all the user's connections.
* ``max-consume-bytes-per-second`` (Kafka's ``consumer_byte_rate``): message bodies
  delivered (consumers and GET) plus record batches fetched, per second.

-1 means no limit (as RabbitMQ); it is the same as clearing the limit.

Byte rates are measured as Kafka measures them: the bytes of the last ``QUOTA_SAMPLES``
samples of ``QUOTA_SAMPLE_S`` each, divided by the time they span, but at least
``MIN_SPAN_S`` (all samples but the current one), so that a quiet user may send about
that long's worth at once instead of having a rate computed over a few milliseconds.
Over the quota, the wait is the time until the span has grown to ``bytes / quota``,
when the measured rate is the quota again: ``bytes / quota - span``, Kafka's
``(rate - quota) / quota * window`` with the span as it is (the minimum only decides
whether a user that just started is over).  At most ``MAX_THROTTLE_S`` at a time:
the caller stops reading (publish, produce) or holds its answer and deliveries back
(consume, fetch) for that long.  Requests are never failed for a quota.

Limits are durable (definitions.json ``user_limits``, saved through ``on_change``);
what users use now (connections, measured rates) lives as long as their connections.
"""

from __future__ import annotations

import logging
import math
import time
from collections import deque
from collections.abc import Callable, Iterable
from typing import Any, Final

from wharf.protocol.errors import InvalidArgument, ResourceError

log = logging.getLogger("wharf.quotas")

MAX_CONNECTIONS: Final = "max-connections"
MAX_CHANNELS: Final = "max-channels"
MAX_PUBLISH_RATE: Final = "max-publish-bytes-per-second"
MAX_CONSUME_RATE: Final = "max-consume-bytes-per-second"
LIMIT_NAMES: Final = (MAX_CONNECTIONS, MAX_CHANNELS, MAX_PUBLISH_RATE, MAX_CONSUME_RATE)
_RATE_LIMITS: Final = frozenset({MAX_PUBLISH_RATE, MAX_CONSUME_RATE})
NO_LIMIT: Final = -1
# Largest value accepted for any limit (exact in a JSON double).
MAX_LIMIT_VALUE: Final = 2**53

# Throttle directions (wharf_throttle_seconds_total{direction}, the THROTTLED frame).
PRODUCE: Final = "produce"
CONSUME: Final = "consume"

# Kafka's quota.window.num = 11 samples of quota.window.size.seconds = 1; samples of
# 100 ms here, so that a quiet user's burst is about one second of its quota and a
# throttled client is held near its quota over any few seconds.
QUOTA_SAMPLES: Final = 11
QUOTA_SAMPLE_S: Final = 0.1
# A rate is taken over at least this long (all samples but the current one, as Kafka).
MIN_SPAN_S: Final = (QUOTA_SAMPLES - 1) * QUOTA_SAMPLE_S
# A wait shorter than this is not worth pausing a socket for.
MIN_THROTTLE_S: Final = 0.001
# One wait is at most this long; the bytes a longer wait would have paid for are carried
# into the next sample, so that asking again when the wait is over (the wire does,
# recording 0 bytes) says how much longer.  Each turn is announced to the client.
MAX_THROTTLE_S: Final = 5.0
# At most one broker log line per user and direction in this long.
THROTTLE_LOG_INTERVAL_S: Final = 60.0
# Users with limits (definitions.json must stay small).
MAX_USERS_WITH_LIMITS: Final = 100_000


class ByteRate:
    """A byte rate measured over a window of samples, and the quota it must keep."""

    __slots__ = ("quota", "_samples", "_total", "_carried", "_carried_from")

    def __init__(self, quota: int) -> None:
        self.quota = quota
        # [sample start (monotonic s), bytes in it], oldest first.
        self._samples: deque[list[float]] = deque()
        self._total = 0.0
        # Bytes a capped wait did not pay for, counted again in the next sample, less
        # what the time since that wait ended (``_carried_from``) has paid for.
        self._carried = 0.0
        self._carried_from = 0.0

    def rate(self, now: float) -> float:
        """The measured bytes per second."""
        samples = self._roll(now)
        span = now - samples[0][0] if samples else 0.0
        return self._total / max(span, MIN_SPAN_S)

    def record(self, nbytes: int, now: float) -> float:
        """Count ``nbytes`` at ``now``; the seconds the actor must wait (0.0: none)."""
        samples = self._roll(now)
        if not samples or now - samples[-1][0] >= QUOTA_SAMPLE_S:
            carried = 0.0
            if self._carried:
                paid = max(0.0, now - self._carried_from) * self.quota
                carried = max(0.0, self._carried - paid)
                self._carried = 0.0
            samples.append([now, carried])
            self._total += carried
        samples[-1][1] += nbytes
        self._total += nbytes
        # The rate is total / max(span, MIN_SPAN_S); back under the quota once the span
        # has grown to total / quota (the bytes stay in the window until then).
        needed = self._total / self.quota
        span = now - samples[0][0]
        if needed <= span or needed <= MIN_SPAN_S:
            return 0.0
        wait = needed - span
        if wait < MIN_THROTTLE_S:
            return 0.0
        if wait > MAX_THROTTLE_S:
            # The samples holding these bytes roll out before the wait ends: what the
            # capped wait does not cover is charged again when the sender is back.
            self._carried = (wait - MAX_THROTTLE_S) * self.quota
            self._carried_from = now + MAX_THROTTLE_S
            return MAX_THROTTLE_S
        return wait

    def _roll(self, now: float) -> deque[list[float]]:
        samples = self._samples
        window = QUOTA_SAMPLES * QUOTA_SAMPLE_S
        while samples and now - samples[0][0] >= window:
            self._total -= samples.popleft()[1]
        if not samples:
            self._total = 0.0  # no float drift carried over an idle spell
        return samples


class UserUsage:
    """What one user uses now: its connections, and its byte rates under a quota.

    Shared by all the user's connections (one budget); ``produce`` / ``consume`` are None
    without a quota, which is all the hot paths look at.
    """

    __slots__ = ("user", "connections", "channels", "produce", "consume", "_owner")

    def __init__(self, user: str, owner: UserLimits) -> None:
        self.user = user
        self.connections = 0
        self.channels = 0  # open over all the user's connections (AMQP)
        self.produce: ByteRate | None = None
        self.consume: ByteRate | None = None
        self._owner = owner

    def produced(self, nbytes: int, now: float) -> float:
        """``nbytes`` published or produced: the seconds to stop reading (0.0: none)."""
        meter = self.produce
        if meter is None:
            return 0.0
        wait = meter.record(nbytes, now)
        if wait:
            self._owner.note_throttle(self.user, PRODUCE, wait, meter.quota)
        return wait

    def consumed(self, nbytes: int, now: float) -> float:
        """``nbytes`` delivered or fetched: the seconds to hold further ones back."""
        meter = self.consume
        if meter is None:
            return 0.0
        wait = meter.record(nbytes, now)
        if wait:
            self._owner.note_throttle(self.user, CONSUME, wait, meter.quota)
        return wait


def check_limit(name: str, value: Any) -> int:
    """The value of limit ``name`` from a request, or ``InvalidArgument``."""
    if name not in LIMIT_NAMES:
        raise InvalidArgument(
            f"unknown user limit {name!r}; known: {', '.join(LIMIT_NAMES)}",
            details={"argument": "name"},
        )
    if type(value) is not int or not NO_LIMIT <= value <= MAX_LIMIT_VALUE:
        raise InvalidArgument(
            f"the value of {name} must be an integer 0..{MAX_LIMIT_VALUE}, or -1 for no limit",
            details={"argument": "value"},
        )
    if name in _RATE_LIMITS and value == 0:
        raise InvalidArgument(
            f"{name} must be at least 1 byte per second (-1: no limit)",
            details={"argument": "value"},
        )
    return value


class UserLimits:
    """Every user's limits (durable), what each connected user uses, and the decisions.

    ``admit`` / ``release`` bracket each authenticated connection of any protocol.
    ``throttle_seconds`` (user, direction) -> seconds is read by /metrics
    (``wharf_throttle_seconds_total``); only users under a quota appear in it, and a
    deleted user's entries go with it.
    """

    __slots__ = ("_limits", "_usage", "throttle_seconds", "_logged_at", "on_change", "_clock")

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._limits: dict[str, dict[str, int]] = {}
        self._usage: dict[str, UserUsage] = {}
        self.throttle_seconds: dict[tuple[str, str], float] = {}
        # (user, direction) -> when a throttle line was last logged, and the seconds of
        # throttling since then; bounded like throttle_seconds.
        self._logged_at: dict[tuple[str, str], tuple[float, float]] = {}
        self.on_change: Callable[[], None] | None = None
        self._clock = clock

    # -- connections ---------------------------------------------------------------------

    def admit(self, user: str) -> UserUsage:
        """Count a new authenticated connection of ``user``; ``ResourceError`` (506) when
        it already holds its max-connections (RabbitMQ's wording)."""
        usage = self._usage.get(user)
        limit = self._limits.get(user, {}).get(MAX_CONNECTIONS)
        held = usage.connections if usage is not None else 0
        if limit is not None and held >= limit:
            raise ResourceError(
                f"connection limit ({limit}) for user '{user}' is reached",
                details={"limit": MAX_CONNECTIONS, "value": limit, "user": user},
            )
        if usage is None:
            usage = self._usage[user] = UserUsage(user, self)
            self._apply_rates(usage)
        usage.connections += 1
        return usage

    def release(self, usage: UserUsage) -> None:
        """One of the user's connections closed (each ``admit`` is released once)."""
        usage.connections -= 1
        if usage.connections <= 0 and self._usage.get(usage.user) is usage:
            del self._usage[usage.user]

    def usage(self, user: str) -> UserUsage | None:
        return self._usage.get(user)

    def max_channels(self, user: str) -> int | None:
        """The user's max-channels (None: no limit), for listeners that have channels."""
        return self._limits.get(user, {}).get(MAX_CHANNELS)

    def admit_channel(self, usage: UserUsage) -> None:
        """Count a new channel of ``usage``'s user; ``ResourceError`` (506) when it already
        holds its max-channels over all its connections (RabbitMQ's wording)."""
        limit = self.max_channels(usage.user)
        if limit is not None and usage.channels >= limit:
            raise ResourceError(
                f"number of channels opened for user '{usage.user}' has reached the "
                f"maximum allowed user limit ({limit})",
                details={"limit": MAX_CHANNELS, "value": limit, "user": usage.user},
            )
        usage.channels += 1

    def release_channel(self, usage: UserUsage, n: int = 1) -> None:
        """``n`` channels counted by ``admit_channel`` closed."""
        usage.channels = max(0, usage.channels - n)

    def _apply_rates(self, usage: UserUsage) -> None:
        limits = self._limits.get(usage.user, {})
        for name, attr in ((MAX_PUBLISH_RATE, "produce"), (MAX_CONSUME_RATE, "consume")):
            quota = limits.get(name)
            meter: ByteRate | None = getattr(usage, attr)
            if quota is None:
                setattr(usage, attr, None)
            elif meter is None:
                setattr(usage, attr, ByteRate(quota))
            else:
                meter.quota = quota  # what was measured still counts

    # -- throttling ------------------------------------------------------------------------

    def note_throttle(self, user: str, direction: str, wait_s: float, quota: int) -> None:
        """Count ``wait_s`` of throttling and log it, at most once a minute per user and
        direction (an audit line per throttle would be far too many)."""
        key = (user, direction)
        self.throttle_seconds[key] = self.throttle_seconds.get(key, 0.0) + wait_s
        now = self._clock()
        last, pending = self._logged_at.get(key, (-math.inf, 0.0))
        pending += wait_s
        if now - last < THROTTLE_LOG_INTERVAL_S:
            self._logged_at[key] = (last, pending)
            return
        self._logged_at[key] = (now, 0.0)
        verb = "publishing/producing" if direction == PRODUCE else "consuming/fetching"
        log.info(
            "user '%s' throttled: %s over its quota of %d bytes/s (%.2f s of waits%s)",
            user,
            verb,
            quota,
            pending,
            "" if last == -math.inf else f" in the last {now - last:.0f} s",
        )

    # -- limits ----------------------------------------------------------------------------

    def get(self, user: str) -> dict[str, int]:
        return dict(self._limits.get(user, {}))

    def set(self, user: str, name: str, value: int) -> bool:
        """Set one limit (-1 clears it); True if the user had no value for it."""
        value = check_limit(name, value)
        if value == NO_LIMIT:
            had = name in self._limits.get(user, {})
            self.clear(user, name)
            return not had
        limits = self._limits.get(user)
        if limits is None:
            if len(self._limits) >= MAX_USERS_WITH_LIMITS:
                raise InvalidArgument(f"at most {MAX_USERS_WITH_LIMITS} users may have limits")
            limits = self._limits[user] = {}
        new = name not in limits
        limits[name] = value
        self._changed(user)
        return new

    def clear(self, user: str, name: str) -> bool:
        """Remove one limit; False if it was not set."""
        limits = self._limits.get(user)
        if limits is None or limits.pop(name, None) is None:
            return False
        if not limits:
            del self._limits[user]
        self._changed(user)
        return True

    def forget_user(self, user: str) -> None:
        """The user was deleted: its limits and counters go (a new one starts clean)."""
        for direction in (PRODUCE, CONSUME):
            self.throttle_seconds.pop((user, direction), None)
            self._logged_at.pop((user, direction), None)
        if self._limits.pop(user, None) is not None:
            self._changed(user)

    def _changed(self, user: str) -> None:
        usage = self._usage.get(user)
        if usage is not None:
            self._apply_rates(usage)  # open connections follow the new quota at once
        if self.on_change is not None:
            self.on_change()

    # -- listings and persistence (definitions.json "user_limits") -------------------------

    def describe(self, user: str) -> dict[str, Any] | None:
        """RabbitMQ's shape: ``{"user": u, "value": {name: value}}``; None without limits."""
        limits = self._limits.get(user)
        if not limits:
            return None
        return {"user": user, "value": dict(sorted(limits.items()))}

    def describe_all(self) -> list[dict[str, Any]]:
        return [
            {"user": u, "value": dict(sorted(self._limits[u].items()))}
            for u in sorted(self._limits)
        ]

    def records(self) -> list[dict[str, Any]]:
        return self.describe_all()

    def load(self, records: Any, known_users: Iterable[str] | None = None) -> list[str]:
        """Apply saved records (at start); a message per skipped bad record."""
        errors: list[str] = []
        if records is None:
            return errors
        if not isinstance(records, list):
            return ["user_limits ignored: expected a list"]
        known = None if known_users is None else set(known_users)
        for i, rec in enumerate(records):
            try:
                if not isinstance(rec, dict) or not isinstance(rec.get("user"), str):
                    raise InvalidArgument("expected {'user': str, 'value': {name: int}}")
                user = rec["user"]
                value = rec.get("value")
                if not isinstance(value, dict):
                    raise InvalidArgument("'value' must be an object of limits")
                if known is not None and user not in known:
                    raise InvalidArgument(f"no user '{user}'")
                limits = {name: check_limit(name, v) for name, v in value.items()}
                limits = {k: v for k, v in limits.items() if v != NO_LIMIT}
                if limits:
                    self._limits[user] = limits
            except InvalidArgument as exc:
                errors.append(f"user_limits[{i}] ignored: {exc.message}")
        return errors
