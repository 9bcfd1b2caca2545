"""The management HTTP API (/api) of a real broker, over real HTTP, next to SDK clients."""

from __future__ import annotations

import asyncio
import base64
import json
import socket
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import wharf
from wharf.broker.config import Settings, UserConfig
from wharf.broker.http.api import build_api
from wharf.broker.security.auth import hash_password
from wharf.broker.server import Broker
from wharf.protocol.errors import InvalidArgument

from ..helpers import wait_until

Connect = Callable[..., Any]

TIMEOUT_S = 5.0
GUEST = ("guest", "guest")


def _qname(prefix: str = "q") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


class Response:
    def __init__(self, status: int, headers: dict[str, str], body: bytes) -> None:
        self.status = status
        self.headers = headers
        self.body = body

    def json(self) -> Any:
        return json.loads(self.body)

    def __repr__(self) -> str:
        return f"<{self.status} {self.body[:200]!r}>"


def _basic(auth: tuple[str, str]) -> str:
    return "Basic " + base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode()


async def raw_http(port: int, request: bytes, host: str = "127.0.0.1") -> Response:
    """Send raw request bytes on a new connection; read the (last) response until EOF."""
    reader, writer = await asyncio.open_connection(host, port)
    try:
        writer.write(request)
        async with asyncio.timeout(TIMEOUT_S):
            data = await reader.read()
    finally:
        writer.close()
        await writer.wait_closed()
    head, sep, body = data.partition(b"\r\n\r\n")
    assert sep, data
    lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return Response(int(lines[0].split(" ", 2)[1]), headers, body)


async def api(
    broker: Broker,
    method: str,
    path: str,
    body: Any = None,
    *,
    auth: tuple[str, str] | None = GUEST,
    raw_body: bytes | None = None,
    headers: dict[str, str] | None = None,
    host: str = "127.0.0.1",
) -> Response:
    data = raw_body if raw_body is not None else b"" if body is None else json.dumps(body).encode()
    lines = [f"{method} {path} HTTP/1.1", "Host: 127.0.0.1", "Connection: close"]
    if auth is not None:
        lines.append(f"Authorization: {_basic(auth)}")
    if data:
        lines += ["Content-Type: application/json", f"Content-Length: {len(data)}"]
    lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
    request = ("\r\n".join(lines) + "\r\n\r\n").encode() + data
    return await raw_http(broker.http_port, request, host)


# -- authentication and authorisation ----------------------------------------------------------


async def test_api_needs_credentials_but_probes_and_metrics_do_not(broker: Broker) -> None:
    r = await api(broker, "GET", "/api/overview", auth=None)
    assert r.status == 401
    assert r.headers["www-authenticate"].startswith("Basic")
    assert r.json() == {"error": "authentication required", "code": 403}
    for path in ("/healthz", "/readyz", "/metrics"):
        assert (await api(broker, "GET", path, auth=None)).status == 200, path


async def test_wrong_password_and_malformed_credentials_are_401(broker: Broker) -> None:
    assert (await api(broker, "GET", "/api/queues", auth=("guest", "nope"))).status == 401
    r = await api(broker, "GET", "/api/queues", auth=None, headers={"Authorization": "Bearer x"})
    assert r.status == 401
    r = await api(broker, "GET", "/api/queues", auth=None, headers={"Authorization": "Basic !!"})
    assert r.status == 401


async def test_non_administrators_read_but_do_not_write(broker: Broker) -> None:
    r = await api(broker, "PUT", "/api/users/viewer", {"password": "pw", "tags": ["monitoring"]})
    assert r.status == 201, r
    viewer = ("viewer", "pw")
    assert (await api(broker, "GET", "/api/overview", auth=viewer)).status == 200
    assert (await api(broker, "GET", "/api/queues", auth=viewer)).status == 200
    assert (await api(broker, "GET", "/api/whoami", auth=viewer)).json() == {
        "name": "viewer",
        "tags": ["monitoring"],
    }
    r = await api(broker, "PUT", f"/api/queues/%2F/{_qname()}", {}, auth=viewer)
    assert r.status == 403 and r.json()["code"] == 403
    # Decided by the permission table: a new API user has no permissions (RabbitMQ).
    assert r.json()["error"] == "access to vhost '/' refused for user 'viewer'"
    # User administration is for administrators, reads included.
    assert (await api(broker, "GET", "/api/users", auth=viewer)).status == 403
    assert not broker.queues


def non_loopback_ipv4() -> str | None:
    """An address of this machine that is not loopback (no packet is sent), or None."""
    for probe in ("192.0.2.1", "10.255.255.255"):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            try:
                s.connect((probe, 9))
            except OSError:
                continue
            addr = str(s.getsockname()[0])
        if not addr.startswith("127.") and addr != "0.0.0.0":
            return addr
    return None


# Basic credentials over plain HTTP from a remote address need the switch (test_auth_mechanisms).
@pytest.mark.parametrize(
    "settings_overrides", [{"host": "0.0.0.0", "allow_plain_without_tls": True}]
)
async def test_guest_is_loopback_only_over_http_too(broker: Broker) -> None:
    addr = non_loopback_ipv4()
    if addr is None:
        pytest.skip("this machine has no non-loopback IPv4 address")
    r = await api(broker, "GET", "/api/overview", host=addr)
    assert r.status == 401 and "loopback" in r.json()["error"]
    await api(broker, "PUT", "/api/users/remote", {"password": "pw", "tags": ["management"]})
    assert (
        await api(broker, "GET", "/api/overview", auth=("remote", "pw"), host=addr)
    ).status == 200


# -- overview --------------------------------------------------------------------------------


async def test_overview_follows_clients(broker: Broker, conn: wharf.Connection) -> None:
    q = (await conn.declare_queue("")).name
    await conn.publish("", q, b"one")
    await conn.publish("", q, b"two")
    await conn.publish("", "no-such-queue", b"lost")
    await wait_until(lambda: broker.stats.published == 3)
    o = (await api(broker, "GET", "/api/overview")).json()
    assert o["product"] == "wharf" and o["ready"] is True
    assert o["object_totals"]["connections"] == 1
    assert o["object_totals"]["queues"] == 1
    assert o["queue_totals"]["messages_ready"] == 2
    assert o["message_stats"]["published"] == 3
    assert o["message_stats"]["unroutable"] == 1
    assert o["alarms"] == []
    ports = {x["protocol"]: x["port"] for x in o["listeners"]}
    assert ports == {"wharf": broker.port, "http": broker.http_port}


# -- queues ----------------------------------------------------------------------------------


async def test_queue_declare_show_list_delete(broker: Broker) -> None:
    name = _qname()
    r = await api(broker, "PUT", f"/api/queues/%2F/{name}", {"durable": True})
    assert r.status == 201
    assert r.json()["name"] == name and r.json()["durable"] is True
    # Same attributes: 200 and no change; different ones: 409 (precondition failed).
    assert (await api(broker, "PUT", f"/api/queues/%2F/{name}", {"durable": True})).status == 200
    r = await api(broker, "PUT", f"/api/queues/%2F/{name}", {"durable": False})
    assert r.status == 409 and r.json()["code"] == 406
    r = await api(broker, "GET", f"/api/queues/%2F/{name}")
    assert r.json()["messages_ready"] == 0 and r.json()["consumers"] == 0
    assert name in [q["name"] for q in (await api(broker, "GET", "/api/queues")).json()]
    r = await api(broker, "DELETE", f"/api/queues/%2F/{name}")
    assert r.status == 200 and r.json() == {"messages": 0}
    assert name not in broker.queues
    r = await api(broker, "GET", f"/api/queues/%2F/{name}")
    assert r.status == 404 and r.json()["code"] == 404


async def test_queue_names_are_percent_encoded_segments(
    broker: Broker, conn: wharf.Connection
) -> None:
    name = "orders/eu west?#%é"
    from urllib.parse import quote

    r = await api(broker, "PUT", f"/api/queues/%2F/{quote(name, safe='')}", {})
    assert r.status == 201 and r.json()["name"] == name
    await conn.publish("", name, b"x")
    await wait_until(lambda: broker.queues[name].ready_count == 1)
    assert (await api(broker, "GET", f"/api/queues/%2F/{quote(name, safe='')}")).status == 200
    assert (await api(broker, "GET", "/api/queues/%2F/%ff")).status == 400


async def test_reserved_and_exclusive_queues_are_refused(
    broker: Broker, conn: wharf.Connection
) -> None:
    r = await api(broker, "PUT", "/api/queues/%2F/amq.mine", {})
    assert r.status == 403
    r = await api(broker, "PUT", f"/api/queues/%2F/{_qname()}", {"exclusive": True})
    assert r.status == 400
    q = (await conn.declare_queue("", exclusive=True)).name
    # Visible, but it belongs to its connection.
    assert (await api(broker, "GET", f"/api/queues/%2F/{q}")).json()["exclusive"] is True
    r = await api(broker, "DELETE", f"/api/queues/%2F/{q}")
    assert r.status == 409 and r.json()["code"] == 405
    assert (await api(broker, "DELETE", f"/api/queues/%2F/{q}/contents")).status == 409
    assert q in broker.queues


async def test_queue_delete_conditions_and_purge(broker: Broker, conn: wharf.Connection) -> None:
    q = (await conn.declare_queue(_qname())).name
    for body in (b"a", b"b", b"c"):
        await conn.publish("", q, body)
    await wait_until(lambda: broker.queues[q].ready_count == 3)
    r = await api(broker, "DELETE", f"/api/queues/%2F/{q}?if_empty=true")
    assert r.status == 409 and "not empty" in r.json()["error"]
    async with conn.consume(q, prefetch=1):
        await wait_until(lambda: broker.queues[q].consumer_count == 1)
        r = await api(broker, "DELETE", f"/api/queues/%2F/{q}?if_unused")
        assert r.status == 409 and r.json()["error"] == f"queue '{q}' in use"
    assert (await api(broker, "DELETE", f"/api/queues/%2F/{q}?if_unused=maybe")).status == 400
    assert (await api(broker, "DELETE", f"/api/queues/%2F/{q}?force=1")).status == 400
    await wait_until(lambda: broker.queues[q].unacked_count == 0)
    r = await api(broker, "DELETE", f"/api/queues/%2F/{q}/contents")
    assert r.status == 200 and r.json() == {"messages": 3}
    assert (
        await api(broker, "DELETE", f"/api/queues/%2F/{q}?if_empty=1&if_unused=1")
    ).status == 200
    assert q not in broker.queues


async def test_peek_does_not_consume_or_reorder(broker: Broker, conn: wharf.Connection) -> None:
    q = (await conn.declare_queue(_qname())).name
    await conn.publish("", q, b"first", message_id="m1")
    await conn.publish("", q, b"\xff\x00binary")
    await conn.publish("", q, b"third")
    await wait_until(lambda: broker.queues[q].ready_count == 3)
    r = await api(broker, "POST", f"/api/queues/%2F/{q}/get", {"count": 2})
    assert r.status == 200
    peeked = r.json()
    assert [m["payload"] for m in peeked] == ["first", base64.b64encode(b"\xff\x00binary").decode()]
    assert [m["payload_encoding"] for m in peeked] == ["string", "base64"]
    assert peeked[0]["properties"]["message_id"] == "m1"
    assert peeked[0]["routing_key"] == q and peeked[0]["redelivered"] is False
    assert broker.queues[q].ready_count == 3
    shown = await api(broker, "GET", f"/api/queues/%2F/{q}")
    assert shown.json()["messages_ready"] == 3
    # Consumers still get everything, in order, as first deliveries.
    got = []
    for _ in range(3):
        msg = await conn.get(q, no_ack=True)
        assert msg is not None
        got.append((msg.body, msg.redelivered))
    assert got == [(b"first", False), (b"\xff\x00binary", False), (b"third", False)]
    assert (await api(broker, "POST", f"/api/queues/%2F/{q}/get", {})).json() == []


async def test_peek_shows_requeued_messages_first(broker: Broker, connect: Connect) -> None:
    c1 = await connect()
    q = (await c1.declare_queue(_qname())).name
    await c1.publish("", q, b"one")
    await c1.publish("", q, b"two")
    c2 = await connect()
    msg = await c2.get(q)
    assert msg is not None and msg.body == b"one"
    await c2.close()  # unacked: requeued at its place
    await wait_until(lambda: broker.queues[q].ready_count == 2)
    r = await api(broker, "POST", f"/api/queues/%2F/{q}/get", {"count": 10, "truncate": 2})
    assert [(m["payload"], m["redelivered"], m["payload_bytes"]) for m in r.json()] == [
        ("on", True, 3),
        ("tw", False, 3),
    ]
    r = await api(broker, "POST", f"/api/queues/%2F/{q}/get", {"count": 0})
    assert r.status == 400


# -- exchanges, publishing and bindings -------------------------------------------------------


async def test_exchange_lifecycle_and_default_exchange(broker: Broker) -> None:
    r = await api(broker, "GET", "/api/exchanges/%2F/amq.default")
    assert r.status == 200 and r.json()["name"] == "" and r.json()["type"] == "direct"
    names = [e["name"] for e in (await api(broker, "GET", "/api/exchanges")).json()]
    assert "" in names and "amq.topic" in names
    r = await api(broker, "PUT", "/api/exchanges/%2F/events", {"type": "topic", "durable": True})
    assert r.status == 201 and r.json()["type"] == "topic"
    r = await api(broker, "PUT", "/api/exchanges/%2F/events", {"type": "fanout", "durable": True})
    assert r.status == 409
    assert (await api(broker, "PUT", "/api/exchanges/%2F/bad", {"type": "nope"})).status == 400
    assert (await api(broker, "PUT", "/api/exchanges/%2F/bad", {})).status == 400
    assert (await api(broker, "DELETE", "/api/exchanges/%2F/amq.topic")).status == 403
    assert (await api(broker, "DELETE", "/api/exchanges/%2F/amq.default")).status == 403
    assert (await api(broker, "DELETE", "/api/exchanges/%2F/events")).status == 200
    assert (await api(broker, "GET", "/api/exchanges/%2F/events")).status == 404


async def test_publish_reports_a_refusal_by_a_full_queue(
    broker: Broker, conn: wharf.Connection
) -> None:
    # The native protocol nacks a message a full queue refuses (x-overflow
    # reject-publish); HTTP publish goes through the same path and says so.
    q = _qname()
    await conn.declare_queue(q, arguments={"x-max-length": 1, "x-overflow": "reject-publish"})
    url = "/api/exchanges/%2F/amq.default/publish"
    first = await api(broker, "POST", url, {"routing_key": q, "payload": "a"})
    assert first.status == 200 and first.json() == {"routed": True}
    second = await api(broker, "POST", url, {"routing_key": q, "payload": "b"})
    assert second.status == 200 and second.json() == {"routed": True, "refused": True}
    unroutable = await api(broker, "POST", url, {"routing_key": _qname(), "payload": "c"})
    assert unroutable.status == 200 and unroutable.json() == {"routed": False}
    msg = await conn.get(q, no_ack=True)
    assert msg is not None and msg.body == b"a"
    assert await conn.get(q, no_ack=True) is None


async def test_publish_checks_properties_as_the_native_protocol(
    broker: Broker, conn: wharf.Connection
) -> None:
    # One property check for both ways in: the same message is refused with the same code.
    q = (await conn.declare_queue(_qname())).name
    bad = {"message_id": 7}
    r = await api(
        broker,
        "POST",
        "/api/exchanges/%2F/amq.default/publish",
        {"routing_key": q, "payload": "x", "properties": bad},
    )
    assert r.status == 400 and r.json()["code"] == InvalidArgument.code
    with pytest.raises(InvalidArgument):
        await conn.publish("", q, b"x", message_id=7)  # type: ignore[arg-type]


async def test_publish_routes_like_a_client_publish(broker: Broker, conn: wharf.Connection) -> None:
    q = (await conn.declare_queue(_qname())).name
    body = {
        "routing_key": q,
        "payload": "héllo",
        "properties": {"content_type": "text/plain", "headers": {"k": 1}, "priority": 3},
    }
    r = await api(broker, "POST", "/api/exchanges/%2F/amq.default/publish", body)
    assert r.status == 200 and r.json() == {"routed": True}
    raw = {"routing_key": q, "payload": base64.b64encode(b"\x00\x01").decode()}
    raw["payload_encoding"] = "base64"
    assert (await api(broker, "POST", "/api/exchanges/%2F/amq.default/publish", raw)).status == 200
    msg = await conn.get(q, no_ack=True)
    assert msg is not None and msg.body == "héllo".encode()
    props = msg.properties or {}
    assert props["content_type"] == "text/plain"
    assert props["headers"] == {"k": 1} and props["priority"] == 3
    msg = await conn.get(q, no_ack=True)
    assert msg is not None and msg.body == b"\x00\x01"
    r = await api(broker, "POST", "/api/exchanges/%2F/amq.direct/publish", {"payload": "x"})
    assert r.status == 200 and r.json() == {"routed": False}
    assert broker.stats.unroutable == 1


async def test_publish_rejects_what_the_wire_rejects(broker: Broker) -> None:
    url = "/api/exchanges/%2F/amq.default/publish"
    for body in (
        {"payload": "x", "properties": {"priority": 256}},
        {"payload": "x", "properties": {"expiration": -1}},
        {"payload": "x", "properties": {"headers": [1]}},
        {"payload": "x", "properties": {"timestamp": 2**70}},
        {"payload": "x", "properties": {"persistent": "yes"}},
        {"payload": "not base64!", "payload_encoding": "base64"},
        {"payload": "x", "payload_encoding": "rot13"},
        {"routing_key": "k"},
        {"payload": 5},
    ):
        r = await api(broker, "POST", url, body)
        assert r.status == 400, (body, r)
    r = await api(broker, "POST", url, {"payload": "x", "properties": {"user_id": "mallory"}})
    assert r.status == 409 and r.json()["code"] == 406
    await api(broker, "PUT", "/api/exchanges/%2F/inner", {"type": "fanout", "internal": True})
    assert (
        await api(broker, "POST", "/api/exchanges/%2F/inner/publish", {"payload": "x"})
    ).status == 403
    assert (
        await api(broker, "POST", "/api/exchanges/%2F/nope/publish", {"payload": "x"})
    ).status == 404
    assert broker.stats.published == 0


async def test_bindings_add_list_remove(broker: Broker, conn: wharf.Connection) -> None:
    q = (await conn.declare_queue(_qname())).name
    await api(broker, "PUT", "/api/exchanges/%2F/ev", {"type": "topic"})
    await api(broker, "PUT", "/api/exchanges/%2F/ev2", {"type": "fanout"})
    binding = {"source": "ev", "destination": q, "routing_key": "order.*"}
    r = await api(broker, "POST", "/api/bindings/%2F", binding)
    assert r.status == 201 and r.json()["destination_type"] == "queue"
    assert (await api(broker, "POST", "/api/bindings/%2F", binding)).status == 200
    e2e = {"source": "ev2", "destination": "ev", "destination_type": "exchange"}
    assert (await api(broker, "POST", "/api/bindings/%2F", e2e)).status == 201
    listed = (await api(broker, "GET", "/api/bindings")).json()
    assert {(b["source"], b["destination"], b["routing_key"]) for b in listed} == {
        ("ev", q, "order.*"),
        ("ev2", "ev", ""),
    }
    r = await api(
        broker, "POST", "/api/exchanges/%2F/ev2/publish", {"routing_key": "order.1", "payload": "p"}
    )
    assert r.json() == {"routed": True}
    # Unknown fields, a missing destination and the default exchange are refused.
    assert (await api(broker, "POST", "/api/bindings/%2F", {**binding, "key": "x"})).status == 400
    assert (
        await api(broker, "POST", "/api/bindings/%2F", {**binding, "destination": "nope"})
    ).status == 404
    assert (await api(broker, "POST", "/api/bindings/%2F", {**binding, "source": ""})).status == 403
    assert (await api(broker, "DELETE", "/api/bindings/%2F", binding)).status == 200
    assert (await api(broker, "DELETE", "/api/bindings/%2F", binding)).status == 404
    assert (await api(broker, "DELETE", "/api/exchanges/%2F/ev?if_unused=true")).status == 200
    assert [b["source"] for b in (await api(broker, "GET", "/api/bindings")).json()] == []


# -- connections and consumers -----------------------------------------------------------------


async def test_connections_and_consumers_are_listed_and_closed(
    broker: Broker, conn: wharf.Connection
) -> None:
    q = (await conn.declare_queue(_qname())).name
    for i in range(3):
        await conn.publish("", q, b"m%d" % i)
    async with conn.consume(q, prefetch=7):
        path = f"/api/queues/%2F/{q}"

        async def delivered_never_acked() -> bool:
            return bool((await api(broker, "GET", path)).json()["messages_unacked"] >= 3)

        await wait_until(delivered_never_acked, timeout=TIMEOUT_S, what="3 unacked")
        conns = (await api(broker, "GET", "/api/connections")).json()
        assert len(conns) == 1 and conns[0]["user"] == "guest" and conns[0]["state"] == "open"
        assert conns[0]["protocol"] == "native" and conns[0]["channels"] == 1
        assert conns[0]["unacked"] == 3
        name = conns[0]["name"]
        assert (await api(broker, "GET", f"/api/connections/{name}")).json()["consumers"] == 1
        consumers = (await api(broker, "GET", "/api/consumers")).json()
        assert [(c["queue"], c["connection"], c["prefetch"], c["unacked"]) for c in consumers] == [
            (q, name, 7, 3)
        ]
        r = await api(broker, "DELETE", f"/api/connections/{name}")
        assert r.status == 200
        await wait_until(lambda: not broker.connections)
    # The closed connection's deliveries went back to the queue.
    queue = (await api(broker, "GET", f"/api/queues/%2F/{q}")).json()
    assert (queue["messages_ready"], queue["messages_unacked"]) == (3, 0)
    with pytest.raises(wharf.WharfError) as info:
        await conn.declare_queue(_qname())
    assert info.value.code == 320 and "closed by operator" in info.value.message
    assert (await api(broker, "DELETE", f"/api/connections/{name}")).status == 404


# -- users -------------------------------------------------------------------------------------


async def test_runtime_users_log_in_change_password_and_go(
    broker: Broker, connect: Connect
) -> None:
    url = f"wharf://app:one@127.0.0.1:{broker.port}"
    r = await api(broker, "PUT", "/api/users/app", {"password": "one", "tags": "a,b"})
    assert r.status == 201 and r.json() == {"name": "app", "tags": ["a", "b"], "source": "runtime"}
    perms = {"configure": ".*", "write": ".*", "read": ".*"}
    assert (await api(broker, "PUT", "/api/permissions/%2F/app", perms)).status == 201
    c = await connect(url=url)
    await c.declare_queue("")
    users = (await api(broker, "GET", "/api/users")).json()
    assert {u["name"] for u in users} == {"app", "guest"}
    assert all("password" not in json.dumps(u) for u in users)
    # A new password replaces the old one at once (the auth cache does not keep it alive).
    assert (await api(broker, "PUT", "/api/users/app", {"password": "two"})).status == 200
    assert (await api(broker, "GET", "/api/users/app")).json()["tags"] == ["a", "b"]
    with pytest.raises(wharf.AccessRefused):
        await connect(url=url)
    await connect(url=url.replace(":one@", ":two@"))
    r = await api(broker, "DELETE", "/api/users/app")
    assert r.status == 200 and r.json() == {"connections_closed": 2}  # old and new password
    await wait_until(lambda: len(broker.connections) == 0)
    with pytest.raises(wharf.AccessRefused):
        await connect(url=url.replace(":one@", ":two@"))
    assert (await api(broker, "DELETE", "/api/users/app")).status == 404


async def test_user_requests_are_validated(broker: Broker) -> None:
    for name, body in (
        ("new", {}),  # no password for a new user
        ("new", {"password": "a", "password_hash": hash_password("a")}),
        ("new", {"password_hash": "scrypt$1$1$1$AA==$AA=="}),
        ("new", {"password": ""}),
        ("new", {"password": "p", "tags": ["a,b"]}),
        ("new", {"password": "p", "tags": [1]}),
        ("new", {"password": "p", "role": "admin"}),
        ("a%3Ab", {"password": "p"}),  # ':' cannot work with HTTP basic
    ):
        r = await api(broker, "PUT", f"/api/users/{name}", body)
        assert r.status in (400, 404), (name, body, r)
    assert "new" not in broker.authenticator.users
    r = await api(broker, "PUT", "/api/users/hashed", {"password_hash": hash_password("h")})
    assert r.status == 201
    assert (await api(broker, "GET", "/api/whoami", auth=("hashed", "h"))).status == 200


async def test_the_last_administrator_stays(broker: Broker) -> None:
    r = await api(broker, "DELETE", "/api/users/guest")
    assert r.status == 409 and "last administrator" in r.json()["error"]
    r = await api(broker, "PUT", "/api/users/guest", {"tags": []})
    assert r.status == 409
    await api(broker, "PUT", "/api/users/root", {"password": "r", "tags": ["administrator"]})
    assert (await api(broker, "DELETE", "/api/users/guest")).status == 200
    assert (await api(broker, "GET", "/api/overview")).status == 401
    root = ("root", "r")
    assert (await api(broker, "GET", "/api/users", auth=root)).json()[0]["name"] == "root"


async def test_runtime_users_survive_a_restart_and_override_the_config(tmp_path: Path) -> None:
    configured = [
        UserConfig("ops", hash_password("ops-pw"), ["administrator"]),
        UserConfig("old", hash_password("old-pw"), []),
    ]
    settings = Settings(
        host="127.0.0.1",
        port=0,
        http_port=0,
        amqp_port=0,
        data_dir=str(tmp_path / "d"),
        users=configured,
    )
    b = Broker(settings)
    await b.start()
    try:
        ops = ("ops", "ops-pw")
        assert (
            await api(b, "PUT", "/api/users/ops", {"password": "new-pw"}, auth=ops)
        ).status == 200
        ops = ("ops", "new-pw")
        assert (await api(b, "DELETE", "/api/users/old", auth=ops)).status == 200
        r = await api(b, "PUT", "/api/users/extra", {"password": "x"}, auth=ops)
        assert r.status == 201
    finally:
        await b.stop()
    b = Broker(settings)  # same config file: runtime changes win
    await b.start()
    try:
        assert (await api(b, "GET", "/api/whoami", auth=("ops", "ops-pw"))).status == 401
        users = (await api(b, "GET", "/api/users", auth=("ops", "new-pw"))).json()
        assert {(u["name"], u["source"]) for u in users} == {
            ("ops", "runtime"),
            ("extra", "runtime"),
            ("guest", "builtin"),
        }
        assert (await api(b, "GET", "/api/whoami", auth=("extra", "x"))).status == 200
    finally:
        await b.stop()


async def test_bad_user_records_in_definitions_are_skipped(tmp_path: Path) -> None:
    data = tmp_path / "d"
    data.mkdir()
    good = hash_password("pw")
    doc = {
        "version": 1,
        "exchanges": [],
        "queues": [],
        "bindings": [],
        "users": [
            {"name": "ok", "password_hash": good, "tags": ["administrator"]},
            {"name": "nohash", "tags": []},
            {"name": "badhash", "password_hash": "plain", "tags": []},
            {"name": "badtags", "password_hash": good, "tags": "x"},
            {"password_hash": good},
            "junk",
            {"name": "guest", "deleted": True},
        ],
    }
    (data / "definitions.json").write_text(json.dumps(doc))
    b = Broker(Settings(host="127.0.0.1", port=0, http_port=0, amqp_port=0, data_dir=str(data)))
    await b.start()
    try:
        users = (await api(b, "GET", "/api/users", auth=("ok", "pw"))).json()
        assert [u["name"] for u in users] == ["ok"]
        assert (await api(b, "GET", "/api/overview")).status == 401  # guest deleted
    finally:
        await b.stop()


# -- bad requests never hurt -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path", "raw", "status"),
    [
        ("PUT", "/api/queues/%2F/q", b"{not json", 400),
        ("PUT", "/api/queues/%2F/q", b"[1, 2]", 400),
        ("PUT", "/api/queues/%2F/q", b'{"durable": "yes"}', 400),
        ("PUT", "/api/queues/%2F/q", b'{"arguments": {"x": NaN}}', 400),
        ("PUT", "/api/queues/%2F/q", b'{"arguments": {"x": 1e999}}', 400),
        ("PUT", "/api/queues/%2F/q", b'{"arguments": {"x": 100000000000000000000}}', 400),
        ("PUT", "/api/queues/%2F/q", b'{"arguments": {"x": "\\ud800"}}', 400),
        ("PUT", "/api/queues/%2F/q", b'{"arguments": ' + b"[" * 5000 + b"]" * 5000 + b"}", 400),
        ("PUT", "/api/queues/%2F/q", b"\xff\xfe", 400),
        ("PUT", "/api/queues/%2F/" + "x" * 300, b"{}", 400),
        ("POST", "/api/queues", b"{}", 405),
        ("GET", "/api/nothing/here", b"", 404),
        ("GET", "/api", b"", 404),
        ("GET", "/api/queues/%2F/", b"", 400),
        ("GET", "/api/queues?x=%zz", b"", 400),
    ],
)
async def test_malformed_requests_get_4xx(
    broker: Broker, method: str, path: str, raw: bytes, status: int
) -> None:
    r = await api(broker, method, path, raw_body=raw)
    assert r.status == status, r
    assert set(r.json()) == {"error", "code"}
    if status == 405:
        assert "GET" in r.headers["allow"]
    assert (await api(broker, "GET", "/api/overview")).status == 200
    assert not broker.queues


async def test_bodies_over_1_mib_are_413_and_up_to_it_work(broker: Broker) -> None:
    payload = "x" * (1024 * 1024 - 100)
    url = "/api/exchanges/%2F/amq.default/publish"
    assert (await api(broker, "POST", url, {"payload": payload})).status == 200
    # The head alone is enough for a refusal: the broker does not read the body.
    head = (
        f"POST {url} HTTP/1.1\r\nHost: localhost\r\nAuthorization: {_basic(GUEST)}\r\n"
        f"Content-Length: {1024 * 1024 + 1}\r\n\r\n"
    ).encode()
    r = await raw_http(broker.http_port, head)
    assert r.status == 413
    assert (await api(broker, "GET", "/api/overview")).status == 200


# A length that does not fit 64 bits is a parse error (400), not an oversized body (413).
@pytest.mark.parametrize(("length", "status"), [(b"\xb2", 400), (b"9" * 5000, 400), (b"-1", 400)])
async def test_odd_content_lengths_get_4xx(broker: Broker, length: bytes, status: int) -> None:
    head = b"PUT /api/queues/%2F/q HTTP/1.1\r\nHost: x\r\nContent-Length: " + length + b"\r\n\r\n"
    assert (await raw_http(broker.http_port, head)).status == status
    assert (await api(broker, "GET", "/api/overview")).status == 200


async def test_expect_100_continue_and_head(broker: Broker) -> None:
    body = json.dumps({"durable": False}).encode()
    request = (
        f"PUT /api/queues/%2F/cont HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n"
        f"Authorization: {_basic(GUEST)}\r\nExpect: 100-continue\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode()
    reader, writer = await asyncio.open_connection("127.0.0.1", broker.http_port)
    try:
        writer.write(request)
        async with asyncio.timeout(TIMEOUT_S):
            interim = await reader.readuntil(b"\r\n\r\n")
            assert interim.startswith(b"HTTP/1.1 100 Continue")
            writer.write(body)
            final = await reader.read()
    finally:
        writer.close()
        await writer.wait_closed()
    assert final.startswith(b"HTTP/1.1 201 ")
    r = await api(broker, "HEAD", "/api/queues/%2F/cont")
    assert r.status == 200 and r.body == b"" and int(r.headers["content-length"]) > 0


async def test_openapi_document_lists_every_endpoint(broker: Broker) -> None:
    doc = (await api(broker, "GET", "/api/openapi.json")).json()
    assert doc["openapi"].startswith("3.")
    ops = {(m.upper(), p) for p, methods in doc["paths"].items() for m in methods}
    assert ("POST", "/api/queues/{vhost}/{name}/get") in ops
    assert ("DELETE", "/api/bindings/{vhost}") in ops
    assert ("PUT", "/api/users/{name}") in ops
    assert ("PATCH", "/api/topics/{vhost}/{name}") in ops
    # Every route the API serves is described, and nothing else.
    served = build_api(broker)
    assert served is not None
    assert ops == {(r.method, "/api/" + "/".join(r.path)) for r in served.routes}


async def test_replay_dead_letters_over_http(broker: Broker, conn: wharf.Connection) -> None:
    await conn.declare_queue("api-dlq")
    await conn.declare_queue(
        "api-work",
        arguments={"x-dead-letter-exchange": "", "x-dead-letter-routing-key": "api-dlq"},
    )
    await conn.publish_many("", "api-work", [b"x", b"y"])
    for _ in range(2):
        m = await conn.get("api-work")
        assert m is not None
        await m.reject(requeue=False)
    r = await api(broker, "POST", "/api/queues/%2F/api-dlq/replay", {"reason": "expired"})
    assert r.status == 200 and r.json() == {"moved": 0}
    r = await api(broker, "POST", "/api/queues/%2F/api-dlq/replay", {"limit": 1})
    assert r.status == 200 and r.json() == {"moved": 1}
    r = await api(broker, "POST", "/api/queues/%2F/api-dlq/replay", {"limit": -1})
    assert r.status == 400
    r = await api(broker, "POST", "/api/queues/%2F/api-dlq/replay", {"target": "nope"})
    assert r.status == 404
    back = await conn.get("api-work")
    assert back is not None and back.body == b"x"


async def test_put_user_with_null_tags_is_refused(broker: Broker) -> None:
    """The schema says a list or "a,b": null is neither (it used to mean "keep them")."""
    r = await api(broker, "PUT", "/api/users/nulltags", {"password": "pw", "tags": None})
    assert r.status == 400, r
    r = await api(broker, "GET", "/api/users/nulltags")
    assert r.status == 404, r
