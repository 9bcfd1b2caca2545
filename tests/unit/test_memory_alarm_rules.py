"""The memory alarm's rule: accounted memory with hysteresis, RSS only as a backstop."""

from __future__ import annotations

from pathlib import Path

import pytest

from wharf.broker import alarms
from wharf.broker.alarms import MEMORY, MemoryTrimmer, ResourceMonitor

LIMIT = 1_000_000


class Readings:
    def __init__(self) -> None:
        self.accounted = 0
        self.rss = 0


@pytest.fixture
def readings(monkeypatch: pytest.MonkeyPatch) -> Readings:
    r = Readings()
    monkeypatch.setattr(alarms, "rss_bytes", lambda: r.rss)
    return r


def _monitor(tmp_path: Path, r: Readings, trimmer: MemoryTrimmer | None = None) -> ResourceMonitor:
    m = ResourceMonitor(
        str(tmp_path), 0.5, 0, accounted_memory=lambda: r.accounted, trimmer=trimmer
    )
    m.memory_limit_bytes = LIMIT
    return m


def test_raised_at_the_watermark_cleared_below_the_lower_one(
    tmp_path: Path, readings: Readings
) -> None:
    m = _monitor(tmp_path, readings)
    for accounted, raised in [
        (LIMIT - 1, False),
        (LIMIT, True),
        (int(LIMIT * 0.95), True),  # between the two watermarks: stays raised
        (int(LIMIT * 0.9), True),
        (int(LIMIT * 0.89), False),
        (int(LIMIT * 0.95), False),  # and stays cleared until the high one again
    ]:
        readings.accounted = accounted
        m.check()
        assert (MEMORY in m.alarms) is raised, accounted


def test_rss_alone_never_raises_the_alarm(tmp_path: Path, readings: Readings) -> None:
    # After a purge the allocator may keep every page: RSS stays high, nothing is held.
    m = _monitor(tmp_path, readings)
    readings.rss = 50 * LIMIT
    readings.accounted = 0
    m.check()
    assert MEMORY not in m.alarms


def test_rss_far_above_with_half_accounted_raises_it(tmp_path: Path, readings: Readings) -> None:
    m = _monitor(tmp_path, readings)
    readings.rss = 2 * LIMIT
    readings.accounted = LIMIT // 2
    m.check()
    assert MEMORY in m.alarms
    readings.accounted = LIMIT // 10
    m.check()
    assert MEMORY not in m.alarms


def test_a_large_release_asks_for_a_trim(tmp_path: Path, readings: Readings) -> None:
    trimmer = MemoryTrimmer()
    m = _monitor(tmp_path, readings, trimmer)
    readings.accounted = LIMIT
    m.check()
    assert not trimmer._requested
    readings.accounted = 0
    m.check()
    assert trimmer._requested


def test_fd_alarm_on_a_failed_open_or_near_the_limit_with_hysteresis(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    state = {"open": 10, "errors": 0, "idle": 0}
    monkeypatch.setattr(alarms, "fd_limit", lambda: 100)
    monkeypatch.setattr(alarms, "open_fds", lambda limit: state["open"])
    m = ResourceMonitor(
        str(tmp_path),
        0.5,
        0,
        fd_errors=lambda: state["errors"],
        reclaimable_fds=lambda: state["idle"],
    )
    steps = [
        ({}, False),
        ({"errors": 1}, True),  # an EMFILE since the last check
        ({}, False),  # no new failure, few fds in use
        ({"open": 95}, True),
        ({"open": 90}, True),  # between the two thresholds: stays raised
        ({"open": 84}, False),
        ({"open": 99, "idle": 20}, False),  # idle pooled handles can be closed on demand
    ]
    for change, raised in steps:
        state.update(change)
        m.check()
        assert m.fd_alarm is raised, change
        assert MEMORY not in m.alarms  # never a publisher-blocking alarm
