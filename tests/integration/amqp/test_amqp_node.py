"""Node services on amqplib (npm) against Wharf's AMQP port: each scenario is a script in
node/ run as a real ``node`` process, and the test checks both sides (what the script
printed, and what the native SDK sees or sent).

The scripts print JSON lines on stdout.  amqplib is installed by ``make node-deps``
(``npm ci`` from node/package-lock.json; ``make test`` runs it first); without node or
that install these tests are skipped.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import shutil
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import msgpack
import pytest

import wharf
from wharf.broker.server import Broker

from ...helpers import wait_until
from ..test_api import api

NODE_DIR: Final = Path(__file__).parent / "node"
NODE: Final = shutil.which("node")
# A script's own deadline (lib.js exits with 2 after it); the test waits a little longer.
SCRIPT_DEADLINE_S: Final = 30.0
WAIT_S: Final = SCRIPT_DEADLINE_S + 10.0
BODY_PREFIX: Final = bytes(range(256))
# Node's publisher.js sets these on message i.
FIRST_TIMESTAMP_S: Final = 1_765_040_400
DECIMAL_EXT: Final = 1  # docs/amqp.md: an AMQP decimal is msgpack extension type 1

pytestmark = pytest.mark.skipif(
    NODE is None or not (NODE_DIR / "node_modules" / "amqplib").is_dir(),
    reason="needs node and amqplib: `make node-deps` (npm ci in tests/integration/amqp/node)",
)


@dataclass
class NodeScript:
    """A running node process: its JSON lines as they come, then its exit."""

    name: str
    proc: asyncio.subprocess.Process
    stderr: Path

    async def line(self) -> dict[str, Any]:
        assert self.proc.stdout is not None
        raw = await asyncio.wait_for(self.proc.stdout.readline(), WAIT_S)
        if not raw:
            await self.proc.wait()
            raise AssertionError(f"{self.name} ended early:\n{self.errors()}")
        out: dict[str, Any] = json.loads(raw)
        return out

    async def finish(self) -> list[dict[str, Any]]:
        """The remaining lines; the script must exit 0."""
        assert self.proc.stdout is not None
        rest = await asyncio.wait_for(self.proc.stdout.read(), WAIT_S)
        code = await asyncio.wait_for(self.proc.wait(), WAIT_S)
        assert code == 0, f"{self.name} exited with {code}:\n{self.errors()}"
        return [json.loads(line) for line in rest.decode().splitlines() if line.strip()]

    def errors(self) -> str:
        return self.stderr.read_text(errors="replace")[-4000:]


@pytest.fixture
async def node(broker: Broker, tmp_path: Path) -> AsyncIterator[Callable[..., Awaitable[Any]]]:
    started: list[NodeScript] = []
    env = dict(os.environ)
    env.update(
        WHARF_AMQP_URL=f"amqp://guest:guest@127.0.0.1:{broker.amqp_port}/%2F",
        WHARF_NODE_DEADLINE_MS=str(int(SCRIPT_DEADLINE_S * 1000)),
    )

    async def _start(script: str, **config: Any) -> NodeScript:
        assert NODE is not None
        stderr = tmp_path / f"{script}-{len(started)}.stderr"
        with stderr.open("wb") as err:
            proc = await asyncio.create_subprocess_exec(
                NODE,
                str(NODE_DIR / script),
                json.dumps(config),
                cwd=str(NODE_DIR),
                env=env,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=err,
            )
        run = NodeScript(script, proc, stderr)
        started.append(run)
        return run

    yield _start
    for run in started:
        if run.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                run.proc.kill()
            await run.proc.wait()


def typed_headers_as_node_sent(i: int) -> dict[str, Any]:
    """publisher.js's headers for message i, as the native SDK reads them."""
    return {
        "s": "text é",
        "n": i,
        "neg": -70000,
        "big": 2**40,
        "pi": 3.25,
        "yes": True,
        "none": None,
        "list": [1, "two", [False, {"deep": "x"}]],
        "nested": {"k": "v", "deeper": {"x": 1, "arr": ["a", "b"]}},
        "when": msgpack.Timestamp(FIRST_TIMESTAMP_S),
        "dec": msgpack.ExtType(DECIMAL_EXT, bytes([2]) + (1234).to_bytes(4, "big")),
        "raw": b"\x00\xff\x10",
    }


def node_body(i: int) -> bytes:
    return BODY_PREFIX + f"#{i}".encode()


async def test_node_publishes_with_confirms_native_consumes_byte_exact(
    node: Callable[..., Awaitable[NodeScript]], conn: wharf.Connection, broker: Broker
) -> None:
    count = 20
    run = await node(
        "publisher.js", exchange="shop", queue="orders", bindingKey="orders.#", count=count
    )
    assert await run.finish() == [{"confirmed": count}]
    # The topology amqplib asserted is the core's: durable, visible to the native side.
    q = await conn.declare_queue("orders", passive=True)
    assert q.messages == count
    exchanges = await api(broker, "GET", "/api/exchanges")
    shop = next(e for e in exchanges.json() if e["name"] == "shop")
    assert shop["type"] == "topic" and shop["durable"] is True
    for i in range(count):
        got = await conn.get("orders")
        assert got is not None
        assert got.body == node_body(i)
        assert got.routing_key == f"orders.eu.{i}"
        assert got.persistent is True
        assert got.content_type == "application/octet-stream"
        assert got.content_encoding == "identity"
        assert got.correlation_id == f"corr-{i}"
        assert got.message_id == f"msg-{i}"
        assert got.reply_to == "replies"
        assert got.expiration == 600_000
        assert got.timestamp == (FIRST_TIMESTAMP_S + i) * 1000  # epoch ms natively
        assert got.type == "order.created"
        assert got.user_id == "guest"
        assert got.app_id == "node-shop"
        assert got.priority == 3
        assert got.headers == typed_headers_as_node_sent(i)
        await got.ack()


async def test_native_publishes_node_worker_consumes_with_prefetch_and_nack(
    node: Callable[..., Awaitable[NodeScript]], conn: wharf.Connection
) -> None:
    count, prefetch = 10, 4
    await conn.declare_queue("work", durable=True)
    for i in range(count):
        await conn.publish(
            "",
            "work",
            bytes(range(255, -1, -1)) + bytes([i]),
            headers=typed_headers_as_node_sent(i),
            content_type="application/json",
            message_id=f"job-{i}",
            correlation_id=f"c-{i}",
            timestamp=(FIRST_TIMESTAMP_S + i) * 1000 + 999,  # ms: AMQP keeps the seconds
            persistent=True,
            priority=1,
            type="job",
            app_id="native",
            content_encoding="identity",
            reply_to=f"replies-{i}",
            expiration=3_600_000,
            user_id="guest",
        )
    run = await node("consumer.js", queue="work", prefetch=prefetch, count=count)
    lines = await run.finish()
    # The window: prefetch deliveries unacked, the rest still ready in the queue.
    assert lines[0] == {"window": prefetch, "ready": count - prefetch}
    requeued = [line for line in lines if "requeued" in line]
    assert requeued == [{"requeued": "job-0", "redelivered": True}]
    messages = [line["message"] for line in lines if "message" in line]
    assert sorted(m["properties"]["messageId"] for m in messages) == [
        f"job-{i}" for i in range(count)
    ]
    for m in messages:
        i = int(m["properties"]["messageId"].removeprefix("job-"))
        assert base64.b64decode(m["body"]) == bytes(range(255, -1, -1)) + bytes([i])
        assert m["routingKey"] == "work" and m["exchange"] == ""
        assert m["redelivered"] is (i == 0)
        props = m["properties"]
        assert props["contentType"] == "application/json"
        assert props["correlationId"] == f"c-{i}"
        assert props["deliveryMode"] == 2
        assert props["priority"] == 1
        assert props["timestamp"] == FIRST_TIMESTAMP_S + i
        assert props["type"] == "job" and props["appId"] == "native"
        assert props["contentEncoding"] == "identity"
        assert props["replyTo"] == f"replies-{i}"
        assert props["expiration"] == "3600000"  # AMQP's string of milliseconds
        assert props["userId"] == "guest"
        assert props["headers"] == {
            "s": "text é",
            "n": i,
            "neg": -70000,
            "big": 2**40,
            "pi": 3.25,
            "yes": True,
            "none": None,
            "list": [1, "two", [False, {"deep": "x"}]],
            "nested": {"k": "v", "deeper": {"x": 1, "arr": ["a", "b"]}},
            "when": {"$type": "timestamp", "value": FIRST_TIMESTAMP_S},
            "dec": {"$type": "decimal", "value": {"places": 2, "digits": 1234}},
            "raw": {"$bytes": base64.b64encode(b"\x00\xff\x10").decode()},
        }
    # Everything was acked.
    assert (await conn.declare_queue("work", passive=True)).messages == 0


async def test_node_rpc_over_direct_reply_to(
    node: Callable[..., Awaitable[NodeScript]],
) -> None:
    server = await node("rpc_server.js", queue="squares", count=5)
    assert await server.line() == {"ready": "squares"}
    client = await node("rpc_client.js", queue="squares", count=5)
    assert await client.finish() == [{"results": [1, 4, 9, 16, 25]}]
    assert await server.finish() == [{"served": 5}]


async def test_node_mandatory_publish_is_returned_before_its_confirm(
    node: Callable[..., Awaitable[NodeScript]],
) -> None:
    run = await node("mandatory.js", queue="kept", unroutable="nowhere")
    lines = await run.finish()
    assert lines[0]["events"] == [
        {
            "event": "return",
            "replyCode": 312,
            "replyText": "NO_ROUTE",
            "exchange": "",
            "routingKey": "nowhere",
            "body": "lost",
            "messageId": "lost",
        },
        {"event": "confirm", "body": "lost"},
        {"event": "confirm", "body": "kept"},
    ]
    assert lines[1] == {"got": "kept"}


async def test_node_channel_errors_close_the_channel_not_the_connection(
    node: Callable[..., Awaitable[NodeScript]],
) -> None:
    run = await node(
        "channel_error.js", missingQueue="ghost", missingExchange="ghost-x", queue="alive"
    )
    check, publish, after = await run.finish()
    not_found_queue = "Channel closed by server: 404 (NOT-FOUND) with message "
    assert check["check"]["code"] == 404
    assert (check["check"]["classId"], check["check"]["methodId"]) == (50, 10)  # declare
    assert check["channel"] == {
        "errors": [
            {
                "code": 404,
                "classId": 50,
                "methodId": 10,
                "message": not_found_queue + "\"NOT_FOUND - no queue 'ghost' in vhost '/'\"",
            }
        ],
        "closed": True,
    }
    assert publish["publish"] == {
        "errors": [
            {
                "code": 404,
                "classId": 60,
                "methodId": 40,  # basic.publish
                "message": not_found_queue + "\"NOT_FOUND - no exchange 'ghost-x' in vhost '/'\"",
            }
        ],
        "closed": True,
    }
    assert after == {"after": "still works", "connectionError": None}


async def test_node_consumer_is_cancelled_when_its_queue_is_deleted(
    node: Callable[..., Awaitable[NodeScript]], conn: wharf.Connection
) -> None:
    run = await node("cancel_notify.js", queue="doomed", next="after-cancel")
    consuming = await run.line()
    assert consuming["consuming"].startswith("amq.ctag-")
    await conn.delete_queue("doomed")  # from the native side
    assert await run.line() == {"cancelled": True}
    assert await run.finish() == [{"after": "after cancel"}]


async def test_node_close_with_publishes_still_buffered_ends_cleanly(
    node: Callable[..., Awaitable[NodeScript]], broker: Broker
) -> None:
    """amqplib writes connection.close ahead of its channels' buffered publishes; the
    broker answers close-ok and waits for the client to close (no ECONNRESET)."""
    run = await node("close_buffered.js", queue="buffered")
    [line] = await run.finish()
    assert line["buffered"] > 0
    assert line["errors"] == []

    async def gone() -> bool:
        return not (await api(broker, "GET", "/api/connections")).json()

    await wait_until(gone, timeout=10.0, what="the connection gone")
