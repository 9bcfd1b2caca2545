"""Deduplicated queue publishes (x-dedup-window-ms) over TCP: a producer that loses its
connection before the confirms and resends everything enqueues each message_id once."""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from typing import Any

import aiohttp
import pytest

import wharf
from wharf.broker.server import Broker
from wharf.protocol import frames as F

from ..helpers import metric, scrape_metrics, wait_until

AUTH = {"Authorization": "Basic " + base64.b64encode(b"guest:guest").decode()}


async def _api(broker: Broker, method: str, path: str, body: Any = None) -> Any:
    async with (
        aiohttp.ClientSession(headers=AUTH) as http,
        http.request(method, f"http://127.0.0.1:{broker.http_port}/api/{path}", json=body) as resp,
    ):
        assert resp.status in (200, 201, 204), await resp.text()
        text = await resp.text()
        return json.loads(text) if text else None


async def _count(conn: wharf.Connection, queue: str) -> int:
    return (await conn.declare_queue(queue, passive=True)).messages


async def _drain_ids(conn: wharf.Connection, queue: str) -> list[str]:
    ids: list[str] = []
    while (msg := await conn.get(queue, no_ack=True)) is not None:
        assert msg.message_id is not None
        ids.append(msg.message_id)
    return ids


async def test_resend_after_lost_connection_enqueues_each_id_once(
    conn: wharf.Connection, raw_client: Callable[..., Any]
) -> None:
    await conn.declare_queue("orders", durable=True, arguments={"x-dedup-window-ms": 60_000})
    ids = [f"order-{i}" for i in range(50)]
    # First attempt: published, then the connection drops before any confirm is read.
    raw = await raw_client()
    for seq, mid in enumerate(ids[:30], start=1):
        raw.send(F.Publish(seq, "", "orders", {"message_id": mid, "persistent": True}, b"x"))
    await raw.writer.drain()
    await raw.close()

    async def first_attempt_in() -> bool:
        return await _count(conn, "orders") == 30

    await wait_until(first_attempt_in, what="the first attempt's messages enqueued")
    # The retry resends everything; only the ids not accepted before are new.
    results = [
        await conn.publish("", "orders", b"x", message_id=mid, persistent=True) for mid in ids
    ]
    assert [r.duplicate for r in results] == [True] * 30 + [False] * 20
    assert await _count(conn, "orders") == len(ids)
    assert sorted(await _drain_ids(conn, "orders")) == sorted(ids)


async def test_duplicate_confirm_flag_publish_many_and_without_message_id(
    conn: wharf.Connection,
) -> None:
    await conn.declare_queue("d1", arguments={"x-dedup-window-ms": 60_000})
    first = await conn.publish("", "d1", b"a", message_id="m1")
    again = await conn.publish("", "d1", b"b", message_id="m1")
    assert not first.duplicate and again.duplicate and again.duplicates == (0,)
    # One call's bodies share the message_id: all but the first are duplicates.
    many = await conn.publish_many("", "d1", [b"1", b"2", b"3"], message_id="m2")
    assert many.duplicates == (1, 2)
    # No message_id: never deduplicated.
    plain = [await conn.publish("", "d1", b"p") for _ in range(3)]
    assert not any(r.duplicate for r in plain)
    assert await _count(conn, "d1") == 5
    # The window holds after the message was consumed and acked.
    assert len(await _drain_ids_all(conn, "d1")) == 5
    assert (await conn.publish("", "d1", b"c", message_id="m1")).duplicate
    assert await _count(conn, "d1") == 0


async def _drain_ids_all(conn: wharf.Connection, queue: str) -> list[bytes]:
    out: list[bytes] = []
    while (msg := await conn.get(queue)) is not None:
        await msg.ack()
        out.append(msg.body)
    return out


async def test_window_expiry(conn: wharf.Connection) -> None:
    await conn.declare_queue("short", arguments={"x-dedup-window-ms": 200})
    assert not (await conn.publish("", "short", b"1", message_id="x")).duplicate
    assert (await conn.publish("", "short", b"2", message_id="x")).duplicate

    async def accepted_again() -> bool:
        return not (await conn.publish("", "short", b"3", message_id="x")).duplicate

    await wait_until(accepted_again, what="the id left the window")
    assert await _count(conn, "short") == 2


async def test_each_routed_queue_deduplicates_on_its_own(conn: wharf.Connection) -> None:
    await conn.declare_exchange("fan", "fanout")
    await conn.declare_queue("qa", arguments={"x-dedup-window-ms": 60_000})
    await conn.declare_queue("qb", arguments={"x-dedup-window-ms": 60_000})
    await conn.bind_queue("qa", "fan")
    await conn.publish("", "qa", b"direct", message_id="shared")  # qa only
    await conn.bind_queue("qb", "fan")
    res = await conn.publish("fan", "", b"fanned", message_id="shared")
    assert not res.duplicate  # qb took it
    assert await _count(conn, "qa") == 1 and await _count(conn, "qb") == 1
    assert (await conn.publish("fan", "", b"fanned", message_id="shared")).duplicate


async def test_policy_sets_the_window_and_the_argument_wins(
    broker: Broker, conn: wharf.Connection
) -> None:
    await conn.declare_queue("pol.a")
    await conn.declare_queue("pol.b", arguments={"x-dedup-window-ms": 100})
    await conn.set_policy("dedup", "^pol\\.", {"dedup-window-ms": 600_000})
    await conn.publish("", "pol.a", b"1", message_id="m")
    assert (await conn.publish("", "pol.a", b"2", message_id="m")).duplicate
    queues = {q["name"]: q for q in await _api(broker, "GET", "queues/%2F")}
    assert queues["pol.a"]["effective_arguments"]["x-dedup-window-ms"] == 600_000
    assert queues["pol.a"]["dedup_window_ms"] == 600_000
    assert queues["pol.a"]["dedup_ids"] == 1
    assert queues["pol.a"]["duplicates_dropped"] == 1
    assert queues["pol.b"]["dedup_window_ms"] == 100  # the queue's own argument wins
    with pytest.raises(wharf.InvalidArgument):
        await conn.set_policy("bad", "^x", {"dedup-window-ms": 0})
    with pytest.raises(wharf.InvalidArgument):
        await conn.declare_queue("bad", arguments={"x-dedup-window-ms": "1s"})
    # Removing the policy turns deduplication off for pol.a.
    await conn.delete_policy("dedup")
    assert not (await conn.publish("", "pol.a", b"3", message_id="m")).duplicate


async def test_duplicates_metric_and_http_publish(broker: Broker, conn: wharf.Connection) -> None:
    await conn.declare_queue("met", arguments={"x-dedup-window-ms": 60_000})
    body = {
        "routing_key": "met",
        "payload": "hi",
        "payload_encoding": "string",
        "properties": {"message_id": "h1"},
    }
    path = "exchanges/%2F/amq.default/publish"
    assert await _api(broker, "POST", path, body) == {"routed": True}
    assert await _api(broker, "POST", path, body) == {"routed": True, "duplicate": True}
    await conn.publish("", "met", b"x", message_id="h1")
    text = await scrape_metrics(broker.http_port)
    assert metric(text, "wharf_queue_duplicates_dropped_total", queue="met", vhost="/") == 2


async def test_duplicate_confirm_frame_names_the_seqs(
    conn: wharf.Connection, raw_client: Callable[..., Any]
) -> None:
    await conn.declare_queue("raw", arguments={"x-dedup-window-ms": 60_000})
    raw = await raw_client()
    raw.send(F.Publish(1, "", "raw", {"message_id": "a"}, b"1"))
    raw.send(F.Publish(2, "", "raw", {"message_id": "a"}, b"2"))
    raw.send(F.Publish(3, "", "raw", {"message_id": "b"}, b"3"))
    frames = []
    while not frames or frames[-1][2] < 3:
        frames.append(await raw.recv())
    assert all(f[0] == F.CONFIRM for f in frames)
    assert [s for f in frames if len(f) > 3 for s in f[3]] == [2]


async def test_dead_lettered_and_replayed_messages_are_not_dropped_as_duplicates(
    conn: wharf.Connection,
) -> None:
    """Moves inside the broker are not a publisher's retry: a message that died and is
    replayed into its deduplicating queue (or dead-letters again into a deduplicating
    DLQ) keeps going."""
    await conn.declare_exchange("dlx", "fanout")
    await conn.declare_queue("dead", arguments={"x-dedup-window-ms": 60_000})
    await conn.bind_queue("dead", "dlx")
    args = {"x-dedup-window-ms": 60_000, "x-dead-letter-exchange": "dlx"}
    await conn.declare_queue("work", arguments=args)
    await conn.publish("", "work", b"job", message_id="job-1")
    for _ in range(2):
        msg = await conn.get("work")
        assert msg is not None and msg.body == b"job"
        await msg.reject(requeue=False)

        async def dead_has_it() -> bool:
            return await _count(conn, "dead") == 1

        await wait_until(dead_has_it, what="dead-lettered")
        assert await conn.replay_dead_letters("dead") == 1
        assert await _count(conn, "work") == 1
    # A publisher's retry is still a duplicate.
    assert (await conn.publish("", "work", b"job", message_id="job-1")).duplicate
