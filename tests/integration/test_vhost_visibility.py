"""What the management API shows a user (docs/security.md "Who sees which vhosts"), over
real sockets: a ``management`` user with permissions on vhost ``a`` only sees ``a``'s
queues, exchanges, bindings, policies, topics, groups, consumers and its own connections;
``b`` named in a path is refused (403); ``monitoring`` sees both vhosts.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any, Final

import pytest

import wharf
from wharf.broker.server import Broker

from .test_api import api
from .test_vhosts import FAST, vhost_url

TENANT: Final = ("tenant", "tenant-pw")
MONITOR: Final = ("mon", "mon-pw")
EVERYTHING: Final = {"configure": ".*", "write": ".*", "read": ".*"}
VHOSTS: Final = ("a", "b")
# Listings that cover every vhost, each row naming its vhost.
LISTINGS: Final = (
    "queues",
    "exchanges",
    "bindings",
    "policies",
    "topics",
    "groups",
    "consumers",
    "vhost-limits",
)


@pytest.fixture
def settings_overrides() -> dict[str, Any]:
    return {"group_initial_rebalance_delay_ms": 100, "group_min_session_timeout_ms": 100}


async def ok(broker: Broker, method: str, path: str, body: Any = None) -> Any:
    r = await api(broker, method, path, body)
    assert r.status in (200, 201), (method, path, r)
    return r.json()


async def fill(broker: Broker, conn: wharf.Connection, vhost: str) -> None:
    """One of each kind of object in ``vhost``, named after it."""
    await ok(broker, "PUT", f"/api/queues/{vhost}/q-{vhost}", {"durable": True})
    await ok(broker, "PUT", f"/api/exchanges/{vhost}/x-{vhost}", {"type": "fanout"})
    binding = {"source": f"x-{vhost}", "destination": f"q-{vhost}", "routing_key": vhost}
    await ok(broker, "POST", f"/api/bindings/{vhost}", binding)
    policy = {"pattern": "^q-", "definition": {"max-length": 5}}
    await ok(broker, "PUT", f"/api/policies/{vhost}/p-{vhost}", policy)
    await ok(broker, "PUT", f"/api/vhost-limits/{vhost}/max-queues", {"value": 50})
    await ok(broker, "PUT", f"/api/topics/{vhost}/t-{vhost}", {"partitions": 1})
    await conn.produce(f"t-{vhost}", b"v", partition=0)
    # A consumer group with a committed offset stays listed after its member leaves.
    async with conn.subscribe(
        f"t-{vhost}", group=f"g-{vhost}", auto_offset_reset="earliest", **FAST
    ) as stream:
        async with asyncio.timeout(8):
            records: list[Any] = []
            while not records:
                records = await stream.getmany(max_records=1)
        await stream.commit()


@pytest.fixture
async def two_tenants(broker: Broker, connect: Any) -> AsyncIterator[dict[str, wharf.Connection]]:
    """Vhosts a and b filled by the administrator, each with a consumer of the
    administrator's; ``tenant`` (management, permissions on a only) connected to a;
    ``mon`` (monitoring, no permissions)."""
    conns: dict[str, wharf.Connection] = {}
    consumers = []
    for vhost in VHOSTS:
        await ok(broker, "PUT", f"/api/vhosts/{vhost}")
        conns[vhost] = await connect(url=vhost_url(broker, f"/{vhost}"))
        await fill(broker, conns[vhost], vhost)
        consumer = conns[vhost].consume(f"q-{vhost}", consumer_tag=f"c-{vhost}")
        await consumer.__aenter__()
        consumers.append(consumer)
    await ok(broker, "PUT", "/api/users/tenant", {"password": TENANT[1], "tags": ["management"]})
    await ok(broker, "PUT", "/api/permissions/a/tenant", EVERYTHING)
    await ok(broker, "PUT", "/api/users/mon", {"password": MONITOR[1], "tags": ["monitoring"]})
    conns["tenant"] = await connect(url=vhost_url(broker, "/a", *TENANT))
    try:
        yield conns
    finally:
        for consumer in consumers:
            await consumer.__aexit__(None, None, None)


async def listing(broker: Broker, path: str, auth: tuple[str, str]) -> list[dict[str, Any]]:
    r = await api(broker, "GET", path, auth=auth)
    assert r.status == 200, (path, r)
    rows = r.json()
    assert isinstance(rows, list)
    return rows


async def test_a_management_user_sees_only_its_vhosts(
    broker: Broker, two_tenants: dict[str, wharf.Connection]
) -> None:
    for kind in LISTINGS:
        rows = await listing(broker, f"/api/{kind}", TENANT)
        assert rows, kind
        assert {row["vhost"] for row in rows} == {"a"}, (kind, rows)
        # The administrator's listing has both (the rows above are filtered, not missing).
        rows = await listing(broker, f"/api/{kind}", ("guest", "guest"))
        assert {"a", "b"} <= {row["vhost"] for row in rows}, (kind, rows)
    assert [v["name"] for v in await listing(broker, "/api/vhosts", TENANT)] == ["a"]
    queues = await listing(broker, "/api/queues", TENANT)
    assert [q["name"] for q in queues] == ["q-a"]
    assert [t["name"] for t in await listing(broker, "/api/topics", TENANT)] == ["t-a"]
    assert [p["name"] for p in await listing(broker, "/api/policies", TENANT)] == ["p-a"]
    assert [g["group"] for g in await listing(broker, "/api/groups", TENANT)] == ["g-a"]
    # Consumers of other users in a vhost it sees are shown (RabbitMQ's rule).
    consumers = await listing(broker, "/api/consumers", TENANT)
    assert [c["consumer_tag"] for c in consumers] == ["c-a"]
    # Its own connection only, not the administrator's in a or b.
    connections = await listing(broker, "/api/connections", TENANT)
    assert [c["user"] for c in connections] == ["tenant"], connections
    assert [c["user"] for c in await listing(broker, "/api/vhosts/a/connections", TENANT)] == [
        "tenant"
    ]
    others = [c for c in await listing(broker, "/api/connections", ("guest", "guest"))]
    foreign = next(c["name"] for c in others if c["user"] == "guest")
    r = await api(broker, "GET", f"/api/connections/{foreign}", auth=TENANT)
    assert r.status == 404, r
    mine = connections[0]["name"]
    assert (await api(broker, "GET", f"/api/connections/{mine}", auth=TENANT)).status == 200
    totals = (await api(broker, "GET", "/api/overview", auth=TENANT)).json()["object_totals"]
    assert totals["vhosts"] == 1 and totals["queues"] == 1 and totals["topics"] == 1
    assert totals["connections"] == 1 and totals["consumers"] == 1


@pytest.mark.parametrize(
    "template",
    [
        "/api/vhosts/{v}",
        "/api/vhosts/{v}/connections",
        "/api/queues/{v}",
        "/api/queues/{v}/q-{v}",
        "/api/exchanges/{v}",
        "/api/exchanges/{v}/x-{v}",
        "/api/bindings/{v}",
        "/api/policies/{v}",
        "/api/policies/{v}/p-{v}",
        "/api/topics/{v}",
        "/api/topics/{v}/t-{v}",
        "/api/groups/{v}",
        "/api/groups/{v}/g-{v}",
        "/api/consumers/{v}",
        "/api/vhost-limits/{v}",
    ],
)
async def test_a_vhost_it_may_not_see_is_refused_by_name(
    broker: Broker, two_tenants: dict[str, wharf.Connection], template: str
) -> None:
    r = await api(broker, "GET", template.format(v="b"), auth=TENANT)
    assert r.status == 403, r
    assert r.json() == {"error": "access to vhost 'b' refused for user 'tenant'", "code": 403}
    # The same path names a's objects when it says a: the refusal is about the vhost.
    r = await api(broker, "GET", template.format(v="a"), auth=TENANT)
    assert r.status == 200, r


async def test_a_missing_vhost_reads_as_refused_so_names_are_not_confirmed(
    broker: Broker, two_tenants: dict[str, wharf.Connection]
) -> None:
    r = await api(broker, "GET", "/api/queues/nope", auth=TENANT)
    assert r.status == 403, r
    assert r.json()["error"] == "access to vhost 'nope' refused for user 'tenant'"
    # Those who see every vhost are told it does not exist.
    assert (await api(broker, "GET", "/api/queues/nope", auth=MONITOR)).status == 404
    assert (await api(broker, "GET", "/api/queues/nope")).status == 404
    # Changes in a vhost it may not see are refused the same way.
    r = await api(broker, "PUT", "/api/queues/b/mine", {}, auth=TENANT)
    assert r.status == 403 and "vhost 'b'" in r.json()["error"], r


async def test_monitoring_sees_every_vhost_and_connection(
    broker: Broker, two_tenants: dict[str, wharf.Connection]
) -> None:
    for kind in LISTINGS:
        rows = await listing(broker, f"/api/{kind}", MONITOR)
        assert {"a", "b"} <= {row["vhost"] for row in rows}, (kind, rows)
    names = {v["name"] for v in await listing(broker, "/api/vhosts", MONITOR)}
    assert names == {"/", "a", "b"}
    queues = await listing(broker, "/api/queues/b", MONITOR)
    assert [q["name"] for q in queues] == ["q-b"]
    users = sorted(c["user"] for c in await listing(broker, "/api/connections", MONITOR))
    assert users == ["guest", "guest", "tenant"]
    totals = (await api(broker, "GET", "/api/overview", auth=MONITOR)).json()["object_totals"]
    assert totals["vhosts"] == 3 and totals["connections"] == 3
    # Seeing is not changing: monitoring has no permissions on b.
    r = await api(broker, "PUT", "/api/queues/b/q-new", {}, auth=MONITOR)
    assert r.status == 403, r
