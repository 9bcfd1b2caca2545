"""Consumer-group assignment strategies (broker/logs/assignors.py): examples and properties."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from wharf.broker.logs.assignors import (
    STRATEGIES,
    assign,
    range_assign,
    round_robin_assign,
    sticky_assign,
)

TOPICS = ["a", "b", "c", "d"]

member_ids = st.lists(
    st.text(alphabet="mnopqrstuvwxyz0123456789-", min_size=1, max_size=8),
    min_size=1,
    max_size=8,
    unique=True,
)
partition_counts = st.dictionaries(st.sampled_from(TOPICS), st.integers(0, 24), min_size=1)


def owners(result: dict[str, dict[str, list[int]]]) -> dict[tuple[str, int], list[str]]:
    out: dict[tuple[str, int], list[str]] = {}
    for member, topics in result.items():
        for topic, parts in topics.items():
            assert parts == sorted(parts)
            for p in parts:
                out.setdefault((topic, p), []).append(member)
    return out


def check_complete(
    subs: dict[str, list[str]],
    counts: dict[str, int],
    result: dict[str, dict[str, list[int]]],
) -> None:
    """Every partition of every subscribed existing topic owned by exactly one
    subscriber, and nothing else assigned."""
    assert set(result) == set(subs)
    expected = {
        (t, p) for t in {t for ts in subs.values() for t in ts} for p in range(counts.get(t, 0))
    }
    got = owners(result)
    assert set(got) == expected
    for tp, who in got.items():
        assert len(who) == 1, f"{tp} owned by {who}"
        assert tp[0] in subs[who[0]]


def loads(result: dict[str, dict[str, list[int]]]) -> dict[str, int]:
    return {m: sum(len(ps) for ps in topics.values()) for m, topics in result.items()}


# -- examples as Kafka documents them ---------------------------------------------------


def test_range_example() -> None:
    # Kafka's RangeAssignor javadoc: C0, C1 subscribed to t0, t1 with 3 partitions each.
    subs = {"C0": ["t0", "t1"], "C1": ["t0", "t1"]}
    result = range_assign(subs, {"t0": 3, "t1": 3})
    assert result == {"C0": {"t0": [0, 1], "t1": [0, 1]}, "C1": {"t0": [2], "t1": [2]}}


def test_round_robin_example() -> None:
    subs = {"C0": ["t0", "t1"], "C1": ["t0", "t1"]}
    result = round_robin_assign(subs, {"t0": 3, "t1": 3})
    assert result == {"C0": {"t0": [0, 2], "t1": [1]}, "C1": {"t0": [1], "t1": [0, 2]}}


def test_round_robin_skips_members_not_subscribed() -> None:
    subs = {"C0": ["t0"], "C1": ["t0", "t1"], "C2": ["t0", "t1", "t2"]}
    result = round_robin_assign(subs, {"t0": 1, "t1": 2, "t2": 3})
    assert result == {
        "C0": {"t0": [0]},
        "C1": {"t1": [0]},
        "C2": {"t1": [1], "t2": [0, 1, 2]},
    }


def test_sticky_keeps_partitions_when_a_member_joins() -> None:
    subs = {"a": ["t"], "b": ["t"]}
    first = sticky_assign(subs, {"t": 6}, {})
    assert loads(first) == {"a": 3, "b": 3}
    second = sticky_assign({**subs, "c": ["t"]}, {"t": 6}, first)
    assert loads(second) == {"a": 2, "b": 2, "c": 2}
    for m in ("a", "b"):
        assert set(second[m]["t"]) <= set(first[m]["t"])


def test_sticky_redistributes_only_the_leavers_partitions() -> None:
    before = {"a": {"t": [0, 1]}, "b": {"t": [2, 3]}, "c": {"t": [4, 5]}}
    after = sticky_assign({"a": ["t"], "c": ["t"]}, {"t": 6}, before)
    assert set(after["a"]["t"]) >= {0, 1}
    assert set(after["c"]["t"]) >= {4, 5}
    assert loads(after) == {"a": 3, "c": 3}


def test_missing_topics_and_empty_groups() -> None:
    for strategy in STRATEGIES:
        assert assign(strategy, {}, {"t": 3}) == {}
        assert assign(strategy, {"m": ["nope"]}, {"t": 3}) == {"m": {}}


def test_unknown_strategy() -> None:
    with pytest.raises(ValueError, match="unknown assignment strategy"):
        assign("cooperative", {"m": ["t"]}, {"t": 1})


# -- properties ------------------------------------------------------------------------


@st.composite
def groups(draw: Any, *, same_topics: bool = False) -> tuple[dict[str, list[str]], dict[str, int]]:
    members = draw(member_ids)
    counts = draw(partition_counts)
    topics = sorted(counts) + draw(st.lists(st.sampled_from(TOPICS), max_size=2))
    if same_topics:
        subs = {m: list(topics) for m in members}
    else:
        subs = {
            m: draw(st.lists(st.sampled_from(topics), min_size=1, max_size=4, unique=True))
            for m in members
        }
    return subs, counts


@settings(max_examples=150, deadline=None)
@given(groups(), st.sampled_from(STRATEGIES))
def test_every_partition_owned_exactly_once(
    group: tuple[dict[str, list[str]], dict[str, int]], strategy: str
) -> None:
    subs, counts = group
    check_complete(subs, counts, assign(strategy, subs, counts))


@settings(max_examples=150, deadline=None)
@given(groups(same_topics=True), st.sampled_from(["roundrobin", "sticky"]))
def test_balanced_within_one(
    group: tuple[dict[str, list[str]], dict[str, int]], strategy: str
) -> None:
    subs, counts = group
    result = assign(strategy, subs, counts)
    check_complete(subs, counts, result)
    per_member = loads(result).values()
    assert max(per_member) - min(per_member) <= 1


@settings(max_examples=150, deadline=None)
@given(groups(same_topics=True))
def test_range_balanced_per_topic(group: tuple[dict[str, list[str]], dict[str, int]]) -> None:
    subs, counts = group
    result = range_assign(subs, counts)
    for topic in counts:
        per_member = [len(result[m].get(topic, [])) for m in subs]
        assert max(per_member) - min(per_member) <= 1


@settings(max_examples=200, deadline=None)
@given(
    groups(same_topics=True),
    st.data(),
)
def test_sticky_moves_the_minimum(
    group: tuple[dict[str, list[str]], dict[str, int]], data: st.DataObject
) -> None:
    """Starting from an arbitrary valid previous assignment (members joined and left
    since), the sticky result is balanced and takes away from members only what a
    balanced outcome must take away."""
    subs, counts = group
    members = sorted(subs)
    everything = [(t, p) for t in sorted(counts) for p in range(counts[t])]
    # Previous owners: some current members, some members that have left ("gone-*").
    candidates = members + ["gone-1", "gone-2"]
    previous: dict[str, dict[str, list[int]]] = {}
    for tp in everything:
        who = data.draw(st.sampled_from(candidates))
        previous.setdefault(who, {}).setdefault(tp[0], []).append(tp[1])
    result = sticky_assign(subs, counts, previous)
    check_complete(subs, counts, result)
    load = loads(result)
    assert max(load.values()) - min(load.values()) <= 1
    kept_before = {m: sum(len(ps) for ps in previous.get(m, {}).values()) for m in members}
    lost = 0
    for m in members:
        before = {(t, p) for t, ps in previous.get(m, {}).items() for p in ps}
        now = {(t, p) for t, ps in result[m].items() for p in ps}
        lost += len(before - now)
    # The least any balanced assignment takes away: the members that owned the most
    # get the ceil(n / members) slots.
    n, k = len(everything), len(members)
    quotas = [n // k + (1 if i < n % k else 0) for i in range(k)]
    owned_desc = sorted(kept_before.values(), reverse=True)
    minimum = sum(max(0, had - q) for had, q in zip(owned_desc, quotas, strict=True))
    assert lost == minimum


@settings(max_examples=100, deadline=None)
@given(groups())
def test_sticky_is_stable_when_nothing_changes(
    group: tuple[dict[str, list[str]], dict[str, int]],
) -> None:
    subs, counts = group
    first = sticky_assign(subs, counts, {})
    assert sticky_assign(subs, counts, first) == first


@settings(max_examples=100, deadline=None)
@given(groups(), st.sampled_from(STRATEGIES))
def test_deterministic(group: tuple[dict[str, list[str]], dict[str, int]], strategy: str) -> None:
    subs, counts = group
    shuffled = dict(reversed(list(subs.items())))
    assert assign(strategy, subs, counts) == assign(strategy, shuffled, counts)
