"""``wharf ctl topics`` and ``wharf ctl groups`` run as a user runs them: the installed
console script in a subprocess, against a broker in this process."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any

import pytest

import wharf
from wharf.broker.server import Broker
from wharf.protocol import frames as F

from .test_ctl import run_ctl


@pytest.fixture
def settings_overrides() -> dict[str, Any]:
    return {"group_initial_rebalance_delay_ms": 0}


@pytest.fixture
def http_url(broker: Broker) -> str:
    return f"http://127.0.0.1:{broker.http_port}"


def _tname() -> str:
    return f"t-{uuid.uuid4().hex[:8]}"


# -- topics ----------------------------------------------------------------------------------


async def test_topic_commands_create_list_describe_alter_delete(
    broker: Broker, conn: wharf.Connection, http_url: str
) -> None:
    t = _tname()
    r = await run_ctl(
        "topics", "create", t, "--partitions", "2", "--config", "retention.ms=60000",
        url=http_url,
    )  # fmt: skip
    assert r.code == 0 and r.out.strip() == f"topic {t} ready (2 partitions)", r
    described = await conn.describe_topic(t)
    assert described["partitions"] == 2
    assert described["config"]["retention_ms"] == 60000  # dotted Kafka name accepted

    await conn.produce_many(t, [b"a", b"b", b"c"], partition=1)
    r = await run_ctl("topics", "list", url=http_url)
    header, row = r.out.splitlines()
    assert header.split() == ["NAME", "PARTITIONS", "BYTES", "CLEANUP_POLICY", "RETENTION_MS"]
    cells = row.split()
    assert cells[0] == t and cells[1] == "2" and int(cells[2]) > 0
    assert cells[3:] == ["delete", "60000"]

    r = await run_ctl("topics", "describe", t, url=http_url)
    summary, partitions = r.out.split("\n\n")
    fields = dict(line.split(None, 1) for line in summary.splitlines())
    assert (fields["topic"], fields["partitions"], fields["retention_ms"]) == (t, "2", "60000")
    lines = partitions.splitlines()
    assert lines[0].split() == ["PARTITION", "EARLIEST", "LATEST", "BYTES", "SEGMENTS"]
    assert lines[1].split()[:3] == ["0", "0", "0"]
    assert lines[2].split()[:3] == ["1", "0", "3"]

    r = await run_ctl(
        "topics", "alter", t, "--partitions", "4", "--config", "cleanup_policy=compact",
        url=http_url,
    )  # fmt: skip
    assert r.code == 0 and f"topic {t} altered (4 partitions)" in r.out, r
    described = await conn.describe_topic(t)
    assert described["partitions"] == 4 and described["config"]["cleanup_policy"] == "compact"

    r = await run_ctl("--json", "topics", "describe", t, url=http_url)
    assert r.json() == {**described, "vhost": "/"}

    r = await run_ctl("topics", "delete", t, url=http_url)
    assert r.code == 0 and r.out.strip() == f"topic {t} deleted"
    r = await run_ctl("topics", "list", url=http_url)
    assert r.out.strip() == "no topics"


async def test_topic_command_errors_and_usage(
    broker: Broker, conn: wharf.Connection, http_url: str
) -> None:
    t = _tname()
    r = await run_ctl("topics", "describe", t, url=http_url)
    assert r.code == 1 and "HTTP 404" in r.err and "code 404" in r.err, r
    await conn.create_topic(t, partitions=3)
    r = await run_ctl("topics", "alter", t, "--partitions", "2", url=http_url)
    assert r.code == 1 and "never shrink" in r.err, r
    r = await run_ctl("topics", "create", t, "--partitions", "5", url=http_url)
    assert r.code == 1 and "HTTP 409" in r.err, r
    r = await run_ctl("topics", "create", _tname(), "--config", "bogus=1", url=http_url)
    assert r.code == 1 and "HTTP 400" in r.err, r
    # Usage errors are exit code 2 and never reach the broker.
    r = await run_ctl("topics", "alter", t, url=http_url)
    assert r.code == 2 and "--partitions, --config or both" in r.err, r
    r = await run_ctl("topics", "create", t, "--config", "novalue", url=http_url)
    assert r.code == 2 and "key=value" in r.err, r
    r = await run_ctl("topics", "create", t, "--partitions", "0", url=http_url)
    assert r.code == 2
    assert (await conn.describe_topic(t))["partitions"] == 3


# -- consumer groups -------------------------------------------------------------------------


async def test_group_commands_list_describe_reset_delete(
    broker: Broker, conn: wharf.Connection, http_url: str, frame_client: Callable[[], Any]
) -> None:
    t, g = _tname(), f"g-{uuid.uuid4().hex[:8]}"
    await conn.create_topic(t, partitions=2)
    await conn.produce_many(t, [b"r"] * 10, partition=0)
    await conn.produce_many(t, [b"r"] * 3, partition=1)
    r = await run_ctl("groups", "list", url=http_url)
    assert r.code == 0 and r.out.strip() == "no consumer groups", r
    # One member (the GROUP_JOIN frame, as subscribe() sends it) with a commit on partition 0.
    # It never heartbeats, so its session outlasts the ctl subprocesses on a loaded machine.
    raw = await frame_client()
    joined = await raw.result(F.GROUP_JOIN, g, [t], "", None, "range", 600_000, 60_000, None)
    member = joined["member_id"]
    await raw.request(F.OFFSET_COMMIT, g, member, joined["generation"], [[t, 0, 6, None]])

    r = await run_ctl("groups", "list", url=http_url)
    header, row = r.out.splitlines()
    assert header.split() == ["GROUP", "STATE", "MEMBERS", "GENERATION", "STRATEGY"]
    assert row.split() == [g, "Stable", "1", "1", "range"]

    r = await run_ctl("groups", "describe", g, url=http_url)
    assert r.code == 0, r
    summary, partitions = r.out.split("\n\n")
    fields = dict(line.split(None, 1) for line in summary.splitlines())
    assert fields == {
        "group": g,
        "state": "Stable",
        "generation": "1",
        "strategy": "range",
        "members": "1",
    }
    lines = partitions.splitlines()
    assert lines[0].split() == ["TOPIC", "PARTITION", "COMMITTED", "LATEST", "LAG", "MEMBER"]
    assert lines[1].split() == [t, "0", "6", "10", "4", member]
    assert lines[2].split() == [t, "1", "-", "3", "3", member]  # nothing committed yet

    r = await run_ctl("groups", "describe", g, "--members", url=http_url)
    lines = r.out.split("\n\n")[1].splitlines()
    assert lines[0].split() == ["MEMBER", "INSTANCE", "HOST", "TOPICS", "ASSIGNMENT"]
    cells = lines[1].split()
    assert cells[0] == member and cells[1] == "-" and cells[-2:] == [t, f"{t}:0,1"]

    # A group with members is neither reset nor deleted: exit 1, the broker's reason.
    r = await run_ctl("groups", "reset-offsets", g, "--topic", t, "--to-earliest", url=http_url)
    assert r.code == 1 and "members" in r.err and "HTTP 409" in r.err, r
    # A dry run changes nothing, so it works while the group has members.
    r = await run_ctl(
        "--json", "groups", "reset-offsets", g, "--topic", t, "--to-latest", "--dry-run",
        url=http_url,
    )  # fmt: skip
    assert r.code == 0 and r.json()["dry_run"] is True, r
    assert [o["partition"] for o in r.json()["offsets"]] == [0, 1]
    r = await run_ctl("groups", "delete", g, url=http_url)
    assert r.code == 1 and "HTTP 409" in r.err, r

    await raw.request(F.GROUP_LEAVE, g, member)
    r = await run_ctl("groups", "reset-offsets", g, "--topic", t, "--to-earliest", url=http_url)
    assert r.code == 0, r
    lines = r.out.splitlines()
    assert lines[0].split() == ["TOPIC", "PARTITION", "NEW_OFFSET"]
    assert [line.split() for line in lines[1:]] == [[t, "0", "0"], [t, "1", "0"]]
    r = await run_ctl(
        "--json", "groups", "reset-offsets", g, "--topic", t, "--to-offset", "8",
        "--partition", "0", url=http_url,
    )  # fmt: skip
    assert r.json()["offsets"] == [{"topic": t, "partition": 0, "offset": 8}]
    r = await run_ctl(
        "groups", "reset-offsets", g, "--topic", t, "--to-timestamp", "0", "--partition", "1",
        url=http_url,
    )  # fmt: skip
    assert r.out.splitlines()[1].split() == [t, "1", "0"]
    r = await run_ctl("--json", "groups", "describe", g, url=http_url)
    assert [(o["partition"], o["committed"], o["lag"]) for o in r.json()["offsets"]] == [
        (0, 8, 2),
        (1, 0, 3),
    ]

    r = await run_ctl("groups", "delete", g, url=http_url)
    assert r.code == 0 and r.out.strip() == f"group {g} deleted", r
    r = await run_ctl("groups", "describe", g, url=http_url)
    assert r.code == 1 and "HTTP 404" in r.err, r


async def test_reset_offsets_needs_exactly_one_target(broker: Broker, http_url: str) -> None:
    for extra in ([], ["--to-earliest", "--to-latest"], ["--to-offset", "1", "--to-latest"]):
        r = await run_ctl("groups", "reset-offsets", "g", "--topic", "t", *extra, url=http_url)
        assert r.code == 2 and "exactly one of" in r.err, (extra, r)
    r = await run_ctl("groups", "reset-offsets", "g", "--to-latest", url=http_url)
    assert r.code == 2 and "--topic" in r.err, r
    r = await run_ctl("groups", "list", url=http_url)
    assert r.out.strip() == "no consumer groups"
