"""Log topics and consumer groups in the management HTTP API (/api/topics, /api/groups) and
in /metrics, over real HTTP next to SDK clients."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any

import pytest

import wharf
from wharf.broker.server import Broker
from wharf.protocol import frames as F

from ..helpers import FrameClient
from .test_api import api
from .test_http import scrape, value

VIEWER = ("viewer", "pw")
SESSION_TIMEOUT_MS = 10_000


@pytest.fixture
def settings_overrides() -> dict[str, Any]:
    # A lone member gets its assignment at once instead of after Kafka's 3 s.
    return {"group_initial_rebalance_delay_ms": 0}


def _tname(prefix: str = "t") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


async def _viewer(broker: Broker) -> tuple[str, str]:
    r = await api(broker, "PUT", "/api/users/viewer", {"password": "pw", "tags": ["monitoring"]})
    assert r.status == 201, r
    return VIEWER


# -- topics ----------------------------------------------------------------------------------


async def test_create_describe_list_and_delete_a_topic(
    broker: Broker, conn: wharf.Connection
) -> None:
    t = _tname()
    r = await api(broker, "PUT", f"/api/topics/%2F/{t}", {"partitions": 3})
    assert r.status == 201, r
    doc = r.json()
    assert doc["name"] == t and doc["partitions"] == 3
    assert [p["partition"] for p in doc["offsets"]] == [0, 1, 2]
    assert isinstance(doc["config"], dict)
    # The same declaration again changes nothing; another partition count is a conflict.
    assert (await api(broker, "PUT", f"/api/topics/%2F/{t}", {"partitions": 3})).status == 200
    r = await api(broker, "PUT", f"/api/topics/%2F/{t}", {"partitions": 4})
    assert r.status == 409 and r.json()["code"] == 406, r

    # Created over HTTP, used over the protocol: the API shows what clients wrote.
    await conn.produce_many(t, [b"a", b"b", b"c", b"d", b"e"], partition=1)
    described = (await api(broker, "GET", f"/api/topics/%2F/{t}")).json()
    offsets = {p["partition"]: p for p in described["offsets"]}
    assert (offsets[1]["earliest"], offsets[1]["latest"]) == (0, 5)
    assert offsets[1]["bytes"] > 0 and offsets[1]["segments"] >= 1
    assert offsets[0]["latest"] == 0
    assert described == {**await conn.describe_topic(t), "vhost": "/"}

    listed = (await api(broker, "GET", "/api/topics")).json()
    assert [x["name"] for x in listed] == [t]
    assert (await api(broker, "GET", "/api/overview")).json()["object_totals"]["topics"] == 1

    r = await api(broker, "DELETE", f"/api/topics/%2F/{t}")
    assert r.status == 200 and r.json() == {}
    r = await api(broker, "GET", f"/api/topics/%2F/{t}")
    assert r.status == 404 and r.json()["code"] == 404
    assert (await api(broker, "DELETE", f"/api/topics/%2F/{t}")).status == 404
    assert (await api(broker, "GET", "/api/topics")).json() == []


async def test_partitions_default_to_one_as_in_kafka(broker: Broker) -> None:
    t = _tname()
    r = await api(broker, "PUT", f"/api/topics/%2F/{t}")
    assert r.status == 201 and r.json()["partitions"] == 1, r


async def test_patch_grows_partitions_and_changes_settings(
    broker: Broker, conn: wharf.Connection
) -> None:
    t = _tname()
    await conn.create_topic(t, partitions=2)
    r = await api(broker, "PATCH", f"/api/topics/%2F/{t}", {"partitions": 5})
    assert r.status == 200 and r.json()["partitions"] == 5, r
    assert (await conn.describe_topic(t))["partitions"] == 5
    # Never shrinks.
    r = await api(broker, "PATCH", f"/api/topics/%2F/{t}", {"partitions": 2})
    assert r.status == 400 and r.json()["code"] == 400, r
    # Settings: the given keys change, the others keep their values.
    before = (await api(broker, "GET", f"/api/topics/%2F/{t}")).json()["config"]
    r = await api(broker, "PATCH", f"/api/topics/%2F/{t}", {"config": {"retention_ms": 3_600_000}})
    assert r.status == 200, r
    after = r.json()["config"]
    assert after["retention_ms"] == 3_600_000
    assert {k: v for k, v in after.items() if k != "retention_ms"} == {
        k: v for k, v in before.items() if k != "retention_ms"
    }
    assert (await conn.describe_topic(t))["config"]["retention_ms"] == 3_600_000
    # Both at once.
    r = await api(
        broker,
        "PATCH",
        f"/api/topics/%2F/{t}",
        {"partitions": 6, "config": {"cleanup_policy": "compact"}},
    )
    assert r.status == 200, r
    assert r.json()["partitions"] == 6 and r.json()["config"]["cleanup_policy"] == "compact"
    # Nothing to change is a mistake, not a no-op.
    r = await api(broker, "PATCH", f"/api/topics/%2F/{t}", {})
    assert r.status == 400 and "partitions" in r.json()["error"]
    assert (
        await api(broker, "PATCH", f"/api/topics/%2F/{_tname()}", {"partitions": 2})
    ).status == 404


async def test_topic_settings_at_creation(broker: Broker, conn: wharf.Connection) -> None:
    t = _tname()
    body = {"partitions": 2, "config": {"retention_ms": 60_000, "segment_bytes": 1_048_576}}
    r = await api(broker, "PUT", f"/api/topics/%2F/{t}", body)
    assert r.status == 201, r
    config = r.json()["config"]
    assert (config["retention_ms"], config["segment_bytes"]) == (60_000, 1_048_576)
    assert (await conn.describe_topic(t))["config"] == config


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/api/topics/%2F/.hidden", {"partitions": 1}),
        ("/api/topics/%2F/a%20b", {"partitions": 1}),
        ("/api/topics/%2F/{t}", {"partitions": 0}),
        ("/api/topics/%2F/{t}", {"partitions": 1025}),
        ("/api/topics/%2F/{t}", {"partitions": "3"}),
        ("/api/topics/%2F/{t}", {"partitions": True}),
        ("/api/topics/%2F/{t}", {"partition": 3}),
        ("/api/topics/%2F/{t}", {"config": []}),
        ("/api/topics/%2F/{t}", {"config": {"no_such_setting": 1}}),
        ("/api/topics/%2F/{t}", {"config": {"retention_ms": "a week"}}),
        ("/api/topics/%2F/{t}", {"config": {"cleanup_policy": "shred"}}),
    ],
)
async def test_bad_topic_requests_are_400(broker: Broker, path: str, body: Any) -> None:
    t = _tname()
    r = await api(broker, "PUT", path.format(t=t), body)
    assert r.status == 400 and r.json()["code"] == 400, r
    assert (await api(broker, "GET", "/api/topics")).json() == []


async def test_topic_reads_for_anyone_changes_for_administrators(
    broker: Broker, conn: wharf.Connection
) -> None:
    viewer = await _viewer(broker)
    t = _tname()
    await conn.create_topic(t, partitions=1)
    assert (await api(broker, "GET", "/api/topics", auth=viewer)).status == 200
    assert (await api(broker, "GET", f"/api/topics/%2F/{t}", auth=viewer)).status == 200
    for method, body in (
        ("PUT", {"partitions": 1}),
        ("PATCH", {"partitions": 2}),
        ("DELETE", None),
    ):
        r = await api(broker, method, f"/api/topics/%2F/{t}", body, auth=viewer)
        assert r.status == 403 and r.json()["code"] == 403, (method, r)
    assert (await conn.describe_topic(t))["partitions"] == 1
    r = await api(broker, "POST", f"/api/topics/%2F/{t}", {})
    assert r.status == 405 and set(r.headers["allow"].split(", ")) == {
        "DELETE",
        "GET",
        "PATCH",
        "PUT",
    }


async def test_topic_metrics_follow_produces_and_deletes(
    broker: Broker, conn: wharf.Connection
) -> None:
    t = _tname()
    await conn.create_topic(t, partitions=2)
    samples = await scrape(broker)
    assert value(samples, "wharf_topics") == 1
    assert value(samples, "wharf_topic_partitions", topic=t, vhost="/") == 2
    assert (
        value(samples, "wharf_topic_partition_latest_offset", topic=t, partition="1", vhost="/")
        == 0
    )
    await conn.produce_many(t, [b"x" * 100] * 7, partition=1)
    samples = await scrape(broker)
    labels = {"topic": t, "partition": "1"}
    assert value(samples, "wharf_topic_partition_latest_offset", **labels, vhost="/") == 7
    assert value(samples, "wharf_topic_partition_earliest_offset", **labels, vhost="/") == 0
    assert value(samples, "wharf_topic_partition_bytes", **labels, vhost="/") > 700
    assert value(samples, "wharf_topic_partition_segments", **labels, vhost="/") >= 1
    assert value(samples, "wharf_topic_partition_bytes", topic=t, partition="0", vhost="/") < 700
    await conn.delete_topic(t)
    samples = await scrape(broker)
    assert value(samples, "wharf_topics") == 0
    assert not any(("topic", t) in labels for _, labels in samples)


# -- consumer groups -------------------------------------------------------------------------
# Members join with the GROUP_JOIN frame, as the SDK's subscribe() does underneath.


async def _join(conn: FrameClient, group: str, topics: list[str]) -> dict[str, Any]:
    result: dict[str, Any] = await conn.result(
        F.GROUP_JOIN, group, topics, "", None, "range", SESSION_TIMEOUT_MS, 60_000, None
    )
    return result


async def _commit(
    conn: FrameClient, group: str, member: str, generation: int, offsets: list[Any]
) -> None:
    await conn.request(F.OFFSET_COMMIT, group, member, generation, offsets)


async def _leave(conn: FrameClient, group: str, member: str) -> None:
    await conn.request(F.GROUP_LEAVE, group, member)


async def test_group_describe_shows_members_assignment_committed_and_lag(
    broker: Broker, conn: wharf.Connection, frame_client: Callable[[], Any]
) -> None:
    t, g = _tname(), _tname("g")
    await conn.create_topic(t, partitions=2)
    await conn.produce_many(t, [b"r"] * 10, partition=0)
    await conn.produce_many(t, [b"r"] * 4, partition=1)
    member_conn = await frame_client()
    joined = await _join(member_conn, g, [t])
    member = joined["member_id"]
    await _commit(member_conn, g, member, joined["generation"], [[t, 0, 7, None]])

    listed = (await api(broker, "GET", "/api/groups")).json()
    assert listed == [
        {
            "group": g,
            "state": "Stable",
            "members": 1,
            "generation": 1,
            "strategy": "range",
            "vhost": "/",
        }
    ]
    r = await api(broker, "GET", f"/api/groups/%2F/{g}")
    assert r.status == 200, r
    doc = r.json()
    assert (doc["group"], doc["state"], doc["generation"]) == (g, "Stable", 1)
    [m] = doc["members"]
    assert m["member_id"] == member and m["topics"] == [t]
    assert m["assignment"] == [[t, [0, 1]]]
    assert doc["offsets"] == [
        {"topic": t, "partition": 0, "committed": 7, "latest": 10, "lag": 3, "member": member},
        # Nothing committed: lag counts from the earliest offset.
        {"topic": t, "partition": 1, "committed": -1, "latest": 4, "lag": 4, "member": member},
    ]

    # While it has members a group can be neither deleted nor reset (Kafka: non-empty group).
    r = await api(broker, "DELETE", f"/api/groups/%2F/{g}")
    assert r.status == 409 and r.json()["code"] == 406 and "members" in r.json()["error"], r
    body = {"topic": t, "to": "earliest"}
    r = await api(broker, "POST", f"/api/groups/%2F/{g}/reset-offsets", body)
    assert r.status == 409 and r.json()["code"] == 406, r

    await _leave(member_conn, g, member)
    doc = (await api(broker, "GET", f"/api/groups/%2F/{g}")).json()
    assert doc["state"] == "Empty" and doc["members"] == []
    assert doc["offsets"] == [
        {"topic": t, "partition": 0, "committed": 7, "latest": 10, "lag": 3, "member": None}
    ]


async def test_reset_offsets_to_each_target(broker: Broker, conn: wharf.Connection) -> None:
    t, g = _tname(), _tname("g")
    await conn.create_topic(t, partitions=3)
    for p in range(3):
        await conn.produce_many(t, [b"r"] * 5, partition=p)
    path = f"/api/groups/%2F/{g}/reset-offsets"

    async def reset(body: dict[str, Any]) -> dict[int, int]:
        r = await api(broker, "POST", path, {"topic": t, **body})
        assert r.status == 200, r
        doc = r.json()
        assert doc["group"] == g and doc["topic"] == t
        return {o["partition"]: o["offset"] for o in doc["offsets"] if o["topic"] == t}

    # A group that does not exist yet gets its offsets (as Kafka's tool does).
    assert await reset({"to": "latest"}) == {0: 5, 1: 5, 2: 5}
    assert await reset({"to": "earliest", "partitions": [1]}) == {1: 0}
    assert await reset({"to": "offset", "value": 3, "partitions": [0, 2]}) == {0: 3, 2: 3}
    # Beyond the log end: the latest offset (Kafka's tool clamps the same way).
    assert await reset({"to": "offset", "value": 99, "partitions": [2]}) == {2: 5}
    # A timestamp after every record: the latest offset.
    assert await reset({"to": "timestamp", "value": 2**63 - 1, "partitions": [0]}) == {0: 5}
    assert await conn.committed_offsets(g) == {(t, 0): 5, (t, 1): 0, (t, 2): 5}
    doc = (await api(broker, "GET", f"/api/groups/%2F/{g}")).json()
    assert [(o["partition"], o["committed"], o["lag"]) for o in doc["offsets"]] == [
        (0, 5, 0),
        (1, 0, 5),
        (2, 5, 0),
    ]

    r = await api(broker, "DELETE", f"/api/groups/%2F/{g}")
    assert r.status == 200 and r.json() == {}, r
    assert (await api(broker, "GET", f"/api/groups/%2F/{g}")).status == 404
    assert (await api(broker, "GET", "/api/groups")).json() == []
    assert (await api(broker, "DELETE", f"/api/groups/%2F/{g}")).status == 404


@pytest.mark.parametrize(
    "body",
    [
        {"to": "earliest"},
        {"topic": "{t}"},
        {"topic": "{t}", "to": "yesterday"},
        {"topic": "{t}", "to": "offset"},
        {"topic": "{t}", "to": "timestamp"},
        {"topic": "{t}", "to": "offset", "value": -1},
        {"topic": "{t}", "to": "offset", "value": "3"},
        {"topic": "{t}", "to": "offset", "value": 2**63},
        {"topic": "{t}", "to": "earliest", "partitions": "0"},
        {"topic": "{t}", "to": "earliest", "partitions": [0, "1"]},
        {"topic": "{t}", "to": "earliest", "partitions": [-1]},
        {"topic": "{t}", "to": "earliest", "dry_run": "yes"},
        {"topic": "{t}", "to": "earliest", "apply": True},
    ],
)
async def test_bad_reset_requests_are_400(
    broker: Broker, conn: wharf.Connection, body: dict[str, Any]
) -> None:
    t, g = _tname(), _tname("g")
    await conn.create_topic(t, partitions=1)
    body = {k: (v.format(t=t) if isinstance(v, str) else v) for k, v in body.items()}
    r = await api(broker, "POST", f"/api/groups/%2F/{g}/reset-offsets", body)
    assert r.status == 400 and r.json()["code"] == 400, r
    assert (await api(broker, "GET", "/api/groups")).json() == []


async def test_reset_of_unknown_topic_or_partition_is_404(
    broker: Broker, conn: wharf.Connection
) -> None:
    t, g = _tname(), _tname("g")
    await conn.create_topic(t, partitions=2)
    path = f"/api/groups/%2F/{g}/reset-offsets"
    r = await api(broker, "POST", path, {"topic": _tname(), "to": "earliest"})
    assert r.status == 404, r
    r = await api(broker, "POST", path, {"topic": t, "to": "earliest", "partitions": [0, 2]})
    assert r.status == 404, r
    assert (await api(broker, "GET", "/api/groups")).json() == []


async def test_group_reads_for_anyone_changes_for_administrators(
    broker: Broker, conn: wharf.Connection
) -> None:
    viewer = await _viewer(broker)
    t, g = _tname(), _tname("g")
    await conn.create_topic(t, partitions=1)
    r = await api(
        broker, "POST", f"/api/groups/%2F/{g}/reset-offsets", {"topic": t, "to": "latest"}
    )
    assert r.status == 200, r
    assert (await api(broker, "GET", "/api/groups", auth=viewer)).status == 200
    assert (await api(broker, "GET", f"/api/groups/%2F/{g}", auth=viewer)).status == 200
    body = {"topic": t, "to": "earliest"}
    r = await api(broker, "POST", f"/api/groups/%2F/{g}/reset-offsets", body, auth=viewer)
    assert r.status == 403, r
    assert (await api(broker, "DELETE", f"/api/groups/%2F/{g}", auth=viewer)).status == 403
    assert (await api(broker, "GET", f"/api/groups/%2F/{g}")).status == 200


async def test_group_metrics_show_lag(broker: Broker, conn: wharf.Connection) -> None:
    t, g = _tname(), _tname("g")
    await conn.create_topic(t, partitions=1)
    await conn.produce_many(t, [b"r"] * 6, partition=0)
    r = await api(
        broker,
        "POST",
        f"/api/groups/%2F/{g}/reset-offsets",
        {"topic": t, "to": "offset", "value": 2},
    )
    assert r.status == 200, r
    samples = await scrape(broker)
    assert value(samples, "wharf_group_lag", group=g, topic=t, partition="0", vhost="/") == 4
    assert (
        value(samples, "wharf_group_committed_offset", group=g, topic=t, partition="0", vhost="/")
        == 2
    )
