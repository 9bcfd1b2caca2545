"""A consumer group of three members, one of them a separate process killed with
SIGKILL: the survivors take over every partition (none orphaned, none owned twice in
one generation), read on from the committed offsets, and commits from the generation
before the kill are fenced."""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import sys
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

import wharf
from wharf.protocol import frames as F

from ..conftest import RawClient

TOPIC = "events"
GROUP = "billing"
PARTITIONS = 6
ALL = {(TOPIC, p) for p in range(PARTITIONS)}
WAIT_S = 10.0
FAST: dict[str, Any] = {
    "heartbeat_interval": 0.1,
    "session_timeout": 5.0,
    "rebalance_timeout": 3.0,
    "fetch_max_wait": 0.1,
    "auto_offset_reset": "earliest",
}

# The member that dies: reads and prints what it was assigned and handed, one JSON line
# each, commits after every batch of records, until it is killed.
CHILD = """
import asyncio, json, sys, wharf

async def main(url, topic, group, opts):
    conn = await wharf.connect(url, client_properties={"client_id": "doomed"})
    box = {}
    def assigned(tps):
        print(json.dumps(["assign", box["s"].generation, sorted(tps)]), flush=True)
    stream = conn.subscribe(topic, group=group, on_assign=assigned, **opts)
    box["s"] = stream
    async with stream:
        while True:
            records = await stream.getmany(timeout=1.0)
            for rec in records:
                print(json.dumps(["rec", stream.generation, rec.partition, rec.offset]))
            if records:
                await stream.commit()
                print(json.dumps(["committed", stream.generation]), flush=True)

asyncio.run(main(*sys.argv[1:4], json.loads(sys.argv[4])))
"""


@pytest.fixture
def settings_overrides() -> dict[str, Any]:
    return {"group_initial_rebalance_delay_ms": 300, "group_min_session_timeout_ms": 100}


class Member:
    """An in-process stream that records its assignments and records by generation."""

    def __init__(self, conn: wharf.Connection, name: str) -> None:
        self.name = name
        self.assignments: list[tuple[int, frozenset[tuple[str, int]]]] = []
        self.seen: list[tuple[int, int, int]] = []  # (generation, partition, offset)
        self.stream = conn.subscribe(TOPIC, group=GROUP, on_assign=self._assigned, **FAST)
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


class Child:
    """The member in its own process, and what it printed."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.assignments: list[tuple[int, frozenset[tuple[str, int]]]] = []
        self.seen: list[tuple[int, int, int]] = []
        self.commits = 0
        self.reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        assert self.proc.stdout is not None
        async for line in self.proc.stdout:
            kind, generation, *rest = json.loads(line)
            if kind == "assign":
                self.assignments.append((generation, frozenset((t, p) for t, p in rest[0])))
            elif kind == "rec":
                self.seen.append((generation, rest[0], rest[1]))
            else:
                self.commits += 1


@pytest.fixture
async def spawn(url: str) -> AsyncIterator[Callable[[], Any]]:
    children: list[Child] = []

    async def _spawn() -> Child:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            CHILD,
            url,
            TOPIC,
            GROUP,
            json.dumps(FAST),
            stdout=asyncio.subprocess.PIPE,
        )
        child = Child(proc)
        children.append(child)
        return child

    yield _spawn
    for child in children:
        if child.proc.returncode is None:
            child.proc.kill()
        await child.proc.wait()
        with contextlib.suppress(Exception):
            await child.reader


async def until(check: Callable[[], bool]) -> None:
    async with asyncio.timeout(WAIT_S):
        while not check():  # noqa: ASYNC110 (group state seen from outside, no event)
            await asyncio.sleep(0.02)


async def until_described(conn: wharf.Connection, check: Callable[[dict[str, Any]], bool]) -> Any:
    async with asyncio.timeout(WAIT_S):
        while True:
            desc = await conn.describe_group(GROUP)
            if check(desc):
                return desc
            await asyncio.sleep(0.05)


def owners(desc: dict[str, Any]) -> list[tuple[str, int]]:
    return [(t, p) for m in desc["members"] for t, ps in m["assignment"] for p in ps]


def stable_with(n: int) -> Callable[[dict[str, Any]], bool]:
    def check(desc: dict[str, Any]) -> bool:
        return desc["state"] == "Stable" and len(desc["members"]) == n and set(owners(desc)) == ALL

    return check


def check_generations(
    assignments: list[tuple[str, list[tuple[int, frozenset[tuple[str, int]]]]]],
) -> None:
    """Within each generation, no partition is assigned to two members."""
    by_generation: dict[int, list[tuple[str, int]]] = {}
    for _, history in assignments:
        for generation, tps in history:
            by_generation.setdefault(generation, []).extend(tps)
    for generation, tps in by_generation.items():
        assert len(tps) == len(set(tps)), (generation, sorted(tps))


async def test_killed_member_process_is_replaced_without_orphans_or_doubles(
    conn: wharf.Connection,
    connect: Callable[..., Any],
    raw_client: Callable[..., Any],
    spawn: Callable[[], Any],
) -> None:
    await conn.create_topic(TOPIC, partitions=PARTITIONS)
    child: Child = await spawn()
    survivors = [Member(await connect(), f"m{i}") for i in range(2)]
    await asyncio.gather(*(m.start() for m in survivors))
    try:
        desc = await until_described(conn, stable_with(3))
        generation = desc["generation"]
        doomed = next(m for m in desc["members"] if m["client_id"] == "doomed")
        doomed_parts = {(t, p) for t, ps in doomed["assignment"] for p in ps}
        assert len(doomed_parts) == 2
        await until(lambda: any(g == generation for g, _ in child.assignments))
        await until(
            lambda: all(m.assignments and m.assignments[-1][0] == generation for m in survivors)
        )

        # Records for everyone; the child reads and commits its share, then dies.
        for p in range(PARTITIONS):
            await conn.produce_many(TOPIC, [b"a%d" % i for i in range(10)], partition=p)
        await until(lambda: len(child.seen) == 20 and child.commits > 0)
        await until(lambda: sum(len(m.seen) for m in survivors) == 40)
        committed_by_child = await conn.committed_offsets(GROUP)
        assert {tp: committed_by_child.get(tp) for tp in doomed_parts} == dict.fromkeys(
            doomed_parts, 10
        )
        child.proc.send_signal(signal.SIGKILL)
        assert await child.proc.wait() == -signal.SIGKILL

        # The broker saw the connection go: one rebalance, two members own everything.
        desc = await until_described(conn, stable_with(2))
        assert desc["generation"] > generation
        assert sorted(owners(desc)) == sorted(ALL)  # each partition once
        assert doomed["member_id"] not in {m["member_id"] for m in desc["members"]}
        await until(lambda: all(m.assignments[-1][0] == desc["generation"] for m in survivors))
        mine = [tp for m in survivors for tp in m.assignments[-1][1]]
        assert sorted(mine) == sorted(ALL)
        check_generations(
            [("child", child.assignments)] + [(m.name, m.assignments) for m in survivors]
        )

        # Every partition goes on from its committed offset: the dead member's ones from
        # 10 (what it committed), nothing skipped and nothing handed out twice.
        for p in range(PARTITIONS):
            await conn.produce_many(TOPIC, [b"b%d" % i for i in range(5)], partition=p)
        after = desc["generation"]

        def read_after() -> list[tuple[int, int]]:
            return sorted((p, o) for m in survivors for g, p, o in m.seen if g == after)

        expected = [(p, o) for p in range(PARTITIONS) for o in range(10, 15)]
        await until(lambda: len(read_after()) >= len(expected))
        assert read_after() == expected
        owner: dict[tuple[int, int], str] = {}
        for m in survivors:
            for g, p, _ in m.seen:
                assert owner.setdefault((g, p), m.name) == m.name, (g, p)
        for g, p, _ in child.seen:
            assert owner.setdefault((g, p), "child") == "child", (g, p)

        # Commits from the generation before the kill are fenced, whoever sends them.
        raw: RawClient = await raw_client()
        alive = survivors[0].stream.member_id
        raw.send(F.OffsetCommit(2, GROUP, alive, generation, [[TOPIC, 0, 1, None]]))
        err = await raw.recv()
        assert (err[0], err[1], err[2]) == (F.ERROR, 2, wharf.IllegalGeneration.code)
        raw.send(F.OffsetCommit(3, GROUP, doomed["member_id"], generation, [[TOPIC, 0, 1, None]]))
        err = await raw.recv()
        assert (err[0], err[1], err[2]) == (F.ERROR, 3, wharf.UnknownMember.code)
        assert (await conn.committed_offsets(GROUP)).get((TOPIC, 0)) != 1
    finally:
        await asyncio.gather(*(m.stop() for m in survivors))
