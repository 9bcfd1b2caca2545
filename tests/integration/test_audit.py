"""The audit log over real sockets: events and their fields, rotation, no password in it
(security/audit.py; docs/security.md, "Audit log")."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import trustme

import wharf
from wharf.broker.config import Settings, UserConfig
from wharf.broker.security import auth, throttle
from wharf.broker.security.passwords import hash_password
from wharf.broker.server import Broker

ADMIN_PASSWORD = "Adm1n-pw-XYZZY"
MONITOR_PASSWORD = "M0nitor-pw-PLUGH"
NEW_PASSWORD = "N3w-user-pw-FROB"
WRONG_PASSWORD = "Wr0ng-pw-GRUE"
SECRETS = (ADMIN_PASSWORD, MONITOR_PASSWORD, NEW_PASSWORD, WRONG_PASSWORD)
USERS = [
    UserConfig("admin", hash_password(ADMIN_PASSWORD), ["administrator"]),
    UserConfig("monitor", hash_password(MONITOR_PASSWORD), ["monitoring"]),
]
TIMEOUT_S = 5.0


async def http(
    port: int, method: str, path: str, user: str, password: str, body: Any = None
) -> tuple[int, bytes]:
    """One request on its own connection: (status, body)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    data = b"" if body is None else json.dumps(body).encode()
    try:
        writer.write(
            f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Basic {token}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(data)}\r\n"
            "Connection: close\r\n\r\n".encode()
            + data
        )
        response = await reader.read()
    finally:
        writer.close()
        with contextlib.suppress(Exception):
            await writer.wait_closed()
    head, _, payload = response.partition(b"\r\n\r\n")
    return int(head.split(b" ")[1]), payload


def audit_lines(broker: Broker) -> list[dict[str, Any]]:
    path = Path(broker.data_path) / "audit.log"
    return [json.loads(line) for line in path.read_text("utf-8").splitlines()]


async def wait_for_event(broker: Broker, match: Callable[[dict[str, Any]], bool]) -> None:
    async with asyncio.timeout(TIMEOUT_S):
        while not any(match(e) for e in audit_lines(broker)):  # noqa: ASYNC110
            await asyncio.sleep(0.01)


def only(lines: list[dict[str, Any]], event: str, **fields: Any) -> dict[str, Any]:
    found = [e for e in lines if e["event"] == event and fields.items() <= e.items()]
    assert len(found) == 1, (event, fields, lines)
    return found[0]


@pytest.fixture
def settings_overrides() -> dict[str, Any]:
    return {"users": USERS}


async def test_logins_connections_and_changes_are_audited(broker: Broker) -> None:
    url = f"wharf://admin:{ADMIN_PASSWORD}@127.0.0.1:{broker.port}"
    c = await wharf.connect(url)
    await c.set_policy("ttl", "^t\\.", {"message-ttl": 1000})
    await c.delete_policy("ttl")
    await c.close()
    with pytest.raises(wharf.AccessRefused):
        await wharf.connect(f"wharf://admin:{WRONG_PASSWORD}@127.0.0.1:{broker.port}")
    port = broker.http_port
    assert (await http(port, "GET", "/api/whoami", "monitor", WRONG_PASSWORD))[0] == 401
    body = {"password": NEW_PASSWORD, "tags": "monitoring"}
    assert (await http(port, "PUT", "/api/users/bob", "admin", ADMIN_PASSWORD, body))[0] == 201
    body = {"tags": ["management"]}
    assert (await http(port, "PUT", "/api/users/bob", "admin", ADMIN_PASSWORD, body))[0] == 200
    body = {"password": NEW_PASSWORD + "2"}
    assert (await http(port, "PUT", "/api/users/bob", "admin", ADMIN_PASSWORD, body))[0] == 200
    assert (await http(port, "DELETE", "/api/users/bob", "admin", ADMIN_PASSWORD))[0] == 200
    policy = {"pattern": "^q", "definition": {"max-length": 5}}
    assert (await http(port, "PUT", "/api/policies/%2F/p", "admin", ADMIN_PASSWORD, policy))[
        0
    ] == 201
    assert (await http(port, "DELETE", "/api/policies/%2F/p", "admin", ADMIN_PASSWORD))[0] == 200
    assert (await http(port, "GET", "/api/users", "monitor", MONITOR_PASSWORD))[0] == 403
    await wait_for_event(broker, lambda e: e["event"] == "connection.close")

    lines = audit_lines(broker)
    assert all(e["ts"].endswith("Z") for e in lines)
    native = {"user": "admin", "protocol": "native", "mechanism": "PLAIN"}
    ok = only(lines, "auth.success", **native)
    assert ok["peer"].startswith("127.0.0.1:")
    failed = only(lines, "auth.failure", **native)
    assert failed["reason"] == "invalid credentials"
    only(lines, "auth.failure", user="monitor", protocol="http", mechanism="BASIC")
    opened = only(lines, "connection.open", user="admin", protocol="native")
    assert opened["tls_version"] is None and opened["peer"] == ok["peer"]
    closed = only(lines, "connection.close", connection=opened["connection"])
    assert closed["duration_s"] >= 0
    actor = {"actor": "admin", "protocol": "native"}
    only(lines, "policy.set", policy="ttl", pattern="^t\\.", **actor)
    only(lines, "policy.deleted", policy="ttl", **actor)
    actor = {"actor": "admin", "protocol": "http", "peer": "127.0.0.1"}
    only(lines, "user.created", user="bob", tags=["monitoring"], **actor)
    updates = [e for e in lines if e["event"] == "user.updated"]
    assert [(e["previous_tags"], e["tags"], e["password_changed"]) for e in updates] == [
        (["monitoring"], ["management"], False),
        (["management"], ["management"], True),
    ]
    only(lines, "user.deleted", user="bob", **actor)
    only(lines, "policy.set", policy="p", definition={"max-length": 5}, **actor)
    only(lines, "policy.deleted", policy="p", **actor)
    only(lines, "access.denied", actor="monitor", tag="administrator", protocol="http")


async def test_auth_failures_metric_by_mechanism(broker: Broker) -> None:
    with pytest.raises(wharf.AccessRefused):
        await wharf.connect(f"wharf://nobody:{WRONG_PASSWORD}@127.0.0.1:{broker.port}")
    assert (await http(broker.http_port, "GET", "/api/whoami", "nobody", WRONG_PASSWORD))[0] == 401
    reader, writer = await asyncio.open_connection("127.0.0.1", broker.http_port)
    writer.write(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    text = (await reader.read()).decode()
    writer.close()
    assert 'wharf_auth_failures_total{mechanism="PLAIN"} 1.0' in text
    assert 'wharf_auth_failures_total{mechanism="BASIC"} 1.0' in text


@pytest.mark.parametrize(
    "settings_overrides",
    [{"users": USERS, "audit_log_max_bytes": 4096, "audit_log_backups": 2}],
)
async def test_audit_log_rotates_by_size(broker: Broker) -> None:
    for _ in range(80):  # ~150 bytes per success line: several rotations
        assert (await http(broker.http_port, "GET", "/api/whoami", "admin", ADMIN_PASSWORD))[
            0
        ] == 200
    data = Path(broker.data_path)
    files = sorted(p.name for p in await asyncio.to_thread(lambda: list(data.glob("audit.log*"))))
    assert files == ["audit.log", "audit.log.1", "audit.log.2"]  # 2 backups kept, no more
    for name in files:
        text = (data / name).read_text("utf-8")
        assert len(text.encode()) <= 4096
        assert all(json.loads(line)["event"] == "auth.success" for line in text.splitlines())


@pytest.mark.parametrize("settings_overrides", [{"users": USERS, "audit_log_file": ""}])
async def test_empty_audit_log_file_turns_it_off(broker: Broker) -> None:
    c = await wharf.connect(f"wharf://admin:{ADMIN_PASSWORD}@127.0.0.1:{broker.port}")
    await c.close()
    assert not await asyncio.to_thread(lambda: list(Path(broker.data_path).glob("audit.log*")))
    assert not broker.audit.enabled


async def test_audit_log_file_elsewhere(tmp_path: Path) -> None:
    target = tmp_path / "audit" / "wharf-audit.jsonl"
    b = Broker(
        Settings(
            host="127.0.0.1",
            port=0,
            http_port=0,
            amqp_port=0,
            amqps_port=0,
            data_dir=str(tmp_path / "data"),
            audit_log_file=str(target),
        )
    )
    await b.start()
    try:
        c = await wharf.connect(f"wharf://guest:guest@127.0.0.1:{b.port}")
        await c.close()
    finally:
        await b.stop()
    events = [json.loads(line)["event"] for line in target.read_text("utf-8").splitlines()]
    assert events[:2] == ["auth.success", "connection.open"]
    assert not (tmp_path / "data" / "audit.log").exists()


async def test_no_password_in_the_audit_or_broker_log(
    broker: Broker, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    for module in (auth, throttle):
        monkeypatch.setattr(module, "FAILURE_DELAY_BASE_S", 0.001, raising=False)
    port = broker.http_port
    with caplog.at_level(logging.DEBUG):
        for password in (WRONG_PASSWORD, ADMIN_PASSWORD):
            with contextlib.suppress(wharf.AccessRefused):
                c = await wharf.connect(f"wharf://admin:{password}@127.0.0.1:{broker.port}")
                await c.close()
            await http(port, "GET", "/api/whoami", "admin", password)
            await http(port, "GET", "/api/whoami", password, password)  # password as a name
        body = {"password": NEW_PASSWORD}
        assert (await http(port, "PUT", "/api/users/bob", "admin", ADMIN_PASSWORD, body))[0] == 201
        await wait_for_event(broker, lambda e: e["event"] == "connection.close")
    text = (Path(broker.data_path) / "audit.log").read_text("utf-8")
    broker_log = "\n".join(r.getMessage() for r in caplog.records)
    assert "user.created" in text and "auth.failure" in text
    for secret in SECRETS:  # WRONG_PASSWORD was also sent as a user name
        assert secret not in text and secret not in broker_log
    assert '"user": "<unknown>", "user_ref": "' in text


# -- every event of the audit trail, with its fields -------------------------------------

APP_PASSWORD = "App-pw-XYZZY-42"
# Fields every line of a kind must carry (besides ts and event), issue 13 part 6.
REQUIRED: dict[str, set[str]] = {
    "auth.success": {"user", "peer", "protocol", "mechanism"},
    "auth.failure": {"user", "peer", "protocol", "mechanism", "reason"},
    "connection.open": {"connection", "user", "vhost", "peer", "protocol", "tls_version"},
    "connection.close": {
        "connection", "user", "vhost", "peer", "protocol", "tls_version", "duration_s"
    },
    "access.denied": {"actor", "peer", "protocol"},
    "user.created": {"actor", "peer", "protocol", "user", "tags"},
    "user.updated": {"actor", "peer", "protocol", "user", "tags", "previous_tags"},
    "user.deleted": {"actor", "peer", "protocol", "user"},
    "permission.set": {"actor", "peer", "protocol", "vhost", "user", "configure", "write", "read"},
    "permission.deleted": {"actor", "peer", "protocol", "vhost", "user"},
    "topic_permission.set": {
        "actor", "peer", "protocol", "vhost", "user", "exchange", "write", "read"
    },
    "topic_permission.deleted": {"actor", "peer", "protocol", "vhost", "user", "exchange"},
    "policy.set": {"actor", "peer", "protocol", "policy", "pattern", "definition"},
    "policy.deleted": {"actor", "peer", "protocol", "policy"},
    "tls.reloaded": {"actor", "peer", "protocol", "cert_file", "not_after"},
    "tls.reload_failed": {"actor", "peer", "protocol", "cert_file", "error"},
}  # fmt: skip


@pytest.fixture
def tls_files(tmp_path: Path) -> tuple[str, str, str]:
    """(CA, certificate, key) files for 127.0.0.1, from trustme."""
    ca = trustme.CA()
    ca_file, cert_file, key_file = (str(tmp_path / n) for n in ("ca.pem", "c.pem", "k.pem"))
    ca.cert_pem.write_to_path(ca_file)
    leaf = ca.issue_cert("127.0.0.1")
    leaf.private_key_pem.write_to_path(key_file)
    Path(cert_file).write_bytes(b"".join(blob.bytes() for blob in leaf.cert_chain_pems))
    return ca_file, cert_file, key_file


async def test_every_audited_event_is_written_with_its_fields(
    tmp_path: Path, tls_files: tuple[str, str, str]
) -> None:
    ca_file, cert_file, key_file = tls_files
    b = Broker(
        Settings(
            host="127.0.0.1",
            port=0,
            http_port=0,
            amqp_port=0,  # 5672 and 5671 may be taken here
            amqps_port=0,
            tls_port=0,
            https_port=0,
            tls_cert_file=cert_file,
            tls_key_file=key_file,
            data_dir=str(tmp_path / "data"),
            users=USERS,
        )
    )
    await b.start()
    try:
        port = b.http_port

        async def admin(method: str, path: str, body: Any = None) -> int:
            return (await http(port, method, path, "admin", ADMIN_PASSWORD, body))[0]

        # Users, permissions and topic permissions, as an administrator over HTTP.
        assert await admin("PUT", "/api/users/app", {"password": APP_PASSWORD, "tags": []}) == 201
        perm = {"configure": "^app\\.", "write": "^app\\.", "read": "^app\\."}
        assert await admin("PUT", "/api/permissions/%2F/app", perm) == 201
        topic = {"exchange": "amq.topic", "write": "^app\\.", "read": ".*"}
        assert await admin("PUT", "/api/topic-permissions/%2F/app", topic) == 201
        policy = {"pattern": "^app\\.", "definition": {"max-length": 5}}
        assert await admin("PUT", "/api/policies/%2F/cap", policy) == 201
        # The app over TLS: a login, a refused operation, the connection's open and close.
        url = f"wharfs://app:{APP_PASSWORD}@127.0.0.1:{b.tls_port}?cafile={ca_file}"
        app = await wharf.connect(url)
        await app.declare_queue("app.q")
        with pytest.raises(wharf.AccessRefused, match="queue 'other.q'"):
            await app.declare_queue("other.q")
        status, listed = await http(port, "GET", "/api/connections", "admin", ADMIN_PASSWORD)
        assert status == 200
        (app_conn,) = [c for c in json.loads(listed) if c["user"] == "app"]
        await app.close()
        with pytest.raises(wharf.AccessRefused):
            await wharf.connect(f"wharf://app:{WRONG_PASSWORD}@127.0.0.1:{b.port}")
        # Refusals on the API, then the changes undone.
        assert (await http(port, "GET", "/api/whoami", "monitor", WRONG_PASSWORD))[0] == 401
        assert (await http(port, "GET", "/api/users", "monitor", MONITOR_PASSWORD))[0] == 403
        assert await admin("DELETE", "/api/policies/%2F/cap") == 200
        assert await admin("DELETE", "/api/topic-permissions/%2F/app?exchange=amq.topic") == 200
        assert await admin("DELETE", "/api/permissions/%2F/app") == 200
        assert await admin("PUT", "/api/users/app", {"tags": ["management"]}) == 200
        assert await admin("DELETE", "/api/users/app") == 200
        # TLS: a reload, and one that fails (the old certificate stays).
        assert await admin("POST", "/api/tls/reload") == 200
        await asyncio.to_thread(Path(key_file).write_text, "not a key")
        assert await admin("POST", "/api/tls/reload") == 409
        await wait_for_event(b, lambda e: e["event"] == "connection.close")
    finally:
        await b.stop()

    lines = audit_lines(b)
    assert all(isinstance(e["ts"], str) and e["ts"].endswith("Z") for e in lines)
    for e in lines:
        missing = REQUIRED.get(e["event"], set()) - e.keys()
        assert not missing, (e, missing)
    assert set(REQUIRED) <= {e["event"] for e in lines}, {e["event"] for e in lines}
    assert not any(APP_PASSWORD in json.dumps(e) for e in lines)

    http_admin = {"actor": "admin", "peer": "127.0.0.1", "protocol": "http"}
    tls_login = only(
        lines, "auth.success", user="app", protocol="native", mechanism="SCRAM-SHA-256"
    )
    opened = only(lines, "connection.open", user="app")
    # The protocol's name is the same in the audit log and in GET /api/connections.
    assert app_conn["protocol"] == opened["protocol"] == "native"
    assert opened["vhost"] == "/" and opened["peer"] == tls_login["peer"] == app_conn["peer"]
    assert opened["tls_version"] in ("TLSv1.2", "TLSv1.3")
    closed = only(lines, "connection.close", connection=opened["connection"])
    assert {k: closed[k] for k in ("user", "vhost", "peer", "protocol", "tls_version")} == {
        k: opened[k] for k in ("user", "vhost", "peer", "protocol", "tls_version")
    }
    # The SDK tries SCRAM, then PLAIN once (loopback): a wrong password is refused twice.
    only(lines, "auth.failure", user="app", protocol="native", mechanism="SCRAM-SHA-256")
    only(lines, "auth.failure", user="app", protocol="native", mechanism="PLAIN")
    only(lines, "auth.failure", user="monitor", protocol="http", mechanism="BASIC")
    denied = only(lines, "access.denied", actor="app", resource_kind="queue")
    assert denied["protocol"] == "native" and denied["vhost"] == "/"
    assert denied["peer"] == opened["peer"] and "other.q" in denied["reason"]
    only(lines, "access.denied", actor="monitor", protocol="http", tag="administrator")
    only(lines, "user.created", user="app", tags=[], **http_admin)
    only(lines, "user.updated", user="app", tags=["management"], previous_tags=[], **http_admin)
    only(lines, "user.deleted", user="app", **http_admin)
    only(lines, "permission.set", vhost="/", user="app", **perm, **http_admin)
    only(lines, "permission.deleted", vhost="/", user="app", **http_admin)
    only(lines, "topic_permission.set", vhost="/", user="app", **topic, **http_admin)
    only(lines, "topic_permission.deleted", exchange="amq.topic", user="app", **http_admin)
    only(lines, "policy.set", policy="cap", pattern="^app\\.", **http_admin)
    only(lines, "policy.deleted", policy="cap", **http_admin)
    only(lines, "tls.reloaded", cert_file=cert_file, **http_admin)
    failed = only(lines, "tls.reload_failed", cert_file=cert_file, **http_admin)
    assert failed["error"]
