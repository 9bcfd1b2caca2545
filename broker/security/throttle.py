"""Login throttling: who may have a password checked now, and the failure log's rate.

Pure bookkeeping with an injected clock (no sockets, no tasks); auth.py drives it.

The rules (docs/security.md, "Authentication", says why):

* A *pair* is (user name, peer address).  After the k-th recent failure of a pair, that
  pair's next check waits until ``failure_delay_s(k)`` after the failure (0.1 s doubling
  to 5 s); the count is forgotten ``FAILURE_DECAY_S`` after the pair's last failure, and
  at once after a success.
* Checks are serialised: at most one check runs at a time per pair, per user name and per
  peer address.  200 parallel connections guessing one user's password from one address
  get one guess at a time, paced by the delay above, as one connection would.
* Nothing delays a pair for other pairs' failures: the user name and the address only
  decide the *order* in which waiting attempts are checked.  Pairs that logged in
  successfully within ``TRUSTED_PAIR_S`` go first, then the others by their number of
  recent failures (fewest first), then by arrival.  So a correct password waits for at
  most the check already running for its user or address (one scrypt, 50-100 ms), even
  while others are guessing the same user from elsewhere or other users from the same
  address.
* Only one thing cannot be told apart: the same user name from the same address (two
  clients behind one NAT, one of them guessing).  Those share the pair's delay.

Every map here is bounded: failure records and trusted pairs are LRU-evicted beyond
``MAX_TRACKED_PAIRS``; waiting attempts are refused beyond ``MAX_WAITING_ATTEMPTS`` (and
``MAX_WAITING_PER_PAIR`` for one user from one address).
"""

from __future__ import annotations

import itertools
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Final

# After the k-th recent failure of a pair its next check waits
# min(FAILURE_DELAY_BASE_S * 2**(k-1), FAILURE_DELAY_MAX_S) after that failure.
FAILURE_DELAY_BASE_S: Final = 0.1
FAILURE_DELAY_MAX_S: Final = 5.0
FAILURE_DECAY_S: Final = 60.0
# A pair that logged in successfully this recently is checked before other waiting pairs.
TRUSTED_PAIR_S: Final = 86_400.0
MAX_TRACKED_PAIRS: Final = 10_000
MAX_WAITING_ATTEMPTS: Final = 10_000
# Per (user, address) pair, not per address: a guesser must not be able to lock other
# users out of its address (the native listener bounds connections per address anyway).
MAX_WAITING_PER_PAIR: Final = 200
# Failure log lines: the first failure of a pair in a window is logged at once; the
# others in the window are counted and logged as one summary line when it ends.
FAILURE_LOG_INTERVAL_S: Final = 60.0

Pair = tuple[str, str]  # (user name, normalised peer address)


def failure_delay_s(failures: int) -> float:
    """How long a pair with ``failures`` recent failures waits before its next check."""
    if failures <= 0:
        return 0.0
    # Cap the exponent: 2**(huge) would be a pointlessly large float.
    return min(FAILURE_DELAY_BASE_S * (1 << min(failures - 1, 32)), FAILURE_DELAY_MAX_S)


@dataclass(slots=True)
class _Failures:
    count: int
    last_failure: float


@dataclass(slots=True, eq=False)
class Attempt:
    """One login waiting for, or holding, its turn.  ``waiter`` belongs to the caller."""

    user: str
    address: str
    seq: int
    waiter: Any = None
    admitted: bool = False
    _sort_key: tuple[int, int, int] = field(default=(0, 0, 0), repr=False)

    @property
    def pair(self) -> Pair:
        return (self.user, self.address)


class TooManyAttempts(Exception):
    """More logins are waiting than the bounds allow; the message says which bound."""


class LoginThrottle:
    """Decides which waiting login attempts may have their password checked now."""

    def __init__(self, clock: Callable[[], float]) -> None:
        self._clock = clock
        self._seq = itertools.count()
        self._failures: OrderedDict[Pair, _Failures] = OrderedDict()  # oldest failure first
        self._trusted: OrderedDict[Pair, float] = OrderedDict()  # oldest success first
        self._waiting: list[Attempt] = []
        self._waiting_by_pair: dict[Pair, int] = {}
        self._busy_pairs: set[Pair] = set()
        self._busy_users: set[str] = set()
        self._busy_addresses: set[str] = set()

    # -- the queue -----------------------------------------------------------------------

    def enqueue(self, user: str, address: str) -> Attempt:
        """Add an attempt; ``admit()`` says when it may run.  Raises TooManyAttempts."""
        if len(self._waiting) >= MAX_WAITING_ATTEMPTS:
            raise TooManyAttempts("too many logins are waiting; retry later")
        pair = (user, address)
        if self._waiting_by_pair.get(pair, 0) >= MAX_WAITING_PER_PAIR:
            raise TooManyAttempts(
                "too many logins are waiting for this user from this address; retry later"
            )
        attempt = Attempt(user, address, next(self._seq))
        self._waiting.append(attempt)
        self._waiting_by_pair[pair] = self._waiting_by_pair.get(pair, 0) + 1
        return attempt

    def admit(self) -> tuple[list[Attempt], float | None]:
        """Attempts that may run now (marked busy), and the clock time at which a waiting
        attempt's delay ends (None: nothing waits for a delay, only for busy keys)."""
        if not self._waiting:
            return [], None
        now = self._clock()
        for attempt in self._waiting:
            pair = attempt.pair
            attempt._sort_key = (
                0 if self._is_trusted(pair, now) else 1,
                self.failures(pair),
                attempt.seq,
            )
        self._waiting.sort(key=lambda a: a._sort_key)
        admitted: list[Attempt] = []
        still: list[Attempt] = []
        wake: float | None = None
        for attempt in self._waiting:
            pair = attempt.pair
            if (
                pair in self._busy_pairs
                or attempt.user in self._busy_users
                or attempt.address in self._busy_addresses
            ):
                still.append(attempt)
                continue
            until = self.blocked_until(pair)
            if until > now:
                wake = until if wake is None else min(wake, until)
                still.append(attempt)
                continue
            self._busy_pairs.add(pair)
            self._busy_users.add(attempt.user)
            self._busy_addresses.add(attempt.address)
            attempt.admitted = True
            admitted.append(attempt)
            self._unwait(pair)
        self._waiting = still
        return admitted, wake

    def release(self, attempt: Attempt) -> None:
        """The attempt's check is over (record its result first); frees its keys."""
        if attempt.admitted:
            attempt.admitted = False
            self._busy_pairs.discard(attempt.pair)
            self._busy_users.discard(attempt.user)
            self._busy_addresses.discard(attempt.address)

    def cancel(self, attempt: Attempt) -> None:
        """A waiting attempt was given up (its client left)."""
        if attempt.admitted:
            self.release(attempt)
            return
        try:
            self._waiting.remove(attempt)
        except ValueError:
            return
        self._unwait(attempt.pair)

    def _unwait(self, pair: Pair) -> None:
        left = self._waiting_by_pair.get(pair, 0) - 1
        if left > 0:
            self._waiting_by_pair[pair] = left
        else:
            self._waiting_by_pair.pop(pair, None)

    @property
    def waiting(self) -> int:
        return len(self._waiting)

    @property
    def running(self) -> int:
        return len(self._busy_pairs)

    # -- results -------------------------------------------------------------------------

    def failures(self, pair: Pair) -> int:
        record = self._failures.get(pair)
        if record is None:
            return 0
        if self._clock() - record.last_failure >= FAILURE_DECAY_S:
            del self._failures[pair]
            return 0
        return record.count

    def blocked_until(self, pair: Pair) -> float:
        record = self._failures.get(pair)
        if record is None:
            return 0.0
        return record.last_failure + failure_delay_s(record.count)

    def record_failure(self, pair: Pair) -> float:
        """Count a failure of ``pair``; returns how long its next check must wait."""
        now = self._clock()
        count = self.failures(pair) + 1
        self._failures.pop(pair, None)
        self._failures[pair] = _Failures(count, now)  # last: ordered by last failure
        while len(self._failures) > MAX_TRACKED_PAIRS:
            self._failures.popitem(last=False)
        return failure_delay_s(count)

    def record_success(self, pair: Pair) -> None:
        self._failures.pop(pair, None)
        self._trusted.pop(pair, None)
        self._trusted[pair] = self._clock()
        while len(self._trusted) > MAX_TRACKED_PAIRS:
            self._trusted.popitem(last=False)

    def _is_trusted(self, pair: Pair, now: float) -> bool:
        at = self._trusted.get(pair)
        return at is not None and now - at < TRUSTED_PAIR_S

    @property
    def tracked_pairs(self) -> int:
        return len(self._failures)


@dataclass(slots=True)
class _LogWindow:
    started: float
    suppressed: int = 0


class FailureLogLimiter:
    """At most one failure line per pair per ``FAILURE_LOG_INTERVAL_S``, plus a count.

    ``note(pair)`` says whether to log this failure now (and how many were left out in the
    window that just ended); ``flush()`` returns the counts of ended windows, for a summary
    line when the failures stop.
    """

    def __init__(self, clock: Callable[[], float]) -> None:
        self._clock = clock
        self._windows: OrderedDict[Pair, _LogWindow] = OrderedDict()  # oldest window first

    def note(self, pair: Pair) -> tuple[bool, int]:
        now = self._clock()
        window = self._windows.get(pair)
        if window is not None and now - window.started < FAILURE_LOG_INTERVAL_S:
            window.suppressed += 1
            return False, 0
        left_out = window.suppressed if window is not None else 0
        self._windows.pop(pair, None)
        self._windows[pair] = _LogWindow(now)
        while len(self._windows) > MAX_TRACKED_PAIRS:
            self._windows.popitem(last=False)
        return True, left_out

    def flush(self) -> list[tuple[Pair, int]]:
        """(pair, failures left out) of every window that has ended; forgets them."""
        now = self._clock()
        ended: list[tuple[Pair, int]] = []
        while self._windows:
            pair, window = next(iter(self._windows.items()))
            if now - window.started < FAILURE_LOG_INTERVAL_S:
                break
            del self._windows[pair]
            if window.suppressed:
                ended.append((pair, window.suppressed))
        return ended

    def __len__(self) -> int:
        return len(self._windows)
