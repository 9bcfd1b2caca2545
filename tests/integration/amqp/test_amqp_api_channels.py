"""AMQP channels in the management API (``GET /api/channels``,
``/api/connections/{name}/channels``) and an operator's close with RabbitMQ's X-Reason
header, seen by aiormq as connection.close 320 ``CONNECTION_FORCED - <reason>``."""

from __future__ import annotations

import asyncio
from typing import Any

import aiormq
import aiormq.exceptions
import pytest

from wharf.broker.server import Broker

from ...helpers import wait_until
from ..test_api import api
from .test_amqp_aio_pika import REPLY_TIMEOUT_S, amqp_url


async def test_amqp_channels_show_mode_prefetch_and_counters(broker: Broker) -> None:
    connection = await aiormq.connect(amqp_url(broker))
    try:
        plain = await connection.channel(publisher_confirms=False)
        await plain.basic_qos(prefetch_count=5)
        confirming = await connection.channel()  # confirm mode, aiormq's default
        tx = await connection.channel(publisher_confirms=False)
        await tx.tx_select()
        queue = (await plain.queue_declare("", exclusive=True)).queue
        assert queue is not None
        for body in (b"a", b"b", b"c"):
            await confirming.basic_publish(body, routing_key=queue)
        await plain.basic_consume(queue, lambda _: asyncio.sleep(0), no_ack=False)

        async def delivered() -> bool:
            r = await api(broker, "GET", "/api/channels")
            return any(c["message_stats"]["deliver_get"] == 3 for c in r.json())

        await wait_until(delivered, timeout=REPLY_TIMEOUT_S, what="3 deliveries")
        [conn] = (await api(broker, "GET", "/api/connections")).json()
        r = await api(broker, "GET", f"/api/connections/{conn['name']}/channels")
        assert r.status == 200, r
        by_number: dict[int, dict[str, Any]] = {c["number"]: c for c in r.json()}
        assert sorted(by_number) == [plain.number, confirming.number, tx.number]
        p, c, t = by_number[plain.number], by_number[confirming.number], by_number[tx.number]
        assert p["name"] == f"{conn['name']} ({plain.number})" and p["protocol"] == "amqp"
        assert (p["prefetch_count"], p["consumer_count"], p["messages_unacknowledged"]) == (5, 1, 3)
        assert (p["confirm"], p["transactional"]) == (False, False)
        assert p["message_stats"] == {"publish": 0, "deliver_get": 3}
        assert (c["confirm"], c["message_stats"]["publish"]) == (True, 3)
        assert (t["confirm"], t["transactional"]) == (False, True)
        doc = (
            await api(broker, "GET", "/api/channels?page=1&sort=number&sort_reverse=true")
        ).json()
        assert [x["number"] for x in doc["items"]] == sorted(by_number, reverse=True)
    finally:
        await connection.close()


async def test_close_with_x_reason_is_the_amqp_reply_text(broker: Broker) -> None:
    connection = await aiormq.connect(amqp_url(broker))
    await connection.channel()
    [conn] = (await api(broker, "GET", "/api/connections")).json()
    r = await api(
        broker,
        "DELETE",
        f"/api/connections/{conn['name']}",
        headers={"X-Reason": "node maintenance"},
    )
    assert r.status == 200, r
    with pytest.raises(aiormq.exceptions.ConnectionClosed) as info:
        await asyncio.wait_for(connection.closing, REPLY_TIMEOUT_S * 2)
    assert info.value.args == (320, "CONNECTION_FORCED - node maintenance"), info.value.args


async def test_amqp_gets_acks_and_redeliveries_count_in_the_queue_message_stats(
    broker: Broker,
) -> None:
    connection = await aiormq.connect(amqp_url(broker))
    try:
        ch = await connection.channel()
        await ch.queue_declare("amqp-stats")
        for body in (b"a", b"b"):
            await ch.basic_publish(body, routing_key="amqp-stats")
        first = await ch.basic_get("amqp-stats")
        assert first.delivery_tag is not None
        await ch.basic_reject(first.delivery_tag, requeue=True)
        for _ in range(2):  # the requeued one again (redelivered), then the other
            msg = await ch.basic_get("amqp-stats")
            assert msg.delivery_tag is not None
            await ch.basic_ack(msg.delivery_tag)

        async def stats() -> dict[str, int]:
            r = await api(broker, "GET", "/api/queues/%2F/amqp-stats")
            return dict(r.json()["message_stats"])

        await wait_until(lambda: _has(stats(), "ack", 2), timeout=REPLY_TIMEOUT_S, what="2 acks")
        got = await stats()
        assert (got["publish"], got["get"], got["deliver_get"], got["redeliver"]) == (2, 3, 3, 1)
    finally:
        await connection.close()


async def _has(stats: Any, key: str, value: int) -> bool:
    return bool((await stats)[key] == value)
