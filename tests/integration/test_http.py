"""The HTTP endpoints of a real broker: /metrics follows what clients do, probes answer."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Callable
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

import wharf
from wharf.broker.server import Broker

from ..helpers import wait_until

Connect = Callable[..., Any]

TIMEOUT_S = 5.0
# Well under the HTTP server's 10 s idle keep-alive timeout.
CLOSE_WITHIN_S = 3.0

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def _qname(prefix: str = "q") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


class Response:
    def __init__(self, status: int, headers: dict[str, str], body: bytes) -> None:
        self.status = status
        self.headers = headers
        self.body = body

    def json(self) -> Any:
        return json.loads(self.body)


def parse_response(data: bytes) -> Response:
    head, sep, body = data.partition(b"\r\n\r\n")
    assert sep, data
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ", 2)[1])
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return Response(status, headers, body)


async def http_request(port: int, path: str, method: str = "GET") -> Response:
    """One request on its own connection (Connection: close), read until EOF."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(
            f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n".encode()
        )
        async with asyncio.timeout(TIMEOUT_S):
            data = await reader.read()
    finally:
        writer.close()
        await writer.wait_closed()
    return parse_response(data)


async def scrape(broker: Broker) -> Samples:
    resp = await http_request(broker.http_port, "/metrics")
    assert resp.status == 200
    assert resp.headers["content-type"].startswith("text/plain")
    samples: Samples = {}
    for family in text_string_to_metric_families(resp.body.decode("utf-8")):
        for s in family.samples:
            samples[(s.name, frozenset(s.labels.items()))] = s.value
    return samples


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples[(name, frozenset(labels.items()))]


def counters(samples: Samples) -> dict[str, float]:
    return {
        key: value(samples, f"wharf_messages_{key}_total")
        for key in ("published", "delivered", "acked", "redelivered")
    }


# -- probes ----------------------------------------------------------------------------------


async def test_healthz_and_readyz_answer_200(broker: Broker) -> None:
    health = await http_request(broker.http_port, "/healthz")
    assert health.status == 200
    assert health.json() == {"status": "ok"}
    ready = await http_request(broker.http_port, "/readyz")
    assert ready.status == 200
    assert ready.json() == {"status": "ready"}


async def test_readyz_is_503_while_not_ready(
    broker: Broker, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(broker, "ready", False)
    resp = await http_request(broker.http_port, "/readyz")
    assert resp.status == 503
    assert resp.json()["status"] in ("starting", "stopping")
    # Liveness does not depend on readiness.
    assert (await http_request(broker.http_port, "/healthz")).status == 200


async def test_unknown_path_and_method(broker: Broker) -> None:
    assert (await http_request(broker.http_port, "/nope")).status == 404
    post = await http_request(broker.http_port, "/metrics", method="POST")
    assert post.status == 405
    assert "GET" in post.headers["allow"]
    head = await http_request(broker.http_port, "/healthz", method="HEAD")
    assert head.status == 200 and head.body == b""


async def test_garbage_on_the_http_port_gets_400_and_the_server_keeps_serving(
    broker: Broker,
) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", broker.http_port)
    writer.write(b"\x00\x01 not http at all\r\n\r\n")
    async with asyncio.timeout(TIMEOUT_S):
        data = await reader.read()
    writer.close()
    await writer.wait_closed()
    assert parse_response(data).status == 400
    assert (await http_request(broker.http_port, "/healthz")).status == 200


# -- metrics ---------------------------------------------------------------------------------


async def test_metrics_follow_what_clients_do(
    broker: Broker, conn: wharf.Connection, connect: Connect
) -> None:
    samples = await scrape(broker)
    assert value(samples, "wharf_connections") == 1
    base = counters(samples)

    q = _qname()
    await conn.declare_queue(q)
    await conn.publish_many("", q, [b"1", b"2", b"3"])
    samples = await scrape(broker)
    assert value(samples, "wharf_queue_messages_ready", queue=q, vhost="/") == 3
    assert value(samples, "wharf_queue_messages_unacked", queue=q, vhost="/") == 0
    assert value(samples, "wharf_queue_consumers", queue=q, vhost="/") == 0
    assert counters(samples)["published"] - base["published"] == 3

    consumer_conn: wharf.Connection = await connect()
    assert value(await scrape(broker), "wharf_connections") == 2
    async with consumer_conn.consume(q, prefetch=10) as messages:
        async with asyncio.timeout(TIMEOUT_S):
            got = [await anext(messages) for _ in range(3)]
        samples = await scrape(broker)
        assert value(samples, "wharf_queue_messages_ready", queue=q, vhost="/") == 0
        assert value(samples, "wharf_queue_messages_unacked", queue=q, vhost="/") == 3
        assert value(samples, "wharf_queue_consumers", queue=q, vhost="/") == 1
        assert counters(samples)["delivered"] - base["delivered"] == 3

        await got[0].ack()
        await got[1].ack()
        await got[2].nack(requeue=True)
        async with asyncio.timeout(TIMEOUT_S):
            again = await anext(messages)
        assert again.redelivered
        await again.ack()
        # Acks are one-way; a round trip makes sure the broker has handled them.
        await consumer_conn.declare_queue(q)
        samples = await scrape(broker)
        delta = {k: v - base[k] for k, v in counters(samples).items()}
        assert delta == {"published": 3, "delivered": 4, "acked": 3, "redelivered": 1}
        assert value(samples, "wharf_queue_messages_ready", queue=q, vhost="/") == 0
        assert value(samples, "wharf_queue_messages_unacked", queue=q, vhost="/") == 0

    samples = await scrape(broker)
    assert value(samples, "wharf_queue_consumers", queue=q, vhost="/") == 0
    await conn.delete_queue(q)
    samples = await scrape(broker)
    assert not any(
        name.startswith("wharf_queue_") and ("queue", q) in labels for name, labels in samples
    )


async def test_metrics_include_process_and_python_metrics(broker: Broker) -> None:
    samples = await scrape(broker)
    names = {name for name, _ in samples}
    assert "process_cpu_seconds_total" in names
    assert "process_resident_memory_bytes" in names
    assert "process_open_fds" in names
    assert "python_info" in names
    assert any(n.startswith("python_gc_") for n in names)
    for name in ("wharf_connections", "wharf_queues", "wharf_exchanges", "wharf_consumers"):
        assert name in names


async def test_metrics_scrape_counts_a_closed_connection_out(
    broker: Broker, connect: Connect
) -> None:
    c: wharf.Connection = await connect()
    assert value(await scrape(broker), "wharf_connections") == 1
    await c.close()

    async def counted_out() -> bool:
        return value(await scrape(broker), "wharf_connections") == 0

    await wait_until(counted_out, timeout=TIMEOUT_S, what="the connection counted out")


# -- shutdown ------------------------------------------------------------------------------


async def test_stop_closes_idle_keep_alive_http_connections(broker: Broker) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", broker.http_port)
    try:
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        async with asyncio.timeout(TIMEOUT_S):
            head = await reader.readuntil(b"\r\n\r\n")
            resp = parse_response(head)
            await reader.readexactly(int(resp.headers["content-length"]))
        assert resp.headers.get("connection", "keep-alive") == "keep-alive"  # 1.1 default
        await broker.stop()
        async with asyncio.timeout(CLOSE_WITHIN_S):
            assert await reader.read() == b""
    finally:
        writer.close()
        await writer.wait_closed()
