"""The deduplication window (core/dedup.py) and its queue argument / policy key."""

from __future__ import annotations

import pytest

from wharf.broker.core.dedup import TICKS_PER_WINDOW, DedupWindow
from wharf.broker.core.policies.arguments import parse_queue_arguments
from wharf.broker.core.policies.registry import effective_limits, make_policy
from wharf.protocol.errors import InvalidArgument

T0 = 1_700_000_000_000


def test_an_id_is_a_duplicate_inside_the_window_only() -> None:
    w = DedupWindow(1000)
    assert not w.seen("a", T0)
    assert w.add("a", T0)
    assert w.seen("a", T0 + 999)
    assert not w.seen("b", T0 + 999)
    assert not w.seen("a", T0 + 1000)
    assert len(w) == 0


def test_a_duplicate_does_not_extend_the_window() -> None:
    w = DedupWindow(1000)
    w.add("a", T0)
    assert not w.add("a", T0 + 500)  # already there: the first acceptance counts
    assert not w.seen("a", T0 + 1000)


def test_purge_goes_in_acceptance_order_and_counts() -> None:
    w = DedupWindow(1000)
    for i in range(10):
        w.add(f"id-{i}", T0 + i * 100)
    assert w.purge(T0 + 1000 + 450) == 5
    assert len(w) == 5
    assert not w.seen("id-4", T0 + 1450) and w.seen("id-5", T0 + 1450)


def test_expiries_are_rounded_up_to_a_tick_and_runs_stay_bounded() -> None:
    window = 1024 * 10
    w = DedupWindow(window)
    for i in range(5000):  # one id per ms: runs of 10 ids share a tick
        w.add(f"id-{i}", T0 + i)
    assert len(w._runs) <= 5000 // 10 + 1
    # Never shorter than asked, at most one tick longer.
    assert w.seen("id-0", T0 + window - 1)
    assert not w.seen("id-0", T0 + window + window // TICKS_PER_WINDOW)


def test_a_shorter_window_never_reorders_the_purge() -> None:
    w = DedupWindow(10_000)
    w.add("old", T0)
    w.set_window(100)
    w.add("new", T0 + 1)
    # "new" lives as long as "old" (expiries never go backwards), nothing is lost.
    assert w.seen("new", T0 + 5000)
    assert not w.seen("old", T0 + 10_000) and not w.seen("new", T0 + 10_000)


def test_queue_argument_and_policy_key() -> None:
    assert parse_queue_arguments({"x-dedup-window-ms": 5000}).dedup_window_ms == 5000
    assert parse_queue_arguments({}).dedup_window_ms is None
    for bad in (0, -1, "5s", 1.5, True, 7 * 24 * 3600 * 1000 + 1):
        with pytest.raises(InvalidArgument) as err:
            parse_queue_arguments({"x-dedup-window-ms": bad})
        assert err.value.details["argument"] == "x-dedup-window-ms"
        with pytest.raises(InvalidArgument):
            make_policy("p", ".", {"dedup-window-ms": bad})
    policy = make_policy("p", ".", {"dedup-window-ms": 60_000})
    assert effective_limits({}, policy).dedup_window_ms == 60_000
    # The queue's own argument wins over the policy (as x-overflow, not a lower-wins limit).
    assert effective_limits({"x-dedup-window-ms": 10}, policy).dedup_window_ms == 10
