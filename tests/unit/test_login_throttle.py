"""The login throttle's rules with an injected clock (security/throttle.py)."""

from __future__ import annotations

import pytest

from wharf.broker.security import throttle
from wharf.broker.security.throttle import (
    FailureLogLimiter,
    LoginThrottle,
    TooManyAttempts,
    failure_delay_s,
)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def admitted(t: LoginThrottle) -> list[tuple[str, str]]:
    return [a.pair for a in t.admit()[0]]


def test_one_check_at_a_time_per_pair_then_the_delay() -> None:
    clock = Clock()
    t = LoginThrottle(clock)
    first, second = t.enqueue("app", "10.0.0.1"), t.enqueue("app", "10.0.0.1")
    assert t.admit() == ([first], None)
    assert admitted(t) == []  # the pair is busy
    assert t.record_failure(first.pair) == failure_delay_s(1)
    t.release(first)
    ready, wake = t.admit()
    assert ready == [] and wake == clock.now + failure_delay_s(1)
    clock.now = wake
    assert t.admit() == ([second], None)


def test_one_check_at_a_time_per_user_and_per_address() -> None:
    t = LoginThrottle(Clock())
    a = t.enqueue("app", "10.0.0.1")
    t.enqueue("app", "10.0.0.2")  # same user
    t.enqueue("ops", "10.0.0.1")  # same address
    d = t.enqueue("ops", "10.0.0.3")  # neither
    assert t.admit()[0] == [a, d]
    assert t.running == 2 and t.waiting == 2


def test_other_pairs_failures_delay_nobody_and_clean_pairs_go_first() -> None:
    clock = Clock()
    t = LoginThrottle(clock)
    for _ in range(10):  # "app" guessed from .9 and "x" from .8 (spraying .8)
        for pair in (("app", "10.0.0.9"), ("x", "10.0.0.8")):
            t.record_failure(pair)
    clock.now += throttle.FAILURE_DELAY_MAX_S  # the guessers may try again
    guessers = [t.enqueue("app", "10.0.0.9"), t.enqueue("x", "10.0.0.8")]
    t.admit()
    for g in guessers:
        t.release(g)
    t.enqueue("app", "10.0.0.9")
    t.enqueue("x", "10.0.0.8")
    # The real "app" from another address and "ops" from the guessing address arrive
    # last, with the user and the address being guessed: they are checked first.
    t.enqueue("app", "10.0.0.1")
    t.enqueue("ops", "10.0.0.8")
    assert admitted(t) == [("app", "10.0.0.1"), ("ops", "10.0.0.8")]


def test_trusted_pairs_go_first() -> None:
    t = LoginThrottle(Clock())
    t.record_success(("ops", "10.0.0.8"))
    t.enqueue("u1", "10.0.0.8")
    t.enqueue("u2", "10.0.0.8")
    t.enqueue("ops", "10.0.0.8")
    assert admitted(t) == [("ops", "10.0.0.8")]


def test_a_success_clears_the_pair_and_failures_decay() -> None:
    clock = Clock()
    t = LoginThrottle(clock)
    for _ in range(3):
        t.record_failure(("app", "a"))
    assert t.failures(("app", "a")) == 3
    t.record_success(("app", "a"))
    assert t.failures(("app", "a")) == 0 and t.blocked_until(("app", "a")) == 0
    t.record_failure(("app", "b"))
    clock.now += throttle.FAILURE_DECAY_S
    assert t.failures(("app", "b")) == 0 and t.tracked_pairs == 0


def test_cancelled_attempts_leave_no_trace() -> None:
    t = LoginThrottle(Clock())
    a, b = t.enqueue("app", "a"), t.enqueue("app", "a")
    t.admit()
    t.cancel(b)  # waiting
    t.cancel(a)  # admitted: released
    assert t.waiting == 0 and t.running == 0 and t.admit() == ([], None)


def test_bounds(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(throttle, "MAX_WAITING_PER_PAIR", 2)
    monkeypatch.setattr(throttle, "MAX_WAITING_ATTEMPTS", 3)
    monkeypatch.setattr(throttle, "MAX_TRACKED_PAIRS", 2)
    t = LoginThrottle(Clock())
    t.enqueue("u", "a")
    t.enqueue("u", "a")
    with pytest.raises(TooManyAttempts, match="this user from this address"):
        t.enqueue("u", "a")
    t.enqueue("v", "a")  # another user from that address still gets in line
    with pytest.raises(TooManyAttempts, match="too many logins are waiting;"):
        t.enqueue("w", "c")
    for user in ("u", "v", "w"):
        t.record_failure((user, "a"))
    assert t.tracked_pairs == 2 and t.failures(("u", "a")) == 0  # the oldest went


def test_failure_log_limiter() -> None:
    clock = Clock()
    limiter = FailureLogLimiter(clock)
    pair = ("app", "10.0.0.1")
    assert limiter.note(pair) == (True, 0)
    assert limiter.note(pair) == (False, 0)
    assert limiter.note(pair) == (False, 0)
    assert limiter.note(("ops", "10.0.0.1")) == (True, 0)
    assert limiter.flush() == []
    clock.now += throttle.FAILURE_LOG_INTERVAL_S
    assert limiter.note(pair) == (True, 2)  # a new window reports the last one's count
    assert limiter.flush() == []  # ops: nothing left out; app: its window is new
    clock.now += throttle.FAILURE_LOG_INTERVAL_S
    limiter.note(pair)
    limiter.note(pair)
    clock.now += throttle.FAILURE_LOG_INTERVAL_S
    assert limiter.flush() == [(pair, 1)]
    assert len(limiter) == 0
