"""Virtual hosts (docs/security.md "## Virtual hosts") over real sockets: isolation of
queues, exchanges, policies, log topics and consumer groups; the SDK's URL path; the
HTTP shapes; limits; deletion; restart.
"""

from __future__ import annotations

import asyncio
import json
import shutil
from pathlib import Path
from typing import Any, Final

import pytest

import wharf
from wharf.broker.core.vhosts import VHOSTS_DIR, dir_name
from wharf.broker.server import Broker
from wharf.protocol import frames as F

from ..conftest import RawClient, make_settings
from ..helpers import wait_until
from .test_api import api
from .test_audit import audit_lines
from .test_ctl import run_ctl
from .test_http import scrape, value

FAST: Final[dict[str, Any]] = {
    "heartbeat_interval": 0.1,
    "session_timeout": 3.0,
    "rebalance_timeout": 3.0,
    "fetch_max_wait": 0.05,
}


@pytest.fixture
def settings_overrides() -> dict[str, Any]:
    return {"group_initial_rebalance_delay_ms": 100, "group_min_session_timeout_ms": 100}


def vhost_url(broker: Broker, path: str, user: str = "guest", password: str = "guest") -> str:
    return f"wharf://{user}:{password}@127.0.0.1:{broker.port}{path}"


async def add_vhost(broker: Broker, name: str = "orders") -> None:
    r = await api(broker, "PUT", f"/api/vhosts/{name}")
    assert r.status == 201, r


async def ready(broker: Broker, vhost: str, queue: str) -> int:
    r = await api(broker, "GET", f"/api/queues/{vhost}/{queue}")
    assert r.status == 200, r
    return int(r.json()["messages_ready"])


# -- isolation -------------------------------------------------------------------------------


async def test_same_queue_name_in_two_vhosts_is_two_queues(
    broker: Broker, conn: wharf.Connection, connect: Any
) -> None:
    await add_vhost(broker)
    orders = await connect(url=vhost_url(broker, "/orders"))
    assert orders.vhost == "orders" and conn.vhost == "/"
    await conn.declare_queue("q")
    await orders.declare_queue("q")
    await orders.publish("", "q", b"in orders", confirm=True)
    assert await ready(broker, "orders", "q") == 1
    assert await ready(broker, "%2F", "q") == 0
    assert await conn.get("q") is None  # nothing crossed over
    got = await orders.get("q", no_ack=True)
    assert got is not None and got.body == b"in orders"
    # Exchanges too: one declared in "orders" does not exist in "/".
    await orders.declare_exchange("x", "fanout")
    with pytest.raises(wharf.NotFound):
        await conn.declare_exchange("x", "fanout", passive=True)
    listed = (await api(broker, "GET", "/api/queues")).json()
    assert sorted((q["vhost"], q["name"]) for q in listed if q["name"] == "q") == [
        ("/", "q"),
        ("orders", "q"),
    ]
    assert [q["name"] for q in (await api(broker, "GET", "/api/queues/orders")).json()] == ["q"]
    exchanges = (await api(broker, "GET", "/api/exchanges/orders")).json()
    assert {"x", "amq.topic", ""} <= {e["name"] for e in exchanges}  # its own amq.* too
    assert all(e["vhost"] == "orders" for e in exchanges)


async def test_policies_apply_per_vhost(
    broker: Broker, conn: wharf.Connection, connect: Any
) -> None:
    await add_vhost(broker)
    orders = await connect(url=vhost_url(broker, "/orders"))
    policy = {"pattern": ".*", "definition": {"max-length": 1}}
    r = await api(broker, "PUT", "/api/policies/orders/one", policy)
    assert r.status == 201 and r.json()["vhost"] == "orders", r
    assert (await api(broker, "GET", "/api/policies/%2F")).json() == []
    for c in (conn, orders):
        await c.declare_queue("p")
        for i in range(3):
            await c.publish("", "p", b"%d" % i, confirm=True)
    assert await ready(broker, "orders", "p") == 1
    assert await ready(broker, "%2F", "p") == 3


async def test_topics_and_groups_are_per_vhost(
    broker: Broker, conn: wharf.Connection, connect: Any
) -> None:
    await add_vhost(broker)
    orders = await connect(url=vhost_url(broker, "/orders"))
    await orders.create_topic("t", partitions=2)
    await orders.produce("t", b"v", partition=0)
    with pytest.raises(wharf.NotFound):
        await conn.describe_topic("t")
    info = await conn.create_topic("t", partitions=1)  # a different topic, same name
    assert info["created"] is True and info["partitions"] == 1
    assert (await orders.describe_topic("t"))["partitions"] == 2
    assert await conn.fetch("t", 0, 0) == []
    topics = (await api(broker, "GET", "/api/topics")).json()
    assert sorted((t["vhost"], t["partitions"]) for t in topics) == [("/", 1), ("orders", 2)]
    async with orders.subscribe("t", group="g", auto_offset_reset="earliest", **FAST) as stream:
        async with asyncio.timeout(8):
            records: list[Any] = []
            while not records:
                records = await stream.getmany(max_records=1)
        assert records[0].value == b"v"
        groups = (await api(broker, "GET", "/api/groups/orders")).json()
        assert [g["group"] for g in groups] == ["g"]
        assert (await api(broker, "GET", "/api/groups/%2F")).json() == []
    samples = await scrape(broker)
    assert value(samples, "wharf_topic_partitions", topic="t", vhost="orders") == 2
    assert value(samples, "wharf_topic_partitions", topic="t", vhost="/") == 1


async def test_metrics_carry_the_vhost(broker: Broker, connect: Any) -> None:
    await add_vhost(broker)
    orders = await connect(url=vhost_url(broker, "/orders"))
    await orders.declare_queue("m")
    await orders.publish("", "m", b"x", confirm=True)
    samples = await scrape(broker)
    assert value(samples, "wharf_queue_messages_ready", queue="m", vhost="orders") == 1
    assert value(samples, "wharf_vhost_connections", vhost="orders") == 1
    assert value(samples, "wharf_vhost_connections", vhost="/") == 0


# -- connecting ------------------------------------------------------------------------------


async def test_unknown_vhost_is_refused_with_its_name(broker: Broker, connect: Any) -> None:
    with pytest.raises(wharf.NotFound, match="vhost 'nope' not found"):
        await connect(url=vhost_url(broker, "/nope"))
    # A name with a slash, %2F-encoded in the URL.
    with pytest.raises(wharf.NotFound, match="vhost '/x' not found"):
        await connect(url=vhost_url(broker, "/%2Fx"))
    await add_vhost(broker, "%2Fx")
    c = await connect(url=vhost_url(broker, "/%2Fx"))
    assert c.vhost == "/x"
    assert (await api(broker, "GET", "/api/vhosts/%2Fx")).json()["connections"] == 1


async def test_old_clients_that_name_no_vhost_get_the_default(broker: Broker) -> None:
    client = await RawClient.open(broker.port)  # AUTH without a "vhost" property
    try:
        client.send(F.QueueDeclare(2, "old-client-q"))
        ok = await client.recv()
        assert ok[0] == F.OK, ok
        assert "old-client-q" in broker.vhosts.default.topology.queues
    finally:
        await client.close()


async def test_permissions_are_per_vhost(broker: Broker, connect: Any) -> None:
    await add_vhost(broker)
    r = await api(broker, "PUT", "/api/users/app", {"password": "app-pw", "tags": []})
    assert r.status == 201
    everything = {"configure": ".*", "write": ".*", "read": ".*"}
    assert (await api(broker, "PUT", "/api/permissions/%2F/app", everything)).status == 201
    assert (await api(broker, "PUT", "/api/permissions/nope/app", everything)).status == 404
    await connect(url=vhost_url(broker, "", "app", "app-pw"))
    with pytest.raises(wharf.AccessRefused, match="vhost 'orders' refused for user 'app'"):
        await connect(url=vhost_url(broker, "/orders", "app", "app-pw"))
    assert (await api(broker, "PUT", "/api/permissions/orders/app", everything)).status == 201
    c = await connect(url=vhost_url(broker, "/orders", "app", "app-pw"))
    await c.declare_queue("mine")


# -- HTTP shapes -----------------------------------------------------------------------------


async def test_vhost_endpoints_have_rabbitmq_shapes(broker: Broker) -> None:
    names = [v["name"] for v in (await api(broker, "GET", "/api/vhosts")).json()]
    assert names == ["/"]
    body = {
        "description": "the orders team",
        "tags": ["prod", "eu"],
        "default_queue_type": "classic",
    }
    r = await api(broker, "PUT", "/api/vhosts/orders", body)
    assert r.status == 201, r
    doc = r.json()
    assert doc["name"] == "orders" and doc["description"] == "the orders team"
    assert doc["tags"] == ["prod", "eu"] and doc["default_queue_type"] == "classic"
    assert (await api(broker, "PUT", "/api/vhosts/orders", {"tags": "a,b"})).status == 200
    assert (await api(broker, "GET", "/api/vhosts/orders")).json()["tags"] == ["a", "b"]
    assert (
        await api(broker, "PUT", "/api/vhosts/bad", {"default_queue_type": "quorum"})
    ).status == 400
    assert (await api(broker, "GET", "/api/vhosts/%2F")).json()["name"] == "/"
    r = await api(broker, "DELETE", "/api/vhosts/%2F")
    assert r.status == 409 and "cannot be deleted" in r.json()["error"]
    assert (await api(broker, "DELETE", "/api/vhosts/nope")).status == 404
    assert (await api(broker, "GET", "/api/queues/nope")).status == 404
    assert (await api(broker, "PUT", "/api/queues/nope/q", {})).status == 404
    # Creating and deleting needs the administrator tag.
    r = await api(broker, "PUT", "/api/users/mon", {"password": "pw", "tags": ["monitoring"]})
    assert r.status == 201
    assert (await api(broker, "PUT", "/api/vhosts/x", auth=("mon", "pw"))).status == 403
    assert (await api(broker, "DELETE", "/api/vhosts/orders", auth=("mon", "pw"))).status == 403
    assert (await api(broker, "GET", "/api/vhosts", auth=("mon", "pw"))).status == 200
    kinds = [e["event"] for e in audit_lines(broker)]
    assert "vhost.created" in kinds


async def test_delete_vhost_closes_its_connections_and_removes_its_data(
    broker: Broker, conn: wharf.Connection, connect: Any
) -> None:
    await add_vhost(broker)
    orders = await connect(url=vhost_url(broker, "/orders"))
    await orders.declare_queue("durable-q", durable=True)
    await orders.publish("", "durable-q", b"x", persistent=True, confirm=True)
    await orders.create_topic("t")
    path = Path(broker.data_path) / VHOSTS_DIR / dir_name("orders")
    assert (path / "messages").is_dir() and (path / "logs" / "t").is_dir()
    everything = {"configure": ".*", "write": ".*", "read": ".*"}
    await api(broker, "PUT", "/api/users/app", {"password": "app-pw", "tags": []})
    assert (await api(broker, "PUT", "/api/permissions/orders/app", everything)).status == 201
    r = await api(broker, "DELETE", "/api/vhosts/orders")
    assert r.status == 200 and r.json() == {"connections_closed": 1}, r
    await wait_until(lambda: orders.is_closed, what="the vhost's connection closed")
    assert not path.exists()
    assert "orders" not in broker.vhosts
    assert (await api(broker, "GET", "/api/permissions/orders/app")).status == 404
    kinds = [e["event"] for e in audit_lines(broker)]
    assert "vhost.deleted" in kinds
    await conn.declare_queue("still-fine")  # the default vhost's connection is untouched
    # A new vhost by that name starts empty.
    await add_vhost(broker)
    again = await connect(url=vhost_url(broker, "/orders"))
    with pytest.raises(wharf.NotFound):
        await again.declare_queue("durable-q", passive=True)


# -- limits ----------------------------------------------------------------------------------


async def test_max_queues_and_max_topics_refuse_with_406(broker: Broker, connect: Any) -> None:
    await add_vhost(broker)
    orders = await connect(url=vhost_url(broker, "/orders"))
    assert (
        await api(broker, "PUT", "/api/vhost-limits/orders/max-queues", {"value": 1})
    ).status == 200
    assert (
        await api(broker, "PUT", "/api/vhost-limits/orders/max-topics", {"value": 1})
    ).status == 200
    assert (await api(broker, "GET", "/api/vhost-limits")).json() == [
        {"vhost": "orders", "value": {"max-queues": 1, "max-topics": 1}}
    ]
    await orders.declare_queue("q1")
    with pytest.raises(wharf.PreconditionFailed) as refused:
        await orders.declare_queue("q2")
    assert refused.value.code == 406
    assert "queue limit in vhost 'orders' (1) is reached" in refused.value.message
    await orders.declare_queue("q1")  # re-declaring an existing one is fine: still usable
    r = await api(broker, "PUT", "/api/queues/orders/q3", {})
    assert r.status == 409 and r.json()["code"] == 406
    await orders.create_topic("t1")
    with pytest.raises(wharf.PreconditionFailed, match="topic limit in vhost 'orders'"):
        await orders.create_topic("t2")
    assert (await api(broker, "PUT", "/api/topics/orders/t3", {})).json()["code"] == 406
    # The default vhost has no limit.
    default = await connect()
    await default.declare_queue("q2")
    # Removing the limit allows more.
    assert (await api(broker, "DELETE", "/api/vhost-limits/orders/max-queues")).status == 200
    await orders.declare_queue("q2")
    assert (await api(broker, "DELETE", "/api/vhost-limits/orders/max-queues")).status == 404
    assert (
        await api(broker, "PUT", "/api/vhost-limits/orders/max-bogus", {"value": 1})
    ).status == 400


async def test_max_connections_refuses_the_next_one_with_506(broker: Broker, connect: Any) -> None:
    await add_vhost(broker)
    r = await api(broker, "PUT", "/api/vhost-limits/orders/max-connections", {"value": 1})
    assert r.status == 200
    first = await connect(url=vhost_url(broker, "/orders"))
    with pytest.raises(wharf.ResourceError) as refused:
        await connect(url=vhost_url(broker, "/orders"))
    assert refused.value.code == 506
    assert "connection limit in vhost 'orders' (1) is reached" in refused.value.message
    await first.declare_queue("still-usable")
    await connect()  # other vhosts are not limited
    await first.close()
    await wait_until(lambda: not broker.vhosts.get("orders").clients, what="the slot freed")
    await connect(url=vhost_url(broker, "/orders"))


# -- restart ---------------------------------------------------------------------------------


async def test_restart_keeps_vhosts_limits_and_their_data(tmp_path: Path) -> None:
    settings = make_settings(tmp_path)
    first = Broker(settings)
    await first.start()
    try:
        await add_vhost(first)
        r = await api(first, "PUT", "/api/vhost-limits/orders/max-queues", {"value": 5})
        assert r.status == 200
        c = await wharf.connect(vhost_url(first, "/orders"))
        await c.declare_queue("keep", durable=True)
        await c.publish("", "keep", b"kept", persistent=True, confirm=True)
        await c.create_topic("events")
        await c.produce("events", b"record", acks="fsynced")
        await c.close()
    finally:
        await first.stop()
    doc = json.loads((Path(settings.data_dir) / "definitions.json").read_text())
    assert [v["name"] for v in doc["vhosts"]] == ["/", "orders"]
    second = Broker(make_settings(tmp_path))
    await second.start()
    try:
        assert second.vhosts.get("orders").limits == {"max-queues": 5}
        assert "keep" not in second.queues  # not in the default vhost
        c = await wharf.connect(vhost_url(second, "/orders"))
        got = await c.get("keep", no_ack=True)
        assert got is not None and got.body == b"kept"
        assert [r.value for r in await c.fetch("events", 0, 0)] == [b"record"]
        await c.close()
    finally:
        await second.stop()


# -- a data directory from before vhosts -------------------------------------------------------

# Written by a Wharf from before vhosts (commit fdf94a9) with
# tests/fixtures/make_pre_vhosts_data.py.
PRE_VHOSTS_DATA: Final = Path(__file__).resolve().parents[1] / "fixtures" / "pre_vhosts"


async def test_a_data_directory_written_before_vhosts_opens_unchanged(tmp_path: Path) -> None:
    settings = make_settings(tmp_path)
    data = Path(settings.data_dir)
    await asyncio.to_thread(shutil.copytree, PRE_VHOSTS_DATA, data)
    b = Broker(settings)
    await b.start()
    try:
        assert [v.name for v in b.vhosts] == ["/"]
        assert not (data / VHOSTS_DIR).exists()  # the default vhost is the root, as before
        c = await wharf.connect(f"wharf://guest:guest@127.0.0.1:{b.port}")
        try:
            first = await c.get("legacy", no_ack=True)
            second = await c.get("legacy", no_ack=True)
            assert first is not None and first.body == b"first" and first.redelivered
            assert second is not None and second.body == b"second"
            # The durable exchange, its binding and the policy came back.
            await c.publish("legacy-x", "legacy.c", b"third", mandatory=True)
            assert (await api(b, "GET", "/api/policies/%2F/legacy-limit")).status == 200
            # The log topic and the group's committed offset.
            assert [r.value for r in await c.fetch("legacy-t", 0, 0)] == [b"r0", b"r1", b"r2"]
            assert await c.committed_offsets("legacy-g") == {("legacy-t", 0): 2}
        finally:
            await c.close()
        # The runtime user logs in as before.
        await (await wharf.connect(f"wharf://legacy-user:pw@127.0.0.1:{b.port}")).close()
    finally:
        await b.stop()
    doc = json.loads((data / "definitions.json").read_text())
    assert [v["name"] for v in doc["vhosts"]] == ["/"]
    assert [q["name"] for q in doc["queues"]] == ["legacy"]


# -- wharf ctl -------------------------------------------------------------------------------


async def test_ctl_vhosts_commands_and_the_vhost_option(broker: Broker) -> None:
    url = f"http://127.0.0.1:{broker.http_port}"
    r = await run_ctl("vhosts", "add", "orders", "--description", "team", url=url)
    assert r.code == 0 and "vhost orders added" in r.out, r
    r = await run_ctl("vhosts", "list", url=url)
    assert [line.split()[0] for line in r.out.splitlines()] == ["NAME", "/", "orders"], r
    r = await run_ctl("-p", "orders", "queues", "declare", "q1", url=url)
    assert r.code == 0, r
    assert "q1" in broker.vhosts.get("orders").topology.queues and "q1" not in broker.queues
    r = await run_ctl("queues", "list", url=url, env={"WHARF_VHOST": "orders"})
    assert [line.split()[0] for line in r.out.splitlines()] == ["NAME", "q1"], r
    r = await run_ctl("-p", "orders", "vhosts", "limits", "set", "max-queues", "1", url=url)
    assert r.code == 0, r
    r = await run_ctl("--vhost", "orders", "queues", "declare", "q2", url=url)
    assert r.code == 1 and "queue limit in vhost 'orders' (1) is reached" in r.err, r
    r = await run_ctl("vhosts", "limits", "list", url=url)
    assert r.out.splitlines()[1].split() == ["orders", "max-queues", "1"], r
    r = await run_ctl("-p", "orders", "vhosts", "limits", "clear", "max-queues", url=url)
    assert r.code == 0 and broker.vhosts.get("orders").limits == {}, r
    r = await run_ctl("vhosts", "delete", "/", url=url)
    assert r.code == 1 and "cannot be deleted" in r.err, r
    r = await run_ctl("vhosts", "delete", "orders", url=url)
    assert r.code == 0 and "orders" not in broker.vhosts, r
    r = await run_ctl("-p", "orders", "queues", "list", url=url)
    assert r.code == 1 and "vhost 'orders' not found" in r.err, r
