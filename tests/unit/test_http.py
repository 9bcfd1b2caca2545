"""The HTTP endpoints over real sockets (port 0) against a fake broker."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from prometheus_client import CONTENT_TYPE_LATEST

from wharf.broker.alarms import Readiness, decide_readiness
from wharf.broker.http import server as http
from wharf.broker.http.metrics import BrokerCollector, build_registry
from wharf.broker.http.server import HttpServer, start_http_server, stop_http_server


@dataclass
class FakeQueue:
    name: str
    ready_count: int = 0
    unacked_count: int = 0
    consumer_count: int = 0


@dataclass
class FakeStats:
    published: int = 0
    delivered: int = 0
    acked: int = 0
    redelivered: int = 0
    unroutable: int = 0
    rejected: int = 0


@dataclass
class FakeBroker:
    connections: dict[int, object] = field(default_factory=dict)
    exchanges: dict[str, object] = field(default_factory=dict)
    queues: dict[str, FakeQueue] = field(default_factory=dict)
    stats: FakeStats = field(default_factory=FakeStats)
    ready: bool = False
    stopping: bool = False
    store_failure: str | None = None
    fd_alarm: bool = False
    alarms: set[str] = field(default_factory=set)

    def readiness(self) -> Readiness:
        return decide_readiness(
            serving=self.ready,
            stopping=self.stopping,
            store_failure=self.store_failure,
            fd_alarm=self.fd_alarm,
            alarms=self.alarms,
        )


@dataclass
class Response:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


@pytest.fixture
def broker() -> FakeBroker:
    return FakeBroker(
        connections={1: object(), 2: object()},
        exchanges={"": object(), "amq.direct": object(), "orders": object()},
        queues={
            "q1": FakeQueue("q1", ready_count=3, unacked_count=2, consumer_count=1),
            "q2": FakeQueue("q2", consumer_count=2),
        },
        stats=FakeStats(
            published=10, delivered=7, acked=5, redelivered=1, unroutable=2, rejected=4
        ),
    )


@pytest.fixture
async def server(broker: FakeBroker) -> AsyncIterator[HttpServer]:
    srv = await start_http_server(broker, "127.0.0.1", 0)
    try:
        yield srv
    finally:
        await stop_http_server(srv)


class Client:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    async def send(self, raw: bytes) -> None:
        self.writer.write(raw)
        await self.writer.drain()

    async def request(self, method: str, path: str, extra: str = "") -> Response:
        await self.send(f"{method} {path} HTTP/1.1\r\nHost: localhost\r\n{extra}\r\n".encode())
        return await self.read_response(head=method == "HEAD")

    async def read_response(self, head: bool = False) -> Response:
        status_line = await self.reader.readuntil(b"\r\n")
        _, status, _ = status_line.decode().split(" ", 2)
        headers: dict[str, str] = {}
        while (line := await self.reader.readuntil(b"\r\n")) != b"\r\n":
            name, _, value = line.decode().partition(":")
            headers[name.strip().lower()] = value.strip()
        length = 0 if head else int(headers["content-length"])
        return Response(int(status), headers, await self.reader.readexactly(length))

    async def closed_by_server(self) -> bool:
        return await self.reader.read() == b""

    async def close(self) -> None:
        self.writer.close()
        await self.writer.wait_closed()


@pytest.fixture
async def connect(server: HttpServer) -> AsyncIterator[Any]:
    clients: list[Client] = []
    port = server.port

    async def open_client() -> Client:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        client = Client(reader, writer)
        clients.append(client)
        return client

    yield open_client
    for c in clients:
        await c.close()


async def get(connect: Any, path: str, method: str = "GET") -> Response:
    client = await connect()
    return await client.request(method, path, "Connection: close\r\n")


async def test_metrics_exposes_wharf_names(connect: Any) -> None:
    r = await get(connect, "/metrics")
    assert r.status == 200
    assert r.headers["content-type"] == CONTENT_TYPE_LATEST
    text = r.body.decode()
    for line in [
        "wharf_connections 2.0",
        "wharf_exchanges 3.0",
        "wharf_queues 2.0",
        "wharf_consumers 3.0",
        'wharf_queue_messages_ready{queue="q1",vhost="/"} 3.0',
        'wharf_queue_messages_unacked{queue="q1",vhost="/"} 2.0',
        'wharf_queue_consumers{queue="q2",vhost="/"} 2.0',
        "wharf_messages_published_total 10.0",
        "wharf_messages_delivered_total 7.0",
        "wharf_messages_acked_total 5.0",
        "wharf_messages_redelivered_total 1.0",
        "wharf_messages_unroutable_total 2.0",
        "wharf_messages_nacked_total 4.0",
    ]:
        assert line in text.splitlines(), line
    assert "# TYPE wharf_messages_published_total counter" in text
    assert "process_" in text or "python_info" in text  # standard collectors are there


async def test_metrics_read_at_scrape_time(connect: Any, broker: FakeBroker) -> None:
    broker.stats.published = 99
    broker.queues["q3"] = FakeQueue("q3", ready_count=8)
    text = (await get(connect, "/metrics")).body.decode()
    assert "wharf_messages_published_total 99.0" in text
    assert 'wharf_queue_messages_ready{queue="q3",vhost="/"} 8.0' in text


async def test_healthz(connect: Any) -> None:
    r = await get(connect, "/healthz")
    assert (r.status, r.json()) == (200, {"status": "ok"})
    assert r.headers["content-type"] == "application/json"


async def test_readyz_follows_broker_state(connect: Any, broker: FakeBroker) -> None:
    r = await get(connect, "/readyz")
    assert (r.status, r.json()) == (503, {"status": "starting"})
    broker.ready = True
    r = await get(connect, "/readyz")
    assert (r.status, r.json()) == (200, {"status": "ready"})
    broker.alarms = {"memory", "disk"}
    r = await get(connect, "/readyz")
    assert (r.status, r.json()) == (503, {"status": "blocked", "alarms": ["disk", "memory"]})
    broker.fd_alarm = True
    r = await get(connect, "/readyz")
    assert (r.status, r.json()) == (503, {"status": "blocked", "alarms": ["fds"]})
    broker.store_failure = "fsync failed"
    r = await get(connect, "/readyz")
    body = {"status": "failed", "reason": "message store: fsync failed"}
    assert (r.status, r.json()) == (503, body)
    broker.ready, broker.stopping = False, True
    r = await get(connect, "/readyz")
    assert (r.status, r.json()) == (503, {"status": "stopping"})


async def test_unknown_path_is_404_json(connect: Any) -> None:
    r = await get(connect, "/nope?x=1")
    assert r.status == 404
    assert r.json() == {"error": "not found", "path": "/nope"}


async def test_other_methods_are_405(connect: Any) -> None:
    client = await connect()
    r = await client.request("POST", "/metrics")
    assert r.status == 405
    assert r.headers["allow"] == "GET, HEAD"


async def test_post_body_is_skipped_and_connection_reused(connect: Any) -> None:
    client = await connect()
    await client.send(b"DELETE /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello")
    assert (await client.read_response()).status == 405
    assert (await client.request("GET", "/healthz")).status == 200


async def test_head_has_headers_only(connect: Any) -> None:
    client = await connect()
    r = await client.request("HEAD", "/healthz")
    assert r.status == 200 and int(r.headers["content-length"]) > 0 and r.body == b""
    assert (await client.request("GET", "/healthz")).json() == {"status": "ok"}


async def test_keep_alive_serves_several_requests(connect: Any) -> None:
    client = await connect()
    for path in ["/healthz", "/readyz", "/metrics", "/missing"]:
        r = await client.request("GET", path)
        assert r.headers.get("connection", "keep-alive") == "keep-alive"  # 1.1's default
    r = await client.request("GET", "/healthz", "Connection: close\r\n")
    assert r.headers["connection"] == "close"
    assert await client.closed_by_server()


async def test_pipelined_requests(connect: Any) -> None:
    client = await connect()
    await client.send(
        b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\nGET /readyz HTTP/1.1\r\nHost: x\r\n\r\n"
    )
    assert (await client.read_response()).status == 200
    assert (await client.read_response()).status == 503


async def test_http_10_closes_by_default(connect: Any) -> None:
    client = await connect()
    await client.send(b"GET /healthz HTTP/1.0\r\n\r\n")
    r = await client.read_response()
    assert r.status == 200 and r.headers.get("connection", "close") == "close"
    assert await client.closed_by_server()


@pytest.mark.parametrize(
    ("raw", "status"),
    [
        (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03garbage\r\n\r\n", 400),  # TLS hello
        (b"GET /healthz\r\n\r\n", 505),  # HTTP/0.9
        (b"GET /healthz HTTP/2.0\r\nHost: x\r\n\r\n", 505),
        (b"GET /healthz HTTP/1.1\r\nno colon here\r\n\r\n", 400),
        (b"GET /healthz HTTP/1.1\r\nContent-Length: abc\r\n\r\n", 400),
        (b"POST /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: 99999999\r\n\r\n", 413),
        (b"POST /api/queues/%2F/q HTTP/1.1\r\nHost: x\r\nContent-Length: 99999999\r\n\r\n", 413),
        (b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\n\r\n", 400),  # request line too long
        (b"GET /healthz HTTP/1.1\r\nX-A: " + b"b" * 9000 + b"\r\n\r\n", 400),  # huge header
        (b"GET /healthz HTTP/1.1\r\n" + b"X-A: b\r\n" * 1200 + b"\r\n", 400),  # too many
    ],
)
async def test_malformed_requests_get_4xx_and_server_survives(
    connect: Any, raw: bytes, status: int
) -> None:
    bad = await connect()
    other = await connect()  # a well-behaved client mid-keep-alive is not disturbed
    assert (await other.request("GET", "/healthz")).status == 200
    await bad.send(raw)
    r = await bad.read_response()
    assert r.status == status
    assert await bad.closed_by_server()
    assert (await other.request("GET", "/healthz")).status == 200
    assert (await get(connect, "/healthz")).status == 200


async def test_malformed_requests_are_not_logged_as_errors(
    connect: Any, caplog: pytest.LogCaptureFixture
) -> None:
    bad = await connect()
    await bad.send(b"GET /healthz HTTP/1.1\r\nno colon here\r\n\r\n")
    assert (await bad.read_response()).status == 400
    assert await bad.closed_by_server()
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


async def test_own_refusals_are_json(connect: Any) -> None:
    bad = await connect()
    await bad.send(b"POST /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 99999999\r\n\r\n")
    r = await bad.read_response()
    assert r.status == 413 and r.json() == {"error": "request body exceeds 65536 bytes"}


async def test_chunked_bodies_are_accepted_and_skipped(connect: Any) -> None:
    client = await connect()
    await client.send(
        b"POST /healthz HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"5\r\nhello\r\n0\r\n\r\n"
    )
    assert (await client.read_response()).status == 405
    assert (await client.request("GET", "/healthz")).status == 200


async def test_truncated_request_and_silent_clients_do_not_hurt(connect: Any) -> None:
    half = await connect()
    await half.send(b"GET /healthz HTTP/1.1\r\nHost:")
    half.writer.write_eof()
    assert await half.closed_by_server()  # no request was made: no answer, just closed
    silent = await connect()
    await silent.close()
    assert (await get(connect, "/healthz")).status == 200


async def test_partial_head_is_closed_after_head_timeout(
    broker: FakeBroker, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(http, "HEAD_TIMEOUT_S", 0.05)
    srv = await start_http_server(broker, "127.0.0.1", 0)
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", srv.port)
        slow = Client(reader, writer)
        await slow.send(b"GET /hea")  # never finishes its request line
        assert await slow.closed_by_server()
        await slow.close()
        reader, writer = await asyncio.open_connection("127.0.0.1", srv.port)
        fine = Client(reader, writer)
        assert (await fine.request("GET", "/healthz", "Connection: close\r\n")).status == 200
        await fine.close()
    finally:
        await stop_http_server(srv)


async def test_stop_closes_idle_keep_alive_connections(broker: FakeBroker) -> None:
    srv = await start_http_server(broker, "127.0.0.1", 0)
    port = srv.port
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    client = Client(reader, writer)
    assert (await client.request("GET", "/healthz")).status == 200
    await stop_http_server(srv)
    assert await client.closed_by_server()
    await client.close()
    with pytest.raises(OSError):  # nothing listens on the port any more
        await asyncio.open_connection("127.0.0.1", port)


async def test_metrics_collector_failure_is_500(
    connect: Any, broker: FakeBroker, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(broker, "stats", None)  # the broker breaks its side of the interface
    r = await get(connect, "/metrics")
    assert r.status == 500
    assert (await get(connect, "/healthz")).status == 200


def test_registry_names_without_server(broker: FakeBroker) -> None:
    names = {m.name for m in BrokerCollector(broker).collect()}
    assert {"wharf_connections", "wharf_queues", "wharf_messages_nacked"} <= names
    registry = build_registry(broker)
    assert registry.get_sample_value("wharf_messages_acked_total") == 5.0
    assert (
        registry.get_sample_value("wharf_queue_messages_ready", {"queue": "q1", "vhost": "/"})
        == 3.0
    )
