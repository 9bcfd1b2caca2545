"""The native wire's mechanism for the core's quota decisions (core/quotas.py).

The core says how long a user over its byte rate must wait; this object, one per
connection, makes the connection wait:

* produce (publish, produce): stop reading the socket for that long (frames already
  read wait with it: the connection handles them when the wait is over);
* consume: push no deliveries for that long (the consumers' credit reads as 0), so
  acks keep flowing; a GET or fetch answer that went over the quota is held back that
  long, and the socket is not read meanwhile, so that a client cannot pile up further
  requests (and held answers) while it waits (as Kafka mutes a throttled channel).

One wait is at most ``core.quotas.MAX_THROTTLE_S``; when it is over, the core is asked
again (recording nothing) and a user still in debt waits again.  Each wait is announced
with a THROTTLED frame (protocol/SPEC.md), which the SDK turns into a "throttled" event.
Timers are cancelled when the connection closes.
"""

from __future__ import annotations

import asyncio
import math
from typing import Any, Final, Protocol

from wharf.protocol import frames as F

from ...core.quotas import CONSUME, PRODUCE

# Answers held back at once per connection: reading stops while one is held, so only
# the requests of one read can be waiting; past this the oldest is sent at once.
MAX_HELD_ANSWERS: Final = 1024


class ThrottleHost(Protocol):
    """What the throttle needs of its connection (connection.py implements it)."""

    @property
    def closing(self) -> bool: ...

    def send_frame(self, frame: F.Frame) -> None: ...

    def send_encoded(self, data: bytes) -> None: ...

    def pause_reading_for_throttle(self) -> None: ...

    def throttle_reading_ended(self) -> None: ...

    def throttle_deliveries_started(self) -> None: ...

    def throttle_deliveries_ended(self) -> None: ...

    def quota_wait(self, direction: str) -> float:
        """What the core says now, recording nothing: seconds still to wait."""
        ...


class Throttle:
    __slots__ = (
        "_host",
        "_loop",
        "_read_timer",
        "_read_until",
        "_read_direction",
        "_deliver_timer",
        "_held",
    )

    def __init__(self, host: ThrottleHost, loop: asyncio.AbstractEventLoop) -> None:
        self._host = host
        self._loop = loop
        self._read_timer: asyncio.TimerHandle | None = None
        self._read_until = 0.0
        self._read_direction = PRODUCE
        self._deliver_timer: asyncio.TimerHandle | None = None
        # Encoded answers held back, by their timers (sent when due; dropped at close).
        self._held: dict[asyncio.TimerHandle, bytes] = {}

    @property
    def reading_paused(self) -> bool:
        return self._read_timer is not None

    @property
    def deliveries_paused(self) -> bool:
        return self._deliver_timer is not None

    def _announce(self, direction: str, wait_s: float) -> None:
        self._host.send_frame(F.Throttled(0, direction, math.ceil(wait_s * 1000)))

    # -- produce: stop reading ---------------------------------------------------------

    def pause_reading(self, wait_s: float, direction: str = PRODUCE) -> None:
        """Read nothing from the socket for ``wait_s`` (a later end wins)."""
        host = self._host
        if host.closing:
            return
        if direction == PRODUCE:
            self._announce(PRODUCE, wait_s)
        until = self._loop.time() + wait_s
        if self._read_timer is not None:
            if until <= self._read_until:
                return
            self._read_timer.cancel()
        self._read_until = until
        self._read_direction = direction
        self._read_timer = self._loop.call_at(until, self._reading_due)
        host.pause_reading_for_throttle()

    def _reading_due(self) -> None:
        self._read_timer = None
        host = self._host
        if host.closing:
            return
        # After a held answer (consume) the answer asks again itself, and pauses
        # reading again if it has to wait on.
        if self._read_direction == PRODUCE:
            again = host.quota_wait(PRODUCE)
            if again:
                self.pause_reading(again)
                return
        host.throttle_reading_ended()

    # -- consume: hold deliveries and answers --------------------------------------------

    def hold_deliveries(self, wait_s: float) -> None:
        """Push no deliveries for ``wait_s``."""
        host = self._host
        if host.closing:
            return
        self._announce(CONSUME, wait_s)
        if self._deliver_timer is not None:
            self._deliver_timer.cancel()
        self._deliver_timer = self._loop.call_later(wait_s, self._deliveries_due)
        host.throttle_deliveries_started()

    def _deliveries_due(self) -> None:
        self._deliver_timer = None
        host = self._host
        if host.closing:
            return
        again = host.quota_wait(CONSUME)
        if again:
            self.hold_deliveries(again)
            return
        host.throttle_deliveries_ended()

    def hold_answer(self, wait_s: float, data: bytes) -> None:
        """Send the encoded answer ``data`` after ``wait_s``; read nothing meanwhile."""
        host = self._host
        if host.closing:
            return
        self._announce(CONSUME, wait_s)
        if len(self._held) >= MAX_HELD_ANSWERS:
            oldest = next(iter(self._held))
            oldest.cancel()
            host.send_encoded(self._held.pop(oldest))
        self._hold(wait_s, data)
        self.pause_reading(wait_s, CONSUME)

    def _hold(self, wait_s: float, data: bytes) -> None:
        def due() -> None:
            held = self._held.pop(timer, None)
            host = self._host
            if held is None or host.closing:
                return
            again = host.quota_wait(CONSUME)
            if again:
                self._announce(CONSUME, again)
                self._hold(again, held)
                self.pause_reading(again, CONSUME)
                return
            host.send_encoded(held)

        timer = self._loop.call_later(wait_s, due)
        self._held[timer] = data

    def close(self) -> None:
        """The connection closed: drop every timer (held answers are not sent)."""
        for timer in (self._read_timer, self._deliver_timer, *self._held):
            if timer is not None:
                timer.cancel()
        self._read_timer = self._deliver_timer = None
        self._held.clear()


def fetched_bytes(result: dict[str, Any]) -> int:
    """Record-batch bytes in a FETCH (``batches``) or FETCH_MANY (``results``) answer."""
    batches = result.get("batches")
    if isinstance(batches, list):
        return sum(len(b) for b in batches)
    total = 0
    results = result.get("results")
    if isinstance(results, list):
        for entry in results:
            if isinstance(entry, list) and len(entry) > 5 and isinstance(entry[5], list):
                total += sum(len(b) for b in entry[5])
    return total
