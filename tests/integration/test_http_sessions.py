"""Web UI sessions over real sockets: login (JSON and form) sets the session cookie, the
cookie authenticates reads, changes need the CSRF token, logout and password changes end
the session, and both are audited; the UI's files carry their CSP (broker/http/sessions.py,
api_auth.py, ui.py; docs/management.md, "Web UI")."""

from __future__ import annotations

import base64
import json
import ssl
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import trustme

from wharf.broker.config import UserConfig
from wharf.broker.security.passwords import hash_password
from wharf.broker.server import Broker

from ..conftest import make_settings

ADMIN_PASSWORD = "admin-secret-1"
MONITOR_PASSWORD = "monitor-secret-1"
USERS = [
    UserConfig("admin", hash_password(ADMIN_PASSWORD), ["administrator"]),
    UserConfig("monitor", hash_password(MONITOR_PASSWORD), ["monitoring"]),
]
TIMEOUT_S = 10.0
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
)


@pytest.fixture
def settings_overrides() -> dict[str, Any]:
    return {"users": USERS}


class Client:
    """Raw HTTP with the cookie handled by hand (aiohttp's jar ignores IP hosts)."""

    def __init__(self, session: aiohttp.ClientSession, base: str) -> None:
        self.http = session
        self.base = base
        self.cookie: str | None = None
        self.csrf: str | None = None

    async def call(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        headers: dict[str, str] | None = None,
        data: bytes | None = None,
    ) -> tuple[int, Any, Any]:
        h = {"X-Requested-With": "wharf-test", **(headers or {})}
        if self.cookie is not None:
            h["Cookie"] = f"wharf_session={self.cookie}"
        if body is not None:
            data = json.dumps(body).encode()
            h.setdefault("Content-Type", "application/json")
        async with self.http.request(method, self.base + path, data=data, headers=h) as r:
            raw = await r.read()
            return r.status, (json.loads(raw) if raw else None), r.headers

    async def login(self, user: str, password: str) -> dict[str, Any]:
        status, doc, headers = await self.call(
            "POST", "/api/auth/login", {"username": user, "password": password}
        )
        assert status == 200, doc
        cookie = headers["Set-Cookie"]
        self.cookie = cookie.split(";")[0].partition("=")[2]
        self.csrf = doc["csrf_token"]
        return {"doc": doc, "set_cookie": cookie}


@pytest.fixture
async def client(broker: Broker) -> Any:
    async with aiohttp.ClientSession() as s:
        yield Client(s, f"http://127.0.0.1:{broker.http_port}")


def audit_events(broker: Broker) -> list[dict[str, Any]]:
    path = Path(broker.data_path) / "audit.log"
    return [json.loads(line) for line in path.read_text("utf-8").splitlines()]


async def test_login_sets_a_strict_httponly_cookie_that_authenticates_reads(
    client: Client,
) -> None:
    got = await client.login("admin", ADMIN_PASSWORD)
    attrs = [a.strip() for a in got["set_cookie"].split(";")]
    assert {"HttpOnly", "SameSite=Strict", "Path=/"} <= set(attrs)
    assert "Secure" not in attrs  # plain HTTP; over HTTPS it is Secure
    assert client.cookie is not None and len(client.cookie) >= 43  # 256 random bits
    assert got["doc"]["name"] == "admin" and got["doc"]["idle_timeout_s"] == 1800
    status, doc, _ = await client.call("GET", "/api/overview")
    assert status == 200 and doc["product"] == "wharf"
    status, doc, _ = await client.call("GET", "/api/whoami")
    assert doc["csrf_token"] == client.csrf


async def test_a_change_with_the_cookie_needs_the_csrf_token(
    client: Client, broker: Broker
) -> None:
    await client.login("admin", ADMIN_PASSWORD)
    status, doc, _ = await client.call("PUT", "/api/queues/%2F/forged", {"durable": False})
    assert status == 403 and doc["code"] == 403 and "X-CSRF-Token" in doc["error"]
    assert "forged" not in broker.vhosts.get("/").topology.queues
    wrong = {"X-CSRF-Token": "x" * 43}
    status, doc, _ = await client.call("PUT", "/api/queues/%2F/forged", {}, headers=wrong)
    assert status == 403
    right = {"X-CSRF-Token": client.csrf or ""}
    status, doc, _ = await client.call("PUT", "/api/queues/%2F/real", {}, headers=right)
    assert status == 201, doc


async def test_basic_auth_needs_no_csrf_token(client: Client) -> None:
    auth = "Basic " + base64.b64encode(f"admin:{ADMIN_PASSWORD}".encode()).decode()
    status, doc, _ = await client.call(
        "PUT", "/api/queues/%2F/scripted", {}, headers={"Authorization": auth}
    )
    assert status == 201, doc


async def test_logout_ends_the_session_and_both_are_audited(client: Client, broker: Broker) -> None:
    await client.login("monitor", MONITOR_PASSWORD)
    status, _, _ = await client.call("POST", "/api/auth/logout")
    assert status == 403  # logout is a change: it needs the token too
    status, _, headers = await client.call(
        "POST", "/api/auth/logout", headers={"X-CSRF-Token": client.csrf or ""}
    )
    assert status == 200 and "Max-Age=0" in headers["Set-Cookie"]
    status, doc, headers = await client.call("GET", "/api/overview")
    assert status == 401 and "log in again" in doc["error"]
    assert "WWW-Authenticate" not in headers  # the UI shows its own form, not a dialog
    events = audit_events(broker)
    assert any(
        e["event"] == "auth.success" and e["user"] == "monitor" and e["mechanism"] == "LOGIN"
        for e in events
    )
    assert any(e["event"] == "auth.logout" and e["user"] == "monitor" for e in events)


async def test_a_wrong_password_gets_401_and_no_cookie(client: Client, broker: Broker) -> None:
    status, doc, headers = await client.call(
        "POST", "/api/auth/login", {"username": "admin", "password": "wrong"}
    )
    assert status == 401 and doc["code"] == 403 and "Set-Cookie" not in headers
    assert any(
        e["event"] == "auth.failure" and e["mechanism"] == "LOGIN" for e in audit_events(broker)
    )


async def test_login_takes_an_html_form(client: Client) -> None:
    form = f"username=admin&password={ADMIN_PASSWORD}".encode()
    status, doc, headers = await client.call(
        "POST",
        "/api/auth/login",
        data=form,
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    assert status == 200 and doc["csrf_token"] and "wharf_session=" in headers["Set-Cookie"]
    # ... and only the login: elsewhere a form is still 415.
    status, _, _ = await client.call(
        "PUT",
        "/api/queues/%2F/q",
        data=b"a=b",
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    assert status == 415


async def test_a_password_change_ends_the_users_sessions(client: Client) -> None:
    await client.login("monitor", MONITOR_PASSWORD)
    auth = "Basic " + base64.b64encode(f"admin:{ADMIN_PASSWORD}".encode()).decode()
    status, doc, _ = await client.call(
        "PUT",
        "/api/users/monitor",
        {"password": "another-secret-2", "tags": ["monitoring"]},
        headers={"Authorization": auth},
    )
    assert status == 200, doc
    status, _, _ = await client.call("GET", "/api/overview")
    assert status == 401


async def test_a_401_without_a_cookie_still_challenges_basic_clients(broker: Broker) -> None:
    url = f"http://127.0.0.1:{broker.http_port}/api/overview"
    async with aiohttp.ClientSession() as s, s.get(url) as r:
        assert r.status == 401 and r.headers["WWW-Authenticate"].startswith("Basic")


async def test_the_ui_is_served_with_its_csp_and_revalidated_by_etag(broker: Broker) -> None:
    base = f"http://127.0.0.1:{broker.http_port}"
    async with aiohttp.ClientSession() as s:
        async with s.get(base + "/") as r:
            body = await r.text()
            assert r.status == 200 and r.headers["Content-Type"].startswith("text/html")
            assert r.headers["Content-Security-Policy"] == CSP
            assert r.headers["X-Content-Type-Options"] == "nosniff"
            assert r.headers["Cache-Control"] == "no-cache"
            etag = r.headers["ETag"]
        assert "<script" in body and "<script>" not in body  # no inline script
        async with s.get(base + "/ui/index.html", headers={"If-None-Match": etag}) as r:
            assert r.status == 304
        async with s.get(base + "/ui/app.js") as r:
            assert r.status == 200 and r.headers["Content-Type"].startswith("text/javascript")
        async with s.get(base + "/ui/../broker/config.py") as r:
            assert r.status == 404
        async with s.post(base + "/ui/app.js") as r:
            assert r.status == 405


async def test_each_login_gets_its_own_session(client: Client) -> None:
    first = await client.login("admin", ADMIN_PASSWORD)
    second = await client.login("admin", ADMIN_PASSWORD)
    assert first["doc"]["csrf_token"] != second["doc"]["csrf_token"]
    assert first["set_cookie"] != second["set_cookie"]
    status, _, _ = await client.call("GET", "/api/whoami")  # the second one
    assert status == 200


async def test_over_https_the_cookie_is_secure_and_the_ui_is_served(tmp_path: Path) -> None:
    ca = trustme.CA()
    leaf = ca.issue_cert("127.0.0.1")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    leaf.private_key_pem.write_to_path(str(key))
    cert.write_bytes(b"".join(blob.bytes() for blob in leaf.cert_chain_pems))
    broker = Broker(
        make_settings(
            tmp_path,
            https_port=0,
            tls_port=0,
            tls_cert_file=str(cert),
            tls_key_file=str(key),
            users=USERS,
        )
    )
    await broker.start()
    try:
        context = ssl.create_default_context()
        ca.configure_trust(context)
        base = f"https://127.0.0.1:{broker.https_port}"
        connector = aiohttp.TCPConnector(ssl=context)
        async with aiohttp.ClientSession(connector=connector) as s:
            async with s.get(base + "/") as r:
                assert r.status == 200 and r.headers["Content-Security-Policy"] == CSP
            body = {"username": "admin", "password": ADMIN_PASSWORD}
            async with s.post(base + "/api/auth/login", json=body) as r:
                assert r.status == 200
                attrs = [a.strip() for a in r.headers["Set-Cookie"].split(";")]
            assert "Secure" in attrs and "HttpOnly" in attrs
    finally:
        await broker.stop()
