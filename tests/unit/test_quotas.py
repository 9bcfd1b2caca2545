"""Per-user limits and byte-rate quotas (broker/core/quotas.py): the decisions alone."""

from __future__ import annotations

import pytest

from wharf.broker.core.quotas import (
    CONSUME,
    MAX_CHANNELS,
    MAX_CONNECTIONS,
    MAX_CONSUME_RATE,
    MAX_PUBLISH_RATE,
    MAX_THROTTLE_S,
    PRODUCE,
    QUOTA_SAMPLE_S,
    QUOTA_SAMPLES,
    ByteRate,
    UserLimits,
    check_limit,
)
from wharf.protocol.errors import InvalidArgument, ResourceError

QUOTA = 1000  # bytes/s
BURST_S = (QUOTA_SAMPLES - 1) * QUOTA_SAMPLE_S  # the shortest span a rate is taken over


def test_a_rate_under_its_quota_never_waits() -> None:
    meter = ByteRate(QUOTA)
    t = 100.0
    for _ in range(200):  # 90 bytes every 0.1 s: 90% of the quota, for 20 s
        assert meter.record(90, t) == 0.0
        t += 0.1
    assert meter.rate(t) == pytest.approx(0.9 * QUOTA, rel=0.15)


def test_a_burst_is_allowed_up_to_the_shortest_span_then_waits_bring_it_back() -> None:
    meter = ByteRate(QUOTA)
    assert meter.record(int(QUOTA * BURST_S), 0.0) == 0.0  # a quiet user's allowance
    # Over it: the wait until bytes / span is the quota again.
    assert meter.record(500, 0.0) == pytest.approx(1.5)
    assert meter.record(500, 0.5) == pytest.approx(1.5)  # 2 s of quota by 0.5 s


def test_old_samples_leave_the_window() -> None:
    meter = ByteRate(QUOTA)
    assert meter.record(int(QUOTA * BURST_S) * 2, 0.0) == pytest.approx(2 * BURST_S)
    window = QUOTA_SAMPLES * QUOTA_SAMPLE_S
    assert meter.record(1, window + 0.01) == 0.0  # the big sample has rolled out
    assert meter.rate(window + 0.01) < QUOTA


def test_one_wait_is_capped_and_asking_again_charges_the_rest() -> None:
    meter = ByteRate(QUOTA)
    t = 0.0
    waited = 0.0
    wait = meter.record(QUOTA * 30, t)  # 30 s worth in one frame
    while wait:
        assert wait <= MAX_THROTTLE_S
        waited += wait
        t += wait
        wait = meter.record(0, t)  # the wire asks again when a wait is over
    assert waited == pytest.approx(30, abs=0.01)
    # A sender that stays away long enough has paid for it meanwhile.
    idle = ByteRate(QUOTA)
    assert idle.record(QUOTA * 30, 0.0) == MAX_THROTTLE_S
    assert idle.record(1, 40.0) == 0.0


@pytest.mark.parametrize("frame_bytes", [10, 100, 5_000, 300_000])
def test_a_throttled_sender_averages_its_quota_whatever_its_frame_size(frame_bytes: int) -> None:
    """A sender that sends again as soon as its waits are over, for ten minutes."""
    meter = ByteRate(QUOTA)
    t = sent = 0.0
    while t < 600.0:
        sent += frame_bytes
        wait = meter.record(frame_bytes, t)
        while wait:
            t += wait
            wait = meter.record(0, t)
        t += 0.001
    assert sent / t == pytest.approx(QUOTA, rel=0.05)


def test_max_connections_refuses_with_rabbitmqs_wording_and_counts_releases() -> None:
    limits = UserLimits()
    limits.set("app", MAX_CONNECTIONS, 2)
    first, second = limits.admit("app"), limits.admit("app")
    assert first is second and first.connections == 2  # one usage (budget) per user
    with pytest.raises(ResourceError, match=r"connection limit \(2\) for user 'app' is reached"):
        limits.admit("app")
    limits.release(first)
    third = limits.admit("app")
    assert third.connections == 2
    limits.admit("other")  # no limit for other users
    limits.set("app", MAX_CONNECTIONS, 0)
    with pytest.raises(ResourceError):
        limits.admit("app")
    limits.release(third)
    limits.release(third)
    assert limits.usage("app") is None  # forgotten with its last connection


def test_minus_one_clears_and_unknown_names_or_values_are_refused() -> None:
    limits = UserLimits()
    assert limits.set("app", MAX_CHANNELS, 5) is True
    assert limits.set("app", MAX_CHANNELS, 6) is False
    assert limits.describe("app") == {"user": "app", "value": {MAX_CHANNELS: 6}}
    assert limits.max_channels("app") == 6 and limits.max_channels("b") is None
    limits.set("app", MAX_CHANNELS, -1)
    assert limits.describe("app") is None and limits.describe_all() == []
    assert limits.clear("app", MAX_CHANNELS) is False
    for name, value in (
        ("max-queues", 1),
        (MAX_CONNECTIONS, -2),
        (MAX_CONNECTIONS, True),
        (MAX_CONNECTIONS, "3"),
        (MAX_PUBLISH_RATE, 0),
        (MAX_CONSUME_RATE, 2**60),
    ):
        with pytest.raises(InvalidArgument):
            check_limit(name, value)


def test_quotas_apply_to_open_connections_at_once() -> None:
    limits = UserLimits()
    usage = limits.admit("app")
    assert usage.produce is None and usage.consumed(10**9, 0.0) == 0.0
    limits.set("app", MAX_PUBLISH_RATE, QUOTA)
    limits.set("app", MAX_CONSUME_RATE, QUOTA)
    assert usage.produce is not None and usage.consume is not None
    assert usage.produced(QUOTA * 10, 0.0) > 0
    assert usage.consumed(QUOTA * 10, 0.0) > 0
    assert limits.throttle_seconds[("app", PRODUCE)] > 0
    assert limits.throttle_seconds[("app", CONSUME)] > 0
    limits.clear("app", MAX_PUBLISH_RATE)
    assert usage.produce is None
    limits.forget_user("app")
    assert usage.consume is None and limits.throttle_seconds == {}


def test_records_load_back_and_bad_ones_are_skipped() -> None:
    limits = UserLimits()
    limits.set("app", MAX_CONNECTIONS, 3)
    limits.set("app", MAX_PUBLISH_RATE, 1_000_000)
    limits.set("b", MAX_CHANNELS, 0)
    saved = limits.records()
    again = UserLimits()
    assert again.load(saved) == []
    assert again.describe_all() == limits.describe_all()
    bad = UserLimits()
    errors = bad.load(
        [
            {"user": "x", "value": {"max-connections": "many"}},
            {"user": 7, "value": {}},
            "junk",
            {"user": "ok", "value": {"max-connections": 1}},
        ]
    )
    assert len(errors) == 3
    assert bad.describe_all() == [{"user": "ok", "value": {"max-connections": 1}}]
    assert UserLimits().load({"not": "a list"}) != []


def test_changes_are_saved() -> None:
    saves: list[int] = []
    limits = UserLimits()
    limits.on_change = lambda: saves.append(1)
    limits.set("app", MAX_CONNECTIONS, 1)
    limits.clear("app", MAX_CONNECTIONS)
    limits.forget_user("nobody")
    assert len(saves) == 2


def test_max_channels_counts_the_channels_of_all_the_users_connections() -> None:
    limits = UserLimits()
    limits.set("app", MAX_CHANNELS, 2)
    one, two = limits.admit("app"), limits.admit("app")
    assert one is two  # one budget for the user
    limits.admit_channel(one)
    limits.admit_channel(two)
    with pytest.raises(ResourceError, match=r"user 'app' has reached the maximum allowed user"):
        limits.admit_channel(one)
    limits.release_channel(one)
    limits.admit_channel(two)
    assert one.channels == 2
    limits.release_channel(one, 5)  # never below zero
    assert one.channels == 0
    other = limits.admit("b")  # no limit
    for _ in range(10):
        limits.admit_channel(other)
