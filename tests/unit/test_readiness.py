"""Readiness is decided in one place (alarms.decide_readiness, ``Broker.readiness``);
/readyz only renders it (tests/unit/test_http.py checks the bodies)."""

from __future__ import annotations

from wharf.broker.alarms import Readiness, decide_readiness


def _decide(
    serving: bool = True,
    stopping: bool = False,
    store_failure: str | None = None,
    fd_alarm: bool = False,
    alarms: tuple[str, ...] = (),
) -> Readiness:
    return decide_readiness(
        serving=serving,
        stopping=stopping,
        store_failure=store_failure,
        fd_alarm=fd_alarm,
        alarms=alarms,
    )


def test_serving_with_nothing_in_the_way_is_ready() -> None:
    assert _decide() == Readiness(True, "ready")


def test_not_serving_is_starting_or_stopping_whatever_else_is_wrong() -> None:
    assert _decide(serving=False) == Readiness(False, "starting")
    stopping = _decide(serving=False, stopping=True, store_failure="x", alarms=("disk",))
    assert stopping == Readiness(False, "stopping")


def test_causes_rank_store_failure_then_fds_then_publisher_alarms() -> None:
    everything = _decide(store_failure="fsync failed: EIO", fd_alarm=True, alarms=("disk",))
    assert everything == Readiness(False, "failed", reason="message store: fsync failed: EIO")
    assert _decide(fd_alarm=True, alarms=("disk",)) == Readiness(False, "blocked", alarms=("fds",))
    blocked = _decide(alarms=("memory", "disk"))
    assert blocked == Readiness(False, "blocked", alarms=("disk", "memory"))
