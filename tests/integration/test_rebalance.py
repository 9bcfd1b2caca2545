"""Consumer-group rebalancing seen through the SDK: members starting together, a
member dying, revocation with commits, fencing, static membership, strategies."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest

import wharf
from wharf.protocol import frames as F

from ..helpers import TcpProxy, wait_until

TOPIC = "events"
PARTITIONS = 6
FAST: dict[str, Any] = {
    "heartbeat_interval": 0.1,
    "session_timeout": 3.0,
    "rebalance_timeout": 3.0,
    "fetch_max_wait": 0.1,
    "auto_offset_reset": "earliest",
}
ALL = {(TOPIC, p) for p in range(PARTITIONS)}
UNTIL_S = 8.0  # a rebalance or two on a loaded machine


@pytest.fixture
def settings_overrides() -> dict[str, Any]:
    return {"group_initial_rebalance_delay_ms": 200, "group_min_session_timeout_ms": 100}


class Member:
    """A stream in the group that records what it was handed, by generation."""

    def __init__(self, conn: wharf.Connection, name: str, **opts: Any) -> None:
        self.conn = conn
        self.name = name
        self.seen: list[tuple[int, int, int]] = []  # (generation, partition, offset)
        self.assignments: list[tuple[int, frozenset[tuple[str, int]]]] = []
        self.revoked: list[list[tuple[str, int]]] = []
        self.stream = conn.subscribe(
            TOPIC,
            group="g",
            on_assign=self._assigned,
            on_revoke=self.revoked.append,
            **{**FAST, **opts},
        )
        self.task: asyncio.Task[None] | None = None

    def _assigned(self, tps: list[tuple[str, int]]) -> None:
        self.assignments.append((self.stream.generation, frozenset(tps)))

    async def start(self) -> None:
        await self.stream.start()
        self.task = asyncio.create_task(self._read())

    async def _read(self) -> None:
        s = self.stream
        while True:
            for rec in await s.getmany(timeout=1.0):
                self.seen.append((s.generation, rec.partition, rec.offset))

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
            await asyncio.gather(self.task, return_exceptions=True)
        await self.stream.close()

    @property
    def generation(self) -> int:
        return self.assignments[-1][0] if self.assignments else -1

    @property
    def owned(self) -> frozenset[tuple[str, int]]:
        return self.assignments[-1][1] if self.assignments else frozenset()


async def until(check: Callable[[], bool]) -> None:
    await wait_until(check, timeout=UNTIL_S)


def settled(members: list[Member]) -> bool:
    """All members in one generation, owning every partition exactly once."""
    gens = {m.generation for m in members}
    if len(gens) != 1 or -1 in gens or any(m.stream.assignment() == [] for m in members):
        return False
    owned = [tp for m in members for tp in m.owned]
    return len(owned) == len(set(owned)) and set(owned) == ALL


def no_double_hand_out(members: list[Member]) -> None:
    """No partition's records were handed to two members within one generation."""
    owner: dict[tuple[int, int], str] = {}
    for m in members:
        for gen, partition, _ in m.seen:
            assert owner.setdefault((gen, partition), m.name) == m.name, (gen, partition)


async def produce_all(conn: wharf.Connection, per_partition: int, tag: str) -> None:
    for p in range(PARTITIONS):
        await conn.produce_many(
            TOPIC, [b"%s%d" % (tag.encode(), i) for i in range(per_partition)], partition=p
        )


async def test_three_members_starting_together_get_one_generation(
    conn: wharf.Connection, connect: Callable[..., Any]
) -> None:
    await conn.create_topic(TOPIC, partitions=PARTITIONS)
    await produce_all(conn, 4, "a")
    members = [Member(await connect(), f"m{i}") for i in range(3)]
    await asyncio.gather(*(m.start() for m in members))
    try:
        await until(lambda: settled(members))
        assert all(len(m.assignments) == 1 for m in members)  # one generation, no second
        assert all(len(m.owned) == 2 for m in members)
        await until(lambda: sum(len(m.seen) for m in members) == 4 * PARTITIONS)
        no_double_hand_out(members)
    finally:
        await asyncio.gather(*(m.stop() for m in members))


async def test_a_dying_member_is_replaced_without_orphans_or_doubles(
    conn: wharf.Connection, connect: Callable[..., Any], proxy: TcpProxy
) -> None:
    await conn.create_topic(TOPIC, partitions=PARTITIONS)
    # The member that dies is the one connected through the proxy.
    members = [
        Member(await connect(**({"url": proxy.url()} if i == 0 else {})), f"m{i}") for i in range(3)
    ]
    dead, survivors = members[0], members[1:]
    await asyncio.gather(*(m.start() for m in members))

    def seen_after(generation: int) -> list[tuple[int, int]]:
        return sorted((p, o) for m in survivors for g, p, o in m.seen if g > generation)

    try:
        await until(lambda: settled(members))
        await produce_all(conn, 10, "a")
        await until(lambda: sum(len(m.seen) for m in members) == 10 * PARTITIONS)
        await dead.stream.commit()  # the survivors auto-commit on revocation
        first = dead.generation
        proxy.cut()  # as if its process were killed
        await until(lambda: settled(survivors) and survivors[0].generation > first)
        assert all(m.revoked for m in survivors)
        await produce_all(conn, 5, "b")
        # Every partition is read on from its committed offset: none orphaned, and
        # nothing read twice.
        expected = [(p, o) for p in range(PARTITIONS) for o in range(10, 15)]
        await until(lambda: len(seen_after(first)) >= len(expected))
        assert seen_after(first) == expected
        no_double_hand_out(members)
    finally:
        await asyncio.gather(*(m.stop() for m in members))


async def test_leaving_member_commits_and_the_next_owner_continues(
    conn: wharf.Connection, connect: Callable[..., Any]
) -> None:
    await conn.create_topic(TOPIC, partitions=PARTITIONS)
    await produce_all(conn, 3, "a")
    a, b = Member(await connect(), "a"), Member(await connect(), "b")
    await asyncio.gather(a.start(), b.start())
    try:
        await until(lambda: settled([a, b]) and len(a.seen) + len(b.seen) == 3 * PARTITIONS)
        await a.stop()  # auto-commit, on_revoke, then GROUP_LEAVE
        assert a.revoked == [sorted(a.owned)] or sorted(a.revoked[0]) == sorted(a.owned)
        await until(lambda: b.owned == ALL)
        await produce_all(conn, 1, "b")
        await until(lambda: len([s for s in b.seen if s[0] == b.generation]) == PARTITIONS)
        # Nothing a handed out before leaving was handed out again to b.
        assert sorted((p, o) for g, p, o in b.seen if g == b.generation) == [
            (p, 3) for p in range(PARTITIONS)
        ]
    finally:
        await asyncio.gather(a.stop(), b.stop())


async def test_commits_from_an_old_generation_are_fenced(
    conn: wharf.Connection, connect: Callable[..., Any], frame_client: Callable[[], Any]
) -> None:
    await conn.create_topic(TOPIC, partitions=PARTITIONS)
    a = Member(await connect(), "a")
    await a.start()
    b: Member | None = None
    try:
        await until(lambda: settled([a]))
        old = a.generation
        await a.stream.commit({(TOPIC, 0): 0})  # current generation: accepted
        b = Member(await connect(), "b")
        await b.start()
        await until(lambda: settled([a, b]) and a.generation > old)
        raw = await frame_client()
        with pytest.raises(wharf.IllegalGeneration):
            await raw.request(F.OFFSET_COMMIT, "g", a.stream.member_id, old, [[TOPIC, 0, 1, None]])
        # A commit through a stream that missed the rebalance is refused as well.
        a.stream.generation = old
        with pytest.raises(wharf.IllegalGeneration):
            await a.stream.commit({(TOPIC, 0): 1})
        # ... and the stream finds its way back into the group.
        await until(lambda: a.stream.generation > old and settled([a, b]))
    finally:
        await asyncio.gather(a.stop(), *([b.stop()] if b else []))


async def test_member_missing_the_rebalance_is_removed_and_fenced(
    conn: wharf.Connection, connect: Callable[..., Any]
) -> None:
    await conn.create_topic(TOPIC, partitions=PARTITIONS)
    # "slow" heartbeats far apart, so it misses the rebalance b's join starts.
    slow = Member(
        await connect(),
        "slow",
        heartbeat_interval=20.0,
        session_timeout=30.0,
        rebalance_timeout=0.5,
    )
    await slow.start()
    b: Member | None = None
    try:
        await until(lambda: settled([slow]))
        b = Member(await connect(), "b")
        await b.start()
        await until(lambda: b is not None and b.owned == ALL)
        with pytest.raises((wharf.UnknownMember, wharf.IllegalGeneration)):
            await slow.stream.commit({(TOPIC, 0): 0})
        await until(lambda: b is not None and settled([slow, b]))
    finally:
        await asyncio.gather(slow.stop(), *([b.stop()] if b else []))


async def test_static_member_restart_keeps_assignment_without_rebalance(
    conn: wharf.Connection, connect: Callable[..., Any], frame_client: Callable[[], Any]
) -> None:
    await conn.create_topic(TOPIC, partitions=PARTITIONS)
    a = Member(await connect(), "a", instance_id="host-a")
    b = Member(await connect(), "b", instance_id="host-b")
    await asyncio.gather(a.start(), b.start())
    a2: Member | None = None
    try:
        await until(lambda: settled([a, b]))
        generation, owned = a.generation, a.owned
        await a.stop()  # a static member does not leave
        a2 = Member(await connect(), "a2", instance_id="host-a")
        await a2.start()
        await until(lambda: a2 is not None and a2.owned != frozenset())
        assert (a2.generation, a2.owned) == (generation, owned)
        await asyncio.sleep(0.3)  # several heartbeats of b: no rebalance
        assert len(b.assignments) == 1 and not b.revoked
        # The replaced member id is fenced.
        with pytest.raises(wharf.FencedInstanceId):
            await (await frame_client()).request(
                F.GROUP_HEARTBEAT, "g", a.stream.member_id, generation
            )
    finally:
        await asyncio.gather(b.stop(), *([a2.stop()] if a2 else []))


@pytest.mark.parametrize("strategy", ["range", "roundrobin", "sticky"])
async def test_strategies_split_partitions(
    conn: wharf.Connection, connect: Callable[..., Any], strategy: str
) -> None:
    await conn.create_topic(TOPIC, partitions=PARTITIONS)
    members = [Member(await connect(), f"m{i}", strategy=strategy) for i in range(2)]
    await asyncio.gather(*(m.start() for m in members))
    try:
        await until(lambda: settled(members))
        assert sorted(len(m.owned) for m in members) == [3, 3]
    finally:
        await asyncio.gather(*(m.stop() for m in members))


async def test_manual_committer_commits_from_on_revoke(
    conn: wharf.Connection, connect: Callable[..., Any]
) -> None:
    await conn.create_topic(TOPIC, partitions=PARTITIONS)
    await produce_all(conn, 2, "a")
    box: dict[str, wharf.Stream] = {}

    async def revoked(tps: list[tuple[str, int]]) -> None:
        await box["a"].commit()  # still a member of the old generation: accepted

    a_conn = await connect()
    stream = a_conn.subscribe(TOPIC, group="g", enable_auto_commit=False, on_revoke=revoked, **FAST)
    box["a"] = stream
    async with stream:
        got = 0
        async with asyncio.timeout(5):
            while got < 2 * PARTITIONS:
                got += len(await stream.getmany(timeout=1))
        assert await conn.committed_offsets("g") == {}
        b = Member(await connect(), "b")
        await b.start()
        try:
            await until(lambda: len(b.owned) == 3 and len(stream.assignment()) == 3)
            assert await conn.committed_offsets("g") == {(TOPIC, p): 2 for p in range(PARTITIONS)}
            assert b.seen == []  # b's partitions start after a's commits
        finally:
            await b.stop()
