"""The admin plane against browsers and slow clients, over real sockets: Host, Origin and
Content-Type checks on /api, the security headers, and the HTTP connection caps (total,
per peer address) with the request-head timeout (docs/security.md, "HTTP API protections")."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import socket
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import trustme

from wharf.broker.config import Settings
from wharf.broker.server import Broker

from ..helpers import metric, scrape_metrics

TIMEOUT_S = 10.0
POLL_S = 0.01
GUEST_AUTH = "Basic " + base64.b64encode(b"guest:guest").decode()


class Answer:
    def __init__(self, data: bytes) -> None:
        head, sep, self.body = data.partition(b"\r\n\r\n")
        assert sep, data
        lines = head.decode("latin-1").split("\r\n")
        self.status = int(lines[0].split(" ", 2)[1])
        self.headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            self.headers[name.strip().lower()] = value.strip()

    def json(self) -> Any:
        return json.loads(self.body)

    def __repr__(self) -> str:
        return f"<{self.status} {self.body[:300]!r}>"


def request_bytes(
    method: str,
    path: str,
    *,
    host: str | None = "127.0.0.1",
    body: bytes = b"",
    content_type: str | None = "application/json",
    headers: dict[str, str] | None = None,
    auth: bool = True,
) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", "Connection: close"]
    if host is not None:
        lines.append(f"Host: {host}")
    if auth:
        lines.append(f"Authorization: {GUEST_AUTH}")
    if body:
        if content_type is not None:
            lines.append(f"Content-Type: {content_type}")
        lines.append(f"Content-Length: {len(body)}")
    lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


async def send(port: int, raw: bytes, source: str = "127.0.0.1") -> Answer:
    reader, writer = await asyncio.open_connection("127.0.0.1", port, local_addr=(source, 0))
    try:
        writer.write(raw)
        async with asyncio.timeout(TIMEOUT_S):
            return Answer(await reader.read())
    finally:
        writer.close()
        await writer.wait_closed()


async def call(broker: Broker, method: str, path: str, **kwargs: Any) -> Answer:
    body = kwargs.pop("json_body", None)
    if body is not None:
        kwargs["body"] = json.dumps(body).encode()
    return await send(broker.http_port, request_bytes(method, path, **kwargs))


async def queue_exists(broker: Broker, name: str) -> bool:
    return (await call(broker, "GET", f"/api/queues/%2F/{name}")).status == 200


# -- Content-Type ------------------------------------------------------------------------------


async def test_text_plain_form_post_is_refused_415_and_changes_nothing(broker: Broker) -> None:
    # What an HTML form with enctype="text/plain" sends: a body that parses as JSON.
    form = b'{"durable": false, "x": "="}'
    r = await call(broker, "PUT", "/api/queues/%2F/formq", body=form, content_type="text/plain")
    assert r.status == 415, r
    assert r.json()["code"] == 400
    assert "application/json" in r.json()["error"]
    r = await call(
        broker,
        "POST",
        "/api/exchanges/%2F/amq.default/publish",
        body=b'{"routing_key": "formq", "payload": "x"}',
        content_type="application/x-www-form-urlencoded",
    )
    assert r.status == 415, r
    r = await call(broker, "PUT", "/api/queues/%2F/formq", body=b"{}", content_type=None)
    assert r.status == 415, r
    assert not await queue_exists(broker, "formq")
    # JSON, with parameters or a +json subtype, is accepted; a write without a body needs none.
    r = await call(
        broker,
        "PUT",
        "/api/queues/%2F/formq",
        body=b"{}",
        content_type="application/json; charset=utf-8",
    )
    assert r.status == 201, r
    r = await call(broker, "DELETE", "/api/queues/%2F/formq", content_type="text/plain")
    assert r.status == 200, r


# -- Host (DNS rebinding) ----------------------------------------------------------------------


async def test_a_foreign_host_name_is_refused_but_monitoring_is_not(broker: Broker) -> None:
    evil = f"rebind.evil.example:{broker.http_port}"
    r = await call(broker, "GET", "/api/overview", host=evil)
    assert r.status == 403, r
    assert r.json()["code"] == 403
    assert "http_allowed_hosts" in r.json()["error"]
    r = await call(broker, "PUT", "/api/queues/%2F/rebound", json_body={}, host=evil)
    assert r.status == 403, r
    assert not await queue_exists(broker, "rebound")
    # Scrapers and probes reach the broker by any name (compose: "wharf:8680").
    for path in ("/metrics", "/healthz", "/readyz"):
        r = await call(broker, "GET", path, host="wharf:8680", auth=False)
        assert r.status == 200, (path, r)


@pytest.mark.parametrize(
    "host",
    [
        "127.0.0.1",
        "127.0.0.1:{port}",
        "localhost:{port}",
        "LOCALHOST.",
        "app.localhost:{port}",
        "[::1]:{port}",
        "192.0.2.7:{port}",  # any IP address: a browser cannot rebind an IP literal
        socket.gethostname(),
    ],
)
async def test_the_brokers_own_names_are_allowed(broker: Broker, host: str) -> None:
    r = await call(broker, "GET", "/api/overview", host=host.format(port=broker.http_port))
    assert r.status == 200, r


@pytest.mark.parametrize("settings_overrides", [{"http_allowed_hosts": ["wharf", ".example.com"]}])
async def test_http_allowed_hosts_adds_names(broker: Broker) -> None:
    for host in ("wharf:8680", "example.com", "api.example.com:443"):
        assert (await call(broker, "GET", "/api/overview", host=host)).status == 200, host
    for host in ("evil.example", "example.com.evil.example", "wharf.evil", "x@wharf"):
        assert (await call(broker, "GET", "/api/overview", host=host)).status == 403, host


# -- Origin (cross-site writes) ----------------------------------------------------------------


async def test_a_foreign_origin_cannot_write(broker: Broker) -> None:
    host = f"127.0.0.1:{broker.http_port}"
    for origin in (
        "http://evil.example",
        "null",
        f"https://{host}.evil.example",
        "http://localhost",
    ):
        r = await call(
            broker,
            "PUT",
            "/api/queues/%2F/xsite",
            json_body={},
            host=host,
            headers={"Origin": origin},
        )
        assert r.status == 403, (origin, r)
        assert "origin" in r.json()["error"]
    assert not await queue_exists(broker, "xsite")
    # Reads with a foreign Origin are answered, without CORS headers: the browser hides them.
    r = await call(broker, "GET", "/api/overview", host=host, headers={"Origin": "http://x.test"})
    assert r.status == 200 and "access-control-allow-origin" not in r.headers


async def test_same_origin_and_no_origin_writes_are_allowed(broker: Broker) -> None:
    host = f"127.0.0.1:{broker.http_port}"
    origin = {"Origin": f"http://{host}"}
    r = await call(broker, "PUT", "/api/queues/%2F/same", json_body={}, host=host, headers=origin)
    assert r.status == 201, r
    r = await call(broker, "PUT", "/api/queues/%2F/none", json_body={}, host=host)  # curl, SDKs
    assert r.status == 201, r
    r = await call(broker, "DELETE", "/api/queues/%2F/same", host=host, headers=origin)
    assert r.status == 200, r


@pytest.mark.parametrize(
    "settings_overrides", [{"http_allowed_origins": ["https://console.example.com"]}]
)
async def test_http_allowed_origins_may_write(broker: Broker) -> None:
    headers = {"Origin": "https://console.example.com"}
    r = await call(broker, "PUT", "/api/queues/%2F/console", json_body={}, headers=headers)
    assert r.status == 201, r
    headers = {"Origin": "https://other.example.com"}
    r = await call(broker, "PUT", "/api/queues/%2F/other", json_body={}, headers=headers)
    assert r.status == 403, r


# -- headers for browsers ----------------------------------------------------------------------


async def test_answers_carry_nosniff_and_no_framing(broker: Broker) -> None:
    for path, auth in (("/api/overview", True), ("/healthz", False), ("/api/nope", True)):
        r = await call(broker, "GET", path, auth=auth)
        assert r.headers["x-content-type-options"] == "nosniff", path
        assert r.headers["x-frame-options"] == "DENY", path
        assert "frame-ancestors 'none'" in r.headers["content-security-policy"], path
    r = await call(broker, "GET", "/api/overview", host="evil.example")
    assert r.status == 403 and r.headers["x-frame-options"] == "DENY"


# -- connection caps and the head timeout ------------------------------------------------------

SLOW_HEAD = b"GET /api/overview HTTP/1.1\r\nHost: localhost\r\nX-Slow: "  # never finished


class SlowClient:
    """A slowloris socket: a partial request head, the rest sent only when asked."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def open(cls, port: int, source: str) -> SlowClient:
        reader, writer = await asyncio.open_connection("127.0.0.1", port, local_addr=(source, 0))
        writer.write(SLOW_HEAD)
        return cls(reader, writer)

    async def finish(self) -> int | None:
        """Complete the request: its status, or None when the broker had closed it (with
        or without a 503: a socket closed with unread input may be reset)."""
        try:
            self.writer.write(b"1\r\nAuthorization: " + GUEST_AUTH.encode())
            self.writer.write(b"\r\nConnection: close\r\n\r\n")
            async with asyncio.timeout(TIMEOUT_S):
                data = await self.reader.read()
        except (ConnectionResetError, BrokenPipeError):
            return None
        if not data:
            return None
        status = Answer(data).status
        return None if status == 503 else status

    async def closed_by_broker(self) -> bool:
        try:
            async with asyncio.timeout(TIMEOUT_S):
                data = await self.reader.read()
        except ConnectionResetError:
            return True
        return data == b"" or data.startswith(b"HTTP/1.1 503 ")

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(OSError):
            await self.writer.wait_closed()


async def wait_until(predicate: Callable[[], Awaitable[bool]]) -> None:
    async with asyncio.timeout(TIMEOUT_S):
        while not await predicate():  # noqa: ASYNC110 (broker state, no event to await)
            await asyncio.sleep(POLL_S)


async def refused(port: int, raw: bytes, source: str) -> bool:
    """Whether a new socket is closed at once: with a 503 (code 506) when it is read before
    the close, else without an answer (its unread request makes the close a reset)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port, local_addr=(source, 0))
    try:
        writer.write(raw)
        async with asyncio.timeout(TIMEOUT_S):
            data = await reader.read()
    except ConnectionResetError:
        return True
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
    if not data:
        return True
    answer = Answer(data)
    return answer.status == 503 and answer.json()["code"] == 506


class KeepAlive:
    """One keep-alive HTTP/1.1 connection (plain or TLS) sending GETs one at a time: a
    scraper that holds its slot while the caps are full."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def open(cls, port: int, context: ssl.SSLContext | None = None) -> KeepAlive:
        reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=context)
        return cls(reader, writer)

    async def get(self, path: str) -> Answer:
        raw = request_bytes("GET", path, auth=path.startswith("/api"))
        self.writer.write(raw.replace(b"Connection: close", b"Connection: keep-alive"))
        async with asyncio.timeout(TIMEOUT_S):
            head = await self.reader.readuntil(b"\r\n\r\n")
            answer = Answer(head)
            answer.body = await self.reader.readexactly(int(answer.headers["content-length"]))
        return answer

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(OSError, ssl.SSLError):
            await self.writer.wait_closed()


async def metrics_text(broker: Broker, via: KeepAlive | None = None) -> str:
    """/metrics, on ``via`` or on a connection of its own."""
    if via is None:
        return await scrape_metrics(broker.http_port)
    answer = await via.get("/metrics")
    assert answer.status == 200, answer
    return answer.body.decode()


async def open_http(broker: Broker, via: KeepAlive | None = None) -> int:
    """HTTP connections open, from /metrics: without ``via``, not counting the scrape's
    own connection; ``via`` is one of those counted."""
    value = int(metric(await metrics_text(broker, via), "wharf_http_connections"))
    return value if via is not None else value - 1


async def refusals(broker: Broker, via: KeepAlive | None = None, **labels: str) -> int:
    text = await metrics_text(broker, via)
    return int(metric(text, "wharf_http_connections_refused_total", **labels))


async def http_open_is(broker: Broker, count: int, via: KeepAlive | None = None) -> bool:
    return await open_http(broker, via) == count


@pytest.mark.parametrize(
    "settings_overrides",
    [{"http_max_connections": 50, "http_max_connections_per_address": 20}],
)
async def test_slowloris_from_one_address_is_capped_and_others_keep_working(
    broker: Broker,
) -> None:
    port = broker.http_port
    slow = [await SlowClient.open(port, "127.0.0.2") for _ in range(200)]
    try:
        # Monitoring and the API from another address answer throughout.
        for path in ("/healthz", "/metrics", "/api/overview"):
            assert (await call(broker, "GET", path)).status == 200, path

        async def all_refused() -> bool:
            return await refusals(broker, reason="per_address") == 180

        await wait_until(all_refused)
        assert await open_http(broker) == 20
        assert await refusals(broker, reason="total") == 0
        statuses = await asyncio.gather(*(s.finish() for s in slow))
        assert statuses.count(200) == 20  # the per-address cap held; the rest were closed
        assert statuses.count(None) == 180
    finally:
        for s in slow:
            await s.close()
    await wait_until(lambda: http_open_is(broker, 0))


@pytest.mark.parametrize(
    "settings_overrides",
    [{"http_max_connections": 50, "http_max_connections_per_address": 20}],
)
async def test_the_total_cap_refuses_new_sockets_and_keeps_open_ones(broker: Broker) -> None:
    port = broker.http_port
    # A keep-alive client (a scraper): its slot stays its own while the cap is full.
    keep_alive = await KeepAlive.open(port)
    slow: list[SlowClient] = []
    try:
        assert (await keep_alive.get("/healthz")).status == 200
        for source in ("127.0.0.2", "127.0.0.3", "127.0.0.4"):
            slow += [await SlowClient.open(port, source) for _ in range(20)]

        async def eleven_refused() -> bool:
            return await refusals(broker, keep_alive, reason="total") >= 11

        await wait_until(eleven_refused)
        assert await open_http(broker, keep_alive) == 50
        # A new socket is refused at once; the open keep-alive one keeps working.
        assert await refused(port, request_bytes("GET", "/healthz", auth=False), "127.0.0.5")
        # A socket that has sent nothing yet reads the 503 before the close.
        quiet_reader, quiet_writer = await asyncio.open_connection("127.0.0.1", port)
        async with asyncio.timeout(TIMEOUT_S):
            busy = Answer(await quiet_reader.read())
        quiet_writer.close()
        await quiet_writer.wait_closed()
        assert busy.status == 503 and busy.json()["code"] == 506, busy
        assert (await keep_alive.get("/healthz")).status == 200
        assert await refusals(broker, keep_alive, reason="total") == 13
        assert await refusals(broker, keep_alive, reason="per_address") == 0
        statuses = await asyncio.gather(*(s.finish() for s in slow))
        assert statuses.count(200) == 49 and statuses.count(None) == 11
    finally:
        for s in slow:
            await s.close()
        await keep_alive.close()
    await wait_until(lambda: http_open_is(broker, 0))
    assert (await call(broker, "GET", "/healthz", auth=False)).status == 200


@pytest.mark.parametrize(
    "settings_overrides",
    [{"handshake_timeout_ms": 300, "http_max_connections_per_address": 5}],
)
async def test_slow_heads_and_bodies_are_closed_after_the_head_timeout(broker: Broker) -> None:
    port = broker.http_port
    slow = [await SlowClient.open(port, "127.0.0.2") for _ in range(5)]
    try:
        for s in slow:
            assert await s.closed_by_broker()  # their slots are free again
    finally:
        for s in slow:
            await s.close()
    await wait_until(lambda: http_open_is(broker, 0))
    # They had been admitted (none refused), and closed by the head timeout.
    assert await refusals(broker, reason="per_address") == 0
    assert await refusals(broker, reason="total") == 0
    # A complete head whose body never comes.
    head = request_bytes("PUT", "/api/queues/%2F/slowbody", body=b"{}")[:-2]
    head = head.replace(b"Content-Length: 2", b"Content-Length: 50")
    r = await send(port, head, "127.0.0.2")
    assert r.status == 408, r
    assert not await queue_exists(broker, "slowbody")
    assert (await call(broker, "GET", "/healthz", auth=False)).status == 200


@pytest.fixture
def server_pem(tmp_path: Path) -> tuple[str, str, str]:
    """(CA file, certificate file, key file) for 127.0.0.1, from trustme."""
    ca = trustme.CA()
    leaf = ca.issue_cert("127.0.0.1", "localhost")
    paths = [str(tmp_path / name) for name in ("ca.pem", "cert.pem", "key.pem")]
    ca.cert_pem.write_to_path(paths[0])
    leaf.private_key_pem.write_to_path(paths[2])
    with open(paths[1], "wb") as f:
        for blob in leaf.cert_chain_pems:
            f.write(blob.bytes())
    return paths[0], paths[1], paths[2]


@pytest.fixture
async def tls_broker(tmp_path: Path, server_pem: tuple[str, str, str]) -> AsyncIterator[Broker]:
    settings = Settings(
        host="127.0.0.1",
        port=0,
        http_port=0,
        amqp_port=0,
        amqps_port=0,
        https_port=0,
        tls_port=0,
        data_dir=str(tmp_path / "data"),
        tls_cert_file=server_pem[1],
        tls_key_file=server_pem[2],
        handshake_timeout_ms=500,
        http_max_connections=3,
        http_max_connections_per_address=3,
    )
    broker = Broker(settings)
    await broker.start()
    try:
        yield broker
    finally:
        await broker.stop()


async def test_https_shares_the_caps_and_the_checks(
    tls_broker: Broker, server_pem: tuple[str, str, str]
) -> None:
    broker = tls_broker
    context = ssl.create_default_context(cafile=server_pem[0])
    port = broker.https_port
    # Sockets that never start their TLS handshake: at most http_max_connections
    # handshakes wait at once (the fourth is closed at once), each for handshake_timeout_ms.
    silent = [await asyncio.open_connection("127.0.0.1", port) for _ in range(4)]

    async def tls_metric(name: str, **labels: str) -> int:
        return int(metric(await scrape_metrics(broker.http_port), name, **labels))

    async def one_handshake_refused() -> bool:
        refused = "wharf_tls_handshakes_refused_total"
        return await tls_metric(refused, listener="https", reason="total") == 1

    async def no_handshake_running() -> bool:
        running = "wharf_tls_handshakes_in_progress"
        return await tls_metric(running, listener="https") == 0

    await wait_until(one_handshake_refused)
    for silent_reader, silent_writer in silent:
        async with asyncio.timeout(TIMEOUT_S):
            assert await silent_reader.read() == b""
        silent_writer.close()
        await silent_writer.wait_closed()
    await wait_until(no_handshake_running)
    held: list[KeepAlive] = []
    try:
        for _ in range(3):  # keep-alive HTTPS clients, admitted after their handshakes
            held.append(await KeepAlive.open(port, context))
            assert (await held[-1].get("/healthz")).status == 200
        assert await open_http(broker, held[0]) == 3
        # The fourth, on HTTPS or plain HTTP, from the same address: refused.
        reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=context)
        async with asyncio.timeout(TIMEOUT_S):
            busy = Answer(await reader.read())
        writer.close()
        assert busy.status == 503, busy
        assert await refused(broker.http_port, request_bytes("GET", "/healthz"), "127.0.0.1")
        assert await refusals(broker, held[0], reason="total") == 2
    finally:
        for keep_alive in held:
            await keep_alive.close()
    await wait_until(lambda: http_open_is(broker, 0))
    # The cross-site checks apply on HTTPS too.
    reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=context)
    writer.write(
        request_bytes(
            "PUT", "/api/queues/%2F/tlsq", body=b"{}", headers={"Origin": "https://evil.example"}
        )
    )
    async with asyncio.timeout(TIMEOUT_S):
        answer = Answer(await reader.read())
    writer.close()
    assert answer.status == 403, answer
