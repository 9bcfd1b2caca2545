"""A failed fsync is never retried: waiting publishes are nacked, consumers keep going.

The failure is injected at the one fault point of durable writes (``wharf.broker.store.fsio``)."""

from __future__ import annotations

import asyncio
import errno
import json

import pytest

import wharf
from wharf.broker.server import Broker
from wharf.broker.store.fsio import FAULTS

# Injected at the fsio fault point, as a dying disk would answer an fsync.
DISK_ERROR = OSError(errno.EIO, "injected I/O error")


async def test_fsync_failure_nacks_persistent_publishes_and_keeps_serving(
    broker: Broker, conn: wharf.Connection
) -> None:
    await conn.declare_queue("dq", durable=True)
    await conn.declare_queue("tq")
    await conn.publish("", "dq", b"before", persistent=True)
    assert broker.store is not None
    with (
        FAULTS.failing("fsync", DISK_ERROR, under=broker.store.directory),
        pytest.raises(wharf.ResourceError) as info,
    ):
        await conn.publish("", "dq", b"lost-disk", persistent=True)
    assert info.value.code == 506
    # The store stays failed: no retry on the same file.
    with pytest.raises(wharf.ResourceError):
        await conn.publish("", "dq", b"after", persistent=True)
    # Transient traffic and consumers are still served, on the same connection.
    await conn.publish("", "tq", b"transient")
    msg = await conn.get("tq")
    assert msg is not None and msg.body == b"transient"
    await msg.ack()
    kept = await conn.get("dq")
    assert kept is not None and kept.body == b"before"
    await kept.ack()


async def _get(port: int, path: str) -> tuple[int, bytes]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
        async with asyncio.timeout(10.0):
            data = await reader.read()
    finally:
        writer.close()
        await writer.wait_closed()
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), body


def _gauge(metrics: bytes, name: str) -> float:
    for line in metrics.decode().splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError(f"{name} not in /metrics")


async def test_failed_store_shows_in_readyz_and_metrics(
    broker: Broker, conn: wharf.Connection
) -> None:
    await conn.declare_queue("dq", durable=True)
    status, _ = await _get(broker.http_port, "/readyz")
    assert status == 200
    _, metrics = await _get(broker.http_port, "/metrics")
    assert _gauge(metrics, "wharf_store_failed") == 0
    assert broker.store is not None
    with (
        FAULTS.failing("fsync", DISK_ERROR, under=broker.store.directory),
        pytest.raises(wharf.ResourceError),
    ):
        await conn.publish("", "dq", b"lost-disk", persistent=True)
    status, body = await _get(broker.http_port, "/readyz")
    assert status == 503
    answer = json.loads(body)
    assert answer["status"] == "failed"
    assert "message store" in answer["reason"] and "injected I/O error" in answer["reason"]
    _, metrics = await _get(broker.http_port, "/metrics")
    assert _gauge(metrics, "wharf_store_failed") == 1
