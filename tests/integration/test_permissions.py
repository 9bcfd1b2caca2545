"""Permissions (docs/security.md "## Permissions"): every native operation and the HTTP
API, allowed and denied, for a user limited to ``^orders\\.`` names.

A denial is a non-fatal ERROR 403 in RabbitMQ's words, changes nothing, and the
connection goes on working.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Final

import pytest

import wharf
from wharf.broker.config import Settings, UserConfig
from wharf.broker.security.auth import hash_password
from wharf.broker.server import Broker
from wharf.protocol import frames as F
from wharf.protocol.records import encode_values

from ..conftest import RawClient
from .test_api import api
from .test_http import scrape, value

APP: Final = ("app", "app-pw")
PAYLOAD: Final = encode_values([b"r"], None, None, 0)
NARROW: Final = {"configure": r"^orders\.", "write": r"^orders\.", "read": r"^orders\."}


async def make_app_user(broker: Broker, perms: dict[str, str] | None = NARROW) -> None:
    r = await api(broker, "PUT", "/api/users/app", {"password": APP[1], "tags": ["management"]})
    assert r.status == 201, r
    if perms is not None:
        r = await api(broker, "PUT", "/api/permissions/%2F/app", perms)
        assert r.status == 201, r


async def open_app(broker: Broker) -> RawClient:
    client = await RawClient.open(broker.port, auth=False)
    client.send(F.Auth(1, "PLAIN", APP[0], APP[1], 0, {}))
    ok = await client.recv()
    assert ok[0] == F.AUTH_OK, ok
    return client


async def answer(client: RawClient, frame: F.Frame) -> Any:
    """Send ``frame``, return the first answer to its request id (skipping deliveries)."""
    client.send(frame)
    rid = frame[0]
    while True:
        got = await client.recv()
        if got[0] in (F.PUBLISH_NACK, F.CONFIRM) and got[2] >= rid:
            return got
        if got[0] in (F.OK, F.ERROR, F.GET_OK) and got[1] == rid:
            return got


def setup_frames() -> list[F.Frame]:
    """What the administrator (guest) creates first: one resource of each kind inside
    the app's names (``orders.``) and one outside (``other.``)."""
    frames: list[F.Frame] = []
    for prefix in ("orders", "other"):
        frames += [
            F.ExchangeDeclare(0, f"{prefix}.ex", "topic"),
            F.ExchangeDeclare(0, f"{prefix}.ex2", "direct"),
            F.ExchangeDeclare(0, f"{prefix}.gone", "direct"),
            F.QueueDeclare(0, f"{prefix}.q"),
            F.QueueDeclare(0, f"{prefix}.gone-q"),
            F.QueueBind(0, f"{prefix}.q", f"{prefix}.ex", "k"),
            F.ExchangeBind(0, f"{prefix}.ex2", f"{prefix}.ex", "k"),
            F.TopicCreate(0, f"{prefix}.t"),
            F.TopicCreate(0, f"{prefix}.gone-t"),
            F.TopicBind(0, f"{prefix}.t", f"{prefix}.ex", "k"),
        ]
    return frames


# (operation, the frame on the app's own resources, the frame on someone else's, the
# RabbitMQ-worded refusal).  Request ids are filled in by the test.
MATRIX: Final[list[tuple[str, F.Frame, F.Frame, str]]] = [
    (
        "exchange.declare",
        F.ExchangeDeclare(0, "orders.new", "direct"),
        F.ExchangeDeclare(0, "other.new", "direct"),
        "configure access to exchange 'other.new'",
    ),
    (
        "exchange.declare (alternate exchange)",
        F.ExchangeDeclare(0, "orders.ae", "direct", arguments={"alternate-exchange": "orders.ex"}),
        F.ExchangeDeclare(0, "orders.ae2", "direct", arguments={"alternate-exchange": "other.ex"}),
        "write access to exchange 'other.ex'",
    ),
    (
        "queue.declare (dead-letter exchange)",
        F.QueueDeclare(0, "orders.dl", arguments={"x-dead-letter-exchange": "orders.ex"}),
        F.QueueDeclare(0, "orders.dl2", arguments={"x-dead-letter-exchange": "other.ex"}),
        "write access to exchange 'other.ex'",
    ),
    (
        "exchange.bind",
        F.ExchangeBind(0, "orders.ex2", "orders.ex", "b"),
        F.ExchangeBind(0, "orders.ex2", "other.ex", "b"),
        "read access to exchange 'other.ex'",
    ),
    (
        "exchange.unbind",
        F.ExchangeUnbind(0, "orders.ex2", "orders.ex", "k"),
        F.ExchangeUnbind(0, "other.ex2", "other.ex", "k"),
        "write access to exchange 'other.ex2'",
    ),
    (
        "exchange.delete",
        F.ExchangeDelete(0, "orders.gone"),
        F.ExchangeDelete(0, "other.gone"),
        "configure access to exchange 'other.gone'",
    ),
    (
        "queue.declare",
        F.QueueDeclare(0, "orders.new-q"),
        F.QueueDeclare(0, "other.new-q"),
        "configure access to queue 'other.new-q'",
    ),
    (
        "queue.bind",
        F.QueueBind(0, "orders.q", "orders.ex", "b"),
        F.QueueBind(0, "other.q", "orders.ex", "b"),
        "write access to queue 'other.q'",
    ),
    (
        "queue.bind (source exchange)",
        F.QueueBind(0, "orders.q", "orders.ex", "c"),
        F.QueueBind(0, "orders.q", "other.ex", "c"),
        "read access to exchange 'other.ex'",
    ),
    (
        "basic.publish",
        F.Publish(0, "orders.ex", "k", None, b"m"),
        F.Publish(0, "other.ex", "k", None, b"m"),
        "write access to exchange 'other.ex'",
    ),
    (
        "basic.get",
        F.Get(0, "orders.q", True),
        F.Get(0, "other.q", True),
        "read access to queue 'other.q'",
    ),
    (
        "basic.consume",
        F.Consume(0, "orders.q", "c1", 0, True),
        F.Consume(0, "other.q", "c2", 0, True),
        "read access to queue 'other.q'",
    ),
    (
        "queue.purge",
        F.QueuePurge(0, "orders.q"),
        F.QueuePurge(0, "other.q"),
        "read access to queue 'other.q'",
    ),
    (
        "queue.replay",
        F.QueueReplay(0, "orders.q"),
        F.QueueReplay(0, "other.q"),
        "read access to queue 'other.q'",
    ),
    (
        "queue.unbind",
        F.QueueUnbind(0, "orders.q", "orders.ex", "b"),
        F.QueueUnbind(0, "other.q", "other.ex", "k"),
        "write access to queue 'other.q'",
    ),
    (
        "queue.delete",
        F.QueueDelete(0, "orders.gone-q"),
        F.QueueDelete(0, "other.gone-q"),
        "configure access to queue 'other.gone-q'",
    ),
    (
        "topic.create",
        F.TopicCreate(0, "orders.new-t"),
        F.TopicCreate(0, "other.new-t"),
        "configure access to topic 'other.new-t'",
    ),
    (
        "topic.alter",
        F.TopicAlter(0, "orders.t", 2),
        F.TopicAlter(0, "other.t", 2),
        "configure access to topic 'other.t'",
    ),
    (
        "topic.produce",
        F.Produce(0, "orders.t", 0, PAYLOAD),
        F.Produce(0, "other.t", 0, PAYLOAD),
        "write access to topic 'other.t'",
    ),
    (
        "topic.fetch",
        F.Fetch(0, "orders.t", 0, 0),
        F.Fetch(0, "other.t", 0, 0),
        "read access to topic 'other.t'",
    ),
    (
        "topic.list_offsets",
        F.ListOffsets(0, "orders.t", 0),
        F.ListOffsets(0, "other.t", 0),
        "read access to topic 'other.t'",
    ),
    (
        "topic.bind",
        F.TopicBind(0, "orders.t", "orders.ex", "b"),
        F.TopicBind(0, "orders.t", "other.ex", "b"),
        "read access to exchange 'other.ex'",
    ),
    (
        "topic.unbind",
        F.TopicUnbind(0, "orders.t", "orders.ex", "b"),
        F.TopicUnbind(0, "other.t", "other.ex", "k"),
        "write access to topic 'other.t'",
    ),
    (
        "group.offsets",
        F.OffsetFetch(0, "orders.g"),
        F.OffsetFetch(0, "other.g"),
        "read access to group 'other.g'",
    ),
    (
        "group.commit",
        F.OffsetCommit(0, "orders.g", "", -1, [["orders.t", 0, 0, None]]),
        F.OffsetCommit(0, "other.g", "", -1, [["other.t", 0, 0, None]]),
        "read access to group 'other.g'",
    ),
    (
        "group.join (subscribe)",
        F.GroupJoin(0, "orders.g2", ["orders.t"]),
        F.GroupJoin(0, "orders.g3", ["other.t"]),
        "read access to topic 'other.t'",
    ),
    (
        "group.join",
        F.GroupJoin(0, "orders.g4", ["orders.t"]),
        F.GroupJoin(0, "other.g4", ["orders.t"]),
        "read access to group 'other.g4'",
    ),
    (
        "topic.delete",
        F.TopicDelete(0, "orders.gone-t"),
        F.TopicDelete(0, "other.gone-t"),
        "configure access to topic 'other.gone-t'",
    ),
]


def state(broker: Broker) -> Any:
    """What a denied operation must leave as it was."""
    assert broker.logs is not None
    return (
        sorted(broker.exchanges),
        sorted((q.name, q.ready_count, q.consumer_count) for q in broker.queues.values()),
        broker.topology.bindings_of(),
        sorted(t["name"] for t in broker.logs.describe_all()),
        [(t["name"], len(t["offsets"])) for t in broker.logs.describe_all()],
    )


@pytest.mark.parametrize("settings_overrides", [{"group_initial_rebalance_delay_ms": 0}])
async def test_native_permission_matrix(broker: Broker) -> None:
    admin = await RawClient.open(broker.port)
    rid = 100
    for frame in setup_frames():
        rid += 1
        got = await answer(admin, frame._replace(request_id=rid))
        assert got[0] == F.OK, (frame, got)
    for prefix in ("orders", "other"):
        rid += 1
        got = await answer(admin, F.Publish(rid, f"{prefix}.ex", "k", None, b"m"))
        assert got[0] == F.CONFIRM, got
    await make_app_user(broker)
    app = await open_app(broker)
    for operation, allowed, denied, words in MATRIX:
        before = state(broker)
        rid += 1
        got = await answer(app, denied._replace(request_id=rid))
        if got[0] == F.PUBLISH_NACK:
            code, message = got[3], got[4]
        else:
            assert got[0] == F.ERROR, (operation, got)
            code, message, fatal = got[2], got[3], got[4]
            assert not fatal, operation
        assert code == 403, (operation, got)
        assert message == f"{words} in vhost '/' refused for user 'app'", operation
        assert state(broker) == before, operation
        # The same connection goes on: the allowed variant works right after.
        rid += 1
        got = await answer(app, allowed._replace(request_id=rid))
        assert got[0] in (F.OK, F.GET_OK, F.CONFIRM), (operation, got)
    await app.close()
    await admin.close()
    samples = await scrape(broker)
    assert value(samples, "wharf_access_denied_total", vhost="/", kind="queue") >= 8
    assert value(samples, "wharf_access_denied_total", vhost="/", kind="group") >= 3


async def test_policies_need_the_policymaker_tag(broker: Broker) -> None:
    await make_app_user(broker)
    app = await open_app(broker)
    got = await answer(app, F.PolicySet(7, "p", "^orders\\.", {"max-length": 1}))
    assert got[0] == F.ERROR and got[2] == 403 and not got[4]
    assert "policymaker" in got[3]
    assert not broker.topology.policies.all()
    await api(broker, "PUT", "/api/users/app", {"tags": ["policymaker"]})
    # Tags are read at login: a new connection has the new tag.
    app2 = await open_app(broker)
    got = await answer(app2, F.PolicySet(8, "p", "^orders\\.", {"max-length": 1}))
    assert got[0] == F.OK, got
    await app.close()
    await app2.close()


async def test_a_user_without_permissions_on_the_vhost_cannot_connect(broker: Broker) -> None:
    await make_app_user(broker, perms=None)
    url = f"wharf://{APP[0]}:{APP[1]}@127.0.0.1:{broker.port}"
    with pytest.raises(wharf.AccessRefused, match="access to vhost '/' refused for user 'app'"):
        await wharf.connect(url)
    r = await api(broker, "PUT", "/api/permissions/%2F/app", NARROW)
    assert r.status == 201
    c = await wharf.connect(url)
    await c.declare_queue("orders.x")
    # Clearing takes effect on the next operation, and on the next login.
    assert (await api(broker, "DELETE", "/api/permissions/%2F/app")).status == 200
    with pytest.raises(wharf.AccessRefused):
        await c.declare_queue("orders.y")
    await c.close()
    with pytest.raises(wharf.AccessRefused):
        await wharf.connect(url)


async def test_topic_permissions_check_routing_keys(broker: Broker) -> None:
    await make_app_user(broker, perms={"configure": "", "write": ".*", "read": ".*"})
    admin = await RawClient.open(broker.port)
    assert (await answer(admin, F.ExchangeDeclare(1, "amq.x", "topic")))[0] == F.ERROR
    assert (await answer(admin, F.ExchangeDeclare(2, "events", "topic")))[0] == F.OK
    assert (await answer(admin, F.QueueDeclare(3, "eu-q")))[0] == F.OK
    tp = {"exchange": "events", "write": "^{username}\\.", "read": "^eu\\."}
    r = await api(broker, "PUT", "/api/topic-permissions/%2F/app", tp)
    assert r.status == 201, r
    app = await open_app(broker)
    got = await answer(app, F.Publish(5, "events", "app.created", None, b"m"))
    assert got[0] == F.CONFIRM
    got = await answer(app, F.Publish(6, "events", "bob.created", None, b"m"))
    assert got[0] == F.PUBLISH_NACK and got[3] == 403
    assert got[4] == (
        "write access to topic 'bob.created' in exchange 'events' in vhost '/' "
        "refused for user 'app'"
    )
    assert (await answer(app, F.QueueBind(7, "eu-q", "events", "eu.#")))[0] == F.OK
    got = await answer(app, F.QueueBind(8, "eu-q", "events", "us.#"))
    assert got[0] == F.ERROR and got[2] == 403 and "topic 'us.#'" in got[3]
    # Only topic exchanges are checked; the decision follows a change at once.
    await api(broker, "DELETE", "/api/topic-permissions/%2F/app")
    got = await answer(app, F.Publish(9, "events", "bob.created", None, b"m"))
    assert got[0] == F.CONFIRM
    await app.close()
    await admin.close()


async def test_http_resource_endpoints_use_the_same_decisions(broker: Broker) -> None:
    await make_app_user(broker)
    for path in ("/api/exchanges/%2F/orders.ex", "/api/exchanges/%2F/other.ex"):
        assert (await api(broker, "PUT", path, {"type": "topic"})).status == 201
    for path in ("/api/queues/%2F/orders.q", "/api/queues/%2F/other.q"):
        assert (await api(broker, "PUT", path, {})).status == 201
    for t in ("orders.t", "other.t"):
        assert (await api(broker, "PUT", f"/api/topics/%2F/{t}", {})).status == 201
    binding = {"source": "orders.ex", "destination": "orders.q", "routing_key": "k"}
    # (method, path, body, allowed for the app?)
    cases: list[tuple[str, str, Any, bool]] = [
        ("PUT", "/api/queues/%2F/orders.new", {}, True),
        ("PUT", "/api/queues/%2F/other.new", {}, False),
        ("PUT", "/api/exchanges/%2F/orders.new", {"type": "direct"}, True),
        ("PUT", "/api/exchanges/%2F/other.new", {"type": "direct"}, False),
        ("POST", "/api/bindings/%2F", binding, True),
        ("POST", "/api/bindings/%2F", {**binding, "source": "other.ex"}, False),
        (
            "POST",
            "/api/exchanges/%2F/orders.ex/publish",
            {"routing_key": "k", "payload": "x"},
            True,
        ),
        (
            "POST",
            "/api/exchanges/%2F/other.ex/publish",
            {"routing_key": "k", "payload": "x"},
            False,
        ),
        ("POST", "/api/queues/%2F/orders.q/get", {}, True),
        ("POST", "/api/queues/%2F/other.q/get", {}, False),
        ("DELETE", "/api/queues/%2F/orders.q/contents", None, True),
        ("DELETE", "/api/queues/%2F/other.q/contents", None, False),
        ("PUT", "/api/topics/%2F/orders.t2", {}, True),
        ("PUT", "/api/topics/%2F/other.t2", {}, False),
        ("DELETE", "/api/topics/%2F/other.t", None, False),
        ("DELETE", "/api/queues/%2F/other.q", None, False),
        ("DELETE", "/api/exchanges/%2F/other.ex", None, False),
        ("DELETE", "/api/queues/%2F/orders.new", None, True),
        ("PUT", "/api/policies/%2F/p", {"pattern": ".*", "definition": {"max-length": 1}}, False),
        ("GET", "/api/permissions", None, False),
        ("GET", "/api/queues", None, True),
    ]
    for method, path, body, allowed in cases:
        before = state(broker)
        r = await api(broker, method, path, body, auth=APP)
        if allowed:
            assert r.status in (200, 201), (method, path, r)
        else:
            assert r.status == 403 and r.json()["code"] == 403, (method, path, r)
            assert state(broker) == before, (method, path)
    r = await api(broker, "POST", "/api/queues/%2F/other.q/get", {}, auth=APP)
    assert r.json()["error"] == "read access to queue 'other.q' in vhost '/' refused for user 'app'"


async def test_permissions_api_shapes_and_validation(broker: Broker) -> None:
    await make_app_user(broker, perms=None)
    assert (await api(broker, "GET", "/api/permissions/%2F/app")).status == 404
    r = await api(broker, "PUT", "/api/permissions/%2F/app", NARROW)
    assert r.status == 201 and r.json() == {"user": "app", "vhost": "/", **NARROW}
    assert (await api(broker, "PUT", "/api/permissions/%2F/app", NARROW)).status == 200
    listed = (await api(broker, "GET", "/api/permissions")).json()
    assert {"user": "app", "vhost": "/", **NARROW} in listed
    assert {"user": "guest", "vhost": "/", "configure": ".*", "write": ".*", "read": ".*"} in (
        listed
    )
    for path, body in (
        ("/api/permissions/%2F/app", {"configure": "(", "write": "", "read": ""}),
        ("/api/permissions/%2F/app", {"configure": ".*"}),
        ("/api/permissions/%2F/nobody", NARROW),
        ("/api/permissions/other/app", NARROW),
        ("/api/topic-permissions/%2F/app", {"exchange": "x", "write": "[", "read": ""}),
    ):
        r = await api(broker, "PUT", path, body)
        assert r.status in (400, 404), (path, body, r)
    assert (await api(broker, "GET", "/api/permissions/%2F/app")).json()["configure"] == (
        NARROW["configure"]
    )
    assert (await api(broker, "GET", "/api/topic-permissions")).json() == []
    # Deleting the user removes its permissions: a new user by that name has none.
    assert (await api(broker, "DELETE", "/api/users/app")).status == 200
    await make_app_user(broker, perms=None)
    assert (await api(broker, "GET", "/api/permissions/%2F/app")).status == 404


async def test_permissions_survive_a_restart_and_old_data_keeps_working(tmp_path: Path) -> None:
    configured = [UserConfig("cfg", hash_password("cfg-pw"), [])]
    data = tmp_path / "d"
    settings = Settings(
        host="127.0.0.1", port=0, http_port=0, amqp_port=0, data_dir=str(data), users=configured
    )
    tp = {"exchange": "events", "write": "^a", "read": "^b"}
    b = Broker(settings)
    await b.start()
    try:
        await make_app_user(b)
        assert (await api(b, "PUT", "/api/topic-permissions/%2F/app", tp)).status == 201
        # A config-file user has full access on "/" until an entry replaces it.
        assert b.access.describe("/", "cfg") is not None
        assert (await api(b, "DELETE", "/api/permissions/%2F/cfg")).status == 200
    finally:
        await b.stop()
    b = Broker(settings)
    await b.start()
    try:
        assert (await api(b, "GET", "/api/permissions/%2F/app")).json() == {
            "user": "app",
            "vhost": "/",
            **NARROW,
        }
        topic = (await api(b, "GET", "/api/topic-permissions/%2F/app")).json()
        assert topic == [{"user": "app", "vhost": "/", **tp}]
        with pytest.raises(wharf.AccessRefused, match="access to vhost"):
            await wharf.connect(f"wharf://cfg:cfg-pw@127.0.0.1:{b.port}")
        c = await wharf.connect(f"wharf://{APP[0]}:{APP[1]}@127.0.0.1:{b.port}")
        with pytest.raises(wharf.AccessRefused, match="queue 'other.q'"):
            await c.declare_queue("other.q")
        await c.close()
    finally:
        await b.stop()
    # Data from before permissions: users created through the API keep full access.
    doc = json.loads((data / "definitions.json").read_text())
    del doc["permissions"], doc["topic_permissions"]
    (data / "definitions.json").write_text(json.dumps(doc))
    b = Broker(settings)
    await b.start()
    try:
        c = await wharf.connect(f"wharf://{APP[0]}:{APP[1]}@127.0.0.1:{b.port}")
        await c.declare_queue("other.q")
        await c.close()
        assert "permissions" in json.loads((data / "definitions.json").read_text())
    finally:
        await b.stop()
