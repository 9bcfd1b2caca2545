"""Consumer groups on the broker, over TCP: GROUP_* and OFFSET_* frames.

Each member speaks the frames itself over its own connection (``Member``, a
``FrameClient``; the SDK's stream API builds on the same frames); topics are made and
filled through the SDK.  Timeouts are configured small so the rules that are about time run quickly.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any, cast

import pytest
from prometheus_client.parser import text_string_to_metric_families

import wharf
from wharf.broker.server import Broker
from wharf.protocol import frames as F
from wharf.protocol.errors import (
    FencedInstanceId,
    IllegalGeneration,
    InvalidArgument,
    NotFound,
    PreconditionFailed,
    RebalanceInProgress,
    UnknownMember,
)

from ..conftest import make_settings
from ..helpers import FrameClient, wait_until

Connect = Callable[..., Any]

INITIAL_DELAY_MS = 150
SESSION_MS = 10_000
REBALANCE_MS = 3_000
WAIT_S = 5.0
# For the tests whose second member must join while the first one's initial delay runs:
# room for a loaded machine between the two joins (the group's rebalance timeout,
# REBALANCE_MS, caps it).
LATE_JOIN_DELAY_MS = 2_000


GROUP_SETTINGS: dict[str, Any] = {
    "group_initial_rebalance_delay_ms": INITIAL_DELAY_MS,
    "group_min_session_timeout_ms": 100,
    "group_max_session_timeout_ms": 60_000,
}
LATE_JOIN_SETTINGS = {**GROUP_SETTINGS, "group_initial_rebalance_delay_ms": LATE_JOIN_DELAY_MS}


@pytest.fixture
def settings_overrides() -> dict[str, Any]:
    return GROUP_SETTINGS


class Member(FrameClient):
    """A group member's own protocol connection (closing it is the member's process
    dying); the topic calls of a test go through an SDK connection beside it."""

    sdk: wharf.Connection

    async def create_topic(self, name: str, partitions: int = 1) -> None:
        await self.sdk.create_topic(name, partitions)

    async def alter_topic(self, name: str, partitions: int) -> None:
        await self.sdk.alter_topic(name, partitions)

    async def delete_topic(self, name: str) -> None:
        await self.sdk.delete_topic(name)

    async def produce(self, topic: str, value: bytes, partition: int) -> None:
        await self.sdk.produce(topic, value, partition=partition)

    async def produce_many(self, topic: str, values: list[bytes], partition: int) -> None:
        await self.sdk.produce_many(topic, values, partition=partition)


async def open_member(
    port: int, sdk: wharf.Connection, client_properties: dict[str, Any] | None = None
) -> Member:
    member = await Member.open(port, client_properties=client_properties)
    assert isinstance(member, Member)
    member.sdk = sdk
    return member


@pytest.fixture
async def connect(broker: Broker, conn: wharf.Connection) -> AsyncIterator[Connect]:
    """Open group members (``await connect(client_properties=...)``)."""
    members: list[Member] = []

    async def _open(client_properties: dict[str, Any] | None = None) -> Member:
        member = await open_member(broker.port, conn, client_properties)
        members.append(member)
        return member

    yield _open
    for m in members:
        await m.close()


# -- frame helpers -----------------------------------------------------------------------


async def join(
    conn: FrameClient,
    group: str,
    topics: list[str],
    *,
    member_id: str = "",
    instance_id: str | None = None,
    strategy: str = "range",
    session_timeout_ms: int = SESSION_MS,
    rebalance_timeout_ms: int = REBALANCE_MS,
    owned: list[Any] | None = None,
) -> dict[str, Any]:
    frame = await conn.request(
        F.GROUP_JOIN,
        group,
        topics,
        member_id,
        instance_id,
        strategy,
        session_timeout_ms,
        rebalance_timeout_ms,
        owned,
    )
    return cast(dict[str, Any], frame[2])


async def heartbeat(conn: FrameClient, group: str, reply: dict[str, Any]) -> None:
    await conn.request(F.GROUP_HEARTBEAT, group, reply["member_id"], reply["generation"])


async def commit(
    conn: FrameClient, group: str, member_id: str, generation: int, offsets: list[Any]
) -> None:
    await conn.request(F.OFFSET_COMMIT, group, member_id, generation, offsets)


async def committed(
    conn: FrameClient, group: str, topics: list[str] | None = None
) -> list[list[Any]]:
    frame = await conn.request(F.OFFSET_FETCH, group, topics)
    return [list(o) for o in frame[2]["offsets"]]


async def request(conn: FrameClient, ftype: int, *fields: Any) -> Any:
    return (await conn.request(ftype, *fields))[2]


async def until_rebalancing(conn: FrameClient, group: str, reply: dict[str, Any]) -> None:
    """Heartbeat until the broker answers 409 (bounded by WAIT_S)."""

    async def rebalancing() -> bool:
        try:
            await heartbeat(conn, group, reply)
        except RebalanceInProgress:
            return True
        return False

    await wait_until(rebalancing, timeout=WAIT_S, what="a rebalance")


def ownership(replies: list[dict[str, Any]]) -> dict[tuple[str, int], list[str]]:
    out: dict[tuple[str, int], list[str]] = {}
    for r in replies:
        for topic, parts in r["assignment"]:
            for p in parts:
                out.setdefault((topic, p), []).append(r["member_id"])
    return out


def assert_exact_cover(replies: list[dict[str, Any]], topic: str, partitions: int) -> None:
    """Every partition owned by exactly one member: none orphaned, none twice."""
    owners = ownership(replies)
    assert sorted(owners) == [(topic, p) for p in range(partitions)]
    assert all(len(who) == 1 for who in owners.values()), owners
    assert len({r["generation"] for r in replies}) == 1


def partitions_of(reply: dict[str, Any], topic: str) -> list[int]:
    return next((ps for t, ps in reply["assignment"] if t == topic), [])


# -- forming generations -----------------------------------------------------------------


async def test_three_members_joining_at_once_get_one_generation(connect: Connect) -> None:
    conns = [await connect() for _ in range(3)]
    await conns[0].create_topic("events", partitions=6)
    replies = await asyncio.gather(*(join(c, "billing", ["events"]) for c in conns))
    assert {r["generation"] for r in replies} == {1}
    assert {r["members"] for r in replies} == {3}
    assert {r["strategy"] for r in replies} == {"range"}
    assert len({r["leader"] for r in replies}) == 1
    assert replies[0]["leader"] in {r["member_id"] for r in replies}
    assert len({r["member_id"] for r in replies}) == 3
    assert_exact_cover(replies, "events", 6)
    assert sorted(len(partitions_of(r, "events")) for r in replies) == [2, 2, 2]
    for c, r in zip(conns, replies, strict=True):
        await heartbeat(c, "billing", r)
    desc = await request(conns[0], F.GROUP_DESCRIBE, "billing")
    assert desc["state"] == "Stable"
    assert desc["generation"] == 1
    assert len(desc["members"]) == 3


async def test_member_ids_use_the_client_id(connect: Connect) -> None:
    named = await connect(client_properties={"client_id": "billing-7"})
    anonymous = await connect()
    await named.create_topic("t")
    r1, r2 = await asyncio.gather(join(named, "g", ["t"]), join(anonymous, "g", ["t"]))
    assert r1["member_id"].startswith("billing-7-")
    assert r2["member_id"].startswith("member-")


async def test_member_dying_rebalances_without_orphans(connect: Connect) -> None:
    conns = [await connect() for _ in range(3)]
    await conns[0].create_topic("events", partitions=7)
    replies = await asyncio.gather(*(join(c, "g", ["events"]) for c in conns))
    assert_exact_cover(replies, "events", 7)
    # The third member's process dies: its connection closes without GROUP_LEAVE.
    await conns[2].close()
    survivors = list(zip(conns[:2], replies[:2], strict=True))
    for c, r in survivors:
        await until_rebalancing(c, "g", r)
    second = await asyncio.gather(
        *(join(c, "g", ["events"], member_id=r["member_id"]) for c, r in survivors)
    )
    assert {r["generation"] for r in second} == {2}
    assert {r["members"] for r in second} == {2}
    assert_exact_cover(second, "events", 7)
    # The old generation is fenced.
    with pytest.raises(IllegalGeneration):
        await commit(conns[0], "g", replies[0]["member_id"], 1, [["events", 0, 1, None]])


async def test_member_dying_before_its_generation_forms(connect: Connect) -> None:
    a, b = await connect(), await connect()
    await a.create_topic("t", partitions=2)
    ra = await join(a, "g", ["t"])
    pending = asyncio.ensure_future(join(b, "g", ["t"]))
    await until_rebalancing(a, "g", ra)
    await b.close()
    with pytest.raises(wharf.WharfError):
        await pending
    again = await join(a, "g", ["t"], member_id=ra["member_id"])
    assert again["members"] == 1
    assert partitions_of(again, "t") == [0, 1]


async def test_broker_stops_with_a_join_pending(broker: Broker, connect: Connect) -> None:
    a = await connect()
    await a.create_topic("t")
    ra = await join(a, "g", ["t"])
    b = await connect()
    pending = asyncio.ensure_future(join(b, "g", ["t"]))
    await until_rebalancing(a, "g", ra)
    await broker.stop()
    with pytest.raises(wharf.WharfError):
        await pending


async def test_leave_rebalances_the_rest(connect: Connect) -> None:
    a, b = await connect(), await connect()
    await a.create_topic("t", partitions=4)
    ra, rb = await asyncio.gather(join(a, "g", ["t"]), join(b, "g", ["t"]))
    await request(b, F.GROUP_LEAVE, "g", rb["member_id"])
    with pytest.raises(UnknownMember):
        await heartbeat(b, "g", rb)
    await until_rebalancing(a, "g", ra)
    again = await join(a, "g", ["t"], member_id=ra["member_id"])
    assert again["generation"] == 2
    assert partitions_of(again, "t") == [0, 1, 2, 3]


async def group_listed(conn: FrameClient, group: str) -> None:
    """Wait until ``group`` exists: a first join has reached the broker."""

    async def listed() -> bool:
        return group in [g["group"] for g in (await request(conn, F.GROUP_LIST))["groups"]]

    await wait_until(listed, what=f"a first join to create group {group}")


@pytest.mark.parametrize("settings_overrides", [LATE_JOIN_SETTINGS])
async def test_initial_delay_gathers_late_joiners(connect: Connect) -> None:
    a, b = await connect(), await connect()
    await a.create_topic("t", partitions=2)
    first = asyncio.ensure_future(join(a, "g", ["t"]))
    await group_listed(b, "g")  # b joins later than a, within the initial delay
    ra, rb = await asyncio.gather(first, join(b, "g", ["t"]))
    assert ra["generation"] == rb["generation"] == 1
    assert ra["members"] == 2


async def test_heartbeat_rules(connect: Connect) -> None:
    a, b = await connect(), await connect()
    await a.create_topic("t", partitions=2)
    ra = await join(a, "g", ["t"])
    await heartbeat(a, "g", ra)
    with pytest.raises(IllegalGeneration) as old:
        await heartbeat(a, "g", {**ra, "generation": 0})
    assert old.value.code == 410
    with pytest.raises(UnknownMember) as unknown:
        await heartbeat(a, "g", {**ra, "member_id": "nobody"})
    assert unknown.value.code == 411
    with pytest.raises(UnknownMember):
        await heartbeat(a, "no-such-group", ra)
    # A new member makes the group prepare a rebalance: 409 until the member rejoins.
    pending = asyncio.ensure_future(join(b, "g", ["t"]))
    await until_rebalancing(a, "g", ra)
    with pytest.raises(RebalanceInProgress) as rebalancing:
        await heartbeat(a, "g", ra)
    assert rebalancing.value.code == 409
    assert not pending.done()
    again = await join(a, "g", ["t"], member_id=ra["member_id"])
    rb = await pending
    assert again["generation"] == rb["generation"] == 2
    await heartbeat(a, "g", again)
    assert_exact_cover([again, rb], "t", 2)


async def test_rejoin_when_stable_answers_at_once(connect: Connect) -> None:
    conn = await connect()
    await conn.create_topic("t", partitions=3)
    r = await join(conn, "g", ["t"])
    again = await join(conn, "g", ["t"], member_id=r["member_id"])
    assert again == r


async def test_subscription_change_rebalances(connect: Connect) -> None:
    a, b = await connect(), await connect()
    await a.create_topic("t1", partitions=2)
    await a.create_topic("t2", partitions=2)
    ra, rb = await asyncio.gather(join(a, "g", ["t1"]), join(b, "g", ["t1"]))
    task = asyncio.ensure_future(join(b, "g", ["t1", "t2"], member_id=rb["member_id"]))
    await until_rebalancing(a, "g", ra)
    ra2 = await join(a, "g", ["t1"], member_id=ra["member_id"])
    rb2 = await task
    assert ra2["generation"] == 2
    assert partitions_of(rb2, "t2") == [0, 1]
    assert partitions_of(ra2, "t2") == []


async def test_member_not_rejoining_is_removed_after_the_rebalance_timeout(
    connect: Connect,
) -> None:
    a, b, c = await connect(), await connect(), await connect()
    await a.create_topic("t", partitions=4)
    ra, rb = await asyncio.gather(
        join(a, "g", ["t"], rebalance_timeout_ms=300),
        join(b, "g", ["t"], rebalance_timeout_ms=300),
    )
    # c joins; a rejoins, b never does (it keeps its connection but stops polling).
    task = asyncio.ensure_future(join(c, "g", ["t"], rebalance_timeout_ms=300))
    await until_rebalancing(a, "g", ra)
    ra2, rc = await asyncio.gather(join(a, "g", ["t"], member_id=ra["member_id"]), task)
    assert ra2["generation"] == rc["generation"] == 2
    assert ra2["members"] == 2
    assert_exact_cover([ra2, rc], "t", 4)
    with pytest.raises(UnknownMember):
        await heartbeat(b, "g", rb)


async def test_session_timeout_removes_a_silent_member(connect: Connect) -> None:
    a, b = await connect(), await connect()
    await a.create_topic("t", partitions=2)
    ra, rb = await asyncio.gather(
        join(a, "g", ["t"], session_timeout_ms=5_000),
        join(b, "g", ["t"], session_timeout_ms=300),
    )
    # a heartbeats, b stays silent: b's session ends and the group rebalances.
    await until_rebalancing(a, "g", ra)
    again = await join(a, "g", ["t"], member_id=ra["member_id"], session_timeout_ms=5_000)
    assert again["generation"] == 2
    assert again["members"] == 1
    assert partitions_of(again, "t") == [0, 1]
    with pytest.raises(UnknownMember):
        await heartbeat(b, "g", rb)


async def test_join_checks(connect: Connect) -> None:
    a, b = await connect(), await connect()
    await a.create_topic("t")
    with pytest.raises(InvalidArgument, match="strategy"):
        await join(a, "g", ["t"], strategy="cooperative-sticky")
    with pytest.raises(InvalidArgument, match="session_timeout_ms") as bounds:
        await join(a, "g", ["t"], session_timeout_ms=99)
    assert bounds.value.details["min"] == 100
    with pytest.raises(InvalidArgument):
        await join(a, "g", ["t"], session_timeout_ms=60_001)
    with pytest.raises(InvalidArgument):
        await join(a, "g", [])
    with pytest.raises(InvalidArgument):
        await join(a, "", ["t"])
    with pytest.raises(InvalidArgument):
        await join(a, "g", ["t"], owned=[["t", ["x"]]])
    with pytest.raises(UnknownMember):
        await join(a, "g", ["t"], member_id="made-up")
    with pytest.raises(NotFound):  # refused joins leave no group behind
        await request(a, F.GROUP_DESCRIBE, "g")
    await join(a, "g", ["t"], strategy="roundrobin")
    # Every member must ask for the group's strategy (Kafka's INCONSISTENT_GROUP_PROTOCOL).
    with pytest.raises(InvalidArgument, match="roundrobin"):
        await join(b, "g", ["t"], strategy="range")
    # The broker keeps serving the connection after each refusal.
    assert (await request(a, F.GROUP_DESCRIBE, "g"))["strategy"] == "roundrobin"


async def test_subscribing_to_a_missing_topic_then_creating_it(connect: Connect) -> None:
    conn = await connect()
    r = await join(conn, "g", ["later"])
    assert r["assignment"] == []
    await conn.create_topic("later", partitions=2)
    await until_rebalancing(conn, "g", r)  # noticed on the broker's periodic check
    again = await join(conn, "g", ["later"], member_id=r["member_id"])
    assert partitions_of(again, "later") == [0, 1]


async def test_added_partitions_rebalance(connect: Connect) -> None:
    conn = await connect()
    await conn.create_topic("t", partitions=1)
    r = await join(conn, "g", ["t"])
    await conn.alter_topic("t", partitions=3)
    await until_rebalancing(conn, "g", r)
    again = await join(conn, "g", ["t"], member_id=r["member_id"])
    assert partitions_of(again, "t") == [0, 1, 2]


# -- strategies over the wire ------------------------------------------------------------


async def test_sticky_keeps_partitions_across_a_rebalance(connect: Connect) -> None:
    a, b, c = await connect(), await connect(), await connect()
    await a.create_topic("t", partitions=6)
    ra, rb = await asyncio.gather(
        join(a, "g", ["t"], strategy="sticky"), join(b, "g", ["t"], strategy="sticky")
    )
    task = asyncio.ensure_future(join(c, "g", ["t"], strategy="sticky"))
    await until_rebalancing(a, "g", ra)
    ra2, rb2, rc = await asyncio.gather(
        join(a, "g", ["t"], member_id=ra["member_id"], strategy="sticky"),
        join(b, "g", ["t"], member_id=rb["member_id"], strategy="sticky"),
        task,
    )
    assert_exact_cover([ra2, rb2, rc], "t", 6)
    assert set(partitions_of(ra2, "t")) <= set(partitions_of(ra, "t"))
    assert set(partitions_of(rb2, "t")) <= set(partitions_of(rb, "t"))
    assert len(partitions_of(rc, "t")) == 2


async def test_sticky_uses_owned_partitions_of_new_members(connect: Connect) -> None:
    """After a broker restart members rejoin as new ones and say what they held."""
    a, b = await connect(), await connect()
    await a.create_topic("t", partitions=4)
    ra, rb = await asyncio.gather(
        join(a, "g", ["t"], strategy="sticky", owned=[["t", [1, 3]]]),
        join(b, "g", ["t"], strategy="sticky", owned=[["t", [0, 2]]]),
    )
    assert partitions_of(ra, "t") == [1, 3]
    assert partitions_of(rb, "t") == [0, 2]


async def test_roundrobin_strategy(connect: Connect) -> None:
    a, b = await connect(), await connect()
    await a.create_topic("t1", partitions=3)
    await a.create_topic("t2", partitions=1)
    replies = await asyncio.gather(
        join(a, "g", ["t1", "t2"], strategy="roundrobin"),
        join(b, "g", ["t1", "t2"], strategy="roundrobin"),
    )
    loads = sorted(sum(len(ps) for _, ps in r["assignment"]) for r in replies)
    assert loads == [2, 2]


# -- static membership -------------------------------------------------------------------


async def test_static_member_rejoins_without_a_rebalance(connect: Connect) -> None:
    a, b = await connect(), await connect()
    await a.create_topic("t", partitions=4)
    ra, rb = await asyncio.gather(join(a, "g", ["t"], instance_id="worker-1"), join(b, "g", ["t"]))
    # The static member's process restarts: its connection closes, the member stays.
    await a.close()
    await heartbeat(b, "g", rb)
    a2 = await connect()
    back = await join(a2, "g", ["t"], instance_id="worker-1")
    assert back["member_id"] != ra["member_id"]
    assert back["generation"] == ra["generation"] == 1
    assert back["assignment"] == ra["assignment"]
    await heartbeat(b, "g", rb)  # no rebalance happened
    await heartbeat(a2, "g", back)
    # The old incarnation is fenced.
    with pytest.raises(FencedInstanceId):
        await heartbeat(a2, "g", ra)
    with pytest.raises(FencedInstanceId):
        await commit(a2, "g", ra["member_id"], 1, [["t", 0, 1, None]])
    with pytest.raises(FencedInstanceId):
        await join(a2, "g", ["t"], member_id=ra["member_id"], instance_id="worker-1")
    with pytest.raises(FencedInstanceId):
        await request(a2, F.GROUP_LEAVE, "g", ra["member_id"])
    desc = await request(a2, F.GROUP_DESCRIBE, "g")
    assert {m["instance_id"] for m in desc["members"]} == {"worker-1", None}


@pytest.mark.parametrize("settings_overrides", [LATE_JOIN_SETTINGS])
async def test_static_member_replaced_while_joining_is_fenced(connect: Connect) -> None:
    a, a2 = await connect(), await connect()
    await a.create_topic("t", partitions=2)
    # The first join waits for the initial delay; a second process with the same
    # instance id takes the slot meanwhile.
    first = asyncio.ensure_future(join(a, "g", ["t"], instance_id="worker-1"))
    await group_listed(a2, "g")
    second = await join(a2, "g", ["t"], instance_id="worker-1")
    with pytest.raises(FencedInstanceId) as info:
        await first
    assert info.value.details == {"group": "g", "instance_id": "worker-1"}
    assert partitions_of(second, "t") == [0, 1]
    # A dynamic member id that never existed is still just unknown.
    with pytest.raises(UnknownMember):
        await heartbeat(a2, "g", {"member_id": "nobody", "generation": 1})


async def test_static_member_with_a_new_subscription_rebalances(connect: Connect) -> None:
    a, b = await connect(), await connect()
    await a.create_topic("t", partitions=2)
    await a.create_topic("u", partitions=2)
    ra, rb = await asyncio.gather(join(a, "g", ["t"], instance_id="worker-1"), join(b, "g", ["t"]))
    await a.close()
    a2 = await connect()
    task = asyncio.ensure_future(join(a2, "g", ["t", "u"], instance_id="worker-1"))
    await until_rebalancing(b, "g", rb)
    rb2 = await join(b, "g", ["t"], member_id=rb["member_id"])
    back = await task
    assert back["generation"] == rb2["generation"] == 2
    assert partitions_of(back, "u") == [0, 1]


async def test_static_member_leaves_on_session_timeout(connect: Connect) -> None:
    a, b = await connect(), await connect()
    await a.create_topic("t", partitions=2)
    ra, rb = await asyncio.gather(
        join(a, "g", ["t"], instance_id="w1", session_timeout_ms=300),
        join(b, "g", ["t"]),
    )
    await a.close()
    await until_rebalancing(b, "g", rb)
    again = await join(b, "g", ["t"], member_id=rb["member_id"])
    assert again["members"] == 1
    assert partitions_of(again, "t") == [0, 1]


# -- committed offsets -------------------------------------------------------------------


async def test_commit_and_fetch(connect: Connect) -> None:
    conn = await connect()
    await conn.create_topic("t", partitions=3)
    r = await join(conn, "g", ["t"])
    await commit(conn, "g", r["member_id"], r["generation"], [["t", 0, 5, "m"], ["t", 2, 7, None]])
    assert await committed(conn, "g") == [["t", 0, 5, "m"], ["t", 2, 7, None]]
    assert await committed(conn, "g", ["other"]) == []
    assert await committed(conn, "nobody") == []
    # A later commit replaces the earlier one.
    await commit(conn, "g", r["member_id"], r["generation"], [["t", 0, 6, None]])
    assert (await committed(conn, "g", ["t"]))[0] == ["t", 0, 6, None]


async def test_commit_checks(connect: Connect) -> None:
    conn = await connect()
    await conn.create_topic("t", partitions=2)
    r = await join(conn, "g", ["t"])
    mid, gen = r["member_id"], r["generation"]
    with pytest.raises(NotFound):
        await commit(conn, "g", mid, gen, [["missing", 0, 1, None]])
    with pytest.raises(NotFound):
        await commit(conn, "g", mid, gen, [["t", 2, 1, None]])
    with pytest.raises(InvalidArgument):
        await commit(conn, "g", mid, gen, [["t", 0, -1, None]])
    with pytest.raises(InvalidArgument):
        await commit(conn, "g", mid, gen, [["t", 0, 1, "x" * 4097]])
    with pytest.raises(InvalidArgument):
        await commit(conn, "g", mid, gen, [["t", "0", 1, None]])
    with pytest.raises(IllegalGeneration):
        await commit(conn, "g", mid, gen + 1, [["t", 0, 1, None]])
    with pytest.raises(UnknownMember):
        await commit(conn, "g", "someone-else", gen, [["t", 0, 1, None]])
    # Standalone commits (member "", generation -1) only for a group without members.
    with pytest.raises(UnknownMember):
        await commit(conn, "g", "", -1, [["t", 0, 1, None]])
    # Nothing of the refused commits was stored (all checked before any is applied).
    assert await committed(conn, "g") == []
    await commit(conn, "solo", "", -1, [["t", 1, 3, None]])
    assert await committed(conn, "solo") == [["t", 1, 3, None]]


async def test_commit_accepted_while_preparing_a_rebalance(connect: Connect) -> None:
    a, b = await connect(), await connect()
    await a.create_topic("t", partitions=2)
    ra = await join(a, "g", ["t"])
    pending = asyncio.ensure_future(join(b, "g", ["t"]))
    await until_rebalancing(a, "g", ra)
    # Before rejoining, the member commits what it processed (Kafka accepts this).
    await commit(a, "g", ra["member_id"], ra["generation"], [["t", 0, 10, None]])
    again = await join(a, "g", ["t"], member_id=ra["member_id"])
    await pending
    assert await committed(a, "g") == [["t", 0, 10, None]]
    # ... and after the rebalance the old generation is fenced.
    with pytest.raises(IllegalGeneration) as fenced:
        await commit(a, "g", ra["member_id"], ra["generation"], [["t", 0, 11, None]])
    assert fenced.value.details["generation"] == again["generation"]


async def test_list_describe_and_lag(connect: Connect) -> None:
    conn = await connect()
    await conn.create_topic("t", partitions=2)
    for i in range(5):
        await conn.produce("t", b"v%d" % i, partition=0)
    await conn.produce("t", b"w", partition=1)
    r = await join(conn, "g", ["t"])
    await commit(conn, "g", r["member_id"], r["generation"], [["t", 0, 2, None]])
    await commit(conn, "standalone", "", -1, [["t", 1, 1, None]])
    groups = (await request(conn, F.GROUP_LIST))["groups"]
    assert groups == [
        {"group": "g", "state": "Stable", "members": 1, "generation": 1, "strategy": "range"},
        {"group": "standalone", "state": "Empty", "members": 0, "generation": 0, "strategy": ""},
    ]
    desc = await request(conn, F.GROUP_DESCRIBE, "g")
    assert desc["offsets"] == [
        {"topic": "t", "partition": 0, "committed": 2, "latest": 5, "lag": 3},
        # Assigned but never committed: lag counted from the earliest offset.
        {"topic": "t", "partition": 1, "committed": -1, "latest": 1, "lag": 1},
    ]
    [member] = desc["members"]
    assert member["member_id"] == r["member_id"]
    assert member["topics"] == ["t"]
    assert member["assignment"] == [["t", [0, 1]]]
    assert member["client_host"] == "127.0.0.1"
    with pytest.raises(NotFound):
        await request(conn, F.GROUP_DESCRIBE, "nobody")


async def test_delete_group(connect: Connect) -> None:
    conn = await connect()
    await conn.create_topic("t")
    r = await join(conn, "g", ["t"])
    await commit(conn, "g", r["member_id"], r["generation"], [["t", 0, 0, None]])
    with pytest.raises(PreconditionFailed):
        await request(conn, F.GROUP_DELETE, "g")
    await request(conn, F.GROUP_LEAVE, "g", r["member_id"])
    assert (await request(conn, F.GROUP_DESCRIBE, "g"))["state"] == "Empty"
    await request(conn, F.GROUP_DELETE, "g")
    assert await committed(conn, "g") == []
    with pytest.raises(NotFound):
        await request(conn, F.GROUP_DESCRIBE, "g")
    with pytest.raises(NotFound):
        await request(conn, F.GROUP_DELETE, "g")
    assert (await request(conn, F.GROUP_LIST))["groups"] == []


async def test_reset_offsets(connect: Connect) -> None:
    conn = await connect()
    await conn.create_topic("t", partitions=2)
    await conn.produce_many("t", [b"a", b"b", b"c"], partition=0)
    r = await join(conn, "g", ["t"])
    with pytest.raises(PreconditionFailed):
        await request(conn, F.GROUP_RESET_OFFSETS, "g", "t", "earliest", None, None)
    await request(conn, F.GROUP_LEAVE, "g", r["member_id"])
    result = await request(conn, F.GROUP_RESET_OFFSETS, "g", "t", "latest", None, None)
    assert result["offsets"] == [["t", 0, 3], ["t", 1, 0]]
    assert await committed(conn, "g") == [["t", 0, 3, None], ["t", 1, 0, None]]
    await request(conn, F.GROUP_RESET_OFFSETS, "g", "t", "earliest", None, [0])
    assert (await committed(conn, "g"))[0] == ["t", 0, 0, None]
    await request(conn, F.GROUP_RESET_OFFSETS, "g", "t", "offset", 2, [0])
    assert (await committed(conn, "g"))[0] == ["t", 0, 2, None]
    # Beyond the range: clamped to latest, as kafka-consumer-groups does.
    await request(conn, F.GROUP_RESET_OFFSETS, "g", "t", "offset", 99, [0])
    assert (await committed(conn, "g"))[0] == ["t", 0, 3, None]
    await request(conn, F.GROUP_RESET_OFFSETS, "g", "t", "timestamp", 0, [0])
    assert (await committed(conn, "g"))[0] == ["t", 0, 0, None]
    # A group that does not exist yet gets offsets too.
    await request(conn, F.GROUP_RESET_OFFSETS, "fresh", "t", "latest", None, [1])
    assert await committed(conn, "fresh") == [["t", 1, 0, None]]
    with pytest.raises(InvalidArgument):
        await request(conn, F.GROUP_RESET_OFFSETS, "g", "t", "middle", None, None)
    with pytest.raises(InvalidArgument):
        await request(conn, F.GROUP_RESET_OFFSETS, "g", "t", "offset", None, None)
    with pytest.raises(NotFound):
        await request(conn, F.GROUP_RESET_OFFSETS, "g", "t", "earliest", None, [5])
    with pytest.raises(NotFound):
        await request(conn, F.GROUP_RESET_OFFSETS, "g", "missing", "earliest", None, None)


async def test_deleted_topic_drops_offsets_and_rebalances(connect: Connect) -> None:
    conn = await connect()
    await conn.create_topic("t1", partitions=1)
    await conn.create_topic("t2", partitions=1)
    r = await join(conn, "g", ["t1", "t2"])
    await commit(
        conn, "g", r["member_id"], r["generation"], [["t1", 0, 0, None], ["t2", 0, 0, None]]
    )
    await conn.delete_topic("t2")
    await until_rebalancing(conn, "g", r)
    again = await join(conn, "g", ["t1", "t2"], member_id=r["member_id"])
    assert again["assignment"] == [["t1", [0]]]

    async def dropped() -> bool:
        return await committed(conn, "g") == [["t1", 0, 0, None]]

    await wait_until(dropped, what="the deleted topic's offsets to go")


# -- expiry, restart, metrics ------------------------------------------------------------


@pytest.mark.parametrize("settings_overrides", [{"offsets_retention_ms": 200}])
async def test_offsets_of_a_group_without_members_expire(connect: Connect) -> None:
    conn = await connect()
    await conn.create_topic("t")
    r = await join(conn, "live", ["t"])
    await commit(conn, "live", r["member_id"], r["generation"], [["t", 0, 1, None]])
    await commit(conn, "idle", "", -1, [["t", 0, 1, None]])
    # Checked on the broker's periodic tick (once a second).

    async def expired() -> bool:
        return not await committed(conn, "idle")

    await wait_until(expired, what="the idle group's offsets to expire")
    names = [g["group"] for g in (await request(conn, F.GROUP_LIST))["groups"]]
    assert names == ["live"]  # a group with members keeps its offsets
    assert await committed(conn, "live") == [["t", 0, 1, None]]


async def test_offsets_survive_a_restart(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, group_initial_rebalance_delay_ms=0)
    b = Broker(settings)
    await b.start()
    try:
        async with await wharf.connect(f"wharf://guest:guest@127.0.0.1:{b.port}") as sdk:
            conn = await open_member(b.port, sdk)
            await conn.create_topic("t", partitions=2)
            r = await join(conn, "g", ["t"])
            await commit(conn, "g", r["member_id"], 1, [["t", 0, 4, "meta"], ["t", 1, 2, None]])
            await commit(conn, "g", r["member_id"], 1, [["t", 1, 3, None]])
            await commit(conn, "other", "", -1, [["t", 0, 9, None]])
            await request(conn, F.GROUP_DELETE, "other")
            await conn.close()
    finally:
        await b.stop()
    b = Broker(make_settings(tmp_path, group_initial_rebalance_delay_ms=0))
    await b.start()
    try:
        async with await wharf.connect(f"wharf://guest:guest@127.0.0.1:{b.port}") as sdk:
            conn = await open_member(b.port, sdk)
            assert await committed(conn, "g") == [["t", 0, 4, "meta"], ["t", 1, 3, None]]
            assert await committed(conn, "other") == []
            # Membership is not kept: the old member must join again.
            with pytest.raises(UnknownMember):
                await heartbeat(conn, "g", r)
            groups = (await request(conn, F.GROUP_LIST))["groups"]
            assert [g["group"] for g in groups] == ["g"]
            again = await join(conn, "g", ["t"])
            assert again["generation"] == 1
            await conn.close()
    finally:
        await b.stop()


async def test_group_metrics(broker: Broker, connect: Connect) -> None:
    conn = await connect()
    await conn.create_topic("t", partitions=2)
    await conn.produce_many("t", [b"a", b"b", b"c"], partition=0)
    r = await join(conn, "g", ["t"])
    await commit(conn, "g", r["member_id"], r["generation"], [["t", 0, 1, None]])
    reader, writer = await asyncio.open_connection("127.0.0.1", broker.http_port)
    writer.write(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    async with asyncio.timeout(WAIT_S):
        data = await reader.read()
    writer.close()
    with contextlib.suppress(Exception):
        await writer.wait_closed()
    text = data.partition(b"\r\n\r\n")[2].decode()
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }
    labels = (("group", "g"), ("partition", "0"), ("topic", "t"), ("vhost", "/"))
    assert samples[("wharf_group_lag", labels)] == 2
    assert samples[("wharf_group_committed_offset", labels)] == 1
    labels1 = (("group", "g"), ("partition", "1"), ("topic", "t"), ("vhost", "/"))
    assert samples[("wharf_group_lag", labels1)] == 0
    assert ("wharf_group_committed_offset", labels1) not in samples
    assert samples[("wharf_group_members", (("group", "g"), ("vhost", "/")))] == 1
    assert samples[("wharf_group_rebalances_total", (("group", "g"), ("vhost", "/")))] == 1
