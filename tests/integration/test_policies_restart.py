"""Policies across a broker restart: pending TTLs keep their deadline, dead letters survive."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import wharf
from wharf.broker.config import Settings
from wharf.broker.server import Broker


def _settings(tmp_path: Path) -> Settings:
    return Settings(
        host="127.0.0.1", port=0, http_port=0, amqp_port=0, data_dir=str(tmp_path / "data")
    )


def _url(b: Broker) -> str:
    return f"wharf://guest:guest@127.0.0.1:{b.port}"


TTL_MS = 600


async def test_pending_ttl_survives_restart_and_expires_to_the_dlx(tmp_path: Path) -> None:
    b = Broker(_settings(tmp_path))
    await b.start()
    try:
        async with await wharf.connect(_url(b)) as conn:
            await conn.declare_exchange("dlx", "fanout", durable=True)
            await conn.declare_queue("dead", durable=True)
            await conn.bind_queue("dead", "dlx", "")
            await conn.declare_queue(
                "ttl",
                durable=True,
                arguments={"x-message-ttl": TTL_MS, "x-dead-letter-exchange": "dlx"},
            )
            published_s = time.time()
            await conn.publish("", "ttl", b"later", persistent=True)
    finally:
        await b.stop()
    # The deadline passes while the broker is down (a lower bound: a longer wait is fine).
    await asyncio.sleep(max(0.0, published_s + TTL_MS / 1000 - time.time()) + 0.05)
    b = Broker(_settings(tmp_path))
    restarting_ms = int(time.time() * 1000)
    await b.start()
    started_ms = int(time.time() * 1000)
    try:
        async with await wharf.connect(_url(b)) as conn:
            async with conn.consume("dead", prefetch=1) as messages:
                msg = await asyncio.wait_for(messages.__anext__(), 5)
                assert msg.body == b"later"
                death = msg.headers["x-death"][0]
                assert death["reason"] == "expired"
                # The deadline is absolute: recovery found it passed and dead-lettered the
                # message during start(), not TTL_MS after the restart.
                assert restarting_ms <= death["time"] <= started_ms
                await msg.ack()
            assert b.queues["ttl"].ready_count == 0
    finally:
        await b.stop()


async def test_dead_lettered_persistent_message_survives_restart(tmp_path: Path) -> None:
    b = Broker(_settings(tmp_path))
    await b.start()
    try:
        async with await wharf.connect(_url(b)) as conn:
            await conn.declare_queue("parking", durable=True)
            await conn.declare_queue(
                "work",
                durable=True,
                arguments={"x-dead-letter-exchange": "", "x-dead-letter-routing-key": "parking"},
            )
            await conn.publish("", "work", b"bad", persistent=True)
            msg = await conn.get("work")
            assert msg is not None
            await msg.reject(requeue=False)
            # A confirmed publish after the reject makes everything before it durable.
            await conn.publish("", "work", b"marker", persistent=True)
    finally:
        await b.stop()
    b = Broker(_settings(tmp_path))
    await b.start()
    try:
        async with await wharf.connect(_url(b)) as conn:
            dead = await conn.get("parking")
            assert dead is not None and dead.body == b"bad"
            assert dead.headers["x-death"][0]["queue"] == "work"
            marker = await conn.get("work")
            assert marker is not None and marker.body == b"marker"
            assert await conn.get("work") is None
    finally:
        await b.stop()
