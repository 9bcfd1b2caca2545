"""Routing logic without sockets: topic trie, headers matching, topology routing."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from wharf.broker.core.exchanges import Binding, Exchange, headers_match, topic_matches
from wharf.broker.core.topology import Topology
from wharf.protocol.errors import AccessRefused, InvalidArgument, PreconditionFailed


class Dest:
    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return f"Dest({self.name})"


@pytest.mark.parametrize(
    ("pattern", "key", "expected"),
    [
        ("a.b.c", "a.b.c", True),
        ("a.*.c", "a.b.c", True),
        ("a.*.c", "a..c", True),  # empty words are words
        ("a.*", "a", False),
        ("a.#", "a", True),
        ("#", "", True),
        ("#", "a.b.c", True),
        ("#.c", "c", True),
        ("a.#.c", "a.c", True),
        ("a.#.c", "a.b.x.c", True),
        ("a.#.c", "a.b.x", False),
        ("*", "", False),  # "" has no words, as in RabbitMQ
        ("*", "a.b", False),
        ("*.#", "", False),
        ("", "", True),
        ("", "a", False),
        ("a..b", "a..b", True),
        ("a..b", "a.b", False),
        ("#.#", "x", True),
    ],
)
def test_topic_reference_matcher(pattern: str, key: str, expected: bool) -> None:
    assert topic_matches(pattern, key) is expected


_word = st.sampled_from(["a", "b", "c", ""])
_pword = st.sampled_from(["a", "b", "c", "", "*", "#"])


@settings(max_examples=300, deadline=None)
@given(
    patterns=st.lists(
        st.lists(_pword, min_size=1, max_size=4).map(".".join), min_size=1, max_size=6
    ),
    key=st.lists(_word, min_size=1, max_size=5).map(".".join),
)
def test_topic_trie_agrees_with_reference(patterns: list[str], key: str) -> None:
    ex = Exchange("t", "topic")
    dests = [Dest(f"q{i}") for i in range(len(patterns))]
    for d, p in zip(dests, patterns, strict=True):
        ex.add_binding(Binding(ex, d, p, None))
    got = {d.name for d in ex.match(key, None)}
    want = {d.name for d, p in zip(dests, patterns, strict=True) if topic_matches(p, key)}
    assert got == want
    # Removing every binding leaves nothing routable and the cache is not stale.
    for d, p in zip(dests, patterns, strict=True):
        b = ex.find_binding(d, p, None)
        assert b is not None
        ex.remove_binding(b)
    assert ex.match(key, None) == []


@pytest.mark.parametrize(
    ("args", "headers", "expected"),
    [
        ({"x-match": "all", "a": 1, "b": "x"}, {"a": 1, "b": "x", "c": 3}, True),
        ({"x-match": "all", "a": 1, "b": "x"}, {"a": 1}, False),
        ({"x-match": "any", "a": 1, "b": "x"}, {"a": 2, "b": "x"}, True),
        ({"x-match": "any", "a": 1}, {"a": 2}, False),
        ({"a": 1}, {"a": 1}, True),  # default is all
        ({"x-match": "all", "x-k": 1}, {}, True),  # x- keys ignored by all
        ({"x-match": "all-with-x", "x-k": 1}, {}, False),
        ({"x-match": "all-with-x", "x-k": 1}, {"x-k": 1}, True),
        ({"x-match": "any-with-x", "x-k": 1, "a": 9}, {"x-k": 1}, True),
        ({"x-match": "any", "x-k": 1}, {"x-k": 1}, False),
        ({"x-match": "all", "a": None}, {"a": "anything"}, True),  # nil = presence
        ({"x-match": "all", "a": 1}, {"a": True}, False),  # types must agree
        ({"x-match": "any"}, {"a": 1}, False),
        ({"x-match": "all"}, {}, True),
    ],
)
def test_headers_match(args: dict[str, Any], headers: dict[str, Any], expected: bool) -> None:
    assert headers_match(args, headers) is expected


def test_headers_exchange_rejects_bad_x_match() -> None:
    ex = Exchange("h", "headers")
    with pytest.raises(InvalidArgument):
        ex.add_binding(Binding(ex, Dest("q"), "", {"x-match": "some"}))


def test_unknown_exchange_type() -> None:
    with pytest.raises(InvalidArgument):
        Exchange("x", "nonsense")


class FakeConn:
    pass


def _topology_with_queues(*names: str) -> tuple[Topology, Any]:
    topo = Topology()
    owner: Any = FakeConn()
    for n in names:
        topo.declare_queue(
            n,
            owner=owner,
            durable=False,
            exclusive=False,
            auto_delete=False,
            passive=False,
            arguments=None,
        )
    return topo, owner


def _declare(topo: Topology, name: str, kind: str, **kw: Any) -> Any:
    return topo.declare_exchange(
        name,
        kind,
        durable=False,
        auto_delete=kw.get("auto_delete", False),
        internal=False,
        passive=False,
        arguments=kw.get("arguments"),
    )


def test_default_exchange_routes_by_queue_name() -> None:
    topo, _ = _topology_with_queues("q1")
    assert [q.name for q in topo.route(topo.default_exchange, "q1", None)] == ["q1"]
    assert topo.route(topo.default_exchange, "nope", None) == []


def test_exchange_to_exchange_and_dedup() -> None:
    topo, _ = _topology_with_queues("q1", "q2")
    src = _declare(topo, "src", "fanout")
    mid = _declare(topo, "mid", "direct")
    topo.bind(mid, "src", "", None)
    topo.bind(topo.queues["q1"], "src", "", None)
    topo.bind(topo.queues["q1"], "mid", "k", None)
    topo.bind(topo.queues["q2"], "mid", "k", None)
    assert sorted(q.name for q in topo.route(src, "k", None)) == ["q1", "q2"]
    assert [q.name for q in topo.route(src, "other", None)] == ["q1"]


def test_exchange_binding_cycle_terminates() -> None:
    topo, _ = _topology_with_queues("q1")
    a = _declare(topo, "a", "fanout")
    b = _declare(topo, "b", "fanout")
    topo.bind(b, "a", "", None)
    topo.bind(a, "b", "", None)
    topo.bind(topo.queues["q1"], "b", "", None)
    assert [q.name for q in topo.route(a, "", None)] == ["q1"]


def test_alternate_exchange_only_when_unrouted() -> None:
    topo, _ = _topology_with_queues("main", "unrouted")
    ae = _declare(topo, "ae", "fanout")
    ex = _declare(topo, "orders", "direct", arguments={"alternate-exchange": "ae"})
    topo.bind(topo.queues["unrouted"], "ae", "", None)
    topo.bind(topo.queues["main"], "orders", "eu", None)
    assert [q.name for q in topo.route(ex, "eu", None)] == ["main"]
    assert [q.name for q in topo.route(ex, "us", None)] == ["unrouted"]
    assert ae is topo.exchanges["ae"]


def test_declare_equivalence_and_reserved_names() -> None:
    topo, owner = _topology_with_queues()
    _declare(topo, "x", "direct")
    with pytest.raises(PreconditionFailed):
        _declare(topo, "x", "topic")
    with pytest.raises(AccessRefused):
        _declare(topo, "amq.custom", "direct")
    topo.declare_queue(
        "q",
        owner=owner,
        durable=True,
        exclusive=False,
        auto_delete=False,
        passive=False,
        arguments=None,
    )
    with pytest.raises(PreconditionFailed):
        topo.declare_queue(
            "q",
            owner=owner,
            durable=False,
            exclusive=False,
            auto_delete=False,
            passive=False,
            arguments=None,
        )


def test_auto_delete_exchange_goes_with_last_binding() -> None:
    topo, _ = _topology_with_queues("q1")
    _declare(topo, "tmp", "fanout", auto_delete=True)
    topo.bind(topo.queues["q1"], "tmp", "", None)
    topo.unbind(topo.queues["q1"], "tmp", "", None)
    assert "tmp" not in topo.exchanges
