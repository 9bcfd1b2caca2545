"""The deduplication window of a queue (``x-dedup-window-ms``): pure logic, no I/O.

A publish whose ``message_id`` the queue accepted less than the window ago is a
duplicate: confirmed, not enqueued again.  The window remembers each id from its first
acceptance (a duplicate does not extend it), also after the message was consumed.

Memory is what limits a window of a million ids, so an id is kept as its 64-bit
``hash()`` (SipHash, keyed per process: a client cannot aim collisions, and the chance
that two of a million live ids collide is about 3e-8), shared by a ``set`` for lookups
and a ``deque`` in acceptance order; expiry times are kept run-length encoded, rounded up
to a tick of 1/1024 of the window, so a window holds at most ~1024 runs whatever its
size.  About 90 bytes of RSS per id (docs/storage.md has the measurement).  Expired ids
are purged from the front as time passes.  Expiries never go backwards: when the window
shrinks, new ids live as long as the newest old one (the order stays the purge order).
The store keeps the ids themselves (DEDUP records), so the per-process hash key does
not matter across restarts: recovery hashes them again.
"""

from __future__ import annotations

from collections import deque
from typing import Final

# Expiry times are rounded up to window_ms // TICKS_PER_WINDOW (at least 1 ms): the
# number of runs stays bounded and a window may last up to 1/1024 longer than asked.
TICKS_PER_WINDOW: Final = 1024


class DedupWindow:
    """Message ids accepted within the last ``window_ms`` milliseconds."""

    __slots__ = ("window_ms", "_tick", "_seen", "_order", "_runs", "_last_expiry")

    def __init__(self, window_ms: int) -> None:
        self.window_ms = window_ms
        self._tick = max(1, window_ms // TICKS_PER_WINDOW)
        self._seen: set[int] = set()
        # The ids in acceptance order, and [expires_at_ms, count] runs over that order.
        self._order: deque[int] = deque()
        self._runs: deque[list[int]] = deque()
        self._last_expiry = 0

    def __len__(self) -> int:
        return len(self._seen)

    def set_window(self, window_ms: int) -> None:
        """A policy changed the window: it applies to ids accepted from now on."""
        self.window_ms = window_ms
        self._tick = max(1, window_ms // TICKS_PER_WINDOW)

    def seen(self, message_id: str, now_ms: int) -> bool:
        """True if ``message_id`` was accepted within the window before ``now_ms``."""
        if self._runs and self._runs[0][0] <= now_ms:
            self.purge(now_ms)
        return hash(message_id) in self._seen

    def add(self, message_id: str, accepted_ms: int) -> bool:
        """Remember ``message_id`` as accepted at ``accepted_ms``; False if it already was."""
        key = hash(message_id)
        seen = self._seen
        if key in seen:
            return False
        tick = self._tick
        expiry = -(-(accepted_ms + self.window_ms) // tick) * tick
        if expiry < self._last_expiry:
            expiry = self._last_expiry
        seen.add(key)
        self._order.append(key)
        runs = self._runs
        if runs and runs[-1][0] == expiry:
            runs[-1][1] += 1
        else:
            runs.append([expiry, 1])
            self._last_expiry = expiry
        return True

    def purge(self, now_ms: int) -> int:
        """Forget the ids whose window ended at or before ``now_ms``; how many went."""
        runs = self._runs
        order = self._order
        discard = self._seen.discard
        gone = 0
        while runs and runs[0][0] <= now_ms:
            _, count = runs.popleft()
            for _ in range(count):
                discard(order.popleft())
            gone += count
        return gone

    def expires_at(self, accepted_ms: int) -> int:
        """When an id accepted at ``accepted_ms`` leaves the window (epoch ms)."""
        return accepted_ms + self.window_ms
