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

import wharf
from wharf.broker.config import UserConfig
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
    assert (await http(port, "PUT", "/api/policies/p", "admin", ADMIN_PASSWORD, policy))[0] == 201
    assert (await http(port, "DELETE", "/api/policies/p", "admin", ADMIN_PASSWORD))[0] == 200
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
    from wharf.broker.config import Settings  # noqa: PLC0415 (this test only)

    target = tmp_path / "audit" / "wharf-audit.jsonl"
    b = Broker(
        Settings(
            host="127.0.0.1",
            port=0,
            http_port=0,
            amqp_port=0,
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
