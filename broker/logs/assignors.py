"""Partition assignment strategies of consumer groups: pure functions, no I/O.

Every strategy takes the members' subscriptions and the partition count of each topic
and returns ``{member_id: {topic: [partition, ...]}}`` with every partition of every
subscribed, existing topic owned by exactly one member that subscribes to it.  Members
are ordered by member id, so the result is deterministic.

- ``range`` (Kafka's RangeAssignor): per topic, the partitions are cut into contiguous
  ranges over the members subscribed to it; the first ``partitions % members`` members
  get one more.
- ``roundrobin`` (Kafka's RoundRobinAssignor): all topic-partitions, sorted, are dealt
  one at a time to the members in turn, skipping members not subscribed to the topic.
- ``sticky`` (in the spirit of Kafka's StickyAssignor): as balanced as round-robin, but
  a member keeps the partitions it owned before wherever balance allows, so a rebalance
  moves as few partitions as it can.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Final

# member id -> {topic: sorted partitions}
Assignment = dict[str, dict[str, list[int]]]

STRATEGIES: Final = ("range", "roundrobin", "sticky")


def assign(
    strategy: str,
    subscriptions: Mapping[str, Sequence[str]],
    partitions: Mapping[str, int],
    previous: Mapping[str, Mapping[str, Sequence[int]]] | None = None,
) -> Assignment:
    """Assign with ``strategy``; ``partitions`` maps each existing topic to its partition
    count (topics missing from it are ignored); ``previous`` is only used by sticky."""
    if strategy == "range":
        return range_assign(subscriptions, partitions)
    if strategy == "roundrobin":
        return round_robin_assign(subscriptions, partitions)
    if strategy == "sticky":
        return sticky_assign(subscriptions, partitions, previous or {})
    raise ValueError(f"unknown assignment strategy {strategy!r}")


def _empty(subscriptions: Mapping[str, Sequence[str]]) -> Assignment:
    return {m: {} for m in sorted(subscriptions)}


def range_assign(
    subscriptions: Mapping[str, Sequence[str]], partitions: Mapping[str, int]
) -> Assignment:
    out = _empty(subscriptions)
    by_topic: dict[str, list[str]] = {}
    for member in sorted(subscriptions):
        for topic in set(subscriptions[member]):
            if partitions.get(topic, 0) > 0:
                by_topic.setdefault(topic, []).append(member)
    for topic in sorted(by_topic):
        members = by_topic[topic]
        count = partitions[topic]
        per, extra = divmod(count, len(members))
        start = 0
        for i, member in enumerate(members):
            n = per + (1 if i < extra else 0)
            if n:
                out[member][topic] = list(range(start, start + n))
            start += n
    return out


def round_robin_assign(
    subscriptions: Mapping[str, Sequence[str]], partitions: Mapping[str, int]
) -> Assignment:
    out = _empty(subscriptions)
    members = sorted(subscriptions)
    if not members:
        return out
    subscribed = {m: set(subscriptions[m]) for m in members}
    topics = sorted({t for m in members for t in subscribed[m] if partitions.get(t, 0) > 0})
    turn = 0
    for topic in topics:
        for p in range(partitions[topic]):
            # Advance to the next member subscribed to this topic (one exists).
            while topic not in subscribed[members[turn % len(members)]]:
                turn += 1
            out[members[turn % len(members)]].setdefault(topic, []).append(p)
            turn += 1
    return out


def sticky_assign(
    subscriptions: Mapping[str, Sequence[str]],
    partitions: Mapping[str, int],
    previous: Mapping[str, Mapping[str, Sequence[int]]],
) -> Assignment:
    """Keep previous ownership, give orphaned partitions to the least loaded eligible
    member, then move partitions from the most to the least loaded member until no
    eligible member has two fewer than another.  Each move strictly lowers the sum of
    squared member loads, so the loop ends."""
    members = sorted(subscriptions)
    subscribed = {m: set(subscriptions[m]) for m in members}
    owned: dict[str, set[tuple[str, int]]] = {m: set() for m in members}
    owner: dict[tuple[str, int], str] = {}
    everything = sorted(
        (t, p)
        for t in {t for m in members for t in subscribed[m]}
        for p in range(partitions.get(t, 0))
    )
    valid = set(everything)
    # Previous ownership still valid: the partition exists, the member still subscribes,
    # and no earlier member (by id) already claimed it.
    for m in members:
        for topic, parts in (previous.get(m) or {}).items():
            if topic not in subscribed[m]:
                continue
            for p in parts:
                tp = (topic, p)
                if tp in valid and tp not in owner:
                    owner[tp] = m
                    owned[m].add(tp)
    eligible: dict[str, list[str]] = {}
    for m in members:
        for t in subscribed[m]:
            eligible.setdefault(t, []).append(m)
    # Orphans: the partitions with the fewest candidates first, each to the least loaded.
    orphans = [tp for tp in everything if tp not in owner]
    orphans.sort(key=lambda tp: (len(eligible[tp[0]]), tp))
    for tp in orphans:
        m = min(eligible[tp[0]], key=lambda c: (len(owned[c]), c))
        owner[tp] = m
        owned[m].add(tp)
    _balance(members, subscribed, owned, owner)
    out = _empty(subscriptions)
    for m in members:
        for topic, p in sorted(owned[m]):
            out[m].setdefault(topic, []).append(p)
    return out


def _balance(
    members: list[str],
    subscribed: dict[str, set[str]],
    owned: dict[str, set[tuple[str, int]]],
    owner: dict[tuple[str, int], str],
) -> None:
    while True:
        moved = False
        # Most loaded first; for each, the least loaded member that can take one of its
        # partitions (the smallest such partition, for determinism).
        for giver in sorted(members, key=lambda c: (-len(owned[c]), c)):
            load = len(owned[giver])
            takers = sorted(
                (c for c in members if len(owned[c]) <= load - 2), key=lambda c: (len(owned[c]), c)
            )
            for taker in takers:
                movable = sorted(tp for tp in owned[giver] if tp[0] in subscribed[taker])
                if movable:
                    tp = movable[0]
                    owned[giver].discard(tp)
                    owned[taker].add(tp)
                    owner[tp] = taker
                    moved = True
                    break
            if moved:
                break
        if not moved:
            return
