"""The web UI's session store: idle timeout, absolute cap, eviction, cookie parsing
(broker/http/sessions.py)."""

from __future__ import annotations

from wharf.broker.http.sessions import (
    SessionStore,
    session_cookie_value,
    set_cookie_header,
)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_session_ends_after_its_idle_timeout_and_each_use_restarts_it() -> None:
    clock = Clock()
    store = SessionStore(idle_timeout_s=60, absolute_timeout_s=3600, clock=clock)
    s = store.create("alice", "hash")
    clock.now += 59
    assert store.get(s.id) is s
    clock.now += 59  # 118 s after login, 59 s after its last use
    assert store.get(s.id) is s
    clock.now += 60
    assert store.get(s.id) is None
    assert len(store) == 0


def test_a_busy_session_still_ends_at_the_absolute_cap() -> None:
    clock = Clock()
    store = SessionStore(idle_timeout_s=60, absolute_timeout_s=300, clock=clock)
    s = store.create("alice", None)
    for _ in range(5):
        clock.now += 50
        assert store.get(s.id) is s
    clock.now += 50
    assert store.get(s.id) is None


def test_ids_and_tokens_are_random_and_distinct() -> None:
    store = SessionStore()
    a, b = store.create("u", None), store.create("u", None)
    assert a.id != b.id and a.csrf_token != b.csrf_token and len(a.id) >= 43
    assert a.csrf_ok(a.csrf_token) and not a.csrf_ok(b.csrf_token) and not a.csrf_ok(None)


def test_a_full_store_evicts_the_least_recently_used() -> None:
    clock = Clock()
    store = SessionStore(max_sessions=2, clock=clock)
    a, b = store.create("a", None), store.create("b", None)
    assert store.get(a.id) is a  # b is now the least recently used
    c = store.create("c", None)
    assert store.get(b.id) is None and store.get(a.id) is a and store.get(c.id) is c


def test_cookie_parsing_takes_only_the_session_cookie() -> None:
    assert session_cookie_value("a=1; wharf_session=abc; b=2") == "abc"
    assert session_cookie_value("wharf_sessionx=abc") is None
    assert session_cookie_value("wharf_session=" + "x" * 500) is None
    assert session_cookie_value(None) is None and session_cookie_value("junk") is None
    assert "Secure" in set_cookie_header("x", secure=True)
    assert "Max-Age=0" in set_cookie_header("", secure=False, max_age_s=0)
