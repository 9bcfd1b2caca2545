"""What the web UI needs of the management API, over real HTTP next to SDK clients:
server-side paging of lists, channels, bindings of one queue or exchange, browsing topic
records, a dry run of reset-offsets, node figures in the overview, X-Reason on close and
per-queue message counters."""

from __future__ import annotations

import base64
import uuid
from collections.abc import Callable
from typing import Any

import pytest

import wharf
from wharf.broker.http import api as api_module
from wharf.broker.server import Broker

from ..helpers import wait_until
from .test_api import TIMEOUT_S, api
from .test_api_logs import _join
from .test_audit import audit_lines

APP = ("app", "pw")


def _name(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


async def _user(broker: Broker, tags: list[str], *, vhost_perms: bool = True) -> None:
    r = await api(broker, "PUT", "/api/users/app", {"password": "pw", "tags": tags})
    assert r.status == 201, r
    if vhost_perms:
        perms = {"configure": ".*", "write": ".*", "read": "^(?!secret)"}
        r = await api(broker, "PUT", "/api/permissions/%2F/app", perms)
        assert r.status == 201, r


# -- paging ----------------------------------------------------------------------------------


async def test_queues_page_filter_and_sort_as_rabbitmq(
    broker: Broker, conn: wharf.Connection
) -> None:
    names = [f"ui-{i:02d}" for i in range(25)] + ["Other-UI", "zzz"]
    for n in names:
        await conn.declare_queue(n)
    for _ in range(3):
        await conn.publish("", "ui-07", b"x")
    await conn.publish("", "ui-11", b"x")

    # Without page: the plain list, as ctl and existing clients read it.
    plain = (await api(broker, "GET", "/api/queues/%2F")).json()
    assert isinstance(plain, list) and {q["name"] for q in plain} == set(names)

    r = await api(broker, "GET", "/api/queues/%2F?page=2&page_size=10&sort=name")
    assert r.status == 200, r
    doc = r.json()
    assert {k: v for k, v in doc.items() if k != "items"} == {
        "page": 2,
        "page_size": 10,
        "page_count": 3,
        "item_count": 10,
        "filtered_count": 27,
        "total_count": 27,
    }
    assert [q["name"] for q in doc["items"]] == sorted(names)[10:20]
    assert doc["items"][0]["vhost"] == "/" and "effective_arguments" in doc["items"][0]

    # name: a case-insensitive substring; use_regex: a regular expression.
    doc = (await api(broker, "GET", "/api/queues?page=1&name=UI-2&sort=name")).json()
    assert [q["name"] for q in doc["items"]] == [f"ui-{i}" for i in range(20, 25)]
    assert (doc["filtered_count"], doc["total_count"], doc["page_count"]) == (5, 27, 1)
    doc = (await api(broker, "GET", "/api/queues?page=1&name=ui&sort=name")).json()
    assert doc["filtered_count"] == 26  # Other-UI too
    path = "/api/queues?page=1&name=%5Eui-0%5B0-2%5D%24&use_regex=true&sort=name"
    doc = (await api(broker, "GET", path)).json()
    assert [q["name"] for q in doc["items"]] == ["ui-00", "ui-01", "ui-02"]

    # Sorting by a counter, reversed; and by a field only the description has.
    path = "/api/queues?page=1&page_size=2&sort=messages_ready&sort_reverse=true"
    doc = (await api(broker, "GET", path)).json()
    assert [(q["name"], q["messages_ready"]) for q in doc["items"]] == [("ui-07", 3), ("ui-11", 1)]
    path = "/api/queues?page=1&page_size=1&sort=effective_arguments&name=zzz"
    assert [q["name"] for q in (await api(broker, "GET", path)).json()["items"]] == ["zzz"]
    # Sorting applies to the plain list as well.
    plain = (await api(broker, "GET", "/api/queues?sort=name&sort_reverse=true")).json()
    assert [q["name"] for q in plain] == sorted(names, reverse=True)

    # An empty filter result is page 1 of 0.
    doc = (await api(broker, "GET", "/api/queues?page=1&name=nothing-like-it")).json()
    assert (doc["items"], doc["page_count"], doc["filtered_count"]) == ([], 0, 0)


@pytest.mark.parametrize(
    "query",
    [
        "page=0",
        "page=-1",
        "page=x",
        "page=1.5",
        "page=4",  # out of range: 27 queues, 10 a page
        "page=1&page_size=0",
        "page=1&page_size=501",
        "page=1&name=(&use_regex=true",
        "page=1&use_regex=maybe",
        "page=1&sort_reverse=2",
        "page_size=x",
        "page=1&name=" + "a" * 256,
        "page=1&sort=" + "a" * 256,
    ],
)
async def test_bad_paging_parameters_are_400(
    broker: Broker, conn: wharf.Connection, query: str
) -> None:
    for i in range(27):
        await conn.declare_queue(f"p-{i}")
    r = await api(broker, "GET", f"/api/queues?page_size=10&{query}")
    assert r.status == 400 and r.json()["code"] == 400, r
    assert "unknown query parameter" not in r.json()["error"], r  # refused for its value


async def test_every_list_route_pages(
    broker: Broker, conn: wharf.Connection, frame_client: Callable[[], Any]
) -> None:
    await conn.declare_exchange("ex-a", "fanout")
    t = _name("t")
    await conn.create_topic(t)
    await _join(await frame_client(), _name("g"), [t])
    for path in (
        "/api/queues",
        "/api/exchanges",
        "/api/exchanges/%2F",
        "/api/connections",
        "/api/channels",
        "/api/topics",
        "/api/topics/%2F",
        "/api/groups",
        "/api/groups/%2F",
    ):
        r = await api(broker, "GET", f"{path}?page=1&page_size=1&sort=name")
        assert r.status == 200, (path, r)
        doc = r.json()
        assert doc["page_size"] == 1 and doc["item_count"] == len(doc["items"]), path
        plain = (await api(broker, "GET", path)).json()
        assert isinstance(plain, list) and doc["total_count"] == len(plain), path
    doc = (await api(broker, "GET", "/api/exchanges/%2F?page=1&name=amq.default")).json()
    assert [e["name"] for e in doc["items"]] == [""]


async def test_paged_lists_keep_the_visibility_rules(
    broker: Broker, conn: wharf.Connection, connect: Callable[..., Any]
) -> None:
    await _user(broker, ["management"])
    own = await connect(url=f"wharf://app:pw@127.0.0.1:{broker.port}")
    await own.declare_queue(_name("q"))
    doc = (await api(broker, "GET", "/api/connections?page=1", auth=APP)).json()
    assert doc["total_count"] == 1 and doc["items"][0]["user"] == "app"
    doc = (await api(broker, "GET", "/api/channels?page=1", auth=APP)).json()
    assert [c["user"] for c in doc["items"]] == ["app"]
    everyone = (await api(broker, "GET", "/api/channels?page=1")).json()
    assert sorted(c["user"] for c in everyone["items"]) == ["app", "guest"]
    # A vhost the user may not see is refused, page or not.
    assert (await api(broker, "PUT", "/api/vhosts/hidden")).status == 201
    r = await api(broker, "GET", "/api/queues/hidden?page=1", auth=APP)
    assert r.status == 403 and r.json()["code"] == 403, r


# -- channels and closing connections ----------------------------------------------------------


async def test_a_native_connection_shows_its_session_as_channel_1(
    broker: Broker, conn: wharf.Connection
) -> None:
    q = (await conn.declare_queue(_name("q"))).name
    for _ in range(4):
        await conn.publish("", q, b"m")
    async with conn.consume(q, prefetch=3):

        async def three_unacked() -> bool:
            chans = (await api(broker, "GET", "/api/channels")).json()
            return bool(chans and chans[0]["messages_unacknowledged"] == 3)

        await wait_until(three_unacked, timeout=TIMEOUT_S, what="3 deliveries")
        [ch] = (await api(broker, "GET", "/api/channels")).json()
        name = ch["connection"]
        assert ch == {
            "name": f"{name} (1)",
            "connection": name,
            "number": 1,
            "user": "guest",
            "vhost": "/",
            "protocol": "native",
            "consumer_count": 1,
            "messages_unacknowledged": 3,
            "prefetch_count": 0,
            "global_prefetch_count": 0,
            "confirm": True,
            "transactional": False,
            "message_stats": {"publish": 4, "deliver_get": 3},
        }
        r = await api(broker, "GET", f"/api/connections/{name}/channels")
        assert r.status == 200 and r.json() == [ch], r
    r = await api(broker, "GET", "/api/connections/conn-999999/channels")
    assert r.status == 404 and r.json()["code"] == 404


async def test_close_with_x_reason_reaches_the_client_and_the_audit_log(
    broker: Broker, conn: wharf.Connection
) -> None:
    [c] = (await api(broker, "GET", "/api/connections")).json()
    headers = {"X-Reason": "x" * 201}
    r = await api(broker, "DELETE", f"/api/connections/{c['name']}", headers=headers)
    assert r.status == 400 and r.json()["code"] == 400, r
    headers = {"X-Reason": "maintenance window"}
    r = await api(broker, "DELETE", f"/api/connections/{c['name']}", headers=headers)
    assert r.status == 200, r
    await wait_until(lambda: not broker.connections)
    with pytest.raises(wharf.WharfError) as info:
        await conn.declare_queue(_name("q"))
    assert info.value.code == 320 and info.value.message == "maintenance window"
    [line] = [e for e in audit_lines(broker) if e["event"] == "connection.forced"]
    assert line["actor"] == "guest" and line["protocol"] == "http"
    assert (line["connection"], line["user"], line["reason"]) == (
        c["name"],
        "guest",
        "maintenance window",
    )


# -- bindings of one queue or exchange ---------------------------------------------------------


async def test_bindings_of_a_queue_and_of_an_exchange(
    broker: Broker, conn: wharf.Connection
) -> None:
    q = (await conn.declare_queue(_name("q"))).name
    t = _name("t")
    await conn.create_topic(t)
    await conn.declare_exchange("up", "topic")
    await conn.declare_exchange("down", "direct")
    await conn.bind_exchange("down", "up", "a.#")
    await conn.bind_queue(q, "down", "k")
    await conn.bind_topic(t, "down", "k")

    def b(source: str, dest: str, kind: str, key: str) -> dict[str, Any]:
        return {
            "source": source,
            "destination": dest,
            "destination_type": kind,
            "routing_key": key,
            "arguments": {},
            "vhost": "/",
        }

    r = await api(broker, "GET", f"/api/queues/%2F/{q}/bindings")
    assert r.status == 200 and r.json() == [b("", q, "queue", q), b("down", q, "queue", "k")], r
    r = await api(broker, "GET", "/api/exchanges/%2F/down/bindings/source")
    assert r.status == 200, r
    assert sorted(r.json(), key=lambda x: x["destination_type"]) == [
        b("down", q, "queue", "k"),
        b("down", t, "topic", "k"),
    ]
    r = await api(broker, "GET", "/api/exchanges/%2F/down/bindings/destination")
    assert r.json() == [b("up", "down", "exchange", "a.#")]
    assert (await api(broker, "GET", "/api/exchanges/%2F/up/bindings/destination")).json() == []
    for path in (
        "/api/queues/%2F/nope/bindings",
        "/api/exchanges/%2F/nope/bindings/source",
        "/api/exchanges/%2F/nope/bindings/destination",
    ):
        r = await api(broker, "GET", path)
        assert r.status == 404 and r.json()["code"] == 404, (path, r)


# -- topic records -----------------------------------------------------------------------------


async def test_browse_topic_records_by_offset_and_timestamp(
    broker: Broker, conn: wharf.Connection
) -> None:
    t = _name("t")
    await conn.create_topic(t, partitions=2)
    records = [
        (b"k0", b"hello", {"h": "v"}, 1_000),
        (None, b"\xff\xfe", None, 2_000),
        (b"k2", None, None, 3_000),  # a tombstone
        (b"k3", b'{"a": 1}', None, 4_000),
    ]
    await conn.produce_records(t, records, partition=1)
    path = f"/api/topics/%2F/{t}/records?partition=1"

    r = await api(broker, "GET", path)
    assert r.status == 200, r
    got = r.json()
    assert [(x["partition"], x["offset"], x["timestamp"]) for x in got] == [
        (1, 0, 1_000),
        (1, 1, 2_000),
        (1, 2, 3_000),
        (1, 3, 4_000),
    ]
    assert got[0]["key"] == {"text": "k0", "base64": base64.b64encode(b"k0").decode()}
    assert got[0]["value"]["text"] == "hello" and got[0]["headers"] == {"h": "v"}
    assert got[1]["key"] is None
    assert got[1]["value"] == {"text": None, "base64": base64.b64encode(b"\xff\xfe").decode()}
    assert got[2]["value"] is None

    offsets = [x["offset"] for x in (await api(broker, "GET", f"{path}&offset=1&limit=2")).json()]
    assert offsets == [1, 2]
    offsets = [x["offset"] for x in (await api(broker, "GET", f"{path}&timestamp=2500")).json()]
    assert offsets == [2, 3]
    assert (await api(broker, "GET", f"{path}&offset=4")).json() == []
    assert (await api(broker, "GET", f"/api/topics/%2F/{t}/records")).json() == []  # partition 0

    for bad in ("&limit=0", "&limit=501", "&offset=1&timestamp=5", "&offset=-1", "&offset=x"):
        r = await api(broker, "GET", path + bad)
        assert r.status == 400 and r.json()["code"] == 400, (bad, r)
    r = await api(broker, "GET", f"/api/topics/%2F/{t}/records?partition=2")
    assert r.status == 404, r
    r = await api(broker, "GET", "/api/topics/%2F/no-such-topic/records")
    assert r.status == 404, r


async def test_browsing_records_of_transactions_by_isolation_level(
    broker: Broker, conn: wharf.Connection
) -> None:
    """Transaction markers are never shown; read_committed (as a fetch) hides aborted
    records and stops at the last stable offset; read_uncommitted is the default."""
    t = _name("tx")
    await conn.create_topic(t)
    p = conn.transactional_producer(_name("txid"))
    async with p.transaction():
        await p.produce(t, b"c1", partition=0)
    await p.begin()
    await p.produce(t, b"a1", partition=0)
    await p.abort()
    await conn.produce(t, b"plain", partition=0)
    async with p.transaction():
        await p.produce(t, b"c2", partition=0)
    await p.begin()
    await p.produce(t, b"open", partition=0)
    await conn.produce(t, b"after", partition=0)
    # c1 0, marker 1, a1 2, marker 3, plain 4, c2 5, marker 6, open 7, after 8.
    path = f"/api/topics/%2F/{t}/records"

    async def browse(query: str = "") -> list[tuple[int, str]]:
        r = await api(broker, "GET", path + query)
        assert r.status == 200, r
        return [(x["offset"], x["value"]["text"]) for x in r.json()]

    everything = [(0, "c1"), (2, "a1"), (4, "plain"), (5, "c2"), (7, "open"), (8, "after")]
    assert await browse() == everything
    assert await browse("?isolation_level=read_uncommitted") == everything
    assert await browse("?isolation_level=read_committed") == [(0, "c1"), (4, "plain"), (5, "c2")]
    # From a marker's offset, and paging past markers one record at a time.
    assert await browse("?offset=1&limit=1") == [(2, "a1")]
    assert await browse("?offset=3&limit=1&isolation_level=read_committed") == [(4, "plain")]
    assert await browse("?offset=6&isolation_level=read_committed") == []
    await p.commit()
    assert await browse("?isolation_level=read_committed") == [
        (0, "c1"),
        (4, "plain"),
        (5, "c2"),
        (7, "open"),
        (8, "after"),
    ]
    for bad in ("committed", "READ_COMMITTED", ""):
        r = await api(broker, "GET", f"{path}?isolation_level={bad}")
        assert r.status == 400 and r.json()["code"] == 400, (bad, r)


async def test_browsing_records_needs_read_permission_on_the_topic(
    broker: Broker, conn: wharf.Connection
) -> None:
    await _user(broker, ["management"])
    for t in ("secret-t", "open-t"):
        await conn.create_topic(t)
        await conn.produce(t, b"v")
    r = await api(broker, "GET", "/api/topics/%2F/open-t/records", auth=APP)
    assert r.status == 200 and len(r.json()) == 1, r
    r = await api(broker, "GET", "/api/topics/%2F/secret-t/records", auth=APP)
    assert r.status == 403 and r.json()["code"] == 403, r


# -- reset-offsets dry run ---------------------------------------------------------------------


async def test_reset_offsets_dry_run_changes_nothing_even_with_members(
    broker: Broker, conn: wharf.Connection, frame_client: Callable[[], Any]
) -> None:
    t, g = _name("t"), _name("g")
    await conn.create_topic(t, partitions=2)
    await conn.produce_many(t, [b"r"] * 6, partition=0)
    await _join(await frame_client(), g, [t])
    path = f"/api/groups/%2F/{g}/reset-offsets"
    body = {"topic": t, "to": "latest", "dry_run": True}
    r = await api(broker, "POST", path, body)
    assert r.status == 200, r
    assert r.json() == {
        "group": g,
        "topic": t,
        "offsets": [
            {"topic": t, "partition": 0, "offset": 6},
            {"topic": t, "partition": 1, "offset": 0},
        ],
        "dry_run": True,
    }
    doc = (await api(broker, "GET", f"/api/groups/%2F/{g}")).json()
    assert {o["committed"] for o in doc["offsets"]} == {-1}
    # Applying it is still refused while the group has members.
    r = await api(broker, "POST", path, {**body, "dry_run": False})
    assert r.status == 409 and r.json()["code"] == 406, r


# -- overview ----------------------------------------------------------------------------------


async def test_overview_shows_node_figures_and_log_totals(
    broker: Broker, conn: wharf.Connection
) -> None:
    t = _name("t")
    await conn.create_topic(t)
    await conn.produce_many(t, [b"abc"] * 3, partition=0)
    assert len(await conn.fetch(t, 0, 0)) == 3
    o = (await api(broker, "GET", "/api/overview")).json()
    node = o["node"]
    assert set(node) == {
        "uptime_s",
        "disk_free_bytes",
        "disk_free_limit_bytes",
        "fsyncs_total",
        "fd_used",
        "fd_limit",
    }
    assert all(isinstance(v, int) and v >= 0 for v in node.values())
    assert node["disk_free_limit_bytes"] == broker.settings.disk_free_limit_bytes
    assert node["disk_free_bytes"] > 0 and node["fd_used"] > 0
    stats = o["log_stats"]
    assert stats["records_produced"] == 3 and stats["records_fetched"] == 3
    assert stats["bytes_produced"] > 9 and stats["bytes_fetched"] >= stats["bytes_produced"]


# -- per-queue message counters ----------------------------------------------------------------


async def test_queue_message_stats_count_publish_deliver_get_ack_and_redeliver(
    broker: Broker, conn: wharf.Connection
) -> None:
    q = _name("stats")
    await conn.declare_queue(q)
    path = f"/api/queues/%2F/{q}"
    zero = (await api(broker, "GET", path)).json()["message_stats"]
    assert zero == {
        "publish": 0,
        "deliver": 0,
        "get": 0,
        "deliver_get": 0,
        "ack": 0,
        "redeliver": 0,
        "dead_lettered": 0,
        "expired": 0,
    }
    for body in (b"1", b"2", b"3", b"4"):
        await conn.publish("", q, body)
    # Gets: one acked, one requeued and got again (a redelivery), then acked.
    first = await conn.get(q)
    assert first is not None
    await first.ack()
    second = await conn.get(q)
    assert second is not None and second.body == b"2"
    await second.nack(requeue=True)
    again = await conn.get(q)
    assert again is not None and again.body == b"2" and again.redelivered
    await again.ack()
    # Pushes: the other two to a consumer, acked with one multiple ack.
    async with conn.consume(q, prefetch=10) as messages:
        got = [await anext(messages) for _ in range(2)]
        await got[-1].ack(multiple=True)

    async def acked() -> bool:
        stats = (await api(broker, "GET", path)).json()["message_stats"]
        return bool(stats["ack"] == 4)

    await wait_until(acked, timeout=TIMEOUT_S, what="4 acks counted")
    stats = (await api(broker, "GET", path)).json()["message_stats"]
    assert {k: stats[k] for k in ("publish", "deliver", "get", "deliver_get", "redeliver")} == {
        "publish": 4,
        "deliver": 2,
        "get": 3,
        "deliver_get": 5,
        "redeliver": 1,
    }
    # In lists too, and sortable there without describing every queue.
    doc = (await api(broker, "GET", "/api/queues?page=1&sort=message_stats.publish")).json()
    assert doc["items"][-1]["name"] == q and doc["items"][-1]["message_stats"]["ack"] == 4


async def test_overview_reuses_its_queue_walk_on_a_big_broker_only(
    broker: Broker, conn: wharf.Connection, monkeypatch: pytest.MonkeyPatch
) -> None:
    q = _name("walk")
    await conn.declare_queue(q)

    async def ready() -> int:
        return int(
            (await api(broker, "GET", "/api/overview")).json()["queue_totals"]["messages_ready"]
        )

    # A small broker (fewer queues and connections than OVERVIEW_CACHE_MIN_OBJECTS): exact.
    before = await ready()
    await conn.publish("", q, b"x")
    assert (await conn.declare_queue(q, passive=True)).messages == 1
    assert await ready() == before + 1
    # A "big" one (the threshold lowered, the reuse window made long for the test): the
    # walk is reused, the new message not yet counted; with no window, counted at once.
    monkeypatch.setattr(api_module, "OVERVIEW_CACHE_MIN_OBJECTS", 1)
    monkeypatch.setattr(api_module, "OVERVIEW_CACHE_TTL_S", 3600.0)
    cached = await ready()
    await conn.publish("", q, b"y")
    assert (await conn.declare_queue(q, passive=True)).messages == 2
    assert await ready() == cached
    monkeypatch.setattr(api_module, "OVERVIEW_CACHE_TTL_S", 0.0)
    assert await ready() == cached + 1
